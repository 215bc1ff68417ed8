"""Pruned k-center greedy: the same picks as the unpruned pass and as the float64 twin.

Pruning is exact by construction (a row is skipped only when the triangle inequality,
with the float32 rounding bound, proves its Delta would not change), so every test
asserts identical pick sequences, distances and radius, not near-equality. The
module constants of ``_kcenter_pruned`` are shrunk so that tiny pools still run the
multi-chunk, parallel, streaming-fallback and member-list-repack paths.
"""

from __future__ import annotations

import assay_naive_kernels as naive
import ml_dtypes
import numpy as np
import pytest
import seeding

from assay.kernels import _kcenter_pruned, config
from assay.kernels._kcenter_pruned import PrunedStepper
from assay.kernels.bits import rows_compute
from assay.kernels.kcenter import kcenter_greedy, make_stepper, start_stepper

DTYPES = [np.float32, np.float64, np.float16, ml_dtypes.bfloat16]

#: (CHUNK_SLOTS, SERIAL_SLOTS, DENSE_FRACTION, DENSE_STEPS): small chunks run in
#: parallel; everything on one thread; streaming fallback after nearly every step.
SETTINGS = {
    "parallel": (16, 0, 0.3, 16),
    "serial": (4096, 1 << 40, 0.3, 16),
    "fallback": (32, 64, 0.01, 2),
}


@pytest.fixture(params=sorted(SETTINGS))
def setting(request, monkeypatch):
    chunk, serial, frac, steps = SETTINGS[request.param]
    monkeypatch.setattr(_kcenter_pruned, "CHUNK_SLOTS", chunk)
    monkeypatch.setattr(_kcenter_pruned, "SERIAL_SLOTS", serial)
    monkeypatch.setattr(_kcenter_pruned, "DENSE_FRACTION", frac)
    monkeypatch.setattr(_kcenter_pruned, "DENSE_STEPS", steps)
    return request.param


def fresh_rng() -> np.random.Generator:
    return seeding.rng()


def clustered(rng, n, d, k, spread=0.05, offset=0.0):
    """A Gaussian mixture: where pruning skips most rows."""
    centres = rng.standard_normal((k, d)) * 3.0 + offset
    return centres[rng.integers(k, size=n)] + rng.standard_normal((n, d)) * spread


def grid_pool(rng, n, d, levels=4):
    """Small integers: exact distances in every dtype, so ties and duplicates abound."""
    return rng.integers(0, levels, size=(n, d)).astype(np.float64)


def both(x, budget, **kw):
    seed = int(seeding.rng().integers(2**32))
    pruned = kcenter_greedy(x, budget, rng=np.random.default_rng(seed), prune=True, **kw)
    plain = kcenter_greedy(x, budget, rng=np.random.default_rng(seed), prune=False, **kw)
    return pruned, plain, seed


