"""Numba CPU kernel of BatchBALD: the per-candidate conditional joint entropy.

For a batch A with configurations m (exact or sampled) and the normalized joint
``jt[s, m] = P(y_A = m | w_s) / sum_s' P(y_A = m | w_s')``, a candidate x has

    p(c | m) = sum_s jt[s, m] * probs[x, s, c]        (a distribution over c)
    out[x]   = sum_m weight[m] * (-sum_c p(c | m) log p(c | m))

i.e. an [M x S] . [S x C] product per candidate followed by M * C logs. The
configurations are walked in tiles of ``TILE`` that stay in L1 with their
accumulators, so each candidate streams ``jt`` once from cache and nothing of
size M x C is ever written to memory. ``jt`` and ``weight`` are padded to a
multiple of ``TILE`` with zeros (0 log 0 = 0 and weight 0: padding adds nothing),
which gives every inner loop a constant trip count that LLVM vectorizes; members
are taken four at a time so each accumulator load and store serves four FMAs.

The float32 kernel uses a branch-free logarithm (exponent from the bits, then a
five-term atanh series on a mantissa in [1/sqrt 2, sqrt 2): relative error below
1e-7, under float32 rounding) because a libm call per value cannot be vectorized;
the float64 kernel calls ``log``. Kernels never validate: ``assay.kernels.batchbald``
prepares their arguments.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from .config import FASTMATH
from .jit import kernel

#: Configurations per tile: TILE * C accumulators and TILE * S joint values stay in L1.
TILE = 64

_FLAGS = {"parallel": True, "nogil": True, "fastmath": set(FASTMATH)}


@intrinsic
def _f32_bits(typingctx, x):
    sig = types.int32(types.float32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return sig, codegen


@intrinsic
def _bits_f32(typingctx, x):
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


@njit(inline="always", fastmath=set(FASTMATH))
def log32(v):
    """Natural log of a float32 >= 0, vectorizable; log(0) is about -88 (so 0 log 0 = 0).

    v = 2^e * m with m in [1/sqrt 2, sqrt 2); log m = 2 atanh(t), t = (m - 1) / (m + 1),
    |t| <= 0.172, summed to t^9 (truncation below 1e-9).
    """
    bits = _f32_bits(v)
    e = ((bits >> 23) & 0xFF) - 127
    m = _bits_f32((bits & 0x007FFFFF) | 0x3F800000)
    big = m > np.float32(1.4142135)
    m = m * np.float32(0.5) if big else m
    e = e + 1 if big else e
    t = (m - np.float32(1.0)) / (m + np.float32(1.0))
    t2 = t * t
    poly = np.float32(1.0) + t2 * (np.float32(1.0 / 3.0) + t2 * (
        np.float32(0.2) + t2 * (np.float32(1.0 / 7.0) + t2 * np.float32(1.0 / 9.0))))
    return np.float32(2.0) * t * poly + np.float32(e) * np.float32(0.6931471805599453)


@njit(inline="always")
def log64(v):
    """Natural log of a float64 > 0; callers only pass values > 0."""
    return np.log(v)


def _build(log, zero_guard):
    """Compile the conditional-entropy kernel for one logarithm.

    ``zero_guard``: the libm log of 0 is -inf (0 * -inf = NaN), so the float64
    kernel skips zero probabilities; the float32 log is finite at 0.
    """

    @kernel(**_FLAGS)
    def conditional_entropy(probs, jt, weight, out):
        """out[x] = sum_m weight[m] H(y_x | y_A = m) over the candidates' probs[x, s, c]."""
        n, s_count, c_count = probs.shape
        ntiles = jt.shape[1] // TILE
        s4 = s_count - s_count % 4
        for x in prange(n):
            acc = np.empty((c_count, TILE), dtype=jt.dtype)
            h = np.empty(TILE, dtype=jt.dtype)
            total = 0.0
            for tile in range(ntiles):
                lo = tile * TILE
                acc[:, :] = 0.0
                # Four members per pass: four FMAs per accumulator load and store.
                for s in range(0, s4, 4):
                    for c in range(c_count):
                        a0 = probs[x, s, c]
                        a1 = probs[x, s + 1, c]
                        a2 = probs[x, s + 2, c]
                        a3 = probs[x, s + 3, c]
                        for t in range(TILE):
                            acc[c, t] += ((jt[s, lo + t] * a0 + jt[s + 1, lo + t] * a1)
                                          + (jt[s + 2, lo + t] * a2 + jt[s + 3, lo + t] * a3))
                for s in range(s4, s_count):
                    for c in range(c_count):
                        a = probs[x, s, c]
                        for t in range(TILE):
                            acc[c, t] += jt[s, lo + t] * a
                h[:] = 0.0
                for c in range(c_count):
                    for t in range(TILE):
                        v = acc[c, t]
                        if zero_guard:
                            if v > 0.0:
                                h[t] -= v * log(v)
                        else:
                            h[t] -= v * log(v)
                part = 0.0
                for t in range(TILE):
                    part += weight[lo + t] * h[t]
                total += part
            out[x] = total

    return SimpleNamespace(conditional_entropy=conditional_entropy)


_KERNELS: dict[str, SimpleNamespace] = {}


def kernels(dtype: np.dtype) -> SimpleNamespace:
    """The compiled kernels for a compute precision (float32 or float64), built on first use."""
    key = np.dtype(dtype).name
    if key not in _KERNELS:
        _KERNELS[key] = _build(log32, False) if key == "float32" else _build(log64, True)
    return _KERNELS[key]
