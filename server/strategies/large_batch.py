"""Strategies for large batches from large pools: Cluster-Margin and SEALS.

``cluster_margin`` (Citovsky et al. 2021) clusters the pool's embeddings once
(average linkage over a kNN graph, cut at a distance; ``assay.kernels.hac``), then
per request takes the ``km * budget`` lowest-margin candidates and fills the batch
round-robin over their clusters, smallest cluster first, a seeded random member of
each cluster per round. The clustering depends only on the embeddings and the
clustering parameters, so it is kept (``CLUSTER_CACHE`` entries) for read-only
arrays, which is what a stored pool hands out for as long as its rows are
unchanged: label rounds reuse it, as in the paper, where HAC runs once.

``seals`` (Coleman et al. 2022) restricts an inner score strategy to the
unlabeled kNN neighbourhood of the labeled set: the ``k`` nearest candidates of
every labeled embedding (exact FAISS search), as small-text's ``SEALS`` does.
"""

from __future__ import annotations

import math
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable

import numpy as np

from assay.kernels.hac import GRAPHS, Clustering, average_linkage_clusters, pair_keys
from assay.kernels.knn import METRICS, knn
from assay.vocab.errors import InvalidInput
from assay.vocab.ties import argselect

from . import registry
from .named import score_strategy
from .registry import Context, Inputs, Param, Selection, Strategy, register

#: Clusterings kept for read-only embeddings (pool rows), most recent last.
CLUSTER_CACHE = 4
_cache: OrderedDict[Hashable, tuple[weakref.ref | None, Clustering]] = OrderedDict()
_cache_lock = threading.Lock()


def clustering_key(params: dict) -> tuple:
    """The parameters a clustering depends on, besides the embeddings."""
    return (float(params["epsilon"]), int(params["neighbors"]), params["graph"],
            int(params["ef_search"]))


def cached_clustering(identity: Hashable, compute, *, owner: np.ndarray | None = None
                      ) -> tuple[Clustering, bool]:
    """The clustering stored under ``identity``, or ``compute()`` stored there.

    ``owner`` (an array) must still be alive for an entry to be used: an id reused by
    a new array never returns the old array's clusters. Returns (clustering, hit).
    """
    with _cache_lock:
        hit = _cache.get(identity)
        if hit is not None and (hit[0] is None or hit[0]() is owner):
            _cache.move_to_end(identity)
            return hit[1], True
    result = compute()
    with _cache_lock:
        _cache[identity] = (None if owner is None else weakref.ref(owner), result)
        _cache.move_to_end(identity)
        while len(_cache) > CLUSTER_CACHE:
            _cache.popitem(last=False)
    return result, False


def pool_clustering(embeddings: np.ndarray, params: dict) -> tuple[Clustering, bool]:
    """The clustering of ``embeddings``; cached when the array is read-only (pool rows)."""
    def compute() -> Clustering:
        return average_linkage_clusters(embeddings, params["epsilon"], params["neighbors"],
                                        graph=params["graph"], ef_search=params["ef_search"])

    if isinstance(embeddings, np.ndarray) and not embeddings.flags.writeable:
        identity = ("array", id(embeddings), embeddings.shape, embeddings.dtype.str,
                    clustering_key(params))
        return cached_clustering(identity, compute, owner=embeddings)
    return compute(), False


def margin_scores(inputs: Inputs, ctx: Context) -> np.ndarray:
    """The ``margin`` strategy's scores (higher = smaller margin), float64[N]."""
    margin = registry.get("margin")
    return np.asarray(margin.fn(inputs, registry.resolve_params(margin, {}), ctx),
                      dtype=np.float64)


def margin_pool_size(budget: int, km: float, candidates: int) -> int:
    """M = min(ceil(km * budget), candidates): the lowest-margin items considered."""
    return int(min(max(budget, math.ceil(km * budget)), candidates))


