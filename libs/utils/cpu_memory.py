"""Process-wide setting of the C allocator for CPU training and inference.

PyTorch has no caching allocator on CPU: every activation of every step is a ``malloc``. glibc
serves blocks from 128 KiB up (a threshold that adapts up to 32 MiB) with fresh ``mmap`` pages,
and gives memory at the top of its heap back to the system on ``free``, so each step pays page
faults and the kernel's zeroing of every page again: 5-8 % of a THUMOS training step on this
project's 2-core benchmark machine (``tools/benchmark.py``). Serving blocks up to 32 MiB from the
heap and never trimming it keeps freed memory for the next step. Results are unchanged; the
process holds on to its peak resident memory instead of returning it between steps.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

__all__ = ["reuse_freed_memory"]

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_MMAP_THRESHOLD_MAX = 32 << 20      # glibc's upper bound for M_MMAP_THRESHOLD on 64-bit
_TOP_PAD = 64 << 20
_NEVER_TRIM = 2 ** 31 - 1

OPT_OUT_ENV = "ACTIONFORMER_DEFAULT_MALLOC"


def reuse_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse (see the module docstring).

    Returns True when applied; False on other C libraries, or when the environment variable
    ``ACTIONFORMER_DEFAULT_MALLOC=1`` asks to keep the allocator's defaults. Worker processes
    forked afterwards (data loaders) inherit the setting.
    """
    if os.environ.get(OPT_OUT_ENV) == "1":
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):        # not glibc (musl, macOS): nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    applied = [mallopt(param, value) == 1 for param, value in (
        (_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX), (_M_TRIM_THRESHOLD, _NEVER_TRIM),
        (_M_TOP_PAD, _TOP_PAD))]
    return all(applied)
