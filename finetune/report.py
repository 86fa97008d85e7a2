"""``avvp-report``: the paper's Tables 1-2, Figure 4 and per-video timelines from finished runs.

Examples::

    avvp-report                                           # outputs/ -> reports/
    avvp-report --output_dir outputs --out reports --configs han,base,base_adv_skip_gcaa
    avvp-report --compare han,base_adv_skip_gcaa --videos BjCEufrlXm4_20_30,7B6pKOCdhgA \\
                --timeline-config base_adv_skip_gcaa --timeline-seed 0

Reads only local files, never the network: every finished run
``<output_dir>/<config>/seed<seed>/test/metrics.json`` (written last by ``avvp-finetune test``),
its prediction CSVs, and for timelines the dense truth under the data root recorded in the
run's ``config-test.yaml``. Writes to ``--out``:

* ``report.md``: Table 1 (segment level) and Table 2 (event level) in the paper's shape, rows =
  configs in the paper's row order (other configs after them, by name), columns Audio, Visual,
  AV, Type@AV, Event@AV. A cell is the mean over seeds ± the sample standard deviation
  (ddof = 1), in percent with one decimal; with a single seed it is the mean alone (one run
  has no spread to report), and the ``n`` column gives the number of seeds. The best mean of
  each column (compared as printed) is bold.
* ``figure4_<A>_vs_<B>.png`` (1400 x 500 px): category-wise segment-level F1 of two configs,
  audio left, visual right, as the paper's Figure 4; bars are per-class F1 (``per_class`` in
  metrics.json) averaged over seeds, error bars the standard deviation over seeds.
* ``timeline_<config>_seed<S>_<video>.png`` (1000 x 900 px): one per ``--videos`` entry, the
  25 classes x 10 one-second segments of the audio and the visual truth against the prediction.

With ``WANDB_MODE=online`` the tables and images are also logged to a W&B run (job_type
``report``) of the runs' project; offline or disabled, W&B is not touched.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from avvp_lightning import runinfo
from avvp_lightning.cli import RUN_DEFINING, command_line_errors, defining_changes
from avvp_lightning.data.llp import DENSE_FILES, SPLIT_FILES, read_dense_truth, read_video_list, video_id
from avvp_lightning.data.store import read_index
from avvp_lightning.data.synthetic import default_root
from avvp_lightning.errors import DataError
from avvp_lightning.finetune.ablate import metrics_problem
from avvp_lightning.labels import CLASSES, NUM_CLASSES, NUM_SEGMENTS
from avvp_lightning.metrics import METRIC_KEYS, per_video_scores

#: The rows of the paper's Tables 1-2, in its order, and their names there.
ROW_NAMES: dict[str, str] = {
    "han": "HAN", "base": "Base", "base_gcaa": "Base + GCAA", "base_adv_skip": "Base + Adv + Skip",
    "base_adv_skip_gcaa": "Base + Adv + Skip + GCAA", "pretrain_uni": "Pretrain (uni)",
    "pretrain_cross": "Pretrain (cross)", "pretrain_multi": "Pretrain (multi)",
}
COLUMNS: tuple[tuple[str, str], ...] = (
    ("audio", "Audio"), ("visual", "Visual"), ("av", "AV"), ("type", "Type@AV"), ("event", "Event@AV"),
)
LEVEL_TITLES = {"segment": "Table 1: segment-level F-scores (%) on the test set",
                "event": "Table 2: event-level F-scores (%) on the test set"}
DEFAULT_COMPARE = ("han", "base_adv_skip_gcaa")
DPI = 100
FIGURE4_INCHES = (14.0, 5.0)   # 1400 x 500 px
TIMELINE_INCHES = (10.0, 9.0)  # 1000 x 900 px
BAR_COLORS = ("#7f7f7f", "#1f77b4")
# Timeline cell codes and colours: nothing, hit (truth and prediction), missed, false alarm.
CELL_COLORS = ("#ffffff", "#2ca02c", "#9ecae1", "#d62728")
CELL_LABELS = ("", "truth and prediction", "truth only (missed)", "prediction only (false alarm)")


@dataclass(frozen=True)
class RunResult:
    """A finished run: its config (row) name, seed, folder and test ``metrics.json``."""

    config: str
    seed: int
    folder: Path
    metrics: dict[str, Any]


def row_name(config: str) -> str:
    """The paper's name of a row, or the config name for rows it does not have."""
    return ROW_NAMES.get(config, config)


