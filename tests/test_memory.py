"""``--run.reuse_memory``: glibc keeps freed memory in the process instead of faulting it in again."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest


PROBE = textwrap.dedent("""
    import resource, sys, torch
    from avvp_lightning.cli import reuse_freed_memory
    if sys.argv[1] == "tuned":
        assert reuse_freed_memory()
    def step():
        x = torch.empty(10 * 2**20)  # 40 MB
        x.fill_(1.0)  # every page touched; freed on return
        return float(x[0])
    step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        step()
    print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
""")


def _faults_per_step(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return float(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's mallopt: Linux")
def test_reused_memory_is_not_faulted_in_again() -> None:
    # In a child process: the setting is process-wide and cannot be undone.
    default, tuned = _faults_per_step("default"), _faults_per_step("tuned")
    # glibc maps a 40 MB block afresh on every allocation by default: one fault per 4 KiB page.
    assert default > 5000, default
    assert tuned < default / 20, (tuned, default)
