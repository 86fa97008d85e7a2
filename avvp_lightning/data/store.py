"""Fast data paths: a packed feature store built once from the official layout, and device-resident batches.

The official layout keeps three ``.npy`` files per video (the visual one 80 frames of 2048
floats); reading and pooling ~36,000 small files costs minutes on the real LLP. ``avvp-data pack
ROOT`` reads them once, through the same checked reader as the datamodules
(:func:`~avvp_lightning.data.llp.read_llp`), and writes per split one array per kind::

    <store>/index.json                  format version, options, source fingerprint, filenames, a
                                        SHA-256 of each split's ids and values
    <store>/<split>/audio.npy           (N, T, Da) float32
    <store>/<split>/visual.npy          (N, T, Dv) float32, the frames mean-pooled to segments
    <store>/<split>/motion.npy          (N, T, Dm) float32
    <store>/<split>/label.npy           (N, C) float32 weak labels
    <store>/<split>/dense_audio.npy     (N, T, C) float32, val and test only (also dense_visual)

:func:`read_store` memory-maps them copy-on-write (pages are shared between processes, nothing
is ever written back) and returns the very arrays the per-file reader returns; opening reads
each requested split once to check that every value is finite (~0.3 s for LLP's 1.3 GB from
the page cache).
The store records a fingerprint of its source (size and content hash of each CSV; count, total
size, mtimes and a hash of the names of the ``.npy`` files of each feature folder; other files
there are ignored). Reading a store whose source has changed since raises a
:class:`~avvp_lightning.errors.DataError` naming what changed and the command that rebuilds it;
a store whose source is absent (e.g. copied alone to a GPU node) is used with a warning.
Building is atomic: a temporary folder renamed into place when complete.

:class:`ResidentBatches` serves a split from tensors moved once to the training device,
slicing batches by index: no DataLoader, no per-video collate.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import posixpath
import shlex
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from stat import S_ISREG
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from avvp_lightning.data.llp import (
    DENSE_FILES, FEATURE_DIMS, FEATURE_DIRS, FEATURE_LIMIT, SPLIT_FILES, SplitData, folder_problem, raise_problems,
    read_llp,
)
from avvp_lightning.data.synthetic import atomic_folder, followed
from avvp_lightning.errors import DataError
from avvp_lightning.labels import NUM_SEGMENTS
from avvp_lightning.runinfo import file_sha256

if TYPE_CHECKING:  # torch loads only with ResidentBatches, so that `avvp-data` starts fast
    import torch

STORE_VERSION = 1
INDEX_FILE = "index.json"
STORE_FORMAT = "avvp-lightning packed LLP features"  # index.json's "format": what --overwrite may replace
ARRAY_FILES = {f"{name}.npy" for name in ("audio", "visual", "motion", "label", "dense_audio", "dense_visual")}
DEFAULT_STORE_DIR = "packed"  # ``avvp-data pack ROOT`` writes ROOT/packed
MODALITIES = ("audio", "visual", "motion")


# ------------------------------------------------------------------------------ fingerprint
def _folder(root: Path, folder: str) -> Path:
    path = Path(folder).expanduser()
    return path if path.is_absolute() else root / path


def source_fingerprint(root: str | Path, dirs: dict[str, str]) -> dict[str, Any]:
    """What identifies the content of an LLP root without reading its features (the CSVs are hashed).

    Args:
        root: Dataset root in the official layout.
        dirs: Feature folders ``{"audio": ..., "visual": ..., "motion": ...}`` relative to ``root``.

    Returns:
        ``{"csv": {name: {"size", "mtime_ns", "sha256"} or None}, "features": {folder: {"files", "bytes",
        "newest_mtime_ns", "mtime_ns_sum", "names_sha1", "stats_sha1", "folder_mtime_ns"} or
        None}}`` (None: absent). Only the ``.npy`` files count: the sum of their mtimes changes
        when any one of them is rewritten or touched, the hash of their sorted names when one is
        renamed, the hash of each name with its size and mtime when two are swapped by renaming
        (seen when their mtimes differ: files unpacked from an archive may share whole seconds);
        a README or ``.DS_Store`` added to a folder changes nothing. (The folder's own mtime,
        which such a file changes, is compared only for stores packed before ``stats_sha1``.)
    """
    root = Path(root)
    csvs: dict[str, Optional[dict[str, Any]]] = {}
    unreadable: list[str] = []  # CSVs that cannot be read: their content cannot be compared
    unlisted: list[str] = []  # feature folders that cannot be listed
    for name in (*SPLIT_FILES.values(), *DENSE_FILES.values()):
        try:
            stat = (root / name).stat()
        except FileNotFoundError:
            csvs[name] = None
            continue
        except OSError as err:  # the root cannot be searched
            unreadable.append(f"{root / name}: cannot be read ({_reason(err)})")
            csvs[name] = None
            continue
        try:  # LLP's CSVs: < 1 MB each; a folder or a FIFO is not data (the CSV reader names it)
            content: str | None = file_sha256(root / name) if S_ISREG(stat.st_mode) else None
        except OSError as err:
            unreadable.append(f"{root / name}: cannot be read ({_reason(err)})")
            content = None
        csvs[name] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": content}
    folders: dict[str, Optional[dict[str, int]]] = {}
    for modality in MODALITIES:
        path = _folder(root, dirs[modality])
        stats: dict[str, tuple[int, int]] = {}  # name -> (size, mtime_ns)
        try:
            if not path.is_dir():
                folders[dirs[modality]] = None
                continue
            with os.scandir(path) as entries:  # one stat per file: ~5 ms per 1000 files
                for entry in entries:
                    if entry.name.endswith(".npy"):
                        try:
                            stat = entry.stat()
                            stats[entry.name] = (stat.st_size, stat.st_mtime_ns)
                        except OSError:  # a broken link (an unfetched git-annex / DVC file), a link loop
                            stats[entry.name] = (-1, 0)
        except OSError as err:  # no permission to list the folder, or to search it (a folder at mode 644)
            unlisted.append(f"{path}: cannot be listed ({_reason(err)})")
            folders[dirs[modality]] = None
            continue
        names = sorted(stats)
        folders[dirs[modality]] = {
            "files": len(names), "bytes": sum(size for size, _ in stats.values()),
            "newest_mtime_ns": max((t for _, t in stats.values()), default=0),
            "mtime_ns_sum": sum(t for _, t in stats.values()), "names_sha1": _sha1(names),
            "stats_sha1": _sha1(f"{name}\t{stats[name][0]}\t{stats[name][1]}" for name in names),
            "folder_mtime_ns": path.stat().st_mtime_ns,  # compared only for stores packed without stats_sha1
        }
    fingerprint: dict[str, Any] = {"csv": csvs, "features": folders}
    if unreadable:
        fingerprint["unreadable"] = unreadable
    if unlisted:
        fingerprint["unlisted"] = unlisted
    return fingerprint


def _reason(err: OSError) -> str:
    return "permission denied" if isinstance(err, PermissionError) else str(err.strerror or err)


def _sha1(lines: Iterable[str]) -> str:
    return hashlib.sha1("\n".join(lines).encode("utf-8", "surrogateescape")).hexdigest()


def _when(ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ns / 1e9))


def fingerprint_changes(packed: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """Readable differences between the fingerprint a store was packed from and the current one."""
    changes = []
    for name, old in packed["csv"].items():
        new = now["csv"].get(name)
        if old is not None and new is not None:
            # By content: a CSV copied without its mtime (``cp``, ``scp``, a checkout) is the same CSV.
            # Stores of earlier versions recorded size and mtime only, and are compared by those.
            keys = ("size", "sha256") if "sha256" in old else ("size", "mtime_ns")
            old, new = {k: old[k] for k in keys}, {k: new[k] for k in keys}
        if old == new:
            continue
        if old is None or new is None:
            changes.append(f"{name}: {'appeared' if old is None else 'was removed'}")
        elif old["size"] != new["size"]:
            changes.append(f"{name}: {old['size']} -> {new['size']} bytes")
        elif "sha256" in old:
            changes.append(f"{name}: its content changed")
        else:
            changes.append(f"{name}: modified ({_when(old['mtime_ns'])} -> {_when(new['mtime_ns'])})")
    for folder, old in packed["features"].items():
        new = now["features"].get(folder)
        if old is not None and new is not None:
            # The keys both have; the folder's own mtime only for stores of earlier versions (no
            # stats_sha1), which had no other way to see renames.
            ignored = {"folder_mtime_ns"} if "stats_sha1" in old else set()
            shared = (old.keys() & new.keys()) - ignored
            old, new = {k: old[k] for k in shared}, {k: new[k] for k in shared}
        if old == new:
            continue
        if old is None or new is None:
            changes.append(f"{folder}/: {'appeared' if old is None else 'was removed'}")
        elif old["files"] != new["files"]:
            changes.append(f"{folder}/: {old['files']} -> {new['files']} .npy files")
        elif old["bytes"] != new["bytes"]:
            changes.append(f"{folder}/: .npy files total {old['bytes']} -> {new['bytes']} bytes")
        elif old["newest_mtime_ns"] != new["newest_mtime_ns"] or old["mtime_ns_sum"] != new["mtime_ns_sum"]:
            changes.append(f"{folder}/: .npy files were modified (newest {_when(old['newest_mtime_ns'])} when "
                           f"packed, {_when(new['newest_mtime_ns'])} here)")
        elif old.get("names_sha1") != new.get("names_sha1"):
            changes.append(f"{folder}/: .npy files were renamed")
        elif old.get("stats_sha1") != new.get("stats_sha1"):
            changes.append(f"{folder}/: .npy files were swapped (renamed to each other's names)")
        else:
            changes.append(f"{folder}/: files were renamed, added or removed")  # a store of an earlier version
    return changes


# ------------------------------------------------------------------------------------ build
def _normalized_dir(folder: str) -> str:
    """One spelling per folder, the same on every OS: ``feats/vggish/``, ``./feats/vggish`` -> ``feats/vggish``."""
    return posixpath.normpath(folder.replace("\\", "/"))


def packed_options(index: dict[str, Any]) -> dict[str, Any]:
    """The options a store was packed with, its folders spelled as :func:`store_options` spells them."""
    options = index["options"]
    return {**options, "dirs": {m: _normalized_dir(d) for m, d in options["dirs"].items()}}


def store_options(audio_dir: str, visual_dir: str, motion_dir: str, audio_dim: Optional[int],
                  visual_dim: Optional[int], motion_dim: Optional[int], num_segments: int) -> dict[str, Any]:
    """The reading options a store records (``index.json``'s ``options``) and is checked against."""
    dirs = {"audio": audio_dir, "visual": visual_dir, "motion": motion_dir}
    return {"dirs": {m: _normalized_dir(d) for m, d in dirs.items()},
            "dims": {"audio": audio_dim, "visual": visual_dim, "motion": motion_dim}, "num_segments": num_segments}


def pack_store(root: str | Path, out: Optional[str | Path] = None, *, splits: Sequence[str] = ("train", "val", "test"),
               audio_dir: str = FEATURE_DIRS["audio"], visual_dir: str = FEATURE_DIRS["visual"],
               motion_dir: str = FEATURE_DIRS["motion"], audio_dim: Optional[int] = FEATURE_DIMS["audio"],
               visual_dim: Optional[int] = FEATURE_DIMS["visual"], motion_dim: Optional[int] = FEATURE_DIMS["motion"],
               num_segments: int = NUM_SEGMENTS, overwrite: bool = False) -> Path:
    """Pack the splits of an LLP root into a store (see the module docstring for the layout).

    Every split is read by :func:`~avvp_lightning.data.llp.read_llp` with the visual frames pooled,
    so the store holds exactly what the per-file path yields; the problems of all splits are
    raised together as one DataError, and nothing is written then.

    Args:
        root: Dataset root in the official layout.
        out: Store folder (absent or empty unless ``overwrite``); default ``ROOT/packed``.
        splits: Splits to pack.
        audio_dir, visual_dir, motion_dir: Feature folders, relative to ``root``.
        audio_dim, visual_dim, motion_dim: Expected feature widths (None: any).
        num_segments: Segments per video.
        overwrite: Replace an existing store (see :func:`is_store`); any other non-empty
            folder, or one that holds ``root``, is refused either way.

    Returns:
        The store's absolute path; it appears at once, complete (atomic rename).

    Raises:
        DataError: A problem of the dataset (all of them listed), or an ``out`` that is a file
            or holds ``root``.
        FileExistsError: ``out`` is another non-empty folder, or a store and not ``overwrite``.
    """
    root = Path(root).expanduser().absolute()
    out = Path(out).expanduser().absolute() if out is not None else root / DEFAULT_STORE_DIR
    unknown = [s for s in splits if s not in SPLIT_FILES]
    if unknown:
        raise ValueError(f"unknown split(s) {unknown}; choose from {list(SPLIT_FILES)}")
    problem = folder_problem(root)
    if problem:
        raise DataError(f"{root}: {problem} (the dataset root, in the official LLP layout)")
    target = followed(out)  # where a symbolic link points
    if target.exists() and not target.is_dir():
        raise DataError(f"{out}: a file, not a store folder")
    if root.resolve().is_relative_to(target.resolve()):
        raise DataError(f"{out}: holds the dataset {root}; a store needs a folder of its own "
                        f"(default: ROOT/{DEFAULT_STORE_DIR})")
    foreign = _foreign_entries(target) if overwrite and target.is_dir() and is_store(target) else []
    if foreign:  # the whole folder is replaced: what the user put in it would go with it
        raise FileExistsError(f"{out}: holds files that are not the store's ({', '.join(foreign[:5])}"
                              f"{' ...' if len(foreign) > 5 else ''}); move them out, then pack again "
                              "(--overwrite replaces the whole folder)")
    options = store_options(audio_dir, visual_dir, motion_dir, audio_dim, visual_dim, motion_dim, num_segments)
    before = source_fingerprint(root, options["dirs"])
    # An unreadable CSV, even of a split not packed: its content identifies the store's source.
    raise_problems([*before.pop("unlisted", []), *before.pop("unreadable", [])],
                   what=f"LLP dataset at {root} (nothing packed)")
    index: dict[str, Any] = {"format": STORE_FORMAT, "version": STORE_VERSION,
                             "source": str(root), "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                             "options": options, "fingerprint": before, "splits": {}}
    problems: list[str] = []
    with atomic_folder(out, overwrite, is_store, f"not a packed store (no {INDEX_FILE} of this format)") as tmp:
        for split in splits:  # one split in memory at a time
            data = read_llp(root, [split], audio_dir=audio_dir, visual_dir=visual_dir, motion_dir=motion_dir,
                            audio_dim=audio_dim, visual_dim=visual_dim, motion_dim=motion_dim,
                            num_segments=num_segments, pool_visual=True, problems=problems).get(split)
            if problems or data is None:
                continue
            (tmp / split).mkdir()
            arrays = {name: np.ascontiguousarray(a, dtype=np.float32) for name, a in _arrays(data).items()}
            content = hashlib.sha256("\n".join(data.filenames).encode("utf-8", "surrogateescape"))
            for name, array in arrays.items():
                np.save(tmp / split / f"{name}.npy", array)
                content.update(f"\n{name} {array.shape}\n".encode())
                content.update(memoryview(array).cast("B"))  # the float32 values' bytes
            index["splits"][split] = {"videos": len(data.filenames), "filenames": data.filenames,
                                      "arrays": {name: list(a.shape) for name, a in arrays.items()},
                                      "sha256": content.hexdigest()}  # ~1 s per GB; identifies the split's data
        raise_problems(problems, what=f"LLP dataset at {root} (nothing packed)")
        changed = fingerprint_changes(before, source_fingerprint(root, options["dirs"]))
        if changed:
            raise DataError(f"{root} changed while it was being packed ({'; '.join(changed)}); pack it again")
        (tmp / INDEX_FILE).write_text(json.dumps(index))
    return out


def _arrays(data: SplitData) -> dict[str, np.ndarray]:
    arrays = {"audio": data.audio, "visual": data.visual, "motion": data.motion, "label": data.labels}
    if data.dense_audio is not None:
        arrays.update(dense_audio=data.dense_audio, dense_visual=data.dense_visual)
    return arrays


def _foreign_entries(folder: Path) -> list[str]:
    """What a store folder holds besides its index and split folders of store arrays (relative names)."""
    foreign = []
    for entry in sorted(folder.iterdir()):
        if entry.name == INDEX_FILE:
            continue
        if not (entry.is_dir() and entry.name in SPLIT_FILES):
            foreign.append(entry.name)
            continue
        foreign += [f"{entry.name}/{f.name}" for f in sorted(entry.iterdir()) if f.name not in ARRAY_FILES]
    return foreign


def is_store(folder: Path) -> bool:
    """Whether ``folder`` holds a store written by :func:`pack_store`, the only folder ``overwrite`` replaces.

    Its ``index.json`` names the store format; or, when that index is damaged (unreadable or
    without a format), the folder holds nothing but it and split folders of store arrays.
    """
    try:
        index = json.loads((folder / INDEX_FILE).read_text())
    except OSError:
        return False
    except ValueError:
        index = None
    if isinstance(index, dict) and "format" in index:
        return index["format"] == STORE_FORMAT
    return any(e.name != INDEX_FILE for e in folder.iterdir()) and not _foreign_entries(folder)


# ------------------------------------------------------------------------------------- read
def read_index(store: str | Path) -> dict[str, Any]:
    """The parsed ``index.json`` of a store; DataError when it is missing or of another version."""
    path = Path(store).expanduser() / INDEX_FILE
    if not path.is_file():
        raise DataError(f"{path.parent}: not a packed LLP store (no {INDEX_FILE}); build it with "
                        f"`avvp-data pack ROOT --out {path.parent}`")
    unreadable: Optional[Exception] = None
    try:
        index = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        index, unreadable = None, err
    source = index.get("source") if isinstance(index, dict) and isinstance(index.get("source"), str) else "ROOT"
    rebuild = f"rebuild it with `avvp-data pack {source} --out {path.parent} --overwrite`"
    if unreadable is not None:
        raise DataError(f"{path}: unreadable store index ({unreadable}); {rebuild}")
    if not isinstance(index, dict):
        raise DataError(f"{path}: damaged store index (not a JSON object); {rebuild}")
    if index.get("version") != STORE_VERSION:
        raise DataError(f"{path}: store format version {index.get('version')}, this avvp-lightning reads "
                        f"{STORE_VERSION}; {rebuild}")
    problem = _index_problem(index)
    if problem:
        raise DataError(f"{path}: damaged store index ({problem}); {rebuild}")
    return index


def _index_problem(index: dict[str, Any]) -> Optional[str]:
    """What is missing or inconsistent in a parsed index (None when it is sound)."""
    for key, kind in (("source", str), ("created", str), ("options", dict), ("fingerprint", dict), ("splits", dict)):
        if not isinstance(index.get(key), kind):
            return f"no {key!r}"
    options = index["options"]
    if not (isinstance(options.get("dirs"), dict) and isinstance(options.get("dims"), dict)
            and all(m in options["dirs"] and m in options["dims"] for m in MODALITIES)
            and isinstance(options.get("num_segments"), int)):
        return "incomplete 'options'"
    if not all(isinstance(index["fingerprint"].get(k), dict) for k in ("csv", "features")):
        return "incomplete 'fingerprint'"
    for split, entry in index["splits"].items():
        if not (isinstance(entry, dict) and isinstance(entry.get("filenames"), list)
                and isinstance(entry.get("arrays"), dict)):
            return f"incomplete entry of split {split!r}"
        names = set(entry["arrays"])
        if not {"audio", "visual", "motion", "label"} <= names or len(names & {"dense_audio", "dense_visual"}) == 1:
            return f"split {split!r}: arrays {sorted(names)}"
        rows = {name: shape[0] for name, shape in entry["arrays"].items() if isinstance(shape, list) and shape}
        if len(rows) != len(entry["arrays"]) or any(n != len(entry["filenames"]) for n in rows.values()):
            return f"split {split!r}: {len(entry['filenames'])} video ids for arrays of {sorted(set(rows.values()))} rows"
    return None


def stale_reasons(index: dict[str, Any], root: str | Path) -> Optional[list[str]]:
    """What changed in ``root`` since the store was packed ([] = up to date, None = not checkable).

    Without any of the feature folders at ``root`` (a store copied alone to a GPU node, or with
    the CSVs only) only the CSVs can be compared: None when they are absent too or unchanged,
    else what changed in them.
    """
    now = source_fingerprint(root, index["options"]["dirs"])
    if now.get("unreadable") or now.get("unlisted"):
        raise DataError(f"cannot check that the store is up to date with {root}: "
                        + "; ".join([*now.get("unlisted", []), *now.get("unreadable", [])])
                        + " (check their permissions)")
    if any(v is not None for v in now["features"].values()):
        return fingerprint_changes(index["fingerprint"], now)
    if all(v is None for v in now["csv"].values()):
        return None
    return fingerprint_changes({"csv": index["fingerprint"]["csv"], "features": {}}, {**now, "features": {}}) or None


def read_store(store: str | Path, splits: Sequence[str], *, root: Optional[str | Path] = None,
               audio_dir: str = FEATURE_DIRS["audio"], visual_dir: str = FEATURE_DIRS["visual"],
               motion_dir: str = FEATURE_DIRS["motion"], audio_dim: Optional[int] = FEATURE_DIMS["audio"],
               visual_dim: Optional[int] = FEATURE_DIMS["visual"], motion_dim: Optional[int] = FEATURE_DIMS["motion"],
               num_segments: int = NUM_SEGMENTS, pool_visual: bool = True) -> dict[str, SplitData]:
    """Splits of a packed store, equal to what :func:`~avvp_lightning.data.llp.read_llp` reads from its source.

    Arrays are memory-mapped copy-on-write. The options must be the ones the store was packed
    with (the visual features are pooled, so ``pool_visual=False`` needs the per-file layout).

    Args:
        store: Store folder.
        splits: Splits to read.
        root: Source root to check freshness against (default: the root it was packed from).
        audio_dir, visual_dir, motion_dir, audio_dim, visual_dim, motion_dim, num_segments,
            pool_visual: As for ``read_llp``; checked against the store's.

    Raises:
        DataError: The store is missing, stale, of other options, lacks a split or is damaged.
    """
    store = Path(store).expanduser()
    index = read_index(store)
    packed, want = packed_options(index), store_options(audio_dir, visual_dir, motion_dir, audio_dim, visual_dim,
                                                         motion_dim, num_segments)
    mismatch = [f"{key}.{m}: store {packed[key][m]}, asked {want[key][m]}" for key in ("dirs", "dims")
                for m in MODALITIES if want[key][m] is not None and packed[key][m] != want[key][m]]
    if packed["num_segments"] != num_segments:
        mismatch.append(f"num_segments: store {packed['num_segments']}, asked {num_segments}")
    if not pool_visual:
        mismatch.append("pool_visual: the store holds pooled visual features; pool_visual=False needs the "
                        "per-file layout (leave data.store unset)")
    if mismatch:
        raise DataError(f"{store}: packed with other options: " + "; ".join(mismatch))
    source = Path(root).expanduser() if root is not None else Path(index["source"])
    rebuild = pack_command(source, store, packed, [*index["splits"], *splits])
    reasons = stale_reasons(index, source)
    if reasons is None:
        warnings.warn(f"{store}: the feature folders of its source are not under {source}; using the store "
                      "without checking that it is up to date", stacklevel=2)
    elif reasons and not store.resolve().is_relative_to(source.resolve()) and (
            source.resolve() != Path(index["source"]).resolve()):  # not the store of this (maybe moved) root
        raise DataError(f"{store}: packed from {index['source']}, not from {source}, whose files differ "
                        f"({'; '.join(reasons)}). If {source} is another dataset, give --data.store its own "
                        f"store (`avvp-data pack {source}` writes {source / DEFAULT_STORE_DIR}); if it is this "
                        f"one, moved or changed, rebuild: {rebuild}")
    elif reasons:
        raise DataError(f"{store} is out of date: {source} changed since it was packed ({index['created']}):\n"
                        + "\n".join(f"  - {r}" for r in reasons)
                        + f"\nrebuild it: {rebuild}")
    missing = [s for s in splits if s not in index["splits"]]
    if missing:
        raise DataError(f"{store}: no split(s) {', '.join(missing)} (packed: {', '.join(index['splits'])}); "
                        f"pack them with `{pack_command(source, store, packed, [*index['splits'], *missing])}`")
    return {split: _load_split(store, split, index["splits"][split]) for split in splits}


def pack_command(source: Path, store: Path, options: dict[str, Any], splits: Iterable[str]) -> str:
    """The ``avvp-data pack`` command that rebuilds ``store`` with its ``options`` and ``splits``."""
    words = ["avvp-data", "pack", str(source), "--out", str(store), "--overwrite"]
    for m in MODALITIES:
        if options["dirs"][m] != _normalized_dir(FEATURE_DIRS[m]):
            words += [f"--{m}-dir", options["dirs"][m]]
        if options["dims"][m] is not None and options["dims"][m] != FEATURE_DIMS[m]:
            words += [f"--{m}-dim", str(options["dims"][m])]
    if options["num_segments"] != NUM_SEGMENTS:
        words += ["--num-segments", str(options["num_segments"])]
    chosen = [s for s in SPLIT_FILES if s in set(splits)]
    if chosen != list(SPLIT_FILES):
        words += ["--splits", *chosen]
    return shlex.join(words)


def _load_split(store: Path, split: str, entry: dict[str, Any]) -> SplitData:
    arrays = {}
    for name, shape in entry["arrays"].items():
        path = store / split / f"{name}.npy"
        try:
            array = np.load(path, mmap_mode="c", allow_pickle=False)  # copy-on-write: never written back
        except (OSError, ValueError, EOFError) as err:  # EOFError: an empty file
            raise DataError(f"{path}: missing or damaged store file ({type(err).__name__}: {err}); rebuild the "
                            "store with `avvp-data pack ... --overwrite`") from err
        if list(array.shape) != shape or array.dtype != np.float32:
            raise DataError(f"{path}: {array.dtype} {tuple(array.shape)}, the index says float32 {tuple(shape)}")
        row = _first_bad(array)
        if row is not None:
            raise DataError(f"{path}: NaN, infinite or too large values (beyond {FEATURE_LIMIT:.0e}) in row {row} "
                            f"(video {entry['filenames'][row]}); rebuild the store with `avvp-data pack ... "
                            "--overwrite`")
        arrays[name] = array
    return SplitData(list(entry["filenames"]), arrays["label"], arrays["audio"], arrays["visual"], arrays["motion"],
                     arrays.get("dense_audio"), arrays.get("dense_visual"))


def _first_bad(array: np.ndarray) -> Optional[int]:
    """Row of the first NaN, infinity or value beyond ``FEATURE_LIMIT`` in ``array`` (None: none), read in
    blocks of ~64 MiB (a store packed before the limit was checked may hold such values)."""
    step = max(1, (1 << 24) // max(1, math.prod(array.shape[1:])))
    for start in range(0, len(array), step):
        block = array[start:start + step]
        bad = ~(np.abs(block) <= FEATURE_LIMIT).reshape(len(block), -1).all(axis=1)  # (rows,) NaN compares False
        if bad.any():
            return start + int(np.argmax(bad))
    return None


# -------------------------------------------------------------------------- resident batches
class ResidentBatches:
    """Batches sliced by index from tensors held on one device (a sampler-free loader).

    The tensors move to ``device`` once, on the first iteration; each batch is then one gather
    per tensor. Batches are dicts like the DataLoader's: ``id`` (a list of strings) plus one
    ``(B, ...)`` tensor per name.

    Order: with ``shuffle``, epoch ``e`` uses ``randperm(N)`` of a generator seeded ``seed + e``,
    the same on every device and every process (not the DataLoader path's order); otherwise list
    order. The epoch advances by one per iteration; Lightning sets it through
    ``sampler.set_epoch`` at each epoch start, so a resumed run repeats the same orders.

    Processes (DDP): with ``pad`` (training) the order is padded with its first indices to a
    multiple of ``world_size`` and rank ``r`` takes every ``world_size``-th index from ``r``, as
    PyTorch's ``DistributedSampler``, so all ranks run the same number of steps. Without ``pad``
    (evaluation) rank ``r`` takes the block ``r*N//W`` to ``(r+1)*N//W - 1``: every video once,
    rank order = list order.

    Args:
        ids: Video ids (N).
        tensors: Name -> ``(N, ...)`` tensor.
        batch_size: Videos per batch (per process).
        shuffle: New random order each epoch.
        seed: Base seed of the order.
        device: Where the tensors live and the batches are made.
        rank: This process's rank.
        world_size: Number of processes.
        pad: Pad to equal shards (training) instead of disjoint blocks (evaluation).
        drop_last: Drop the last, smaller batch.
    """

    def __init__(self, ids: Sequence[str], tensors: dict[str, torch.Tensor], batch_size: int, *, shuffle: bool = False,
                 seed: int = 0, device: torch.device | str = "cpu", rank: int = 0, world_size: int = 1,
                 pad: bool = False, drop_last: bool = False) -> None:
        import torch

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside [0, {world_size})")
        for name, tensor in tensors.items():
            if len(tensor) != len(ids):
                raise ValueError(f"{name} has {len(tensor)} rows for {len(ids)} ids")
        if not pad and 0 < len(ids) < world_size:
            raise DataError(f"{len(ids)} videos for {world_size} processes; every process needs at least one "
                            "(use fewer devices)")
        self.ids, self.tensors = list(ids), tensors
        self.batch_size, self.shuffle, self.seed, self.device = batch_size, shuffle, seed, torch.device(device)
        self.rank, self.world_size, self.pad, self.drop_last = rank, world_size, pad, drop_last
        self.epoch = 0
        self._resident: Optional[dict[str, torch.Tensor]] = None

    batch_sampler = None  # read by Lightning's loader checks, like a DataLoader's

    @property
    def sampler(self) -> "ResidentBatches":
        """Itself: Lightning calls ``loader.sampler.set_epoch(epoch)`` at every epoch start."""
        return self

    def set_epoch(self, epoch: int) -> None:
        """Use the order of ``epoch`` on the next iteration."""
        self.epoch = epoch

    def indices(self, epoch: int) -> torch.Tensor:
        """This process's video indices for ``epoch``, in batch order (CPU, int64)."""
        import torch

        n = len(self.ids)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + epoch)) if self.shuffle \
            else torch.arange(n)
        if self.world_size == 1:
            return order
        if self.pad:
            total = math.ceil(n / self.world_size) * self.world_size
            order = order.repeat(math.ceil(total / max(n, 1)))[:total] if n else order
            return order[self.rank::self.world_size]
        return order[self.rank * n // self.world_size:(self.rank + 1) * n // self.world_size]

    def _count(self) -> int:
        n, w = len(self.ids), self.world_size
        return math.ceil(n / w) if self.pad else (self.rank + 1) * n // w - self.rank * n // w

    def __len__(self) -> int:
        count = self._count()
        return count // self.batch_size if self.drop_last else math.ceil(count / self.batch_size)

    def on_device(self) -> dict[str, torch.Tensor]:
        """The tensors on ``device`` (moved on first use, then kept)."""
        if self._resident is None:
            self._resident = {k: v.to(self.device) for k, v in self.tensors.items()}
        return self._resident

    def __iter__(self) -> Iterator[dict[str, Any]]:
        data, order = self.on_device(), self.indices(self.epoch)
        self.epoch += 1
        on_device = order.to(self.device, non_blocking=True)
        for b in range(len(self)):
            lo, hi = b * self.batch_size, min((b + 1) * self.batch_size, len(order))
            rows = on_device[lo:hi]  # (B,)
            batch: dict[str, Any] = {"id": [self.ids[i] for i in order[lo:hi].tolist()]}
            batch.update({name: tensor.index_select(0, rows) for name, tensor in data.items()})
            yield batch
