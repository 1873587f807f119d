"""Fewer glibc malloc arenas in a worker process.

glibc gives threads that allocate at the same time arenas of their own (up to 8 per core),
and what is freed in one arena serves only that arena again: a worker's RSS grows with how
many threads have ever allocated together (transfers in flight, the task runners' threads),
which reads as growth with the video's length. Measured with bench_memory (480p, 10 s against
10 min, the worker's peak): 145 -> 177 MiB with glibc's default; with 2 arenas 137 -> 153-154
MiB set here (two runs) and 137 -> 151 MiB from MALLOC_ARENA_MAX, at the same speed.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)
ARENAS = 2


def limit_arenas(count: int = ARENAS) -> bool:
    """Cap this process's malloc arenas; call it before any thread starts (glibc fixes the
    cap when it makes its first arena for a thread). `MALLOC_ARENA_MAX` does the same from
    a process's start (the Docker image sets it). False where the C library is not glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_ARENA_MAX, count))
    except (OSError, AttributeError):
        return False
