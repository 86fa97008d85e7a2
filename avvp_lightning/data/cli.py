"""``avvp-data``: generate synthetic datasets, check an LLP root, locate the embedded default.

Examples::

    avvp-data generate /tmp/llp_synth --train 2000 --val 200 --test 300
    avvp-data generate-snippets /tmp/snippets --videos 1000
    avvp-data check /data/llp
    avvp-data pack /data/llp                    # -> /data/llp/packed, read with --data.store
    avvp-data default
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import numpy as np

from avvp_lightning.data.llp import FEATURE_DIMS, FEATURE_DIRS, read_llp, resolve_list
from avvp_lightning.data.store import (
    DEFAULT_STORE_DIR, is_store, pack_store, packed_options, read_index, stale_reasons, store_options,
)
from avvp_lightning.data.synthetic import SMALL_DIMS, default_root, generate_llp, generate_snippets
from avvp_lightning.errors import DataError
from avvp_lightning.labels import NUM_SEGMENTS


def _dims(args: argparse.Namespace) -> dict[str, int]:
    return dict(SMALL_DIMS) if args.small_dims else {f"{m}_dim": d for m, d in FEATURE_DIMS.items()}


def _generate(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    root = generate_llp(args.root, num_train=args.train, num_val=args.val, num_test=args.test, seed=args.seed,
                        overwrite=args.overwrite, **_dims(args))
    print(f"wrote {args.train}/{args.val}/{args.test} train/val/test videos to {root} "
          f"in {time.perf_counter() - start:.1f} s")
    return 0


def _generate_snippets(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    root = generate_snippets(args.root, num_videos=args.videos, seed=args.seed, overwrite=args.overwrite,
                             **_dims(args))
    print(f"wrote {args.videos} snippet videos to {root} in {time.perf_counter() - start:.1f} s")
    return 0


def _check(args: argparse.Namespace) -> int:
    problems: list[str] = []
    options = dict(audio_dir=args.audio_dir, visual_dir=args.visual_dir, motion_dir=args.motion_dir,
                   audio_dim=args.audio_dim, visual_dim=args.visual_dim, motion_dim=args.motion_dim,
                   num_segments=args.num_segments)
    lists = {"predict": resolve_list(args.root, args.list)} if args.list else {}  # as predict resolves it
    splits = args.splits if args.splits is not None else ([] if lists else ["train", "val", "test"])
    data = read_llp(args.root, [*splits, *lists], lists=lists, keep=False, problems=problems, **options)
    if problems:
        print(f"{len(problems)} problem(s) in {args.root}:")
        for problem in problems:
            print(f"  - {problem}")
        return 1
    print(f"{args.root}: OK")
    for split, part in data.items():
        dense = " (with dense truth)" if part.dense_audio is not None else ""
        print(f"  {split:<6} {len(part.filenames):>6} videos{dense}")
    root = Path(args.root)
    for modality, folder in (("audio", args.audio_dir), ("visual", args.visual_dir), ("motion", args.motion_dir)):
        files = sorted((root / folder).glob("*.npy"))
        shape = next(filter(None, map(_shape, files)), "none")  # of the first readable file
        print(f"  {modality:<6} {root / folder}: {len(files)} files, shape {shape}")
    return 0


def _shape(path: Path) -> Optional[str]:
    """``"(10, 128) float32"`` for a readable ``.npy`` file, else None (a stray file no video names)."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    return f"{tuple(array.shape)} {array.dtype}"


