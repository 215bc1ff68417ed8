"""The δ-ball graph: every pair of rows within Euclidean distance δ, exactly.

FAISS's range search (flat L2 index, float32) finds the pairs within a radius
widened by a bound on its rounding error; each pair found is then measured
again in float64 and kept when ``sqrt(d²) <= δ``, so the graph is the exact one
(symmetric, self-loops included) and the inclusive comparison is the one a
float64 pairwise-distance matrix would make. Rows are centred on their mean
first (distances do not change, the float32 terms shrink), and each block of rows
searches only the rows from its own on: half the distances, the pairs mirrored.
Memory is O(N·d + E), E the number of edges: no N x N matrix, and a graph larger
than ``max_edges`` is refused before it is built further.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from assay.vocab.errors import InvalidInput, ResourceExhausted

from . import _validate, config, dispatch

BACKENDS = (dispatch.FAISS_CPU,)

#: Edges (ordered pairs, self-loops included) a graph may hold: the graph is
#: assembled at about 24 bytes per edge, 1.6 GB for 2^26.
MAX_EDGES = 1 << 26
#: Query rows per range search (the pairs of one block are measured together).
_QUERY_ROWS = 4096
#: Pairs measured in float64 at a time.
_PAIR_BLOCK = 1 << 16


@dataclass
class RadiusGraph:
    """Adjacency in CSR form.

    Attributes
    ----------
    indptr : int64[N + 1]
        Row ``i``'s neighbours are ``indices[indptr[i]:indptr[i + 1]]``.
    indices : int32[E] (int64 from 2^31 rows on)
        Neighbour rows, ascending within a row; ``i`` itself is one of them.
    backend : str
        The backend that searched (``faiss-cpu``).
    """

    indptr: np.ndarray
    indices: np.ndarray
    backend: str

    def degrees(self) -> np.ndarray:
        """Neighbours per row (self included), int64[N]."""
        return np.diff(self.indptr)


def radius_graph(
    x: np.ndarray,
    radius: float,
    *,
    max_edges: int = MAX_EDGES,
    check_cancelled: Callable[[], None] | None = None,
    backend: str = dispatch.AUTO,
) -> RadiusGraph:
    """Pairs of rows of ``x`` within Euclidean distance ``radius`` (inclusive).

    Parameters
    ----------
    x : float [N, d]
        The rows (any float dtype).
    radius : float
        δ > 0, in the units of ``x``.
    max_edges : int
        Largest number of ordered pairs (self-loops included) the graph may hold;
        more raises ``ResourceExhausted`` naming ``delta``.
    check_cancelled : callable, optional
        Called between query blocks.
    backend : ``auto`` or ``faiss-cpu`` (FAISS has no GPU range search for flat indexes).
    """
    a = _validate.matrix(x, "embeddings")
    n, d = a.shape
    _validate.int32_count(d, "embeddings width d")
    _validate.bounded(a, "embeddings")
    radius = float(radius)
    if not (np.isfinite(radius) and radius > 0):
        raise InvalidInput(f"delta must be a finite number > 0, got {radius}", field="delta")
    check = check_cancelled or (lambda: None)
    chosen = dispatch.choose(backend, BACKENDS, n * d)
    import faiss

    mean = np.zeros(d)
    for lo in range(0, n, config.FAISS_BLOCK_ROWS):
        mean += np.asarray(a[lo:lo + config.FAISS_BLOCK_ROWS], dtype=np.float64).sum(axis=0)
    mean /= max(n, 1)
    centred = np.empty((n, d), dtype=np.float32)
    top = 0.0
    for lo in range(0, n, config.FAISS_BLOCK_ROWS):
        block = _centred(a, slice(lo, lo + config.FAISS_BLOCK_ROWS), mean)
        top = max(top, float(np.einsum("ij,ij->i", block, block).max()))
        centred[lo:lo + block.shape[0]] = block
    # FAISS forms |x|^2 + |y|^2 - 2<x, y> in float32: each term is off by at most about
    # d * eps32 * max|x|^2, so widening the squared radius by twice that misses no pair.
    slack = 4.0 * d * float(np.finfo(np.float32).eps) * top
    search = float(np.float32(radius * radius + slack))
    dtype = np.int32 if n < 2**31 else np.int64
    sources: list[np.ndarray] = []
    targets: list[np.ndarray] = []
    edges = 0
    # The graph is symmetric: each query block searches only the rows from its own
    # first row on (half the distance computations), and the pairs are mirrored after.
    for lo in range(0, n, _QUERY_ROWS):
        hi = min(n, lo + _QUERY_ROWS)
        index = faiss.IndexFlatL2(d)
        index.add(centred[lo:])
        lims, _, found = index.range_search(centred[lo:hi], search)
        del index
        rows = np.repeat(np.arange(lo, hi, dtype=np.int64), np.diff(lims).astype(np.int64))
        found += lo
        upper = found >= rows
        rows, found = rows[upper], found[upper]
        keep = _within(a, rows, found, radius)
        rows, found = rows[keep], found[keep]
        edges += 2 * rows.size - int(np.count_nonzero(rows == found))
        if edges > max_edges:
            raise ResourceExhausted(
                f"the delta-ball graph of delta = {radius} holds more than {max_edges} "
                f"pairs; choose a smaller delta", field="delta")
        sources.append(rows.astype(dtype))
        targets.append(found.astype(dtype))
        check()
    del centred
    src = np.concatenate(sources) if sources else np.zeros(0, dtype=dtype)
    dst = np.concatenate(targets) if targets else np.zeros(0, dtype=dtype)
    off = src != dst
    src, dst = np.concatenate([src, dst[off]]), np.concatenate([dst, src[off]])
    order = np.lexsort((dst, src))
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(src, minlength=n), out=indptr[1:])
    return RadiusGraph(indptr=indptr, indices=dst[order], backend=chosen)


def _centred(a: np.ndarray, rows: slice | np.ndarray, mean: np.ndarray) -> np.ndarray:
    return np.asarray(a[rows], dtype=np.float64) - mean


def _within(a: np.ndarray, rows: np.ndarray, cols: np.ndarray, radius: float) -> np.ndarray:
    """Which pairs (rows[i], cols[i]) are within ``radius``, measured in float64."""
    keep = np.empty(rows.size, dtype=bool)
    for lo in range(0, rows.size, _PAIR_BLOCK):
        r, c = rows[lo:lo + _PAIR_BLOCK], cols[lo:lo + _PAIR_BLOCK]
        diff = np.asarray(a[r], dtype=np.float64) - np.asarray(a[c], dtype=np.float64)
        keep[lo:lo + r.size] = np.sqrt(np.einsum("ij,ij->i", diff, diff)) <= radius
    return keep
