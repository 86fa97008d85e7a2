"""Multi-process DDP on CPU (gloo, loopback only): both stages give the single-process results.

The end-to-end tests run the real console scripts with ``--trainer.strategy ddp --trainer.devices 2
--trainer.accelerator cpu`` in a subprocess (Lightning re-launches the script for rank 1, which
would re-run pytest in-process), on evaluation sets whose sizes leave the two processes uneven
numbers of videos and batches. Their validation, test and predict outputs must equal a
single-process run of the same checkpoint: no padded duplicate counted, every video written once,
in the list order, and no hang.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from torch.utils.data import DistributedSampler

from avvp_lightning.cli import bundled_configs, config_dir
from avvp_lightning.data.datamodules import EvalDistributedSampler, LLPDataModule
from avvp_lightning.data.llp import read_weak_labels
from avvp_lightning.data.synthetic import generate_llp, generate_snippets
from avvp_lightning.errors import DataError
from avvp_lightning.finetune.cli import main as finetune
from avvp_lightning.finetune.module import ParserModule
from avvp_lightning.losses.parser import parser_loss
from avvp_lightning.metrics import METRIC_KEYS
from avvp_lightning.pretrain.cli import main as pretrain
from avvp_lightning.pretrain.module import PretrainModule

DIMS = {"audio_dim": 16, "visual_dim": 32, "motion_dim": 8}
# 25 train videos pad to 13 + 13; with batches of 4, val 9 -> 4 + 5 videos (1 + 2 batches) and
# test 17 -> 8 + 9 videos (2 + 3 batches) per process.
SPLITS = {"num_train": 25, "num_val": 9, "num_test": 17}
DDP = ["--trainer.strategy", "ddp", "--trainer.devices", "2"]
TOL = 1e-6


# ------------------------------------------------------------------ helpers
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_ddp(script: str, args: list[str], timeout: float = 300) -> str:
    """Run a console script with 2 DDP processes on loopback; its output, or fail (also on a hang)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "TORCHELASTIC_")) and k not in ("LOCAL_RANK", "RANK", "WORLD_SIZE",
                                                                           "NODE_RANK", "GROUP_RANK")}
    env.update(WANDB_MODE="disabled", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), PYTHONUNBUFFERED="1")
    if sys.platform.startswith("linux"):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    command = [str(Path(sys.executable).parent / script), *args, *DDP]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # its own process group: rank 1 is killed with it
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{script} {args[0]} under DDP hung for {timeout} s:\n{out[-4000:]}")
    assert proc.returncode == 0, f"{script} {args[0]} under DDP failed:\n{out[-4000:]}"
    return out


def logged(run_dir: Path, version: int, prefix: str) -> dict[str, float]:
    """The last row of ``csv/version_N/metrics.csv`` with ``prefix`` metrics, as floats."""
    with open(run_dir / "csv" / f"version_{version}" / "metrics.csv", newline="") as f:
        rows = [row for row in csv.DictReader(f) if any(k.startswith(prefix) and v for k, v in row.items())]
    assert rows, f"no {prefix} metrics logged in version_{version}"
    return {k: float(v) for k, v in rows[-1].items() if k.startswith(prefix) and v}


# --------------------------------------------------------- fast unit tests
@pytest.mark.parametrize("size,replicas", [(17, 2), (9, 2), (10, 3), (5, 4), (4, 4), (0, 2)])
def test_eval_sampler_splits_in_blocks_without_padding(size: int, replicas: int) -> None:
    blocks = [list(EvalDistributedSampler(range(size), replicas, rank)) for rank in range(replicas)]
    assert sum(blocks, []) == list(range(size))  # each index once, rank order = list order
    assert max(map(len, blocks)) - min(map(len, blocks)) <= 1
    assert [len(EvalDistributedSampler(range(size), replicas, rank)) for rank in range(replicas)] == \
        list(map(len, blocks))
    assert isinstance(EvalDistributedSampler(range(size), replicas, 0), DistributedSampler)  # Lightning keeps it


def test_eval_sampler_rejects_fewer_videos_than_processes() -> None:
    with pytest.raises(DataError, match="3 videos for 4 processes"):
        EvalDistributedSampler(range(3), 4, 0, what="val set")


