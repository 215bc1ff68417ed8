"""k-center greedy kernel (Numba CPU, FAISS start) against its float64 twin and against a
faithful re-implementation of the widely used ``kcenter_greedy`` reference."""

from __future__ import annotations

import threading

import assay_naive_kernels as naive
import ml_dtypes
import numpy as np
import pytest
import seeding
from sklearn.metrics import pairwise_distances

from assay.kernels import config, dispatch
from assay.kernels.kcenter import kcenter_greedy
from assay.vocab.errors import Cancelled, FailedPrecondition, InvalidInput

DTYPES = [np.float32, np.float64, np.float16, ml_dtypes.bfloat16]


def fresh_rng() -> np.random.Generator:
    """The test's seeded generator, its seed printed on failure (tests/seeding.py)."""
    return seeding.rng()


def grid_pool(rng, n, d, levels=4):
    """Small integers: every distance is exact in all dtypes, so ties and duplicates
    are real and the kernel must break them exactly like the twin."""
    return rng.integers(0, levels, size=(n, d)).astype(np.float64)


def first_position(seed: int, m: int) -> int:
    return int(np.random.default_rng(seed).integers(m))


def assert_greedy_equivalent(x, picks, ref_picks, labeled=None, candidates=None, rtol=1e-5):
    """Equal pick sequences, or a divergence only at a float near-tie of the float64 Delta."""
    picks, ref_picks = np.asarray(picks), np.asarray(ref_picks)
    if np.array_equal(picks, ref_picks):
        return
    k = int(np.flatnonzero(picks != ref_picks)[0])
    delta, picked = naive.kcenter_deltas(x, ref_picks[: k + 1], labeled, candidates)[k]
    rows = np.arange(np.asarray(x).shape[0]) if candidates is None else np.asarray(candidates)
    pos = {int(r): i for i, r in enumerate(rows)}
    a, b = delta[pos[int(picks[k])]], delta[pos[int(ref_picks[k])]]
    assert not picked[pos[int(picks[k])]], f"step {k} re-picked row {picks[k]}"
    assert abs(a - b) <= rtol * max(a, b), \
        f"step {k}: {picks[k]} (Δ²={a}) vs {ref_picks[k]} (Δ²={b})"


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: np.dtype(t).name)
@pytest.mark.parametrize("labeled_size", [0, 3, config.FAISS_LABELED_MIN + 4])
@pytest.mark.parametrize("subset", [False, True])
def test_exact_on_ties_and_duplicates(dtype, labeled_size, subset):
    rng = fresh_rng()
    n, d = int(rng.integers(200, 600)), int(rng.integers(1, 6))
    x = grid_pool(rng, n, d)
    labeled = grid_pool(rng, labeled_size, d)
    cand = np.sort(rng.choice(n, size=n // 2, replace=False)) if subset else None
    m = n if cand is None else cand.size
    budget = int(rng.integers(1, min(m, 40) + 1))
    seed = int(rng.integers(2**32))
    got = kcenter_greedy(x.astype(dtype), budget, labeled=labeled.astype(dtype),
                         candidates=cand, rng=np.random.default_rng(seed))
    picks, dists, radius = naive.kcenter(x, budget, labeled, cand,
                                         first=first_position(seed, m))
    np.testing.assert_array_equal(got.indices, picks)
    np.testing.assert_allclose(got.distances, dists, rtol=1e-6)
    assert got.radius == pytest.approx(radius, rel=1e-6)
    assert got.backend.startswith("numba-cpu")
    assert ("faiss" in got.backend) == (labeled_size >= config.FAISS_LABELED_MIN)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: np.dtype(t).name)
def test_random_pool_matches_float64_up_to_rounding(dtype):
    rng = fresh_rng()
    n, d = int(rng.integers(300, 900)), int(rng.integers(2, 40))
    x = rng.standard_normal((n, d)).astype(dtype)  # the twin sees the same stored values
    labeled = rng.standard_normal((int(rng.integers(0, 8)), d)).astype(dtype)
    budget = int(rng.integers(1, 50))
    seed = int(rng.integers(2**32))
    got = kcenter_greedy(x, budget, labeled=labeled, rng=np.random.default_rng(seed))
    picks, dists, _ = naive.kcenter(x, budget, labeled, first=first_position(seed, n))
    assert_greedy_equivalent(x, got.indices, picks, labeled)
    same = int(np.argmax(got.indices != picks)) if (got.indices != picks).any() else budget
    np.testing.assert_allclose(got.distances[:same], dists[:same], rtol=1e-5)


def test_edge_sizes():
    rng = fresh_rng()
    # n = 1 and d = 1.
    one = kcenter_greedy(np.array([[2.5]], np.float32), 1, rng=rng)
    assert one.indices.tolist() == [0] and one.radius == 0.0
    # budget = n: every row once, the rest in farthest-first order.
    x = rng.standard_normal((37, 3)).astype(np.float32)
    allr = kcenter_greedy(x, 37, labeled=x[:2], rng=rng)
    assert sorted(allr.indices.tolist()) == list(range(37)) and allr.radius == 0.0
    # all rows identical: after the random first, lowest rows first, distance 0.
    same = np.ones((9, 4), np.float32)
    got = kcenter_greedy(same, 5, rng=np.random.default_rng(7))
    first = first_position(7, 9)
    assert got.indices[0] == first
    assert got.indices[1:].tolist() == [i for i in range(9) if i != first][:4]
    assert (got.distances[1:] == 0).all()
    # every pool row is a labeled centre (a full labeled set): ties everywhere.
    full = kcenter_greedy(x, 4, labeled=x)
    assert full.indices.tolist() == [0, 1, 2, 3] and (full.distances == 0).all()
    # an empty labeled array means no labeled set.
    empty = kcenter_greedy(x, 3, labeled=np.zeros((0, 3), np.float32),
                           rng=np.random.default_rng(3))
    assert empty.indices[0] == first_position(3, 37) and np.isinf(empty.distances[0])


def test_read_only_memmap_and_bfloat16_views(tmp_path):
    rng = fresh_rng()
    x = rng.standard_normal((500, 16)).astype(ml_dtypes.bfloat16)
    path = tmp_path / "pool.npy"
    np.save(path, x.view(np.uint16))
    mm = np.load(path, mmap_mode="r").view(ml_dtypes.bfloat16)
    assert not mm.flags.writeable
    a = kcenter_greedy(mm, 20, labeled=np.asarray(x[:4]))
    b = kcenter_greedy(x, 20, labeled=np.asarray(x[:4]))
    np.testing.assert_array_equal(a.indices, b.indices)


# -- the widely used reference: Google's kcenter_greedy over sklearn pairwise_distances --

class KCenterGreedyReference:
    """Re-implementation of the core-set sampler found in Google's active-learning
    playground (Sener & Savarese's k-center greedy): distances by
    ``sklearn.metrics.pairwise_distances``, a column vector of minimum distances,
    ``argmax`` for each new centre and a random first centre when nothing is
    selected. Written from the paper and the algorithm, with the randomness passed in
    instead of the global NumPy state."""

    def __init__(self, features: np.ndarray, rng: np.random.Generator):
        self.features = features
        self.n_obs = features.shape[0]
        self.min_distances = None
        self.rng = rng

    def update_distances(self, cluster_centers, only_new=True, reset_dist=False):
        if reset_dist:
            self.min_distances = None
        if cluster_centers:
            x = self.features[cluster_centers]
            dist = pairwise_distances(self.features, x, metric="euclidean")
            if self.min_distances is None:
                self.min_distances = np.min(dist, axis=1).reshape(-1, 1)
            else:
                self.min_distances = np.minimum(self.min_distances, dist)

    def select_batch(self, already_selected, n):
        self.update_distances(already_selected, only_new=False, reset_dist=True)
        new_batch = []
        for _ in range(n):
            if self.min_distances is None:
                ind = self.rng.choice(np.arange(self.n_obs))
            else:
                ind = int(np.argmax(self.min_distances))
            assert ind not in already_selected
            self.update_distances([ind], only_new=True, reset_dist=False)
            new_batch.append(ind)
        return new_batch


@pytest.mark.parametrize("labeled_count", [0, 5])
def test_agrees_with_sklearn_reference(labeled_count):
    rng = fresh_rng()
    n, d = int(rng.integers(400, 1200)), int(rng.integers(2, 64))
    feats = rng.standard_normal((n, d)).astype(np.float32).astype(np.float64)
    budget = int(rng.integers(5, 60))
    seed = int(rng.integers(2**32))
    lab = sorted(rng.choice(n, size=labeled_count, replace=False).tolist())
    ref = KCenterGreedyReference(feats, np.random.default_rng(seed)).select_batch(lab, budget)
    cand = np.setdiff1d(np.arange(n), lab)
    got = kcenter_greedy(feats.astype(np.float32), budget,
                         labeled=feats[lab] if lab else None,
                         candidates=cand if lab else None, rng=np.random.default_rng(seed))
    assert_greedy_equivalent(feats, got.indices, ref, feats[lab] if lab else None,
                             cand if lab else None)


# -- errors, cancellation, concurrency --

def test_bad_arguments_raise_domain_errors(monkeypatch):
    x = np.zeros((5, 3), np.float32)
    with pytest.raises(InvalidInput, match="budget 6"):
        kcenter_greedy(x, 6)
    with pytest.raises(InvalidInput, match="budget 0"):
        kcenter_greedy(x, 0)
    with pytest.raises(InvalidInput, match="width 2"):
        kcenter_greedy(x, 2, labeled=np.zeros((1, 2), np.float32))
    with pytest.raises(InvalidInput, match="matrix"):
        kcenter_greedy(np.zeros(5, np.float32), 1)
    with pytest.raises(InvalidInput, match="sorted and unique"):
        kcenter_greedy(x, 1, candidates=np.array([3, 1]))
    with pytest.raises(InvalidInput, match="faiss-cpu"):
        kcenter_greedy(x, 1, backend="faiss-cpu")
    monkeypatch.setattr(dispatch, "numba_cuda_available", lambda: False)
    with pytest.raises(FailedPrecondition, match=r"assay\[gpu\]"):
        kcenter_greedy(x, 1, backend="numba-cuda")


def test_cancellation_stops_within_one_step():
    x = seeding.rng().standard_normal((2000, 8)).astype(np.float32)
    calls = []

    def check():
        calls.append(1)
        if len(calls) == 4:
            raise Cancelled("client went away")

    with pytest.raises(Cancelled):
        kcenter_greedy(x, 100, check_cancelled=check)
    assert len(calls) == 4


def test_concurrent_calls_agree():
    rng = fresh_rng()
    x = rng.standard_normal((20_000, 32)).astype(np.float16)
    expected = kcenter_greedy(x, 30, labeled=np.asarray(x[:5])).indices
    results = [None] * 4

    def run(i):
        results[i] = kcenter_greedy(x, 30, labeled=np.asarray(x[:5])).indices

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        np.testing.assert_array_equal(r, expected)
