"""Slow, obviously correct twins of the kernels, in float64 NumPy.

Every compiled backend (Numba CPU, Numba-CUDA, FAISS) is checked against these.
They follow the definitions in docs/strategies.md line by line and favour clarity over
speed: Python loops, full distance recomputation, no fusion.
"""

from __future__ import annotations

import numpy as np


def as64(a) -> np.ndarray:
    """Any float array (bfloat16 included) as float64."""
    return np.asarray(a).astype(np.float64)


def sqdist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared Euclidean distance of every row of ``a`` to the vector ``b``."""
    return ((a - b) ** 2).sum(axis=1)


def kcenter(x, budget, labeled=None, candidates=None, first=None):
    """k-center greedy: picks, distance at pick time, final covering radius.

    ``first`` is the position (into the candidates) of the first centre when there
    is no labeled set. Ties go to the lowest candidate; picked items never return.
    """
    x = as64(x)
    rows = np.arange(x.shape[0]) if candidates is None else np.asarray(candidates)
    pool = x[rows]
    delta = np.full(rows.size, np.inf)
    if labeled is not None and len(labeled):
        for c in as64(labeled):
            delta = np.minimum(delta, sqdist(pool, c))
    picked = np.zeros(rows.size, dtype=bool)
    picks, dists = [], []
    for s in range(budget):
        if s == 0 and not np.isfinite(delta).any():
            pos = first
        else:
            masked = np.where(picked, -1.0, delta)
            pos = int(np.argmax(masked))
        picks.append(int(rows[pos]))
        dists.append(float(np.sqrt(delta[pos])))
        picked[pos] = True
        delta = np.minimum(delta, sqdist(pool, pool[pos]))
    rest = delta[~picked]
    radius = float(np.sqrt(rest.max())) if rest.size else 0.0
    return np.array(picks), np.array(dists), radius


def kcenter_deltas(x, picks, labeled=None, candidates=None):
    """Float64 Delta over the candidates before each pick in ``picks`` is made.

    Returns a list of (delta, picked) pairs, one per step, for tie-aware checks.
    """
    x = as64(x)
    rows = np.arange(x.shape[0]) if candidates is None else np.asarray(candidates)
    pool = x[rows]
    pos_of = {int(r): i for i, r in enumerate(rows)}
    delta = np.full(rows.size, np.inf)
    if labeled is not None and len(labeled):
        for c in as64(labeled):
            delta = np.minimum(delta, sqdist(pool, c))
    picked = np.zeros(rows.size, dtype=bool)
    out = []
    for r in picks:
        out.append((delta.copy(), picked.copy()))
        pos = pos_of[int(r)]
        picked[pos] = True
        delta = np.minimum(delta, sqdist(pool, pool[pos]))
    return out


def gradient_embeddings(probs, embeddings):
    """Materialized BADGE gradient embeddings g_x = (p_x - e_argmax) (x) h_x, [N, C*d]."""
    p = as64(probs)
    h = as64(embeddings)
    q = p.copy()
    q[np.arange(p.shape[0]), np.argmax(p, axis=1)] -= 1.0
    return (q[:, :, None] * h[:, None, :]).reshape(p.shape[0], -1)


def badge(probs, embeddings, budget, rng, candidates=None):
    """k-means++ seeding on materialized gradient embeddings with inverse-CDF draws.

    First pick argmax |g|; then one uniform u per pick and the first position whose
    cumulative D^2 share reaches u. When all D are zero, the lowest unpicked position.
    """
    g = gradient_embeddings(probs, embeddings)
    rows = np.arange(g.shape[0]) if candidates is None else np.asarray(candidates)
    g = g[rows]
    pos = int(np.argmax(np.sqrt((g * g).sum(axis=1))))
    picks = [pos]
    d2 = np.full(rows.size, np.inf)
    for _ in range(budget - 1):
        d2 = np.minimum(d2, sqdist(g, g[picks[-1]]))
        d2[picks] = 0.0
        u = rng.random()
        if d2.sum() > 0:
            cdf = np.cumsum(d2 / d2.sum())
            pos = int(np.flatnonzero(cdf >= u)[0])
        else:
            pos = int(np.flatnonzero(~np.isin(np.arange(rows.size), picks))[0])
        picks.append(pos)
    return rows[np.array(picks)]


def knn(queries, base, k):
    """Exact k nearest base rows of each query by squared L2, ties to the lower row.

    Missing neighbours (k > len(base)) are -1 with distance +inf.
    """
    q, b = as64(queries), as64(base)
    idx = np.full((q.shape[0], k), -1, dtype=np.int64)
    dist = np.full((q.shape[0], k), np.inf)
    for i, row in enumerate(q):
        d = sqdist(b, row)
        order = np.lexsort((np.arange(b.shape[0]), d))[:k]
        idx[i, : order.size] = order
        dist[i, : order.size] = d[order]
    return dist, idx


def facility_location(embeddings, budget, candidates=None, universe=None):
    """Plain greedy max-cover F(S) = sum_u max_{s in S} cos(h_s, h_u), baseline -1.

    Recomputes every candidate's gain at every step; ties go to the lower candidate.
    """
    h = as64(embeddings)
    h = h / np.maximum(np.linalg.norm(h, axis=1, keepdims=True), 1e-300)
    cand = np.arange(h.shape[0]) if candidates is None else np.asarray(candidates)
    uni = np.arange(h.shape[0]) if universe is None else np.asarray(universe)
    sims = h[cand] @ h[uni].T
    cur = np.full(uni.size, -1.0)
    picks, gains = [], []
    taken = np.zeros(cand.size, dtype=bool)
    for _ in range(budget):
        g = np.maximum(sims - cur, 0.0).sum(axis=1)
        g[taken] = -np.inf
        j = int(np.argmax(g))
        picks.append(int(cand[j]))
        gains.append(float(g[j]))
        taken[j] = True
        cur = np.maximum(cur, sims[j])
    return np.array(picks), np.array(gains)