def assert_same(pruned, plain):
    np.testing.assert_array_equal(pruned.indices, plain.indices)
    np.testing.assert_array_equal(pruned.distances, plain.distances)
    assert pruned.radius == plain.radius
    assert pruned.backend == plain.backend


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: np.dtype(t).name)
@pytest.mark.parametrize("labeled_size", [0, 3, config.FAISS_LABELED_MIN + 4])
@pytest.mark.parametrize("subset", [False, True])
def test_clustered_pools_match_unpruned(setting, dtype, labeled_size, subset):
    rng = fresh_rng()
    n, d = int(rng.integers(400, 1500)), int(rng.integers(2, 40))
    x = clustered(rng, n, d, int(rng.integers(5, 40))).astype(dtype)
    labeled = clustered(rng, labeled_size, d, 4).astype(dtype)
    cand = np.sort(rng.choice(n, size=n // 2, replace=False)) if subset else None
    m = n if cand is None else cand.size
    budget = int(rng.integers(1, m + 1))
    pruned, plain, _ = both(x, budget, labeled=labeled, candidates=cand)
    assert_same(pruned, plain)
    assert (pruned.rows_read <= m).all() and (plain.rows_read == m).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: np.dtype(t).name)
@pytest.mark.parametrize("labeled_size", [0, 3, config.FAISS_LABELED_MIN + 4])
@pytest.mark.parametrize("subset", [False, True])
def test_ties_and_duplicates_match_twin(setting, dtype, labeled_size, subset):
    rng = fresh_rng()
    n, d = int(rng.integers(200, 600)), int(rng.integers(1, 6))
    x = grid_pool(rng, n, d)
    labeled = grid_pool(rng, labeled_size, d)
    cand = np.sort(rng.choice(n, size=n // 2, replace=False)) if subset else None
    m = n if cand is None else cand.size
    budget = int(rng.integers(1, m + 1))
    pruned, plain, seed = both(x.astype(dtype), budget, labeled=labeled.astype(dtype),
                               candidates=cand)
    first = int(np.random.default_rng(seed).integers(m))
    picks, dists, radius = naive.kcenter(x, budget, labeled, cand, first=first)
    assert_same(pruned, plain)
    np.testing.assert_array_equal(pruned.indices, picks)
    np.testing.assert_allclose(pruned.distances, dists, rtol=1e-6)
    assert pruned.radius == pytest.approx(radius, rel=1e-6)


def test_isotropic_float_pool_matches_unpruned(setting):
    rng = fresh_rng()
    x = rng.standard_normal((int(rng.integers(500, 2000)), int(rng.integers(2, 64))))
    pruned, plain, _ = both(x.astype(np.float32), int(rng.integers(1, 300)))
    assert_same(pruned, plain)


def test_faiss_start_far_from_origin(setting):
    """FAISS' |x|^2 + |c|^2 - 2 x.c loses digits far from the origin; the bound pass
    keeps the pruning test safe there."""
    rng = fresh_rng()
    x = clustered(rng, 3000, 16, 30, spread=0.01, offset=500.0).astype(np.float32)
    labeled = x[rng.choice(3000, size=config.FAISS_LABELED_MIN + 10, replace=False)] + 0.003
    pruned, plain, _ = both(x, 400, labeled=labeled)
    assert "faiss" in pruned.backend
    assert_same(pruned, plain)


def test_edge_sizes(setting):
    rng = fresh_rng()
    one = kcenter_greedy(np.array([[2.5]], np.float32), 1, rng=rng)
    assert one.indices.tolist() == [0] and one.radius == 0.0
    x = clustered(rng, 50, 3, 4).astype(np.float32)
    pruned, plain, _ = both(x, 50, labeled=x[:2])
    assert_same(pruned, plain)
    assert sorted(pruned.indices.tolist()) == list(range(50)) and pruned.radius == 0.0
    same = np.ones((9, 4), np.float32)
    pruned, plain, _ = both(same, 9)
    assert_same(pruned, plain)
    empty = np.zeros((0, 3), np.float32)
    pruned, plain, _ = both(x, 7, labeled=empty)
    assert_same(pruned, plain)
    full = kcenter_greedy(x, 4, labeled=x)
    assert full.indices.tolist() == [0, 1, 2, 3] and (full.distances == 0).all()


def test_pruning_skips_rows_on_clustered_data():
    """Well separated clusters: once every cluster has a centre, a step reads little
    more than the new centre's own cluster."""
    rng = fresh_rng()
    x = clustered(rng, 20_000, 32, 20, spread=0.05).astype(np.float32)
    pruned, plain, _ = both(x, 200)
    assert_same(pruned, plain)
    assert pruned.rows_read[100:].mean() < 0.2 * x.shape[0]


def test_many_steps_repack_the_member_lists(monkeypatch):
    """budget = n on a clustered pool moves far more than n members in total, so the
    member list fills up and is rebuilt by the counting sort during the steps."""
    monkeypatch.setattr(_kcenter_pruned, "CHUNK_SLOTS", 8)
    steppers = []
    original = _kcenter_pruned.PrunedStepper.__init__

    def keep(self, *args):
        original(self, *args)
        steppers.append(self)

    monkeypatch.setattr(_kcenter_pruned.PrunedStepper, "__init__", keep)
    rng = fresh_rng()
    x = clustered(rng, 700, 8, 12).astype(np.float16)
    pruned, plain, _ = both(x, 700)
    assert_same(pruned, plain)
    assert steppers[0].repacks > 0
    assert (pruned.rows_read < 700).any()


def split_greedy(x, budget, parts, labeled, seed, prune, budget_hint):
    """k-center greedy as the sharded driver runs it: candidates split over ``parts``
    (each a sorted array of rows), one stepper per part, every centre told to every
    part one at a time, a pick marked only by the part that holds it."""
    steppers = [make_stepper(x, rows, False, initial=labeled.shape[0], budget=budget_hint,
                             prune=prune) for rows in parts]
    answers = []
    for stepper, rows in zip(steppers, parts, strict=True):
        top, pos = (np.inf, -1) if labeled.shape[0] == 0 else \
            start_stepper(stepper, x, rows, labeled)[:2]
        answers.append((top, pos))
    everything = np.sort(np.concatenate(parts))
    if labeled.shape[0] == 0:
        pick = int(everything[np.random.default_rng(seed).integers(everything.size)])
        top = np.inf
    picks, dists = [], []

    def best():
        top, row = -np.inf, -1
        for (v, p), rows in zip(answers, parts, strict=True):
            if p >= 0 and (row < 0 or v > top or (v == top and rows[p] < row)):
                top, row = v, int(rows[p])
        return top, row

    if labeled.shape[0]:
        top, pick = best()
    for _ in range(budget):
        picks.append(pick)
        dists.append(np.sqrt(max(top, 0.0)))
        centre = rows_compute(x, pick)
        for i, (stepper, rows) in enumerate(zip(steppers, parts, strict=True)):
            at = int(np.searchsorted(rows, pick))
            if at < rows.size and rows[at] == pick:
                stepper.mark(at)
            answers[i] = stepper.step(centre.copy())
        top, pick = best()
    return np.array(picks), np.array(dists), steppers


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=lambda t: np.dtype(t).name)
@pytest.mark.parametrize("labeled_size", [0, 3, config.FAISS_LABELED_MIN + 4])
@pytest.mark.parametrize("grid", [False, True])
def test_centres_told_one_at_a_time_match_one_pass(setting, dtype, labeled_size, grid):
    """A sharded pool drives one stepper per shard from outside: centres that are not
    its rows, marks only of its own picks, more steps than the budget it was sized for
    (the centre tables grow). The picks equal ``kcenter_greedy``'s, ties included."""
    rng = fresh_rng()
    n, d = int(rng.integers(300, 900)), int(rng.integers(2, 12))
    x = (grid_pool(rng, n, d) if grid else clustered(rng, n, d, 12)).astype(dtype)
    labeled = (grid_pool(rng, labeled_size, d) if grid
               else clustered(rng, labeled_size, d, 3)).astype(dtype)
    cand = np.sort(rng.choice(n, size=n - 7, replace=False))
    owner = rng.integers(3, size=n)  # rows scattered over three parts
    parts = [cand[owner[cand] == k] for k in range(3)]
    budget = int(rng.integers(1, min(cand.size, 200) + 1))
    seed = int(rng.integers(2**32))
    want = kcenter_greedy(x, budget, labeled=labeled, candidates=cand,
                          rng=np.random.default_rng(seed))
    for prune in (True, False):
        picks, dists, steppers = split_greedy(x, budget, parts, labeled, seed, prune,
                                              budget_hint=budget // 3)
        np.testing.assert_array_equal(picks, want.indices)
        np.testing.assert_array_equal(dists, want.distances)
        assert isinstance(steppers[0], PrunedStepper) == prune