def round_robin(items: np.ndarray, clusters: np.ndarray, budget: int,
                rng: np.random.Generator) -> np.ndarray:
    """Positions in ``items`` of the batch, in pick order.

    ``items`` are the M lowest-margin item ids in increasing order, ``clusters``
    their cluster ids. One permutation of the M positions is drawn from ``rng``
    (the within-cluster sampling order); clusters are visited by size among the M
    ascending (equal sizes: lower cluster id first), one member per cluster per
    round, until ``budget`` items are taken.
    """
    m = items.size
    key = rng.permutation(m)
    ids, inverse, sizes = np.unique(clusters, return_inverse=True, return_counts=True)
    visit = np.empty(ids.size, np.int64)
    visit[np.lexsort((ids, sizes))] = np.arange(ids.size)
    order = np.lexsort((key, inverse))  # by cluster, then by the drawn key
    within = np.empty(m, np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    within[order] = np.arange(m) - np.repeat(starts, sizes)
    return np.lexsort((visit[inverse], within))[:budget]


def cluster_margin(inputs: Inputs, budget: int, params: dict, ctx: Context) -> Selection:
    """Cluster-Margin: round-robin over the clusters of the km * budget lowest margins.

    Scores are the picks' margin scores (minus the top-2 probability gap).
    """
    clustering, hit = pool_clustering(inputs["embeddings"], params)
    ctx.check_cancelled()
    scores = margin_scores(inputs, ctx)
    m = margin_pool_size(budget, params["km"], ctx.candidates.size)
    items = np.sort(argselect(scores, m, ctx.candidates, ctx.tiebreak_rng))
    picks = items[round_robin(items, clustering.labels[items], budget, ctx.rng)]
    ctx.metrics.update(clusters=float(clustering.clusters), epsilon=clustering.epsilon,
                       graph_edges=float(clustering.edges), cluster_cache_hit=float(hit),
                       margin_items=float(m),
                       clusters_in_batch=float(np.unique(clustering.labels[picks]).size))
    return Selection(indices=picks, scores=scores[picks])


def inner_strategy(params: dict, inputs: Inputs) -> Strategy:
    """The score strategy SEALS runs on the neighbourhood, its inputs checked."""
    inner = score_strategy(params["score"], "params.score")
    for role in inner.required:
        if role not in inputs:
            raise InvalidInput(f"strategy 'seals' with score {inner.name!r} needs input "
                               f"{role!r}", field=f"inputs.{role}", reason="MISSING_INPUT")
    return inner


def search_width(k: int, m: int) -> int:
    """Neighbours the float32 search returns before the float64 refinement keeps k."""
    return int(min(k + 8 + k // 4, m))


def refine(queries: np.ndarray, rows: Callable[[np.ndarray], np.ndarray], ids: np.ndarray, k: int,
           metric: str) -> np.ndarray:
    """The ``k`` nearest of each query's found ``ids`` (-1: none) by float64 distance,
    equal distances to the lower id; ``rows(ids)`` gives their embeddings.

    FAISS rounds its float32 products differently for different base sizes (one
    machine or one shard), so its order is taken only as a shortlist of k + 8 + k // 4;
    the float64 order decides, the same on one machine and on shards.
    """
    found = np.unique(ids[ids >= 0])
    pos = np.searchsorted(found, np.maximum(ids, 0))
    key = pair_keys(queries, rows(found), pos, metric)
    key[ids < 0] = np.inf
    order = np.lexsort((np.where(ids < 0, np.iinfo(np.int64).max, ids), key), axis=1)
    best = np.take_along_axis(ids, order, axis=1)[:, :k]
    return np.unique(best[best >= 0])


def neighbourhood(labeled: np.ndarray, embeddings: np.ndarray, candidates: np.ndarray,
                  k: int, metric: str) -> np.ndarray:
    """Sorted union of the ``k`` nearest candidates of every labeled row (float64
    distances, equal ones to the lower item id)."""
    base = np.take(embeddings, candidates, axis=0)
    _, idx, _ = knn(labeled, base, search_width(k, candidates.size), metric=metric)
    ids = np.where(idx >= 0, candidates[np.maximum(idx, 0)], -1)
    return refine(labeled, lambda found: np.take(embeddings, found, axis=0), ids, k, metric)


def seals_subset(inputs: Inputs, params: dict, ctx: Context) -> tuple[np.ndarray, bool]:
    """The candidates SEALS hands to the inner strategy, and whether it fell back to
    all candidates (no labeled set, or k larger than the candidates: small-text's
    delegation)."""
    labeled = inputs.get("labeled_embeddings")
    k = params["k"]
    if labeled is None or labeled.shape[0] == 0 or k > ctx.candidates.size:
        return ctx.candidates, True
    return neighbourhood(labeled, inputs["embeddings"], ctx.candidates, k,
                         params["metric"]), False


def check_subset(subset: np.ndarray, budget: int, k: int) -> None:
    if subset.size < budget:
        raise InvalidInput(f"the kNN neighbourhood of the labeled set holds {subset.size} "
                           f"candidates, fewer than the budget {budget}; raise params.k "
                           f"(now {k})", field="params.k")


def seals(inputs: Inputs, budget: int, params: dict, ctx: Context) -> Selection:
    """SEALS: the inner score strategy's top ``budget`` among the neighbourhood."""
    inner = inner_strategy(params, inputs)
    subset, fallback = seals_subset(inputs, params, ctx)
    check_subset(subset, budget, params["k"])
    ctx.check_cancelled()
    sub = Context(candidates=subset, rng=ctx.rng, tiebreak_rng=ctx.tiebreak_rng,
                  check_cancelled=ctx.check_cancelled, metrics=ctx.metrics)
    scores = np.asarray(inner.fn(inputs, registry.resolve_params(inner, {}), sub),
                        dtype=np.float64)
    picks = argselect(scores, budget, subset, ctx.tiebreak_rng)
    ctx.metrics.update(seals_candidates=float(subset.size), seals_fallback=float(fallback))
    return Selection(indices=picks, scores=scores[picks])


CLUSTER_PARAMS = (
    Param("epsilon", float, 0.0,
          "Average-linkage distance threshold (Euclidean): clusters merge while their "
          "mean edge distance is <= epsilon; 0 means the median kNN-graph edge length.",
          minimum=0.0),
    Param("neighbors", int, 10,
          "Nearest neighbours per item in the clustering graph; >= N - 1 gives exact "
          "average linkage.", minimum=1, maximum=4096),
    Param("graph", str, "auto",
          "kNN graph index: exact (FAISS flat), hnsw (FAISS HNSW, approximate) or auto "
          "(hnsw from 200,000 items).", choices=GRAPHS),
    Param("ef_search", int, 64, "HNSW search beam per item (graph = hnsw).", minimum=1,
          maximum=65536),
)

register(Strategy(
    name="cluster_margin",
    kind="batch",
    fn=cluster_margin,
    required=("probs", "embeddings"),
    description="Cluster-Margin (Citovsky et al. 2021): average-linkage clusters of the "
                "embeddings (computed once per pool rows), then round-robin over the clusters "
                "of the km x budget lowest-margin items, smallest cluster first.",
    params=(
        Param("km", float, 10.0,
              "Lowest-margin items considered, as a multiple of the budget (k_m).",
              minimum=1.0, maximum=1e6),
        *CLUSTER_PARAMS,
    ),
    min_classes=2,
))

register(Strategy(
    name="seals",
    kind="batch",
    fn=seals,
    required=("embeddings",),
    # The inner score strategy's inputs, as for stochastic.
    optional=("labeled_embeddings", "probs", "samples", "scores", "loss", "discriminator",
              "predictions"),
    description="SEALS (Coleman et al. 2022): the inner score strategy ranks only the k "
                "nearest unlabeled neighbours of each labeled item (exact FAISS search).",
    params=(
        Param("score", str, "margin",
              "Score strategy run on the neighbourhood (its default parameters)."),
        Param("k", int, 100, "Nearest unlabeled neighbours per labeled item.", minimum=1,
              maximum=4096),
        Param("metric", str, "cosine",
              "Neighbour metric: cosine (small-text's normalized default) or l2.",
              choices=METRICS),
    ),
))
