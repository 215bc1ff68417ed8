"""Cluster-Margin and SEALS against float64 references and small-text's SEALS.

Cluster-Margin has no peer library: its clusters are checked against scipy's exact
average linkage (complete kNN graph) and a slow dict-based twin of the graph-restricted
average linkage (sparse graph); its picks against a literal transcription of the
paper's round-robin on those clusters. SEALS is checked against a float64
brute-force neighbourhood and against ``small_text.query_strategies.SEALS`` run with
an exact index in place of hnswlib (same k, same base strategy).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import seeding
from scipy.cluster.hierarchy import fcluster, linkage

from assay.kernels.hac import average_linkage_clusters, knn_graph
from assay.server.acquisition import selection
from assay.server.strategies import large_batch
from assay.vocab.errors import InvalidInput


def renumber(labels: np.ndarray) -> np.ndarray:
    """Cluster ids numbered by their lowest member (the kernel's numbering)."""
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.empty(first.size, np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(first.size)
    return rank[inverse]


def scipy_clusters(h: np.ndarray, eps: float) -> np.ndarray:
    """Exact average linkage (UPGMA) in float64, cut at distance ``eps``."""
    return renumber(fcluster(linkage(np.asarray(h, np.float64), "average"), eps, "distance"))


def gap_threshold(h: np.ndarray, rank: int) -> float:
    """A threshold midway between two merge heights far from each other, so float
    rounding cannot move a merge across it."""
    heights = np.sort(linkage(np.asarray(h, np.float64), "average")[:, 2])
    gaps = np.diff(heights)
    if gaps.size == 0:
        return float(heights[-1] * 1.5)
    lo = min(max(1, rank - 5), gaps.size - 1)
    i = lo + int(np.argmax(gaps[lo:rank + 5]))
    return float((heights[i] + heights[i + 1]) / 2)


def graph_average_linkage(h: np.ndarray, k: int, eps: float) -> np.ndarray:
    """Slow twin of the sparse variant: clusters as sets, edges of the symmetrized
    kNN graph (float64 brute force), D = mean edge length between two clusters."""
    x = np.asarray(h, np.float64)
    n = x.shape[0]
    d = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    edges = {}
    for i in range(n):
        order = sorted((j for j in range(n) if j != i), key=lambda j: (d[i, j], j))[:k]
        for j in order:
            edges[(min(i, j), max(i, j))] = d[i, j]
    clusters = {i: {i} for i in range(n)}
    while True:
        best = None
        keys = sorted(clusters)
        for ai, a in enumerate(keys):
            for b in keys[ai + 1:]:
                ws = [w for (u, v), w in edges.items()
                      if (u in clusters[a] and v in clusters[b])
                      or (u in clusters[b] and v in clusters[a])]
                if ws and (best is None or np.mean(ws) < best[0]):
                    best = (np.mean(ws), a, b)
        if best is None or best[0] > eps:
            break
        _, a, b = best
        clusters[a] |= clusters.pop(b)
    labels = np.empty(n, np.int64)
    for c, members in clusters.items():
        labels[list(members)] = c
    return renumber(labels)


def reference_cluster_margin(probs, labels, budget, km, candidates, seed):
    """The paper's Algorithm 1 on given clusters, in float64, written out literally."""
    p = np.sort(np.asarray(probs, np.float64), axis=1)
    margin = p[:, -1] - p[:, -2]
    m = min(max(budget, math.ceil(km * budget)), candidates.size)
    lowest = sorted(candidates, key=lambda i: (margin[i], i))[:m]
    items = np.sort(np.array(lowest, np.int64))
    key = np.random.default_rng(seed).permutation(items.size)
    groups: dict[int, list[tuple[int, int]]] = {}
    for pos, item in enumerate(items):
        groups.setdefault(int(labels[item]), []).append((int(key[pos]), int(item)))
    ordered = sorted(groups, key=lambda c: (len(groups[c]), c))
    queues = [[item for _, item in sorted(groups[c])] for c in ordered]
    picks = []
    while len(picks) < budget:
        for q in queues:
            if q and len(picks) < budget:
                picks.append(q.pop(0))
    return np.array(picks, np.int64), -margin[picks]


def blobs(rng, n, d=4, centres=6):
    c = rng.normal(scale=6.0, size=(centres, d))
    return (c[rng.integers(0, centres, n)] + rng.normal(size=(n, d))).astype(np.float32)


# -- clusters ---------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 30, 80])
def test_complete_graph_is_exact_average_linkage(n):
    rng = seeding.rng()
    for _ in range(3):
        h = blobs(rng, n)
        eps = gap_threshold(h, max(1, n // 2))
        got = average_linkage_clusters(h, eps, n - 1, graph="exact")
        assert np.array_equal(got.labels, scipy_clusters(h, eps)), (n, eps)


def test_sparse_graph_matches_slow_twin():
    rng = seeding.rng()
    for k in (2, 4):
        h = blobs(rng, 35, centres=4)
        w = knn_graph(h, k, graph="exact")[2]
        eps = float(np.quantile(w, 0.7))
        got = average_linkage_clusters(h, eps, k, graph="exact")
        assert np.array_equal(got.labels, graph_average_linkage(h, k, eps)), (k, eps)


def test_clusters_never_span_graph_components_and_duplicates_merge():
    rng = seeding.rng()
    h = blobs(rng, 40)
    h[5] = h[7]
    h[20] = h[7]
    got = average_linkage_clusters(h, 1e-6, 3, graph="exact")
    assert got.labels[5] == got.labels[7] == got.labels[20]
    assert got.clusters == 38  # only the duplicates merged
    huge = average_linkage_clusters(h, 1e9, 39, graph="exact")
    assert huge.clusters == 1


def test_hnsw_graph_finds_most_exact_edges():
    rng = seeding.rng()
    h = blobs(rng, 300, d=8)
    exact = knn_graph(h, 5, graph="exact")
    approx = knn_graph(h, 5, graph="hnsw", ef_search=300)
    assert approx[3] == "hnsw"
    key = lambda g: set(zip(g[0].tolist(), g[1].tolist(), strict=True))  # noqa: E731
    assert len(key(approx) & key(exact)) >= 0.95 * len(key(exact))
    got = average_linkage_clusters(h, 0.0, 5, graph="hnsw")
    assert got.graph == "hnsw" and 1 <= got.clusters <= 300


# -- Cluster-Margin picks -----------------------------------------------------------


@pytest.mark.parametrize("budget", [1, 7, 25])
def test_cluster_margin_matches_reference(budget):
    rng = seeding.rng()
    n = 60
    for trial in range(3):
        h = blobs(rng, n)
        probs = rng.dirichlet(np.ones(4), size=n)
        eps = gap_threshold(h, n // 3)
        exclude = np.sort(rng.choice(n, 5, replace=False))
        params = {"epsilon": eps, "neighbors": n - 1, "graph": "exact", "km": 2.5}
        seed = int(rng.integers(1 << 30))
        got = selection.select("cluster_margin", budget, {"embeddings": h, "probs": probs},
                               params, seed=seed, exclude=exclude)
        candidates = np.setdiff1d(np.arange(n), exclude)
        want, scores = reference_cluster_margin(probs, scipy_clusters(h, eps), budget, 2.5,
                                                candidates, seed)
        assert got.indices.tolist() == want.tolist(), (trial, seed)
        np.testing.assert_allclose(got.scores, scores, rtol=0, atol=1e-12)


def test_cluster_margin_budget_n_and_one_item():
    rng = seeding.rng()
    h = blobs(rng, 12)
    probs = rng.dirichlet(np.ones(3), size=12)
    got = selection.select("cluster_margin", 12, {"embeddings": h, "probs": probs},
                           {"epsilon": 3.0}, seed=1)
    assert sorted(got.indices.tolist()) == list(range(12))
    one = selection.select("cluster_margin", 1, {"embeddings": h[:1], "probs": probs[:1]},
                           {}, seed=1)
    assert one.indices.tolist() == [0]


def test_cluster_margin_ties_and_duplicates_replay_from_the_seed():
    rng = seeding.rng()
    h = np.repeat(blobs(rng, 10), 3, axis=0)  # every row three times
    probs = np.repeat(rng.dirichlet(np.ones(3), size=10), 3, axis=0)  # tied margins
    arrays = {"embeddings": h, "probs": probs}
    a = selection.select("cluster_margin", 8, arrays, {"km": 2.0}, seed=5)
    b = selection.select("cluster_margin", 8, arrays, {"km": 2.0}, seed=5)
    assert a.indices.tolist() == b.indices.tolist()
    assert np.unique(a.indices).size == 8
    labels = average_linkage_clusters(h, a.metrics["epsilon"], 10).labels
    assert (labels[0::3] == labels[1::3]).all() and (labels[0::3] == labels[2::3]).all()


def test_clustering_is_cached_for_read_only_rows_only():
    rng = seeding.rng()
    h = blobs(rng, 50)
    probs = rng.dirichlet(np.ones(3), size=50)
    first = selection.select("cluster_margin", 5, {"embeddings": h, "probs": probs}, {}, seed=1)
    again = selection.select("cluster_margin", 5, {"embeddings": h, "probs": probs}, {}, seed=1)
    assert first.metrics["cluster_cache_hit"] == again.metrics["cluster_cache_hit"] == 0.0
    h.flags.writeable = False
    runs = [selection.select("cluster_margin", 5, {"embeddings": h, "probs": probs}, {},
                             seed=1) for _ in range(2)]
    assert [r.metrics["cluster_cache_hit"] for r in runs] == [0.0, 1.0]
    assert runs[0].indices.tolist() == runs[1].indices.tolist() == first.indices.tolist()
    other = selection.select("cluster_margin", 5, {"embeddings": h, "probs": probs},
                             {"neighbors": 3}, seed=1)
    assert other.metrics["cluster_cache_hit"] == 0.0


@pytest.mark.parametrize("strategy,params,field", [
    ("cluster_margin", {"epsilon": -1.0}, "params.epsilon"),
    ("cluster_margin", {"km": 0.5}, "params.km"),
    ("cluster_margin", {"graph": "ivf"}, "params.graph"),
    ("cluster_margin", {"neighbors": 0}, "params.neighbors"),
    ("seals", {"score": "coreset"}, "params.score"),
    ("seals", {"score": "nope"}, "params.score"),
    ("seals", {"metric": "ip"}, "params.metric"),
    ("seals", {"k": 0}, "params.k"),
    ("seals", {"score": "bald"}, "inputs.samples"),
])
def test_bad_input_names_the_field(strategy, params, field):
    rng = seeding.rng()
    h = blobs(rng, 20)
    arrays = {"embeddings": h, "probs": rng.dirichlet(np.ones(3), size=20),
              "labeled_embeddings": h[:2]}
    with pytest.raises(InvalidInput) as err:
        selection.select(strategy, 3, arrays, params, seed=1)
    assert err.value.field == field


def test_cluster_margin_needs_probs():
    h = blobs(seeding.rng(), 10)
    with pytest.raises(InvalidInput) as err:
        selection.select("cluster_margin", 2, {"embeddings": h}, {}, seed=1)
    assert err.value.field == "inputs.probs"


# -- SEALS --------------------------------------------------------------------------


def reference_neighbourhood(labeled, h, candidates, k):
    """float64 brute force: cosine similarity, ties to the lower index."""
    def unit(x):
        x = np.asarray(x, np.float64)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    sims = unit(labeled) @ unit(h[candidates]).T
    out = set()
    for row in sims:
        order = sorted(range(candidates.size), key=lambda j: (-row[j], candidates[j]))[:k]
        out.update(int(candidates[j]) for j in order)
    return np.array(sorted(out), np.int64)


def test_seals_matches_float64_reference():
    rng = seeding.rng()
    n = 200
    for k in (1, 5, 20):
        h = rng.normal(size=(n, 8)).astype(np.float32)
        probs = rng.dirichlet(np.ones(4), size=n)
        labeled = np.sort(rng.choice(n, 6, replace=False))
        arrays = {"embeddings": h, "probs": probs, "labeled_embeddings": h[labeled]}
        got = selection.select("seals", 4, arrays, {"k": k}, seed=2, exclude=labeled)
        candidates = np.setdiff1d(np.arange(n), labeled)
        subset = reference_neighbourhood(h[labeled], h, candidates, k)
        assert got.metrics["seals_candidates"] == subset.size
        p = np.sort(probs, axis=1)
        margin = p[:, -1] - p[:, -2]
        want = sorted(subset, key=lambda i: (margin[i], i))[:4]
        assert got.indices.tolist() == want


class ExactIndex:
    """hnswlib's interface over an exact float64 search (ties to the lower label)."""

    def __init__(self, embeddings, labels):
        self.x = np.asarray(embeddings, np.float64)
        self.labels = np.asarray(labels, np.int64)
        self.deleted: set[int] = set()

    def mark_deleted(self, label):
        self.deleted.add(int(label))

    def knn_query(self, queries, k):
        alive = np.array([lab not in self.deleted for lab in self.labels])
        labels = self.labels[alive]
        base = self.x[labels]
        q = np.asarray(queries, np.float64)
        d = ((q[:, None, :] - base[None, :, :]) ** 2).sum(-1)
        order = np.lexsort((np.broadcast_to(labels, d.shape), d), axis=1)[:, :k]
        return labels[order], np.take_along_axis(d, order, axis=1)


class FixedModel:
    def __init__(self, probs, embeddings):
        self.probs, self.embeddings = probs, embeddings

    def predict_proba(self, dataset):
        return self.probs

    def embed(self, dataset, pbar=None):
        return self.embeddings


def small_text_seals(k, base):
    from small_text.query_strategies import SEALS

    peer = SEALS.__new__(SEALS)  # its constructor insists on hnswlib, replaced here
    peer.__dict__.update(base_query_strategy=base, k=k, hnsw_kwargs={}, embed_kwargs={},
                         normalize=True, nn=None)
    peer.initialize_index = lambda emb, unlabeled, kwargs: ExactIndex(emb, unlabeled)
    return peer


@pytest.mark.parametrize("inner,peer_name", [("margin", "BreakingTies"),
                                             ("least_confident", "LeastConfidence")])
def test_seals_matches_small_text(inner, peer_name):
    import small_text.query_strategies as st

    rng = seeding.rng()
    n = 150
    for k in (3, 10, 200):  # 200 > unlabeled: small-text delegates to the base strategy
        h = rng.normal(size=(n, 6)).astype(np.float32)
        probs = rng.dirichlet(np.ones(5), size=n)
        labeled = np.sort(rng.choice(n, 5, replace=False))
        unlabeled = np.setdiff1d(np.arange(n), labeled)
        peer = small_text_seals(k, getattr(st, peer_name)())
        model = FixedModel(probs, h)
        want = peer.query(model, probs, unlabeled, labeled, np.zeros(5, int), n=6)
        arrays = {"embeddings": h, "probs": probs, "labeled_embeddings": h[labeled]}
        got = selection.select("seals", 6, arrays, {"k": k, "score": inner}, seed=3,
                               exclude=labeled)
        assert sorted(got.indices.tolist()) == sorted(want.tolist()), k
        if k <= unlabeled.size:
            subset = peer.get_subset_indices(model, probs, unlabeled, labeled)
            assert got.metrics["seals_candidates"] == subset.size
            assert got.metrics["seals_fallback"] == 0.0


def test_seals_without_labels_scores_every_candidate():
    rng = seeding.rng()
    h = rng.normal(size=(40, 4)).astype(np.float32)
    probs = rng.dirichlet(np.ones(3), size=40)
    got = selection.select("seals", 5, {"embeddings": h, "probs": probs}, {"k": 3}, seed=1)
    plain = selection.select("margin", 5, {"probs": probs}, seed=1)
    assert got.indices.tolist() == plain.indices.tolist()
    assert got.metrics["seals_fallback"] == 1.0


def test_seals_neighbourhood_smaller_than_budget_is_refused():
    rng = seeding.rng()
    h = rng.normal(size=(40, 4)).astype(np.float32)
    arrays = {"embeddings": h, "probs": rng.dirichlet(np.ones(3), size=40),
              "labeled_embeddings": h[:1]}
    with pytest.raises(InvalidInput) as err:
        selection.select("seals", 5, arrays, {"k": 2}, seed=1)
    assert err.value.field == "params.k"
    ok = selection.select("seals", 2, arrays, {"k": 2}, seed=1)
    assert ok.metrics["seals_candidates"] == 2.0


def test_seals_budget_n_duplicates_and_prefilter():
    rng = seeding.rng()
    h = np.repeat(rng.normal(size=(10, 4)).astype(np.float32), 2, axis=0)
    probs = rng.dirichlet(np.ones(3), size=20)
    arrays = {"embeddings": h, "probs": probs, "labeled_embeddings": h[:2]}
    full = selection.select("seals", 20, arrays, {"k": 20}, seed=1)
    assert sorted(full.indices.tolist()) == list(range(20))
    # Duplicates tie on distance: the lower ids win the k-th place.
    two = selection.select("seals", 2, arrays, {"k": 2, "score": "entropy"}, seed=1)
    assert two.metrics["seals_candidates"] == 2.0 and sorted(two.indices.tolist()) == [0, 1]
    pre = selection.select("seals", 3, arrays, {"k": 4, "prefilter": "entropy",
                                                "prefilter_k": 10}, seed=1)
    kept = selection.select("entropy", 10, {"probs": probs}, seed=1).indices
    assert set(pre.indices.tolist()) <= set(kept.tolist())


def test_large_batch_helpers():
    assert large_batch.margin_pool_size(3, 2.5, 100) == 8
    assert large_batch.margin_pool_size(3, 2.5, 5) == 5
    order = large_batch.round_robin(np.arange(6), np.array([0, 0, 0, 1, 1, 2]), 6,
                                    np.random.default_rng(0))
    clusters = np.array([0, 0, 0, 1, 1, 2])[order]
    assert clusters.tolist()[:3] == [2, 1, 0] and clusters.tolist()[3:5] == [1, 0]
