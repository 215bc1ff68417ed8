"""FAISS KNN, facility-location greedy (lazy and plain) and k-means selection against
their float64 twins."""

from __future__ import annotations

import assay_naive_kernels as naive
import ml_dtypes
import numpy as np
import pytest
import seeding

from assay.kernels import dispatch
from assay.kernels.facility import facility_location_greedy
from assay.kernels.kmeans import kmeans_closest
from assay.kernels.knn import knn
from assay.vocab.errors import FailedPrecondition, InvalidInput


@pytest.mark.parametrize("dtype", [np.float32, np.float16, ml_dtypes.bfloat16],
                         ids=lambda t: np.dtype(t).name)
def test_knn_exact_and_tie_aware(dtype):
    rng = seeding.rng()
    nb, nq, d = int(rng.integers(1, 300)), int(rng.integers(1, 40)), int(rng.integers(1, 20))
    base = rng.integers(-3, 4, size=(nb, d)).astype(dtype)  # duplicates and ties
    queries = rng.integers(-3, 4, size=(nq, d)).astype(dtype)
    k = int(rng.integers(1, nb + 3))
    dist, idx, backend = knn(queries, base, k)
    ref_d, ref_i = naive.knn(queries, base, k)
    assert backend == "faiss-cpu"
    np.testing.assert_allclose(dist, ref_d, rtol=1e-6, atol=1e-6)
    assert ((idx < 0) == (ref_i < 0)).all()
    b64 = naive.as64(base)
    for qi in range(nq):  # tie-aware: each returned neighbour really is at that distance
        found = idx[qi][idx[qi] >= 0]
        assert len(set(found.tolist())) == found.size
        np.testing.assert_allclose(naive.sqdist(b64[found], naive.as64(queries)[qi]),
                                   ref_d[qi, : found.size], rtol=1e-6, atol=1e-6)


def test_knn_cosine_and_errors():
    rng = seeding.rng()
    base = rng.standard_normal((50, 6)).astype(np.float32)
    q = rng.standard_normal((5, 6)).astype(np.float32)
    sim, _, _ = knn(q, base, 3, metric="cosine")
    bn = base / np.linalg.norm(base, axis=1, keepdims=True)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    ref = np.sort(qn.astype(np.float64) @ bn.T.astype(np.float64), axis=1)[:, ::-1][:, :3]
    np.testing.assert_allclose(sim, ref, rtol=1e-5, atol=1e-6)
    with pytest.raises(InvalidInput, match="width"):
        knn(q[:, :2], base, 1)
    with pytest.raises(InvalidInput, match="k must be"):
        knn(q, base, 0)
    with pytest.raises(FailedPrecondition, match="faiss-gpu"):
        knn(q, base, 1, backend="faiss-gpu")


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16],
                         ids=lambda t: np.dtype(t).name)
def test_facility_lazy_equals_plain_equals_twin(dtype):
    rng = seeding.rng()
    n, d = int(rng.integers(20, 200)), int(rng.integers(1, 10))
    x = rng.integers(-2, 3, size=(n, d)).astype(dtype)  # duplicates, zero rows, ties
    cand = np.sort(rng.choice(n, size=int(rng.integers(1, n + 1)), replace=False))
    budget = int(rng.integers(1, cand.size + 1))
    lazy = facility_location_greedy(x, budget, candidates=cand)
    plain = facility_location_greedy(x, budget, candidates=cand, lazy=False)
    ref, gains = naive.facility_location(x, budget, cand)
    np.testing.assert_array_equal(lazy.indices, plain.indices)
    np.testing.assert_array_equal(lazy.gains, plain.gains)
    # The twin rounds cosines differently: equal picks up to the first float tie, where
    # both picks must have the same gain.
    same = budget if np.array_equal(lazy.indices, ref) else int(
        np.argmax(lazy.indices != ref)) + 1
    np.testing.assert_array_equal(lazy.indices[: same - 1], ref[: same - 1])
    np.testing.assert_allclose(lazy.gains[:same], gains[:same], rtol=1e-9, atol=1e-9)
    assert lazy.evaluations <= plain.evaluations


def test_facility_lazy_saves_evaluations_on_random_data():
    rng = seeding.rng()
    x = rng.standard_normal((400, 8)).astype(np.float32)
    lazy = facility_location_greedy(x, 20, candidates=np.arange(0, 400, 2),
                                    universe=np.arange(400))
    ref, _ = naive.facility_location(x, 20, np.arange(0, 400, 2))
    np.testing.assert_array_equal(lazy.indices, ref)
    assert lazy.evaluations < 200 * 20 / 2  # plain greedy evaluates 200 per pick


def test_kmeans_closest_is_a_cluster_medoid():
    rng = seeding.rng()
    centres = rng.standard_normal((6, 5)) * 20
    x = (centres[rng.integers(0, 6, 600)] + rng.standard_normal((600, 5))).astype(np.float32)
    cand = np.sort(rng.choice(600, size=500, replace=False))
    got = kmeans_closest(x, 6, candidates=cand, rng=np.random.default_rng(1))
    assert got.backend == "faiss-cpu" and len(set(got.indices.tolist())) == 6
    assert set(got.indices.tolist()) <= set(cand.tolist())
    # Each pick is, in float64, the candidate nearest to its centroid among those whose
    # nearest centroid it is (tie-aware: equal distance is accepted).
    c64 = got.centroids.astype(np.float64)
    d2 = ((x[cand, None, :].astype(np.float64) - c64[None]) ** 2).sum(-1)
    owner = np.argmin(d2, axis=1)
    for j, row in enumerate(got.indices):
        members = d2[owner == j, j]
        if members.size:
            mine = d2[np.searchsorted(cand, row), j]
            assert mine <= members.min() * (1 + 1e-5) + 1e-6
    again = kmeans_closest(x, 6, candidates=cand, rng=np.random.default_rng(1))
    np.testing.assert_array_equal(got.indices, again.indices)
    full = kmeans_closest(x[:7], 7)
    assert full.indices.tolist() == list(range(7))


def test_kmeans_backend_errors(monkeypatch):
    x = np.zeros((10, 2), np.float32)
    with pytest.raises(InvalidInput, match="faiss-cpu"):
        kmeans_closest(x, 2, backend="numba-cpu")
    monkeypatch.setattr(dispatch, "faiss_gpu_count", lambda: 0)
    with pytest.raises(FailedPrecondition, match=r"assay\[gpu\]"):
        kmeans_closest(x, 2, backend="faiss-gpu")


def test_cosine_knn_leaves_read_only_inputs_untouched():
    from assay.kernels.knn import knn

    rng = seeding.rng()
    base = rng.normal(size=(30, 4)).astype(np.float32)
    queries = rng.normal(size=(5, 4)).astype(np.float32)
    before = base.copy(), queries.copy()
    base.flags.writeable = False
    queries.flags.writeable = False
    values, indices, _ = knn(queries, base, 3, metric="cosine")
    np.testing.assert_array_equal(base, before[0])
    np.testing.assert_array_equal(queries, before[1])
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    sims = unit(queries.astype(np.float64)) @ unit(base.astype(np.float64)).T
    np.testing.assert_allclose(values, np.sort(sims, axis=1)[:, ::-1][:, :3], atol=1e-5)
    np.testing.assert_allclose(np.take_along_axis(sims, indices, axis=1), values, atol=1e-5)
