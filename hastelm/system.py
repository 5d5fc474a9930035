"""Facts about the machine this process runs on."""
from __future__ import annotations

import os


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 << 20       # glibc's ceiling on 64-bit
_TRIM_THRESHOLD = 512 << 20


def keep_freed_memory() -> bool:
    """Have glibc keep freed activation buffers (up to 32 MB each, 512 MB in all) for reuse instead
    of handing them back to the OS. torch's CPU allocator frees every activation after use; by
    default glibc returns blocks over ~1 MB to the kernel, and the next forward page-faults all of
    them back in, zeroed: ~100k faults in one 536-token prefill, a third of its time. Called after a
    model is loaded (the settings did not survive importing torch and loading). False where the C
    library is not glibc."""
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
                    and libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
    except (OSError, AttributeError):
        return False
