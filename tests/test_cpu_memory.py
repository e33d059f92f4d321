"""keep_freed_memory: glibc keeps a freed large tensor in the process instead of unmapping it (each case in a
fresh interpreter, so the test process's allocator is left as it was)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pami_lightning import keep_freed_memory

PROBE = """
import os, sys
import torch
if sys.argv[1] == "keep":
    from pami_lightning import keep_freed_memory
    assert keep_freed_memory()
def resident():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
x = torch.ones(64 << 20)  # 256 MiB: far above glibc's default mmap threshold
before = resident()
del x
print((before - resident()) / 2**20)
"""


def _released_mib(mode: str) -> float:
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return float(done.stdout)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc (Linux)")
def test_a_freed_large_tensor_stays_in_the_process():
    assert _released_mib("default") > 200  # glibc unmaps it at once: the next one is faulted in again
    assert _released_mib("keep") < 8  # kept in the heap for the next allocation


def test_the_block_size_must_not_be_negative():
    with pytest.raises(ValueError, match="max_block_bytes must be >= 0"):
        keep_freed_memory(-1)
