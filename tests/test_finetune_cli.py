"""The real ``avvp-finetune`` CLI end to end on tiny synthetic LLP-layout data."""

from __future__ import annotations

import csv
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from avvp_lightning.cli import bundled_configs
from avvp_lightning.data.llp import read_dense_truth, read_weak_labels
from avvp_lightning.data.synthetic import generate_llp
from avvp_lightning.errors import DataError
from avvp_lightning.finetune.cli import main
from avvp_lightning.metrics import METRIC_KEYS, avvp_scores

DIMS = {"audio_dim": 16, "visual_dim": 32, "motion_dim": 8}


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("llp") / "tiny"
    generate_llp(root, num_train=48, num_val=13, num_test=17, seed=3, **DIMS)
    return root


def small_args(root: Path, out: Path) -> list[str]:
    args = ["--data.root", str(root), "--run.output_dir", str(out), "--data.batch_size", "8",
            "--model.hidden_dim", "32", "--model.ffn_dim", "32", "--trainer.enable_progress_bar=false"]
    for key, value in DIMS.items():
        args += [f"--data.{key}", str(value)]
    return args


@pytest.mark.parametrize("config", [c for c in bundled_configs("finetune") if not c.startswith("pretrain_")])
def test_every_config_fast_dev_run(config: str, tiny_root: Path, tmp_path: Path) -> None:
    main(["fit", "--config", config, *small_args(tiny_root, tmp_path), "--trainer.fast_dev_run=true"])


