"""The top ``b`` of a per-item score at memory speed, decided by float64 values only.

A score strategy needs all N scores only to keep the best ``b``. Here a first pass
computes each item's score cheaply (float32 with a vectorizable polynomial log,
or the exact value where it costs no more), the ``b``-th best approximate score
``t`` among the candidates is found, and only the items whose approximate score
is at least ``t - 2 E`` are kept, ``E`` a proven bound on the first pass's
absolute error: an item left out scores below ``t - E`` exactly, while at least
``b`` kept items score ``t - E`` or more, so every item that the float64 top-b
(ties included) could hold is kept. The caller rescores the kept items in float64
with the strategy's own exact kernel and orders them by the shared tie rule.

For least confident and margin, whose exact scores cost no more than approximate
ones, ``top_items`` runs one fused pass: blocks of rows are scored into a small
buffer, and each chunk of the pass keeps only the items at or above its own b-th
best so far, cutting its list back when full (its b-th best never exceeds the
global one, so nothing the top can hold is dropped), and no N-sized array is
written or read again. A pass that cannot cut (more equal scores than its buffer)
is redone unfused (``first`` then ``shortlist``). Scores are computed from blocks
of ``BLOCK_ROWS`` rows: for [S, N, C] samples, one read of each member's rows of
the block.

The polynomial log. ``log2 v = e + log2(1 + x)`` with ``v = 2^e (1 + x)``, ``x`` in
[0, 1) read from the float's bits, ``log2(1 + x) ~ x q(x)`` with ``q`` of degree
5 (a weighted least-squares fit, float32 coefficients) by Horner's rule in fused
multiply-adds where the target has them (a product and a sum otherwise). Every
operation is an IEEE float32 operation, compiled without fast-math, so the scalar
and vectorized code give the same bits and the error bound ``LOG_K`` holds for the
compiled code: it was measured over every float32 in [2^-126, 1]
(``max |L(v) - ln v| / (1 + |ln v|)`` by ``log_error`` over all 2^30 values:
1.512e-6 in separate roundings, 1.482e-6 fused), rounded up. Values below
2^-126 score 0 (``-v ln v < 1.1e-36``).

Kernels never validate; callers pass C-contiguous float32/float64 arrays.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from . import rowwise
from .bits import target_has
from .config import CHUNKS_PER_THREAD
from .jit import kernel

#: Bound on |L(v) - ln v| / (1 + |ln v|) over float32 v in [2^-126, 1], L the
#: polynomial log in nats (exhaustive maximum 1.512e-6, rounded up).
LOG_K = 1.6e-6
#: The float32 unit roundoff.
U32 = 2.0 ** -24
#: The float64 unit roundoff.
U64 = 2.0 ** -53
#: The smallest normal float32; below it a term counts as 0.
TINY = np.float32(2.0 ** -126)
#: An upper bound on -v ln v for 0 <= v < TINY.
TINY_TERM = 1.2e-36
#: Rows per block of the first passes: the block's terms stay in L1.
BLOCK_ROWS = 256
#: Values (rows x classes) from which the parallel variants are used.
PARALLEL_MIN_VALUES = 1 << 18

_F = np.float32
_LN2 = _F(math.log(2.0))
# log2(1 + x) ~ x q(x) on [0, 1), highest power first.
_Q5, _Q4, _Q3, _Q2, _Q1, _Q0 = (
    _F(-0.0264571625739336), _F(0.12345064431428909), _F(-0.2795372009277344),
    _F(0.4582703411579132), _F(-0.7182818055152893), _F(1.442553162574768),
)


@intrinsic
def _bits(typingctx, x):
    sig = types.int32(types.float32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return sig, codegen


@intrinsic
def _float(typingctx, i):
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


@intrinsic
def _fma(typingctx, a, b, c):
    """a * b + c in float32: one rounding (``llvm.fma``) where the target has FMA
    instructions, else a product and a sum, each rounded. Each is exact IEEE
    arithmetic, so scalar and vectorized code give the same bits on one target."""
    sig = types.float32(types.float32, types.float32, types.float32)

    def codegen(context, builder, signature, args):
        if target_has(context, "fma"):
            f32 = ir.FloatType()
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(f32, [f32, f32, f32]), "llvm.fma.f32")
            return builder.call(fn, args)
        return builder.fadd(builder.fmul(args[0], args[1]), args[2])

    return sig, codegen


@njit(inline="always")
def log2_with(v, q5, q4, q3, q2, q1, q0, one):
    """float32 log2 of a normal positive float32 ``v`` (no checks), the polynomial's
    constants passed in (``COEFFICIENTS``): e + x q(x), Horner's rule in fused
    multiply-adds (about 8 % faster than separate roundings on this EPYC)."""
    i = _bits(v)
    e = _F((i >> 23) - 127)
    x = _float((i & 0x007FFFFF) | 0x3F800000) - one
    q = _fma(q5, x, q4)
    q = _fma(q, x, q3)
    q = _fma(q, x, q2)
    q = _fma(q, x, q1)
    q = _fma(q, x, q0)
    return _fma(x, q, e)


@njit(inline="always")
def log2_poly(v):
    """``log2_with`` with the module's constants: what ``LOG_K`` was measured on."""
    return log2_with(v, _Q5, _Q4, _Q3, _Q2, _Q1, _Q0, _F(1.0))


