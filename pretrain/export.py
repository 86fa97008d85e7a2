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

import json
import shutil
import warnings
from contextlib import ExitStack
from pathlib import Path
from typing import Union

import numpy as np
import torch

from avvp_lightning.data.llp import (SPLIT_FILES, _no_feature_file, folder_problem, load_features, raise_problems,
                                     read_video_list, video_id)
from avvp_lightning.data.synthetic import atomic_folder
from avvp_lightning.errors import DataError
from avvp_lightning.pretrain.module import PretrainModule
from avvp_lightning.runinfo import EXPORT_RECORD

MARKER = EXPORT_RECORD  # export.json, written into each exported folder: what made it (in the data fingerprint)


def _listed_videos(root: Path) -> list[tuple[str, str]]:
    """One (filename, where it is listed) per video id over the split CSVs there (train, val, test), first seen order.

    The splits without a CSV are left out, with a warning (a dataset may have no test CSV yet); none at
    all is an error.
    """
    present = [name for name in SPLIT_FILES.values() if (root / name).exists()]
    if not present:
        raise DataError(f"{root}: no split CSV ({', '.join(SPLIT_FILES.values())}); export writes the features of "
                        "the videos they list, for avvp-finetune: give the LLP dataset root, not a snippet dataset")
    absent = [name for name in SPLIT_FILES.values() if name not in present]
    if absent:
        warnings.warn(f"{root}: no {' or '.join(absent)}: the videos of {'that split' if len(absent) == 1 else 'those splits'}"
                      " are not exported (export again with --overwrite once it is there)", stacklevel=3)
    by_id: dict[str, tuple[str, str]] = {}
    for csv_name in present:
        filenames, _, lines = read_video_list(root / csv_name, labels="ignore")
        for filename, line in zip(filenames, lines):
            by_id.setdefault(video_id(filename), (filename, f"{root / csv_name}, line {line}"))
    return list(by_id.values())


def _replaceable(folder: Path) -> bool:
    """An earlier export: it has the marker, or (exports of earlier versions) only ``.npy`` files."""
    try:
        return folder.is_dir() and ((folder / MARKER).is_file() or all(p.suffix == ".npy" for p in folder.iterdir()))
    except OSError:  # unreadable: not ours to replace
        return False


