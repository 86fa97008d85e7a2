"""``AVVPMetrics``: the LLP evaluation as a DDP-safe torchmetrics ``Metric``.

Every state is a sum (``dist_reduce_fx="sum"``) of constant size, so synchronising
across processes is exact and cheap: the per-video scores are averaged only in
:meth:`AVVPMetrics.compute`, after the sums of all processes have been added.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

from avvp_lightning.errors import DataError
from avvp_lightning.labels import NUM_CLASSES
from avvp_lightning.metrics.functional import (
    LEVELS,
    METRIC_KEYS,
    MODALITIES,
    avvp_counts,
    scores_from_counts,
)

__all__ = ["AVVPMetrics", "PER_CLASS_KEYS"]

#: Keys of the per-class F1 vectors (C,) returned next to :data:`METRIC_KEYS`.
PER_CLASS_KEYS: tuple[str, ...] = tuple(
    f"per_class/{level}/{modality}" for level in LEVELS for modality in MODALITIES
)


class AVVPMetrics(Metric):
    """Segment- and event-level AVVP F-scores (audio, visual, av, type, event) over a dataset.

    ``compute()`` returns the ten numbers of :data:`METRIC_KEYS` as scalar float64
    tensors (fractions in [0, 1], each the mean over all videos seen of a per-video score,
    equal to :func:`~avvp_lightning.metrics.functional.avvp_scores` on the concatenated
    inputs), plus six per-class F1 vectors of shape (C,) under :data:`PER_CLASS_KEYS`
    (for per-class plots): ``2TP / (2TP + FP + FN)`` with the counts summed over all
    videos, and 0.0 for a class that never occurs in predictions or truth. Log only the
    scalar keys (e.g. ``{k: v for k, v in out.items() if v.ndim == 0}``).

    Args:
        num_classes: C, the number of event classes (25 on LLP).
        **kwargs: passed to :class:`torchmetrics.Metric` (e.g. ``sync_on_compute``).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    score_sum: Tensor  # (10,) float64: sum over videos of each per-video score
    num_videos: Tensor  # () int64
    class_counts: Tensor  # (2, 3, 3, C) int64: [level, (TP, FP, FN), modality, class]

    def __init__(self, num_classes: int = NUM_CLASSES, **kwargs) -> None:
        super().__init__(**kwargs)
        if num_classes < 1:
            raise DataError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.add_state(
            "score_sum", torch.zeros(len(METRIC_KEYS), dtype=torch.float64), dist_reduce_fx="sum"
        )
        self.add_state("num_videos", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state(
            "class_counts",
            torch.zeros(len(LEVELS), 3, len(MODALITIES), num_classes, dtype=torch.int64),
            dist_reduce_fx="sum",
        )

    def update(  # type: ignore[override]
        self, pred_audio: Tensor, pred_visual: Tensor, target_audio: Tensor, target_visual: Tensor
    ) -> None:
        """Add a batch of videos.

        Args:
            pred_audio: (N, T, C) 0/1 audio predictions.
            pred_visual: (N, T, C) 0/1 visual predictions.
            target_audio: (N, T, C) 0/1 audio ground truth.
            target_visual: (N, T, C) 0/1 visual ground truth.
        """
        if pred_audio.dim() == 3 and pred_audio.shape[-1] != self.num_classes:
            raise DataError(
                f"expected (N, T, C={self.num_classes}) inputs, got {tuple(pred_audio.shape)}"
            )
        counts = avvp_counts(pred_audio, pred_visual, target_audio, target_visual)  # (2,3,3,N,C)
        scores = scores_from_counts(counts)  # {key: (N,) float64}
        self.score_sum += torch.stack(list(scores.values())).sum(1)  # (10, N) -> (10,)
        self.num_videos += counts.shape[3]
        self.class_counts += counts.sum(3)

    def compute(self) -> dict[str, Tensor]:
        """The ten dataset-level scores (float64 scalars) and six per-class F1 vectors (C,)."""
        if int(self.num_videos) == 0:
            raise DataError("AVVPMetrics.compute() needs at least one video; update() got none")
        out = dict(zip(METRIC_KEYS, (self.score_sum / self.num_videos).unbind()))
        tp, fp, fn = self.class_counts.double().unbind(1)  # each (2 levels, 3 modalities, C)
        denom = 2 * tp + fp + fn
        f1 = torch.where(denom > 0, 2 * tp / denom.clamp(min=1), 0.0)  # (2, 3, C)
        out.update(zip(PER_CLASS_KEYS, f1.flatten(0, 1).unbind()))
        return out
