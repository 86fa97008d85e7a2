"""Dropout with a cheaper mask on the CPU.

On the CPU, ``torch.nn.functional.dropout`` draws one Bernoulli sample per element from
torch's Mersenne Twister generator, which made dropout about 15% of a training step of the
paper's model (batch 64, bf16). Here each mask element comes from a uniform 32-bit integer, two
cut from every 64-bit output of NumPy's SFC64 generator (about twice as fast as torch's CPU
generator): its top 31 bits ``r`` (``r = floor(u / 2)``, uniform over ``[-2**30, 2**30)``) keep
the element when ``r >= -2**30 + round(p * 2**31)``. The keep probability is ``1 - p`` to within
``2**-32`` (float32 Bernoulli sampling is coarser) and kept elements are scaled by ``1 / (1 - p)``
(rounded to the tensor's dtype). The test and the mask are integer arithmetic on the draws in
place, ``((c - r) >> 31) & bits(scale)`` viewed as float32: four vectorized passes, where a
comparison and ``torch.where`` went through bool tensors, three times slower on the development
CPU. Every call seeds SFC64 with one 63-bit draw from torch's default generator, the one
``seed_everything`` seeds and checkpoints save, so runs stay reproducible and resumable. It is
the same random function as ``nn.Dropout``; only the random stream differs. On other devices
(where ``F.dropout`` is a fused kernel), inside ``torch.compile`` (which fuses its own dropout,
and would otherwise break its graph at the NumPy call) and in eval mode it is ``nn.Dropout``.
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
    dropped = round(p * 2**31)  # of the 2**31 values of the top 31 bits, this many drop
    if x.device.type != "cpu" or dropped >= 2**31 or torch.compiler.is_compiling():
        # (p within 2**-32 of 1: all dropped; under torch.compile, the compiler's own dropout)
        return F.dropout(x, 1.0 if dropped >= 2**31 else p, training=True)
    n = x.numel()
    seed = int(torch.randint(0, 2**63 - 1, ()))  # from torch's seeded default generator
    bits = np.random.SFC64(seed).random_raw((n + 1) // 2)  # (ceil(n / 2),) uint64
    r = torch.from_numpy(bits.view(np.int32)[:n]).view(x.shape)  # u, uniform over [-2**31, 2**31)
    r.bitwise_right_shift_(1)  # r = floor(u / 2), uniform over [-2**30, 2**30)
    # c - r < 0 (sign bit set) exactly when r >= -2**30 + dropped: keep. No int32 overflow.
    torch.sub(torch.tensor(dropped - 2**30 - 1, dtype=torch.int32), r, out=r)
    keep = r.bitwise_right_shift_(31)  # -1 (all bits set) where kept, 0 where dropped
    scale = 1.0 / (1.0 - p)
    if x.dtype in (torch.float32, torch.bfloat16, torch.float16):
        scale_bits = torch.tensor(scale, dtype=x.dtype).float().view(torch.int32)  # exact in float32
        mask = keep.bitwise_and_(scale_bits).view(torch.float32).to(x.dtype)  # scale or 0, like x
    else:  # float64
        mask = keep.neg_().to(x.dtype).mul_(scale)
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
