"""Numba-CUDA twin of the BADGE kernels: one thread per candidate, D^2 on the device.

The running D^2 is copied back each step (8 bytes per candidate against the
pool's d * itemsize) so the draw runs on the host with exactly the CPU's
arithmetic: same seed, same picks on every backend up to float rounding.
"""

from __future__ import annotations

import numpy as np
from numba import cuda, float32, float64

from . import config, dispatch
from ._cuda_common import blocks_for, device_pool

_CACHE: dict = {}


def _build(load, tpb: int):
    zero_rel = config.BADGE_ZERO_REL
    @cuda.jit
    def sqnorms(h, rows, identity, out):
        i = cuda.grid(1)
        stride = cuda.gridDim.x * tpb
        while i < out.shape[0]:
            r = i if identity else rows[i]
            acc = float32(0.0)
            for j in range(h.shape[1]):
                v = load(h[r, j])
                acc += v * v
            out[i] = acc
            i += stride

    @cuda.jit
    def step(h, rows, identity, q, gnorm, hz, qz, gz, d2):
        i = cuda.grid(1)
        stride = cuda.gridDim.x * tpb
        while i < d2.shape[0]:
            r = i if identity else rows[i]
            hh = float32(0.0)
            for j in range(h.shape[1]):
                hh += load(h[r, j]) * hz[j]
            qq = float32(0.0)
            for k in range(q.shape[1]):
                qq += q[i, k] * qz[k]
            v = gnorm[i] + gz - 2.0 * float64(qq) * float64(hh)
            if v <= zero_rel * (gnorm[i] + gz):
                v = 0.0
            if v < d2[i]:
                d2[i] = v
            i += stride

    return sqnorms, step


class CudaBadge:
    """Same interface as the CPU runner; arrays live on the device."""

    name = dispatch.NUMBA_CUDA

    def __init__(self, h: np.ndarray, kind: str, rows: np.ndarray, identity: bool,
                 q: np.ndarray):
        self.tpb = config.CUDA_THREADS_PER_BLOCK
        self.h, load = device_pool(h, kind)
        key = (kind, self.tpb)
        if key not in _CACHE:
            _CACHE[key] = _build(load, self.tpb)
        self.k_norms, self.k_step = _CACHE[key]
        self.rows = cuda.to_device(rows)
        self.identity = identity
        self.q = cuda.to_device(np.ascontiguousarray(q, dtype=np.float32))
        self.blocks = blocks_for(rows.size, self.tpb)
        self.d2 = cuda.to_device(np.full(rows.size, np.inf))
        self.gnorm = None

    def norms(self, qnorm: np.ndarray) -> np.ndarray:
        hn = cuda.device_array(qnorm.size, dtype=np.float32)
        self.k_norms[self.blocks, self.tpb](self.h, self.rows, self.identity, hn)
        gnorm = qnorm * hn.copy_to_host().astype(np.float64)
        self.gnorm = cuda.to_device(gnorm)
        return gnorm

    def step(self, hz: np.ndarray, qz: np.ndarray, gz: float) -> np.ndarray:
        self.k_step[self.blocks, self.tpb](
            self.h, self.rows, self.identity, self.q, self.gnorm,
            cuda.to_device(hz.astype(np.float32)), cuda.to_device(qz.astype(np.float32)),
            gz, self.d2)
        return self.d2.copy_to_host()

    def mark(self, pos: int) -> None:
        self.d2[pos:pos + 1].copy_to_device(np.zeros(1))