def _row_key(config: str) -> tuple[int, str]:
    order = list(ROW_NAMES)
    return (order.index(config) if config in order else len(order), config)


def find_runs(output_dir: str | Path, configs: Optional[Sequence[str]] = None
              ) -> tuple[dict[str, list[RunResult]], list[Path]]:
    """Finished runs by config (rows in the paper's order, seeds ascending) and unfinished run folders."""
    root = Path(output_dir)
    found: dict[str, list[RunResult]] = {}
    unfinished: list[Path] = []
    for folder in sorted(root.glob("*/seed*")):
        number = folder.name[4:]
        if not folder.is_dir() or not number.isdigit() or str(int(number)) != number:  # seed01: not a run folder
            continue
        config = folder.parent.name
        if configs and config not in configs:
            continue
        path = folder / "test" / "metrics.json"
        if not path.is_file():
            unfinished.append(folder)
            continue
        problem = metrics_problem(path)
        if problem:  # as avvp-ablate counts it: not finished (its rerun tests the run again)
            print(f"[avvp-report] {path}: {problem}; the run is left out as unfinished", file=sys.stderr, flush=True)
            unfinished.append(folder)
            continue
        metrics = json.loads(path.read_text())
        found.setdefault(config, []).append(RunResult(config, int(number), folder, metrics))
    absent = [c for c in configs or () if c not in found]
    if not found or absent:
        what = f"config(s) {', '.join(absent)}" if absent else "anything"
        raise DataError(f"no finished runs of {what} under {root} (a finished run has "
                        f"<config>/seed<N>/test/metrics.json); finished: {', '.join(sorted(found)) or 'none'}")
    return ({c: sorted(found[c], key=lambda r: r.seed) for c in sorted(found, key=_row_key)},
            unfinished)


#: The options of ``test`` that change its numbers for the same checkpoint.
TEST_DEFINING = ("model.threshold", "trainer.precision", "trainer.limit_test_batches")
# Fit options besides RUN_DEFINING that change the reported numbers: the length of training, the
# precision, and what validation (which picks best.ckpt) scores and when.
FIT_DEFINING = ("trainer.max_epochs", "trainer.max_steps", "trainer.precision", "trainer.check_val_every_n_epoch",
                "trainer.val_check_interval", "trainer.limit_val_batches")


def differences(runs: Sequence[RunResult]) -> list[str]:
    """How the runs of one row differ from its first run in how they were trained or tested.

    From each run's ``run.json``: in its ``fit`` entry (as the fit ended, after its resumes), the
    options a resumed fit must keep (:data:`~avvp_lightning.cli.RUN_DEFINING`, except the seed),
    :data:`FIT_DEFINING` and the data (:func:`~avvp_lightning.runinfo.same_data`); in its ``test`` entry,
    :data:`TEST_DEFINING`, the checkpoint's file name (``best.ckpt``, ``last.ckpt``) and the data.
    Runs without a record are not compared.
    """
    records = [(run, runinfo.read_run_records(run.folder)) for run in runs]
    records = [(run, record) for run, record in records if isinstance(record.get("fit"), dict)]
    if len(records) < 2:
        return []
    (first, base), notes = records[0], []
    keys = tuple(k for k in RUN_DEFINING if k != "seed_everything") + FIT_DEFINING
    for run, record in records[1:]:
        changed = [f"{key} {old!r} -> {new!r}" for key, (old, new) in defining_changes(
            runinfo.fit_options(base["fit"]), runinfo.fit_options(record["fit"]), keys).items()]
        if _other_data(base["fit"], record["fit"]):
            changed.append("the data (another data fingerprint)")
        before, after = base.get("test"), record.get("test")
        if isinstance(before, dict) and isinstance(after, dict):
            changed += [f"test {key} {old!r} -> {new!r}" for key, (old, new) in runinfo.config_changes(
                before.get("config") or {}, after.get("config") or {}).items() if key in TEST_DEFINING]
            names = [Path(str(entry.get("ckpt_path") or "")).name for entry in (before, after)]
            if names[0] != names[1]:
                changed.append(f"test checkpoint {names[0] or None!r} -> {names[1] or None!r}")
            if _other_data(before, after):
                changed.append("the test data (another data fingerprint)")
        if changed:
            notes.append(f"seed {run.seed} against seed {first.seed}: {'; '.join(changed[:4])}"
                         + (f"; and {len(changed) - 4} more" if len(changed) > 4 else ""))
    return notes


