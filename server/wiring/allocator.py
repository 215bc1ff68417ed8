"""The C allocator's thresholds, set so that message buffers are reused, not faulted in anew.

Every message gRPC receives becomes new buffers: its slices in the transport, then
one ``bytes`` of the whole message. glibc serves a block above its *mmap threshold*
with fresh pages from the kernel and unmaps them when it is freed, and gives the
heap's free top back to the kernel once it exceeds the *trim threshold*. Its
defaults adapt upward after the first large free (to that block's size, and twice
that), which for the 4 MiB chunks of an upload leaves the heap trimmed and grown
again every few messages: each page of each chunk was faulted in and zeroed on the
thread that receives, about a third of a raw stream's CPU on a 2-core machine.

Keeping blocks up to ``MMAP_THRESHOLD`` in the heap, and up to ``TRIM_THRESHOLD`` of
free top before trimming, made 40 MB uploads 20 % faster (best and median), for
about 30 MB more resident memory; small Selects did not change (docs/benchmarks.md).
Larger blocks (a 40 MB inline tensor) are still mapped and unmapped whole, so the
memory kept is bounded by the thresholds, not by the largest message.
"""

from __future__ import annotations

import ctypes
import os
import platform

#: Blocks up to this size come from the heap (the clients' chunks are 4 MiB).
MMAP_THRESHOLD = 8 << 20
#: Free memory the heap keeps at its top before giving it back to the kernel.
TRIM_THRESHOLD = 32 << 20
#: ``mallopt`` parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: Environment variables by which glibc takes the same settings; an operator's win.
ENVIRONMENT = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def _mallopt():
    """glibc's ``mallopt(param, value)``, or None where the C library has none."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt


def tune() -> str:
    """Set the thresholds for this process (a serving process's own); says what it did.

    Only glibc is tuned; where the operator set either threshold in the environment,
    glibc has taken theirs and nothing changes.
    """
    if platform.libc_ver()[0] != "glibc":
        return "allocator left as it is (not glibc)"
    if set_by := [name for name in ENVIRONMENT if name in os.environ]:
        return f"allocator thresholds from the environment ({', '.join(set_by)})"
    mallopt = _mallopt()
    if mallopt is None:
        return "allocator left as it is (no mallopt)"
    if not (mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
            and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)):
        return "allocator left as it is (mallopt refused the thresholds)"
    return (f"allocator: blocks up to {MMAP_THRESHOLD >> 20} MiB from the heap, "
            f"{TRIM_THRESHOLD >> 20} MiB of free heap kept")
