"""Numba-CUDA twin of the k-center kernels: block-level argmax reductions.

Each thread folds its rows (grid-stride) into Delta and keeps its own argmax; a
shared-memory tree reduces the block (larger value, then lower position); the few
block winners are reduced on the host with the CPU kernel's rule, so ties break
exactly as on the CPU.
"""

from __future__ import annotations

import numpy as np
from numba import cuda, float32, int64

from . import config, dispatch
from ._cuda_common import blocks_for, device_pool
from ._kcenter_cpu import reduce_argmax

_CACHE: dict = {}


def _build(load, tpb: int):
    @cuda.jit(device=True, inline=True)
    def block_argmax(best, arg, out_val, out_pos):
        sval = cuda.shared.array(tpb, float32)
        spos = cuda.shared.array(tpb, int64)
        t = cuda.threadIdx.x
        sval[t] = best
        spos[t] = arg
        cuda.syncthreads()
        s = tpb // 2
        while s > 0:
            if t < s:
                ov = sval[t + s]
                op = spos[t + s]
                mine = spos[t]
                if op >= 0 and (mine < 0 or ov > sval[t] or (ov == sval[t] and op < mine)):
                    sval[t] = ov
                    spos[t] = op
            cuda.syncthreads()
            s //= 2
        if t == 0:
            out_val[cuda.blockIdx.x] = sval[0]
            out_pos[cuda.blockIdx.x] = spos[0]

    @cuda.jit
    def step(x, rows, identity, centre, delta, out_val, out_pos):
        m = delta.shape[0]
        d = x.shape[1]
        best = float32(-np.inf)
        arg = int64(-1)
        i = cuda.blockIdx.x * tpb + cuda.threadIdx.x
        stride = cuda.gridDim.x * tpb
        while i < m:
            r = i if identity else rows[i]
            acc = float32(0.0)
            for j in range(d):
                diff = load(x[r, j]) - centre[j]
                acc += diff * diff
            v = min(delta[i], float32(acc))
            delta[i] = v
            if v > best:
                best = v
                arg = i
            i += stride
        block_argmax(best, arg, out_val, out_pos)

    @cuda.jit
    def init(x, rows, identity, centres, delta, out_val, out_pos):
        m = delta.shape[0]
        d = x.shape[1]
        best = float32(-np.inf)
        arg = int64(-1)
        i = cuda.blockIdx.x * tpb + cuda.threadIdx.x
        stride = cuda.gridDim.x * tpb
        while i < m:
            r = i if identity else rows[i]
            v = delta[i]
            for k in range(centres.shape[0]):
                acc = float32(0.0)
                for j in range(d):
                    diff = load(x[r, j]) - centres[k, j]
                    acc += diff * diff
                v = min(v, float32(acc))
            delta[i] = v
            if v > best:
                best = v
                arg = i
            i += stride
        block_argmax(best, arg, out_val, out_pos)

    return step, init


class CudaStepper:
    """Delta lives on the device; only the block winners come back each step."""

    name = dispatch.NUMBA_CUDA

    def __init__(self, x: np.ndarray, kind: str, rows: np.ndarray, identity: bool):
        self.tpb = config.CUDA_THREADS_PER_BLOCK
        self.x, load = device_pool(x, kind)
        key = (kind, self.tpb)
        if key not in _CACHE:
            _CACHE[key] = _build(load, self.tpb)
        self.k_step, self.k_init = _CACHE[key]
        self.rows = cuda.to_device(rows)
        self.identity = identity
        self.m = rows.size
        self.delta = cuda.to_device(np.full(rows.size, np.inf, dtype=np.float32))
        self.blocks = blocks_for(rows.size, self.tpb)
        self.out_val = cuda.device_array(self.blocks, dtype=np.float32)
        self.out_pos = cuda.device_array(self.blocks, dtype=np.int64)

    def _winner(self) -> tuple[float, int]:
        v, p = reduce_argmax(self.out_val.copy_to_host(), self.out_pos.copy_to_host())
        return float(v), int(p)

    def init(self, centres: np.ndarray) -> tuple[float, int]:
        self.k_init[self.blocks, self.tpb](self.x, self.rows, self.identity,
                                           cuda.to_device(centres.astype(np.float32)),
                                           self.delta, self.out_val, self.out_pos)
        return self._winner()

    def load(self, delta: np.ndarray) -> tuple[float, int]:
        self.delta = cuda.to_device(np.ascontiguousarray(delta, dtype=np.float32))
        p = int(np.argmax(delta))
        return float(delta[p]), p

    def step(self, centre: np.ndarray) -> tuple[float, int]:
        self.k_step[self.blocks, self.tpb](self.x, self.rows, self.identity,
                                           cuda.to_device(centre.astype(np.float32)),
                                           self.delta, self.out_val, self.out_pos)
        return self._winner()

    def mark(self, pos: int) -> None:
        self.delta[pos:pos + 1].copy_to_device(np.array([-1.0], dtype=np.float32))
