"""Models: the AVVP parser (HAN / Base / GCAA / Skip / Adv), its attention and discriminator."""

from avvp_lightning.models.attention import GlobalContextAttention, MultiHeadAttention
from avvp_lightning.models.discriminator import ModalityDiscriminator, dann_alpha, grad_reverse
from avvp_lightning.models.parser import AVVPParser

__all__ = [
    "AVVPParser",
    "GlobalContextAttention",
    "ModalityDiscriminator",
    "MultiHeadAttention",
    "dann_alpha",
    "grad_reverse",
]
