"""Two-process DDP test of ``AVVPMetrics`` on CPU (gloo, loopback only).

Rank 0 sees 60 videos and rank 1 sees 41, each in several uneven batches; the synced
``compute()`` on both ranks must equal a single-process ``AVVPMetrics`` over all 101.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from avvp_lightning.metrics import AVVPMetrics

T, C, N = 10, 25, 101
RANK_BATCHES = {0: (1, 23, 36), 1: (17, 2, 22)}  # 60 + 41 videos
TOL = 1e-9


def _data(seed: int = 0) -> list[torch.Tensor]:
    """Four (N, T, C) 0/1 tensors with runs of varied density: pa, pv, ta, tv."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(4):
        density = torch.rand(N, 1, C, generator=g) ** 2  # per video and class
        onset = torch.rand(N, T, C, generator=g) < density
        keep = torch.rand(N, T, C, generator=g) < 0.7
        x = onset.clone()
        for t in range(1, T):  # extend onsets into runs
            x[:, t] |= x[:, t - 1] & keep[:, t]
        out.append(x.float())
    return out


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size
    )
    try:
        data = _data()
        lo = sum(RANK_BATCHES[0]) if rank == 1 else 0
        metric = AVVPMetrics(num_classes=C)
        for size in RANK_BATCHES[rank]:
            metric.update(*(x[lo:lo + size] for x in data))
            lo += size
        result = {k: v.detach().to(torch.float64) for k, v in metric.compute().items()}
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")
def test_ddp_compute_matches_single_process(tmp_path):
    assert sum(RANK_BATCHES[0]) == 60 and sum(RANK_BATCHES[1]) == 41
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)

    single = AVVPMetrics(num_classes=C)
    single.update(*_data())
    want = {k: v.to(torch.float64) for k, v in single.compute().items()}
    assert len(want) == 16
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert set(got) == set(want)
        for k in want:
            np.testing.assert_allclose(got[k].numpy(), want[k].numpy(), rtol=0, atol=TOL, err_msg=f"rank {rank} {k}")
    # the split really is uneven: one rank alone would give another answer
    half = AVVPMetrics(num_classes=C)
    half.update(*(x[:60] for x in _data()))
    assert any(abs(float(half.compute()[k].sum() - want[k].sum())) > 1e-6 for k in want)
