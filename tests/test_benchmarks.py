"""The benchmark scripts run end to end on tiny data and print every number they promise.

No timing is asserted (speed is measured by running the scripts, never in tests); this only
keeps them working as the code under them changes.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(BENCHMARKS))  # train_throughput imports benchmarks/metrics.py
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


@pytest.mark.slow
def test_train_throughput_runs_every_case_and_prints_paired_ratios(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")  # the script's own default, scoped to this test
    bench = _load("train_throughput")
    threads = torch.get_num_threads()  # the script sets torch's threads for the process
    try:
        bench.main(["--videos", "16", "--val-videos", "4", "--test-videos", "8", "--epochs", "1",
                    "--threads", "1", "--data", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    for key in ("A", "B0", "B", "A'", "C0", "C", "F", "F-HAN"):
        assert re.search(rf"^{re.escape(key)}\s+\S.*\d+\.\d+x\s+\d+-\d+\s+\d+$", out, re.M), f"no row for case {key}"
    # Paired ratios for the cases (per round) and for the fits (each epoch over an A epoch after it)
    for ratio in ("B / A", "B0 / A", "C / A'", "C0 / A'", "C / A", "F / A", "F-HAN / A"):
        assert re.search(rf"^  {re.escape(ratio)}\s+\d+\.\d\dx\s+\d+\.\d\d-\d+\.\d\d\s+\d+\.\d\dx", out, re.M), ratio
    assert re.search(r"A right after each: \d+", out)
    products = re.search(r"^ +(\d+) MFLOP  the reference's.*\n +(\d+) MFLOP  HAN's model, pooled.*\n +(\d+) MFLOP  "
                         r"the paper's.*\n.*one large product on this device: (\d+) GFLOP/s fp32.*\n"
                         r"  So B / A = (\d+\.\d\d) .*\(A's: (\d+)% of the fp32 product above\), at most (\d+\.\d\d)x",
                         out, re.M)
    assert products, "no lines on the matrix products"
    frames, pooled, paper, best = (int(products[i]) for i in (1, 2, 3, 4))
    # HAN's model: 80 projections of 2048 -> 512 per video instead of 10 (forward and weight gradient)
    assert frames - pooled == pytest.approx(2 * 2 * 70 * 2048 * 512 / 1e6, abs=1)
    assert paper > pooled and float(products[5]) == pytest.approx(frames / pooled, abs=0.01)
    # each row's GFLOP/s is its videos/s x its model form's products
    row = re.search(r"^A\s+.*\s(\d+)\s+\S+\s+1\.0x\s+\d+-\d+\s+(\d+)$", out, re.M)
    a_rate, a_gflops = int(row[1]), int(row[2])
    assert a_gflops == pytest.approx(a_rate * frames / 1e3, abs=0.5 + a_rate * 0.5 / 1e3 + frames * 0.5 / 1e3)
    assert int(products[6]) == pytest.approx(100 * a_gflops / best, abs=1 + 100 / best)
    assert re.search(r"test segment Type@AV after the timed epochs .*: A \d+\.\d, .*F \d+\.\d, F-HAN \d+\.\d$", out, re.M)
    assert re.search(r"reference \(per-file.*\d+\.\d\d s\s+segment Type@AV \d+\.\d", out)
    assert re.search(r"ours \(store.*\d+\.\d\d s\s+segment Type@AV \d+\.\d", out)


def test_flop_count_and_product_timing_leave_the_random_state_alone() -> None:
    """The cases' dropout draws come from torch's generator: the count and the timing, made
    between the cases' construction and their epochs, must not move it."""
    bench = _load("train_throughput")
    torch.manual_seed(1)
    batch = {"audio": torch.randn(2, 10, 128), "visual": torch.randn(2, 80, 2048), "motion": torch.randn(2, 10, 512),
             "label": (torch.rand(2, 25) < 0.2).float()}
    state = torch.get_rng_state()
    flops = bench.training_flops(batch, torch.device("cpu"))
    assert torch.equal(state, torch.get_rng_state())
    bench.product_ceiling(torch.device("cpu"), False)
    assert torch.equal(state, torch.get_rng_state())
    # the paper's model as fit builds it: more products than HAN's (GCAA's gates, the discriminator)
    assert flops["frames"] > flops["paper"] > flops["pooled"]


def test_timing_only_epochs_leave_the_case_as_it_was() -> None:
    bench = _load("train_throughput")
    torch.manual_seed(1)
    batch = {"audio": torch.randn(4, 10, 128), "visual": torch.randn(4, 10, 2048), "motion": torch.randn(4, 10, 512),
             "label": (torch.rand(4, 25) < 0.2).float()}
    case = bench.Case("B", "", "", False, 4, False, lambda: [batch], torch.device("cpu"), stock=False)

    def weights() -> list[torch.Tensor]:
        return [p.detach().clone() for p in case.model.parameters()]

    before = weights()
    case.epoch(record=False)  # the A epochs timed next to each fit epoch: not training
    assert all(torch.equal(a, b) for a, b in zip(before, weights())) and case.rates == []
    case.epoch()
    assert not all(torch.equal(a, b) for a, b in zip(before, weights())) and len(case.rates) == 1
    torch.manual_seed(1)
    fresh = bench.Case("B", "", "", False, 4, False, lambda: [batch], torch.device("cpu"), stock=False)
    fresh.epoch()  # the same training without the timing-only epoch: optimizer and random state were put back
    assert all(torch.equal(a, p) for a, p in zip(weights(), fresh.model.parameters()))


def test_metrics_benchmark_agrees_with_the_loop(capsys) -> None:
    bench = _load("metrics")
    threads = torch.get_num_threads()
    try:
        bench.main(["--sizes", "37", "200", "--loop-max", "100", "--repeats", "1", "--seed", "3"])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert re.search(r"^\s+37 .*full loop; max diff", out, re.M)
    assert re.search(r"^\s+200 .*loop timed on 100 videos, extrapolated", out, re.M)
    assert "all ten numbers agree to 1e-9" in out
