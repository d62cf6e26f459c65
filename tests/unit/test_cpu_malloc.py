"""``malloc_tune``: CPU training keeps freed memory for reuse (glibc)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from garment_gen.utils import cpu_malloc

_PROBE = """
import resource
import torch
from garment_gen.utils.cpu_malloc import keep_freed_memory
if {tuned}:
    assert keep_freed_memory()
def step():  # a training step's pattern: big tensors allocated, touched, freed
    a = torch.empty(64 << 20, dtype=torch.uint8).fill_(1)
    b = torch.empty(32 << 20, dtype=torch.uint8).fill_(1)
    del a, b
for _ in range(2):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(tuned: bool) -> int:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE.format(tuned=tuned)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return int(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="mallopt tuning is glibc's; elsewhere keep_freed_memory() is a no-op (tested below)",
)
def test_big_tensors_stop_page_faulting_once_tuned() -> None:
    """Untuned, freed big tensors go back to the OS and fault in again (24k pages a step)."""
    untuned, tuned = _faults(False), _faults(True)
    assert untuned > 5 * 10_000
    # measured: 122,890 untuned; 32,768-73,728 tuned (varies run to run)
    assert tuned < untuned * 0.75


def test_without_mallopt_it_is_a_no_op(monkeypatch) -> None:
    monkeypatch.setattr(cpu_malloc, "_DONE", False)
    monkeypatch.setattr(cpu_malloc.ctypes.util, "find_library", lambda name: None)
    assert cpu_malloc.keep_freed_memory() is False
