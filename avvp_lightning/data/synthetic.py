"""A synthetic LLP in the official layout, with planted structure that is learnable from weak labels.

Each video has 1-3 events; each event is audio-only, visual-only or audio-visual with
class-dependent rates (Speech mostly heard only, Car and Vacuum_cleaner mostly seen only,
instruments mostly both), lasts a random run of segments (often the whole video) and in the
audio-visual case has slightly different audio and visual boundaries. Features are rendered from
a small latent space: per class and modality a prototype (confusable pairs such as Cello and
Violin_fiddle have correlated prototypes), plus a per-video scene and per-segment noise, decoded
by fixed random maps to the real feature sizes: non-negative VGGish-like audio, post-ReLU
ResNet-like frames (8 per segment, with per-frame jitter) and R(2+1)D-like motion decoded from the
visual latent. The class prototypes and decoders (the "world") depend on ``seed`` only, so an LLP set
and a snippet set generated with the same seed share them while their videos differ.

Only the split CSVs' weak labels are meant for training; val and test also get the dense
``AVVP_eval_*.csv`` truth, with the real files' quirks (rows with onset >= offset, overlapping
rows of one class, rows naming videos in no split).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shutil
import socket
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avvp_lightning.data.llp import DENSE_FILES, FEATURE_DIRS, SPLIT_FILES, dense_to_rows, write_rows
from avvp_lightning.errors import DataError
from avvp_lightning.labels import CLASS_INDEX, CLASSES, NUM_CLASSES, NUM_SEGMENTS

GENERATOR_VERSION = 1
SMALL_DIMS = {"audio_dim": 32, "visual_dim": 32, "motion_dim": 16}  # for fast tests
DEFAULT_LLP = {"num_train": 600, "num_val": 100, "num_test": 150}
DEFAULT_SNIPPETS = {"num_videos": 800}

# (audio-only, visual-only, audio-visual) probabilities of an event of each class.
_RATES = {
    "heard": (0.60, 0.05, 0.35),       # often off-screen
    "seen": (0.10, 0.60, 0.30),        # often silent or masked by other sounds
    "instrument": (0.10, 0.05, 0.85),  # mostly both
    "mixed": (0.30, 0.20, 0.50),
}
_GROUP = {
    "Speech": "heard", "Fire_alarm": "heard", "Telephone_bell_ringing": "heard", "Singing": "instrument",
    "Car": "seen", "Vacuum_cleaner": "seen", "Lawn_mower": "seen", "Motorcycle": "seen", "Blender": "seen",
    "Cello": "instrument", "Banjo": "instrument", "Violin_fiddle": "instrument", "Accordion": "instrument",
    "Acoustic_guitar": "instrument",
}
MODALITY_RATES = np.array([_RATES[_GROUP.get(name, "mixed")] for name in CLASSES])  # (C, 3)
# Relative class frequency: Speech is by far the most frequent class, as in LLP.
CLASS_WEIGHTS = np.array([{"Speech": 8.0, "Singing": 2.0, "Cheering": 1.5, "Clapping": 1.5}.get(n, 1.0)
                          for n in CLASSES])  # (C,)
CONFUSABLE = [("Cello", "Violin_fiddle"), ("Baby_laughter", "Baby_cry_infant_cry"), ("Banjo", "Acoustic_guitar"),
              ("Lawn_mower", "Motorcycle"), ("Cheering", "Clapping"), ("Fire_alarm", "Telephone_bell_ringing"),
              ("Vacuum_cleaner", "Blender")]
_ID_ALPHABET = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"))

# Latent-space sizes and signal-to-noise (norms in the latent space; the decoders keep the ratios).
LATENT_DIM = 32
SIGNAL = 1.0        # prototype norm x event amplitude
CONFUSION = 0.6     # prototype correlation of a confusable pair
SCENE = 0.8         # per-video background norm
NOISE = 0.12        # per-segment noise, per latent dimension
FRAME_JITTER = 0.5  # per-frame visual noise, relative to the typical feature spread
OUTPUT_NOISE = 0.3  # iid noise per feature dimension, relative to the typical feature spread
# Typical spread of one decoded feature dimension (decoders are N(0, 1/L)): sqrt(|latent|^2 / L).
_SPREAD = float(np.sqrt(NOISE**2 + (SIGNAL**2 + SCENE**2) / LATENT_DIM))


@dataclass
class _World:
    """What ``seed`` fixes: prototypes, scenes, class strengths and decoders."""

    protos: dict[str, np.ndarray]    # modality -> (C, L) unit prototypes
    scenes: dict[str, np.ndarray]    # modality -> (S, L)
    strength: dict[str, np.ndarray]  # modality -> (C,) per-class amplitude
    decoders: dict[str, np.ndarray]  # audio (L, Da), visual (L, Dv), motion (L, Dm)


def _make_world(seed: int, audio_dim: int, visual_dim: int, motion_dim: int) -> _World:
    rng = np.random.default_rng([seed, 0])
    protos, scenes, strength = {}, {}, {}
    for modality in ("audio", "visual"):
        p = rng.standard_normal((NUM_CLASSES, LATENT_DIM))  # (C, L)
        for a, b in CONFUSABLE:  # b = rho a + sqrt(1 - rho^2) u with u a unit vector orthogonal to a
            ia, ib = CLASS_INDEX[a], CLASS_INDEX[b]
            p[ia] /= np.linalg.norm(p[ia])
            u = p[ib] - (p[ib] @ p[ia]) * p[ia]
            p[ib] = CONFUSION * p[ia] + np.sqrt(1 - CONFUSION**2) * u / np.linalg.norm(u)
        protos[modality] = p / np.linalg.norm(p, axis=1, keepdims=True)
        scenes[modality] = rng.standard_normal((8, LATENT_DIM))  # (S, L)
        scenes[modality] /= np.linalg.norm(scenes[modality], axis=1, keepdims=True)
        strength[modality] = rng.uniform(0.7, 1.3, NUM_CLASSES)
    decoders = {m: rng.standard_normal((LATENT_DIM, d)) / np.sqrt(LATENT_DIM)
                for m, d in (("audio", audio_dim), ("visual", visual_dim), ("motion", motion_dim))}
    return _World(protos, scenes, strength, decoders)


def _sample_events(rng: np.random.Generator, n: int, t: int) -> tuple[np.ndarray, np.ndarray, list[list[int]]]:
    """Event amplitudes per segment: audio ``(n, T, C)``, visual ``(n, T, C)`` and each video's classes.

    Up to 3 event slots per video, drawn all at once; slot ``j`` is used when ``j < count``.
    """
    counts = 1 + (rng.random(n)[:, None] >= np.array([0.4, 0.8])).sum(1)  # (n,) 1, 2 or 3 events: 40/40/20 %
    keys = np.log(CLASS_WEIGHTS) + rng.gumbel(size=(n, NUM_CLASSES))  # Gumbel top-k = weighted, no replacement
    cls = np.argsort(-keys, axis=1)[:, :3]  # (n, 3) class per slot
    cum = np.cumsum(MODALITY_RATES, axis=1)[cls]  # (n, 3, 3)
    kind = (rng.random((n, 3))[..., None] >= cum[..., :2]).sum(-1)  # (n, 3): 0 audio-only, 1 visual-only, 2 both
    # A run [start, end) per slot: a third span the whole video.
    length = rng.integers(1, t, size=(n, 3))
    start = (rng.random((n, 3)) * (t - length + 1)).astype(int)
    full = rng.random((n, 3)) < 0.35
    start, end = np.where(full, 0, start), np.where(full, t, start + length)
    starts, ends = np.stack([start, start], -1), np.stack([end, end], -1)  # (n, 3, 2): audio, visual
    # The visual run of an audio-visual event has its boundaries moved by a segment now and then.
    shift = rng.choice([-1, 0, 1], p=[0.2, 0.6, 0.2], size=(n, 3, 2))
    vs = np.clip(start + shift[..., 0], 0, end - 1)
    ve = np.maximum(np.minimum(end + shift[..., 1], t), vs + 1)
    both = kind == 2
    starts[..., 1], ends[..., 1] = np.where(both, vs, start), np.where(both, ve, end)
    seg = np.arange(t)
    mask = (seg >= starts[..., None]) & (seg < ends[..., None])  # (n, 3, 2, T)
    # Intermittent events: a gap of 1-2 segments inside a run of 4 or more.
    gap = starts + 1 + (rng.random((n, 3, 2)) * np.maximum(ends - starts - 3, 1)).astype(int)
    gap_len = rng.integers(1, 3, size=(n, 3, 2))
    has_gap = (ends - starts >= 4) & (rng.random((n, 3, 2)) < 0.15)
    mask &= ~(has_gap[..., None] & (seg >= gap[..., None]) & (seg < (gap + gap_len)[..., None]))
    present = np.stack([kind != 1, kind != 0], -1) & (np.arange(3) < counts[:, None])[..., None]  # (n, 3, 2)
    level = rng.uniform(0.6, 1.4, size=(n, 3, 2, 1)) * (1 + 0.15 * rng.standard_normal((n, 3, 2, t)))
    values = np.where(mask & present[..., None], np.maximum(level, 0.2), 0.0)  # (n, 3, 2, T)
    amp = np.zeros((2, n, t, NUM_CLASSES), dtype=np.float32)  # (modality, N, T, C): 0 audio, 1 visual
    rows = np.arange(n)
    for slot in range(3):  # the classes of one video are distinct: no slot overwrites another
        for m in range(2):
            amp[m, rows, :, cls[:, slot]] = values[:, slot, m]
    classes = [[int(c) for c in cls[i, :counts[i]]] for i in range(n)]
    return amp[0], amp[1], classes


class _Noise:
    """Fast Gaussian noise: random windows of one bank of normals (and of its negation).

    Drawing hundreds of millions of normals costs seconds; windows of a bank cost one copy.
    """

    def __init__(self, rng: np.random.Generator, size: int = 1 << 21):
        self.rng = rng
        half = rng.standard_normal(size, dtype=np.float32)
        self.bank = np.concatenate([half, -half])

    def __call__(self, shape: tuple[int, ...], scale: float) -> np.ndarray:
        rows, width = int(np.prod(shape[:-1])), shape[-1]
        windows = np.lib.stride_tricks.sliding_window_view(self.bank, width)  # (bank - D + 1, D) view
        out = windows[self.rng.integers(0, len(windows), size=rows)]  # (rows, D) copy
        out *= np.float32(scale)
        return out.reshape(shape)


def _render(rng: np.random.Generator, noise: _Noise, world: _World, amp: np.ndarray, modality: str, frames: int,
            offset: float) -> tuple[np.ndarray, np.ndarray]:
    """Features of one modality for ``amp`` ``(n, T, C)``: ``(n, T*frames, D)`` and the latent ``(n, T, L)``."""
    n, t, _ = amp.shape
    scene_mix = rng.dirichlet(np.ones(len(world.scenes[modality])) * 0.3, size=n)  # (n, S)
    latent = (amp * world.strength[modality]) @ world.protos[modality] * SIGNAL  # (n, T, L)
    latent += (scene_mix @ world.scenes[modality])[:, None, :] * SCENE  # background, constant over time
    latent += NOISE * rng.standard_normal((n, t, LATENT_DIM))
    # float64 products rounded to float32: the same bytes whatever the BLAS threading
    decoded = (latent @ world.decoders[modality]).astype(np.float32)  # (n, T, D)
    decoded += noise(decoded.shape, OUTPUT_NOISE * _SPREAD)
    decoded += np.float32(offset * _SPREAD)
    d = decoded.shape[-1]
    out = noise((n, t, frames, d), FRAME_JITTER * _SPREAD) if frames > 1 else np.zeros((n, t, 1, d), np.float32)
    out += decoded[:, :, None, :]  # (n, T, k, D)
    np.maximum(out, 0.0, out=out)  # non-negative: VGGish-ish / post-ReLU
    return out.reshape(n, t * frames, d), latent


def _render_motion(noise: _Noise, world: _World, visual_latent: np.ndarray, offset: float) -> np.ndarray:
    """R(2+1)D-like features ``(n, T, Dm)`` decoded from the visual latent ``(n, T, L)``."""
    decoded = (visual_latent @ world.decoders["motion"]).astype(np.float32)  # (n, T, Dm)
    decoded += noise(decoded.shape, OUTPUT_NOISE * _SPREAD)
    return np.maximum(decoded + np.float32(offset * _SPREAD), 0.0).astype(np.float32)


def _video_ids(rng: np.random.Generator, n: int) -> list[str]:
    """``n`` distinct random 11-character YouTube-like ids."""
    ids: list[str] = []
    seen: set[str] = set()
    while len(ids) < n:
        for row in _ID_ALPHABET[rng.integers(0, len(_ID_ALPHABET), size=(n - len(ids), 11))]:
            vid = "".join(row)
            if vid not in seen:
                seen.add(vid)
                ids.append(vid)
    return ids


def _filenames(rng: np.random.Generator, ids: list[str]) -> list[str]:
    """``<id>_<start>_<end>`` ten-second clips; about 3% start at a decimal second, as in LLP."""
    names = []
    for vid in ids:
        if rng.random() < 0.03:
            start = round(float(rng.uniform(0, 300)), 1)
            names.append(f"{vid}_{start:.1f}_{start + 10:.1f}")
        else:
            start = int(rng.integers(0, 600))
            names.append(f"{vid}_{start}_{start + 10}")
    return names


def _write_features(root: Path, world: _World, rng: np.random.Generator, ids: list[str], amp_a: np.ndarray,
                    amp_v: np.ndarray, frames_per_segment: int, chunk: int = 128) -> None:
    """Render and save ``feats/<kind>/<id>.npy`` for all videos, ``chunk`` videos at a time."""
    folders = {m: root / FEATURE_DIRS[m] for m in ("audio", "visual", "motion")}
    noise = _Noise(rng)
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    for lo in range(0, len(ids), chunk):
        audio, _ = _render(rng, noise, world, amp_a[lo:lo + chunk], "audio", 1, offset=3.0)  # (b, T, Da)
        visual, latent = _render(rng, noise, world, amp_v[lo:lo + chunk], "visual", frames_per_segment, offset=1.0)
        motion = _render_motion(noise, world, latent, offset=1.0)  # (b, T, Dm)
        for j, vid in enumerate(ids[lo:lo + chunk]):
            np.save(folders["audio"] / f"{vid}.npy", audio[j])    # (T, Da)
            np.save(folders["visual"] / f"{vid}.npy", visual[j])  # (T*k, Dv)
            np.save(folders["motion"] / f"{vid}.npy", motion[j])  # (T, Dm)


def _write_list(path: Path, filenames: list[str], classes: list[list[int]]) -> None:
    rows = [f"{name}\t{','.join(CLASSES[c] for c in cs)}" for name, cs in zip(filenames, classes)]
    lines = ["filename\tevent_labels"] + rows
    path.write_text("\n".join(lines) + "\n")


def _dense_rows_with_quirks(rng: np.random.Generator, filenames: list[str],
                            dense: np.ndarray) -> list[tuple[str, int, int, str]]:
    """Rows of ``dense`` ``(N, T, C)`` plus the real files' harmless quirks."""
    rows = []
    for row in dense_to_rows(filenames, dense):
        name, start, end, label = row
        if end - start >= 3 and rng.random() < 0.05:  # one run written as two overlapping rows
            mid = int(rng.integers(start + 1, end - 1))
            rows += [(name, start, mid + 1, label), (name, mid, end, label)]
        else:
            rows.append(row)
        if rng.random() < 0.02:  # onset >= offset: sets nothing
            rows.append((name, end, start if rng.random() < 0.5 else end, label))
    for _ in range(2):  # rows naming clips that are in no split
        rows.insert(int(rng.integers(0, len(rows) + 1)), (f"{_video_ids(rng, 1)[0][:9]}_0_10", 0, 10, CLASSES[0]))
    return rows


