"""Reference BADGE seedings for the benchmark: the repository's ``init_centers`` on
materialized gradient embeddings, and a quick factorized NumPy version."""

from __future__ import annotations

import numpy as np
from scipy import stats
from sklearn.metrics import pairwise_distances


def gradient_embeddings(p: np.ndarray, h: np.ndarray) -> np.ndarray:
    """g = (p - e_argmax) (x) h, materialized: N x C*d float32."""
    q = p.astype(np.float32).copy()
    q[np.arange(p.shape[0]), np.argmax(p, axis=1)] -= 1.0
    return (q[:, :, None] * h[:, None, :]).reshape(p.shape[0], -1)


def init_centers(x: np.ndarray, k: int, rng: np.random.Generator) -> list[int]:
    """k-means++ seeding as in the BADGE repository (pairwise_distances, rv_discrete)."""
    ind = int(np.argmax([np.linalg.norm(s, 2) for s in x]))
    mu, inds = [x[ind]], [ind]
    while len(mu) < k:
        if len(mu) == 1:
            d2 = pairwise_distances(x, mu).ravel().astype(float)
        else:
            d2 = np.minimum(d2, pairwise_distances(x, [mu[-1]]).ravel().astype(float))
        dist = (d2 ** 2) / np.sum(d2 ** 2)
        custom = stats.rv_discrete(name="custm", values=(np.arange(len(d2)), dist))
        ind = int(custom.rvs(size=1, random_state=rng)[0])
        while ind in inds:
            ind = int(custom.rvs(size=1, random_state=rng)[0])
        mu.append(x[ind])
        inds.append(ind)
    return inds


def factorized_numpy(p: np.ndarray, h: np.ndarray, k: int, rng: np.random.Generator
                     ) -> list[int]:
    """The same seeding with the factorized distance in vectorized NumPy (no Numba)."""
    q = p.astype(np.float32).copy()
    q[np.arange(p.shape[0]), np.argmax(p, axis=1)] -= 1.0
    gn = (q.astype(np.float64) ** 2).sum(1) * (h.astype(np.float64) ** 2).sum(1)
    pos = int(np.argmax(gn))
    picks = [pos]
    d2 = np.full(p.shape[0], np.inf)
    for _ in range(k - 1):
        z = picks[-1]
        new = gn + gn[z] - 2.0 * (q @ q[z]).astype(np.float64) * (h @ h[z]).astype(np.float64)
        d2 = np.minimum(d2, np.maximum(new, 0.0))
        d2[picks] = 0.0
        cdf = np.cumsum(d2 / d2.sum())
        picks.append(int(np.searchsorted(cdf, rng.random(), side="left")))
    return picks
