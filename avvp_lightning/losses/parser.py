"""Training objective of the AVVP parser: HAN's weak-label and guided losses, plus adversarial.

Works on the output dict of :class:`avvp_lightning.models.parser.AVVPParser`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def smooth_labels(label: Tensor, smoothing: float) -> Tensor:
    """Label smoothing towards 1/2: ``label * s + (1 - s) / 2``.

    Args:
        label: 0/1 targets of any shape.
        smoothing: ``s``; 1.0 leaves the labels unchanged, 0.9 gives 0.95 / 0.05.

    Returns:
        Smoothed targets, same shape.
    """
    return label * smoothing + (1.0 - smoothing) / 2.0


def _bce(prob: Tensor, target: Tensor, eps: float) -> Tensor:
    """Mean binary cross-entropy of probabilities clamped to [eps, 1 - eps].

    NaN probabilities (a diverged model) give a NaN loss: torch's BCE refuses them (an error on
    the CPU, a device-side assert that ends the process on a GPU), so they go in as 1/2 and the
    loss is set to NaN afterwards. Without NaNs the value and gradient are those of the BCE alone.
    """
    prob = prob.clamp(eps, 1.0 - eps)  # (B, C); clamp keeps NaN
    nan = torch.isnan(prob)
    loss = F.binary_cross_entropy(prob.masked_fill(nan, 0.5), target)
    return loss.masked_fill(nan.any(), float("nan"))


def modality_targets(modality_logit: Tensor) -> Tensor:
    """Discriminator targets for logits (..., 2): 0 for audio (index 0), 1 for visual (index 1)."""
    target = torch.zeros_like(modality_logit)  # (..., 2)
    target[..., 1] = 1.0
    return target


def parser_loss(
    out: dict[str, Tensor | None],
    label: Tensor,
    *,
    lambda_g: float,
    lambda_ad: float,
    audio_smoothing: float = 1.0,
    visual_smoothing: float = 0.9,
    eps: float = 1e-7,
) -> dict[str, Tensor]:
    """Weakly supervised parser loss ``total = wsl + lambda_g * guided + lambda_ad * adv``.

    * ``wsl = BCE(P, y)`` on the fused video probability P (HAN's main MIL loss).
    * ``guided = BCE(P_a, smooth(y, audio_smoothing)) + BCE(P_v, smooth(y, visual_smoothing))``,
      HAN's modality-guided loss with label smoothing ``smooth(y, s) = y s + (1 - s) / 2``.
    * ``adv = BCE-with-logits(modality_logit, m)`` with ``m = 0`` for audio and ``1`` for
      visual features, 0 when the model has no discriminator.

    Probabilities are clamped to [eps, 1 - eps] first (P may exceed 1 by rounding). Every BCE
    is a mean over its elements.

    How this realises the paper's ``L = L_wsl + lambda_g L_g - lambda_ad L_ad`` (eq. 3): the
    discriminator's parameters only see ``+lambda_ad * adv`` and so *minimise* L_ad, while the
    gradient reversal layer between the encoder and the discriminator multiplies the gradient
    reaching the encoder by ``-alpha``, so the encoder descends ``L_wsl + lambda_g L_g -
    alpha lambda_ad L_ad``, i.e. *maximises* L_ad: one backward pass of ``total`` trains both
    players of the min-max game. HAN is ``lambda_g = 1, lambda_ad = 0``; the paper uses
    ``lambda_g = 0.6, lambda_ad = 0.4`` (tuned values live in the configs).

    Args:
        out: Parser output with ``video_prob``, ``audio_prob``, ``visual_prob`` (B, C) and
            ``modality_logit`` (B, T, 2) or None.
        label: (B, C) 0/1 weak (video-level) labels.
        lambda_g: Weight of the guided loss.
        lambda_ad: Weight of the adversarial loss.
        audio_smoothing: Label smoothing of the audio targets (1.0 = none, HAN's choice).
        visual_smoothing: Label smoothing of the visual targets (HAN: 0.9).
        eps: Probability clamp.

    Returns:
        Dict of scalar tensors ``total``, ``wsl``, ``guided``, ``adv``.
    """
    label = label.to(out["video_prob"].dtype)  # (B, C)
    wsl = _bce(out["video_prob"], label, eps)
    guided = _bce(out["audio_prob"], smooth_labels(label, audio_smoothing), eps) + _bce(
        out["visual_prob"], smooth_labels(label, visual_smoothing), eps
    )
    logit = out.get("modality_logit")
    if logit is None:
        adv = wsl.new_zeros(())
    else:
        adv = F.binary_cross_entropy_with_logits(logit, modality_targets(logit))  # (B, T, 2)
    total = wsl + lambda_g * guided + lambda_ad * adv
    return {"total": total, "wsl": wsl, "guided": guided, "adv": adv}