#: The polynomial's constants as data: kernels read them once per block into locals,
#: so the vectorized log loop keeps them in registers (as compile-time constants they
#: were reloaded from memory in every iteration: about a third of the loop's
#: instructions). The same IEEE operations in the same order: the same bits.
COEFFICIENTS = np.array([_Q5, _Q4, _Q3, _Q2, _Q1, _Q0, TINY, 1.0, 0.0], dtype=np.float32)


@njit(inline="always")
def xlog2x_with(v, q5, q4, q3, q2, q1, q0, tiny, one):
    """v log2 v (<= 0) for float32 ``v`` in [0, 1], 0 below ``tiny`` (``TINY``)."""
    t = v * log2_with(v, q5, q4, q3, q2, q1, q0, one)
    return t if v >= tiny else _F(0.0)


def _entropy_block(width):
    if width and width % 2 == 0:
        return _entropy_block_by_pairs(width)

    @njit(inline="always")
    def block(p, r0, r1, out, terms, values, coef):
        """out[r - r0] ~ -sum_j p[r, j] ln p[r, j] (float32) for rows r0..r1; returns
        the largest row sum. ``terms`` and ``values`` hold BLOCK_ROWS x C floats,
        ``coef`` is ``COEFFICIENTS``."""
        c = width if width else p.shape[1]
        q5, q4, q3, q2, q1, q0 = coef[0], coef[1], coef[2], coef[3], coef[4], coef[5]
        tiny, one, zero = coef[6], coef[7], coef[8]
        # a slice from 0: its indices need no negative-index wraparound
        src = p.reshape(-1)[r0 * c:r1 * c]
        for k in range((r1 - r0) * c):
            v = min(max(_F(src[k]), zero), one)
            values[k] = v
            terms[k] = xlog2x_with(v, q5, q4, q3, q2, q1, q0, tiny, one)
        top = _F(0.0)
        for r in range(r1 - r0):
            acc = _F(0.0)
            mass = _F(0.0)
            for j in range(r * c, r * c + c):
                acc += terms[j]
                mass += values[j]
            out[r] = -(acc * _LN2)
            top = max(top, mass)
        return top

    return block


