"""Fused per-row kernels over class probabilities: validation and uncertainty scores.

Small inline Selects are dominated by per-request overhead, and the NumPy path
makes several passes over the rows (a float64 copy, a clip, ``entr``, a sum, the
finite/range/row-sum checks, each with its own temporary). These kernels read
each row once, accumulate in float64 and allocate only their output, which is
what lets a sidecar answer many small requests per second on two cores.

Only float32 and float64 rows take this path (Numba has no float16 arithmetic);
callers fall back to NumPy for 16-bit inputs. Kernels never validate shapes.
"""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
from numba import njit, prange

from .jit import kernel

#: Values (rows x classes) from which the parallel variant pays for waking threads;
#: below it the serial variant is several times faster, most of all on a busy host.
PARALLEL_MIN_VALUES = 1 << 20

#: First offending row of each check, -1 when none.
NO_ROW = -1


#: Rows per block of ``probability_rows_check``'s pass (the block stays in L1).
CHECK_ROWS = 256


@njit(inline="always")
def _row_state(p, i, c, lo, hi, sum_tol):
    """0 for a good row i, else its problem: 1 non-finite, 2 out of range, 3 bad sum."""
    total = 0.0
    state = 0
    for j in range(c):
        v = np.float64(p[i, j])
        if not math.isfinite(v):
            state = 1
            break
        if v < lo or v > hi:
            state = 2
        total += v
    if state == 0 and abs(total - 1.0) > sum_tol:
        state = 3
    return state


def probability_rows_check(p, lo, hi, sum_tol):
    """Return (first non-finite row, first out-of-range row, first bad-sum row).

    A row is non-finite if it holds a NaN or Inf; else out of range if a value lies
    outside [lo, hi]; else a bad sum if |sum - 1| > sum_tol, the sum in float64 in
    column order. One branch-free pass per block of ``CHECK_ROWS`` rows: every value
    of the block is tested at once (v - v != 0 for NaN and Inf, and the range: a
    loop that vectorizes), then the rows' sums. Where a block holds a non-finite or
    out-of-range value, the rows are classified again one by one (``_row_state``), so
    the answer is the row-by-row one whatever the data.
    """
    n, c = p.shape
    blocks = (n + CHECK_ROWS - 1) // CHECK_ROWS
    flat = p.reshape(-1)
    odd = np.zeros(max(blocks, 1), dtype=np.bool_)
    first_sum = np.empty(max(blocks, 1), dtype=np.int64)
    for b in prange(blocks):
        r0 = b * CHECK_ROWS
        r1 = min(n, r0 + CHECK_ROWS)
        src = flat[r0 * c:r1 * c]
        bad = False
        for k in range(src.size):
            v = np.float64(src[k])
            bad |= (v - v != 0.0) | (v < lo) | (v > hi)
        odd[b] = bad
        found = n
        for r in range(r1 - r0):
            row = src[r * c:r * c + c]
            total = 0.0
            for j in range(c):
                total += np.float64(row[j])
            found = min(found, r0 + r if abs(total - 1.0) > sum_tol else n)
        first_sum[b] = found
    first = np.full(3, NO_ROW, dtype=np.int64)
    for b in range(blocks):
        if odd[b]:
            # a non-finite or out-of-range value: classify the rows one by one
            for i in range(b * CHECK_ROWS, n):
                s = _row_state(p, i, c, lo, hi, sum_tol)
                if s > 0 and first[s - 1] == NO_ROW:
                    first[s - 1] = i
            return first[0], first[1], first[2]
        if first_sum[b] < n and first[2] == NO_ROW:
            first[2] = first_sum[b]
    return first[0], first[1], first[2]


def _entropy_rows(width):
    def entropy_rows(p):
        """-sum_y p log p per row in float64, values clipped into [0, 1], 0 log 0 = 0."""
        n = p.shape[0]
        c = width if width else p.shape[1]
        out = np.empty(n, dtype=np.float64)
        for i in prange(n):
            acc = 0.0
            for j in range(c):
                v = min(max(np.float64(p[i, j]), 0.0), 1.0)
                if v > 0.0:
                    acc -= v * math.log(v)
            out[i] = acc
        return out

    return entropy_rows


@njit(inline="always")
def least_confident_row(p, i, c):
    """1 - max_y p[i, y], clipped into [0, 1]: clipping is monotone, so the largest raw
    value is clipped once (one compare per value, one float64 conversion per row)."""
    best = p[i, 0]
    for j in range(1, c):
        best = max(best, p[i, j])
    return 1.0 - min(max(np.float64(best), 0.0), 1.0)


@njit(inline="always")
def margin_row(p, i, c):
    """-(p1 - p2) of row i's two largest values, clipped into [0, 1]; C >= 2 (the two
    largest raw values, clipped once: clipping is monotone)."""
    first = max(p[i, 0], p[i, 1])
    second = min(p[i, 0], p[i, 1])
    for j in range(2, c):
        v = p[i, j]  # branch-free: random rows mispredict a branch half the time
        second = max(second, min(v, first))
        first = max(first, v)
    return -(min(max(np.float64(first), 0.0), 1.0) - min(max(np.float64(second), 0.0), 1.0))


