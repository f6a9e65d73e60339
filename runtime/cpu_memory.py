"""Keep freed CPU memory for reuse during training on the CPU.

PyTorch has no caching allocator on the CPU: every tensor comes from the C library's malloc.
glibc serves blocks above its mmap threshold (adaptive, at most 32 MiB) with a fresh mapping
and unmaps them on free, so each step faults in every large activation again, one 4 KiB page
at a time. The supermodel's task-stacked activations are T times larger than one task's, so
more of them cross the threshold: mobilenetv2 at 4x3x160x160 took 78,000 to 154,000 minor
faults per search step, resnet_tiny at the demo's sizes 14,000 to 16,000, and none at all
once freed blocks stay in the heap (benchmarks/NOTES.md). Raising the mmap and trim
thresholds does that: large blocks come from the heap and go back to it.
"""

from __future__ import annotations

import ctypes
import os

from mtsc.errors import MtscError

# mallopt(3) parameters, from glibc's malloc.h
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_KEEP_BYTES = 2**31 - 1  # mallopt takes an int: blocks up to 2 GiB stay in the heap

MALLOC_ENV = "MTSC_MALLOC"
MALLOC_CHOICES = ("keep", "system")


def keep_freed_memory() -> bool:
    """Set glibc's malloc to keep freed blocks for reuse; True when it now does.

    Off with ``MTSC_MALLOC=system``; left alone when ``GLIBC_TUNABLES`` already sets malloc,
    and on C libraries other than glibc. Process-wide and one-way: the heap then holds its
    high-water mark, as PyTorch's CUDA allocator holds its cached blocks.
    """
    choice = os.environ.get(MALLOC_ENV, "keep")
    if choice not in MALLOC_CHOICES:
        raise MtscError(
            None, f"{MALLOC_ENV} must be one of {', '.join(MALLOC_CHOICES)}, got {choice!r}"
        )
    if choice == "system" or "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    if not _is_glibc():
        return False
    libc = ctypes.CDLL(None)
    kept = libc.mallopt(_M_MMAP_THRESHOLD, _KEEP_BYTES) == 1
    return kept and libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES) == 1


def _is_glibc() -> bool:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION") is not None
    except (AttributeError, ValueError, OSError):  # no confstr, or no such name, off glibc
        return False
