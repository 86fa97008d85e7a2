"""Exact AVVP evaluation: vectorized functions and a DDP-safe torchmetrics ``Metric``."""

from avvp_lightning.metrics.collection import PER_CLASS_KEYS, AVVPMetrics
from avvp_lightning.metrics.functional import (
    METRIC_KEYS,
    avvp_counts,
    avvp_scores,
    decide,
    event_counts,
    per_video_scores,
    segment_counts,
)

__all__ = [
    "METRIC_KEYS",
    "PER_CLASS_KEYS",
    "AVVPMetrics",
    "avvp_counts",
    "avvp_scores",
    "decide",
    "event_counts",
    "per_video_scores",
    "segment_counts",
]