def _least_confident_rows(width):
    def least_confident_rows(p):
        """1 - max_y p per row, values clipped into [0, 1]."""
        n = p.shape[0]
        c = width if width else p.shape[1]
        out = np.empty(n, dtype=np.float64)
        for i in prange(n):
            out[i] = least_confident_row(p, i, c)
        return out

    return least_confident_rows


def _margin_rows(width):
    def margin_rows(p):
        """-(p1 - p2) per row for the two largest values, clipped into [0, 1]; C >= 2."""
        n = p.shape[0]
        c = width if width else p.shape[1]
        out = np.empty(n, dtype=np.float64)
        for i in prange(n):
            out[i] = margin_row(p, i, c)
        return out

    return margin_rows


#: Row widths C up to which a score kernel is compiled for its own C: with C a
#: constant LLVM unrolls the row loop, about twice as fast for small C. Wider rows
#: share the generic kernel. Each width compiles on first use (seconds, then the disk
#: cache), so only arrays of ``SPECIALIZE_MIN_VALUES`` or more take it: small
#: requests keep the generic kernels the warm-up compiled.
SPECIALIZE_MAX_C = 16
SPECIALIZE_MIN_VALUES = 1 << 18


def width_of(array: np.ndarray) -> int:
    """The width to compile a score kernel for: the array's C where that pays, else 0."""
    return array.shape[-1] if array.size >= SPECIALIZE_MIN_VALUES else 0

_lock = threading.Lock()
_WIDTH_TEMPLATES: dict = {}
_BY_WIDTH: dict = {}


def by_width(templates: dict, name: str, width: int) -> tuple:
    """The (serial, parallel) twins of template ``name`` compiled for rows of ``width``
    values (generic above ``SPECIALIZE_MAX_C``, or for ``width`` 0)."""
    key = (id(templates), name, width if width <= SPECIALIZE_MAX_C else 0)
    twins = _BY_WIDTH.get(key)
    if twins is None:
        with _lock:
            twins = _BY_WIDTH.get(key)
            if twins is None:
                f = templates[name](key[2])
                twins = (kernel(nogil=True)(f), kernel(parallel=True, nogil=True)(f))
                _BY_WIDTH[key] = twins
    return twins


_WIDTH_TEMPLATES.update({
    "entropy_rows": _entropy_rows,
    "least_confident_rows": _least_confident_rows,
    "margin_rows": _margin_rows,
})

#: The generic twins of every kernel (any width), as the tests and the warm-up use them.
_KERNELS = {
    "probability_rows_check": (kernel(nogil=True)(probability_rows_check),
                               kernel(parallel=True, nogil=True)(probability_rows_check)),
    **{name: by_width(_WIDTH_TEMPLATES, name, 0) for name in _WIDTH_TEMPLATES},
}


def call(templates: dict, name: str, parallel: bool, *args):
    """Run template ``name``'s serial or ``parallel`` twin on ``args`` (the rows first).

    The twin compiled for the rows' width runs once it is compiled for these
    argument types; until then the generic twin (warmed at start-up) answers and
    the width's twin compiles, or loads from the disk cache, on a background
    thread. So no call waits for a compile, and large requests get the faster
    kernel from the next call on. The compile still takes the GIL by turns for a
    few seconds, once per width and type on a machine (the disk cache keeps it).
    """
    generic = by_width(templates, name, 0)[parallel]
    width = width_of(args[0])
    if not width or width > SPECIALIZE_MAX_C:
        return generic(*args)
    twin = by_width(templates, name, width)[parallel]
    signature = tuple(numba.typeof(a) for a in args)
    if signature in twin.overloads:
        return twin(*args)
    _compile_soon(twin, signature)
    return generic(*args)


_compiler = ThreadPoolExecutor(1, thread_name_prefix="assay-kernel-width")
_compiling: set = set()


def _compile_soon(twin, signature: tuple) -> None:
    key = (id(twin), signature)
    with _lock:
        if key in _compiling:
            return
        _compiling.add(key)
    _compiler.submit(twin.compile, signature)


def run(name: str, rows: np.ndarray, *args):
    """Run kernel ``name`` on ``rows``, serial or parallel by size, compiled for the
    rows' width where that is small and ready (``call``)."""
    parallel = rows.size >= PARALLEL_MIN_VALUES
    if name in _WIDTH_TEMPLATES:
        return call(_WIDTH_TEMPLATES, name, parallel, rows, *args)
    return _KERNELS[name][parallel](rows, *args)


def variants(name: str) -> tuple:
    """The (serial, parallel) compiled twins of kernel ``name`` (for the warm-up, which
    must compile the parallel one although its tiny inputs would pick the serial)."""
    return _KERNELS[name]


def compiled(array: np.ndarray) -> bool:
    """Whether ``array`` can take the compiled path (2-D float32/float64)."""
    return array.ndim == 2 and array.dtype in (np.float32, np.float64)


def as_rows(array: np.ndarray) -> np.ndarray:
    """A read-only C-contiguous view (or copy, for strided input) the kernels can read.

    Read-only always, so wire buffers, memory-mapped pools and computed arrays share
    one compiled specialization per dtype (Numba types writability).
    """
    view = np.ascontiguousarray(array).view()
    view.flags.writeable = False
    return view
