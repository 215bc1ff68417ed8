"""k-means selection: FAISS k-means with ``budget`` clusters, the item closest to each.

FAISS trains on at most ``max_points_per_centroid * budget`` candidates (a seeded
sample, widened to float32 block by block), then every candidate is assigned to
its nearest centroid by exact search, so a 16-bit pool is never copied whole.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from assay.vocab.errors import InvalidInput

from . import _validate, config, dispatch
from .bits import rows_float32

BACKENDS = (dispatch.FAISS_CPU, dispatch.FAISS_GPU)

#: FAISS's own default training-sample cap per centroid.
MAX_POINTS_PER_CENTROID = 256


@dataclass
class KMeansResult:
    """One representative per k-means cluster.

    Attributes
    ----------
    indices : int64[b]
        Pool rows: the candidate closest to each centroid, in centroid order; when a
        cluster is empty its slot holds the unpicked candidate farthest from its own
        centroid (the least represented item).
    distances : float64[b]
        Euclidean distance of each pick to its centroid.
    objective : float
        Final k-means objective on the training sample (sum of squared distances).
    backend : str
        ``faiss-cpu`` or ``faiss-gpu``.
    centroids : float32[b, d]
        The cluster centres (empty when every candidate is its own cluster).
    """

    indices: np.ndarray
    distances: np.ndarray
    objective: float
    backend: str
    centroids: np.ndarray


def kmeans_closest(
    embeddings: np.ndarray,
    budget: int,
    *,
    candidates: np.ndarray | None = None,
    rng: np.random.Generator | None = None,
    iterations: int = 20,
    check_cancelled: Callable[[], None] | None = None,
    backend: str = dispatch.AUTO,
) -> KMeansResult:
    """Cluster the candidates into ``budget`` groups and return each group's medoid-like item.

    Parameters
    ----------
    embeddings : float [N, d]
        The pool (any float dtype, 16-bit included).
    budget : int
        Clusters and picks, 1 <= budget <= number of candidates.
    candidates : int64[M], optional
        Sorted unique selectable rows.
    rng : Generator, optional
        Seeds the training sample and FAISS's initialization.
    iterations : int
        Lloyd iterations.
    check_cancelled : callable, optional
        Called between assignment blocks.
    backend : str
        ``auto``, ``faiss-cpu`` or ``faiss-gpu``.
    """
    x = _validate.matrix(embeddings, "embeddings")
    n, d = x.shape
    rows, _ = _validate.candidates(candidates, n)
    b = _validate.int32_count(_validate.budget(budget, rows.size), "budget")
    _validate.int32_count(d, "embeddings width d")
    _validate.bounded(x, "embeddings")
    gen = rng if rng is not None else np.random.default_rng()
    check = check_cancelled or (lambda: None)
    chosen = dispatch.choose(backend, BACKENDS, rows.size * d)
    if b == rows.size:  # every candidate is its own cluster
        return KMeansResult(indices=rows.copy(), distances=np.zeros(b), objective=0.0,
                            backend=chosen, centroids=np.zeros((0, d), np.float32))
    import faiss

    cap = MAX_POINTS_PER_CENTROID * b
    sample = rows if rows.size <= cap else np.sort(gen.choice(rows, size=cap, replace=False))
    # The sample holds at most MAX_POINTS_PER_CENTROID * b points, so FAISS never
    # subsamples it again (a C int: passing ``cap`` itself overflows for b >= 2^23).
    km = faiss.Kmeans(d, b, niter=int(iterations), seed=int(gen.integers(2**31 - 1)),
                      gpu=chosen == dispatch.FAISS_GPU,
                      max_points_per_centroid=MAX_POINTS_PER_CENTROID, verbose=False)
    km.train(rows_float32(x, sample))
    check()
    index = faiss.IndexFlatL2(d)
    index.add(km.centroids)
    label = np.empty(rows.size, dtype=np.int64)
    dist = np.empty(rows.size, dtype=np.float64)
    for lo in range(0, rows.size, config.FAISS_BLOCK_ROWS):
        block = rows_float32(x, rows[lo:lo + config.FAISS_BLOCK_ROWS])
        dd, ii = index.search(block, 1)
        label[lo:lo + block.shape[0]] = ii[:, 0]
        dist[lo:lo + block.shape[0]] = np.maximum(dd[:, 0], 0.0)
        check()
    picks, picked_dist = _closest_per_cluster(label, dist, b)
    objective = float(km.obj[-1]) if len(km.obj) else 0.0
    return KMeansResult(indices=rows[picks], distances=np.sqrt(picked_dist),
                        objective=objective, backend=chosen, centroids=km.centroids.copy())


def weighted_kmeans(
    x: np.ndarray,
    weights: np.ndarray,
    k: int,
    *,
    iterations: int,
    seed: int,
    backend: str = dispatch.AUTO,
) -> tuple[np.ndarray, float, str]:
    """FAISS k-means of every row of ``x`` with per-row weights (Zhdanov's weighted k-means).

    Parameters
    ----------
    x : float [n, d]
        The points (a shortlist: all of them are clustered, none subsampled).
    weights : float [n]
        Positive finite weight per point.
    k : int
        Clusters, 1 <= k <= n.
    iterations : int
        Lloyd iterations.
    seed : int
        FAISS's initialization seed, in [0, 2^31).
    backend : str
        ``auto``, ``faiss-cpu`` or ``faiss-gpu``.

    Returns
    -------
    centroids : float64 [k, d]
    objective : float
        Final weighted objective (0 when FAISS reports none).
    backend : str
    """
    a = _validate.matrix(x, "embeddings")
    n, d = a.shape
    k = _validate.int32_count(_validate.budget(k, n), "budget")
    _validate.int32_count(d, "embeddings width d")
    _validate.bounded(a, "embeddings")
    w = np.ascontiguousarray(weights, dtype=np.float32)
    if w.shape != (n,) or not (np.isfinite(w).all() and (w > 0).all()):
        raise InvalidInput("weights must be n positive finite values", field="weights")
    chosen = dispatch.choose(backend, BACKENDS, a.size)
    import faiss

    # Every point is kept: ceil(n / k) points per centroid never trigger FAISS's subsampling.
    km = faiss.Kmeans(d, k, niter=int(iterations), seed=int(seed),
                      gpu=chosen == dispatch.FAISS_GPU, min_points_per_centroid=1,
                      max_points_per_centroid=-(-n // k), verbose=False)
    km.train(rows_float32(a, slice(None)), weights=w)
    objective = float(km.obj[-1]) if len(km.obj) else 0.0
    return np.asarray(km.centroids, dtype=np.float64), objective, chosen


def _closest_per_cluster(label: np.ndarray, dist: np.ndarray, k: int
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Position of the closest member of each cluster (ties: lower position).

    Empty clusters take the unpicked positions with the largest distance to their
    own centroid (ties: lower position).
    """
    pos = np.arange(label.size)
    order = np.lexsort((pos, dist, label))
    first = np.ones(order.size, dtype=bool)
    first[1:] = label[order][1:] != label[order][:-1]
    heads = order[first]
    out = np.full(k, -1, dtype=np.int64)
    out[label[heads]] = heads
    empty = np.flatnonzero(out < 0)
    if empty.size:
        free = np.ones(label.size, dtype=bool)
        free[heads] = False
        spare = np.flatnonzero(free)
        spare = spare[np.lexsort((spare, -dist[spare]))][: empty.size]
        out[empty] = spare
    return out, dist[out]
