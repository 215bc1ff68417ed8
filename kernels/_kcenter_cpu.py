"""Numba CPU kernels of k-center greedy: one fused pass per greedy step.

Each pass reads every candidate row once, computes its squared distance to the
newest centre, folds it into the running minimum ``delta`` and keeps a per-chunk
argmax; the chunk winners are reduced serially (a handful of values). Ties go to
the lower position, exactly like ``np.argmax`` over ``delta``. Chosen items hold
the sentinel -1 so they can never win again, even among exact duplicates.

Kernels never validate: ``assay.kernels.kcenter`` prepares their arguments.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from numba import prange

from .bits import LOADERS
from .config import FASTMATH
from .jit import kernel

_FLAGS = {"parallel": True, "nogil": True, "fastmath": set(FASTMATH)}


@kernel(nogil=True)
def reduce_argmax(best_val, best_pos):
    """Winner of the per-chunk maxima: largest value, lower position on ties."""
    val = -np.inf
    pos = -1
    for t in range(best_val.shape[0]):
        p = best_pos[t]
        if p < 0:
            continue
        v = best_val[t]
        if v > val or (v == val and p < pos):
            val = v
            pos = p
    return val, pos


def _build(load):
    """Compile the k-center kernels for one storage kind (``load`` widens a value)."""

    @kernel(**_FLAGS)
    def step(x, rows, identity, centre, delta, best_val, best_pos):
        """delta <- min(delta, |x - centre|^2) over candidates; per-chunk argmax."""
        m = delta.shape[0]
        d = x.shape[1]
        nchunks = best_val.shape[0]
        per = (m + nchunks - 1) // nchunks
        for t in prange(nchunks):
            lo = t * per
            hi = min(m, lo + per)
            top = np.float32(-np.inf)
            arg = -1
            for i in range(lo, hi):
                r = i if identity else rows[i]
                acc = np.float32(0.0)
                for j in range(d):
                    diff = load(x[r, j]) - centre[j]
                    acc += diff * diff
                v = min(delta[i], np.float32(acc))
                delta[i] = v
                if v > top:
                    top = v
                    arg = i
            best_val[t] = top
            best_pos[t] = arg
        return reduce_argmax(best_val, best_pos)

    @kernel(**_FLAGS)
    def init(x, rows, identity, centres, delta, best_val, best_pos):
        """delta <- min over a small centre set of |x - c|^2; per-chunk argmax."""
        m = delta.shape[0]
        d = x.shape[1]
        nc = centres.shape[0]
        nchunks = best_val.shape[0]
        per = (m + nchunks - 1) // nchunks
        for t in prange(nchunks):
            lo = t * per
            hi = min(m, lo + per)
            row = np.empty(d, centres.dtype)
            top = np.float32(-np.inf)
            arg = -1
            for i in range(lo, hi):
                r = i if identity else rows[i]
                for j in range(d):
                    row[j] = load(x[r, j])
                v = delta[i]
                for k in range(nc):
                    acc = np.float32(0.0)
                    for j in range(d):
                        diff = row[j] - centres[k, j]
                        acc += diff * diff
                    v = min(v, np.float32(acc))
                delta[i] = v
                if v > top:
                    top = v
                    arg = i
            best_val[t] = top
            best_pos[t] = arg
        return reduce_argmax(best_val, best_pos)

    return SimpleNamespace(step=step, init=init)


_KERNELS: dict[str, SimpleNamespace] = {}


def kernels(kind: str) -> SimpleNamespace:
    """The compiled kernels for a storage kind, built on first use."""
    if kind not in _KERNELS:
        _KERNELS[kind] = _build(LOADERS[kind])
    return _KERNELS[kind]
