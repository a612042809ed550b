"""The C heap of a command that reads a whole trace (report, recommend, export, convert): keep freed memory.

Those commands allocate and free large numpy and pyarrow buffers a column batch at a time. glibc's malloc
hands each freed one back to the kernel (an mmap'ed buffer past its threshold, or the heap's top past its
trim threshold), so the next batch faults the same pages in again: at a 1M-step export, 200,000 page faults
and ~0.7 s of system time, a quarter of the command. A top pad makes each heap growth keep 64 MiB more, and a
fixed mmap threshold and trim threshold keep the buffers in the heap and the heap's top in the process
(docs/BENCHMARKS.md: the same export, 24,000 page faults and ~0.3 s). The peak RSS grows by what is kept
(a 10M-step report: +60 MiB). Where the C library is not glibc, nothing changes.
"""
from __future__ import annotations

import ctypes

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3   # glibc's malloc.h
MiB = 1 << 20
SETTINGS = ((M_TOP_PAD, 64 * MiB), (M_TRIM_THRESHOLD, 256 * MiB), (M_MMAP_THRESHOLD, 32 * MiB))


def keep_freed_memory() -> bool:
    """Set glibc's malloc to keep what it frees (see the module's docstring); False where it cannot."""
    try:
        mallopt = ctypes.CDLL(None).mallopt   # the C library the interpreter runs on
    except (OSError, AttributeError, TypeError):   # no C library by that name, no mallopt in it
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return all(mallopt(k, v) == 1 for k, v in SETTINGS)
