"""k-means partition of every row: k-means++ seeding, FAISS Lloyd, exact assignment.

``kmeans.kmeans_closest`` wants one representative per cluster; TypiClust wants the
cluster of every row and a partition that does not fall into the local minima of a
random start on small, well-separated data (two starting centroids in one blob leave
another blob merged with a third). So the centroids start from k-means++ (D²
sampling, Arthur & Vassilvitskii 2007) on the training sample, seeded, then FAISS
runs Lloyd's iterations, and every row is assigned by exact search, block by block.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from . import _validate, config, dispatch
from .bits import rows_float32

BACKENDS = (dispatch.FAISS_CPU, dispatch.FAISS_GPU)
#: Training points per centroid, at most (FAISS's own default cap).
MAX_POINTS_PER_CENTROID = 256
INITS = ("k-means++", "random")


def kmeans_plusplus(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding of the rows of ``x`` [S, d]: row indices int64 [k].

    The first centre is uniform; each next one is drawn with probability ∝ D(x)², D
    the distance to the nearest centre so far (uniform among the rows left when every
    D is 0). O(k·S·d) in float64.
    """
    s = x.shape[0]
    a = np.asarray(x, dtype=np.float64)
    picks = np.empty(k, dtype=np.int64)
    picks[0] = rng.integers(s)
    diff = a - a[picks[0]]
    d2 = np.einsum("ij,ij->i", diff, diff)
    for i in range(1, k):
        total = d2.sum()
        if total > 0:
            picks[i] = min(int(np.searchsorted(np.cumsum(d2), rng.random() * total,
                                               side="right")), s - 1)
        else:
            free = np.setdiff1d(np.arange(s), picks[:i])
            picks[i] = free[rng.integers(free.size)]
        diff = a - a[picks[i]]
        np.minimum(d2, np.einsum("ij,ij->i", diff, diff), out=d2)
        d2[picks[:i + 1]] = 0.0
    return picks


def kmeans_partition(
    x: np.ndarray,
    k: int,
    *,
    rng: np.random.Generator,
    iterations: int = 20,
    init: str = "k-means++",
    check_cancelled: Callable[[], None] | None = None,
    backend: str = dispatch.AUTO,
) -> tuple[np.ndarray, float, str]:
    """Cluster every row of ``x`` [N, d] into ``k`` groups.

    Parameters
    ----------
    x : float [N, d]
    k : int
        Clusters, 1 <= k <= N; k = N puts every row in its own cluster.
    rng : Generator
        Draws the training sample (at most 256·k rows), the seeding and FAISS's seed.
    iterations : int
        Lloyd iterations.
    init : ``k-means++`` or ``random`` (FAISS's own start: k sampled rows).
    check_cancelled : callable, optional
        Called after training and between assignment blocks.
    backend : ``auto``, ``faiss-cpu`` or ``faiss-gpu``.

    Returns
    -------
    labels : int64 [N]
        Cluster per row, in [0, k).
    objective : float
        The final k-means objective on the training sample.
    backend : str
    """
    a = _validate.matrix(x, "embeddings")
    n, d = a.shape
    k = _validate.int32_count(_validate.budget(k, n), "budget")
    _validate.int32_count(d, "embeddings width d")
    _validate.bounded(a, "embeddings")
    check = check_cancelled or (lambda: None)
    chosen = dispatch.choose(backend, BACKENDS, n * d)
    if k == n:
        return np.arange(n, dtype=np.int64), 0.0, chosen
    import faiss

    cap = MAX_POINTS_PER_CENTROID * k
    sample = np.arange(n) if n <= cap else np.sort(rng.choice(n, size=cap, replace=False))
    train = rows_float32(a, sample)
    start = None
    if init == "k-means++":
        start = np.ascontiguousarray(train[kmeans_plusplus(train, k, rng)])
    km = faiss.Kmeans(d, k, niter=int(iterations), seed=int(rng.integers(2**31 - 1)),
                      gpu=chosen == dispatch.FAISS_GPU, min_points_per_centroid=1,
                      max_points_per_centroid=MAX_POINTS_PER_CENTROID, verbose=False)
    km.train(train, init_centroids=start)
    check()
    index = faiss.IndexFlatL2(d)
    index.add(km.centroids)
    labels = np.empty(n, dtype=np.int64)
    for lo in range(0, n, config.FAISS_BLOCK_ROWS):
        _, nearest = index.search(rows_float32(a, slice(lo, lo + config.FAISS_BLOCK_ROWS)), 1)
        labels[lo:lo + nearest.shape[0]] = nearest[:, 0]
        check()
    objective = float(km.obj[-1]) if len(km.obj) else 0.0
    return labels, objective, chosen
