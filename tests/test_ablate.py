"""``avvp-ablate`` (a resumable config x seed sweep) and ``avvp-report`` end to end on tiny synthetic data.

One module-scoped sweep (2 configs x 2 seeds, 2 epochs) is interrupted in the middle of its
third fit, one finished run then loses its metrics.json, and the same command is run again;
the report is built from the result and checked against the runs' own metrics.json files.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional

import numpy as np
import pytest
import pytorch_lightning.loggers
import torch
import yaml
from matplotlib.image import imread
from pytorch_lightning.loggers.logger import DummyLogger

from avvp_lightning import runinfo
from avvp_lightning.cli import config_dir
from avvp_lightning.data.llp import read_video_list, video_id
from avvp_lightning.data.synthetic import generate_llp
from avvp_lightning.errors import DataError
from avvp_lightning.finetune import ablate, report
from avvp_lightning.finetune import cli as finetune_cli
from avvp_lightning.labels import CLASSES
from avvp_lightning.metrics import METRIC_KEYS

DIMS = {"audio_dim": 16, "visual_dim": 32, "motion_dim": 8}
CONFIGS = ("han", "base_gcaa")
ROWS = {"HAN": "han", "Base + GCAA": "base_gcaa"}  # the paper's row names of CONFIGS
COLUMNS = ("audio", "visual", "av", "type", "event")
FIGURE4_PX, TIMELINE_PX = (1400, 500), (1000, 900)
PNG_SIGNATURE, PNG_END = b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"


def finetune_args(root: Path) -> list[str]:
    args = ["--data.root", str(root), "--data.batch_size", "8", "--model.hidden_dim", "32",
            "--model.ffn_dim", "32", "--trainer.enable_progress_bar=false", "--trainer.max_epochs=2",
            "--trainer.num_sanity_val_steps=0", "--trainer.enable_model_summary=false"]
    for key, value in DIMS.items():
        args += [f"--data.{key}", str(value)]
    return args


def sweep_args(root: Path, out: Path) -> list[str]:
    return ["--configs", ",".join(CONFIGS), "--seeds", "2", "--output_dir", str(out), *finetune_args(root),
            "--run.wandb", "offline"]  # W&B on, with WandbLogger replaced by FakeWandbLogger


def _value(args: list[str], key: str) -> Optional[str]:
    return args[args.index(key) + 1] if key in args else None


class Recorder:
    """Stands in for ``avvp_lightning.finetune.cli.main``: records each call, then makes it.

    With ``interrupt_fit=k`` the k-th fit (1-based) trains one epoch only and then raises
    KeyboardInterrupt, as if the sweep were killed half-way through that fit.
    """

    def __init__(self, real: Any, interrupt_fit: Optional[int] = None) -> None:
        self.real, self.interrupt_fit, self.calls, self.fits = real, interrupt_fit, [], 0

    def __call__(self, args: list[str]) -> None:
        sub, name, seed = args[0], _value(args, "--run.name"), int(_value(args, "--seed_everything"))
        self.calls.append((sub, name, seed, _value(args, "--ckpt_path")))
        self.fits += sub == "fit"
        if sub == "fit" and self.fits == self.interrupt_fit:
            self.real([*args, "--trainer.max_epochs=1"])
            raise KeyboardInterrupt("simulated kill")
        self.real(args)


WANDB_LOGGERS: list[dict[str, Any]] = []


class FakeWandbLogger(DummyLogger):
    """Replaces Lightning's WandbLogger: records its arguments; no wandb process, no network."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        WANDB_LOGGERS.append(kwargs)
        self.id = f"fake{len(WANDB_LOGGERS)}"
        self.files = Path(kwargs["save_dir"]) / "wandb" / f"offline-run-0-{self.id}" / "files"
        self.files.mkdir(parents=True)

    @property
    def experiment(self) -> Any:  # what RunConfigSaver and RunRecorder use
        return SimpleNamespace(config=SimpleNamespace(update=lambda *a, **k: None), dir=str(self.files), id=self.id)