def _entropy_block_by_pairs(width):
    half = width // 2

    @njit(inline="always")
    def block(p, r0, r1, out, terms, values, coef):
        """The entropy block for an even width: the vectorized loop adds each pair
        of neighbouring terms (and values), so the rows' sums, which stay scalar,
        add C / 2 pairs (about 20 % faster for C = 10). The same C-term float32 sums
        in another order: within the same bound."""
        q5, q4, q3, q2, q1, q0 = coef[0], coef[1], coef[2], coef[3], coef[4], coef[5]
        tiny, one, zero = coef[6], coef[7], coef[8]
        src = p.reshape(-1)[r0 * width:r1 * width]
        for k in range((r1 - r0) * half):
            v0 = min(max(_F(src[2 * k]), zero), one)
            v1 = min(max(_F(src[2 * k + 1]), zero), one)
            values[k] = v0 + v1
            terms[k] = (xlog2x_with(v0, q5, q4, q3, q2, q1, q0, tiny, one)
                        + xlog2x_with(v1, q5, q4, q3, q2, q1, q0, tiny, one))
        top = _F(0.0)
        for r in range(r1 - r0):
            acc = _F(0.0)
            mass = _F(0.0)
            for j in range(r * half, r * half + half):
                acc += terms[j]
                mass += values[j]
            out[r] = -(acc * _LN2)
            top = max(top, mass)
        return top

    return block


def _bald_block(width):
    @njit(inline="always")
    def block(samples, r0, r1, out, mass, plogp, coef):
        """out[r - r0] ~ H(mean_s p) - mean_s H(p) (float32) for items r0..r1; returns
        the largest row sum of the mean.

        One pass over [S, N, C]: each member's rows of the block are read once and
        folded into two running sums per (item, class), sum_s p and sum_s p log p,
        so the members' logs never need a per-row reduction.
        """
        s_count = samples.shape[0]
        c = width if width else samples.shape[2]
        q5, q4, q3, q2, q1, q0 = coef[0], coef[1], coef[2], coef[3], coef[4], coef[5]
        tiny, one, zero = coef[6], coef[7], coef[8]
        span = (r1 - r0) * c
        inv_s = _F(1.0) / _F(s_count)
        mass[:span] = 0.0
        plogp[:span] = 0.0
        for s in range(s_count):
            flat = samples[s, r0:r1].reshape(-1)
            for k in range(span):
                v = min(max(_F(flat[k]), zero), one)
                mass[k] += v
                plogp[k] += xlog2x_with(v, q5, q4, q3, q2, q1, q0, tiny, one)
        for k in range(span):
            m = mass[k] * inv_s
            # H(mean) - mean H, per (item, class), in log2 units
            plogp[k] = plogp[k] * inv_s - xlog2x_with(m, q5, q4, q3, q2, q1, q0, tiny, one)
            mass[k] = m
        top = _F(0.0)
        for r in range(r1 - r0):
            acc = _F(0.0)
            total = _F(0.0)
            for j in range(r * c, r * c + c):
                acc += plogp[j]
                total += mass[j]
            out[r] = acc * _LN2
            top = max(top, total)
        return top

    return block


def _least_confident_block(width):
    @njit(inline="always")
    def block(p, r0, r1, out, unused_a, unused_b, unused_coef):
        """Exact float64 least-confidence of rows r0..r1 (``rowwise.least_confident_row``)."""
        c = width if width else p.shape[1]
        for r in range(r0, r1):
            out[r - r0] = rowwise.least_confident_row(p, r, c)
        return _F(0.0)

    return block


def _margin_block(width):
    @njit(inline="always")
    def block(p, r0, r1, out, unused_a, unused_b, unused_coef):
        """Exact float64 margins of rows r0..r1 (``rowwise.margin_row``)."""
        c = width if width else p.shape[1]
        for r in range(r0, r1):
            out[r - r0] = rowwise.margin_row(p, r, c)
        return _F(0.0)

    return block