def _other_data(before: dict[str, Any], after: dict[str, Any]) -> bool:
    """Whether two run records name data that cannot be the same (no fingerprint: not compared)."""
    return bool(before.get("data") and after.get("data") and not runinfo.same_data(before["data"], after["data"]))


def mean_std(values: Sequence[float]) -> tuple[float, Optional[float]]:
    """Mean and sample standard deviation (ddof = 1; None for a single value)."""
    array = np.asarray(values, dtype=np.float64)
    return float(array.mean()), (float(array.std(ddof=1)) if len(array) >= 2 else None)


def summarize(runs: Sequence[RunResult]) -> dict[str, tuple[float, Optional[float]]]:
    """Mean and std over seeds, in percent, of each of the ten numbers of :data:`METRIC_KEYS`."""
    return {key: mean_std([100.0 * run.metrics[key] for run in runs]) for key in METRIC_KEYS}


def format_cell(mean: float, std: Optional[float]) -> str:
    """``"60.1 ± 0.3"``, or ``"60.1"`` when there is no std (one seed)."""
    return f"{mean:.1f}" if std is None else f"{mean:.1f} ± {std:.1f}"


def markdown_table(results: dict[str, list[RunResult]], level: str) -> str:
    """Table 1 (``level="segment"``) or Table 2 (``"event"``) as Markdown, best mean per column bold."""
    stats = {config: summarize(runs) for config, runs in results.items()}
    best = {col: max([float(f"{s[f'{level}/{col}'][0]:.1f}") for s in stats.values()
                      if math.isfinite(s[f"{level}/{col}"][0])] or [math.nan]) for col, _ in COLUMNS}  # NaN: never best
    lines = [f"| Method | n | {' | '.join(title for _, title in COLUMNS)} |",
             "|:--|--:|" + "--:|" * len(COLUMNS)]
    for config, stat in stats.items():
        cells = []
        for col, _ in COLUMNS:
            mean, std = stat[f"{level}/{col}"]
            cell = format_cell(mean, std)
            cells.append(f"**{cell}**" if math.isfinite(mean) and f"{mean:.1f}" == f"{best[col]:.1f}" else cell)
        lines.append(f"| {row_name(config)} | {len(results[config])} | {' | '.join(cells)} |")
    return "\n".join(lines)


def wandb_tables(results: dict[str, list[RunResult]]) -> dict[str, tuple[list[str], list[list[Any]]]]:
    """Both tables as plain columns and rows (numbers in percent), for ``wandb.Table``."""
    columns = ["method", "config", "n", "seeds"] + [f"{c}_{s}" for c, _ in COLUMNS for s in ("mean", "std")]
    tables = {}
    for level in LEVEL_TITLES:
        rows = []
        for config, runs in results.items():
            stat = summarize(runs)
            numbers = [x for col, _ in COLUMNS for x in stat[f"{level}/{col}"]]
            rows.append([row_name(config), config, len(runs), ",".join(str(r.seed) for r in runs), *numbers])
        tables[f"table_{level}"] = (columns, rows)
    return tables


