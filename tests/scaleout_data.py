"""Random pools for the scale-out tests: ties and exact duplicates on purpose."""

from __future__ import annotations

import itertools

import numpy as np


def pool_arrays(rng: np.random.Generator, n: int, d: int, c: int, *, grid: bool,
                samples: int = 0) -> dict[str, np.ndarray]:
    """Embeddings (on a small integer grid when ``grid``: many equal distances and
    duplicate rows), probabilities with some one-hot and duplicated rows, and
    optionally ``samples`` MC passes."""
    if grid:
        emb = rng.integers(0, 3, size=(n, d)).astype(np.float32)
    else:
        emb = rng.standard_normal((n, d)).astype(np.float32)
        emb[rng.integers(0, n, n // 10)] = emb[rng.integers(0, n, n // 10)]
    probs = rng.dirichlet(np.ones(c), size=n).astype(np.float32)
    onehot = rng.random(n) < 0.1
    probs[onehot] = np.eye(c, dtype=np.float32)[rng.integers(0, c, int(onehot.sum()))]
    probs[rng.integers(0, n, n // 10)] = probs[rng.integers(0, n, n // 10)]
    out = {"embeddings": emb, "probs": probs}
    if samples:
        out["samples"] = rng.dirichlet(np.ones(c), size=(samples, n)).astype(np.float32)
        del out["probs"]
    return out


def appends(rng: np.random.Generator, n: int, parts: int) -> list[tuple[int, int]]:
    """(start, stop) of ``parts`` appends of random sizes covering [0, n)."""
    cuts = np.sort(rng.choice(np.arange(1, n), size=parts - 1, replace=False))
    edges = [0, *cuts.tolist(), n]
    return list(itertools.pairwise(edges))
