"""Keeping the process's memory near what it holds: glibc's allocator, tuned for many reader threads.

Lance reads on a pool of native threads, and glibc gives each thread its own malloc arena; memory freed in those
arenas stays mapped. Loading a million vectors then left ~0.6 GB resident beyond the vectors themselves (1.32x the
vectors at the peak, 1.26x after). Capping the arenas and handing free pages back after a bulk read brings the
peak under 1.3x and what stays to ~1.05x (benchmarks/bench_collection.py). Elsewhere than glibc both are no-ops.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger(__name__)

_M_ARENA_MAX = -8
ARENAS = 2
_libc: ctypes.CDLL | None = None
_limited = False


def _glibc() -> ctypes.CDLL | None:
    global _libc
    if _libc is None and sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            libc.malloc_trim  # noqa: B018 - glibc only (musl has none)
            _libc = libc
        except (OSError, AttributeError):
            return None
    return _libc


def limit_malloc_arenas(arenas: int = ARENAS) -> None:
    """Cap glibc's malloc arenas (once per process, before native reader threads start): ``MALLOC_ARENA_MAX``."""
    global _limited
    libc = _glibc()
    if libc is None or _limited:
        return
    _limited = True
    if not libc.mallopt(_M_ARENA_MAX, arenas):
        log.debug("mallopt(M_ARENA_MAX) was refused")


def release_free_memory() -> None:
    """Give the pages malloc holds free back to the system (after a bulk read; takes milliseconds)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