def _first_for(block):
    def first(array, out, smax, bmax, coef):
        """out[i]: every item's block score; smax[block]: the block's largest row sum;
        bmax[block]: its largest score (NaN if a score is NaN); coef: ``COEFFICIENTS``."""
        n = array.shape[-2]
        c = array.shape[-1]
        blocks = (n + BLOCK_ROWS - 1) // BLOCK_ROWS
        for b in prange(blocks):
            r0 = b * BLOCK_ROWS
            r1 = min(n, r0 + BLOCK_ROWS)
            a = np.empty(BLOCK_ROWS * c, dtype=np.float32)
            w = np.empty(BLOCK_ROWS * c, dtype=np.float32)
            scores = out[r0:r1]
            smax[b] = block(array, r0, r1, scores, a, w, coef)
            best = scores[0]
            odd = False
            for r in range(1, r1 - r0):
                best = max(best, scores[r])
                odd |= scores[r] != scores[r]
            bmax[b] = np.nan if odd or best != best else best

    return first


def _top_for(block):
    def top(array, budget, error, keep, every, vals, items, counts, smax, scratch):
        """Each chunk's items that can be in the top ``budget``, scored by ``block``.

        Chunk k (of vals.shape[0]) keeps in vals[k], items[k] every item scoring at
        least (its b-th best so far) - 2 ``error``; when its row is full the kept
        ones are cut back to that bound, and if that frees less than a quarter
        (many near-equal scores) counts[k] = -1 and the chunk stops: the caller
        then takes the unfused path. Items with keep[i] False are skipped unless
        ``every``. smax[k] is the chunk's largest row sum; scratch[k] holds a
        block's scores.
        """
        n = array.shape[-2]
        c = array.shape[-1]
        chunks, cap = vals.shape
        per = (n + chunks - 1) // chunks
        for k in prange(chunks):
            lo = min(n, k * per)
            hi = min(n, lo + per)
            scores = scratch[k]
            count = 0
            floor = -np.inf
            top_mass = _F(0.0)
            full = False
            for r0 in range(lo, hi, BLOCK_ROWS):
                if full:
                    break
                r1 = min(hi, r0 + BLOCK_ROWS)
                # fresh per block, as in ``first``: LLVM then vectorizes without alias checks
                a = np.empty(BLOCK_ROWS * c, dtype=np.float32)
                w = np.empty(BLOCK_ROWS * c, dtype=np.float32)
                top_mass = max(top_mass, block(array, r0, r1, scores, a, w, a))
                for r in range(r1 - r0):
                    v = np.float64(scores[r])
                    if v < floor or not (every or keep[r0 + r]):
                        continue
                    if count == cap:
                        ordered = np.sort(vals[k, :count])
                        floor = ordered[count - budget] - 2.0 * error
                        kept = 0
                        for j in range(count):
                            if vals[k, j] >= floor:
                                vals[k, kept] = vals[k, j]
                                items[k, kept] = items[k, j]
                                kept += 1
                        count = kept
                        if count > cap - cap // 4:
                            full = True
                            break
                        if v < floor:
                            continue
                    vals[k, count] = v
                    items[k, count] = r0 + r
                    count += 1
            counts[k] = -1 if full else count
            smax[k] = top_mass

    return top


def _variation_ratio_exact_for(width):
    def _variation_ratio_exact(samples, out):
        """out[i] = 1 - (modal vote count) / S, votes the members' argmax (first maximum)."""
        s_count, n = samples.shape[0], samples.shape[1]
        c = width if width else samples.shape[2]
        blocks = (n + BLOCK_ROWS - 1) // BLOCK_ROWS
        for b in prange(blocks):
            r0 = b * BLOCK_ROWS
            r1 = min(n, r0 + BLOCK_ROWS)
            counts = np.zeros((r1 - r0, c), dtype=np.int32)
            for s in range(s_count):
                rows = samples[s, r0:r1]
                for r in range(r1 - r0):
                    # the largest value, then the first class holding it: two
                    # branch-free passes (random rows mispredict a running argmax)
                    best = rows[r, 0]
                    for j in range(1, c):
                        best = max(best, rows[r, j])
                    vote = c - 1
                    for j in range(c - 1, -1, -1):
                        vote = j if rows[r, j] == best else vote
                    counts[r, vote] += 1
            for r in range(r1 - r0):
                top = 0
                for j in range(c):
                    top = max(top, counts[r, j])
                out[r0 + r] = 1.0 - top / s_count

    return _variation_ratio_exact