def _check_widths(root: Path, folder: str, filename: str, width: int, what: str, source: str) -> None:
    """DataError when the first listed video's features are not ``width`` wide, naming the encoder's source."""
    path = root / folder / f"{video_id(filename)}.npy"
    try:
        shape = np.load(path, mmap_mode="r").shape
    except (OSError, ValueError):
        return  # missing or unreadable: load_features names it with the others
    if len(shape) == 2 and shape[1] != width:
        raise DataError(f"{path}: {what} features are {shape[1]} wide, but {source} was pretrained on "
                        f"{width}-wide {what} features; export with features of the kind it was pretrained on")


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
    overwrite: bool = False,
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
        overwrite: replace the folders of an earlier export of the same ``out_name``.

    Returns:
        The audio and visual output folders. Each holds one float32 (T, H) ``<id>.npy``
        per video and ``export.json`` (checkpoint, hyperparameters).

    Both folders are written beside their place and renamed into it once every video is done:
    an export stopped by bad input, or interrupted, leaves an earlier export as it was, never a
    mix of two checkpoints' features.

    Raises:
        DataError: a missing CSV, feature file or checkpoint, a feature of the wrong shape, an
            existing export without ``overwrite``, or ``batch_size`` below 1.
    """
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    if not out_name.strip() or out_name in (".", "..") or any(sep in out_name for sep in ("/", "\\")):
        raise DataError(f"--out_name {out_name!r}: a plain name is needed (the folders are feats/<out_name>_audio "
                        "and _visual under the root), not a path or an empty name")
    root = Path(root)
    problem = folder_problem(root)
    if problem is not None:
        raise DataError(f"{root}: {problem} (the dataset root, in the official LLP layout)")
    try:
        torch_device = torch.device(device)
    except RuntimeError as err:  # "gpu", "cuda:x"
        raise DataError(f"device {device!r}: not a torch device ({err}); use cpu, cuda or cuda:N") from None
    if torch_device.type == "cuda" and (torch_device.index or 0) >= torch.cuda.device_count():
        raise DataError(f"device {device!r}: there are {torch.cuda.device_count()} CUDA devices here; use --device cpu")
    module = _load_module(module_or_ckpt, torch_device)
    hp = module.hparams
    listed = _listed_videos(root)
    filenames = [filename for filename, _ in listed]
    missing = [_no_feature_file(path, filename, where) for filename, where in listed for folder in (audio_dir, visual_dir)
               if not (path := root / folder / f"{video_id(filename)}.npy").is_file()]
    raise_problems(missing, what=f"dataset at {root} (export needs the features of every listed video)",
                   check=f"avvp-data check {root}")  # all of them, before the first batch runs
    source = "the given module" if isinstance(module_or_ckpt, PretrainModule) else f"the checkpoint {module_or_ckpt}"
    if filenames:
        _check_widths(root, audio_dir, filenames[0], hp.audio_dim, "audio", source)
        _check_widths(root, visual_dir, filenames[0], hp.visual_dim, "visual", source)
    audio_out = root / "feats" / f"{out_name}_audio"
    visual_out = root / "feats" / f"{out_name}_visual"
    ckpt = None if isinstance(module_or_ckpt, PretrainModule) else Path(module_or_ckpt).stat()
    marker = json.dumps({
        "encoder": source, "checkpoint_bytes": ckpt and ckpt.st_size, "checkpoint_mtime_ns": ckpt and ckpt.st_mtime_ns,
        "root": str(root), "audio_dir": audio_dir, "visual_dir": visual_dir, "videos": len(filenames),
        "hparams": dict(hp),
    }, indent=1, default=str)  # which checkpoint file (size and time: a rewritten last.ckpt differs)

    was_training, original_device = module.training, next(module.parameters()).device
    module.to(torch_device).eval()
    try:
        retired: list[Path] = []  # earlier exports, deleted once both new folders are in place
        with ExitStack() as folders, torch.no_grad():
            folders.callback(lambda: [shutil.rmtree(old, ignore_errors=True) for old in retired])
            audio_tmp, visual_tmp = (
                folders.enter_context(atomic_folder(out, overwrite, _replaceable,
                                                    f"not written by avvp-pretrain export (no {MARKER})", retired))
                for out in (audio_out, visual_out))
            for start in range(0, len(filenames), batch_size):
                chunk = filenames[start:start + batch_size]
                # (B, T, Da) and (B, T, Dv); frame features are mean-pooled to T snippets
                audio = load_features(root / audio_dir, chunk, hp.num_segments, hp.audio_dim, per_segment=True)
                visual = load_features(root / visual_dir, chunk, hp.num_segments, hp.visual_dim)
                audio_emb, visual_emb = module(
                    torch.from_numpy(audio).to(torch_device), torch.from_numpy(visual).to(torch_device)
                )  # (B, T, H) each
                audio_emb = audio_emb.float().cpu().numpy()
                visual_emb = visual_emb.float().cpu().numpy()
                for i, filename in enumerate(chunk):
                    np.save(audio_tmp / f"{video_id(filename)}.npy", audio_emb[i])
                    np.save(visual_tmp / f"{video_id(filename)}.npy", visual_emb[i])
            for folder in (audio_tmp, visual_tmp):
                (folder / MARKER).write_text(marker + "\n")
    except FileExistsError as err:  # an earlier export without overwrite, or a folder not ours
        raise DataError(str(err)) from None
    finally:
        module.to(original_device).train(was_training)
    return audio_out, visual_out
