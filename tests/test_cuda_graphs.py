"""CUDA-graph training steps (``--model.cuda_graphs``): run only where a CUDA device is present.

On the CPU the graphed step's code runs eagerly, and ``test_finetune_cli`` checks it against
the default step bit for bit; here the captured graph is checked against eager steps.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from avvp_lightning.data.synthetic import generate_llp
from avvp_lightning.finetune.cli import main
from avvp_lightning.finetune.module import ParserModule
from avvp_lightning.graphs import GraphedBackward

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

DIMS = {"audio_dim": 16, "visual_dim": 32, "motion_dim": 8}


def gpu_args(root: Path, out: Path) -> list[str]:
    """``avvp-finetune`` options of a small 3-epoch GPU run on ``root`` (batch 16, width 64)."""
    return ["--data.root", str(root), "--run.output_dir", str(out), "--data.batch_size", "16",
            "--model.hidden_dim", "64", "--model.ffn_dim", "64", "--trainer.enable_progress_bar=false",
            "--trainer.accelerator=gpu", "--trainer.max_epochs=3", *(f"--data.{k}={v}" for k, v in DIMS.items())]


@pytest.mark.parametrize("bf16", [False, True])
def test_graph_replays_match_eager_steps(bf16: bool) -> None:
    """Warm-up, capture, replays and an eager step of another batch size in between: the losses,
    gradients and weights follow eager training (dropout off, so both compute the same thing)."""
    torch.manual_seed(0)
    eager = ParserModule(**DIMS, hidden_dim=64, ffn_dim=64, dropout=0.0).cuda()
    graphed = copy.deepcopy(eager)
    opts = [torch.optim.Adam(m.parameters(), lr=1e-3, fused=True) for m in (eager, graphed)]
    step = GraphedBackward(graphed._graph_losses, list(graphed.parameters()))
    gen = torch.Generator(device="cuda").manual_seed(1)
    for i in range(9):
        b = 5 if i == 6 else 16  # step 6: an epoch's short last batch, eager between replays
        inputs = {"audio": torch.randn(b, 10, 16, device="cuda", generator=gen),
                  "visual": torch.randn(b, 10, 32, device="cuda", generator=gen),
                  "motion": torch.randn(b, 10, 8, device="cuda", generator=gen),
                  "label": (torch.rand(b, 25, device="cuda", generator=gen) < 0.2).float(),
                  "grl_alpha": torch.full((), i / 10, device="cuda")}
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            opts[0].zero_grad()
            want = eager._graph_losses(inputs)
            want["total"].backward()
            got = {k: v.clone() for k, v in step(inputs).items()}
        for key in want:
            torch.testing.assert_close(got[key], want[key].detach(), rtol=1e-4, atol=1e-5, msg=f"step {i} {key}")
        for (name, p), q in zip(eager.named_parameters(), graphed.parameters()):
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-5, msg=f"step {i} grad {name}")
        for opt in opts:
            opt.step()
    assert (step.eager_calls, step.replays) == (4, 5)  # 3 warm-up + the short batch; capture at step 3
    assert all(v.grad_fn is None for v in step.static_losses.values())  # no capture-time autograd graph kept
    for (name, p), q in zip(eager.named_parameters(), graphed.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-3, atol=1e-5, msg=name)


def test_moved_parameters_drop_the_graph() -> None:
    """A parameter whose storage changed after the capture (replaced, moved) is not written by
    the old graph: the graph is dropped and captured again on the new storage."""
    torch.manual_seed(0)
    module = ParserModule(**DIMS, hidden_dim=32, ffn_dim=32, dropout=0.0).cuda()
    step = GraphedBackward(module._graph_losses, list(module.parameters()), warmup=1)
    inputs = {"audio": torch.randn(4, 10, 16, device="cuda"), "visual": torch.randn(4, 10, 32, device="cuda"),
              "motion": torch.randn(4, 10, 8, device="cuda"), "label": torch.ones(4, 25, device="cuda"),
              "grl_alpha": torch.full((), 0.5, device="cuda")}
    for _ in range(3):
        step(inputs)
    assert (step.eager_calls, step.replays) == (1, 2)
    weight = module.parser.fc_audio.weight
    weight.data = weight.data.clone()  # new storage
    step(inputs)  # eager, on the new storage
    assert (step.eager_calls, step.replays) == (2, 2) and step.graph is None
    want = weight.grad.clone()
    step(inputs)  # captured again
    assert step.replays == 3
    torch.testing.assert_close(weight.grad, want)


def test_graphed_fit_draws_the_eager_fits_dropout(tmp_path: Path) -> None:
    """With dropout on, a graphed fit trains the eager fit's weights: PyTorch's graph-safe
    random numbers give each replay the draws the eager step would have made."""
    root = tmp_path / "llp"
    generate_llp(root, num_train=64, num_val=16, num_test=16, seed=3, **DIMS)
    args = ["fit", *gpu_args(root, tmp_path), "--model.dropout=0.3"]
    main([*args, "--run.name", "graphed", "--model.cuda_graphs=true"])
    main([*args, "--run.name", "eager", "--model.cuda_graphs=false"])
    weights = {name: torch.load(tmp_path / name / "seed0" / "checkpoints" / "last.ckpt", weights_only=True,
                                map_location="cpu")["state_dict"] for name in ("graphed", "eager")}
    for key, value in weights["eager"].items():  # other draws would differ by ~1e-3 after 12 Adam steps
        torch.testing.assert_close(weights["graphed"][key], value, rtol=1e-3, atol=1e-4, msg=key)


def test_graphed_fit_trains_and_reports_replays(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The real CLI on the GPU (per-file loading, batches moved to the GPU): the graph serves the steps."""
    root = tmp_path / "llp"
    generate_llp(root, num_train=100, num_val=20, num_test=20, seed=3, **DIMS)
    args = [*gpu_args(root, tmp_path / "out"), "--model.cuda_graphs=true"]
    with caplog.at_level("INFO"):
        main(["fit", *args])
    # 7 batches an epoch (6 of 16, one of 4): 3 warm-up, capture at the 4th, the short ones eager
    assert "cuda_graphs: 15 steps replayed, 6 eager" in caplog.text
    main(["test", *args, "--ckpt_path", "best"])
    assert (tmp_path / "out" / "base_adv_skip_gcaa" / "seed0" / "test" / "metrics.json").is_file()
