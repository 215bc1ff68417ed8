"""The machine's measured read bandwidth: a parallel sum over a 2 GB array.

The same compiled style as the kernels (chunks per thread, float32 partial sums,
vectorized), so the figure is what a streaming kernel can reach on this machine.
"""

from __future__ import annotations

import time

import numba
import numpy as np
from numba import njit, prange


@njit(parallel=True, nogil=True, fastmath=True)
def _chunked_sum(x, nchunks):
    n, d = x.shape
    per = (n + nchunks - 1) // nchunks
    out = np.zeros(nchunks, np.float32)
    for t in prange(nchunks):
        acc = np.float32(0.0)
        for i in range(t * per, min(n, (t + 1) * per)):
            for j in range(d):
                acc += x[i, j]
        out[t] = acc
    return out.sum()


def read_bandwidth(gigabytes: float = 2.0, repeats: int = 5) -> float:
    """Best-of-``repeats`` bytes per second of a parallel sum over ``gigabytes`` of float32."""
    rows = int(gigabytes * 1e9 / 4 / 1024)
    x = np.ones((rows, 1024), dtype=np.float32)
    nchunks = numba.get_num_threads() * 4
    _chunked_sum(x, nchunks)
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        _chunked_sum(x, nchunks)
        best = min(best, time.perf_counter() - t)
    return x.nbytes / best


if __name__ == "__main__":
    print(f"read bandwidth: {read_bandwidth() / 1e9:.1f} GB/s")