@pytest.mark.parametrize("reuse", [True, False])
def test_fit_keeps_freed_memory_unless_turned_off(reuse: bool, tiny_root: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr("avvp_lightning.cli.reuse_freed_memory", lambda: calls.append(1) or True)
    flag = [] if reuse else ["--run.reuse_memory=false"]  # on by default
    main(["fit", *small_args(tiny_root, tmp_path), "--trainer.fast_dev_run=true", *flag])
    assert calls == ([1] if reuse else [])


def test_fit_test_predict_end_to_end(tiny_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = small_args(tiny_root, tmp_path)
    main(["fit", *args, "--trainer.max_epochs=2"])
    run_dir = tmp_path / "base_adv_skip_gcaa" / "seed0"
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / "config-fit.yaml").is_file()

    main(["test", *args, "--ckpt_path", "best"])
    out = capsys.readouterr()
    assert "Type@AV" in out.out + out.err
    result = json.loads((run_dir / "test" / "metrics.json").read_text())
    assert result["seed"] == 0 and result["config"] == "base_adv_skip_gcaa"
    assert set(METRIC_KEYS) <= set(result)

    # The written prediction CSVs, scored by the standard evaluation, give the same numbers.
    files, _ = read_weak_labels(tiny_root / "AVVP_test_pd.csv")
    truth_a = read_dense_truth(tiny_root / "AVVP_eval_audio.csv", files)
    truth_v = read_dense_truth(tiny_root / "AVVP_eval_visual.csv", files)
    pred_a = read_dense_truth(run_dir / "test" / "pred_audio.csv", files)
    pred_v = read_dense_truth(run_dir / "test" / "pred_visual.csv", files)
    rescored = avvp_scores(*(torch.from_numpy(x) for x in (pred_a, pred_v, truth_a, truth_v)))
    for key in METRIC_KEYS:
        assert rescored[key] == pytest.approx(result[key], abs=1e-9), key
    # The logged values (CSV log, W&B, the printed table) carry all the digits, not float32's.
    rows = [row for version in sorted((run_dir / "csv").iterdir())
            for row in csv.DictReader((version / "metrics.csv").open(newline="")) if row.get("test/segment/type")]
    assert len(rows) == 1
    for key in METRIC_KEYS:
        assert float(rows[0][f"test/{key}"]) == pytest.approx(result[key], rel=0, abs=1e-12), key

    logs = sorted((run_dir / "csv").iterdir())
    main(["predict", *args, "--ckpt_path", "last"])
    assert sorted((run_dir / "csv").iterdir()) == logs  # predict logs nothing: no csv/version_N of its own
    probs = np.load(run_dir / "predict" / "probabilities.npz")
    assert probs["audio_prob"].shape == (17, 10, 25)
    assert (run_dir / "predict" / "pred_audio.csv").is_file()

    # Another run's checkpoint, predicted in this run's folder (no --run.name): said, not silent
    other = tmp_path / "other.ckpt"
    other.write_bytes((run_dir / "checkpoints" / "last.ckpt").read_bytes())
    with pytest.warns(UserWarning, match="predict of a checkpoint from outside this run"):
        main(["predict", *args, "--ckpt_path", str(other)])


def test_resume_from_last(tiny_root: Path, tmp_path: Path) -> None:
    args = small_args(tiny_root, tmp_path)
    every_2 = ["--trainer.check_val_every_n_epoch=2"]  # last.ckpt at every epoch end all the same
    main(["fit", *args, "--trainer.max_epochs=1", *every_2])
    last = tmp_path / "base_adv_skip_gcaa" / "seed0" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True, map_location="cpu")["epoch"] == 0
    run_dir = last.parents[1]
    record = (run_dir / "run.json").read_text()
    other = generate_llp(tmp_path / "other", num_train=8, num_val=3, num_test=3, seed=4, **DIMS)
    resume = ["fit", *args, "--trainer.max_epochs=2", "--ckpt_path", "last", *every_2]
    for change, message in ((["--optimizer.init_args.lr", "0.1"], r"optimizer\.init_args\.lr: 0\.0003 -> 0\.1"),
                            (["--optimizer", "torch.optim.SGD"], r"optimizer\.class_path: 'torch\.optim\.Adam' -> "),
                            (["--data.root", str(other)], r"data sha256 \w{12}\.\.\. -> \w{12}\.\.\. \(other CSVs")):
        with pytest.raises(DataError, match=rf"resuming the run in .* other than it began with: {message}"):
            main([*resume, *change])  # the checkpoint's optimizer state would win: the record would lie
    assert (run_dir / "run.json").read_text() == record  # refused before anything is written
    main(resume)
    assert torch.load(last, weights_only=True, map_location="cpu")["epoch"] == 1
    fit = json.loads((run_dir / "run.json").read_text())["fit"]  # the run's first entry, and the resume added
    assert fit == {**json.loads(record)["fit"], "resumes": fit["resumes"]} and len(fit["resumes"]) == 1
    assert fit["resumes"][0]["changes"]["trainer.max_epochs"] == [1, 2]
    assert set(fit["resumes"][0]["changes"]) == {"trainer.max_epochs", "ckpt_path"}
    (run_dir / "run.json").unlink()  # a run without its record (an older version's) still resumes, in place
    main([*resume, "--trainer.max_epochs=3"])
    assert torch.load(last, weights_only=True, map_location="cpu")["epoch"] == 2
    assert not (run_dir / "previous").exists() and "resumes" not in json.loads((run_dir / "run.json").read_text())["fit"]
    with pytest.warns(UserWarning, match="test on data other than this run's fit"):
        main(["test", *small_args(other, tmp_path), "--ckpt_path", "last"])
    with warnings.catch_warnings():  # a root that is not there is that, not other data than the fit's
        warnings.filterwarnings("error", message=".*other than")
        for command in (["test", *small_args(tmp_path / "nowhere", tmp_path), "--ckpt_path", "last"],
                        [*resume, "--trainer.max_epochs=3", "--data.root", str(tmp_path / "nowhere")]):
            with pytest.raises(DataError, match=r"nowhere: not found \(the dataset root"):
                main(command)
    # The saved config, fed back, is a new run where --run.* says, not a resume into this folder.
    saved = last.parents[1] / "config-fit.yaml"
    text = saved.read_text()
    assert "default_root_dir: null" in text and "\nckpt_path: null" in text
    main(["fit", "--config", str(saved), "--run.output_dir", str(tmp_path / "again"), "--trainer.max_epochs=1"])
    assert torch.load(tmp_path / "again" / "base_adv_skip_gcaa" / "seed0" / "checkpoints" / "last.ckpt",
                      weights_only=True, map_location="cpu")["epoch"] == 0

    # A new fit in the folder moves the earlier run's checkpoints and results aside, none mixed or lost.
    with pytest.warns(UserWarning, match="held an earlier run: its checkpoints and results are now in"):
        main(["fit", *args, "--trainer.max_epochs=1"])
    (previous,) = (run_dir / "previous").iterdir()
    assert torch.load(previous / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 2
    assert (previous / "test" / "metrics.json").is_file() and not (run_dir / "test").exists()
    assert json.loads((previous / "run.json").read_text())["fit"]["config"]["trainer"]["max_epochs"] == 3
    assert json.loads((run_dir / "run.json").read_text())["fit"]["config"]["trainer"]["max_epochs"] == 1
    assert torch.load(last, weights_only=True, map_location="cpu")["epoch"] == 0
    kept = {name: (run_dir / name).read_bytes() for name in ("run.json", "config-fit.yaml", "checkpoints/last.ckpt")}
    main(["fit", *args, "--trainer.fast_dev_run=true"])  # a smoke test writes no checkpoints: nothing moves
    assert {name: (run_dir / name).read_bytes() for name in kept} == kept and len(list(run_dir.glob("previous/*"))) == 1
    # Continuing the moved run (as the warning says): this folder's run moves aside in turn, and the
    # moved run's record of its best checkpoint, whose file is elsewhere now, starts again here.
    main(["fit", *args, "--trainer.max_epochs=4", "--ckpt_path", str(previous / "checkpoints" / "last.ckpt")])
    assert torch.load(last, weights_only=True, map_location="cpu")["epoch"] == 3
    assert torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=True, map_location="cpu")["epoch"] == 3


