"""The official LLP layout: split CSVs, dense evaluation CSVs and per-video feature files.

A dataset root holds, unchanged from the official release::

    AVVP_train.csv, AVVP_val_pd.csv, AVVP_test_pd.csv    filename <tab> event_labels ("Speech,Dog")
    AVVP_eval_audio.csv, AVVP_eval_visual.csv            filename <tab> onset <tab> offset <tab> event_labels
    feats/vggish/<id>.npy       (10, 128)  float32
    feats/res152/<id>.npy       (80, 2048) float32, 8 frames per one-second segment
    feats/r2plus1d_18/<id>.npy  (10, 512)  float32

where ``<id>`` is the first 11 characters of a filename such as ``BjCEufrlXm4_20_30``.

Every reader can either raise :class:`~avvp_lightning.errors.DataError` at once (the default) or
append its problems to a ``problems`` list, so that :func:`check_dataset` and the datamodules report
all problems of a dataset in one message. Problems name the file and the CSV line (header = line 1).
"""

from __future__ import annotations

import os
import sys
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from avvp_lightning.errors import DataError
from avvp_lightning.labels import CLASS_INDEX, CLASSES, NUM_CLASSES, NUM_SEGMENTS
from avvp_lightning.runinfo import write_atomic

SPLIT_FILES: dict[str, str] = {"train": "AVVP_train.csv", "val": "AVVP_val_pd.csv", "test": "AVVP_test_pd.csv"}
DENSE_FILES: dict[str, str] = {"audio": "AVVP_eval_audio.csv", "visual": "AVVP_eval_visual.csv"}
FEATURE_DIRS: dict[str, str] = {"audio": "feats/vggish", "visual": "feats/res152", "motion": "feats/r2plus1d_18"}
FEATURE_DIMS: dict[str, int] = {"audio": 128, "visual": 2048, "motion": 512}
DENSE_SPLITS: tuple[str, ...] = ("val", "test")  # the splits with dense (segment-level) truth
ID_LENGTH = 11


def video_id(filename: str) -> str:
    """The YouTube id that keys a video's feature files: the first 11 characters of its filename."""
    return filename[:ID_LENGTH]


def resolve_list(root: str | Path, path: str | Path) -> Path:
    """A video list's path as given when it exists (or is absolute), else relative to the dataset root."""
    candidate = Path(path).expanduser()
    return candidate if candidate.is_absolute() or candidate.exists() else Path(root) / candidate


MAX_LISTED = 20  # problems spelled out in one DataError; check_dataset returns them all


def raise_problems(problems: Sequence[str], what: str = "dataset", check: str = "avvp-data check ROOT") -> None:
    """Raise one :class:`DataError` listing the problems, each once (does nothing when there are none).

    Past :data:`MAX_LISTED` problems the message ends with the ``check`` command that lists them all.
    """
    problems = list(dict.fromkeys(problems))
    if len(problems) == 1:
        raise DataError(problems[0])
    if problems:
        lines = [f"  - {p}" for p in problems[:MAX_LISTED]]
        if len(problems) > MAX_LISTED:
            lines.append(f"  ... and {len(problems) - MAX_LISTED} more (`{check}` lists them all)")
        raise DataError(f"{len(problems)} problems in the {what}:\n" + "\n".join(lines))


def _report(found: list[str], problems: Optional[list[str]], what: str = "dataset") -> None:
    """Hand ``found`` to the caller's ``problems`` list, or raise at once (``what`` had them) when it has none."""
    if problems is None:
        raise_problems(found, what)
    else:
        problems.extend(found)


def folder_problem(folder: Path) -> Optional[str]:
    """Why the files in ``folder`` cannot be reached: ``"not found"``, ``"not a folder"``, ``"cannot be
    opened (permission denied)"`` (no search permission), or None."""
    try:
        os.stat(os.path.join(folder, "."))  # resolving "folder/." needs its search permission (a Path drops the ".")
    except FileNotFoundError:
        return "not found"
    except NotADirectoryError:
        return "not a folder" if os.path.lexists(folder) else "not found"
    except PermissionError:
        return "cannot be opened (permission denied)"
    except OSError as err:
        return f"cannot be opened ({err.strerror or err})"
    return None


