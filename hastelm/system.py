"""Facts about the machine this process runs on, and the process-wide memory settings (glibc's
malloc): one regime while a model loads, another while it runs."""
from __future__ import annotations

import ctypes
import os
import platform
from collections.abc import Iterator
from contextlib import contextmanager


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 << 20       # glibc's ceiling on 64-bit
_TRIM_THRESHOLD = 512 << 20
_LOAD_MMAP_THRESHOLD = 1 << 20


def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


@contextmanager
def loading_memory() -> Iterator[None]:
    """While a model loads (the target or a draft): buffers over 1 MB are mmapped and freed memory
    is trimmed by `release_free_memory`, so load-time temporaries never pile up into the peak RSS
    (glibc raises its mmap threshold after big frees and would keep them on the heap). Afterwards
    the running regime of `keep_freed_memory` applies again, whoever loaded last."""
    libc = _glibc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, _LOAD_MMAP_THRESHOLD)
    try:
        yield
    finally:
        release_free_memory()
        keep_freed_memory()


def release_free_memory() -> None:
    """Hand freed heap memory back to the OS now."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def keep_freed_memory() -> bool:
    """Have glibc keep freed activation buffers (up to 32 MB each, 512 MB in all) for reuse instead
    of handing them back to the OS. torch's CPU allocator frees every activation after use; by
    default glibc returns blocks over ~1 MB to the kernel, and the next forward page-faults all of
    them back in, zeroed: ~100k faults in one 536-token prefill, a third of its time. Set when a
    load ends (`loading_memory`). False where the C library is not glibc."""
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
                and libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