def test_help_lists_bundled_configs(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for name in ("han.yaml", "base_gcaa.yaml", "base_adv_skip_gcaa.yaml"):
        assert name in text


@pytest.mark.parametrize("sub", ["fit", "test"])
def test_precision_help_says_what_unset_means(sub: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main([sub, "--help"])
    text = " ".join(capsys.readouterr().out.split())  # (argparse wraps lines)
    help_text = text.split("--trainer.precision PRECISION", 2)[-1]
    expected = ("Unset (the default): bf16-mixed where the hardware runs bfloat16 natively" if sub == "fit" else
                "Unset (the default): 32-true, so that evaluated numbers do not depend on the hardware")
    assert help_text.lstrip().startswith("32-true, bf16-mixed") and expected in help_text
    assert "Default: ``'32-true'``" not in help_text.split("--trainer.", 1)[0]  # Lightning's own text, not true here


def test_bare_config_name_resolves_from_any_directory(tiny_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    main(["fit", "--config", "han", *small_args(tiny_root, tmp_path), "--trainer.fast_dev_run=true"])
    with pytest.raises(DataError, match="no bundled finetune config"):
        main(["fit", "--config", "no_such_row.yaml", "--trainer.fast_dev_run=true"])
    with pytest.raises(DataError, match="no bundled finetune config"):  # -c is --config
        main(["fit", "-c", "no_such_row", "--trainer.fast_dev_run=true"])
    # Before the subcommand the parser would ignore a flat file (and train the default model).
    with pytest.raises(DataError, match=r"han\.yaml: give it after the subcommand"):
        main(["--config", "han", "fit", *small_args(tiny_root, tmp_path), "--trainer.fast_dev_run=true"])
    # A misspelt subcommand is the parser's "invalid choice", not a --config in the wrong place.
    with pytest.raises(SystemExit):
        main(["tset", "--config", "han"])
    assert "invalid choice: 'tset'" in capsys.readouterr().err


def test_test_without_checkpoint_names_the_missing_file(tiny_root: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="best.ckpt"):
        main(["test", *small_args(tiny_root, tmp_path), "--ckpt_path", "best"])
    for sub in ("validate", "test", "predict"):  # no --ckpt_path: would score an untrained model
        with pytest.raises(DataError, match=f"{sub} needs --ckpt_path: best or last"):
            main([sub, *small_args(tiny_root, tmp_path)])
    assert not any(tmp_path.iterdir())  # refused before anything is written
    run_dir = tmp_path / "base_adv_skip_gcaa" / "seed0"  # a later fit that failed moved the run aside
    for stamp in ("20261101T090000Z", "20261102T090000Z"):
        (run_dir / "previous" / stamp / "checkpoints").mkdir(parents=True)
        (run_dir / "previous" / stamp / "checkpoints" / "best.ckpt").write_bytes(b"")
    with pytest.raises(DataError, match=r"best\.ckpt does not exist .*; the latest earlier run's is "
                                        r".*previous/20261102T090000Z/checkpoints/best\.ckpt \(a later fit"):
        main(["test", *small_args(tiny_root, tmp_path), "--ckpt_path", "best"])
    (run_dir / "previous" / "20261102T090000Z" / "checkpoints" / "last.ckpt").write_bytes(b"")
    with pytest.warns(UserWarning, match=r"last\.ckpt does not exist; training from scratch \(the latest earlier "
                                         r"run's last\.ckpt, moved aside by a later fit here, is .*20261102T090000Z"):
        main(["fit", *small_args(tiny_root, tmp_path), "--ckpt_path", "last", "--trainer.fast_dev_run=true"])
    (run_dir / "checkpoints").mkdir()  # a fit that never validated: last.ckpt alone, which the hint names
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"")
    with pytest.raises(DataError, match=r"best\.ckpt does not exist .*; this run has checkpoints/last\.ckpt but no "
                                        r"best\.ckpt: it never validated .*; use --ckpt_path last"):
        main(["test", *small_args(tiny_root, tmp_path), "--ckpt_path", "best"])


@pytest.mark.parametrize("threshold", ["1.01", "-0.1"])  # (nan: refused by the parser itself)
def test_threshold_outside_0_1_is_refused(threshold: str, tiny_root: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"invalid option value: threshold is a probability in \[0, 1\]"):
        main(["fit", *small_args(tiny_root, tmp_path), "--model.threshold", threshold])
    assert not any(tmp_path.iterdir())


def test_predict_never_replaces_a_tests_outputs(tiny_root: Path, tmp_path: Path) -> None:
    tested = tmp_path / "tested"
    tested.mkdir()
    (tested / "metrics.json").write_text("{}")
    (tested / "pred_audio.csv").write_text("filename\tonset\toffset\tevent_labels\n")
    with pytest.raises(DataError, match=f"--model.output_dir {tested}: holds a test's outputs"):
        main(["predict", *small_args(tiny_root, tmp_path / "runs"), "--ckpt_path", "best",
              "--model.output_dir", str(tested)])
    with pytest.raises(DataError, match="cannot make the predict output folder: .* is not a folder"):
        main(["predict", *small_args(tiny_root, tmp_path / "runs"), "--ckpt_path", "best",
              "--model.output_dir", str(tested / "metrics.json" / "sub")])  # before the data loads, not after


@pytest.mark.slow
def test_offline_wandb_runs_hold_copies_and_move_aside_with_their_run(tiny_root: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")  # the option wins over the environment
    args = [*small_args(tiny_root, tmp_path), "--run.wandb", "offline", "--trainer.max_epochs=1"]
    main(["fit", *args])
    run_dir = tmp_path / "base_adv_skip_gcaa" / "seed0"
    (first,) = (run_dir / "wandb").glob("offline-run-*")
    saved = first / "files" / "config-fit.yaml"
    assert saved.is_file() and not saved.is_symlink()  # a copy: a later fit here cannot change it
    with pytest.warns(UserWarning, match="held an earlier run"):
        main(["fit", *args, "--model.dropout", "0.2"])
    (previous,) = (run_dir / "previous").iterdir()
    assert (previous / "wandb" / first.name).is_dir()  # the earlier W&B run went with its run
    (second,) = (run_dir / "wandb").glob("offline-run-*")
    assert "dropout: 0.2" in (second / "files" / "config-fit.yaml").read_text()
    assert "dropout: 0.2" not in (previous / "wandb" / first.name / "files" / "config-fit.yaml").read_text()

def _precision(run_dir: Path, subcommand: str = "fit") -> str:
    return json.loads((run_dir / "run.json").read_text())[subcommand]["config"]["trainer"]["precision"]


def test_precision_is_auto_unless_given(tiny_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import avvp_lightning.cli as cli

    run_dir = tmp_path / "base_adv_skip_gcaa" / "seed0"
    for native, want in ((False, "32-true"), (True, "bf16-mixed")):
        monkeypatch.setattr(cli, "native_bf16", lambda accelerator, native=native: native)
        main(["fit", *small_args(tiny_root, tmp_path), "--trainer.max_epochs=1"])
        assert _precision(run_dir) == want
    main(["test", *small_args(tiny_root, tmp_path), "--ckpt_path", "last"])
    assert _precision(run_dir, "test") == "32-true"  # evaluation stays in float32 on any hardware
    main(["fit", *small_args(tiny_root, tmp_path), "--trainer.max_epochs=1", "--trainer.precision", "32-true"])
    assert _precision(run_dir) == "32-true"  # given: kept, even where bf16 is native


def test_native_bf16_follows_the_cpu_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    from avvp_lightning.cli import native_bf16

    import avvp_lightning.cli as cli

    monkeypatch.setattr(cli, "num_cuda_devices", lambda: 0)
    for avx512_bf16, amx in ((False, False), (True, False), (False, True)):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v, raising=False)
        assert native_bf16("auto") == (avx512_bf16 or amx)
        assert native_bf16("cpu") == (avx512_bf16 or amx)
    assert native_bf16("mps") is False


def _compiled_versions(*functions) -> int:
    """How many compiled versions dynamo holds for these functions (e.g. ``BaseLayer.forward``)."""
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list

    return sum(len(_debug_get_cache_entry_list(f.__code__)) for f in functions)


def test_compile_option_compiles_the_blocks_and_keeps_the_function(tiny_root: Path, tmp_path: Path,
                                                                   fresh_dynamo: None) -> None:
    """``fit --run.compile`` compiles the parser's blocks in place: checkpoints move between
    compiled and eager runs and, without dropout (compiled blocks draw their own masks), the
    weights and test metrics are the eager ones. The ``eager`` backend runs dynamo's captured
    graphs as they are (no code generation)."""
    from avvp_lightning.models.parser import AttentiveMMILPooling, BaseLayer

    def graphs() -> int:  # compiled versions of the Base layer's and the pooling's forward
        return _compiled_versions(BaseLayer.forward, AttentiveMMILPooling.forward)

    base = [*small_args(tiny_root, tmp_path), "--model.dropout=0", "--trainer.max_epochs=1"]
    compiled = ["--run.compile=true", "--run.compile_backend=eager"]
    main(["fit", *base, "--run.name", "eager"])
    assert graphs() == 0
    main(["fit", *base, "--run.name", "compiled", *compiled])
    assert graphs() >= 4  # training and evaluation graphs of both blocks

    weights = {name: torch.load(tmp_path / name / "seed0" / "checkpoints" / "last.ckpt", weights_only=True,
                                map_location="cpu")["state_dict"] for name in ("eager", "compiled")}
    assert weights["eager"].keys() == weights["compiled"].keys()  # no ``_orig_mod.`` prefixes
    for key, value in weights["eager"].items():
        torch.testing.assert_close(weights["compiled"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    for name in ("eager", "compiled"):  # test runs eagerly, on either checkpoint
        main(["test", *base, "--run.name", name, "--ckpt_path", "last", *compiled])
    scores = {name: json.loads((tmp_path / name / "seed0" / "test" / "metrics.json").read_text())
              for name in ("eager", "compiled")}
    for key in METRIC_KEYS:
        assert scores["compiled"][key] == pytest.approx(scores["eager"][key], abs=1e-6), key

    # An eager run resumes compiled.
    main(["fit", *base, "--run.name", "eager", "--trainer.max_epochs=2", "--ckpt_path", "last", *compiled])
    last = tmp_path / "eager" / "seed0" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True, map_location="cpu")["epoch"] == 1


def test_compile_callback_starts_each_fit_from_empty_caches(fresh_dynamo: None) -> None:
    """The runs of a sweep share one process: without a reset their graphs would add up to
    dynamo's recompile limit, after which blocks run eagerly without a word."""
    from avvp_lightning.finetune.cli import CompileBlocks
    from avvp_lightning.finetune.module import ParserModule
    from avvp_lightning.models.parser import BaseLayer

    def graphs() -> int:
        return _compiled_versions(BaseLayer.forward)

    dims = dict(audio_dim=8, visual_dim=8, motion_dim=4, hidden_dim=16, ffn_dim=16)
    batch = {"audio": torch.randn(2, 10, 8), "visual": torch.randn(2, 10, 8), "motion": torch.randn(2, 10, 4)}
    earlier = ParserModule(**dims)  # an earlier run's model, still alive
    CompileBlocks(backend="eager").setup(None, earlier, "fit")
    earlier(batch)
    assert graphs() == 1
    module = ParserModule(**dims)
    CompileBlocks(backend="eager").setup(None, module, "fit")
    assert graphs() == 0
    module(batch)
    assert graphs() == 1
    CompileBlocks(backend="eager").setup(None, module, "validate")  # only fit compiles (and resets)
    assert graphs() == 1


def test_cuda_graphs_step_trains_exactly_like_the_default_step(tiny_root: Path, tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """``--model.cuda_graphs`` moves the forward and backward into the module's own step (the
    code a CUDA graph records; on the CPU, where the option is ignored, the test turns it on and
    it runs eagerly). Lightning's zero_grad and backward are skipped, and the trained weights, with
    dropout, an uneven last batch (48 videos, batch 10), the StepLR schedule and gradient
    clipping, are the default step's bit for bit."""
    from avvp_lightning.finetune.module import ParserModule

    base = [*small_args(tiny_root, tmp_path), "--data.batch_size", "10", "--trainer.max_epochs=2",
            "--lr_scheduler.init_args.step_size=1", "--trainer.gradient_clip_val=0.05",
            "--optimizer.init_args.fused=false"]  # Lightning's AMP plugin clips no fused optimizer
    main(["fit", *base, "--run.name", "plain", "--model.cuda_graphs=false"])
    with caplog.at_level("INFO"):
        main(["fit", *base, "--run.name", "default"])  # cuda_graphs on (defaults.yaml): ignored on the CPU
        assert "cuda_graphs" not in caplog.text
        monkeypatch.setattr(ParserModule, "_graph_devices", ("cuda", "cpu"))
        main(["fit", *base, "--run.name", "graphed"])
    assert "cuda_graphs: 0 steps replayed, 10 eager" in caplog.text
    ckpts = {name: torch.load(tmp_path / name / "seed0" / "checkpoints" / "last.ckpt", weights_only=False,
                              map_location="cpu") for name in ("plain", "graphed")}
    for key, value in ckpts["plain"]["state_dict"].items():
        assert torch.equal(ckpts["graphed"]["state_dict"][key], value), key
    assert ckpts["graphed"]["global_step"] == ckpts["plain"]["global_step"] == 10
    lrs = [c["lr_schedulers"][0]["_last_lr"] for c in ckpts.values()]
    assert lrs[0] == lrs[1] == [pytest.approx(3e-4 * 0.5**2)]
    plain, graphed = (ckpts[n]["optimizer_states"][0]["state"] for n in ("plain", "graphed"))
    for i, state in plain.items():
        assert torch.equal(graphed[i]["exp_avg"], state["exp_avg"]), i


def test_cuda_graphs_note_when_not_used(tiny_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """With gradient accumulation the graphed step cannot be used: a note, then the default step."""
    from avvp_lightning.finetune.module import ParserModule

    monkeypatch.setattr(ParserModule, "_graph_devices", ("cuda", "cpu"))
    with caplog.at_level("INFO"):
        main(["fit", *small_args(tiny_root, tmp_path), "--trainer.max_epochs=1", "--model.cuda_graphs=true",
              "--trainer.accumulate_grad_batches=2"])
    assert "cuda_graphs: not used with gradient accumulation" in caplog.text


def test_cuda_graphs_step_is_not_used_under_ddp_or_once_accumulation_starts(
        tiny_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """A DDP strategy, even with one process, runs Lightning's own step (DDP's hooks need its
    backward). Accumulation switched on mid-fit by a GradientAccumulationScheduler drops the
    graphed step from that step on, so the accumulated weights are the default step's."""
    from avvp_lightning.finetune.module import ParserModule

    monkeypatch.setattr(ParserModule, "_graph_devices", ("cuda", "cpu"))
    base = [*small_args(tiny_root, tmp_path), "--trainer.max_epochs=2"]
    env, threads = dict(os.environ), torch.get_num_threads()
    try:
        with caplog.at_level("INFO"):
            main(["fit", *base, "--run.name", "ddp", "--trainer.strategy=ddp", "--trainer.devices=1"])
    finally:  # in-process DDP leaves its process group and MASTER_PORT behind: later DDP tests need them gone
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        os.environ.clear()
        os.environ.update(env)
        torch.set_num_threads(threads)  # Lightning's DDP set it to the CPU count
    assert "cuda_graphs: not used with strategy DDPStrategy" in caplog.text
    schedule = ["--trainer.callbacks+=pytorch_lightning.callbacks.GradientAccumulationScheduler",
                "--trainer.callbacks.scheduling={1: 2}"]
    main(["fit", *base, "--run.name", "plain", "--model.cuda_graphs=false", *schedule])
    with caplog.at_level("INFO"):
        main(["fit", *base, "--run.name", "graphed", *schedule])
    assert "cuda_graphs: not used with gradient accumulation" in caplog.text
    weights = {name: torch.load(tmp_path / name / "seed0" / "checkpoints" / "last.ckpt", weights_only=True,
                                map_location="cpu")["state_dict"] for name in ("plain", "graphed")}
    for key, value in weights["plain"].items():
        assert torch.equal(weights["graphed"][key], value), key