def _check_sizes(counts: dict[str, int], dims: dict[str, int]) -> None:
    bad = [f"{k}={v}" for k, v in counts.items() if v < 0] + [f"{k}={v}" for k, v in dims.items() if v < 1]
    if dims["num_segments"] < 2:
        bad.append(f"num_segments={dims['num_segments']} (at least 2)")
    if bad:
        raise ValueError(f"invalid generator sizes: {', '.join(bad)}")


def _generated(folder: Path) -> bool:
    """Whether ``folder`` is a dataset written by this module (its ``synthetic.json`` is written last)."""
    return (folder / "synthetic.json").is_file()


def _sibling_prefix(root: Path, kind: str) -> str:
    """``.<name>.<kind>-<host>-``: this machine's temporary (``tmp``) or replaced (``old``) siblings of ``root``."""
    return f".{root.name}.{kind}-{socket.gethostname()}-"


def _remove_orphans(root: Path) -> None:
    """Delete the siblings of ``root`` left by writers on this machine that were killed.

    A killed :func:`atomic_folder` leaves its temporary folder behind (for a packed LLP store,
    gigabytes of a half-written copy), or, killed between its two renames, the replaced folder.
    Only this host's folders whose process is gone are removed (on a shared filesystem another
    machine's writer may be running), and a replaced folder only once ``root`` is back in place.
    """
    if os.name != "posix":  # os.kill(pid, 0) probes a process only on POSIX
        return
    for kind in ("tmp", "old"):
        prefix = _sibling_prefix(root, kind)
        for folder in root.parent.glob(f"{glob.escape(prefix)}*"):
            match = re.fullmatch(r"(\d+)-[0-9a-f]{8}", folder.name[len(prefix):])
            if match is None or (kind == "old" and not root.exists()):
                continue  # another host's (a name with more dashes), or the only copy left
            try:
                os.kill(int(match.group(1)), 0)  # raises when no such process
            except ProcessLookupError:
                shutil.rmtree(folder, ignore_errors=True)
            except OSError:
                continue  # a live process of another user


