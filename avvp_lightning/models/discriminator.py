"""Adversarial modality training: gradient reversal, the modality discriminator, the DANN schedule.

The seed paper (section 3.1, "Adversarial Training") puts a modality discriminator on the
per-segment features just before MMIL pooling. The discriminator learns to tell audio (label 0)
from visual (label 1) features, while a gradient reversal layer (Ganin & Lempitsky, 2015) makes
the encoder below it *maximise* the same loss, pushing the two modalities into a shared space.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, autograd, nn


class _GradientReversal(autograd.Function):
    """Identity forward; backward multiplies the incoming gradient by ``-alpha``.

    ``alpha`` is a float, or a 0-dim tensor read when the backward runs (a CUDA graph of the
    training step keeps one tensor and refills it every step, see :mod:`avvp_lightning.graphs`).
    """

    @staticmethod
    def forward(ctx, x: Tensor, alpha: float | Tensor) -> Tensor:  # noqa: D102
        ctx.alpha = alpha if isinstance(alpha, Tensor) else float(alpha)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor, None]:  # noqa: D102
        return grad_output * -ctx.alpha, None


def grad_reverse(x: Tensor, alpha: float | Tensor = 1.0) -> Tensor:
    """Gradient reversal layer.

    Args:
        x: Any tensor.
        alpha: Reversal strength; the gradient flowing back through this op is multiplied by
            ``-alpha``. ``alpha = 0`` blocks the gradient, ``alpha = -1`` leaves it unchanged.
            A float, or a 0-dim tensor on ``x``'s device, read when the backward runs.

    Returns:
        ``x`` unchanged (a view), wired so that its gradient is reversed and scaled.
    """
    return _GradientReversal.apply(x, alpha)


def dann_alpha(progress: float, gamma: float = 10.0) -> float:
    """DANN schedule for the reversal strength: ``2 / (1 + exp(-gamma * p)) - 1``.

    It rises smoothly from 0 at the start of training to almost 1, so the noisy early
    discriminator does not disturb the encoder (Ganin et al., JMLR 2016).

    Args:
        progress: Training progress ``p`` in [0, 1] (e.g. ``step / total_steps``).
        gamma: Steepness; 10 as in DANN and the paper's code.

    Returns:
        alpha in [0, 1): 0.0 at p = 0, about 0.9866 at p = 0.5 and 0.99991 at p = 1 (gamma 10).
    """
    return 2.0 / (1.0 + math.exp(-gamma * progress)) - 1.0


class ModalityDiscriminator(nn.Module):
    """MLP that tells audio features (label 0) from visual features (label 1).

    ``in_dim -> 128 -> 10 -> 1`` by default, with BatchNorm1d and ReLU after each hidden
    Linear; the output is a logit (the sigmoid lives in the loss,
    :func:`avvp_lightning.losses.parser.parser_loss`).

    Args:
        in_dim: Feature width (the parser's hidden size).
        hidden: Widths of the hidden layers.
    """

    def __init__(self, in_dim: int = 512, hidden: Sequence[int] = (128, 10)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_dim
        for size in hidden:
            layers += [nn.Linear(width, size), nn.BatchNorm1d(size), nn.ReLU()]
            width = size
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, features: Tensor) -> Tensor:
        """Score every feature vector.

        Args:
            features: (..., in_dim) features, e.g. (B, T, 2, H).

        Returns:
            (...) logits of "this feature is visual", e.g. (B, T, 2).
        """
        flat = features.reshape(-1, features.shape[-1])  # (N, H)
        return self.net(flat).view(features.shape[:-1])  # (...)
