"""The real ``avvp-pretrain`` CLI, and the hand-off of its features to ``avvp-finetune``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from avvp_lightning.cli import bundled_configs
from avvp_lightning.data.synthetic import generate_llp, generate_snippets
from avvp_lightning.errors import DataError
from avvp_lightning.finetune.cli import main as finetune
from avvp_lightning.metrics import METRIC_KEYS
from avvp_lightning.pretrain.cli import main as pretrain

DIMS = {"audio_dim": 16, "visual_dim": 32, "motion_dim": 8}
ENCODER = ["--model.hidden_dim", "32", "--model.num_heads", "2", "--model.ffn_dim", "64"]
QUIET = ["--trainer.enable_progress_bar=false"]


@pytest.fixture(scope="module")
def snippet_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_snippets(tmp_path_factory.mktemp("snip") / "s", num_videos=40, seed=0, **DIMS)


def data_args(root: Path) -> list[str]:
    return ["--data.root", str(root), "--data.audio_dim", "16", "--data.visual_dim", "32", "--data.batch_size", "8"]


@pytest.mark.parametrize("config", bundled_configs("pretrain"))
def test_every_pretrain_config_fast_dev_run(config: str, snippet_root: Path, tmp_path: Path) -> None:
    args = ["fit", "--config", config, *data_args(snippet_root), *ENCODER, *QUIET, "--trainer.fast_dev_run=true"]
    if config == "pretrain_paper.yaml":  # the paper-size encoder; keep it small here
        args += ["--model.num_layers", "1"]
    pretrain(args)


def test_help_lists_bundled_configs(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        pretrain(["--help"])
    text = capsys.readouterr().out
    for name in ("pretrain_uni.yaml", "pretrain_cross.yaml", "pretrain_multi.yaml"):
        assert name in text
    assert "{fit,validate}" in text  # snippets have no test split or predictions: no such subcommands
    assert "avvp-pretrain export --ckpt_path CKPT" in " ".join(text.split())  # export, parsed apart, is named
    with pytest.raises(SystemExit):
        pretrain(["test"])
    assert "invalid choice: 'test'" in capsys.readouterr().err


@pytest.mark.parametrize("option, message", [
    (["--model.num_heads", "3"], "hidden_dim=32 is not divisible by num_heads=3"),
    (["--model.anchors", "11"], r"anchors must be in \[1, num_segments=10\]"),
    (["--model.visual_threshold", "96"], r"visual_threshold is a cosine similarity, in \[-1, 1\]"),
    (["--model.variant", "uni", "--model.alternate", "true"], "alternate=True applies to variant='multi' only"),
    (["--data.batch_size", "0"], "data.batch_size must be >= 1"),
    (["--data.val_fraction", "1.0"], r"val_fraction must be in \[0, 1\)"),
])
def test_bad_option_values_are_one_clear_error(option: list[str], message: str, snippet_root: Path,
                                               tmp_path: Path) -> None:
    with pytest.raises(DataError, match=f"invalid option value: {message}"):
        pretrain(["fit", *data_args(snippet_root), *ENCODER, *QUIET, *option, "--run.output_dir", str(tmp_path)])
    assert not any(tmp_path.iterdir())  # refused before the run folder is made


def test_bad_snippet_lists_are_named(snippet_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "s"
    shutil.copytree(snippet_root, root)
    lines = (root / "snippets.csv").read_text().splitlines()
    (root / "snippets.csv").write_text("\n".join([*lines[:3], "\t" + lines[3].split("\t", 1)[-1], *lines[4:]]) + "\n")
    run = ["fit", *data_args(root), *ENCODER, *QUIET, "--run.output_dir", str(tmp_path / "out")]
    with pytest.raises(DataError, match=r"snippets\.csv: line 4: empty filename"):  # not skipped as a blank line
        pretrain(run)
    (root / "snippets.csv").write_text("\n".join(lines) + "\n")
    out = ["--run.output_dir", str(tmp_path / "out")]
    with pytest.raises(DataError, match=r"validate needs --ckpt_path: .*untrained model"):  # before anything runs
        pretrain(["validate", *data_args(root), *ENCODER, *QUIET, *out])
    pretrain(["fit", *data_args(root), *ENCODER, *QUIET, *out, "--trainer.max_epochs", "1"])
    with pytest.raises(DataError, match=r"validate needs held-out videos.*--data\.val_fraction 0\.0"):
        pretrain(["validate", *data_args(root), *ENCODER, *QUIET, "--data.val_fraction", "0", *out,
                  "--ckpt_path", "last"])
    llp = generate_llp(tmp_path / "llp", num_train=6, num_val=3, num_test=3, seed=0, **DIMS)  # an LLP root
    train = (llp / "AVVP_train.csv").read_text().splitlines()
    with open(llp / "AVVP_val_pd.csv", "a") as f:
        f.write(train[1] + "\n")
    with pytest.raises(DataError, match=rf"video id '{train[1][:11]}' is listed in two splits: .*AVVP_train\.csv, "
                                        r"line 2 and .*AVVP_val_pd\.csv, line 5"):
        pretrain(["fit", *data_args(llp), *ENCODER, *QUIET, "--run.output_dir", str(tmp_path / "out")])


@pytest.mark.slow
def test_pretrain_export_finetune_end_to_end(snippet_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # bundled configs resolve by bare name from any directory
    llp = generate_llp(tmp_path / "llp", num_train=40, num_val=11, num_test=13, seed=0, **DIMS)
    pretrain(["fit", "--config", "pretrain_multi.yaml", *data_args(snippet_root), *ENCODER, *QUIET,
              "--trainer.max_epochs=2", "--run.output_dir", str(tmp_path / "pre")])
    ckpt = tmp_path / "pre" / "pretrain_multi" / "seed0" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()

    pretrain(["export", "--ckpt_path", str(ckpt), "--root", str(llp), "--out_name", "pretrain_multi"])
    audio = sorted((llp / "feats" / "pretrain_multi_audio").glob("*.npy"))
    visual = sorted((llp / "feats" / "pretrain_multi_visual").glob("*.npy"))
    assert len(audio) == len(visual) == 40 + 11 + 13
    sample = np.load(audio[0])
    assert sample.shape == (10, 32) and sample.dtype == np.float32 and np.isfinite(sample).all()

    args = ["--config", "pretrain_multi.yaml", "--data.root", str(llp), "--data.audio_dim", "32",
            "--data.visual_dim", "32", "--data.motion_dim", "8", "--data.batch_size", "8",
            "--model.hidden_dim", "32", "--model.ffn_dim", "32", *QUIET, "--run.output_dir", str(tmp_path / "ft")]
    finetune(["fit", *args, "--trainer.max_epochs=1"])
    capsys.readouterr()
    finetune(["test", *args, "--ckpt_path", "best"])
    printed = capsys.readouterr().out
    assert "Type@AV" in printed and "Event@AV" in printed
    result = json.loads((tmp_path / "ft" / "pretrain_multi" / "seed0" / "test" / "metrics.json").read_text())
    assert all(0.0 <= result[key] <= 1.0 for key in METRIC_KEYS)
    assert result["config"] == "pretrain_multi"
