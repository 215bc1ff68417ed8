"""The geometric strategies (coreset, badge, kmeans) through the acquisition layer and
through a real server: contract, references, two-stage composition, errors."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import seeding

from assay.client import AssayError
from assay.kernels import dispatch
from assay.server.acquisition import selection
from assay.server.strategies import registry
from assay.vocab.errors import FailedPrecondition, InvalidInput

# The kernels' float64 twins, loaded by path so no other ``naive`` module can shadow them.
_spec = importlib.util.spec_from_file_location(
    "assay_naive_kernels_geometry", Path(__file__).parent / "kernels" / "naive.py")
kernel_naive = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(kernel_naive)

GEOMETRIC = ("coreset", "badge", "kmeans")


def pool(rng, n, d=8, c=4):
    logits = rng.standard_normal((n, c)) * 2
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    return {"embeddings": rng.standard_normal((n, d)).astype(np.float32),
            "probs": (p / p.sum(axis=1, keepdims=True)).astype(np.float32)}


def entropy64(p):
    p = p.astype(np.float64)
    return -(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0)).sum(axis=1)


@pytest.mark.parametrize("name", GEOMETRIC)
def test_contract(name):
    rng = seeding.rng()
    arrays = pool(rng, int(rng.integers(30, 200)))
    n = arrays["embeddings"].shape[0]
    exclude = rng.choice(n, size=5, replace=False)
    a = selection.select(name, 10, arrays, seed=11, exclude=exclude)
    b = selection.select(name, 10, arrays, seed=11, exclude=exclude)
    np.testing.assert_array_equal(a.indices, b.indices)
    assert len(set(a.indices.tolist())) == 10
    assert not set(a.indices.tolist()) & set(exclude.tolist())
    assert a.indices.min() >= 0 and a.indices.max() < n
    assert a.backend in ("numba-cpu", "faiss-cpu")
    one = selection.select(name, 1, {k: v[:1] for k, v in arrays.items()}, seed=1)
    assert one.indices.tolist() == [0]
    everything = selection.select(name, n - 5, arrays, seed=2, exclude=exclude)
    assert sorted(everything.indices.tolist()) == sorted(set(range(n)) - set(exclude.tolist()))
    with pytest.raises(InvalidInput, match="exceeds"):
        selection.select(name, n, arrays, exclude=exclude)


def test_listed_with_backend_parameter():
    for name in GEOMETRIC:
        strategy = registry.get(name)
        assert strategy.kind == "batch"
        backend = {p.name: p for p in strategy.params}["backend"]
        assert backend.default == "auto" and "auto" in backend.choices


def test_coreset_with_labeled_set_matches_twin():
    rng = seeding.rng()
    arrays = pool(rng, 300, d=5)
    labeled = rng.choice(300, size=20, replace=False)
    arrays["labeled_embeddings"] = arrays["embeddings"][labeled]
    got = selection.select("coreset", 15, arrays, seed=4, exclude=labeled)
    cand = np.setdiff1d(np.arange(300), labeled)
    picks, dists, radius = kernel_naive.kcenter(arrays["embeddings"], 15,
                                                arrays["labeled_embeddings"], cand)
    np.testing.assert_array_equal(got.indices, picks)
    np.testing.assert_allclose(got.scores, dists, rtol=1e-5)
    assert got.metrics["kcenter_radius"] == pytest.approx(radius, rel=1e-5)


def test_entropy_prefilter_then_coreset_end_to_end():
    rng = seeding.rng()
    arrays = pool(rng, 500)
    got = selection.select("coreset", 8, arrays, {"prefilter": "entropy", "prefilter_k": 60},
                             seed=9)
    # independent reference: float64 entropy top 60 (ties to the seeded order are
    # irrelevant for continuous random inputs), then k-center greedy among them.
    top = np.sort(np.argsort(-entropy64(arrays["probs"]), kind="stable")[:60])
    first = int(np.random.default_rng(9).integers(60))
    picks, _, _ = kernel_naive.kcenter(arrays["embeddings"], 8, None, top, first=first)
    np.testing.assert_array_equal(got.indices, picks)
    assert set(got.indices.tolist()) <= set(top.tolist())
    assert got.metrics["prefilter_k"] == 60


def test_badge_and_kmeans_through_prefilter():
    rng = seeding.rng()
    arrays = pool(rng, 400)
    top = set(np.argsort(-entropy64(arrays["probs"]))[:50].tolist())
    for name in ("badge", "kmeans"):
        got = selection.select(name, 6, arrays, {"prefilter": "entropy", "prefilter_k": 50},
                                 seed=3)
        assert set(got.indices.tolist()) <= top


def test_badge_matches_twin_through_acquisition():
    rng = seeding.rng()
    arrays = pool(rng, 250)
    exclude = np.arange(0, 250, 7)
    cand = np.setdiff1d(np.arange(250), exclude)
    got = selection.select("badge", 12, arrays, seed=5, exclude=exclude)
    ref = kernel_naive.badge(arrays["probs"], arrays["embeddings"], 12,
                             np.random.default_rng(5), cand)
    np.testing.assert_array_equal(got.indices, ref)


def test_backend_errors(monkeypatch):
    arrays = pool(seeding.rng(), 20)
    with pytest.raises(InvalidInput, match=r"params\.backend"):
        selection.select("coreset", 2, arrays, {"backend": "faiss-gpu"})
    monkeypatch.setattr(dispatch, "numba_cuda_available", lambda: False)
    with pytest.raises(FailedPrecondition, match="numba-cuda"):
        selection.select("badge", 2, arrays, {"backend": "numba-cuda"})


def test_service_coreset_and_badge_on_a_pool_with_labeled_items(client):
    rng = seeding.rng()
    arrays = pool(rng, 400, d=16)
    arrays["embeddings"] = arrays["embeddings"].astype(np.float16)
    client.create_pool("geo")
    client.append("geo", **arrays)
    labeled = np.sort(rng.choice(400, size=30, replace=False))
    client.label("geo", labeled, rng.integers(0, 4, size=30))
    cand = np.setdiff1d(np.arange(400), labeled)

    got = client.select("coreset", 12, pool="geo", seed=1)
    picks, dists, _ = kernel_naive.kcenter(arrays["embeddings"], 12,
                                           arrays["embeddings"][labeled], cand)
    np.testing.assert_array_equal(got.indices, picks)
    np.testing.assert_allclose(got.scores, dists, rtol=1e-5)
    assert got.backend == "numba-cpu" and "kcenter_radius" in got.metrics

    got = client.select("badge", 12, pool="geo", seed=2)
    ref = kernel_naive.badge(arrays["probs"], arrays["embeddings"], 12,
                             np.random.default_rng(2), cand)
    np.testing.assert_array_equal(got.indices, ref)

    got = client.select("kmeans", 5, pool="geo", seed=3, params={"iterations": 5})
    assert got.backend == "faiss-cpu" and not set(got.indices.tolist()) & set(labeled.tolist())

    with pytest.raises(AssayError) as err:
        client.select("coreset", 2, pool="geo", params={"backend": "nope"})
    assert err.value.code.name == "INVALID_ARGUMENT"
