"""Argument checks shared by the public kernel functions.

Kernels never validate; these helpers turn a bad argument into an
``InvalidInput`` that names it, before any compiled code runs.
"""

from __future__ import annotations

import numpy as np

from assay.vocab.errors import InvalidInput

#: Largest finite float32: every distance, squared norm and dot product a kernel (or
#: FAISS) computes is held in float32 somewhere, whatever the storage dtype.
FLOAT32_MAX = float(np.finfo(np.float32).max)
#: Factor kept free below FLOAT32_MAX: the largest squared distance between two rows
#: is (|x| + |y|)^2 <= 4 max |x|^2, and FAISS forms it as |x|^2 + |y|^2 - 2<x, y>
#: (terms up to 2 max |x|^2 before they cancel); k-means adds a few such distances
#: and sums centroid members. 2^8 covers all of that with room to spare.
HEADROOM = 2.0**8
#: Bound on a row's squared norm, max |x|^2 <= d max_j x_j^2 <= this, so that every
#: squared distance is finite in float32 with ``HEADROOM`` to spare.
MAX_SQUARED_NORM = FLOAT32_MAX / (4.0 * HEADROOM)
#: Largest count FAISS takes as a C ``int`` (dimensions, clusters, neighbours).
INT32_MAX = 2**31 - 1
#: Rows scanned per block by ``bounded``.
_BLOCK_ROWS = 1 << 16


def largest_value(x: np.ndarray) -> float:
    """max |x| over every element, as a Python float (0 for an empty array, NaN when
    any element is NaN).

    Read block by block with ``max``/``min`` (no ``abs`` temporary), so a large or
    16-bit pool is scanned once without a copy of it.
    """
    a = np.asarray(x)
    if a.size == 0:
        return 0.0
    flat = a.reshape(a.shape[0], -1) if a.ndim > 1 else a.reshape(-1, 1)
    if a.dtype.itemsize == 2 and (a.dtype.kind == "f" or a.dtype.name == "bfloat16"):
        return _largest_16bit(flat)
    top = 0.0
    for start in range(0, flat.shape[0], _BLOCK_ROWS):
        block = flat[start:start + _BLOCK_ROWS]
        hi, lo = float(block.max()), float(block.min())
        if hi != hi or lo != lo:  # NaN propagates through max/min; Python's max drops it
            return float("nan")
        top = max(top, hi, -lo)
    return top


def _largest_16bit(flat: np.ndarray) -> float:
    """``largest_value`` of float16/bfloat16 rows from their bit patterns.

    NumPy reduces these dtypes element by element in Python-level loops (seconds for
    a 1M x 128 pool); with the sign bit cleared, the bit patterns of non-NaN values
    order like their magnitudes, so an integer max over uint16 finds the largest
    magnitude at memory speed. Patterns above the all-ones exponent are NaN.
    """
    bits = flat.view(np.uint16)
    top = 0
    for start in range(0, bits.shape[0], _BLOCK_ROWS):
        block = bits[start:start + _BLOCK_ROWS]
        top = max(top, int(np.bitwise_and(block, 0x7FFF).max()))
    inf_bits = int(np.array([np.inf], dtype=flat.dtype).view(np.uint16)[0])
    if top > inf_bits:
        return float("nan")
    return float(np.array([top], dtype=np.uint16).view(flat.dtype)[0])


def max_abs_value(d: int) -> float:
    """Largest |x_j| allowed in rows of width ``d``: d x^2 <= MAX_SQUARED_NORM."""
    return float(np.sqrt(MAX_SQUARED_NORM / max(1, int(d))))


def bounded(x: np.ndarray, name: str) -> np.ndarray:
    """Require every squared distance between rows of ``x`` [N, d] to fit float32.

    Finite values are not enough: with |x| around 1e19 the squared norms overflow
    float32 to inf, FAISS then assigns points to no cluster and aborts the whole
    process from inside an OpenMP region, and the Numba passes silently compare
    infinities (wrong picks). Scale-free geometry (cosine) does not care about the
    scale, so asking the caller to rescale loses nothing. NaN/Inf also fail here.
    """
    a = np.asarray(x)
    d = a.shape[1] if a.ndim > 1 else 1
    limit = max_abs_value(d)
    top = largest_value(a)
    if not top <= limit:  # also catches NaN
        raise InvalidInput(
            f"{name} holds values up to {top:.3g} in magnitude; with width d = {d} the "
            f"squared distances would overflow float32. Values must stay within "
            f"+-{limit:.3g} (rescale the embeddings, e.g. normalize them)",
            field=name, reason="VALUE_TOO_LARGE")
    return a


def int32_count(value: int, name: str) -> int:
    """A count FAISS takes as a C ``int``: 0 <= value <= INT32_MAX."""
    if not 0 <= int(value) <= INT32_MAX:
        raise InvalidInput(f"{name} is {value}; FAISS takes at most {INT32_MAX}",
                           field=name, reason="SHAPE_TOO_LARGE")
    return int(value)


def matrix(array: np.ndarray, name: str) -> np.ndarray:
    """Require a 2-D floating array with at least one column."""
    a = np.asarray(array)
    if a.ndim != 2:
        raise InvalidInput(f"{name} must be a matrix [N, d], got shape {list(a.shape)}",
                           field=name)
    if a.shape[1] < 1:
        raise InvalidInput(f"{name} has width d = 0; embeddings need at least one column",
                           field=name, reason="EMPTY_DIMENSION")
    return a


def candidates(cand: np.ndarray | None, n: int) -> tuple[np.ndarray, bool]:
    """Sorted unique in-range candidate rows, and whether they are all of [0, n)."""
    if cand is None:
        return np.arange(n, dtype=np.int64), True
    c = np.asarray(cand, dtype=np.int64)
    if c.ndim != 1:
        raise InvalidInput("candidates must be a 1-D array of row indices", field="candidates")
    if c.size and (c.min() < 0 or c.max() >= n):
        raise InvalidInput(f"candidates must lie in [0, {n})", field="candidates")
    if c.size > 1 and not (np.diff(c) > 0).all():
        raise InvalidInput("candidates must be sorted and unique", field="candidates")
    return np.ascontiguousarray(c), c.size == n


def budget(b: int, m: int) -> int:
    """1 <= b <= m, the number of selectable items."""
    if not 1 <= int(b) <= m:
        raise InvalidInput(f"budget {b} must be between 1 and {m} (selectable items)",
                           field="budget")
    return int(b)
