"""``--run.reuse_memory``: glibc keeps freed memory in the process instead of faulting it in again."""

from __future__ import annotations

import ctypes
import statistics
import subprocess
import sys
import textwrap

import pytest


# One "step" allocates eight 8 MiB tensors, touches every page and frees them all, as a training
# step does with its activations. glibc's defaults hand the freed top of the heap (64 MiB, above
# the trim threshold, which follows the mmap threshold up to 64 MiB) back to the kernel, so the
# next step faults every page in again; with ``reuse_freed_memory`` the heap keeps it.
PROBE = textwrap.dedent("""
    import resource, sys, torch
    from avvp_lightning.cli import reuse_freed_memory
    if sys.argv[1] == "tuned":
        assert reuse_freed_memory()
    def step():
        blocks = [torch.empty(2 * 2**20) for _ in range(8)]  # 8 x 8 MiB
        for block in blocks:
            block.fill_(1.0)
        return sum(float(block[0]) for block in blocks)
    for _ in range(15):  # let the heap settle (glibc adapts its thresholds on the first frees)
        step()
    faults = []
    for _ in range(10):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        step()
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(*faults)
""")


def _glibc() -> bool:
    try:
        ctypes.CDLL(None).gnu_get_libc_version  # noqa: B018
    except (OSError, AttributeError):
        return False
    return sys.platform.startswith("linux")


def _faults_per_step(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return statistics.median(float(x) for x in out.stdout.split())


@pytest.mark.skipif(not _glibc(), reason="mallopt settings of glibc on Linux")
def test_reused_memory_is_not_faulted_in_again() -> None:
    # In child processes: the setting is process-wide and cannot be undone.
    default = _faults_per_step("default")
    if default < 16:  # 64 MiB faulted in again every step: 16k 4 KiB pages, or 32 huge pages
        pytest.skip(f"glibc keeps the memory here by default ({default} faults per step; MALLOC_* settings?)")
    tuned = _faults_per_step("tuned")
    assert tuned <= default / 10, (tuned, default)
