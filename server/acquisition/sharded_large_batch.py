"""Cluster-Margin and SEALS over a sharded pool: the single-machine answer.

``cluster_margin``: the clustering depends on every row, so the driver gathers the
embeddings once per pool rows (its shards' segments) and clusters them with the
single-machine function (kept as on one machine); each request then needs only
the M lowest margins, which the shards rank where the rows live (``top_b``, equal
to ``argselect`` over the whole pool), and the same round-robin on the driver.

``seals``: every shard searches its candidates for the labeled rows' k + 8 + k // 4 nearest
(FAISS), the driver refines them by float64 distance exactly as one machine does,
and the inner score strategy ranks the neighbourhood on the shards through a
session restricted to it. The inner strategy must be row-local (its score of an
item reads only that item's rows).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from assay.kernels.hac import average_linkage_clusters
from assay.vocab.errors import FailedPrecondition, InvalidInput

from ..pools.store import ShardedPool
from ..scaleout.backend import ShardedBackend
from ..scaleout.knn import knn as sharded_knn
from ..scaleout.topb import ROW_LOCAL, top_b
from ..strategies import large_batch
from ..strategies.named import score_strategy
from ..strategies.registry import Selection


def cluster_margin(backend: ShardedBackend, pool: ShardedPool, exclude: np.ndarray,
                   budget: int, params: dict, *, rng: np.random.Generator,
                   tiebreak: np.random.Generator | None, metrics: dict[str, float],
                   check_cancelled: Callable[[], None] = lambda: None) -> Selection:
    """Cluster-Margin on a sharded pool; ``exclude`` holds the labeled items too."""
    n = pool.info.item_count

    def compute():
        rows = backend.gather(pool, np.arange(n, dtype=np.int64), "embeddings")
        return average_linkage_clusters(
            rows, params["epsilon"], params["neighbors"], graph=params["graph"],
            ef_search=params["ef_search"])

    identity = ("sharded", pool.uid, pool.segments, large_batch.clustering_key(params))
    clustering, hit = large_batch.cached_clustering(identity, compute)
    check_cancelled()
    with backend.session(pool, exclude) as session:
        m = large_batch.margin_pool_size(budget, params["km"], session.total)
        items, scores = top_b(session, "margin", {}, m, tiebreak)
    order = np.argsort(items)
    items, scores = items[order], scores[order]
    chosen = large_batch.round_robin(items, clustering.labels[items], budget, rng)
    picks = items[chosen]
    metrics.update(clusters=float(clustering.clusters), epsilon=clustering.epsilon,
                   graph_edges=float(clustering.edges), cluster_cache_hit=float(hit),
                   margin_items=float(m),
                   clusters_in_batch=float(np.unique(clustering.labels[picks]).size))
    return Selection(indices=picks, scores=scores[chosen])


def seals(backend: ShardedBackend, pool: ShardedPool, exclude: np.ndarray, budget: int,
          params: dict, *, tiebreak: np.random.Generator | None, metrics: dict[str, float],
          check_cancelled: Callable[[], None] = lambda: None) -> Selection:
    """SEALS on a sharded pool; ``exclude`` holds the labeled items too."""
    inner = score_strategy(params["score"], "params.score")
    if inner.name not in ROW_LOCAL:
        raise FailedPrecondition(
            f"seals on a sharded pool needs a row-local score strategy; {inner.name!r} is "
            f"not one. These are: {', '.join(sorted(ROW_LOCAL))}", field="params.score",
            reason="NOT_SHARDABLE")
    have = {a.name for a in pool.info.arrays} | (
        {"probs"} if any(a.name == "samples" for a in pool.info.arrays) else set())
    for role in inner.required:
        if role not in have:
            raise InvalidInput(f"strategy 'seals' with score {inner.name!r} needs input "
                               f"{role!r}", field=f"inputs.{role}", reason="MISSING_INPUT")
    k, metric = params["k"], params["metric"]
    labeled = pool.labeled
    with backend.session(pool, exclude) as session:
        total = session.total
        fallback = labeled.size == 0 or k > total
        if not fallback:
            queries = backend.gather(pool, labeled, "embeddings")
            _, ids = sharded_knn(session, queries, large_batch.search_width(k, total), metric)
            subset = large_batch.refine(
                queries, lambda found: backend.gather(pool, found, "embeddings"), ids, k,
                metric)
            large_batch.check_subset(subset, budget, k)
    check_cancelled()
    restrict = None if fallback else subset
    with backend.session(pool, exclude, restrict) as session:
        picks, scores = top_b(session, inner.name, {}, budget, tiebreak)
    metrics.update(seals_candidates=float(total if fallback else subset.size),
                   seals_fallback=float(fallback))
    return Selection(indices=picks, scores=scores)
