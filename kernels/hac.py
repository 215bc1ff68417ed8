"""Average-linkage agglomerative clustering over a kNN graph, cut at a distance.

Exact average linkage needs every pairwise distance (N x N); here the pairs are
the edges of the symmetrized kNN graph (FAISS), and the distance of two clusters
is the mean Euclidean distance over the graph edges between them:

    D(A, B) = sum_{(a, b) in E, a in A, b in B} |h_a - h_b| / |{(a, b) in E}|

Clusters with no edge between them never merge. Greedy: while the smallest D of
adjacent clusters is <= epsilon, merge that pair (equal D: the pair of lower
cluster ids first). When the graph is complete (``neighbors >= N - 1``) every
pair is an edge and D is exactly average linkage (UPGMA), so the clusters are
scipy's ``fcluster(linkage(h, "average"), epsilon, "distance")``. Memory is
O(N * neighbors); edge distances are float64 from the stored rows (FAISS only
chooses the edges).

Graphs: ``exact`` (FAISS flat, O(N^2 d) work) or ``hnsw`` (FAISS HNSW, approximate
neighbours, ~O(N log N) work) for pools of millions.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np
from numba import prange
from numba.typed import List

from assay.vocab.errors import InvalidInput

from . import _validate
from .jit import kernel
from .knn import knn

GRAPHS = ("auto", "exact", "hnsw")
#: Pool size from which ``auto`` builds the graph with HNSW instead of a flat index.
HNSW_MIN_ITEMS = 200_000
#: HNSW links per node and construction beam (FAISS's defaults).
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 40


@dataclass
class Clustering:
    """Cluster id per item (0.. clusters-1, numbered by lowest member), and figures."""

    labels: np.ndarray  # int64[N]
    clusters: int
    epsilon: float
    edges: int
    graph: str


@kernel(parallel=True, nogil=True)
def _edge_lengths(x, u, v, out):
    """out[e] = |x_u[e] - x_v[e]| in float64."""
    d = x.shape[1]
    for e in prange(u.shape[0]):
        acc = 0.0
        for j in range(d):
            t = np.float64(x[u[e], j]) - np.float64(x[v[e], j])
            acc += t * t
        out[e] = np.sqrt(acc)


@kernel(nogil=True)
def _find(parent, i):
    root = i
    while parent[root] != root:
        root = parent[root]
    while parent[i] != root:
        nxt = parent[i]
        parent[i] = root
        i = nxt
    return root


@kernel(nogil=True)
def _merge_lists(parent, root, ids_a, s_a, c_a, ids_b, s_b, c_b):
    """The neighbour list of a merged cluster: old ids mapped to roots, self dropped,
    duplicates summed (edge-distance sums and edge counts add)."""
    m = ids_a.shape[0] + ids_b.shape[0]
    ids = np.empty(m, np.int64)
    s = np.empty(m, np.float64)
    c = np.empty(m, np.int64)
    k = 0
    for t in range(ids_a.shape[0]):
        r = _find(parent, ids_a[t])
        if r != root:
            ids[k] = r
            s[k] = s_a[t]
            c[k] = c_a[t]
            k += 1
    for t in range(ids_b.shape[0]):
        r = _find(parent, ids_b[t])
        if r != root:
            ids[k] = r
            s[k] = s_b[t]
            c[k] = c_b[t]
            k += 1
    order = np.argsort(ids[:k], kind="mergesort")
    out_i = np.empty(k, np.int64)
    out_s = np.empty(k, np.float64)
    out_c = np.empty(k, np.int64)
    n = 0
    for t in range(k):
        j = order[t]
        if n > 0 and out_i[n - 1] == ids[j]:
            out_s[n - 1] += s[j]
            out_c[n - 1] += c[j]
        else:
            out_i[n] = ids[j]
            out_s[n] = s[j]
            out_c[n] = c[j]
            n += 1
    return out_i[:n], out_s[:n], out_c[:n]


@kernel(nogil=True)
def _average_linkage(n, u, v, w, epsilon):
    """Greedy graph average linkage; returns (root per item, merges)."""
    deg = np.zeros(n, np.int64)
    for e in range(u.shape[0]):
        deg[u[e]] += 1
        deg[v[e]] += 1
    start = np.zeros(n + 1, np.int64)
    for i in range(n):
        start[i + 1] = start[i] + deg[i]
    fill = start[:-1].copy()
    nbr = np.empty(start[n], np.int64)
    wt = np.empty(start[n], np.float64)
    for e in range(u.shape[0]):
        nbr[fill[u[e]]] = v[e]
        wt[fill[u[e]]] = w[e]
        fill[u[e]] += 1
        nbr[fill[v[e]]] = u[e]
        wt[fill[v[e]]] = w[e]
        fill[v[e]] += 1
    ids = List()
    sums = List()
    counts = List()
    for i in range(n):
        lo, hi = start[i], start[i + 1]
        order = np.argsort(nbr[lo:hi], kind="mergesort")
        ids.append(nbr[lo:hi][order].copy())
        sums.append(wt[lo:hi][order].copy())
        counts.append(np.ones(hi - lo, np.int64))
    parent = np.arange(n)
    version = np.zeros(n, np.int64)
    heap = [(0.0, 0.0, 0.0, 0.0, 0.0)]
    heap.pop()
    for e in range(u.shape[0]):
        if w[e] <= epsilon:
            a, b = min(u[e], v[e]), max(u[e], v[e])
            heap.append((w[e], float(a), float(b), 0.0, 0.0))
    heapq.heapify(heap)
    merges = 0
    while len(heap) > 0:
        _, fa, fb, va, vb = heapq.heappop(heap)
        a, b = np.int64(fa), np.int64(fb)
        if parent[a] != a or parent[b] != b or version[a] != va or version[b] != vb:
            continue  # stale: a side merged since this pair was pushed
        root, other = (a, b) if ids[a].shape[0] >= ids[b].shape[0] else (b, a)
        parent[other] = root
        version[root] += 1
        mi, ms, mc = _merge_lists(parent, root, ids[root], sums[root], counts[root],
                                  ids[other], sums[other], counts[other])
        ids[root], sums[root], counts[root] = mi, ms, mc
        empty_i = np.empty(0, np.int64)
        ids[other], sums[other], counts[other] = empty_i, np.empty(0, np.float64), empty_i
        merges += 1
        for t in range(mi.shape[0]):
            avg = ms[t] / mc[t]
            if avg <= epsilon:
                c = mi[t]
                lo, hi = (root, c) if root < c else (c, root)
                heapq.heappush(heap, (avg, float(lo), float(hi),
                                      float(version[lo]), float(version[hi])))
    for i in range(n):
        _find(parent, i)
    return parent, merges


@kernel(parallel=True, nogil=True)
def _pair_keys(q, x, pos, cosine, out):
    """out[i, j] = float64 squared distance (or minus the cosine) of q_i and x_pos[i, j]."""
    d = q.shape[1]
    for i in prange(pos.shape[0]):
        qn = 0.0
        for t in range(d):
            qn += np.float64(q[i, t]) * np.float64(q[i, t])
        for j in range(pos.shape[1]):
            r = pos[i, j]
            acc = 0.0
            xn = 0.0
            for t in range(d):
                a = np.float64(q[i, t])
                b = np.float64(x[r, t])
                if cosine:
                    acc += a * b
                    xn += b * b
                else:
                    acc += (a - b) * (a - b)
            if cosine:
                den = np.sqrt(qn) * np.sqrt(xn)
                out[i, j] = -(acc / den) if den > 0.0 else 0.0
            else:
                out[i, j] = acc


def pair_keys(queries: np.ndarray, rows: np.ndarray, pos: np.ndarray, metric: str) -> np.ndarray:
    """float64 [Q, K] ranking keys of query i against ``rows[pos[i, j]]``, ascending = nearer:
    squared Euclidean distance (``l2``) or minus the cosine similarity (``cosine``; a
    zero row has similarity 0)."""
    q = np.ascontiguousarray(queries)
    x = np.ascontiguousarray(rows)
    if q.dtype not in (np.float32, np.float64):
        q = q.astype(np.float32)
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float32)
    out = np.empty(pos.shape, dtype=np.float64)
    if pos.size:
        _pair_keys(q, x, np.ascontiguousarray(pos, dtype=np.int64), metric == "cosine", out)
    return out


def knn_graph(embeddings: np.ndarray, neighbors: int, *, graph: str = "auto",
              ef_search: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """The symmetrized kNN graph: unique edges (u < v) and their float64 lengths.

    Each item's ``neighbors`` nearest other items (squared L2, FAISS; equal
    distances to the lower id) give edges; an edge found from either end counts once.
    """
    x = _validate.matrix(embeddings, "embeddings")
    _validate.bounded(x, "embeddings")
    n = x.shape[0]
    if graph not in GRAPHS:
        raise InvalidInput(f"graph must be one of {', '.join(GRAPHS)}, got {graph!r}",
                           field="graph")
    chosen = graph if graph != "auto" else ("hnsw" if n >= HNSW_MIN_ITEMS else "exact")
    k = min(int(neighbors), n - 1)
    if k < 1:
        empty = np.empty(0, np.int64)
        return empty, empty, np.empty(0, np.float64), chosen
    if chosen == "exact":
        values, idx, _ = knn(x, x, k + 1)
    else:
        values, idx = _hnsw_search(x, k + 1, ef_search)
    idx = _drop_self(values, idx, k)
    rows = np.repeat(np.arange(n, dtype=np.int64), k)
    cols = idx.reshape(-1)
    keep = cols >= 0
    a, b = np.minimum(rows, cols)[keep], np.maximum(rows, cols)[keep]
    key = np.unique(a * n + b)
    u, v = key // n, key % n
    w = np.empty(u.size, dtype=np.float64)
    xs = x if x.dtype in (np.float32, np.float64) else np.asarray(x, dtype=np.float32)
    if u.size:
        _edge_lengths(xs, u, v, w)
    return u, v, w, chosen


def _drop_self(values: np.ndarray, idx: np.ndarray, k: int) -> np.ndarray:
    """k neighbours per row without the row itself, equal distances by lower id."""
    n = idx.shape[0]
    self_id = np.arange(n)[:, None]
    big = np.iinfo(np.int64).max
    key_id = np.where(idx < 0, big, idx)
    key_v = np.where(idx < 0, np.inf, values.astype(np.float64))
    key_v = np.where(idx == self_id, -np.inf, key_v)  # self first, then dropped
    order = np.lexsort((key_id, key_v), axis=1)
    idx = np.take_along_axis(idx, order, axis=1)
    has_self = (idx == self_id).any(axis=1)
    return np.where(has_self[:, None], idx[:, 1:k + 1], idx[:, :k])


def _hnsw_search(x: np.ndarray, k: int, ef_search: int) -> tuple[np.ndarray, np.ndarray]:
    """FAISS HNSW (M = 16, efConstruction = 40: FAISS's defaults), approximate."""
    import faiss

    from . import config
    from .bits import rows_float32

    n, d = x.shape
    index = faiss.IndexHNSWFlat(d, HNSW_M)
    index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    for lo in range(0, n, config.FAISS_BLOCK_ROWS):
        index.add(rows_float32(x, slice(lo, lo + config.FAISS_BLOCK_ROWS)))
    index.hnsw.efSearch = int(max(ef_search, k))
    values = np.empty((n, k), np.float32)
    idx = np.empty((n, k), np.int64)
    for lo in range(0, n, config.FAISS_BLOCK_ROWS):
        block = rows_float32(x, slice(lo, lo + config.FAISS_BLOCK_ROWS))
        dist, found = index.search(block, k)
        values[lo:lo + block.shape[0]] = dist
        idx[lo:lo + block.shape[0]] = found
    return values, idx


def average_linkage_clusters(embeddings: np.ndarray, epsilon: float, neighbors: int, *,
                             graph: str = "auto", ef_search: int = 64) -> Clustering:
    """Average-linkage clusters of the kNN graph, merging while D <= ``epsilon``.

    Parameters
    ----------
    embeddings : float [N, d]
    epsilon : distance threshold (Euclidean); <= 0 means the median edge length.
    neighbors : nearest neighbours per item in the graph (>= N - 1: exact UPGMA).
    graph : ``exact``, ``hnsw`` or ``auto`` (HNSW from ``HNSW_MIN_ITEMS`` items).
    ef_search : HNSW search beam (at least neighbors + 1).
    """
    if int(neighbors) < 1:
        raise InvalidInput(f"neighbors must be >= 1, got {neighbors}", field="neighbors")
    u, v, w, chosen = knn_graph(embeddings, neighbors, graph=graph, ef_search=ef_search)
    n = np.asarray(embeddings).shape[0]
    eps = float(epsilon) if epsilon > 0 else (float(np.median(w)) if w.size else 0.0)
    roots, _ = _average_linkage(n, u, v, w, eps)
    _, first, inverse = np.unique(roots, return_index=True, return_inverse=True)
    # Number clusters by their lowest member.
    rank = np.empty(first.size, np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(first.size)
    labels = rank[inverse].astype(np.int64)
    return Clustering(labels, int(first.size), eps, int(u.size), chosen)