# ------------------------------------------------------------------------------------- figures
def _figure(inches: tuple[float, float]) -> Figure:
    """A pyplot-free Figure drawn by the Agg canvas (no display, no global state)."""
    fig = Figure(figsize=inches, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def per_class_f1(runs: Sequence[RunResult], modality: str) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Per-class segment-level F1 of ``modality`` in percent: mean (C,) and std (C,) over seeds."""
    values = []
    for run in runs:
        table = run.metrics.get("per_class", {}).get(f"segment/{modality}")
        if table is None or any(c not in table for c in CLASSES):
            raise DataError(f"{run.folder / 'test' / 'metrics.json'}: no per_class segment/{modality} F1 "
                            "of every class (rerun avvp-finetune test)")
        values.append([100.0 * table[c] for c in CLASSES])
    array = np.asarray(values)  # (S, C)
    return array.mean(0), (array.std(0, ddof=1) if len(array) >= 2 else None)


def figure4(results: dict[str, list[RunResult]], pair: Sequence[str], path: str | Path) -> Path:
    """The paper's Figure 4: category-wise segment F1 of two configs, audio left, visual right."""
    fig = _figure(FIGURE4_INCHES)
    axes = fig.subplots(1, 2, sharey=True)
    x = np.arange(NUM_CLASSES)
    width = 0.4
    for ax, modality in zip(axes, ("audio", "visual")):
        for k, config in enumerate(pair):
            mean, std = per_class_f1(results[config], modality)
            ax.bar(x + (k - 0.5) * width, mean, width, yerr=std, color=BAR_COLORS[k], ecolor="black",
                   error_kw={"linewidth": 0.6}, label=f"{row_name(config)} (n={len(results[config])})")
        ax.set_xticks(x, [c.replace("_", " ") for c in CLASSES], rotation=65, ha="right", fontsize=7)
        ax.set_xlim(-0.6, NUM_CLASSES - 0.4)
        ax.set_ylim(0, 100)
        ax.grid(axis="y", alpha=0.3)
        ax.set_title(f"{modality.capitalize()} events")
    axes[0].set_ylabel("segment-level F1 (%)")
    axes[0].legend(loc="upper right", fontsize=8)
    fig.savefig(path, dpi=DPI)
    return Path(path)


def run_data_root(run: RunResult) -> tuple[Path, int]:
    """The data root and segments per video that the run was tested on (from config-test.yaml)."""
    path = run.folder / "config-test.yaml"
    if not path.is_file():
        raise DataError(f"{path}: missing; the timeline reads the data root of the test run from it")
    data = (yaml.safe_load(path.read_text()) or {}).get("data") or {}
    if data.get("root"):
        root = Path(data["root"]).expanduser()
    elif data.get("store"):  # a store given alone: the root it was packed from
        store = Path(data["store"]).expanduser()  # as given to the test run, or as its run record resolved it
        recorded = ((run.metrics.get("run") or {}).get("data") or {}).get("store") or {}
        if not (store / "index.json").is_file() and recorded.get("path"):
            store = Path(recorded["path"])
        try:
            root = Path(read_index(store)["source"])
        except DataError as err:
            raise DataError(f"{path}: the run read the store {data['store']}, unreadable from here: {err}") from None
        if not all((root / name).is_file() for name in (SPLIT_FILES["test"], *DENSE_FILES.values())):
            raise DataError(f"{path}: the run read the store {store} alone, and the dataset it was packed from, "
                            f"{root}, whose test CSVs the timeline reads, is not here; test the run again with "
                            "--data.root naming the dataset")
    else:  # the run used the embedded synthetic set
        root = default_root("llp")
    if not root.is_dir():
        raise DataError(f"{path}: data.root {root} is not a folder here (a relative root is read "
                        "from the current folder)")
    return root, int(data.get("num_segments") or NUM_SEGMENTS)


def find_video(root: Path, video: str) -> str:
    """The test-split filename of ``video`` (a filename, or its 11-character video id)."""
    csv = root / SPLIT_FILES["test"]
    filenames, _, _ = read_video_list(csv, labels="ignore")
    for name in filenames:
        if video in (name, video_id(name)):
            return name
    example = f" such as {filenames[0]}" if filenames else ""
    raise DataError(f"video {video!r} is not in the test split {csv} (give a filename{example} "
                    "or its 11-character id)")


def timeline(run: RunResult, video: str, path: str | Path) -> Path:
    """Truth against prediction of one test video: audio and visual rows of 25 classes x T seconds."""
    root, num_segments = run_data_root(run)
    filename = find_video(root, video)
    truth, pred = {}, {}
    for modality in ("audio", "visual"):
        truth[modality] = read_dense_truth(root / DENSE_FILES[modality], [filename], num_segments)  # (1, T, C)
        pred[modality] = read_dense_truth(run.folder / "test" / f"pred_{modality}.csv", [filename], num_segments)
    scores = per_video_scores(*(torch.from_numpy(x) for x in (pred["audio"], pred["visual"],
                                                              truth["audio"], truth["visual"])))
    fig = _figure(TIMELINE_INCHES)
    axes = fig.subplots(2, 1, sharex=True)
    for ax, modality in zip(axes, ("audio", "visual")):
        is_true, is_pred = truth[modality][0].T > 0.5, pred[modality][0].T > 0.5  # (C, T) each
        codes = np.where(is_true & is_pred, 1, np.where(is_true, 2, np.where(is_pred, 3, 0)))  # (C, T)
        ax.imshow(codes, cmap=ListedColormap(CELL_COLORS), vmin=-0.5, vmax=3.5, aspect="auto",
                  interpolation="nearest", extent=(0, num_segments, NUM_CLASSES, 0))
        ax.set_yticks(np.arange(NUM_CLASSES) + 0.5, [c.replace("_", " ") for c in CLASSES], fontsize=7)
        ax.set_yticks(np.arange(NUM_CLASSES + 1), minor=True)
        ax.set_xticks(np.arange(num_segments + 1))
        ax.grid(which="minor", axis="y", color="#dddddd", linewidth=0.5)
        ax.grid(which="major", axis="x", color="#dddddd", linewidth=0.5)
        ax.tick_params(which="minor", length=0)
        f1 = 100.0 * float(scores[f"segment/{modality}"][0])
        ax.set_title(f"{modality.capitalize()}: truth vs prediction (segment-level F {f1:.1f})", fontsize=10)
    axes[1].set_xlabel("time (s)")
    fig.suptitle(f"{filename} - {row_name(run.config)}, seed {run.seed}", fontsize=11)
    handles = [Patch(facecolor=c, edgecolor="#999999", label=lab) for c, lab in zip(CELL_COLORS[1:], CELL_LABELS[1:])]
    fig.legend(handles=handles, loc="outside lower center", ncol=3, fontsize=8)
    fig.savefig(path, dpi=DPI)
    return Path(path)


# ----------------------------------------------------------------------------------------- W&B
def wandb_online() -> bool:
    """Whether the report goes to W&B too: only when ``WANDB_MODE=online``."""
    return os.environ.get("WANDB_MODE", "").strip().lower() == "online"


def log_to_wandb(project: str, tables: dict[str, tuple[list[str], list[list[Any]]]],
                 images: dict[str, Path]) -> None:
    """Log the tables (``wandb.Table``) and figures (``wandb.Image``) to a new run of ``project``."""
    import wandb

    run = wandb.init(project=project, job_type="report", name="ablation-report")
    payload: dict[str, Any] = {name: wandb.Table(columns=cols, data=rows) for name, (cols, rows) in tables.items()}
    payload.update({name: wandb.Image(str(path)) for name, path in images.items()})
    run.log(payload)
    run.finish()


def _project(results: dict[str, list[RunResult]]) -> str:
    for runs in results.values():
        path = runs[0].folder / "config-test.yaml"
        if path.is_file():
            project = ((yaml.safe_load(path.read_text()) or {}).get("run") or {}).get("project")
            if project:
                return str(project)
    return "avvp-lightning"


# ---------------------------------------------------------------------------------------- main
def _split(text: Optional[str]) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="avvp-report", allow_abbrev=False,
        description="Tables 1-2 (Markdown), the Figure 4 bar chart and per-video timelines (PNG) from "
                    "the finished runs of an output folder; local files only.",
    )
    parser.add_argument("--output_dir", default="outputs",
                        help="Root of the run folders (default: %(default)s).")
    parser.add_argument("--out", default="reports",
                        help="Where to write report.md and the PNGs (default: %(default)s).")
    parser.add_argument("--configs",
                        help="Comma-separated rows to include (default: every config with a finished run).")
    parser.add_argument("--compare", help="Two configs for the Figure 4 chart (default: han,base_adv_skip_gcaa "
                                          "when both finished, else the first two rows).")
    parser.add_argument("--videos",
                        help="Comma-separated test videos (filenames or 11-character ids) to draw timelines of "
                             "(write --videos=ID when an id starts with '-').")
    parser.add_argument("--timeline_config", "--timeline-config", dest="timeline_config",
                        help="Config whose predictions the timelines show (default: the second --compare config).")
    parser.add_argument("--timeline_seed", "--timeline-seed", dest="timeline_seed", type=int,
                        help="Seed of that run (default: its lowest finished seed).")
    parser.add_argument("--project", help="W&B project when WANDB_MODE=online (default: the runs' run.project).")
    return parser


