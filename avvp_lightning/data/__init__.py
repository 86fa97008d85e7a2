"""LLP data: the official layout (CSVs, dense truth, features), checks, a synthetic twin, datamodules.

The datamodules (which import torch and Lightning) load on first access, so ``avvp-data`` starts fast.
"""

from typing import Any

from avvp_lightning.data.llp import (
    DENSE_FILES, FEATURE_DIMS, FEATURE_DIRS, SPLIT_FILES, SplitData, check_dataset, load_features,
    read_dense_truth, read_llp, read_video_list, read_weak_labels, video_id, write_dense_csv,
)
from avvp_lightning.data.synthetic import default_root, generate_llp, generate_snippets

__all__ = [
    "DENSE_FILES", "FEATURE_DIMS", "FEATURE_DIRS", "SPLIT_FILES", "LLPDataModule", "SnippetDataModule", "SplitData",
    "check_dataset", "default_root", "generate_llp", "generate_snippets", "load_features", "read_dense_truth",
    "read_llp", "read_video_list", "read_weak_labels", "video_id", "write_dense_csv",
]


def __getattr__(name: str) -> Any:
    if name in ("LLPDataModule", "SnippetDataModule"):
        from avvp_lightning.data import datamodules

        return getattr(datamodules, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
