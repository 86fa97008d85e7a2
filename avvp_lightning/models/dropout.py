"""Dropout with a cheaper mask on the CPU.

On the CPU, ``torch.nn.functional.dropout`` draws one Bernoulli sample per element from
torch's Mersenne Twister generator, which made dropout about 15% of a training step of the
paper's model (batch 64, bf16). Here each mask element is a uniform 32-bit integer, two cut
from every 64-bit output of NumPy's SFC64 generator (about twice as fast as torch's CPU
generator), kept when it is at least ``p * 2**32`` above the bottom of the range: the keep
probability is ``1 - p`` to within ``2**-33`` (float32 Bernoulli sampling is coarser) and the
kept elements are scaled by ``1 / (1 - p)``. Every call seeds SFC64 with one 63-bit draw from
torch's default generator, the one ``seed_everything`` seeds and checkpoints save, so runs stay
reproducible and resumable. It is the same random function as ``nn.Dropout``; only the random
stream differs. On other devices (where ``F.dropout`` is a fused kernel) and in eval mode it is
``nn.Dropout``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


def dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """Zero each element of ``x`` with probability ``p`` and scale the rest by ``1 / (1 - p)``.

    Args:
        x: Any floating tensor.
        p: Drop probability in [0, 1].
        training: Identity when False.

    Returns:
        A tensor of the shape and dtype of ``x``.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability must be in [0, 1], got {p}")
    if not training or p == 0.0:
        return x
    dropped = round(p * 2**32)  # of the 2**32 values of a 32-bit integer, this many drop
    if x.device.type != "cpu" or dropped >= 2**32:  # (p within 2**-33 of 1: all dropped)
        return F.dropout(x, 1.0 if dropped >= 2**32 else p, training=True)
    n = x.numel()
    seed = int(torch.randint(0, 2**63 - 1, ()))  # from torch's seeded default generator
    bits = np.random.SFC64(seed).random_raw((n + 1) // 2)  # (ceil(n / 2),) uint64
    uniform = torch.from_numpy(bits.view(np.int32)[:n]).view(x.shape)  # uniform over [-2**31, 2**31)
    threshold = -(2**31) + dropped
    scale = torch.full((), 1.0 / (1.0 - p), dtype=x.dtype)
    mask = torch.where(uniform >= threshold, scale, torch.zeros((), dtype=x.dtype))  # like x
    return x * mask


class Dropout(nn.Module):
    """Drop-in for ``nn.Dropout`` using :func:`dropout`.

    Args:
        p: Drop probability.
    """

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability must be in [0, 1], got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        """Apply dropout while training; identity in eval mode."""
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