def choose_pair(results: dict[str, list[RunResult]], compare: Optional[str]) -> list[str]:
    """The two configs of Figure 4: ``compare``, else HAN vs the paper's best, else the first two rows."""
    if compare:
        pair = _split(compare)
        if len(pair) != 2 or any(c not in results for c in pair):
            raise DataError(f"--compare needs two configs with finished runs, got {compare!r}; "
                            f"finished: {', '.join(results)}")
        return pair
    pair = list(DEFAULT_COMPARE) if set(DEFAULT_COMPARE) <= set(results) else list(results)[:2]
    return pair if len(pair) == 2 else []


def choose_timeline_run(results: dict[str, list[RunResult]], config: Optional[str], seed: Optional[int],
                        pair: list[str]) -> RunResult:
    """The run whose predictions the timelines show (default: second Figure 4 config, lowest seed)."""
    config = config or (pair[1] if pair else next(iter(results)))
    if config not in results:
        raise DataError(f"--timeline-config {config}: no finished run; finished: {', '.join(results)}")
    runs = {r.seed: r for r in results[config]}
    seed = min(runs) if seed is None else seed
    if seed not in runs:
        raise DataError(f"--timeline-seed {seed}: {config} has finished seeds {sorted(runs)} only")
    return runs[seed]


def render_report(results: dict[str, list[RunResult]], unfinished: list[Path], output_dir: str,
                  images: dict[str, Path], pair: list[str]) -> str:
    """``report.md``: both tables, the seeds, warnings, and links to the figures."""
    lines = ["# AVVP ablations", "",
             f"Finished runs in `{output_dir}`. Each cell: mean ± sample standard deviation (ddof = 1) "
             "over the n seeds, in percent; the mean alone where n = 1. Best mean per column in bold.", ""]
    for level, title in LEVEL_TITLES.items():
        lines += [f"## {title}", "", markdown_table(results, level), ""]
    lines += ["Seeds: " + "; ".join(f"{c} {','.join(str(r.seed) for r in runs)}" for c, runs in results.items())]
    sizes = {r.metrics.get("num_videos") for runs in results.values() for r in runs} - {None}
    if len(sizes) > 1:
        lines += ["", f"Warning: the runs were tested on different numbers of videos ({sorted(sizes)})."]
    for config, runs in results.items():
        notes = differences(runs)
        if notes:
            lines += ["", f"Warning: the runs of {row_name(config)} were not made alike ({'; '.join(notes)}); its mean "
                      "mixes them (rerun them in a folder of their own, or test them alike)."]
    if unfinished:
        lines += ["", "Unfinished (left out): " + ", ".join(f"{p.parent.name}/{p.name}" for p in unfinished)]
    if "figure4" in images:
        lines += ["", f"## Figure 4: category-wise segment-level F1, {row_name(pair[0])} vs {row_name(pair[1])}",
                  "", f"![Figure 4]({images['figure4'].name})"]
    timelines = [path for name, path in images.items() if name.startswith("timeline_")]
    if timelines:
        lines += ["", "## Timelines (truth vs prediction)"]
        for path in timelines:
            lines += ["", f"![{path.stem}]({path.name})"]
    return "\n".join(lines) + "\n"


