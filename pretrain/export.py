"""Export a pretrained encoder's contextualized features as LLP feature folders.

``export_features`` runs a trained :class:`~avvp_lightning.pretrain.module.PretrainModule`
over every video listed in an LLP root's split CSVs and writes

    <root>/feats/<out_name>_audio/<video id>.npy    float32 (T, H)
    <root>/feats/<out_name>_visual/<video id>.npy   float32 (T, H)

in the same per-video layout as the official features, so finetuning reads them like any
other feature folder (``audio_dir=feats/<out_name>_audio``, ``visual_dir=
feats/<out_name>_visual``, ``audio_dim = visual_dim = H``; motion stays R(2+1)D).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Union

import numpy as np
import torch

from avvp_lightning.data.llp import SPLIT_FILES, load_features, read_video_list, video_id
from avvp_lightning.errors import DataError
from avvp_lightning.pretrain.module import PretrainModule


def _listed_videos(root: Path) -> list[str]:
    """One filename per video id over every split CSV (train, val, test), first seen order."""
    by_id: dict[str, str] = {}
    for csv_name in SPLIT_FILES.values():
        filenames, _, _ = read_video_list(root / csv_name, labels="ignore")
        for filename in filenames:
            by_id.setdefault(video_id(filename), filename)
    return list(by_id.values())


def _save_atomic(path: Path, array: np.ndarray) -> None:
    """Write ``array`` to ``path`` (.npy) through a temporary file and ``os.replace``."""
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            np.save(file, array)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load_module(module_or_ckpt: Union[PretrainModule, str, Path], device: torch.device) -> PretrainModule:
    """The module itself, or the one stored in a checkpoint (weights and hyperparameters)."""
    if isinstance(module_or_ckpt, PretrainModule):
        return module_or_ckpt
    path = Path(module_or_ckpt)
    if not path.is_file():
        raise DataError(f"{path}: checkpoint not found")
    return PretrainModule.load_from_checkpoint(path, map_location=device, weights_only=True)


def export_features(
    module_or_ckpt: Union[PretrainModule, str, Path],
    root: Union[str, Path],
    *,
    out_name: str,
    audio_dir: str = "feats/vggish",
    visual_dir: str = "feats/res152",
    batch_size: int = 64,
    device: str = "cpu",
) -> tuple[Path, Path]:
    """Write the encoder's contextualized embeddings of every listed LLP video.

    Args:
        module_or_ckpt: a trained ``PretrainModule`` or the path of its checkpoint.
        root: LLP root holding ``AVVP_train.csv``, ``AVVP_val_pd.csv``, ``AVVP_test_pd.csv``
            and the input feature folders.
        out_name: prefix of the new folders ``feats/<out_name>_audio`` and ``_visual``.
        audio_dir: input audio feature folder, relative to ``root`` ((T, Da) per video).
        visual_dir: input visual feature folder, relative to ``root`` ((k*T, Dv) per video,
            mean-pooled over each k frames; ResNet152 is (80, 2048)).
        batch_size: videos per forward pass.
        device: where to run the encoder (``cpu``, ``cuda``, ...).

    Returns:
        The audio and visual output folders. Each holds one float32 (T, H) ``<id>.npy``
        per video, written atomically.

    Raises:
        DataError: a missing CSV, feature file or checkpoint, or a feature of the wrong shape.
    """
    root = Path(root)
    torch_device = torch.device(device)
    module = _load_module(module_or_ckpt, torch_device)
    hp = module.hparams
    filenames = _listed_videos(root)
    audio_out = root / "feats" / f"{out_name}_audio"
    visual_out = root / "feats" / f"{out_name}_visual"
    audio_out.mkdir(parents=True, exist_ok=True)
    visual_out.mkdir(parents=True, exist_ok=True)

    was_training, original_device = module.training, next(module.parameters()).device
    module.to(torch_device).eval()
    try:
        with torch.no_grad():
            for start in range(0, len(filenames), batch_size):
                chunk = filenames[start:start + batch_size]
                # (B, T, Da) and (B, T, Dv); frame features are mean-pooled to T snippets
                audio = load_features(root / audio_dir, chunk, hp.num_segments, hp.audio_dim)
                visual = load_features(root / visual_dir, chunk, hp.num_segments, hp.visual_dim)
                audio_emb, visual_emb = module(
                    torch.from_numpy(audio).to(torch_device), torch.from_numpy(visual).to(torch_device)
                )  # (B, T, H) each
                audio_emb = audio_emb.float().cpu().numpy()
                visual_emb = visual_emb.float().cpu().numpy()
                for i, filename in enumerate(chunk):
                    _save_atomic(audio_out / f"{video_id(filename)}.npy", audio_emb[i])
                    _save_atomic(visual_out / f"{video_id(filename)}.npy", visual_emb[i])
    finally:
        module.to(original_device).train(was_training)
    return audio_out, visual_out