def _pack(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else Path(args.root) / DEFAULT_STORE_DIR
    options = dict(audio_dir=args.audio_dir, visual_dir=args.visual_dir, motion_dir=args.motion_dir,
                   audio_dim=args.audio_dim, visual_dim=args.visual_dim, motion_dim=args.motion_dim,
                   num_segments=args.num_segments)
    if is_store(out) and not args.overwrite:
        index = read_index(out)
        same = packed_options(index) == store_options(**options)
        held = list(index["splits"])
        missing = [split for split in args.splits if split not in held]
        reasons = stale_reasons(index, args.root)
        if same and not missing and reasons == []:
            print(f"{out}: up to date with {args.root}")
            return 0
        if reasons:
            why = "; ".join(reasons)
        elif not same:
            why = "packed with other options"
        elif missing:
            why = f"it holds {', '.join(held)}, not {', '.join(missing)}"
        else:  # reasons is None: nothing at ROOT to compare with
            raise DataError(f"{out}: cannot be checked against {args.root}: no feature folders there; give the "
                            "dataset it was packed from")
        hint = ""
        if missing and held:  # --overwrite replaces the whole store
            keep = [split for split in ("train", "val", "test") if split in held or split in args.splits]
            hint = (f"; the rebuilt store holds only the --splits given, so to keep {', '.join(held)} give "
                    f"--splits {' '.join(keep)}")
        raise DataError(f"{out}: exists and is out of date ({why}); pass --overwrite to rebuild it{hint}")
    start = time.perf_counter()
    path = pack_store(args.root, out, splits=args.splits, overwrite=args.overwrite, **options)
    index = read_index(path)
    counts = ", ".join(f"{split} {entry['videos']}" for split, entry in index["splits"].items())
    size = sum(f.stat().st_size for f in path.rglob("*.npy")) / 2**20
    print(f"packed {counts} videos into {path} ({size:.0f} MiB) in {time.perf_counter() - start:.1f} s; "
          f"train with --data.store {path}")
    return 0


def _default(args: argparse.Namespace) -> int:
    print(default_root(args.kind))
    return 0


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (a size or a count)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except None: such options say in their help what they default to."""

    def _get_help_string(self, action: argparse.Action) -> Optional[str]:
        return action.help if action.default is None else super()._get_help_string(action)


def add_layout(parser: argparse.ArgumentParser, splits_help: str,
               default: Optional[tuple[str, ...]] = ("train", "val", "test")) -> None:
    """Options naming an LLP root's splits, feature folders and sizes (``check``, ``pack``)."""
    parser.add_argument("--splits", nargs="+", default=None if default is None else list(default),
                        choices=["train", "val", "test"], help=splits_help)
    for modality in ("audio", "visual", "motion"):
        parser.add_argument(f"--{modality}-dir", default=FEATURE_DIRS[modality], help=f"{modality} feature folder")
        parser.add_argument(f"--{modality}-dim", type=positive_int, default=FEATURE_DIMS[modality],
                            help=f"{modality} feature size")
    parser.add_argument("--num-segments", type=positive_int, default=NUM_SEGMENTS, help="segments per video")


def build_parser() -> argparse.ArgumentParser:
    """The ``avvp-data`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="avvp-data",
        description="Datasets in the LLP layout: synthetic generation, checks, the embedded default.",
        formatter_class=_HelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add_common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("root", metavar="ROOT", help="folder to create (absent or empty)")
        sub.add_argument("--seed", type=int, default=0, help="same seed, same bytes")
        sub.add_argument("--small-dims", action="store_true",
                         help="small feature sizes for quick experiments (audio {audio_dim}, visual {visual_dim}, "
                              "motion {motion_dim}) instead of the real 128, 2048, 512".format(**SMALL_DIMS))
        sub.add_argument("--overwrite", action="store_true", help="replace ROOT if it exists")

    gen = commands.add_parser("generate", help="write a synthetic LLP dataset in the official layout",
                              formatter_class=_HelpFormatter)
    add_common(gen)
    gen.add_argument("--train", type=positive_int, default=600, help="training videos (weak labels)")
    gen.add_argument("--val", type=positive_int, default=100, help="validation videos (weak labels + dense truth)")
    gen.add_argument("--test", type=positive_int, default=150, help="test videos (weak labels + dense truth)")
    gen.set_defaults(func=_generate)

    snip = commands.add_parser("generate-snippets", help="write a synthetic unlabeled pretraining set",
                               formatter_class=_HelpFormatter)
    add_common(snip)
    snip.add_argument("--videos", type=positive_int, default=800, help="number of videos")
    snip.set_defaults(func=_generate_snippets)

    check = commands.add_parser("check", help="list every problem of an LLP root (exit 1 if any)",
                                formatter_class=_HelpFormatter)
    check.add_argument("root", metavar="ROOT", help="dataset root in the official LLP layout")
    add_layout(check, "splits whose videos and features to check (default: train val test; none with --list)",
               default=None)
    check.add_argument("--list", metavar="CSV", default=None,
                       help="also check the videos of a predict list (a tab-separated CSV with a filename column, "
                            "as avvp-finetune predict --data.predict_split reads it); ROOT then needs no split CSVs")
    check.set_defaults(func=_check)

    pack = commands.add_parser("pack", help="pack an LLP root into one array per split and feature kind "
                               "(visual frames pooled) for fast loading with --data.store",
                               formatter_class=_HelpFormatter)
    pack.add_argument("root", metavar="ROOT", help="dataset root in the official LLP layout")
    pack.add_argument("--out", default=None, help=f"store folder (default: ROOT/{DEFAULT_STORE_DIR})")
    pack.add_argument("--overwrite", action="store_true", help="rebuild an existing store")
    add_layout(pack, "splits to pack")
    pack.set_defaults(func=_pack)

    default = commands.add_parser("default", help="print the embedded default dataset's folder (generated if needed)",
                                  formatter_class=_HelpFormatter)
    default.add_argument("--kind", choices=["llp", "snippets"], default="llp", help="which default dataset")
    default.set_defaults(func=_default)
    return parser


def main(args: Optional[Sequence[str]] = None) -> int:
    """Run ``avvp-data``; ``args`` as on the command line (default ``sys.argv[1:]``).

    Returns the exit code: 0, 1 when ``check`` found problems, 2 for an error (one ``error:`` line).
    """
    parsed = build_parser().parse_args(args)
    if args is None:  # a console script: warnings as "avvp-data: warning: ..." lines, without Python's source line
        warnings.formatwarning = lambda message, *_, **__: f"avvp-data: warning: {message}\n"
    try:
        code = parsed.func(parsed)
        sys.stdout.flush()  # here, where a reader that left is handled below, not at the interpreter's exit
        return code
    except (DataError, FileExistsError, ValueError) as err:
        print(f"avvp-data: error: {err}", file=sys.stderr)
        return 2  # as for a bad option, and as avvp-finetune / avvp-pretrain
    except BrokenPipeError:  # the reader left (``avvp-data check ROOT | head``): stop quietly, as Unix tools do
        if args is None:  # a console script: Python's flush at exit would fail again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as a shell reports it


if __name__ == "__main__":
    sys.exit(main())