def main(args: Optional[list[str]] = None) -> None:
    """Run ``avvp-report``; ``args`` as on the command line (default ``sys.argv[1:]``)."""
    opts = _parser().parse_args(args)
    with command_line_errors(args, "avvp-report"):
        write_report(opts)


def write_report(opts: argparse.Namespace) -> None:
    """Write ``report.md`` and the figures for parsed ``avvp-report`` options."""
    results, unfinished = find_runs(opts.output_dir, _split(opts.configs) or None)
    pair = choose_pair(results, opts.compare)
    videos, timeline_run = _split(opts.videos), None
    if videos:  # every choice is checked before anything is drawn
        timeline_run = choose_timeline_run(results, opts.timeline_config, opts.timeline_seed, pair)
        root = run_data_root(timeline_run)[0]
        for video in videos:
            find_video(root, video)

    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    images: dict[str, Path] = {}
    if pair:
        images["figure4"] = figure4(results, pair, out / f"figure4_{pair[0]}_vs_{pair[1]}.png")
    for video in videos:
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in video)
        path = out / f"timeline_{timeline_run.config}_seed{timeline_run.seed}_{safe}.png"
        images[f"timeline_{safe}"] = timeline(timeline_run, video, path)
    markdown = out / "report.md"
    text = render_report(results, unfinished, opts.output_dir, images, pair)
    runinfo.write_atomic(markdown, text)
    for line in text.splitlines():
        if line.startswith("Warning:"):
            print(f"[avvp-report] {line}", file=sys.stderr, flush=True)
    print(f"[avvp-report] {sum(map(len, results.values()))} finished runs of {len(results)} configs -> {markdown}"
          + "".join(f"\n[avvp-report] {p}" for p in images.values()), flush=True)
    if wandb_online():
        log_to_wandb(opts.project or _project(results), wandb_tables(results), images)


if __name__ == "__main__":
    main()