FakeWandbLogger.__name__ = "WandbLogger"  # RunConfigSaver recognises W&B loggers by class name


def metrics_of(out: Path, config: str, seed: int) -> Path:
    return out / config / f"seed{seed}" / "test" / "metrics.json"


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    base = tmp_path_factory.mktemp("ablate")
    root = generate_llp(base / "llp", num_train=40, num_val=10, num_test=12, seed=5, **DIMS)
    out = base / "outputs"
    WANDB_LOGGERS.clear()
    real = finetune_cli.main
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pytorch_lightning.loggers, "WandbLogger", FakeWandbLogger)
        first = Recorder(real, interrupt_fit=3)  # the third fit is (han, seed 1)
        mp.setattr(finetune_cli, "main", first)
        with pytest.raises(KeyboardInterrupt):
            ablate.main(sweep_args(root, out))
        interrupted_last = torch.load(out / "han" / "seed1" / "checkpoints" / "last.ckpt",
                                      weights_only=True, map_location="cpu")["epoch"]
        kept = metrics_of(out, "han", 0).stat().st_mtime_ns
        metrics_of(out, "base_gcaa", 0).unlink()  # a finished run loses its result
        second = Recorder(real)
        mp.setattr(finetune_cli, "main", second)
        ablate.main(sweep_args(root, out))
    return SimpleNamespace(root=root, out=out, first=first.calls, second=second.calls,
                           interrupted_last=interrupted_last, kept=kept, wandb=list(WANDB_LOGGERS))


