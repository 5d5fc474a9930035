"""Give freed load-time buffers back to the OS, so peak and steady RSS reflect the model only."""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_MMAP_THRESHOLD = -3


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def prefer_mmap_for_large_buffers(threshold: int = 1 << 20) -> None:
    """glibc raises its mmap threshold after big frees, so later multi-MB temporaries land on the
    heap and stay resident after free; pinning the threshold keeps them returnable."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, threshold)


def release_free_memory() -> None:
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