def _bald_exact_for(width):
    def _bald_exact(samples, out):
        """out[i] = H(mean_s p) - mean_s H(p) in float64, values clipped into [0, 1].

        Each sum runs in a fixed order (members in order, classes in order), so an
        item's score does not depend on which other items are in ``samples``.
        """
        s_count, n = samples.shape[0], samples.shape[1]
        c = width if width else samples.shape[2]
        for i in prange(n):
            mean_h = 0.0
            for s in range(s_count):
                h = 0.0
                for j in range(c):
                    v = min(max(np.float64(samples[s, i, j]), 0.0), 1.0)
                    if v > 0.0:
                        h -= v * math.log(v)
                mean_h += h
            mean_h /= s_count
            h_mean = 0.0
            for j in range(c):
                m = 0.0
                for s in range(s_count):
                    m += min(max(np.float64(samples[s, i, j]), 0.0), 1.0)
                m /= s_count
                if m > 0.0:
                    h_mean -= m * math.log(m)
            out[i] = h_mean - mean_h

    return _bald_exact

def _kth_largest(values, b, candidates, every):
    """The ``b``-th largest of values[candidates] (of all values when ``every``).

    One pass keeping a buffer of the best values seen: when it holds 2b, it is cut
    back to its best b and the cut-off rises, so later values below it are skipped.
    """
    m = values.size if every else candidates.size
    buf = np.empty(2 * b, dtype=values.dtype)
    count = 0
    floor = -np.inf
    for k in range(m):
        v = values[k] if every else values[candidates[k]]
        if v > floor or count < b:
            buf[count] = v
            count += 1
            if count == 2 * b:
                kept = np.sort(buf)[b:]
                buf[:b] = kept
                count = b
                floor = kept[0]
    return np.sort(buf[:count])[count - b]


def _at_least(values, lower, candidates, every):
    """Sorted item indices (among candidates) whose value is >= ``lower``."""
    m = values.size if every else candidates.size
    count = 0
    for k in range(m):
        v = values[k] if every else values[candidates[k]]
        if v >= lower:
            count += 1
    out = np.empty(count, dtype=np.int64)
    count = 0
    for k in range(m):
        item = k if every else candidates[k]
        if values[item] >= lower:
            out[count] = item
            count += 1
    return out


def _kth_in_blocks(values, bmax, floor, b):
    """The ``b``-th largest of values, all of which >= ``floor`` lie in blocks of
    ``BLOCK_ROWS`` whose maximum bmax is >= floor (and at least b values are)."""
    count = 0
    for k in range(bmax.size):
        if bmax[k] >= floor:
            for i in range(k * BLOCK_ROWS, min(values.size, (k + 1) * BLOCK_ROWS)):
                count += values[i] >= floor
    buf = np.empty(count, dtype=values.dtype)
    count = 0
    for k in range(bmax.size):
        if bmax[k] >= floor:
            for i in range(k * BLOCK_ROWS, min(values.size, (k + 1) * BLOCK_ROWS)):
                if values[i] >= floor:
                    buf[count] = values[i]
                    count += 1
    return np.sort(buf)[count - b]


def _at_least_in_blocks(values, bmax, lower):
    """Sorted indices of the values >= ``lower``, reading only blocks whose maximum is."""
    count = 0
    for k in range(bmax.size):
        if bmax[k] >= lower:
            for i in range(k * BLOCK_ROWS, min(values.size, (k + 1) * BLOCK_ROWS)):
                count += values[i] >= lower
    out = np.empty(count, dtype=np.int64)
    count = 0
    for k in range(bmax.size):
        if bmax[k] >= lower:
            for i in range(k * BLOCK_ROWS, min(values.size, (k + 1) * BLOCK_ROWS)):
                if values[i] >= lower:
                    out[count] = i
                    count += 1
    return out


