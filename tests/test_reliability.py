"""Reliability of the stage CLIs: clear early errors, exact resume, atomic saves, reproducible runs.

Everything runs through the real ``avvp-finetune`` / ``avvp-pretrain`` entry points on a tiny
synthetic LLP set: each bad input gets one DataError naming the file and the problem before any
training starts; a fit killed with SIGKILL mid-epoch and resumed from ``last.ckpt`` ends with the
uninterrupted run's weights and test metrics; a crash while saving keeps the previous checkpoint;
two runs with one seed agree and record what they were made of in ``run.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
import warnings
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from avvp_lightning.checkpointing import AtomicCheckpointIO, RunCheckpoint, collect_rng_states, load_checkpoint, set_rng_states
from avvp_lightning.data.datamodules import LLPDataModule
from avvp_lightning.data.llp import video_id
from avvp_lightning.data.sampling import EpochShuffleSampler
from avvp_lightning.data.store import pack_store
from avvp_lightning.data.synthetic import generate_llp
from avvp_lightning.errors import DataError
from avvp_lightning.finetune.cli import main
from avvp_lightning.metrics import METRIC_KEYS
from avvp_lightning.pretrain.cli import main as pretrain_main

DIMS = {"audio_dim": 16, "visual_dim": 32, "motion_dim": 8}
RUN = Path("base_adv_skip_gcaa") / "seed0"  # the default config's run folder


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("llp") / "tiny"
    generate_llp(root, num_train=24, num_val=8, num_test=8, seed=5, **DIMS)
    return root


def small_args(root: Path, out: Path, hidden: int = 32) -> list[str]:
    args = ["--data.root", str(root), "--run.output_dir", str(out), "--data.batch_size", "8",
            "--model.hidden_dim", str(hidden), "--model.ffn_dim", "32", "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false"]
    for key, value in DIMS.items():
        args += [f"--data.{key}", str(value)]
    return args


def pretrain_args(root: Path, out: Path) -> list[str]:
    return ["--data.root", str(root), "--run.output_dir", str(out), "--data.audio_dim", "16",
            "--data.visual_dim", "32", "--data.batch_size", "16", "--model.hidden_dim", "16", "--model.ffn_dim", "16",
            "--model.num_layers", "1", "--model.num_heads", "1", "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false"]


def console_script(name: str) -> list[str]:
    """The installed console script, else the module run as a script (both call ``main()``)."""
    script = Path(sys.executable).with_name(name)
    modules = {"avvp-finetune": "avvp_lightning.finetune.cli", "avvp-pretrain": "avvp_lightning.pretrain.cli"}
    return [str(script)] if script.is_file() else [sys.executable, "-m", modules[name]]


def train_line(root: Path, line: int) -> tuple[str, str]:
    """(filename, event_labels) on a 1-based line of AVVP_train.csv (header = line 1)."""
    name, labels = (root / "AVVP_train.csv").read_text().splitlines()[line - 1].split("\t")
    return name, labels


def state_dicts_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- bad inputs, fit
def _rewrite(path: Path, edit: Callable[[list[str]], list[str]]) -> None:
    path.write_text("\n".join(edit(path.read_text().splitlines())) + "\n")


def _feature(root: Path, folder: str = "feats/vggish") -> Path:
    return root / folder / f"{video_id(train_line(root, 2)[0])}.npy"


def _save_feature(root: Path, array: np.ndarray) -> None:
    np.save(_feature(root), array)


def _with_value(root: Path, value: float) -> None:
    array = np.load(_feature(root))
    array[3, 4] = value
    _save_feature(root, array)


def _two_splits(root: Path) -> None:
    val_row = (root / "AVVP_val_pd.csv").read_text().splitlines()[1]
    _rewrite(root / "AVVP_train.csv", lambda lines: lines + [val_row])


# case -> (how the copy is broken, regex the message must match: the file and what is wrong)
BAD_INPUTS: dict[str, tuple[Callable[[Path], None], str]] = {
    "missing_csv": (lambda r: (r / "AVVP_train.csv").unlink(), r"AVVP_train\.csv: file not found"),
    "empty_csv": (lambda r: (r / "AVVP_train.csv").write_text(""),
                  r"AVVP_train\.csv: empty file \(expected a header line: filename event_labels\)"),
    "header_only_csv": (lambda r: (r / "AVVP_val_pd.csv").write_text("filename\tevent_labels\n"),
                        r"AVVP_val_pd\.csv: empty file \(a header but no videos\)"),
    "missing_column": (lambda r: _rewrite(r / "AVVP_train.csv", lambda ls: ["filename\tlabels"] + ls[1:]),
                       r"AVVP_train\.csv: missing column\(s\) event_labels"),
    "unknown_class": (lambda r: _rewrite(r / "AVVP_train.csv",
                                         lambda ls: ls[:2] + [ls[2].split("\t")[0] + "\tSpeech,Dgo"] + ls[3:]),
                      r"AVVP_train\.csv: line 3: unknown class 'Dgo'"),
    "video_in_two_splits": (_two_splits, r"is listed in two splits: .*AVVP_train\.csv, line 26 and "
                                         r".*AVVP_val_pd\.csv, line 2"),
    "missing_feature_file": (lambda r: _feature(r).unlink(),
                             r"vggish/[^ ]+\.npy: missing feature file for video '[^']+' \(.*AVVP_train\.csv, line 2\)"),
    "wrong_feature_shape": (lambda r: _save_feature(r, np.zeros((9, 16), np.float32)),
                            r"vggish/[^ ]+\.npy: wrong shape \(9, 16\), expected \(10, 16\): one row per segment"),
    "wrong_feature_width": (lambda r: _save_feature(r, np.zeros((10, 17), np.float32)),
                            r"vggish/[^ ]+\.npy: wrong shape \(10, 17\)"),
    "nan_values": (lambda r: _with_value(r, np.nan), r"vggish/[^ ]+\.npy: contains NaN values"),
    "inf_values": (lambda r: _with_value(r, np.inf), r"vggish/[^ ]+\.npy: contains inf values"),
    "truncated_npy": (lambda r: _feature(r).write_bytes(_feature(r).read_bytes()[:200]),
                      r"vggish/[^ ]+\.npy: not a readable \.npy file, truncated or corrupt"),
    "not_an_npy_file": (lambda r: _feature(r).write_text("0.1,0.2,0.3\n"),
                        r"vggish/[^ ]+\.npy: not a \.npy file \(no NUMPY header\)"),
    "wrong_dtype": (lambda r: _save_feature(r, np.zeros((10, 16), np.int64)),
                    r"vggish/[^ ]+\.npy: dtype int64, expected float32"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_clear_error_before_training(case: str, tiny_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "llp"
    shutil.copytree(tiny_root, root)
    breaks, pattern = BAD_INPUTS[case]
    breaks(root)
    with pytest.raises(DataError, match=pattern) as error:
        main(["fit", *small_args(root, tmp_path / "out"), "--trainer.max_epochs=1"])
    assert str(root) in str(error.value)  # names the file by its full path
    run_dir = tmp_path / "out" / RUN
    assert not (run_dir / "checkpoints").exists(), "training started before the data were checked"
    assert not (run_dir / "csv").exists(), "an empty csv/version_N folder was left behind"


def test_bad_input_leaves_no_run_folder_and_no_wandb_run(tiny_root: Path, tmp_path: Path) -> None:
    """A fit stopped by bad data removes what it made before the data loaded: its run folder
    (when new and empty) and its empty offline W&B run; an earlier run's W&B runs stay."""
    root = tmp_path / "llp"
    shutil.copytree(tiny_root, root)
    offline = ["--run.wandb", "offline"]
    main(["fit", *small_args(tiny_root, tmp_path / "good"), "--trainer.max_epochs=1", *offline])
    run_dir = tmp_path / "good" / RUN
    before = sorted(p.relative_to(run_dir) for p in run_dir.rglob("*"))
    assert any(p.name.startswith("offline-run-") for p in (run_dir / "wandb").iterdir())
    _feature(root).unlink()
    with pytest.raises(DataError, match="missing feature file"):
        main(["fit", *small_args(root, tmp_path / "new" / "runs"), *offline])
    assert not (tmp_path / "new").exists()  # made by the failed fit, removed again
    import wandb

    own = wandb.init(mode="offline", dir=str(tmp_path / "user"), project="p")  # a caller's run, which Lightning reuses
    try:
        with pytest.raises(DataError, match="missing feature file"):
            main(["fit", *small_args(root, tmp_path / "new"), *offline])
        assert Path(own.dir).is_dir()
        assert wandb.run is own  # still open: the caller's to finish, not the command's
    finally:
        wandb.finish()
    with pytest.raises(DataError, match="missing feature file"):
        main(["fit", *small_args(root, tmp_path / "good"), *offline])  # in the earlier run's folder
    assert sorted(p.relative_to(run_dir) for p in run_dir.rglob("*")) == before
    earlier = next((run_dir / "wandb").glob("offline-run-*"))
    assert (run_dir / "wandb" / "latest-run").resolve() == earlier.resolve()  # W&B's link, back to the earlier run
    main(["fit", *small_args(tiny_root, tmp_path / "good"), "--trainer.max_epochs=1", *offline])
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1  # the new fit's; the earlier one moved aside


