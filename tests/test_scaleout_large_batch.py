"""Cluster-Margin and SEALS on sharded pools: exactly the single-machine answer.

The shards run in this process (``local_shards``: the same ``Shard`` code the Ray
actors run, without starting Ray), on pools appended in several parts so every
shard holds several runs, with ties and duplicate rows (``scaleout_data``).
"""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from scaleout_data import appends, pool_arrays

from assay.server.acquisition import selection
from assay.server.acquisition import sharded as sharded_acquisition
from assay.server.pools.store import PoolStore
from assay.server.scaleout.backend import ShardedBackend
from assay.server.strategies.registry import INPUT_ROLES
from assay.vocab.errors import FailedPrecondition


@pytest.fixture
def pools(tmp_path):
    backend = ShardedBackend(f"{tmp_path}/shards", threads=1, local_shards=True)
    store = PoolStore(str(tmp_path), sharded=backend)
    yield backend, store
    backend.close()
    store.close()


def sharded_pool(store, rng, arrays, shards, parts, labeled):
    pool_id = f"p-{uuid.uuid4().hex[:12]}"
    store.create_pool(pool_id, shards)
    n = arrays["embeddings"].shape[0]
    for lo, hi in appends(rng, n, parts):
        store.append_arrays(pool_id, {k: np.take(a, np.arange(lo, hi), axis=INPUT_ROLES[k][1])
                                      for k, a in arrays.items()})
    if labeled.size:
        store.label(pool_id, labeled, np.zeros(labeled.size, dtype=np.int64))
    return pool_id


def single(strategy, budget, arrays, labeled, seed, params):
    arrays = dict(arrays)
    if labeled.size:
        arrays["labeled_embeddings"] = arrays["embeddings"][labeled]
    return selection.select(strategy, budget, arrays, params, seed=seed, exclude=labeled)


@pytest.mark.parametrize("grid", [True, False])
def test_sharded_cluster_margin_equals_single_machine(pools, grid):
    backend, store = pools
    rng = np.random.default_rng(31)
    arrays = pool_arrays(rng, 500, 4, 3, grid=grid)
    labeled = np.sort(rng.choice(500, 20, replace=False))
    pid = sharded_pool(store, rng, arrays, 3, 3, labeled)
    for seed, params in ((4, {}), (9, {"km": 3.0, "neighbors": 6, "epsilon": 1.5})):
        got = sharded_acquisition.select(backend, store.sharded_pool(pid), "cluster_margin",
                                         40, params, seed=seed)
        want = single("cluster_margin", 40, arrays, labeled, seed, params)
        np.testing.assert_array_equal(got.indices, want.indices)
        np.testing.assert_array_equal(got.scores, want.scores)
        assert got.metrics["clusters"] == want.metrics["clusters"]
    again = sharded_acquisition.select(backend, store.sharded_pool(pid), "cluster_margin",
                                       40, {}, seed=4)
    assert again.metrics["cluster_cache_hit"] == 1.0


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_sharded_seals_equals_single_machine(pools, metric):
    backend, store = pools
    rng = np.random.default_rng(32)
    arrays = pool_arrays(rng, 600, 5, 4, grid=True)  # many equal distances
    labeled = np.sort(rng.choice(600, 12, replace=False))
    pid = sharded_pool(store, rng, arrays, 4, 3, labeled)
    for seed, params in ((None, {"k": 7}), (3, {"k": 15, "score": "entropy"}),
                         (5, {"k": 1000})):  # k > candidates: every candidate
        params = {**params, "metric": metric}
        got = sharded_acquisition.select(backend, store.sharded_pool(pid), "seals", 10,
                                         params, seed=seed)
        want = single("seals", 10, arrays, labeled, seed, params)
        np.testing.assert_array_equal(got.indices, want.indices)
        np.testing.assert_array_equal(got.scores, want.scores)
        assert got.metrics["seals_candidates"] == want.metrics["seals_candidates"]


def test_sharded_seals_without_labels_and_unshardable_inner(pools):
    backend, store = pools
    rng = np.random.default_rng(33)
    arrays = pool_arrays(rng, 200, 3, 3, grid=False)
    pid = sharded_pool(store, rng, arrays, 2, 2, np.empty(0, np.int64))
    got = sharded_acquisition.select(backend, store.sharded_pool(pid), "seals", 5, {}, seed=1)
    want = single("seals", 5, arrays, np.empty(0, np.int64), 1, {})
    np.testing.assert_array_equal(got.indices, want.indices)
    assert got.metrics["seals_fallback"] == 1.0
    with pytest.raises(FailedPrecondition) as err:
        sharded_acquisition.select(backend, store.sharded_pool(pid), "seals", 5,
                                   {"score": "information_density"}, seed=1)
    assert err.value.field == "params.score"