# ----------------------------------------------------------------------------------- CSV files
def _extra_fields(path: Path) -> Optional[str]:
    """The lines of a CSV with more tab-separated fields than its header, as one problem (None if none)."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    width = lines[0].count("\t") + 1 if lines else 0
    extra = [(n, line.count("\t") + 1) for n, line in enumerate(lines[1:], start=2) if line.count("\t") + 1 > width]
    if not extra:
        return None
    shown = ", ".join(f"line {n} ({fields} fields)" for n, fields in extra[:5]) + (" ..." if len(extra) > 5 else "")
    return (f"{path}: {len(extra)} row(s) with more tab-separated fields than the header's {width}: {shown} "
            "(a tab inside a value?)")


def _read_table(path: Path, columns: Sequence[str], found: list[str],
                optional: Sequence[str] = ()) -> Optional[pd.DataFrame]:
    """Read a tab-separated CSV as strings; returns None (and records why) when unusable.

    The result keeps the non-blank rows and a ``line`` column (header = line 1). Strings stay
    strings: ``keep_default_na=False`` so that a label such as ``NA`` is not read as NaN.
    """
    if not path.is_file():
        found.append(f"{path}: {'not a file (a folder?)' if path.is_dir() else 'file not found'}")
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, na_filter=False,
                                skip_blank_lines=False, index_col=False)
    except pd.errors.EmptyDataError:
        found.append(f"{path}: empty file (expected a header line: {' '.join(columns)})")
        return None
    except (pd.errors.ParserError, pd.errors.ParserWarning) as err:
        found.append(_extra_fields(path) or f"{path}: not a readable tab-separated CSV ({type(err).__name__}: {err})")
        return None
    except UnicodeDecodeError as err:
        with open(path, "rb") as file:
            head = file.read(2)
        saved_as = " (it is UTF-16, as Excel's 'Unicode Text' saves)" if head in (b"\xff\xfe", b"\xfe\xff") else ""
        found.append(f"{path}: not UTF-8 text{saved_as}; save it as UTF-8 ({err})")
        return None
    except (ValueError, OSError) as err:
        found.append(f"{path}: not a readable tab-separated CSV ({type(err).__name__}: {err})")
        return None
    table.columns = [str(c).strip() for c in table.columns]  # as the values: "filename " is filename
    missing = [c for c in columns if c not in table.columns]
    if missing:
        found.append(f"{path}: missing column(s) {', '.join(missing)} (header has "
                     f"{', '.join(map(str, table.columns))}; the separator must be a tab)")
        return None
    # A blank line is empty in every column, the unused ones included ("\tSpeech" in a list read
    # for its filenames alone is a row with an empty filename, not a blank line).
    blank = table.astype(str).apply(lambda column: column.str.strip() == "").all(axis=1)
    table = table[[c for c in (*columns, *optional) if c in table.columns]].copy()
    for column in table.columns:
        table[column] = table[column].astype(str).str.strip()
    table["line"] = np.arange(len(table)) + 2  # header is line 1
    return table[~blank].reset_index(drop=True)


def _parse_labels(text: str, where: str, found: list[str]) -> list[int]:
    """Class indices of a comma-joined label string; unknown names become problems."""
    indices = []
    for name in filter(None, (part.strip() for part in text.split(","))):
        if name in CLASS_INDEX:
            indices.append(CLASS_INDEX[name])
        else:
            near = [c for c in CLASS_INDEX if c.lower() == name.lower().replace(" ", "_")]
            found.append(f"{where}: unknown class '{name}'" + (f" (did you mean '{near[0]}'?)" if near else ""))
    return indices


def read_video_list(csv_path: str | Path, *, labels: str = "required",
                    problems: Optional[list[str]] = None) -> tuple[list[str], Optional[np.ndarray], list[int]]:
    """Read a list of videos (a split CSV or a prediction list).

    Args:
        csv_path: Tab-separated CSV with a ``filename`` column and (see ``labels``) ``event_labels``.
        labels: ``"required"``, ``"optional"`` (read when the column exists) or ``"ignore"``.
        problems: Collect problems here instead of raising.

    Returns:
        filenames, weak labels ``(N, C)`` float32 (None when absent or ignored) and the CSV line
        of each video.
    """
    path, found = Path(csv_path), []
    columns = ("filename", "event_labels") if labels == "required" else ("filename",)
    optional = ("event_labels",) if labels == "optional" else ()
    table = _read_table(path, columns, found, optional)
    if table is None:
        _report(found, problems, f"file {path}")
        return [], None, []
    if len(table) == 0:
        found.append(f"{path}: empty file (a header but no videos)")
    filenames, lines = table["filename"].tolist(), table["line"].tolist()
    first_line: dict[str, int] = {}
    for name, line in zip(filenames, lines):
        vid = video_id(name)
        if not name:
            found.append(f"{path}: line {line}: empty filename")
        elif "/" in vid or "\\" in vid or vid in (".", ".."):
            found.append(f"{path}: line {line}: filename {name!r} is a path; give the video's name (its feature "
                         f"files are <feature folder>/<first {ID_LENGTH} characters>.npy)")
        elif vid in first_line:
            found.append(f"{path}: line {line}: video id '{vid}' is already listed on line {first_line[vid]} (a "
                         f"video's id, the first {ID_LENGTH} characters of its filename, names its feature files)")
        first_line.setdefault(vid, line)
    weak = None
    if "event_labels" in table.columns and labels != "ignore":
        weak = np.zeros((len(table), NUM_CLASSES), dtype=np.float32)  # (N, C)
        for i, (text, line) in enumerate(zip(table["event_labels"], lines)):
            weak[i, _parse_labels(text, f"{path}: line {line}", found)] = 1.0
        unlabelled = [line for line, row in zip(lines, weak) if not row.any()]
        if unlabelled and not found:  # every LLP video has an event; HAN's loader stops on such a row
            shown = ", ".join(map(str, unlabelled[:5])) + (", ..." if len(unlabelled) > 5 else "")
            warnings.warn(f"{path}: {len(unlabelled)} video(s) with an empty event_labels (line(s) {shown}): "
                          f"their weak labels are all 0, as for a video in which no event happens", stacklevel=2)
    _report(found, problems, f"file {path}")
    return filenames, weak, lines


def note_split_listings(seen: dict[str, tuple[str, str]], split: str, filenames: Sequence[str],
                        where: Sequence[str], found: list[str]) -> None:
    """Record where each video of ``split`` is listed; one listed in an earlier split is a problem.

    ``seen`` maps a video id to ``(split, "file, line n")`` of its first listing, across calls;
    repeats within one CSV are :func:`read_video_list`'s to report.
    """
    for fname, place in zip(filenames, where):
        first = seen.setdefault(video_id(fname), (split, place))
        if first[0] != split:
            found.append(f"video id '{video_id(fname)}' is listed in two splits: {first[1]} and {place}")


def read_weak_labels(csv_path: str | Path, *, problems: Optional[list[str]] = None) -> tuple[list[str], np.ndarray]:
    """Filenames and video-level (weak) labels ``(N, C)`` float32 of a split CSV."""
    filenames, weak, _ = read_video_list(csv_path, labels="required", problems=problems)
    return filenames, weak if weak is not None else np.zeros((0, NUM_CLASSES), dtype=np.float32)


def read_dense_truth(csv_path: str | Path, filenames: Sequence[str], num_segments: int = NUM_SEGMENTS,
                     *, problems: Optional[list[str]] = None, matched: Optional[set[str]] = None,
                     row_names: Optional[set[str]] = None) -> np.ndarray:
    """Segment-level truth ``(N, T, C)`` float32 of ``filenames`` from a dense CSV, exactly as HAN.

    Each row sets ``GT[int(onset):int(offset), class] = 1``: overlapping rows are OR-ed, a row with
    onset >= offset sets nothing, and rows naming files not in ``filenames`` are ignored. The
    filenames that some row names are added to ``matched`` when given, and every row's filename
    (listed or not) to ``row_names``.
    """
    path, found = Path(csv_path), []
    dense = np.zeros((len(filenames), num_segments, NUM_CLASSES), dtype=np.float32)  # (N, T, C)
    table = _read_table(path, ("filename", "onset", "offset", "event_labels"), found)
    if table is None:
        _report(found, problems, f"file {path}")
        return dense
    row_of = {name: i for i, name in enumerate(filenames)}
    listed_ids = {video_id(name): name for name in filenames}
    bare: list[str] = []  # rows keyed by a listed video's id alone, not its filename
    beyond: list[str] = []  # rows reaching past the last segment
    for name, onset, offset, label, line in table.itertuples(index=False, name=None):
        if row_names is not None:
            row_names.add(name)
        where = f"{path}: line {line}"
        classes = _parse_labels(label, where, found)
        if not label:
            found.append(f"{where}: no event label")
        try:
            first, last = float(onset), float(offset)
            start, end = int(first), int(last)  # int() truncates, as HAN
        except (ValueError, OverflowError):
            found.append(f"{where}: onset/offset '{onset}'/'{offset}' are not numbers")
            continue
        if first < 0 or last < 0:  # (-0.5 truncates to 0)
            found.append(f"{where}: negative onset/offset {onset}/{offset}")
            continue
        if max(start, end) > num_segments:  # (10.5 truncates to 10: nothing dropped)
            beyond.append(f"line {line}: {onset}/{offset}")
        if name in row_of:
            dense[row_of[name], start:end, classes] = 1.0
            if matched is not None:
                matched.add(name)
        elif name in listed_ids and name != listed_ids[name]:
            bare.append(f"line {line}: '{name}' for '{listed_ids[name]}'")
    if bare:  # HAN ignores them (they name no listed file): the video's truth would lack these events
        warnings.warn(f"{path}: {len(bare)} row(s) name a listed video by its id alone, not its filename "
                      f"({', '.join(bare[:3])}{', ...' if len(bare) > 3 else ''}); read as HAN does, they "
                      "are ignored: write the filename as in the split CSV (id_start_end)", stacklevel=2)
    if beyond:  # HAN's slicing drops what lies past the last segment; milliseconds would lose nearly all
        warnings.warn(f"{path}: {len(beyond)} row(s) with an onset or offset past the video's {num_segments} "
                      f"segments ({', '.join(beyond[:3])}{', ...' if len(beyond) > 3 else ''}); read as HAN "
                      f"does, dropping what lies past segment {num_segments} (onsets and offsets are in "
                      "seconds, one segment per second)", stacklevel=2)
    _report(found, problems, f"file {path}")
    return dense


def dense_to_rows(filenames: Sequence[str], dense: Any,
                  class_names: Sequence[str] = CLASSES) -> list[tuple[str, int, int, str]]:
    """Rows ``(filename, onset, offset, label)``, one per maximal run of 1s per class."""
    dense = np.asarray(dense) > 0.5  # (N, T, C)
    n, t, _ = dense.shape
    padded = np.zeros((n, t + 2, dense.shape[2]), dtype=np.int8)  # (N, T+2, C)
    padded[:, 1:-1] = dense
    step = np.diff(padded, axis=1)  # (N, T+1, C): +1 at a run's onset, -1 at its offset
    rows = []
    for i, c in zip(*np.nonzero(dense.any(axis=1))):
        onsets, offsets = np.flatnonzero(step[i, :, c] == 1), np.flatnonzero(step[i, :, c] == -1)
        rows += [(filenames[i], int(a), int(b), class_names[c]) for a, b in zip(onsets, offsets)]
    return rows


def write_rows(path: str | Path, rows: Sequence[tuple[str, Any, Any, str]]) -> None:
    """Write dense rows with the header of the AVVP_eval_*.csv files."""
    lines = ["filename\tonset\toffset\tevent_labels"] + ["\t".join(map(str, row)) for row in rows]
    write_atomic(path, "\n".join(lines) + "\n")  # whole or not at all: an earlier file is never cut short


def write_dense_csv(path: str | Path, filenames: Sequence[str], dense: Any,
                    class_names: Sequence[str] = CLASSES) -> None:
    """Write a ``(N, T, C)`` 0/1 matrix (numpy or CPU tensor) in the AVVP_eval_*.csv shape.

    One tab-separated row per maximal run of 1s per class, integer onset/offset in segments;
    :func:`read_dense_truth` of the result gives the matrix back exactly.
    """
    write_rows(path, dense_to_rows(filenames, dense, class_names))


# ------------------------------------------------------------------------------ feature files
NPY_MAGIC = b"\x93NUMPY"
# Largest feature magnitude accepted. Real LLP features (VGGish, ResNet-152, R(2+1)D) stay below
# ~1e3; at ~1e19 the square of a value passes float32's (and bfloat16's) range, so the model's
# products and variances overflow to NaN (seen from ~1e25 in a single value). Garbage such as an
# uninitialised array written to disk is refused here, by file, not as a NaN loss mid-training.
FEATURE_LIMIT = 1e15


def _read_npy(path: Path, num_segments: int, dim: Optional[int], rows: Optional[int],
              found: list[str], seen: Counter, per_segment: bool = False) -> Optional[np.ndarray]:
    """One feature file as float32 ``(k*T, D)`` (``(T, D)`` with ``per_segment``), or None (with the problem recorded).

    ``seen`` counts float64 casts (``"float64"``) and the widths of files rejected for their width.
    """
    try:
        with open(path, "rb") as f:
            if f.read(len(NPY_MAGIC)) != NPY_MAGIC:
                found.append(f"{path}: not a .npy file (no NUMPY header)")
                return None
        array = np.load(path, allow_pickle=False)
    except PermissionError:
        found.append(f"{path}: cannot be read (permission denied)")
        return None
    except Exception as err:  # truncated, corrupt header, a pickled object, unreadable: all unusable
        found.append(f"{path}: not a readable .npy file, truncated or corrupt ({type(err).__name__}: {err})")
        return None
    if array.dtype.byteorder == (">" if sys.byteorder == "little" else "<"):  # e.g. written by MATLAB or Java
        array = array.astype(array.dtype.newbyteorder("="))
    if array.dtype not in (np.float32, np.float16, np.float64):  # float16 widens to float32 exactly: no warning
        found.append(f"{path}: dtype {array.dtype}, expected float32")
        return None
    width = dim if dim is not None else "D"
    if rows is not None and array.shape != (rows, dim):
        found.append(f"{path}: wrong shape {array.shape}, expected ({rows}, {width}) like the other files")
        return None
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[0] % num_segments or \
            (per_segment and array.shape[0] != num_segments) or (dim is not None and array.shape[1] != dim):
        found.append(f"{path}: wrong shape {array.shape}, expected ({num_segments}, {width}): one row per segment"
                     if per_segment else f"{path}: wrong shape {array.shape}, expected ({num_segments}*k, {width}) "
                     f"for a whole k >= 1, e.g. ({num_segments}, {width}) or ({8 * num_segments}, {width})")
        if array.ndim == 2 and dim is not None and array.shape[1] != dim:
            seen[("width", array.shape[1])] += 1
        elif per_segment and array.ndim == 2 and array.shape[0]:
            seen[("rows", array.shape[0])] += 1
        return None
    peak = float(max(array.max(initial=0), -array.min(initial=0)))  # NaN or inf when the file holds one
    if not np.isfinite(peak):
        kinds = [k for k, bad in (("NaN", np.isnan(array).any()), ("inf", np.isinf(array).any())) if bad]
        found.append(f"{path}: contains {' and '.join(kinds)} values")
        return None
    if peak > FEATURE_LIMIT:  # (a float64 value beyond float32's range too)
        found.append(f"{path}: values too large (up to {peak:.3g}, limit {FEATURE_LIMIT:.0e}; real features stay "
                     "far below it, and training would overflow to NaN): a corrupt or uninitialised file?")
        return None
    if array.dtype == np.float64:
        seen["float64"] += 1  # (cast, and warned about, only when the file is used)
    return array.astype(np.float32, copy=False)


_WARNED_FLOAT64: set[str] = set()  # folders already warned about, once per process


def _no_feature_file(path: Path, name: str, listed_in: Optional[str]) -> str:
    """The problem line of a video whose feature file ``path`` is not a file."""
    what = "not a file (a folder?)" if path.is_dir() else "missing feature file"
    other = [p.name for p in (path.with_suffix(".npz"), path.with_suffix(".npy.npy")) if p.is_file()]
    if other and what == "missing feature file":
        what += f" ({other[0]} is there: features are one .npy array per video)"
    return f"{path}: {what} for video '{name}'" + (f" ({listed_in})" if listed_in is not None else "")


def iter_features(folder: str | Path, filenames: Sequence[str], num_segments: int = NUM_SEGMENTS,
                  dim: Optional[int] = None, pool: bool = True, *, problems: list[str],
                  listed_in: Optional[Sequence[str]] = None,
                  per_segment: bool = False) -> Iterator[tuple[int, Optional[np.ndarray]]]:
    """Yield ``(i, features)`` per filename: ``(T, D)`` pooled, ``(k*T, D)`` unpooled, None if bad.

    With ``per_segment`` (audio, 3D motion) a file must have exactly ``T`` rows, one per segment;
    else any ``k*T`` (visual: 8 frames per segment).

    Problems go to ``problems``; ``listed_in[i]`` (e.g. ``"AVVP_train.csv, line 5"``) says where a
    video whose file is missing was listed. float64 files are cast, with one warning per folder;
    float16 files are widened (exactly).
    """
    folder, seen, first_problem = Path(folder), Counter(), len(problems)
    problem = folder_problem(folder)
    if problem:
        problems.append(f"{folder}: feature folder {problem}")
        yield from ((i, None) for i in range(len(filenames)))
        return
    ids = [video_id(name) for name in filenames]
    repeated = {vid for vid, count in Counter(ids).items() if count > 1}
    cache: dict[str, Optional[np.ndarray]] = {}  # only for ids listed more than once
    rows = None  # with pool=False every file must have the rows of the first good one
    for i, (name, vid) in enumerate(zip(filenames, ids)):
        if vid in cache:
            yield i, cache[vid]
            continue
        path = folder / f"{vid}.npy"
        array = None
        if not path.is_file():
            problems.append(_no_feature_file(path, name, listed_in[i] if listed_in is not None else None))
        else:
            array = _read_npy(path, num_segments, dim, rows, problems, seen, per_segment)  # (k*T, D)
        if array is not None:
            dim = array.shape[1]
            rows = None if pool else array.shape[0]
            if pool and array.shape[0] != num_segments:  # mean of each k consecutive rows (finite below the limit)
                array = array.reshape(num_segments, -1, dim).mean(axis=1)  # (T, D)
        if vid in repeated:
            cache[vid] = array
        yield i, array
    lengths = Counter({key[1]: n for key, n in seen.items() if isinstance(key, tuple) and key[0] == "rows"})
    if lengths and lengths.most_common(1)[0][1] > 1:  # videos of another length, one row per segment
        segments, count = lengths.most_common(1)[0]
        problems.insert(first_problem, f"{folder}: {count} files have {segments} rows where {num_segments} "
                        f"segments are expected; for videos of {segments} segments, give --data.num_segments "
                        f"{segments} (avvp-data: --num-segments {segments})")
    widths = Counter({key[1]: n for key, n in seen.items() if isinstance(key, tuple) and key[0] == "width"}).most_common(1)
    if widths and widths[0][1] > 1:  # the likely cause first: features of another size
        problems.insert(first_problem, f"{folder}: {widths[0][1]} files are {widths[0][0]} wide where {dim} is "
                        f"expected; if they are the features you want, set this folder's feature size to "
                        f"{widths[0][0]} (--data.audio_dim, visual_dim or motion_dim; avvp-data: --audio-dim, ...), and use a "
                        "model trained on features of that size")
    if seen["float64"] and str(folder) not in _WARNED_FLOAT64:
        _WARNED_FLOAT64.add(str(folder))
        warnings.warn(f"{folder}: {seen['float64']} float64 feature file(s) cast to float32 (warned once per "
                      "folder)", stacklevel=2)


def load_features(folder: str | Path, filenames: Sequence[str], num_segments: int = NUM_SEGMENTS,
                  dim: Optional[int] = None, pool: bool = True, *, problems: Optional[list[str]] = None,
                  listed_in: Optional[Sequence[str]] = None, per_segment: bool = False) -> np.ndarray:
    """Load ``folder/<video_id>.npy`` of every filename into one ``(N, T, D)`` float32 array.

    A file with ``k*T`` rows (ResNet152: 80 frames) is mean-pooled over each ``k`` consecutive rows
    when ``pool``; with ``pool=False`` the result is ``(N, k*T, D)``; with ``per_segment`` (audio,
    3D motion) a file must have ``T`` rows. ``dim=None`` takes the width of the first file. Rows of
    bad files are zeros when ``problems`` collects their problems.
    """
    found: list[str] = []
    out: Optional[np.ndarray] = None
    for i, array in iter_features(folder, filenames, num_segments, dim, pool, problems=found, listed_in=listed_in,
                                  per_segment=per_segment):
        if array is not None:
            if out is None:
                out = np.zeros((len(filenames), *array.shape), dtype=np.float32)  # (N, T or kT, D)
            out[i] = array
    if out is None:
        out = np.zeros((len(filenames), num_segments, dim or 0), dtype=np.float32)
    _report(found, problems)
    return out


# ---------------------------------------------------------------------------- whole datasets
def _split_rows(array: np.ndarray, sizes: Sequence[int]) -> list[np.ndarray]:
    """Cut ``array`` along its first axis into consecutive parts of ``sizes`` rows."""
    return np.split(array, np.cumsum(sizes)[:-1]) if len(sizes) else []


@dataclass
class SplitData:
    """One split in memory. Dense truth only for the splits that have it (val, test)."""

    filenames: list[str]
    labels: Optional[np.ndarray]        # (N, C) weak labels, None for an unlabeled list
    audio: np.ndarray                   # (N, T, Da)
    visual: np.ndarray                  # (N, T, Dv), or (N, k*T, Dv) unpooled
    motion: np.ndarray                  # (N, T, Dm)
    dense_audio: Optional[np.ndarray] = None   # (N, T, C)
    dense_visual: Optional[np.ndarray] = None  # (N, T, C)


def read_llp(root: str | Path, splits: Sequence[str] = ("train", "val", "test"), *,
             audio_dir: str = FEATURE_DIRS["audio"], visual_dir: str = FEATURE_DIRS["visual"],
             motion_dir: str = FEATURE_DIRS["motion"], audio_dim: Optional[int] = FEATURE_DIMS["audio"],
             visual_dim: Optional[int] = FEATURE_DIMS["visual"], motion_dim: Optional[int] = FEATURE_DIMS["motion"],
             num_segments: int = NUM_SEGMENTS, pool_visual: bool = True, lists: Optional[dict[str, Path]] = None,
             keep: bool = True, problems: Optional[list[str]] = None,
             dense_splits: Optional[Sequence[str]] = None, read_features: bool = True) -> dict[str, SplitData]:
    """Read and check ``splits`` of an LLP root (each file read once, problems listed together).

    Args:
        root: Dataset root in the official layout.
        splits: Splits to load (``train``/``val``/``test``) plus names given in ``lists``. The other
            split CSVs present in ``root`` are read too, only to find videos listed in two splits.
        audio_dir, visual_dir, motion_dir: Feature folders, relative to ``root`` (or absolute).
        audio_dim, visual_dim, motion_dim: Expected feature widths (None: any).
        num_segments: Segments per video ``T``.
        pool_visual: Mean-pool the ``k*T`` visual frames to ``T`` segments.
        lists: Extra unlabeled video lists ``{name: csv}`` (an ``event_labels`` column is ignored), e.g. predict.
        keep: Keep the features (False: only check them, for :func:`check_dataset`).
        problems: Collect problems here instead of raising one DataError with all of them.
        dense_splits: The splits whose dense truth to read (default: val and test when wanted); the
            others get none (``predict`` on the test split needs no truth).
        read_features: False: only check that each feature file is there (a quick look, with
            ``keep=False``); the files are not opened.
    """
    root, found, lists = Path(root), [], dict(lists or {})
    problem = folder_problem(root)
    if problem:  # one problem, not one per file the root should hold
        _report([f"{root}: {problem} (the dataset root, in the official LLP layout)"], problems)
        return {}
    videos: dict[str, tuple[list[str], Optional[np.ndarray], list[str]]] = {}
    seen: dict[str, tuple[str, str]] = {}  # video id -> (split, "file, line n") of its first listing
    for split, name in SPLIT_FILES.items():
        if split not in splits and not (root / name).is_file():
            continue
        # A split that is not wanted is read only to find leaks; its own problems do not matter here.
        filenames, weak, lines = read_video_list(root / name, labels="required",
                                                 problems=found if split in splits else [])
        where = [f"{root / name}, line {line}" for line in lines]
        note_split_listings(seen, split, filenames, where, found)
        videos[split] = (filenames, weak, where)
    for split, csv in lists.items():  # (its event_labels, if any, are not read: they may be the user's own tags)
        filenames, weak, lines = read_video_list(csv, labels="ignore", problems=found)
        videos[split] = (filenames, weak, [f"{csv}, line {line}" for line in lines])
    wanted = [s for s in splits if s in videos]

    sizes = [len(videos[s][0]) for s in wanted]
    dense: dict[str, list[np.ndarray]] = {}  # modality -> per wanted split (N_s, T, C); None outside val/test
    with_dense = [s for s in wanted if s in DENSE_SPLITS and (dense_splits is None or s in dense_splits)]
    if with_dense:
        names, matched, unmatched = [f for s in with_dense for f in videos[s][0]], set(), False
        # The val and test videos of every split CSV read, wanted or not: what dense rows name.
        listed = {f for split in DENSE_SPLITS if split in videos for f in videos[split][0]}
        complete = all(split in videos for split in DENSE_SPLITS)  # both lists present
        for modality, file in DENSE_FILES.items():
            rows: set[str] = set()  # the filenames this file's rows name, listed or not
            truth = read_dense_truth(root / file, names, num_segments, problems=found, matched=matched,
                                     row_names=rows)  # (N, T, C)
            parts = dict(zip(with_dense, _split_rows(truth, [len(videos[s][0]) for s in with_dense])))
            dense[modality] = [parts.get(s) for s in wanted]
            if not names:  # the split lists failed: named already
                continue
            if rows and not rows & listed:  # e.g. keyed by the 11-character id: every video's truth empty
                message = (f"{root / file}: none of its rows names a listed val or test video (its rows name "
                           f"{sorted(rows)[0]!r}, ...; the split CSVs list {names[0]!r}, ...), so the {modality} "
                           "truth would be empty")
                if complete or rows & {video_id(name) for name in listed}:
                    unmatched = True
                    found.append(message + "; its filename column must hold the listed filenames "
                                 "(<id>_<start>_<end>, as in the split CSVs)")
                else:  # the other split's list is absent: its videos may be the ones the rows name
                    warnings.warn(message + " (right only if no listed video has such events)", stacklevel=2)
            elif not rows and (root / file).is_file() and not any(str(root / file) in p for p in found):
                warnings.warn(f"{root / file} has no rows: no video of {' and '.join(with_dense)} has {modality} "
                              "events in the truth (right only for data without them)", stacklevel=2)
        for split in with_dense:  # weak labels say there are events; a truth of none would score nonsense
            filenames, weak, _ = videos[split]
            if weak is not None and weak.any() and not unmatched and not matched.intersection(filenames) and all(
                    (root / file).is_file() for file in DENSE_FILES.values()):
                listing = lists.get(split, root / SPLIT_FILES.get(split, ""))  # the CSV that listed them
                found.append(f"{root / DENSE_FILES['audio']} and {root / DENSE_FILES['visual']}: no row names any of "
                             f"the {len(filenames)} videos listed in {listing} (such as "
                             f"{filenames[0]!r}); their filename column must hold the listed filenames "
                             "(<id>_<start>_<end>, as in the split CSV)")

    # One pass per feature folder over all wanted splits: one float64 warning per folder.
    names = [f for s in wanted for f in videos[s][0]]
    where = [w for s in wanted for w in videos[s][2]]
    feats: dict[str, list[np.ndarray]] = {}
    for modality, folder, dim, pool in (("audio", audio_dir, audio_dim, True),
                                        ("visual", visual_dir, visual_dim, pool_visual),
                                        ("motion", motion_dir, motion_dim, True)):
        array = np.zeros((len(names), num_segments if keep else 0, (dim or 0) if keep else 0), np.float32)
        problem, exact = folder_problem(root / folder), modality != "visual"  # audio, motion: one row per segment
        if problem:
            found.append(f"{root / folder}: feature folder {problem} ({modality} features)")
        elif not read_features:  # a quick look: the files are there
            for name, place in zip(names, where):
                path = root / folder / f"{video_id(name)}.npy"
                if not path.is_file():
                    found.append(_no_feature_file(path, name, place))
        elif keep:
            array = load_features(root / folder, names, num_segments, dim, pool, problems=found, listed_in=where,
                                  per_segment=exact)
        else:  # check only: read and validate each file, keep nothing
            for _ in iter_features(root / folder, names, num_segments, dim, pool, problems=found, listed_in=where,
                                   per_segment=exact):
                pass
        feats[modality] = _split_rows(array, sizes)

    _report(found, problems)
    return {
        s: SplitData(videos[s][0], videos[s][1], feats["audio"][j], feats["visual"][j], feats["motion"][j],
                     dense["audio"][j] if dense else None, dense["visual"][j] if dense else None)
        for j, s in enumerate(wanted)
    }


def check_dataset(root: str | Path, splits: Sequence[str] = ("train", "val", "test"), **options: Any) -> list[str]:
    """All problems of an LLP root as readable lines (empty when the dataset is usable).

    Takes the keyword options of :func:`read_llp` (feature folders, dims, ``num_segments``).
    """
    problems: list[str] = []
    read_llp(root, splits, keep=False, problems=problems, **options)
    return problems