def followed(path: Path) -> Path:
    """``path``, or where it points when it is a symbolic link; DataError for a loop of links."""
    try:
        return path.resolve() if path.is_symlink() else path
    except (OSError, RuntimeError) as err:  # a loop of links
        raise DataError(f"{path}: a symbolic link that cannot be followed ({err})") from None


@contextmanager
def atomic_folder(root: Path, overwrite: bool, replaceable: Callable[[Path], bool], refusal: str,
                  retired: list[Path] | None = None) -> Iterator[Path]:
    """Yield a temporary sibling of ``root`` that becomes ``root`` by one rename when the body succeeds.

    Args:
        root: The folder to write: absent, empty, or (with ``overwrite``) one this writer made.
        overwrite: Replace an existing ``root`` for which ``replaceable`` holds.
        replaceable: Whether a non-empty folder is one this kind of writer made (a generated
            dataset, a packed store); any other is never replaced, with or without ``overwrite``.
        refusal: Why such another folder is refused, for the error (e.g. ``"not written by this
            tool (no synthetic.json)"``).
        retired: Where the replaced folder, renamed aside, is put for the caller to delete
            (default: deleted here). Folders that belong together (an export's audio and
            visual) are then all renamed in before any old one is deleted.

    A ``root`` that is a symbolic link (say, to a faster disk) is written where it points; the
    link stays. A mount point, or a parent folder that cannot be written, raises DataError
    before anything is written.
    """
    root = followed(Path(root).absolute())  # the temporary sibling goes next to a link's target: one rename
    if root.is_dir() and os.path.ismount(root):
        raise DataError(f"{root}: a mount point, which cannot be replaced by the finished folder (it is "
                        f"written beside it, then renamed into place); give a folder inside it, e.g. {root / 'data'}")
    if root.exists() and not (root.is_dir() and not any(root.iterdir())):
        if not replaceable(root):
            raise FileExistsError(f"{root}: {refusal}; give a new or empty folder (overwrite replaces only "
                                  "such a folder)")
        if not overwrite:
            raise FileExistsError(f"{root}: already exists and is not empty (overwrite, --overwrite, replaces it)")
    tmp = root.parent / f"{_sibling_prefix(root, 'tmp')}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
    except OSError as err:  # no permission, a read-only filesystem, ...
        where = Path(err.filename).parent if err.filename else root.parent
        raise DataError(f"{root}: cannot create folders in {where} ({err.strerror or err}); give a folder you "
                        "can write to") from None
    _remove_orphans(root)
    try:
        yield tmp
        old = None
        if overwrite and root.exists():
            old = root.parent / f"{_sibling_prefix(root, 'old')}{os.getpid()}-{uuid.uuid4().hex[:8]}"
            root.rename(old)
        try:
            tmp.rename(root)  # atomic; replaces an empty directory
        except OSError as err:
            if old is not None:
                old.rename(root)
            raise FileExistsError(f"{root}: created by someone else meanwhile ({err})") from err
        if old is not None and retired is not None:
            retired.append(old)
        elif old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def generate_llp(root: str | Path, *, num_train: int = 600, num_val: int = 100, num_test: int = 150,
                 seed: int = 0, audio_dim: int = 128, visual_dim: int = 2048, motion_dim: int = 512,
                 frames_per_segment: int = 8, num_segments: int = NUM_SEGMENTS, overwrite: bool = False) -> Path:
    """Write a synthetic LLP dataset in the official layout (CSVs and ``feats/``) at ``root``.

    Args:
        root: Folder to create (must be absent or empty unless ``overwrite``).
        num_train, num_val, num_test: Videos per split (weak labels; val/test also dense truth).
        seed: Fixes everything: the same seed writes the same bytes.
        audio_dim, visual_dim, motion_dim: Feature sizes (real: 128, 2048, 512).
        frames_per_segment: Visual frames per segment (real: 8, i.e. (80, 2048) files).
        num_segments: Segments per video.
        overwrite: Replace an existing ``root``.

    Returns:
        The absolute path of the dataset. The folder appears at once when complete (atomic rename).
    """
    sizes = {"train": num_train, "val": num_val, "test": num_test}
    dims = dict(audio_dim=audio_dim, visual_dim=visual_dim, motion_dim=motion_dim,
                frames_per_segment=frames_per_segment, num_segments=num_segments)
    _check_sizes(sizes, dims)
    params = dict(sizes, seed=seed, **dims)
    world = _make_world(seed, audio_dim, visual_dim, motion_dim)
    rng = np.random.default_rng([seed, 1])
    n = sum(sizes.values())
    ids = _video_ids(rng, n)
    filenames = _filenames(rng, ids)
    amp_a, amp_v, classes = _sample_events(rng, n, num_segments)  # (N, T, C) each
    with atomic_folder(Path(root), overwrite, _generated, "not written by this tool (no synthetic.json)") as tmp:
        bounds = np.cumsum([0, num_train, num_val, num_test])
        for (split, file), lo, hi in zip(SPLIT_FILES.items(), bounds[:-1], bounds[1:]):
            _write_list(tmp / file, filenames[lo:hi], classes[lo:hi])
        _write_list(tmp / "AVVP_dataset_full.csv", filenames, classes)
        evaluated = slice(num_train, n)  # val + test
        for (modality, file), amp in zip(DENSE_FILES.items(), (amp_a, amp_v)):
            write_rows(tmp / file, _dense_rows_with_quirks(rng, filenames[evaluated], amp[evaluated] > 0))
        _write_features(tmp, world, rng, ids, amp_a, amp_v, frames_per_segment)
        (tmp / "synthetic.json").write_text(json.dumps({"generator_version": GENERATOR_VERSION, **params}, indent=2))
    return Path(root).absolute()


