"""The default model learns: well above chance on planted synthetic LLP data, from weak labels.

Chance is measured in the test, not assumed: the best of predicting nothing (which scores
1.0 on every video without truth in a modality) and of predicting each class in each
segment at random with its true per-class, per-modality rate. The settings and margin were
chosen from measurements: on this data (seed 7) the default model at its paper width,
batch 16, Adam 3e-4, reaches a validation segment Type@AV of about 0.55 after 8 epochs
(0.23 before it predicts anything; chance on the test split is about 0.20), while width 128
or batch 32 learned markedly slower. The margin leaves room for platform noise but not for
a model that only learned the class priors.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from avvp_lightning.data.llp import read_dense_truth, read_weak_labels
from avvp_lightning.data.synthetic import generate_llp
from avvp_lightning.finetune.cli import main
from avvp_lightning.metrics import avvp_scores


def chance_type_at_av(root: Path) -> float:
    files, _ = read_weak_labels(root / "AVVP_test_pd.csv")
    truth_a = torch.from_numpy(read_dense_truth(root / "AVVP_eval_audio.csv", files))  # (N, T, C)
    truth_v = torch.from_numpy(read_dense_truth(root / "AVVP_eval_visual.csv", files))
    nothing = avvp_scores(torch.zeros_like(truth_a), torch.zeros_like(truth_v), truth_a, truth_v)
    gen = torch.Generator().manual_seed(0)
    rate_a, rate_v = truth_a.mean(dim=(0, 1)), truth_v.mean(dim=(0, 1))  # (C,)
    random = avvp_scores((torch.rand(truth_a.shape, generator=gen) < rate_a).float(),
                         (torch.rand(truth_v.shape, generator=gen) < rate_v).float(), truth_a, truth_v)
    return max(nothing["segment/type"], random["segment/type"])


@pytest.mark.slow
def test_default_model_learns_well_above_chance(tmp_path: Path) -> None:
    root = generate_llp(tmp_path / "llp", num_train=400, num_val=60, num_test=100, seed=7)
    args = ["--data.root", str(root), "--run.output_dir", str(tmp_path / "out"), "--data.batch_size", "16",
            "--trainer.enable_progress_bar=false"]
    main(["fit", *args, "--trainer.max_epochs=8", "--lr_scheduler.step_size=10"])
    main(["test", *args, "--ckpt_path", "best"])
    result = json.loads((tmp_path / "out" / "base_adv_skip_gcaa" / "seed0" / "test" / "metrics.json").read_text())
    chance = chance_type_at_av(root)
    assert chance < 0.3
    assert result["segment/type"] > chance + 0.15, (result, chance)
    assert np.isfinite([result[k] for k in ("segment/audio", "segment/visual", "event/type")]).all()
