"""What a run was made of: seed, resolved config, package versions and a fingerprint of its data.

The stage CLIs write :func:`run_record` to ``<run folder>/run.json`` (one entry per subcommand)
at the start of ``fit``/``validate``/``test``/``predict``; ``test`` adds it to ``metrics.json``
and prints :func:`format_record`. Two runs with equal records (apart from the time) and the same
hardware compute the same numbers.

The data fingerprint hashes the CSV files at the top of the dataset root (the split and dense
truth files of LLP) with SHA-256, and summarises each feature folder by its file names (hashed)
and the shapes and dtypes read from the ``.npy`` headers. Feature values are not hashed (the
ResNet152 folder of LLP is about 8 GB); ``avvp-data check`` validates them.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
from collections import Counter
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import torch

# distribution name -> key in the record
PACKAGES = {
    "avvp-lightning": "avvp_lightning", "torch": "torch", "pytorch-lightning": "pytorch_lightning",
    "torchmetrics": "torchmetrics", "numpy": "numpy", "pandas": "pandas", "jsonargparse": "jsonargparse",
}
RUN_FILE = "run.json"


def package_versions() -> dict[str, Optional[str]]:
    """Versions of Python and of the packages that decide a run's numbers (None: not installed)."""
    versions: dict[str, Optional[str]] = {"python": platform.python_version()}
    for dist, key in PACKAGES.items():
        try:
            versions[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[key] = None
    return versions


def platform_info() -> dict[str, Any]:
    """Hardware and math settings that can change floating-point results."""
    return {
        "platform": platform.platform(), "machine": platform.machine(),
        "torch_threads": torch.get_num_threads(), "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
    }


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _npy_header(path: Path) -> str:
    """``"(10, 128) float32"`` from a .npy header, or ``"unreadable"``."""
    try:
        with open(path, "rb") as file:
            version = np.lib.format.read_magic(file)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(file)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(file)
            else:
                array = np.load(path, mmap_mode="r", allow_pickle=False)
                shape, dtype = array.shape, array.dtype
    except Exception:  # not a .npy file, truncated header: summarised, reported by the data checks
        return "unreadable"
    return f"{tuple(shape)} {np.dtype(dtype)}"


# What ``avvp-pretrain export`` writes beside the features it makes.
EXPORT_RECORD = "export.json"


def feature_summary(folder: str | Path) -> dict[str, Any]:
    """Number of ``.npy`` files, SHA-256 of their sorted names, and a count per shape and dtype.

    Features of the same names and shapes exported from another pretraining checkpoint differ
    only in values, which are not read here; the SHA-256 of the folder's ``export.json`` (which
    names the checkpoint, with its size and time) is added where there is one, so they differ.
    """
    folder = Path(folder)
    try:
        if not folder.is_dir():
            return {"missing": True}
        names = sorted(entry.name for entry in os.scandir(folder) if entry.name.endswith(".npy"))
    except OSError as err:  # no permission: summarised, reported by the data checks when the data loads
        return {"unreadable": err.strerror or type(err).__name__}
    shapes = Counter(_npy_header(folder / name) for name in names)
    summary = {
        "files": len(names),
        "names_sha256": hashlib.sha256("\n".join(names).encode()).hexdigest(),
        "shapes": dict(sorted(shapes.items())),
    }
    try:  # features exported by avvp-pretrain export: its record names the checkpoint (file, size, time)
        text = (folder / EXPORT_RECORD).read_bytes()
    except OSError:
        return summary
    try:  # where the root was is not what the features are
        text = json.dumps({k: v for k, v in json.loads(text).items() if k != "root"}, sort_keys=True).encode()
    except (ValueError, AttributeError):
        pass
    summary["export_sha256"] = hashlib.sha256(text).hexdigest()
    return summary


def data_fingerprint(root: str | Path, feature_dirs: Mapping[str, str],
                     store: Optional[str | Path] = None) -> dict[str, Any]:
    """SHA-256 of each CSV at the top of ``root`` and a summary of each feature folder.

    Args:
        root: The dataset root.
        feature_dirs: ``{name: folder}``, folders relative to ``root`` or absolute.
        store: The packed store the run reads, if any: its path and :func:`store_sha256` are
            recorded; when none of the feature folders is at ``root`` (a store used without its
            source) that hash stands in for them in ``sha256``.

    Returns:
        ``{"root", "csv": {file: sha256}, "features": {name: {"dir", "files", "names_sha256",
        "shapes"}}, "sha256"}`` (with a store also ``"store": {"path", "sha256"}``); the last
        hashes the CSVs and features (see ``store``), not where they are, so the same data gives
        the same hash on any machine, read per file or from a store.
    """
    root = Path(root).expanduser()
    # Regular, readable files only: a folder or a dangling link named *.csv is not data (the
    # CSVs the stage reads are checked, with a named error, when the data loads).
    try:
        listed = sorted(entry.path for entry in os.scandir(root) if entry.name.endswith(".csv"))
    except OSError:  # not a folder, or not readable: reported by the data checks when the data loads
        listed = []
    csvs = {}
    for path in map(Path, listed):
        try:
            if path.is_file():  # not a folder, a dangling link or a FIFO (which would block the read)
                csvs[path.name] = file_sha256(path)
        except OSError:  # no permission
            continue
    features = {name: {"dir": folder, **feature_summary(root / folder)} for name, folder in sorted(feature_dirs.items())}
    stored = None if store is None else {"path": str(Path(store).expanduser().resolve()), "sha256": store_sha256(store)}
    record = {"root": str(root.resolve()), "csv": csvs, "features": features}
    if stored is not None:
        record["store"] = stored
    record["sha256"] = _data_digest(record)
    return record


def _data_digest(record: Mapping[str, Any], exports: bool = True) -> str:
    """The ``sha256`` of a :func:`data_fingerprint` record; ``exports=False``: as if no folder had an ``export.json``."""
    features = {name: {k: v for k, v in summary.items() if exports or k != "export_sha256"}
                for name, summary in (record.get("features") or {}).items()}
    content: dict[str, Any] = {"csv": record.get("csv"), "features": features}
    if record.get("store") and all(f.get("missing") for f in features.values()):
        content["store"] = record["store"]["sha256"]
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def same_data(before: Mapping[str, Any], after: Mapping[str, Any]) -> bool:
    """Whether two :func:`data_fingerprint` records can be the same data.

    Equal hashes, or equal CSVs and the same packed store. Read from a store alone (its feature
    folders not at the root, say the CSVs and the store copied to a GPU node), the hash holds the
    store's instead of the folders' summary; with equal CSVs and no store to compare on both
    sides, the features cannot be compared, and they count as the same. A record made before
    fingerprints held exported folders' ``export.json`` is compared with the other without it.
    """
    if before.get("sha256") == after.get("sha256"):
        return True
    exported = [any("export_sha256" in f for f in (record.get("features") or {}).values()) for record in (before, after)]
    if exported[0] != exported[1]:  # one recorded before fingerprints held export.json: compared without it
        plain, other = (before, after) if exported[1] else (after, before)
        if plain.get("sha256") == _data_digest(other, exports=False):
            return True
    if before.get("csv") != after.get("csv"):
        return False
    stores = [(record.get("store") or {}).get("sha256") for record in (before, after)]
    if all(stores):
        return stores[0] == stores[1]
    return any(all(f.get("missing") for f in (record.get("features") or {}).values()) for record in (before, after))


def store_sha256(store: str | Path) -> Optional[str]:
    """SHA-256 identifying a packed store's data, the same for every packing of the same data.

    It hashes the feature sizes, segments and each split's content hash (its ids and values,
    computed when packing); for a store of an earlier version, without those, each split's ids
    and array shapes. None when the store's ``index.json`` cannot be read.
    """
    try:
        index = json.loads((Path(store).expanduser() / "index.json").read_text())
        options, splits = index["options"], index["splits"]
        content = {"dims": options["dims"], "num_segments": options["num_segments"],
                   "splits": {split: entry.get("sha256") or {"filenames": entry["filenames"], "arrays": entry["arrays"]}
                              for split, entry in splits.items()}}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def run_record(subcommand: str, seed: Optional[int], config: Mapping[str, Any],
               data: Optional[Mapping[str, Any]], ckpt_path: Optional[str] = None,
               command: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """Everything needed to repeat a run: seed, config, versions, platform, data fingerprint.

    ``command`` is the command line (default: this process's ``sys.argv``).
    """
    return {
        "subcommand": subcommand,
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seed": seed,
        "ckpt_path": ckpt_path,
        "command": list(command) if command is not None else [Path(sys.argv[0]).name, *sys.argv[1:]],
        "versions": package_versions(),
        "platform": platform_info(),
        "data": dict(data) if data is not None else None,
        "config": dict(config),
    }


def write_atomic(path: str | Path, content: str | Callable[[Any], None]) -> None:
    """Write a file whole or not at all: to ``.<name>.tmp-<pid>`` beside it, then one rename.

    ``content`` is the text, or a function writing to the open binary file. A full disk or an
    interrupt leaves the previous file as it was, and no temporary file.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as file:
            if callable(content):
                content(file)
            else:
                file.write(content.encode())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_json_atomic(path: Path, value: Any) -> None:
    write_atomic(path, json.dumps(value, indent=2, default=str) + "\n")


def read_run_records(run_dir: str | Path) -> dict[str, Any]:
    """The entries of ``<run_dir>/run.json`` by subcommand; empty when there is none (or it is unreadable)."""
    try:
        entries = json.loads((Path(run_dir) / RUN_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return entries if isinstance(entries, dict) else {}


def write_run_record(run_dir: str | Path, record: Mapping[str, Any], resumed: bool = False) -> Path:
    """Store ``record`` in ``<run_dir>/run.json`` under its subcommand (other entries kept).

    With ``resumed`` (a fit that continues the run's own checkpoint) the earlier entry of the
    subcommand stays, and the resume is appended to its ``resumes`` list (time, command,
    checkpoint, versions, platform, and the config values that changed), so the record still
    says how the run began.
    """
    path = Path(run_dir) / RUN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    entries = read_run_records(run_dir)
    earlier = entries.get(record["subcommand"])
    if resumed and isinstance(earlier, dict):
        resume = {key: record.get(key) for key in ("time", "ckpt_path", "command", "versions", "platform")}
        resume["changes"] = config_changes(earlier.get("config") or {}, record.get("config") or {})
        entries[record["subcommand"]] = {**earlier, "resumes": [*earlier.get("resumes", []), resume]}
    else:
        entries[record["subcommand"]] = dict(record)
    _write_json_atomic(path, entries)
    return path


def fit_options(fit: Mapping[str, Any]) -> dict[str, Any]:
    """The options (flat, ``{"a.b": leaf}``) a ``fit`` entry of ``run.json`` ended with.

    Its first config, with the changes of its last resume (each resume records its changes
    against that first config): a resume may change ``trainer.max_epochs``, devices, workers.
    """
    flat = flatten_config(fit.get("config") or {})
    resumes = fit.get("resumes") or []
    last = resumes[-1] if isinstance(resumes, list) and resumes and isinstance(resumes[-1], dict) else {}
    changes = last.get("changes")
    for key, change in (changes.items() if isinstance(changes, dict) else ()):
        if isinstance(change, list) and len(change) == 2:
            flat[key] = change[1]
    return flat


def flatten_config(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as ``{"a.b.c": leaf}``."""
    if not isinstance(value, Mapping):
        return {prefix: value}
    flat: dict[str, Any] = {}
    for key, item in value.items():
        flat.update(flatten_config(item, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def config_changes(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, list[Any]]:
    """``{"dotted.key": [before, after]}`` for every value that differs (missing counts as None)."""
    old, new = flatten_config(before), flatten_config(after)
    return {key: [old.get(key), new.get(key)] for key in sorted(old.keys() | new.keys())
            if old.get(key) != new.get(key)}


def add_to_json(path: str | Path, key: str, value: Any) -> None:
    """Set ``key`` in the JSON object stored at ``path`` (rewritten atomically)."""
    path = Path(path)
    content = json.loads(path.read_text())
    content[key] = value
    _write_json_atomic(path, content)


def format_record(record: Mapping[str, Any]) -> str:
    """A few lines for the console: seed, versions, data fingerprint."""
    versions = ", ".join(f"{k} {v}" for k, v in record["versions"].items() if v is not None)
    lines = [f"seed {record['seed']}; {versions}"]
    data = record.get("data")
    if data:
        lines.append(f"data {data['root']}: sha256 {data['sha256'][:16]}... ({len(data['csv'])} CSV files, "
                     + ", ".join(f"{k} {v.get('files', 0)} files" for k, v in data["features"].items()) + ")")
    return "\n".join(lines)
