"""Exact k-nearest-neighbour search: one FAISS boundary for the whole service.

Contiguous float32 in (16-bit and float64 rows are widened block by block),
shapes checked with real exceptions, outputs pre-allocated. Missing neighbours
(k larger than the base) are -1 with distance +inf. The GPU index is used when
FAISS has a GPU and the request does not insist on the CPU.
"""

from __future__ import annotations

import numpy as np

from assay.vocab.errors import InvalidInput

from . import _validate, config, dispatch
from .bits import rows_float32

BACKENDS = (dispatch.FAISS_CPU, dispatch.FAISS_GPU)
METRICS = ("l2", "cosine")


def knn(
    queries: np.ndarray,
    base: np.ndarray,
    k: int,
    *,
    metric: str = "l2",
    backend: str = dispatch.AUTO,
) -> tuple[np.ndarray, np.ndarray, str]:
    """The ``k`` nearest ``base`` rows of every query, exactly (flat index).

    Parameters
    ----------
    queries : float [Q, d]
    base : float [B, d]
    k : int
        Neighbours per query, >= 1.
    metric : ``l2`` (squared Euclidean distance, ascending) or ``cosine`` (cosine
        similarity, descending; zero rows have similarity 0 to everything).
    backend : ``auto``, ``faiss-cpu`` or ``faiss-gpu``.

    Returns
    -------
    values : float32 [Q, k]
        Squared distances (l2) or similarities (cosine); +inf / -inf where missing.
    indices : int64 [Q, k]
        Base rows; -1 where missing.
    backend : str
        The backend that ran.
    """
    q = _validate.matrix(queries, "queries")
    b = _validate.matrix(base, "base")
    if q.shape[1] != b.shape[1]:
        raise InvalidInput(f"queries have width {q.shape[1]}, the base {b.shape[1]}",
                           field="queries")
    if int(k) < 1:
        raise InvalidInput(f"k must be >= 1, got {k}", field="k")
    _validate.int32_count(k, "k")
    _validate.int32_count(b.shape[1], "base width d")
    _validate.bounded(q, "queries")
    _validate.bounded(b, "base")
    if metric not in METRICS:
        raise InvalidInput(f"metric must be one of {', '.join(METRICS)}, got {metric!r}",
                           field="metric")
    chosen = dispatch.choose(backend, BACKENDS, b.shape[0] * b.shape[1])
    import faiss

    d = b.shape[1]
    index = faiss.IndexFlatL2(d) if metric == "l2" else faiss.IndexFlatIP(d)
    if chosen == dispatch.FAISS_GPU:  # pragma: no cover - needs a GPU build of FAISS
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    for lo in range(0, b.shape[0], config.FAISS_BLOCK_ROWS):
        index.add(_prepared(b, slice(lo, lo + config.FAISS_BLOCK_ROWS), metric))
    k = int(k)
    values = np.empty((q.shape[0], k), dtype=np.float32)
    indices = np.empty((q.shape[0], k), dtype=np.int64)
    for lo in range(0, q.shape[0], config.FAISS_BLOCK_ROWS):
        block = _prepared(q, slice(lo, lo + config.FAISS_BLOCK_ROWS), metric)
        dist, idx = index.search(block, k)
        values[lo:lo + block.shape[0]] = dist
        indices[lo:lo + block.shape[0]] = idx
    missing = indices < 0
    values[missing] = np.inf if metric == "l2" else -np.inf
    if metric == "l2":
        np.maximum(values, 0.0, out=values, where=~missing)
    return values, indices, chosen


def _prepared(x: np.ndarray, rows: slice, metric: str) -> np.ndarray:
    block = rows_float32(x, rows)
    if metric == "cosine":
        # A new array: ``block`` may be a view of the caller's (possibly read-only) rows.
        norms = np.linalg.norm(block, axis=1, keepdims=True)
        block = np.ascontiguousarray(block / np.where(norms > 0, norms, 1.0), dtype=np.float32)
    return block