def generate_snippets(root: str | Path, *, num_videos: int = 800, seed: int = 0, audio_dim: int = 128,
                      visual_dim: int = 2048, motion_dim: int = 512, frames_per_segment: int = 8,
                      num_segments: int = NUM_SEGMENTS, overwrite: bool = False) -> Path:
    """Write an unlabeled AudioSet-like pretraining set: ``snippets.csv`` plus ``feats/`` as in LLP.

    The videos follow the LLP generator with the same ``seed`` (same prototypes, other videos), so
    snippets of the same event look alike and what is learned transfers to :func:`generate_llp` data.
    ``snippets.csv`` has the columns ``filename`` and ``event_labels`` (the latter for analysis only).
    Arguments as in :func:`generate_llp`.
    """
    dims = dict(audio_dim=audio_dim, visual_dim=visual_dim, motion_dim=motion_dim,
                frames_per_segment=frames_per_segment, num_segments=num_segments)
    _check_sizes({"num_videos": num_videos}, dims)
    params = dict(num_videos=num_videos, seed=seed, **dims)
    world = _make_world(seed, audio_dim, visual_dim, motion_dim)
    rng = np.random.default_rng([seed, 2])
    ids = _video_ids(rng, num_videos)
    filenames = _filenames(rng, ids)
    amp_a, amp_v, classes = _sample_events(rng, num_videos, num_segments)
    with atomic_folder(Path(root), overwrite, _generated, "not written by this tool (no synthetic.json)") as tmp:
        _write_list(tmp / "snippets.csv", filenames, classes)
        _write_features(tmp, world, rng, ids, amp_a, amp_v, frames_per_segment)
        (tmp / "synthetic.json").write_text(json.dumps({"generator_version": GENERATOR_VERSION, **params}, indent=2))
    return Path(root).absolute()