def test_datamodule_eval_loaders_use_the_block_sampler(tmp_path: Path) -> None:
    root = generate_llp(tmp_path / "llp", num_train=6, num_val=5, num_test=7, seed=1, **DIMS)
    dm = LLPDataModule(str(root), batch_size=2, **DIMS)
    dm.setup("fit")
    dm.setup("test")
    assert not isinstance(dm.val_dataloader().sampler, DistributedSampler)  # no trainer: one process
    dm.trainer = SimpleNamespace(distributed_sampler_kwargs={"num_replicas": 2, "rank": 1})
    val_ids = [i for batch in dm.val_dataloader() for i in batch["id"]]
    test_ids = [i for batch in dm.test_dataloader() for i in batch["id"]]
    assert val_ids == dm.datasets["val"].ids[2:] and test_ids == dm.datasets["test"].ids[3:]
    # Training is left to Lightning (a padded, shuffled DistributedSampler per epoch).
    assert not isinstance(dm.train_dataloader().sampler, DistributedSampler)


@pytest.mark.parametrize("resident", [False, True])
def test_evaluation_limits_under_ddp_score_the_videos_one_process_scores(tmp_path: Path, resident: bool) -> None:
    root = generate_llp(tmp_path / "llp", num_train=6, num_val=5, num_test=7, seed=1, **DIMS)
    dm = LLPDataModule(str(root), batch_size=2, device_resident=resident, **DIMS)
    dm.setup("test")
    ids = dm.datasets["test"].ids  # 7 videos: 4 batches in one process

    def trainer(rank: int, world: int, limit: float) -> SimpleNamespace:
        return SimpleNamespace(distributed_sampler_kwargs={"num_replicas": world, "rank": rank} if world > 1 else None,
                               limit_test_batches=limit, strategy=SimpleNamespace(root_device=torch.device("cpu")))

    for limit, scored in ((2, 4), (0.5, 4), (0.8, 6), (10, 7), (1.0, 7)):  # int(4 * 0.8) = 3 batches
        seen = []
        for rank in range(3):
            dm.trainer = trainer(rank, 3, limit)
            seen += [i for batch in dm.test_dataloader() for i in batch["id"]]
            assert dm.trainer.limit_test_batches == 1.0  # the limit is applied to the list, not per process
        assert seen == ids[:scored], limit
    dm.trainer = trainer(0, 1, 2)  # one process: Lightning applies the limit itself
    assert len([i for batch in dm.test_dataloader() for i in batch["id"]]) == 7 and dm.trainer.limit_test_batches == 2
    dm.trainer = trainer(0, 2, 0.1)
    with pytest.raises(DataError, match=r"limit_test_batches=0\.1 of its 4 batches is less than one batch"):
        dm.test_dataloader()
    dm.trainer = trainer(0, 3, 1)  # one batch of 2 videos for 3 processes
    with pytest.raises(DataError, match="test set: 2 videos for 3 processes"):
        dm.test_dataloader()
    early = LLPDataModule(str(root), batch_size=2, **DIMS)
    early.trainer = trainer(0, 8, 1.0)
    with pytest.raises(DataError, match="test set: 7 videos for 8 processes"):
        early.setup("test")  # as the data loads: before the run writes its config and record


@pytest.mark.parametrize("config", [c for c in bundled_configs("finetune") if not c.startswith("pretrain_")])
def test_every_finetune_parameter_gets_a_gradient(config: str) -> None:
    """Plain ``ddp`` (find_unused_parameters=False) needs every parameter in every step's graph."""
    model = yaml.safe_load((config_dir("finetune") / config).read_text())["model"]
    module = ParserModule(**DIMS, hidden_dim=16, ffn_dim=16, **model)
    g = torch.Generator().manual_seed(0)
    batch = {"audio": torch.randn(3, 10, 16, generator=g), "visual": torch.randn(3, 10, 32, generator=g),
             "motion": torch.randn(3, 10, 8, generator=g), "label": (torch.rand(3, 25, generator=g) < 0.2).float()}
    losses = parser_loss(module(batch, grl_alpha=0.5), batch["label"], lambda_g=module.hparams.lambda_g,
                         lambda_ad=module.hparams.lambda_ad)
    losses["total"].backward()
    assert [n for n, p in module.named_parameters() if p.grad is None] == []


