"""Losses: the parser objective (weak-label, guided, adversarial)."""

from avvp_lightning.losses.parser import parser_loss

__all__ = ["parser_loss"]