def test_failure_after_the_data_loaded_keeps_the_wandb_run(tiny_root: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Only a start stopped before the data loaded is undone: a fit that fails while training
    keeps its W&B run (what it logged), its logs and its folder; so does a run given a W&B id
    that an earlier run of the folder has ($WANDB_RUN_ID)."""
    from avvp_lightning.finetune.module import ParserModule

    args = [*small_args(tiny_root, tmp_path), "--trainer.max_epochs=2", "--run.wandb", "offline"]
    monkeypatch.setenv("WANDB_RUN_ID", "samerunid")
    main(["fit", *args])
    run_dir = tmp_path / RUN
    earlier = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(earlier) == 1
    with pytest.raises(DataError):  # the same W&B id, stopped before its data loaded
        main(["test", *args, "--ckpt_path", "best", "--data.root", str(tmp_path / "nowhere")])
    assert earlier[0].is_dir() and any(earlier[0].rglob("*.wandb"))
    monkeypatch.delenv("WANDB_RUN_ID")

    def fail(self, batch, batch_idx):  # a failure after the data loaded
        raise RuntimeError("boom")

    monkeypatch.setattr(ParserModule, "training_step", fail)
    with pytest.raises(RuntimeError, match="boom"):
        main(["fit", *small_args(tiny_root, tmp_path / "failed"), "--run.wandb", "offline"])
    failed = tmp_path / "failed" / RUN
    assert len(list((failed / "wandb").glob("offline-run-*/*.wandb"))) == 1
    assert (failed / "run.json").is_file()


@pytest.mark.slow
def test_console_script_prints_one_error_line_and_exits_2(tiny_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "llp"
    shutil.copytree(tiny_root, root)
    _feature(root).unlink()
    env = {**os.environ, "WANDB_MODE": "disabled"}
    done = subprocess.run([*console_script("avvp-finetune"), "fit", *small_args(root, tmp_path / "out")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("avvp-finetune: error: ")
    assert f"{_feature(root)}: missing feature file" in errors[0]

    missing = tmp_path / "nowhere.ckpt"
    done = subprocess.run([*console_script("avvp-pretrain"), "export", "--ckpt_path", str(missing), "--root",
                           str(root), "--out_name", "x"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip() == f"avvp-pretrain: error: {missing}: checkpoint not found"


def test_unwritable_output_is_one_line_before_the_data_loads(tiny_root: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture) -> None:
    import errno

    from avvp_lightning.cli import command_line_errors

    (tmp_path / "file").write_text("")
    with pytest.raises(DataError, match=r"cannot make the run folder: .*file is not a folder"):
        main(["fit", *small_args(tiny_root, tmp_path / "file" / "out")])
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # (a read-only folder; root may write anyway)
    with pytest.raises(DataError, match=r"cannot write the run folder: .* is not writable \(give another"):
        main(["test", *small_args(tiny_root, tmp_path / "ro"), "--ckpt_path", "last"])
    monkeypatch.undo()
    capsys.readouterr()  # (what the runs above printed: Lightning's warnings go to stderr under -p no:warnings)
    with pytest.raises(SystemExit) as exit_info, command_line_errors(None, "avvp-finetune"):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "run.json"))
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == (f"avvp-finetune: error: {tmp_path / 'run.json'}: No space left on device "
                                       "(files written before are kept)\n")
    from lightning_fabric.utilities.exceptions import MisconfigurationException  # Lightning refusing an option mid-run
    with pytest.raises(SystemExit) as exit_info, command_line_errors(None, "avvp-finetune"):
        raise MisconfigurationException("ReduceLROnPlateau conditioned on metric val/x which is not available.")
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == ("avvp-finetune: error: ReduceLROnPlateau conditioned on metric val/x which is "
                                       "not available. (Lightning refused the configuration; files written before "
                                       "are kept)\n")


def test_main_with_args_raises_for_python_callers(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="checkpoint not found"):
        pretrain_main(["export", "--ckpt_path", str(tmp_path / "nowhere.ckpt"), "--out_name", "x"])


@pytest.mark.parametrize("where", ["flag", "yaml"])
def test_unknown_config_key_names_the_key(where: str, tiny_root: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture) -> None:
    if where == "flag":
        extra = ["--model.hiden_dim", "3"]
    else:
        config = tmp_path / "typo.yaml"
        config.write_text("model:\n  hiden_dim: 3\n")
        extra = ["--config", str(config)]
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *extra, *small_args(tiny_root, tmp_path)])
    assert exit_info.value.code == 2
    assert "hiden_dim" in capsys.readouterr().err
    assert not (tmp_path / RUN).exists()


def test_yaml_configs_are_loaded_safely(tiny_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    marker = tmp_path / "executed"
    config = tmp_path / "evil.yaml"
    config.write_text(f"model:\n  hidden_dim: !!python/object/apply:os.system [\"touch {marker}\"]\n")
    with pytest.raises(DataError, match="evil.yaml: not valid YAML .*python/object/apply"):  # safe loading refuses it
        main(["fit", "--config", str(config), *small_args(tiny_root, tmp_path)])
    assert not marker.exists()


# ------------------------------------------------------------------------------ checkpoints
@pytest.fixture(scope="module")
def trained(tiny_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Output folder of a 1-epoch finetune run (hidden 32): RUN/checkpoints/{best,last}.ckpt."""
    out = tmp_path_factory.mktemp("trained")
    main(["fit", *small_args(tiny_root, out), "--trainer.max_epochs=1"])
    return out


@pytest.fixture(scope="module")
def pretrained(tiny_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """last.ckpt of a 1-epoch grounding pretraining run."""
    out = tmp_path_factory.mktemp("pretrained")
    pretrain_main(["fit", *pretrain_args(tiny_root, out), "--trainer.max_epochs=1"])
    return next(out.glob("*/seed0/checkpoints/last.ckpt"))


def test_failed_run_keeps_the_record_and_checkpoints_of_the_good_one(trained: Path, tiny_root: Path,
                                                                     tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(trained, out)
    before = {p: p.read_bytes() for p in (out / RUN).rglob("*") if p.is_file() and p.suffix in (".json", ".ckpt")}
    assert out / RUN / "run.json" in before
    logs = sorted((out / RUN / "csv").iterdir())
    broken = tmp_path / "llp"
    shutil.copytree(tiny_root, broken)
    _save_feature(broken, np.zeros((9, 16), np.float32))
    (broken / "AVVP_test_pd.csv").unlink()
    with pytest.raises(DataError, match="wrong shape"):
        main(["fit", *small_args(broken, out), "--trainer.max_epochs=2"])
    with pytest.raises(DataError, match="AVVP_test_pd.csv: file not found"):
        main(["test", *small_args(broken, out), "--ckpt_path", "last"])
    for path, content in before.items():
        assert path.read_bytes() == content, path
    assert sorted((out / RUN / "csv").iterdir()) == logs  # the failed runs left no empty version_N


def test_checkpoint_of_another_size_names_file_and_mismatch(trained: Path, tiny_root: Path) -> None:
    best = trained / RUN / "checkpoints" / "best.ckpt"
    with pytest.raises(DataError) as error:
        main(["test", *small_args(tiny_root, trained, hidden=64), "--ckpt_path", "best"])
    message = str(error.value)
    assert message.startswith(f"{best}: does not fit the configured ParserModule: it was trained with hidden_dim=32 "
                              "but this run has hidden_dim=64")
    assert "parser.fc_audio.weight (32, 16) in the checkpoint, (64, 16) configured" in message


def test_checkpoint_of_another_architecture_names_the_hyperparameters(trained: Path, tiny_root: Path,
                                                                      tmp_path: Path) -> None:
    best = trained / RUN / "checkpoints" / "best.ckpt"
    with pytest.raises(DataError) as error:  # an explicit path: the config decides, never the checkpoint
        main(["test", "--config", "han", *small_args(tiny_root, tmp_path), "--ckpt_path", str(best)])
    message = str(error.value)
    assert message.startswith(f"{best}: does not fit the configured ParserModule: it was trained with "
                              "architecture='base', attention='gcaa'")
    assert "this run has architecture='han', attention='mha'" in message
    assert "missing from the checkpoint" in message and "not in the configured model" in message


def test_explicit_checkpoint_keeps_the_configured_hyperparameters(trained: Path, tiny_root: Path,
                                                                  tmp_path: Path) -> None:
    best = trained / RUN / "checkpoints" / "best.ckpt"
    main(["test", *small_args(tiny_root, tmp_path), "--model.threshold", "0.3", "--ckpt_path", str(best)])
    result = json.loads((tmp_path / RUN / "test" / "metrics.json").read_text())
    assert result["run"]["config"]["model"]["threshold"] == 0.3
    assert result["run"]["ckpt_path"] == str(best)


def test_pretrain_checkpoint_given_to_finetune(pretrained: Path, tiny_root: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=rf"^{pretrained}: this is a pretrain checkpoint \(avvp-pretrain, "
                                        r"PretrainModule\), but ParserModule needs a finetune checkpoint"):
        main(["test", *small_args(tiny_root, tmp_path), "--ckpt_path", str(pretrained)])


def test_finetune_checkpoint_given_to_pretrain(trained: Path, tiny_root: Path, tmp_path: Path) -> None:
    best = trained / RUN / "checkpoints" / "best.ckpt"
    with pytest.raises(DataError, match=rf"^{best}: this is a finetune checkpoint \(avvp-finetune, ParserModule\), "
                                        r"but PretrainModule needs a pretrain checkpoint"):
        pretrain_main(["validate", *pretrain_args(tiny_root, tmp_path), "--ckpt_path", str(best)])
    with pytest.raises(DataError, match=rf"^{best}: this is a finetune checkpoint .* but export needs a pretrain"):
        pretrain_main(["export", "--ckpt_path", str(best), "--root", str(tiny_root), "--out_name", "x"])


class NotAllowed:
    """A pickled object that ``torch.load(weights_only=True)`` refuses."""


@pytest.mark.parametrize("content", ["truncated", "text", "pickled_object", "nan_weights", "flipped_byte"])
def test_unreadable_checkpoint(content: str, trained: Path, tiny_root: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.ckpt"
    if content == "truncated":
        bad.write_bytes((trained / RUN / "checkpoints" / "best.ckpt").read_bytes()[:4000])
    elif content == "text":
        bad.write_text("not a checkpoint\n")
    elif content == "pickled_object":
        torch.save({"state_dict": {}, "extra": NotAllowed()}, bad)
    elif content == "nan_weights":
        checkpoint = load_checkpoint(trained / RUN / "checkpoints" / "best.ckpt")
        checkpoint["state_dict"]["parser.fc_audio.weight"][0, 0] = float("nan")
        torch.save(checkpoint, bad)
    else:  # one byte of the pickle flipped: a damaged file, not one to trust more (--weights_only false)
        shutil.copy(trained / RUN / "checkpoints" / "best.ckpt", bad)
        with zipfile.ZipFile(bad) as archive:
            info = next(i for i in archive.infolist() if i.filename.endswith("data.pkl"))
        with open(bad, "r+b") as file:
            file.seek(info.header_offset)
            header = file.read(30)
            start = info.header_offset + 30 + int.from_bytes(header[26:28], "little") + int.from_bytes(header[28:30], "little")
            file.seek(start + 2)  # after PROTO n: an opcode the weights-only unpickler does not know
            file.write(b"\x93")
    match = {"text": "not a PyTorch checkpoint file", "truncated": "not a readable checkpoint: truncated",
             "flipped_byte": "not a readable checkpoint: truncated or corrupt",
             "pickled_object": r"holds pickled Python objects .*give --weights_only false",
             "nan_weights": r"1 weight tensor\(s\) hold NaN or inf values \(parser.fc_audio.weight\)"}[content]
    with pytest.raises(DataError, match=rf"^{bad}: {match}"):
        main(["test", *small_args(tiny_root, tmp_path), "--ckpt_path", str(bad)])


def test_checkpoints_load_with_weights_only_and_carry_rng_states(trained: Path) -> None:
    for name in ("best.ckpt", "last.ckpt"):
        checkpoint = load_checkpoint(trained / RUN / "checkpoints" / name)  # weights_only=True
        assert set(checkpoint["callbacks"]["RngStates"]) >= {"torch", "numpy", "python"}


def test_rng_states_round_trip() -> None:
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    states = collect_rng_states()
    first = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(2), np.random.seed(2), random.seed(2)
    set_rng_states(states)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]


# ----------------------------------------------------------------------------- atomic saves
class PartialSave:
    """Stands in for ``torch.save``: writes some bytes, then fails (a crash in the middle of a save)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, obj: object, f: object, *args: object, **kwargs: object) -> None:
        self.calls += 1
        f.write(b"PK\x03\x04 half a checkpoint")  # type: ignore[attr-defined]
        raise OSError("simulated crash while saving")


def test_moved_run_folder_keeps_the_best_checkpoint_record(tmp_path: Path) -> None:
    def callback(folder: Path) -> RunCheckpoint:
        return RunCheckpoint(dirpath=str(folder), filename="best", monitor="val/score", mode="max", save_top_k=1)

    old, new = tmp_path / "old" / "checkpoints", tmp_path / "new" / "checkpoints"
    saved = callback(old)
    best = os.path.join(saved.dirpath, "best.ckpt")
    saved.best_model_score, saved.best_model_path, saved.kth_best_model_path = torch.tensor(0.7), best, best
    saved.best_k_models = {best: torch.tensor(0.7)}
    state = saved.state_dict()
    assert state["dirpath"] == saved.dirpath and callback(old).state_key.startswith("ModelCheckpoint{")

    new.mkdir(parents=True)
    resumed = callback(new)
    with pytest.warns(UserWarning, match="best.ckpt, which is not there; a new record"):  # another run's
        resumed.load_state_dict(state)
    assert resumed.best_model_score is None and resumed.best_k_models == {} and resumed.best_model_path == ""
    same = callback(old)  # the same folder, its best.ckpt moved away (previous/) or deleted: a new record too
    with pytest.warns(UserWarning, match="which is not there"):
        same.load_state_dict(state)
    assert same.best_model_score is None
    (new / "best.ckpt").write_bytes(b"moved with its folder")
    resumed = callback(new)
    resumed.load_state_dict(state)  # the folder moved: the record moves with it
    moved = os.path.join(resumed.dirpath, "best.ckpt")
    assert resumed.best_model_score == 0.7 and resumed.best_model_path == resumed.kth_best_model_path == moved
    assert list(resumed.best_k_models) == [moved]


def test_failed_run_record_write_keeps_the_old_record_and_no_temporary_file(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from avvp_lightning import runinfo

    runinfo.write_run_record(tmp_path, {"subcommand": "fit", "seed": 0})
    before = (tmp_path / "run.json").read_text()

    def full_disk(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(runinfo.os, "replace", full_disk)
    with pytest.raises(OSError, match="No space left"):
        runinfo.write_run_record(tmp_path, {"subcommand": "test", "seed": 0})
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"] and (tmp_path / "run.json").read_text() == before


def test_atomic_save_keeps_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "epoch": 0}, path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / f".last.ckpt.tmp-{dead.stdout.strip()}").write_bytes(b"left by a process killed mid-save")
    in_flight = tmp_path / f".last.ckpt.tmp-{os.getppid()}"  # another run's save in progress (a live process)
    in_flight.write_bytes(b"being written")
    io.save_checkpoint({"state_dict": {"w": torch.full((3,), 2.0)}, "epoch": 1}, path)
    assert list(tmp_path.glob(".last.ckpt.tmp-*")) == [in_flight]  # stale temporary files are cleared
    in_flight.unlink()
    monkeypatch.setattr(torch, "save", PartialSave())
    with pytest.raises(OSError, match="simulated crash"):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "epoch": 2}, path)
    monkeypatch.undo()
    kept = torch.load(path, weights_only=True)
    assert kept["epoch"] == 1 and torch.equal(kept["state_dict"]["w"], torch.full((3,), 2.0))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


@pytest.mark.slow
def test_crash_while_saving_during_fit_keeps_last_checkpoint(tiny_root: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    args = small_args(tiny_root, tmp_path)
    main(["fit", *args, "--trainer.max_epochs=1"])
    last = tmp_path / RUN / "checkpoints" / "last.ckpt"
    before = torch.load(last, weights_only=True)
    crash = PartialSave()
    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="simulated crash"):
        main(["fit", *args, "--trainer.max_epochs=2", "--ckpt_path", "last"])
    monkeypatch.undo()
    assert crash.calls >= 1  # the second epoch's save did start
    after = torch.load(last, weights_only=True)
    assert after["epoch"] == 0 and state_dicts_equal(before["state_dict"], after["state_dict"])
    assert not list(last.parent.glob(".*.tmp-*"))
    main(["fit", *args, "--trainer.max_epochs=2", "--ckpt_path", "last"])  # and training goes on from it
    assert torch.load(last, weights_only=True)["epoch"] == 1


# ------------------------------------------------------------------ order and reproducibility
def test_training_order_depends_on_seed_and_epoch_only(tiny_root: Path) -> None:
    sampler = EpochShuffleSampler(range(50), seed=7)
    orders = [list(sampler) for _ in range(3)]  # plain loops: a new order every pass
    assert all(sorted(order) == list(range(50)) for order in orders) and orders[0] != orders[1]
    fresh = EpochShuffleSampler(range(50), seed=7)
    fresh.set_epoch(2)  # as Lightning does when a run resumes at epoch 2
    assert list(fresh) == orders[2]
    other = EpochShuffleSampler(range(50), seed=8)
    assert list(other) != orders[0]

    torch.manual_seed(7)
    datamodule = LLPDataModule(root=str(tiny_root), batch_size=8, **DIMS)
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    assert isinstance(loader.sampler, EpochShuffleSampler) and loader.sampler.seed == 7
    torch.rand(5)  # the global RNG no longer decides the order
    ids = datamodule.datasets["train"].ids
    assert [name for batch in loader for name in batch["id"]] == [ids[i] for i in EpochShuffleSampler(ids, 7)]


def _fit_and_test(root: Path, out: Path, seed: int = 0) -> tuple[dict, dict]:
    args = [*small_args(root, out), "--seed_everything", str(seed)]
    main(["fit", *args, "--trainer.max_epochs=2"])
    main(["test", *args, "--ckpt_path", "last"])
    run_dir = out / "base_adv_skip_gcaa" / f"seed{seed}"
    metrics = json.loads((run_dir / "test" / "metrics.json").read_text())
    return metrics, torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)


@pytest.mark.slow
def test_same_seed_same_numbers_and_run_record(tiny_root: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    first, first_ckpt = _fit_and_test(tiny_root, tmp_path / "a")
    printed = capsys.readouterr().out
    second, second_ckpt = _fit_and_test(tiny_root, tmp_path / "b")
    assert {k: first[k] for k in METRIC_KEYS} == {k: second[k] for k in METRIC_KEYS}
    assert first["per_class"] == second["per_class"]
    assert state_dicts_equal(first_ckpt["state_dict"], second_ckpt["state_dict"])
    _, other_ckpt = _fit_and_test(tiny_root, tmp_path / "c", seed=1)
    assert not state_dicts_equal(first_ckpt["state_dict"], other_ckpt["state_dict"])

    record = json.loads((tmp_path / "a" / RUN / "run.json").read_text())
    assert set(record) == {"fit", "test"}
    fit, test = record["fit"], record["test"]
    assert fit["seed"] == test["seed"] == 0 and fit["ckpt_path"] is None
    assert fit["command"][:2] == ["avvp-finetune", "fit"] and "--trainer.max_epochs=2" in fit["command"]
    assert test["ckpt_path"] == str(tmp_path / "a" / RUN / "checkpoints" / "last.ckpt")
    assert fit["config"]["model"]["hidden_dim"] == 32 and fit["config"]["data"]["root"] == str(tiny_root)
    assert fit["config"]["trainer"]["max_epochs"] == 2 and fit["config"]["seed_everything"] == 0
    versions = fit["versions"]
    assert versions["torch"] in (torch.__version__, torch.__version__.split("+")[0])
    assert versions["numpy"] == np.__version__ and versions["python"] == ".".join(map(str, sys.version_info[:3]))
    assert {"pytorch_lightning", "torchmetrics", "pandas"} <= set(versions)
    data = fit["data"]
    for name in ("AVVP_train.csv", "AVVP_val_pd.csv", "AVVP_test_pd.csv", "AVVP_eval_audio.csv", "AVVP_eval_visual.csv"):
        assert data["csv"][name] == hashlib.sha256((tiny_root / name).read_bytes()).hexdigest()
    assert data["features"]["audio"] == {**data["features"]["audio"], "dir": "feats/vggish", "files": 40,
                                         "shapes": {"(10, 16) float32": 40}}
    assert data["features"]["visual"]["shapes"] == {"(80, 32) float32": 40}
    assert data["sha256"] == test["data"]["sha256"]
    assert first["run"]["data"]["sha256"] == second["run"]["data"]["sha256"] == data["sha256"]
    assert first["run"]["seed"] == 0 and first["run"]["subcommand"] == "test"
    assert "seed 0; python" in printed and f"sha256 {data['sha256'][:16]}" in printed and "run.json" in printed

    changed = tmp_path / "changed"  # one dense-truth row fewer: another fingerprint
    shutil.copytree(tiny_root, changed)
    _rewrite(changed / "AVVP_eval_audio.csv", lambda lines: lines[:-1])
    main(["validate", *small_args(changed, tmp_path / "a"), "--ckpt_path", "last"])
    record = json.loads((tmp_path / "a" / RUN / "run.json").read_text())
    assert record["validate"]["data"]["csv"]["AVVP_train.csv"] == data["csv"]["AVVP_train.csv"]
    assert record["validate"]["data"]["sha256"] != data["sha256"]


# ------------------------------------------------------------------- SIGKILL and resume
PAUSE_CALLBACK = '''
import pathlib, time
from pytorch_lightning import Callback

class PauseAt(Callback):
    """Signals, then waits to be killed, at the start of batch `batch` of epoch `epoch`."""

    def __init__(self, epoch: int = 1, batch: int = 1, marker: str = "") -> None:
        self.epoch, self.batch, self.marker = epoch, batch, marker

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            pathlib.Path(self.marker).write_text("paused")
            time.sleep(300)
'''


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(tiny_root: Path, tmp_path: Path) -> None:
    epochs, killed_in = 3, 1  # last.ckpt of epoch 0 exists; epoch 1 has trained one batch when killed
    args = small_args(tiny_root, tmp_path / "ref")
    main(["fit", *args, f"--trainer.max_epochs={epochs}"])
    main(["test", *args, "--ckpt_path", "last"])
    reference = tmp_path / "ref" / RUN

    (tmp_path / "helpers").mkdir()
    (tmp_path / "helpers" / "pause_callback.py").write_text(PAUSE_CALLBACK)
    marker, args = tmp_path / "paused", small_args(tiny_root, tmp_path / "killed")
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": os.pathsep.join(
        [str(tmp_path / "helpers"), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen([*console_script("avvp-finetune"), "fit", *args, f"--trainer.max_epochs={epochs}",
                                "--trainer.callbacks+=pause_callback.PauseAt", f"--trainer.callbacks.epoch={killed_in}",
                                f"--trainer.callbacks.marker={marker}"],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert process.poll() is None, process.stderr.read()[-3000:] if process.stderr else ""
            assert time.monotonic() < deadline, "the run never reached the pause"
            time.sleep(0.1)
        last = tmp_path / "killed" / RUN / "checkpoints" / "last.ckpt"
        assert torch.load(last, weights_only=True)["epoch"] == killed_in - 1
        process.kill()  # SIGKILL: no handler, no final save
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
    assert process.returncode == -9

    (tmp_path / "killed").rename(tmp_path / "moved")  # resumed elsewhere: best.ckpt's record must follow
    args = small_args(tiny_root, tmp_path / "moved")
    main(["fit", *args, f"--trainer.max_epochs={epochs}", "--ckpt_path", "last"])
    main(["test", *args, "--ckpt_path", "last"])
    resumed = tmp_path / "moved" / RUN
    want, got = (torch.load(d / "checkpoints" / "best.ckpt", weights_only=True) for d in (reference, resumed))
    assert want["epoch"] == got["epoch"] and state_dicts_equal(want["state_dict"], got["state_dict"])
    want, got = (torch.load(d / "checkpoints" / "last.ckpt", weights_only=True) for d in (reference, resumed))
    assert want["epoch"] == got["epoch"] == epochs - 1 and want["global_step"] == got["global_step"]
    assert state_dicts_equal(want["state_dict"], got["state_dict"])
    for a, b in zip(want["optimizer_states"][0]["state"].values(), got["optimizer_states"][0]["state"].values()):
        assert torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])
    want_metrics, got_metrics = (json.loads((d / "test" / "metrics.json").read_text()) for d in (reference, resumed))
    assert {k: want_metrics[k] for k in METRIC_KEYS} == {k: got_metrics[k] for k in METRIC_KEYS}
    assert want_metrics["per_class"] == got_metrics["per_class"]


def test_diverged_fit_stops_and_keeps_earlier_checkpoints(tiny_root: Path, tmp_path: Path) -> None:
    # the learning rate x1e7 after epoch 0: the weights turn NaN in epoch 1
    args = [*small_args(tiny_root, tmp_path), "--trainer.max_epochs=4", "--lr_scheduler.init_args.step_size=1",
            "--lr_scheduler.init_args.gamma=1e7"]
    with pytest.raises(DataError, match=r"training diverged at epoch [1-3], .*--optimizer.lr; the last step's was 3e\+[0-9]+\).*"
                                        r"best.ckpt, last.ckpt") as error:
        main(["fit", *args])
    epoch = int(str(error.value).split("epoch ")[1].split(",")[0])
    for name in ("best.ckpt", "last.ckpt"):  # earlier epochs', finite and loadable
        ckpt = load_checkpoint(tmp_path / RUN / "checkpoints" / name)
        assert ckpt["epoch"] < epoch
        assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    main(["test", *small_args(tiny_root, tmp_path), "--ckpt_path", "best"])
    assert (tmp_path / RUN / "test" / "metrics.json").is_file()


def test_diverged_pretraining_stops_before_any_checkpoint(tiny_root: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"training diverged at epoch 0, .*--model.lr; the last step's was 1e\+06.*no checkpoint"):
        pretrain_main(["fit", *pretrain_args(tiny_root, tmp_path), "--trainer.max_epochs=3", "--model.lr=1e6",
                       "--data.batch_size=4"])
    assert not list(tmp_path.rglob("*.ckpt"))


@pytest.mark.parametrize("content, message", [
    (b"model:\n#  hidden_dim: 64\n", r"section 'model' is empty \(every line under it commented out\?\)"),
    (b"fit:\n  trainer:\n", r"section 'fit.trainer' is empty"),
    (b"model: 5\n", r"section 'model' must hold options \(key: value lines\), got 5"),
    (b"model:\n  hidden_dim: [32\n", r"not valid YAML \(expected ',' or '\]', but got '<stream end>' at line 3"),
    (b"", r"empty config \(no options in it\)"),
    (b"# a comment\n", r"empty config"),
    (b"\xff\xfe bad", r"not a UTF-8 text file"),
    (b"- a\n- b\n", r"a config is a mapping of sections .*got list"),
])
def test_config_files_that_are_no_config_name_the_file(tmp_path: Path, content: bytes, message: str) -> None:
    config = tmp_path / "override.yaml"
    config.write_bytes(content)
    for entry in (main, pretrain_main):
        with pytest.raises(DataError, match=rf"--config {re.escape(str(config))}: {message}"):
            entry(["fit", "--config", "han.yaml" if entry is main else "pretrain_uni", "--config", str(config),
                   "--print_config"])
    with pytest.raises(DataError, match="a folder, not a config file"):
        main(["fit", "--config", str(tmp_path) + os.sep])
    assert not list(tmp_path.iterdir())[1:]  # nothing written beside the file


@pytest.mark.parametrize("option, message", [
    ("--model.visual_smoothing=2", r"visual_smoothing must be in \[0, 1\] \(1: none\), got 2.0"),
    ("--model.hidden_dim=0", r"hidden_dim must be >= 1, got 0"),
    ("--model.num_heads=0", r"num_heads must be >= 1, got 0"),
    ("--model.lambda_ad=-0.5", r"lambda_ad must be finite and >= 0, got -0.5"),
    ("--trainer.max_epochs=0", r"--trainer.max_epochs 0 trains nothing"),
    ("--trainer.max_epochs=-5", r"invalid option value: .*max_epochs"),
    ("--trainer.devices=0", r"invalid option value: .*devices"),
    ("--run.name=../../x", r"--run.name '../../x': a plain name is needed"),
    ("--run.name=", r"--run.name '': a plain name is needed"),
    ("--seed_everything=-1", r"invalid option value: --seed_everything: -1 is not in bounds"),
    ("--trainer.max_steps=0", r"--trainer.max_steps 0 trains nothing"),
    ("--trainer.limit_train_batches=0", r"--trainer.limit_train_batches 0(\.0)? trains nothing"),
    ("--trainer.limit_train_batches=0.2", r"train set: --trainer.limit_train_batches=0.2 of its 3 batches is less "
                                          r"than one batch"),
    ("--trainer.limit_val_batches=0.5", r"val set: --trainer.limit_val_batches=0.5 of its 1 batches is less than "
                                        r"one batch"),
    ("--ckpt_path=", r"--ckpt_path '': empty \(an unset variable\?\)"),
    ("--lr_scheduler.init_args.step_size=0",
     r"invalid option value: --lr_scheduler: StepLR\(gamma=0.5, last_epoch=-1, step_size=0\) fails within its first "
     r"steps: integer modulo by zero"),
])
def test_option_values_refused_before_anything_is_written(tiny_root: Path, tmp_path: Path, option: str,
                                                          message: str) -> None:
    with pytest.raises(DataError, match=message):
        main(["fit", *small_args(tiny_root, tmp_path / "out"), option])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("option, message", [
    ("--trainer.limit_test_batches=0", r"--trainer.limit_test_batches 0(\.0)? scores nothing \(and would replace"),
    ("--trainer.limit_test_batches=0.5", r"test set: --trainer.limit_test_batches=0.5 of its 1 batches is less than "
                                         r"one batch"),
    ("--ckpt_path=", r"--ckpt_path '': empty"),
])
def test_test_option_values_refused_keep_the_runs_results(trained: Path, tiny_root: Path, tmp_path: Path,
                                                            option: str, message: str) -> None:
    out = tmp_path / "out"
    shutil.copytree(trained, out)
    main(["test", *small_args(tiny_root, out), "--ckpt_path", "best", "--model.threshold", "0.9"])
    before = {p: p.read_bytes() for p in (out / RUN).rglob("*") if p.is_file() and "csv" not in p.parts}
    with pytest.raises(DataError, match=message):
        main(["test", *small_args(tiny_root, out), "--ckpt_path", "best", option])
    after = {p: p.read_bytes() for p in (out / RUN).rglob("*") if p.is_file() and "csv" not in p.parts}
    assert after == before  # the threshold-0.9 test's numbers keep their own record


def test_a_test_adds_its_record_only_to_the_metrics_it_wrote(trained: Path, tiny_root: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import avvp_lightning.finetune.module as module

    out = tmp_path / "out"
    shutil.copytree(trained, out)
    main(["test", *small_args(tiny_root, out), "--ckpt_path", "best", "--model.threshold", "0.9"])
    metrics = out / RUN / "test" / "metrics.json"
    before = metrics.read_bytes()
    write = module.write_atomic  # a test that ends without writing its metrics.json (stopped, or its writer skipped)
    monkeypatch.setattr(module, "write_atomic", lambda path, content: None if Path(path).name == "metrics.json"
                        else write(path, content))
    main(["test", *small_args(tiny_root, out), "--ckpt_path", "best"])
    assert metrics.read_bytes() == before  # the threshold-0.9 numbers keep their own record
    assert json.loads(before)["run"]["config"]["model"]["threshold"] == 0.9


def test_fit_from_another_runs_checkpoint_must_use_its_optimizer_settings(trained: Path, tiny_root: Path,
                                                                          tmp_path: Path) -> None:
    last = trained / RUN / "checkpoints" / "last.ckpt"
    args = [*small_args(tiny_root, tmp_path / "out"), "--run.name", "warm", "--trainer.max_epochs=2", "--ckpt_path",
            str(last)]
    for option, message in (
        (["--optimizer.init_args.lr", "0.05"], r"optimizer lr 0.0003 in the checkpoint, 0.05 configured"),
        (["--lr_scheduler.init_args.gamma", "0.1"], r"lr_scheduler gamma 0.5 in the checkpoint, 0.1 configured"),
        (["--optimizer", "torch.optim.SGD", "--optimizer.init_args.lr", "0.0003"], r"another optimizer .* than SGD"),
    ):
        with pytest.raises(DataError, match=rf"{re.escape(str(last))}: fit continues this checkpoint's training, "
                                            rf"whose optimizer and scheduler state would replace .*{message}"):
            main(["fit", *args, *option])
        assert not (tmp_path / "out").exists()
    weights = {k: v for k, v in torch.load(last, weights_only=True).items()
               if k not in ("optimizer_states", "lr_schedulers", "loops")}  # as save_weights_only writes
    torch.save(weights, tmp_path / "weights.ckpt")
    with pytest.raises(DataError, match=r"weights\.ckpt: holds the weights only .* fit cannot continue"):
        main(["fit", *args[:-1], str(tmp_path / "weights.ckpt")])
    assert not (tmp_path / "out").exists()
    main(["test", *small_args(tiny_root, tmp_path / "out"), "--ckpt_path", str(tmp_path / "weights.ckpt")])


@pytest.mark.parametrize("schedule, change, message", [
    (["--lr_scheduler=pytorch_lightning.cli.ReduceLROnPlateau", "--lr_scheduler.init_args.monitor=val/segment/type",
      "--lr_scheduler.init_args.mode=max", "--lr_scheduler.init_args.patience=0"],  # moves lr, best, counters
     "--lr_scheduler.init_args.factor=0.5", r"lr_scheduler factor 0.1 in the checkpoint, 0.5 configured"),
    (["--lr_scheduler=torch.optim.lr_scheduler.OneCycleLR", "--lr_scheduler.init_args.max_lr=0.001",
      "--lr_scheduler.init_args.total_steps=10"],  # cycles the betas too
     "--lr_scheduler.init_args.total_steps=20", r"lr_scheduler total_steps 10 in the checkpoint, 20 configured"),
    (["--lr_scheduler=torch.optim.lr_scheduler.OneCycleLR", "--lr_scheduler.init_args.max_lr=0.001",
      "--lr_scheduler.init_args.total_steps=10"],  # a setting kept in the optimizer's groups
     "--lr_scheduler.init_args.final_div_factor=100", r"optimizer min_lr \S+ in the checkpoint, \S+ configured"),
    (["--lr_scheduler=torch.optim.lr_scheduler.CosineAnnealingWarmRestarts", "--lr_scheduler.init_args.T_0=1",
      "--lr_scheduler.init_args.T_mult=2"],  # T_i, T_cur move
     "--optimizer.init_args.lr=0.05", r"optimizer lr 0.0003 in the checkpoint, 0.05 configured"),
])
def test_resume_with_schedulers_that_move_their_state(tiny_root: Path, tmp_path: Path, schedule: list[str],
                                                      change: str, message: str) -> None:
    args = ["fit", *small_args(tiny_root, tmp_path), *schedule]
    main([*args, "--trainer.max_epochs=2"])
    main([*args, "--trainer.max_epochs=3", "--ckpt_path", "last"])  # the state moved, the settings did not
    assert load_checkpoint(tmp_path / RUN / "checkpoints" / "last.ckpt")["epoch"] == 2
    with pytest.raises(DataError, match=message):  # another run continuing it with another setting
        main([*args, "--run.name=other", change, "--trainer.max_epochs=4", "--ckpt_path",
              str(tmp_path / RUN / "checkpoints" / "last.ckpt")])


def test_pretrain_fit_from_another_runs_checkpoint_must_use_its_lr(pretrained: Path, tiny_root: Path,
                                                                   tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"optimizer lr 0.0003 in the checkpoint, 0.05 configured"):
        pretrain_main(["fit", *pretrain_args(tiny_root, tmp_path / "out"), "--run.name", "warm", "--model.lr=0.05",
                       "--trainer.max_epochs=2", "--ckpt_path", str(pretrained)])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("option, message", [
    ("--model.lr=-1", r"lr must be finite and > 0"),
    ("--model.num_layers=0", r"num_layers must be >= 1, got 0"),
    ("--model.pos_margin=2", r"pos_margin is a cosine margin, in \[-1, 1\]; got 2.0"),
])
def test_pretrain_option_values_refused(tiny_root: Path, tmp_path: Path, option: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        pretrain_main(["fit", *pretrain_args(tiny_root, tmp_path / "out"), option])
    assert not (tmp_path / "out").exists()


def test_testing_another_runs_checkpoint_says_nothing_of_its_checkpoint_record(trained: Path, tiny_root: Path,
                                                                              tmp_path: Path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        main(["test", *small_args(tiny_root, tmp_path), "--ckpt_path", str(trained / RUN / "checkpoints" / "best.ckpt")])
    assert not [w for w in caught if "checkpoint record" in str(w.message)]  # test writes no checkpoints
    assert (tmp_path / RUN / "test" / "metrics.json").is_file()


@pytest.mark.parametrize("record", ["missing", "damaged"])
def test_resume_without_its_run_record_compares_the_checkpoints_options(trained: Path, tiny_root: Path,
                                                                       tmp_path: Path, record: str) -> None:
    out = tmp_path / "out"
    shutil.copytree(trained, out)
    if record == "missing":
        (out / RUN / "run.json").unlink()
    else:
        (out / RUN / "run.json").write_text('{"fit": "x')
    args = ["fit", *small_args(tiny_root, out), "--trainer.max_epochs=2", "--ckpt_path", "last"]
    with pytest.raises(DataError, match=r"options or data other than it began with: model.lambda_g: 0.6 -> 0.3"):
        main([*args, "--model.lambda_g=0.3"])
    with pytest.raises(DataError, match=r"data.batch_size: 8 -> 4"):
        main([*args, "--data.batch_size=4"])
    with pytest.raises(DataError, match=r"model.threshold: 0.5 -> 0.3"):  # it picks best.ckpt
        main([*args, "--model.threshold=0.3"])
    main(args)  # the same options: resumes
    assert load_checkpoint(out / RUN / "checkpoints" / "last.ckpt")["epoch"] == 1


def test_fit_warns_of_a_test_split_that_test_would_refuse(tiny_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "llp"
    shutil.copytree(tiny_root, root)
    name = (root / "AVVP_test_pd.csv").read_text().splitlines()[2].split("\t")[0]
    (root / "feats" / "vggish" / f"{video_id(name)}.npy").unlink()
    with pytest.warns(UserWarning, match=rf"the test split has problems that avvp-finetune test will stop on .*"
                                         rf"missing feature file for video '{name}' \(.*AVVP_test_pd.csv, line 3\)"):
        main(["fit", *small_args(root, tmp_path), "--trainer.max_epochs=1"])
    assert (tmp_path / RUN / "checkpoints" / "best.ckpt").is_file()  # trained all the same
    with pytest.raises(DataError, match="missing feature file"):
        main(["test", *small_args(root, tmp_path), "--ckpt_path", "best"])
    (root / "AVVP_test_pd.csv").unlink()
    with pytest.warns(UserWarning, match=r"the test split has problems .*AVVP_test_pd\.csv: file not found"):
        main(["fit", *small_args(root, tmp_path / "no_test"), "--trainer.fast_dev_run=true"])


def test_a_fit_cut_short_by_max_steps_does_not_save_diverged_weights(tiny_root: Path, tmp_path: Path) -> None:
    args = [*small_args(tiny_root, tmp_path), "--trainer.max_epochs=4", "--trainer.max_steps=4",  # 3 steps an epoch
            "--lr_scheduler.init_args.step_size=1", "--lr_scheduler.init_args.gamma=1e50"]  # inf at step 4
    with pytest.raises(DataError, match=r"training diverged at epoch 1, step 4"):
        main(["fit", *args])
    ckpt = load_checkpoint(tmp_path / RUN / "checkpoints" / "last.ckpt")
    assert ckpt["epoch"] == 0 and all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())


def test_resume_with_a_section_set_to_null_is_refused(trained: Path, tiny_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(trained, out)
    with pytest.raises(DataError, match=r"lr_scheduler.class_path: 'torch.optim.lr_scheduler.StepLR' -> None"):
        main(["fit", *small_args(tiny_root, out), "--trainer.max_epochs=2", "--ckpt_path", "last",
              "--lr_scheduler", "null"])


def test_inline_yaml_configs_pass_to_the_parser(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["fit", "--config", f"data: {{root: {tmp_path}/llp}}", "--print_config"])
    assert f"root: {tmp_path}/llp" in capsys.readouterr().out


def test_fit_from_a_store_without_the_test_split_warns(tiny_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "llp"
    shutil.copytree(tiny_root, root)
    pack_store(root, splits=("train", "val"), **DIMS)
    with pytest.warns(UserWarning, match=r"the test split has problems .*packed holds no test split"):
        main(["fit", *small_args(root, tmp_path), "--data.store", str(root / "packed"), "--trainer.max_epochs=1"])