_SERIAL = {f.__name__: kernel(nogil=True)(f)
           for f in (_kth_largest, _at_least, _kth_in_blocks, _at_least_in_blocks)}


def _composed(driver, make):
    """A width template: ``driver`` (a whole-array kernel) around ``make(width)``'s block."""
    return lambda width: driver(make(width))


#: Kinds of first pass: approximate (float32, with an error bound) or exact (float64).
APPROXIMATE = ("entropy", "bald")
EXACT = ("least_confident", "margin")


_BLOCKS = {
    "entropy": _entropy_block,
    "bald": _bald_block,
    "least_confident": _least_confident_block,
    "margin": _margin_block,
}
_TEMPLATES = {
    "_variation_ratio_exact": _variation_ratio_exact_for,
    "_bald_exact": _bald_exact_for,
    **{f"_{name}_first": _composed(_first_for, make) for name, make in _BLOCKS.items()},
    **{f"_{name}_top": _composed(_top_for, _BLOCKS[name]) for name in EXACT},
}


def _run(name: str, array: np.ndarray, *args):
    return rowwise.call(_TEMPLATES, name, array.size >= PARALLEL_MIN_VALUES, array, *args)


def variants(name: str, width: int = 0) -> tuple:
    """The (serial, parallel) compiled twins of kernel ``name`` for rows of ``width``
    classes (0: any width)."""
    return rowwise.by_width(_TEMPLATES, name, width)


def gamma(k: int, u: float) -> float:
    """Higham's gamma_k = k u / (1 - k u): the relative error bound of k roundings."""
    return k * u / (1.0 - k * u)


def _entropy_bound(c: int, mass: float) -> float:
    """Largest -sum v ln v over rows of C values in [0, 1] summing to at most ``mass``."""
    return mass * math.log(max(c, 2)) + 1.0 / math.e


def entropy_error(c: int, smax: float) -> float:
    """Bound on |first-pass entropy - float64 entropy| for rows of C values in [0, 1]
    whose sums are at most ``smax``.

    Terms: the log (``LOG_K (sum v + H)``), the float32 products and the C-term
    float32 sum in any order (``(u + gamma_C) H``, the terms all of one sign: row by
    row, or pairs of neighbours first for an even width), the final scaling
    by ln 2 (2u H), float64 inputs rounded to float32 (``u (H + sum v)``), terms
    flushed below 2^-126 (``C TINY_TERM``), and the float64 reference's own
    rounding (``gamma64_{C+2} H``); doubled for safety.
    """
    h = _entropy_bound(c, smax)
    rel = LOG_K + 4 * U32 + gamma(c, U32) + gamma(c + 2, U64)
    return 2.0 * ((LOG_K + U32) * smax + rel * h + c * TINY_TERM)


def bald_error(s: int, c: int, smax: float) -> float:
    """Bound on |first-pass BALD - float64 BALD| for S members of C values in [0, 1]
    whose means per item sum to at most ``smax``.

    BALD is H(mean) - mean H; each part is bounded as in ``entropy_error``, the
    mean's own float32 rounding (``gamma_{S+1}``, relative per class) moves
    H(mean) by at most ``gamma_{S+1} (H + sum m)``, the S-term float32 sums of the
    members' terms add ``gamma_S H``, and the float64 reference rounds over S + C + 2
    steps; doubled for safety.
    """
    h = _entropy_bound(c, smax)
    g_s = gamma(s + 1, U32)
    rel = LOG_K + 4 * U32 + gamma(c + 1, U32) + g_s + gamma(s + c + 2, U64)
    per_part = (LOG_K + U32 + g_s) * smax + rel * h + c * TINY_TERM
    return 2.0 * (2.0 * per_part)


def error_bound(kind: str, array: np.ndarray, mass: float) -> float:
    """The first pass's error bound for rows (or S members' rows) summing to at most ``mass``."""
    if kind == "entropy":
        return entropy_error(array.shape[-1], mass)
    if kind == "bald":
        return bald_error(array.shape[0], array.shape[-1], mass)
    return 0.0


