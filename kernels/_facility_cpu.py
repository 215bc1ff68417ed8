"""Numba CPU kernels of facility location (max-cover) on cosine similarity.

A gain evaluation streams the universe once: sim(x, u) = <h_x, h_u> / (|h_x| |h_u|)
and gain = sum_u max(sim - cover[u], 0), summed in a fixed chunk order so that a
recomputed gain can never exceed its earlier value (float addition of smaller
terms in the same order is monotone): lazy greedy's bounds stay exact.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from numba import prange

from .bits import LOADERS
from .jit import kernel

_FLAGS = {"parallel": True, "nogil": True}


def _build(load):
    @kernel(**_FLAGS)
    def inv_norms(h, rows, out):
        """out[i] = 1 / |h_rows[i]| (0 for a zero row, whose similarities are 0)."""
        d = h.shape[1]
        for i in prange(rows.shape[0]):
            acc = 0.0
            for j in range(d):
                v = np.float64(load(h[rows[i], j]))
                acc += v * v
            out[i] = 1.0 / np.sqrt(acc) if acc > 0.0 else 0.0

    @kernel(**_FLAGS)
    def gain(h, universe, inv_u, centre, cover, sims, partial):
        """sims[u] = cos(centre, h_u); returns sum_u max(sims[u] - cover[u], 0)."""
        m = universe.shape[0]
        d = h.shape[1]
        nchunks = partial.shape[0]
        per = (m + nchunks - 1) // nchunks
        for t in prange(nchunks):
            lo = t * per
            hi = min(m, lo + per)
            acc = 0.0
            for i in range(lo, hi):
                r = universe[i]
                dot = 0.0
                for j in range(d):
                    dot += np.float64(load(h[r, j])) * centre[j]
                s = dot * inv_u[i]
                sims[i] = s
                g = s - cover[i]
                if g > 0.0:
                    acc += g
            partial[t] = acc
        total = 0.0
        for t in range(nchunks):
            total += partial[t]
        return total

    return SimpleNamespace(inv_norms=inv_norms, gain=gain)


_KERNELS: dict[str, SimpleNamespace] = {}


def kernels(kind: str) -> SimpleNamespace:
    """The compiled kernels for a storage kind, built on first use."""
    if kind not in _KERNELS:
        _KERNELS[kind] = _build(LOADERS[kind])
    return _KERNELS[kind]
