"""Keeping freed CPU memory in the process, for CPU runs of large inputs.

PyTorch's CPU tensors come from ``malloc``. glibc serves blocks above its mmap threshold (at most
32 MiB by default, e.g. the activations of a batch of 64 images of 224x224) with a fresh ``mmap`` and
hands them back to the OS when they are freed, so every forward pass page-faults its activations in
again. On the project's 2-core machines that made a batch-64 forward of a 5-conv CNN at 224x224
2.5x slower (0.47 s against 0.19 s), and batched explainers lost to one-image-at-a-time loops whose
small activations stay in the heap.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["keep_freed_memory"]

# mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: The highest mmap threshold older glibc accepts on 64-bit systems (4 MiB x sizeof(long)).
_GLIBC_MAX_MMAP_THRESHOLD = 32 << 20


def keep_freed_memory(max_block_bytes: int = 1 << 30) -> bool:
    """Ask glibc's ``malloc`` to keep freed blocks of up to ``max_block_bytes`` in the process.

    Sets ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD`` (what the ``MALLOC_MMAP_THRESHOLD_`` /
    ``MALLOC_TRIM_THRESHOLD_`` environment variables set at start-up) so that large tensors are
    reused from the heap instead of being mapped, zeroed and faulted in again at every allocation.
    The process's resident memory then stays at its peak instead of shrinking between forwards.
    It affects the whole process, so the library never calls it on its own; ``pami-explain`` and
    ``pami-evaluate`` do. Call it once, early, in a CPU job that explains or scores large images.

    Args:
        max_block_bytes: the largest freed block kept (default 1 GiB; at most 2 GiB - 1, as
            ``mallopt`` takes an ``int``).

    Returns:
        Whether glibc took both settings at ``max_block_bytes``: ``False`` off Linux, with another C
        library (musl, macOS, Windows), or where glibc only takes 32 MiB (it is then set to that).

    Example:
        >>> from pami_lightning import keep_freed_memory
        >>> isinstance(keep_freed_memory(), bool)
        True
    """
    if max_block_bytes < 0:
        raise ValueError(f"max_block_bytes must be >= 0; got {max_block_bytes}")
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # no C library by that name, or one without mallopt (musl)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    value = min(max_block_bytes, 2**31 - 1)  # mallopt takes an int
    # The mmap threshold first: a trim threshold set alone would freeze the mmap threshold at its
    # 128 KiB start (small activations then get mapped too: slower than the defaults). Older glibc
    # refuses thresholds above 32 MiB.
    if not mallopt(_M_MMAP_THRESHOLD, value):
        value = min(value, _GLIBC_MAX_MMAP_THRESHOLD)
        if not mallopt(_M_MMAP_THRESHOLD, value):
            return False
    return bool(mallopt(_M_TRIM_THRESHOLD, value)) and value >= max_block_bytes