def _mass(kind: str, array: np.ndarray, smax: np.ndarray) -> float:
    """The largest row sum, from the float32 sums of the pass, rounded up."""
    steps = array.shape[-1] + (array.shape[0] + 2 if kind == "bald" else 0)
    return float(smax.max()) * (1.0 + gamma(steps, U32)) if smax.size else 0.0


def first(kind: str, array: np.ndarray) -> tuple[np.ndarray, float]:
    """Every item's first-pass score and its error bound: float32 within the bound
    for ``APPROXIMATE`` kinds, the exact float64 scores (bound 0) for ``EXACT`` ones.
    ``array``: probs float[N, C], or samples float[S, N, C] for bald."""
    out, error, _ = _first_with_blocks(kind, array)
    return out, error


def _first_with_blocks(kind: str, array: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    """``first``, and the largest score of each block of ``BLOCK_ROWS`` items."""
    n = array.shape[-2]
    out = np.empty(n, dtype=np.float32 if kind in APPROXIMATE else np.float64)
    blocks = (n + BLOCK_ROWS - 1) // BLOCK_ROWS
    smax = np.zeros(blocks, dtype=np.float32)
    bmax = np.empty(blocks, dtype=out.dtype)
    _run(f"_{kind}_first", array, out, smax, bmax, COEFFICIENTS)
    return out, error_bound(kind, array, _mass(kind, array, smax)), bmax


def entropy_first(p: np.ndarray) -> tuple[np.ndarray, float]:
    """(float32[N] approximate entropies, their error bound) of rows ``p: float[N, C]``."""
    return first("entropy", p)


def bald_first(samples: np.ndarray) -> tuple[np.ndarray, float]:
    """(float32[N] approximate BALD scores, their error bound) of ``samples: float[S, N, C]``."""
    return first("bald", samples)


def top_items(kind: str, array: np.ndarray, budget: int,
              candidates: np.ndarray | None) -> np.ndarray:
    """Sorted candidate indices holding every item of the exact top ``budget`` of
    ``kind`` (ties included), and few others. ``candidates``: sorted unique item
    indices, or None for every item.

    ``APPROXIMATE`` kinds: ``first`` then ``shortlist`` (a fused pass measured
    slower here: the log loop vectorizes less well inside it). ``EXACT`` kinds:
    one fused pass that keeps only the items that can still reach the top, so no
    N-sized array is written or read again; where it cannot cut (more equal scores
    than its buffers hold) the scores of all items are computed and cut.
    """
    if kind in APPROXIMATE:
        scores, error, bmax = _first_with_blocks(kind, array)
        if _every(candidates, scores.size):
            return shortlist_by_blocks(scores, bmax, error, budget)
        return shortlist(scores, error, budget, candidates)
    n = array.shape[-2]
    every = _every(candidates, n)
    keep = np.ones(1, dtype=np.bool_)
    if not every:
        keep = np.zeros(n, dtype=np.bool_)
        keep[candidates] = True
    parallel = array.size >= PARALLEL_MIN_VALUES
    chunks = numba.get_num_threads() * CHUNKS_PER_THREAD if parallel else 1
    chunks = max(1, min(chunks, (n + BLOCK_ROWS - 1) // BLOCK_ROWS))
    cap = max(4 * budget, 1024)
    vals = np.empty((chunks, cap), dtype=np.float64)
    items = np.empty((chunks, cap), dtype=np.int64)
    counts = np.zeros(chunks, dtype=np.int64)
    smax = np.zeros(chunks, dtype=np.float32)
    scratch = np.empty((chunks, BLOCK_ROWS), dtype=np.float64)
    rowwise.call(_TEMPLATES, f"_{kind}_top", parallel, array, budget, 0.0, keep, every, vals,
                 items, counts, smax, scratch)
    if (counts < 0).any():
        scores, error = first(kind, array)
        return shortlist(scores, error, budget, candidates)
    values = np.concatenate([vals[k, :counts[k]] for k in range(chunks)])
    found = np.concatenate([items[k, :counts[k]] for k in range(chunks)])
    t = np.partition(values, values.size - budget)[values.size - budget]
    return np.sort(found[values >= t])


def exact(name: str, array: np.ndarray) -> np.ndarray:
    """float64[N] scores by exact kernel ``name`` (variation_ratio, bald) of
    ``samples: float[S, N, C]``."""
    n = array.shape[1]
    out = np.empty(n, dtype=np.float64)
    _run(f"_{name}_exact", array, out)
    return out


def _lower_bound(approx: np.ndarray, t: float, error: float):
    """The cut of ``shortlist``: t - 2 error, as a value of approx's dtype rounded down."""
    lower = t - 2.0 * error if error > 0 else t
    if approx.dtype == np.float32:
        # the largest float32 <= lower, so no kept value is lost to rounding
        low32 = np.float32(lower)
        if float(low32) > lower:
            low32 = np.nextafter(low32, np.float32(-np.inf))
        return low32
    return np.float64(lower)


def shortlist_by_blocks(approx: np.ndarray, bmax: np.ndarray, error: float,
                        budget: int) -> np.ndarray:
    """``shortlist`` over all items, reading only the blocks that can hold a kept item.

    bmax[k]: the largest of approx over block k (``BLOCK_ROWS`` items). The
    ``budget``-th largest block maximum t0 is at most the ``budget``-th largest
    score t (``budget`` blocks hold a score >= t0), so every score >= t lies in a
    block whose maximum is >= t0, and the kept scores (>= t - 2 error) in blocks
    whose maximum reaches that cut: the same items as ``shortlist``, from a few
    blocks instead of all N scores. Falls back to ``shortlist`` with fewer blocks
    than ``budget`` or a NaN score.
    """
    if bmax.size < budget or np.isnan(bmax).any():
        return shortlist(approx, error, budget, None)
    t0 = np.partition(bmax, bmax.size - budget)[bmax.size - budget]
    t = float(_SERIAL["_kth_in_blocks"](approx, bmax, t0, budget))
    return _SERIAL["_at_least_in_blocks"](approx, bmax, _lower_bound(approx, t, error))


def shortlist(approx: np.ndarray, error: float, budget: int,
              candidates: np.ndarray | None) -> np.ndarray:
    """Sorted candidate indices that hold every item of the exact top ``budget``.

    ``approx`` are first-pass scores within ``error`` of the exact ones (0: they
    are exact). Keeps the candidates (None: every item) with ``approx >= t - 2
    error``, ``t`` the ``budget``-th largest ``approx`` among the candidates
    (1 <= budget <= candidates).
    """
    every = _every(candidates, approx.size)
    cand = _NONE if every else np.asarray(candidates, dtype=np.int64)
    t = float(_SERIAL["_kth_largest"](approx, budget, cand, every))
    return _SERIAL["_at_least"](approx, _lower_bound(approx, t, error), cand, every)


#: The candidates argument of the compiled cuts when every item is one (not read).
_NONE = np.empty(0, dtype=np.int64)


def _every(candidates: np.ndarray | None, n: int) -> bool:
    """Whether ``candidates`` (sorted, unique, or None) are all ``n`` items."""
    return candidates is None or candidates.size == n


def log_error(step: int = 1) -> float:
    """max |L(v) - ln v| / (1 + |ln v|) over float32 v in [2^-126, 1] (every
    ``step``-th one): the measurement behind ``LOG_K``."""
    return float(_log_error(0x00800000, 0x3F800001, step))


@kernel(nogil=True)
def _log_error(lo, hi, step):
    worst = 0.0
    for i in range(lo, hi, step):
        v = _float(np.int32(i))
        w = np.float64(v)
        ln = math.log(w)
        approx = np.float64(log2_poly(v)) * math.log(2.0)
        worst = max(worst, abs(approx - ln) / (1.0 + abs(ln)))
    return worst
