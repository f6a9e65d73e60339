"""Keep freed CPU memory for reuse during training.

PyTorch has no caching allocator on the CPU: every tensor comes from the C library's malloc.
glibc serves blocks above its mmap threshold (adaptive, at most 32 MiB) with a fresh mapping
and unmaps them on free, so each step faults in every large activation again, one 4 KiB page
at a time. The supermodel's task-stacked activations are T times larger than one task's, so
more of them cross the threshold: mobilenetv2 at 4x3x160x160 took 7,000 to 154,000 minor
faults per search step, resnet_tiny at the demo's sizes 14,000 to 16,000, and none at all
once freed blocks stay in the heap (benchmarks/NOTES.md). Raising the mmap and trim
thresholds does that: large blocks come from the heap and go back to it.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable

from mtsc.errors import MtscError

# mallopt(3) parameters, from glibc's malloc.h
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
_KEEP_BYTES = 2**31 - 1  # mallopt takes an int: blocks up to 2 GiB stay in the heap

MALLOC_ENV = "MTSC_MALLOC"
MALLOC_CHOICES = ("keep", "system")
# glibc's older spellings of its malloc settings; any of them means the user is tuning malloc
_LEGACY_MALLOC_ENV = (
    "MALLOC_MMAP_MAX_",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TOP_PAD_",
    "MALLOC_TRIM_THRESHOLD_",
)


def keep_freed_memory() -> bool:
    """Set glibc's malloc to keep freed blocks for reuse; True when it now does.

    Off with ``MTSC_MALLOC=system``; left alone when the user already sets malloc
    (``GLIBC_TUNABLES`` or glibc's ``MALLOC_*_`` variables), on C libraries other than glibc,
    and where another malloc (jemalloc, tcmalloc, mimalloc: ``LD_PRELOAD``) replaces glibc's,
    as mallopt would then tune an allocator nothing uses. Process-wide and one-way: the heap
    then holds its high-water mark, as PyTorch's CUDA allocator holds its cached blocks.
    """
    choice = os.environ.get(MALLOC_ENV) or "keep"
    if choice not in MALLOC_CHOICES:
        raise MtscError(
            None, f"{MALLOC_ENV} must be one of {', '.join(MALLOC_CHOICES)}, got {choice!r}"
        )
    user_set = "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", "") or any(
        name in os.environ for name in _LEGACY_MALLOC_ENV
    )
    if choice == "system" or user_set or not _mallocs_are_glibcs():
        return False
    return set_keeping(ctypes.CDLL(None).mallopt)


def set_keeping(mallopt: Callable[[int, int], int]) -> bool:
    """Raise the mmap threshold to 2 GiB, or where glibc caps it (at 32 MiB before 2.35),
    stop mapping blocks at all; then stop trimming the heap. True when both took."""
    no_fresh_maps = mallopt(_M_MMAP_THRESHOLD, _KEEP_BYTES) == 1 or mallopt(_M_MMAP_MAX, 0) == 1
    return no_fresh_maps and mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES) == 1


def _is_glibc() -> bool:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION") is not None
    except (AttributeError, ValueError, OSError):  # no confstr, or no such name, off glibc
        return False


def _mallocs_are_glibcs() -> bool:
    """Whether this process allocates with glibc's malloc: glibc, and the `malloc` the process
    resolves is libc's own, not one interposed with LD_PRELOAD."""
    if not _is_glibc():
        return False
    try:
        own = ctypes.CDLL("libc.so.6").malloc
    except OSError:  # glibc under another soname: no way to tell, so as before
        return True
    return _address(ctypes.CDLL(None).malloc) == _address(own)


def _address(function) -> int | None:
    return ctypes.cast(function, ctypes.c_void_p).value
