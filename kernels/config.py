"""Numba flags and launch settings shared by every kernel, in one place.

Tests shrink ``CUDA_THREADS_PER_BLOCK`` so the multi-block reduction paths run
even on tiny inputs; benchmarks leave the defaults.
"""

from __future__ import annotations

import threading
from contextlib import AbstractContextManager, nullcontext

#: LLVM fast-math flags. ``reassoc`` lets LLVM vectorize the float32 sums of the
#: distance loops (several partial sums per row); no flag assumes finite values,
#: because the -1 sentinel and +inf initial distances must compare exactly.
FASTMATH: frozenset[str] = frozenset({"reassoc", "contract", "nsz", "arcp"})

#: Work chunks per Numba thread in a fused pass: each chunk keeps its own argmax
#: (the per-thread reduction), a few per thread balance uneven cores.
CHUNKS_PER_THREAD: int = 4

#: Labeled-set size above which the initial k-center distances come from a FAISS
#: exact search (BLAS) instead of the fused O(N * L * d) loop.
FAISS_LABELED_MIN: int = 256

#: Pool rows converted to float32 at a time where FAISS needs float32 input, so a
#: 16-bit pool is never copied whole.
FAISS_BLOCK_ROWS: int = 65_536

#: A factorized BADGE distance |g_x|^2 + |g_z|^2 - 2<.,.> below this fraction of
#: |g_x|^2 + |g_z|^2 is cancellation noise of the float32 dot products, not a
#: distance: it counts as 0, so exact duplicates of a pick are never drawn by noise.
BADGE_ZERO_REL: float = 1e-5

#: Threads per CUDA block of the reduction kernels (a power of two).
CUDA_THREADS_PER_BLOCK: int = 256

#: Pool values (rows x width) from which ``auto`` prefers a real GPU to the CPU.
GPU_MIN_VALUES: int = 1 << 22

_workqueue_lock = threading.Lock()


def parallel_section() -> AbstractContextManager:
    """Serialize parallel kernels only where Numba's threading layer requires it.

    The OpenMP and TBB layers accept parallel regions launched from several Python
    threads at once (that is what ``nogil`` buys: two Select calls on two cores);
    the fallback ``workqueue`` layer aborts the process instead, so under it the
    kernels take turns.
    """
    import numba

    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel region has run yet: the first one picks the layer
        return _workqueue_lock
    return _workqueue_lock if layer == "workqueue" else nullcontext()
