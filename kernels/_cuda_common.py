"""Pieces shared by the Numba-CUDA kernels: 16-bit loaders and device transfer.

float16 pools go to the device as float16 (the CUDA target has half arithmetic);
bfloat16 pools as uint16 bits, widened by exponent and mantissa arithmetic. Both
stay 16-bit in device memory, so a step streams half the bytes of float32.
Imported only when a CUDA backend runs, so ``numba.cuda`` is never loaded otherwise.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda, float32, int64

from .bits import BF16, FP16


@cuda.jit(device=True, inline=True)
def load_plain(x):
    return x


@cuda.jit(device=True, inline=True)
def load_half(x):
    return float32(x)


@cuda.jit(device=True, inline=True)
def load_bf16(b):
    """bfloat16 bits -> float32 without a bit cast: sign, 8-bit exponent, 7-bit mantissa."""
    w = int64(b)
    e = (w >> 7) & 0xFF
    m = w & 0x7F
    if e == 0:
        v = float32(m) * math.pow(2.0, -133)
    else:
        v = float32(m | 0x80) * math.pow(2.0, e - 134)
    return float32(-v) if w & 0x8000 else float32(v)


def device_pool(view: np.ndarray, kind: str):
    """Copy the pool to the device in its storage width; returns (array, loader)."""
    if kind == FP16:
        return cuda.to_device(np.ascontiguousarray(view.view(np.float16))), load_half
    if kind == BF16:
        return cuda.to_device(np.ascontiguousarray(view)), load_bf16
    return cuda.to_device(np.ascontiguousarray(view)), load_plain


def blocks_for(m: int, tpb: int) -> int:
    """One thread per candidate up to a grid cap; threads stride beyond it."""
    return max(1, min((m + tpb - 1) // tpb, 65_535))