@pytest.mark.parametrize("variant,alternate", [("uni", False), ("cross", False), ("multi", False), ("multi", True)])
def test_every_pretrain_parameter_gets_a_gradient(variant: str, alternate: bool) -> None:
    module = PretrainModule(audio_dim=16, visual_dim=32, hidden_dim=16, num_heads=2, ffn_dim=16,
                            variant=variant, alternate=alternate, anchors=1)
    g = torch.Generator().manual_seed(0)
    batch = {"audio": torch.randn(3, 10, 16, generator=g), "visual": torch.randn(3, 10, 32, generator=g)}
    for epoch in (0, 1):  # alternate: cross on even epochs, uni on odd ones
        module.zero_grad(set_to_none=True)
        audio, visual = module(batch["audio"], batch["visual"])
        variant_now = ("cross", "uni")[epoch] if alternate else variant
        module._loss(audio, visual, module.positives(batch), variant_now, anchors=1).backward()
        assert [n for n, p in module.named_parameters() if p.grad is None] == []


# ------------------------------------------------------ end to end, 2 processes
@pytest.mark.slow
def test_finetune_ddp_equals_single_process(tmp_path: Path) -> None:
    root = generate_llp(tmp_path / "llp", seed=3, **SPLITS, **DIMS)
    args = ["--data.root", str(root), "--run.output_dir", str(tmp_path / "out"), "--data.batch_size", "4",
            "--model.hidden_dim", "32", "--model.ffn_dim", "32", "--trainer.enable_progress_bar=false",
            "--trainer.accelerator", "cpu", *(f"--data.{k}={v}" for k, v in DIMS.items())]
    run_dir = tmp_path / "out" / "base_adv_skip_gcaa" / "seed0"

    out = run_ddp("avvp-finetune", ["fit", *args, "--trainer.max_epochs=1"])
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()
    assert "Grad strides do not match bucket view strides" not in out  # every gradient in its parameter's layout
    # Validation: the metrics DDP logged in fit (csv/version_0) = one process on the same weights.
    finetune(["validate", *args, "--ckpt_path", "last"])
    ddp_val, single_val = logged(run_dir, 0, "val/"), logged(run_dir, 1, "val/")
    assert set(ddp_val) == set(single_val) == {f"val/{k}" for k in METRIC_KEYS}
    for key, value in single_val.items():
        assert ddp_val[key] == pytest.approx(value, abs=TOL), key

    run_ddp("avvp-finetune", ["test", *args, "--ckpt_path", "best"])
    finetune(["test", *args, "--ckpt_path", "best", "--model.output_dir", str(tmp_path / "single")])
    ddp = json.loads((run_dir / "test" / "metrics.json").read_text())
    single = json.loads((tmp_path / "single" / "metrics.json").read_text())
    assert ddp["num_videos"] == single["num_videos"] == SPLITS["num_test"]
    for key in METRIC_KEYS:
        assert ddp[key] == pytest.approx(single[key], abs=TOL), key
    for name, scores in single["per_class"].items():
        assert ddp["per_class"][name] == pytest.approx(scores, abs=TOL), name
    for name in ("pred_audio.csv", "pred_visual.csv"):
        text = (tmp_path / "single" / name).read_text()
        assert len(text.splitlines()) > 1, f"{name}: no predicted event, the comparison would be empty"
        assert (run_dir / "test" / name).read_text() == text, name

    # Predict: every test video once, in the CSV's order, with the test run's predictions.
    run_ddp("avvp-finetune", ["predict", *args, "--ckpt_path", "best"])
    probs = np.load(run_dir / "predict" / "probabilities.npz")
    assert probs["ids"].tolist() == read_weak_labels(root / "AVVP_test_pd.csv")[0]
    assert probs["audio_prob"].shape == (SPLITS["num_test"], 10, 25)
    for name in ("pred_audio.csv", "pred_visual.csv"):
        assert (run_dir / "predict" / name).read_text() == (tmp_path / "single" / name).read_text(), name


