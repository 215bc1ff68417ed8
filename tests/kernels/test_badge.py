"""BADGE k-means++ kernel against its float64 twin and a faithful re-implementation of
the reference ``init_centers`` (materialized gradient embeddings, sklearn distances,
scipy ``rv_discrete`` draws)."""

from __future__ import annotations

import assay_naive_kernels as naive
import ml_dtypes
import numpy as np
import pytest
import seeding
from scipy import stats
from sklearn.metrics import pairwise_distances

from assay.kernels.badge import badge_kmeanspp
from assay.vocab.errors import InvalidInput


def probs_of(rng, n, c, ties=False):
    logits = rng.standard_normal((n, c)) * 2
    if ties:
        logits = np.round(logits)  # equal top classes and equal rows
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


def init_centers_reference(x: np.ndarray, k: int, rng: np.random.Generator) -> list[int]:
    """The BADGE repository's k-means++ seeding, written from the paper: first centre the
    largest gradient norm, then ``pairwise_distances`` to the newest centre, a running
    minimum, and one ``rv_discrete`` draw with probabilities D^2 / sum D^2, redrawn
    while it hits a chosen index. ``random_state`` is passed instead of global state."""
    ind = int(np.argmax([np.linalg.norm(s, 2) for s in x]))
    mu = [x[ind]]
    inds_all = [ind]
    while len(mu) < k:
        if len(mu) == 1:
            d2 = pairwise_distances(x, mu).ravel().astype(float)
        else:
            new_d = pairwise_distances(x, [mu[-1]]).ravel().astype(float)
            d2 = np.minimum(d2, new_d)
        d2 = d2.ravel().astype(float)
        ddist = (d2 ** 2) / np.sum(d2 ** 2)
        custom = stats.rv_discrete(name="custm", values=(np.arange(len(d2)), ddist))
        ind = int(custom.rvs(size=1, random_state=rng)[0])
        while ind in inds_all:
            ind = int(custom.rvs(size=1, random_state=rng)[0])
        mu.append(x[ind])
        inds_all.append(ind)
    return inds_all


@pytest.mark.parametrize("trial", range(3))
def test_same_picks_as_init_centers_for_the_same_seed(trial):
    rng = seeding.rng()
    n, c, d = int(rng.integers(100, 400)), int(rng.integers(2, 8)), int(rng.integers(2, 24))
    p, h = probs_of(rng, n, c), rng.standard_normal((n, d))
    budget = int(rng.integers(2, 30))
    seed = int(rng.integers(2**32))
    ref = init_centers_reference(naive.gradient_embeddings(p, h), budget,
                                 np.random.default_rng(seed))
    got = badge_kmeanspp(p, h, budget, rng=np.random.default_rng(seed))
    assert got.indices.tolist() == ref
    assert got.backend == "numba-cpu"


@pytest.mark.parametrize("dtype", [np.float32, np.float16, ml_dtypes.bfloat16],
                         ids=lambda t: np.dtype(t).name)
@pytest.mark.parametrize("subset", [False, True])
def test_matches_float64_twin(dtype, subset):
    rng = seeding.rng()
    n, c, d = int(rng.integers(100, 500)), int(rng.integers(1, 6)), int(rng.integers(1, 40))
    p = probs_of(rng, n, c, ties=True).astype(np.float32)
    h = rng.integers(-2, 3, size=(n, d)).astype(dtype)  # exact in every dtype
    cand = np.sort(rng.choice(n, size=n // 3, replace=False)) if subset else None
    m = n if cand is None else cand.size
    budget = int(rng.integers(1, min(m, 25) + 1))
    seed = int(rng.integers(2**32))
    got = badge_kmeanspp(p, h, budget, candidates=cand, rng=np.random.default_rng(seed))
    ref = naive.badge(p, h, budget, np.random.default_rng(seed), cand)
    np.testing.assert_array_equal(got.indices, ref)
    assert len(set(got.indices.tolist())) == budget


def test_edge_cases():
    rng = seeding.rng()
    h = rng.standard_normal((12, 3)).astype(np.float32)
    p = probs_of(rng, 12, 3).astype(np.float32)
    one = badge_kmeanspp(p[:1], h[:1], 1)
    assert one.indices.tolist() == [0]
    assert one.distances[0] == pytest.approx(np.linalg.norm(naive.gradient_embeddings(
        p[:1], h[:1])))
    full = badge_kmeanspp(p, h, 12, rng=rng)
    assert sorted(full.indices.tolist()) == list(range(12))
    # identical items: after the first, every D is 0; the lowest unpicked rows follow.
    dup = badge_kmeanspp(np.tile(p[:1], (6, 1)), np.tile(h[:1], (6, 1)), 4, rng=rng)
    assert dup.indices.tolist() == [0, 1, 2, 3]
    # C = 1: every gradient is zero.
    zero = badge_kmeanspp(np.ones((5, 1), np.float32), h[:5], 3, rng=rng)
    assert zero.indices.tolist() == [0, 1, 2]


def test_bad_arguments():
    h = np.zeros((4, 2), np.float32)
    with pytest.raises(InvalidInput, match="probs has 3 rows"):
        badge_kmeanspp(np.full((3, 2), 0.5, np.float32), h, 1)
    with pytest.raises(InvalidInput, match="budget 5"):
        badge_kmeanspp(np.full((4, 2), 0.5, np.float32), h, 5)
    with pytest.raises(InvalidInput, match="numba-cpu"):
        badge_kmeanspp(np.full((4, 2), 0.5, np.float32), h, 1, backend="faiss-gpu")