def cache_dir() -> Path:
    """Where generated default datasets live: ``$AVVP_DATA_DIR``, else ``~/.cache/avvp_lightning``."""
    env = os.environ.get("AVVP_DATA_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "avvp_lightning"


def default_root(kind: str = "llp") -> Path:
    """The embedded default dataset (``kind`` ``"llp"`` or ``"snippets"``), generated on first use.

    Cached in :func:`cache_dir` under a name that hashes the generator version, its parameters and
    its noise settings, so a change of any regenerates. Safe when several processes ask at once.
    """
    if kind not in ("llp", "snippets"):
        raise ValueError(f"kind must be 'llp' or 'snippets', got {kind!r}")
    params = dict(DEFAULT_LLP if kind == "llp" else DEFAULT_SNIPPETS)
    tuning = dict(latent=LATENT_DIM, signal=SIGNAL, confusion=CONFUSION, scene=SCENE, noise=NOISE,
                  jitter=FRAME_JITTER, output_noise=OUTPUT_NOISE)
    key = json.dumps({"kind": kind, "version": GENERATOR_VERSION, **params, **tuning}, sort_keys=True)
    cache = cache_dir()
    if cache.exists() and not cache.is_dir():
        named = "AVVP_DATA_DIR" if os.environ.get("AVVP_DATA_DIR") else "the cache folder"
        raise DataError(f"{cache}: a file, not a folder ({named} must name a folder for the generated default "
                        "datasets)")
    target = cache / f"synthetic-{kind}-v{GENERATOR_VERSION}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"
    if not _generated(target):  # written last: its presence means complete
        try:
            (generate_llp if kind == "llp" else generate_snippets)(target, **params)
        except FileExistsError:
            if not _generated(target):  # not a lost race: something else is in the way
                raise
    return target