@pytest.fixture(scope="module")
def reported(swept: SimpleNamespace, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    filenames, _, _ = read_video_list(swept.root / "AVVP_test_pd.csv", labels="ignore")
    videos = [filenames[0], video_id(filenames[0])]  # the same video, by filename and by id
    out = tmp_path_factory.mktemp("reports")
    report.main(["--output_dir", str(swept.out), "--out", str(out), "--compare", "han,base_gcaa",
                 "--videos", ",".join(videos), "--timeline-config", "han", "--timeline-seed", "1"])
    return SimpleNamespace(out=out, videos=videos)


# ----------------------------------------------------------------------------------- the sweep
@pytest.mark.slow
def test_sweep_trains_and_tests_every_config_and_seed(swept: SimpleNamespace) -> None:
    for config in CONFIGS:
        for seed in (0, 1):
            result = json.loads(metrics_of(swept.out, config, seed).read_text())
            assert (result["config"], result["seed"]) == (config, seed)
            assert (swept.out / config / f"seed{seed}" / "test" / "pred_audio.csv").is_file()
    # Seed-major order, and the kill came in the third fit, before its test.
    assert swept.first == [("fit", "han", 0, None), ("test", "han", 0, "best"),
                           ("fit", "base_gcaa", 0, None), ("test", "base_gcaa", 0, "best"),
                           ("fit", "han", 1, None)]


@pytest.mark.slow
def test_restart_redoes_only_what_did_not_finish(swept: SimpleNamespace) -> None:
    assert swept.second == [
        ("fit", "base_gcaa", 0, "last"), ("test", "base_gcaa", 0, "best"),  # lost its metrics.json
        ("fit", "han", 1, "last"), ("test", "han", 1, "best"),              # killed during fit
        ("fit", "base_gcaa", 1, None), ("test", "base_gcaa", 1, "best"),    # never started
    ]
    assert metrics_of(swept.out, "han", 0).stat().st_mtime_ns == swept.kept  # untouched
    last = torch.load(swept.out / "han" / "seed1" / "checkpoints" / "last.ckpt", weights_only=True,
                      map_location="cpu")
    assert swept.interrupted_last == 0  # killed after its first epoch ...
    assert last["epoch"] == 1  # ... resumed there, and trained to the end of the second


@pytest.mark.slow
def test_each_call_is_a_wandb_run_grouped_by_config(swept: SimpleNamespace) -> None:
    calls = swept.first + swept.second
    assert len(swept.wandb) == len(calls)
    for (sub, config, seed, _), logger in zip(calls, swept.wandb):
        tags = yaml.safe_load((config_dir("finetune") / f"{config}.yaml").read_text())["run"]["tags"]
        assert logger["group"] == config and logger["job_type"] == sub
        assert logger["name"] == f"{config}-seed{seed}" and logger["tags"] == tags
        assert logger["project"] == "avvp-lightning" and logger["offline"] is True


# ---------------------------------------------------------------------------------- the report
def table_rows(text: str, title: str) -> dict[str, list[str]]:
    """Rows of the Markdown table under the heading that starts with ``title``: method -> cells."""
    block: list[str] = []
    for line in text.split(f"## {title}", 1)[1].splitlines()[1:]:
        if line.startswith("|"):
            block.append(line)
        elif block:
            break
    return {cells[0]: cells[1:] for cells in ([c.strip() for c in r.strip("|").split("|")] for r in block[2:])}


@pytest.mark.slow
def test_tables_are_mean_and_sample_std_of_the_runs(swept: SimpleNamespace, reported: SimpleNamespace) -> None:
    text = (reported.out / "report.md").read_text()
    for level, title in (("segment", "Table 1"), ("event", "Table 2")):
        rows = table_rows(text, title)
        assert list(rows) == list(ROWS)  # the paper's row order
        means = {}
        for method, config in ROWS.items():
            runs = [json.loads(metrics_of(swept.out, config, s).read_text()) for s in (0, 1)]
            assert rows[method][0] == "2"
            for col, cell in zip(COLUMNS, rows[method][1:]):
                values = np.array([100 * r[f"{level}/{col}"] for r in runs])
                assert cell.strip("*") == f"{values.mean():.1f} ± {values.std(ddof=1):.1f}", (level, col)
                means[method, col] = f"{values.mean():.1f}"
        for i, col in enumerate(COLUMNS):
            best = max(float(means[m, col]) for m in ROWS)
            for method in ROWS:
                assert rows[method][1 + i].startswith("**") == (float(means[method, col]) == best), (level, col)


def check_png(path: Path, size: tuple[int, int]) -> np.ndarray:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR" and data.endswith(PNG_END), path
    assert struct.unpack(">II", data[16:24]) == size, path
    assert 5_000 < len(data) < 200_000, path
    pixels = imread(path)  # (H, W, 4) floats
    assert pixels.shape[:2] == size[::-1] and pixels[..., :3].std() > 0.05, path  # drawn, not blank
    return pixels


@pytest.mark.slow
def test_figure4_and_timelines_are_pngs_of_the_documented_size(reported: SimpleNamespace) -> None:
    check_png(reported.out / "figure4_han_vs_base_gcaa.png", FIGURE4_PX)
    by_name, by_id = (reported.out / f"timeline_han_seed1_{v}.png" for v in reported.videos)
    check_png(by_name, TIMELINE_PX)
    assert by_id.read_bytes() == by_name.read_bytes()  # the id finds the same test video
    text = (reported.out / "report.md").read_text()
    assert "![Figure 4](figure4_han_vs_base_gcaa.png)" in text and f"({by_id.name})" in text


@pytest.mark.slow
def test_one_seed_shows_the_mean_alone(swept: SimpleNamespace, tmp_path: Path) -> None:
    shutil.copytree(swept.out / "han" / "seed0", tmp_path / "runs" / "han" / "seed0")
    report.main(["--output_dir", str(tmp_path / "runs"), "--out", str(tmp_path / "rep")])
    row = table_rows((tmp_path / "rep" / "report.md").read_text(), "Table 1")["HAN"]
    result = json.loads(metrics_of(swept.out, "han", 0).read_text())
    assert row == ["1"] + [f"**{100 * result[f'segment/{c}']:.1f}**" for c in COLUMNS]
    assert not list((tmp_path / "rep").glob("figure4_*.png"))  # one config: nothing to compare


@pytest.mark.slow
def test_wandb_is_used_only_when_online(swept: SimpleNamespace, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    logged: list[dict[str, Any]] = []
    inits: list[dict[str, Any]] = []
    fake = SimpleNamespace(
        init=lambda **kw: inits.append(kw) or SimpleNamespace(log=logged.append, finish=lambda: None),
        Table=lambda columns, data: ("table", columns, data), Image=lambda path: ("image", path), run=None,
    )
    monkeypatch.setitem(sys.modules, "wandb", fake)
    args = ["--output_dir", str(swept.out), "--out", str(tmp_path)]
    report.main([*args, "--configs", "han"])  # WANDB_MODE=disabled (conftest)
    assert inits == [] and logged == []
    monkeypatch.setenv("WANDB_MODE", "online")
    report.main(args)
    assert inits == [{"project": "avvp-lightning", "job_type": "report", "name": "ablation-report"}]
    (payload,) = logged
    assert payload["figure4"] == ("image", str(tmp_path / "figure4_han_vs_base_gcaa.png"))
    kind, columns, data = payload["table_segment"]
    row = dict(zip(columns, data[0]))
    values = [100 * json.loads(metrics_of(swept.out, "han", s).read_text())["segment/audio"] for s in (0, 1)]
    assert (row["config"], row["n"], row["seeds"]) == ("han", 2, "0,1")
    assert row["audio_mean"] == pytest.approx(np.mean(values))
    assert row["audio_std"] == pytest.approx(np.std(values, ddof=1))


@pytest.mark.slow
def test_finished_runs_made_by_another_command_are_named(swept: SimpleNamespace,
                                                         capsys: pytest.CaptureFixture) -> None:
    opts, extra = ablate.parse_args(sweep_args(swept.root, swept.out))
    runs = ablate.plan_runs(["han"], [0], opts.output_dir)
    ablate.sweep(runs, extra, dry_run=True)  # the sweep that made it: nothing to say
    assert "finished with other" not in capsys.readouterr().err
    ablate.sweep(runs, [*extra, "--trainer.max_epochs", "9"], dry_run=True)  # skipped, as documented, but named
    assert re.search(r"han seed 0: finished with other options or data than this sweep's \(trainer.max_epochs: "
                     r"[0-8] -> 9;", capsys.readouterr().err)
    ablate.sweep(runs, [*extra, "--model.dropout", "0.3"], dry_run=True)
    assert "(model.dropout: 0.1 -> 0.3;" in capsys.readouterr().err
    ablate.sweep(runs, [*extra, "--model.threshold", "0.3", "--trainer.limit_val_batches", "1"], dry_run=True)
    err = capsys.readouterr().err  # the test's threshold, and what picks best.ckpt
    assert "model.threshold: 0.5 -> 0.3" in err and "trainer.limit_val_batches: None -> 1" in err
    ablate.sweep(runs, [*extra, "--trainer.enable_progress_bar=true", "--data.num_workers", "1"], dry_run=True)
    assert "finished with other" not in capsys.readouterr().err  # nothing that changes the numbers


@pytest.mark.slow
def test_finished_runs_moved_or_spelt_otherwise_are_the_sweeps(swept: SimpleNamespace, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture) -> None:
    copy, data = tmp_path / "copy", tmp_path / "data"
    shutil.copytree(swept.out, copy)  # the outputs copied (another mount point, machine, ...)
    shutil.copytree(swept.root, data)  # and the dataset
    monkeypatch.chdir(tmp_path)
    opts, extra = ablate.parse_args(sweep_args(Path("data"), Path("copy")))  # relative paths this time
    runs = ablate.plan_runs(["han"], [0], opts.output_dir)
    assert ablate.sweep(runs, extra, dry_run=True) == []  # finished: nothing to do, nothing to say
    assert "finished with other" not in capsys.readouterr().err
    record = json.loads((copy / "han" / "seed0" / "run.json").read_text())
    record["test"]["data"]["sha256"] = "0" * 64  # tested on other data than it was fit on, and the sweep has
    (copy / "han" / "seed0" / "run.json").write_text(json.dumps(record))
    ablate.sweep(runs, extra, dry_run=True)
    assert "han seed 0: finished with other options or data than this sweep's (test data: " in capsys.readouterr().err
    (data / "AVVP_train.csv").write_text((data / "AVVP_train.csv").read_text().replace("\n", "\n\n", 1))  # other data
    ablate.sweep(runs, extra, dry_run=True)
    assert "han seed 0: finished with other options or data than this sweep's (data: " in capsys.readouterr().err


def test_report_errors_name_what_is_missing(swept: SimpleNamespace, tmp_path: Path) -> None:
    base = ["--output_dir", str(swept.out), "--out", str(tmp_path)]
    with pytest.raises(DataError, match="nope"):
        report.main([*base, "--compare", "han,nope"])
    with pytest.raises(DataError, match="not in the test split"):
        report.main([*base, "--videos", "NoSuchVideo"])
    with pytest.raises(DataError, match="finished seeds"):
        report.main([*base, "--videos", "x", "--timeline-config", "han", "--timeline-seed", "7"])
    with pytest.raises(DataError, match="no finished runs of config"):
        report.main([*base, "--configs", "han,base"])


# ------------------------------------------------------------------------------ fast, no training
def test_bundled_configs_name_their_row_and_components() -> None:
    for path in sorted(config_dir("finetune").glob("*.yaml")):
        if path.name != "defaults.yaml":
            run = yaml.safe_load(path.read_text())["run"]
            assert run["name"] == run["group"] == path.stem and run["tags"], path.name


def test_reserved_and_subcommand_arguments_are_refused(capsys: pytest.CaptureFixture) -> None:
    for bad in (["--seed_everything", "3"], ["--run.name=x"], ["--ckpt_path", "last"], ["fit"]):
        with pytest.raises(SystemExit):
            ablate.main(["--configs", "han", *bad])
        assert bad[0].split("=")[0] in capsys.readouterr().err
    for bad, message in ((["--configs", "han", "--first_seed", "-1"], "--first_seed must be >= 0, got -1"),
                         (["--configs", " , "], "--configs names no config")):
        with pytest.raises(SystemExit):
            ablate.main(bad)
        assert message in capsys.readouterr().err
    opts, passed = ablate.parse_args(["--configs", "han", "--data.root", "test"])  # a value, not a subcommand
    assert passed == ["--data.root", "test"]


def test_unknown_config_fails_before_any_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[list[str]] = []
    monkeypatch.setattr(finetune_cli, "main", calls.append)
    with pytest.raises(DataError, match="no_such_row"):
        ablate.main(["--configs", "han,no_such_row", "--output_dir", str(tmp_path)])
    with pytest.raises(DataError, match="twice"):
        ablate.main(["--configs", "han,han.yaml", "--output_dir", str(tmp_path)])
    assert calls == []


@pytest.mark.parametrize("script", [ablate, report])
def test_console_scripts_print_a_data_error_as_one_line(script: Any, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(finetune_cli, "main", lambda args: pytest.fail("trained"))
    monkeypatch.setattr(sys, "argv", [script.__name__, "--configs", "no_such_row", "--output_dir", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_info:
        script.main()
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and "no_such_row" in err and len(err.splitlines()) == 1


def test_dry_run_prints_the_commands_of_unfinished_runs(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(finetune_cli, "main", lambda args: pytest.fail("dry run trained"))
    done, cut_short = metrics_of(tmp_path, "han", 3), metrics_of(tmp_path, "han", 4)
    for path in (done, cut_short):
        path.parent.mkdir(parents=True)
    finished = {**{key: 0.5 for key in METRIC_KEYS},
                "per_class": {key: dict.fromkeys(CLASSES, 0.5) for key in ("segment/audio", "segment/visual")}}
    done.write_text(json.dumps(finished))
    cut_short.write_text(json.dumps(finished)[:40])  # killed while writing
    monkeypatch.chdir(tmp_path)
    (tmp_path / "extra.yaml").write_text("model:\n  dropout: 0.2\n")  # (parsed before the plan is printed)
    ablate.main(["--configs", "han", "--seeds", "2", "--first_seed", "3", "--run.output_dir", str(tmp_path),
                 "--dry_run", "--config", "extra.yaml", "--trainer.max_epochs", "5"])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("avvp-finetune")]
    common = (f"--config han --config extra.yaml --trainer.max_epochs 5 --seed_everything 4 --run.name han "
              f"--run.group han --run.output_dir {tmp_path}")
    assert lines == [f"avvp-finetune fit {common}", f"avvp-finetune test {common} --ckpt_path best"]


def test_report_without_finished_runs_says_where_it_looked(tmp_path: Path) -> None:
    (tmp_path / "han" / "seed0" / "checkpoints").mkdir(parents=True)  # started, never tested
    with pytest.raises(DataError, match=r"metrics\.json"):
        report.main(["--output_dir", str(tmp_path), "--out", str(tmp_path / "rep")])


def test_sweep_stopped_by_bad_input_says_to_fix_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture) -> None:
    def refused(run: Any, extra: list[str]) -> None:
        raise DataError("--ckpt_path: resuming the run in ... with options or data other than it began with")

    monkeypatch.setattr(ablate, "execute", refused)
    with pytest.raises(DataError):  # rerunning the same command would stop there again: no "run it again"
        ablate.sweep(ablate.plan_runs(["han"], [0], tmp_path), [])
    assert "han seed 0 stopped on the error below; fix it, then run the command again" in capsys.readouterr().err


def test_report_leaves_out_damaged_runs_and_flags_rows_made_differently(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture) -> None:
    def run(config: str, seed: str, value: float, hidden: int = 32, folder: str = "") -> Path:
        path = tmp_path / config / (folder or f"seed{seed}")
        (path / "test").mkdir(parents=True)
        per_class = {key: {c: value for c in CLASSES} for key in ("segment/audio", "segment/visual")}
        (path / "test" / "metrics.json").write_text(json.dumps({**{key: value for key in METRIC_KEYS},
                                                                "per_class": per_class}))
        (path / "run.json").write_text(json.dumps({"fit": {"config": {"model": {"hidden_dim": hidden},
                                                                      "trainer": {"max_epochs": 40}}}}))
        return path

    run("han", "0", 0.5), run("han", "1", 0.7, hidden=16)
    run("han", "01", 0.9, folder="seed01")  # not a run folder: seed 1 once
    run("base", "0", float("nan"))  # a NaN mean is never the best
    damaged = run("base", "1", 0.9)
    (damaged / "test" / "metrics.json").write_text('{"segment/audio": 0.9')  # cut short
    report.main(["--output_dir", str(tmp_path), "--out", str(tmp_path / "rep")])
    text = (tmp_path / "rep" / "report.md").read_text()
    assert "| HAN | 2 | **60.0 ± 14.1** |" in text and "| Base | 1 | nan |" in text
    assert "Unfinished (left out): base/seed1" in text
    assert ("Warning: the runs of HAN were not made alike (seed 1 against seed 0: model.hidden_dim 32 -> 16)"
            in text)
    err = capsys.readouterr().err
    assert "base/seed1/test/metrics.json: not readable JSON" in err and "Warning: the runs of HAN" in err


def test_report_flags_seeds_tested_differently(tmp_path: Path) -> None:
    def run(seed: int, threshold: float, ckpt: str) -> None:
        path = tmp_path / "han" / f"seed{seed}"
        (path / "test").mkdir(parents=True)
        per_class = {key: {c: 0.5 for c in CLASSES} for key in ("segment/audio", "segment/visual")}
        (path / "test" / "metrics.json").write_text(json.dumps({**{key: 0.5 for key in METRIC_KEYS},
                                                                "per_class": per_class}))
        fit = {"config": {"model": {"hidden_dim": 32, "threshold": 0.5}, "trainer": {"max_epochs": 40}}}
        test = {"ckpt_path": str(path / ckpt), "config": {"model": {"hidden_dim": 32, "threshold": threshold},
                                                           "trainer": {"precision": "32-true"}}}
        (path / "run.json").write_text(json.dumps({"fit": fit, "test": test}))

    run(0, 0.5, "best.ckpt"), run(1, 0.5, "best.ckpt")
    assert report.differences(report.find_runs(tmp_path)[0]["han"]) == []  # alike: only the folders differ
    run(2, 0.05, "last.ckpt")
    assert report.differences(report.find_runs(tmp_path)[0]["han"]) == [
        "seed 2 against seed 0: test model.threshold 0.5 -> 0.05; test checkpoint 'best.ckpt' -> 'last.ckpt'"]


def test_options_finetune_refuses_stop_the_sweep_before_any_run(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "outputs"
    for dry in ([], ["--dry_run"]):
        with pytest.raises(SystemExit) as stop:
            ablate.main(["--configs", "han", "--seeds", "1", "--output_dir", str(out), "--model.hiden", "3", *dry])
        assert stop.value.code == 2
        err = capsys.readouterr().err
        assert "unrecognized arguments: --model.hiden 3" in err and "avvp-finetune fit --help" in err
        assert "[avvp-ablate] avvp-finetune fit refuses the options above (row han); fix them" in err
    assert not out.exists()
    bad = tmp_path / "badheads.yaml"  # a later row's config: found before the first row trains
    bad.write_text("model:\n  hidden_dim: 32\n  num_heads: 3\n")
    with pytest.raises(DataError, match="must be divisible by num_heads=3"):
        ablate.main(["--configs", f"han,{bad}", "--seeds", "1", "--output_dir", str(out), "--dry_run"])
    for option in (["--trainer.limit_val_batches", "0"], ["--trainer.fast_dev_run", "true"]):  # no best.ckpt to test
        with pytest.raises(DataError, match=r"the sweep tests each run's best.ckpt, which validation picks"):
            ablate.main(["--configs", "han", "--seeds", "1", "--output_dir", str(out), *option])
    assert not out.exists()


def test_report_and_ablate_read_a_resumed_fit_as_it_ended(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    def run(seed: int, epochs: int, resumed_to: Optional[int]) -> None:
        path = tmp_path / "han" / f"seed{seed}"
        (path / "test").mkdir(parents=True)
        per_class = {key: {c: 0.5 for c in CLASSES} for key in ("segment/audio", "segment/visual")}
        (path / "test" / "metrics.json").write_text(json.dumps({**{key: 0.5 for key in METRIC_KEYS},
                                                                "per_class": per_class}))
        fit = {"config": {"model": {"hidden_dim": 32}, "trainer": {"max_epochs": epochs}}}
        if resumed_to is not None:  # killed, then resumed with another max_epochs
            fit["resumes"] = [{"changes": {"trainer.max_epochs": [epochs, resumed_to]}}]
        (path / "run.json").write_text(json.dumps({"fit": fit, "test": {"config": {}}}))

    run(0, 30, 4), run(1, 4, None)  # both trained 4 epochs
    assert report.differences(report.find_runs(tmp_path)[0]["han"]) == []
    run(2, 30, None)
    assert report.differences(report.find_runs(tmp_path)[0]["han"]) == [
        "seed 2 against seed 0: trainer.max_epochs 4 -> 30"]
    assert runinfo.fit_options({"config": {"trainer": {"max_epochs": 30}},
                                "resumes": [{"changes": {"trainer.max_epochs": [30, 4]}}]})["trainer.max_epochs"] == 4