@pytest.mark.slow
def test_finetune_fit_under_ddp_spawn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``ddp_spawn`` pickles the model into its processes: the optimizer from the command line must
    survive that (LightningCLI's bound ``configure_optimizers`` did not), and the run trains; with
    W&B on (its run re-attached in the worker, whose ``dir`` names the working folder), the config
    is copied into the run folder's W&B run, and a second fit moves the first one's W&B run aside."""
    monkeypatch.chdir(tmp_path)  # a stray ./wandb would show here
    monkeypatch.setenv("WANDB_MODE", "disabled")  # restored after: Lightning sets it to "dryrun" for offline runs
    root = generate_llp(tmp_path / "llp", seed=3, **SPLITS, **DIMS)
    args = ["--data.root", str(root), "--run.output_dir", str(tmp_path / "out"), "--data.batch_size", "4",
            "--model.hidden_dim", "32", "--model.ffn_dim", "32", "--trainer.enable_progress_bar=false",
            "--trainer.accelerator", "cpu", *(f"--data.{k}={v}" for k, v in DIMS.items()), "--run.wandb", "offline",
            "--trainer.strategy", "ddp_spawn", "--trainer.devices", "2", "--trainer.max_epochs=1"]
    run_dir = tmp_path / "out" / "base_adv_skip_gcaa" / "seed0"
    finetune(["fit", *args])
    (first,) = (run_dir / "wandb").glob("offline-run-*")
    assert (first / "files" / "config-fit.yaml").is_file() and not (tmp_path / "wandb").exists()
    last = run_dir / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, weights_only=True, map_location="cpu")
    assert ckpt["epoch"] == 0 and ckpt["global_step"] == 4  # 25 videos padded to 13 per process, batches of 4
    assert ckpt["optimizer_states"][0]["state"]  # Adam stepped: moments for every parameter
    assert ckpt["lr_schedulers"][0]["last_epoch"] == 1  # StepLR stepped once, at the epoch's end
    torch.manual_seed(0)
    initial = ParserModule(**DIMS, hidden_dim=32, ffn_dim=32).state_dict()
    assert any(not torch.equal(ckpt["state_dict"][k], v) for k, v in initial.items())
    finetune(["fit", *args, "--model.dropout", "0.2"])  # (its warning is the spawned worker's)
    (previous,) = (run_dir / "previous").iterdir()
    assert [p.name for p in (previous / "wandb").iterdir()] == [first.name]
    (second,) = (run_dir / "wandb").glob("offline-run-*")  # this fit's own run stayed
    assert "dropout: 0.2" in (second / "files" / "config-fit.yaml").read_text()


@pytest.mark.slow
def test_ablate_sweep_runs_fit_then_test_under_ddp(tmp_path: Path) -> None:
    # One process runs both commands of each run: the second DDP launch needs the first's process
    # group and launcher variables gone, and its other process the sweep's command line.
    root = generate_llp(tmp_path / "llp", seed=3, **SPLITS, **DIMS)
    out = run_ddp("avvp-ablate", ["--configs", "han", "--seeds", "1", "--output_dir", str(tmp_path / "out"),
                                  "--data.root", str(root), "--data.batch_size", "4", "--model.hidden_dim", "32",
                                  "--model.ffn_dim", "32", "--trainer.enable_progress_bar=false",
                                  "--trainer.accelerator", "cpu", "--trainer.max_epochs=1",
                                  *(f"--data.{k}={v}" for k, v in DIMS.items())])
    result = json.loads((tmp_path / "out" / "han" / "seed0" / "test" / "metrics.json").read_text())
    assert result["num_videos"] == SPLITS["num_test"] and "[avvp-ablate] done: 1 run(s)" in out


@pytest.mark.slow
def test_pretrain_ddp_validation_equals_single_process(tmp_path: Path) -> None:
    # 15 train / 5 val videos; with batches of 2 the val processes get 2 and 3 videos (1 and 2 batches).
    root = generate_snippets(tmp_path / "snippets", num_videos=20, seed=0, **DIMS)
    args = ["--config", "pretrain_multi.yaml", "--data.root", str(root), "--data.audio_dim", "16",
            "--data.visual_dim", "32", "--data.val_fraction", "0.25", "--data.batch_size", "2",
            "--model.hidden_dim", "32", "--model.num_heads", "2", "--model.ffn_dim", "64",
            "--trainer.enable_progress_bar=false", "--trainer.accelerator", "cpu",
            "--run.output_dir", str(tmp_path / "out")]
    run_dir = tmp_path / "out" / "pretrain_multi" / "seed0"
    out = run_ddp("avvp-pretrain", ["fit", *args, "--trainer.max_epochs=1"])
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert "Grad strides do not match bucket view strides" not in out
    pretrain(["validate", *args, "--ckpt_path", "last"])
    ddp_val, single_val = logged(run_dir, 0, "val/"), logged(run_dir, 1, "val/")
    assert set(single_val) == {"val/loss", "val/grounding_acc", "val/grounding_auc"} == set(ddp_val)
    for key, value in single_val.items():
        assert ddp_val[key] == pytest.approx(value, rel=TOL, abs=TOL), key
