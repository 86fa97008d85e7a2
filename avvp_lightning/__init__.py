"""avvp-lightning: audio-visual video parsing on LLP with PyTorch Lightning.

The library (data, models, losses, metrics, grounding) imports no CLI and no logger;
the two stages live in :mod:`avvp_lightning.pretrain` and :mod:`avvp_lightning.finetune`.
"""

__version__ = "0.1.0"
