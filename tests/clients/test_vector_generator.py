"""The vector generator's guarantees: its tolerances bound the kernels' rounding, it
refuses inputs whose picks rounding could change, and it fails (never warns) when a
case does not behave as declared."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "vectors"))

import generate
import references
import tolerance as tol

from assay.client import Client

SEED = 20251201


def _orders(terms: np.ndarray) -> list[np.float32]:
    """A float32 sum of ``terms`` in three orders a compiler may pick: sequential,
    pairwise (NumPy) and blocked by an 8-wide vector with a final reduction."""
    seq = np.float32(0.0)
    for t in terms:
        seq = np.float32(seq + t)
    lanes = np.zeros(8, np.float32)
    for i, t in enumerate(terms):
        lanes[i % 8] = np.float32(lanes[i % 8] + t)
    return [seq, np.add.reduce(terms, dtype=np.float32), np.float32(lanes.sum(dtype=np.float32))]


@pytest.mark.parametrize("d", [2, 5, 8, 64, 300])
def test_kcenter_bound_covers_float32_sums_in_any_order(d):
    rng = np.random.default_rng(SEED + d)
    for trial in range(200):
        x, c = rng.normal(size=d).astype(np.float32), rng.normal(size=d).astype(np.float32)
        exact = float(((x.astype(np.float64) - c.astype(np.float64)) ** 2).sum())
        terms = np.square(np.subtract(x, c, dtype=np.float32), dtype=np.float32)
        for got in _orders(terms):
            assert abs(float(got) - exact) <= tol.kcenter_sq_rel(d, tol.U32) * exact, (
                f"seed {SEED + d}, trial {trial}: {got!r} vs {exact!r}")


@pytest.mark.parametrize("d,c", [(5, 7), (8, 6), (128, 10)])
def test_badge_bound_covers_the_factorized_float32_distance(d, c):
    seed = SEED + 7 * d + c
    rng = np.random.default_rng(seed)
    coeff = tol.badge_sq_coeff(d, c, tol.U32)
    for trial in range(200):
        h = rng.normal(size=(2, d)).astype(np.float32)
        p = rng.dirichlet(np.ones(c), size=2).astype(np.float32)
        q = p.astype(np.float64)
        q[np.arange(2), q.argmax(axis=1)] -= 1.0
        g = (q[:, :, None] * h.astype(np.float64)[:, None, :]).reshape(2, -1)
        exact = float(((g[0] - g[1]) ** 2).sum())
        q32 = p.copy()
        q32[np.arange(2), p.argmax(axis=1)] -= np.float32(1.0)
        hh = np.float32(np.dot(h[0], h[1]))
        qq = np.float32(np.dot(q32[0], q32[1]))
        gn = [float(np.dot(q32[i], q32[i]).astype(np.float64) * np.dot(h[i], h[i]))
              for i in range(2)]
        got = gn[0] + gn[1] - 2.0 * float(qq) * float(hh)
        norms = np.linalg.norm(g, axis=1)
        assert abs(got - exact) <= coeff * (norms[0] + norms[1]) ** 2, (
            f"seed {seed}, trial {trial}: {got!r} vs {exact!r}")


def test_round_up_never_lowers_a_bound():
    rng = np.random.default_rng(SEED)
    for x in 10.0 ** rng.uniform(-16, -1, size=500):
        assert tol.round_up(x) >= x, f"seed {SEED}: {x!r}"


def test_a_near_tie_in_a_greedy_step_is_refused():
    # Both candidates sit at squared distance ~1 from the labeled point, 1e-7 apart:
    # under float32 rounding (about 4e-7 here) either could be picked.
    x = np.array([[1.0, 0.0], [0.0, 1.0 + 1e-7]], np.float32)
    with pytest.raises(references.TooClose):
        references.expected("coreset", 1, {"embeddings": x,
                                           "labeled_embeddings": np.zeros((1, 2), np.float32)},
                            {}, 7, None)
    x[1, 1] = 1.01  # a clear winner is kept
    answer = references.expected("coreset", 1, {
        "embeddings": x, "labeled_embeddings": np.zeros((1, 2), np.float32)}, {}, 7, None)
    assert answer.indices == [1] and answer.rtol > 0


def test_exact_ties_go_to_the_lower_index_and_near_ties_are_refused():
    probs = np.array([[0.5, 0.5], [0.9, 0.1], [0.5, 0.5]], np.float64)
    answer = references.expected("entropy", 2, {"probs": probs}, {}, None, None)
    assert answer.indices == [0, 2]  # equal in exact arithmetic: by index
    assert references.expected("entropy", 2, {"probs": probs}, {}, 7, None) is None  # seeded
    # Entropies ~4e-12 apart: not equal, yet within the float64 tolerance of each other.
    near = probs.copy()
    near[0] = [0.5 + 1e-5, 0.5 - 1e-5]
    near[2] = [0.5 + 1e-5 + 1e-7, 0.5 - 1e-5 - 1e-7]
    with pytest.raises(references.TooClose):
        references.expected("entropy", 2, {"probs": near}, {}, None, None)


@pytest.fixture(scope="module")
def builder(live_server):
    with Client(live_server, timeout=generate.TIMEOUT_S) as client:
        yield generate.Builder(client)


def test_a_case_meant_to_succeed_that_errors_stops_the_generator(builder):
    probs = np.full((4, 2), 0.5, np.float32)
    with pytest.raises(AssertionError, match="failed with INVALID_ARGUMENT"):
        builder.add("over-budget", "entropy", 5, inputs={"probs": probs})
    with pytest.raises(AssertionError, match="expected NOT_FOUND"):
        builder.add("not-an-error", "entropy", 1, inputs={"probs": probs},
                    expect_error="NOT_FOUND")
    assert not builder.cases


def test_fixed_inputs_too_close_to_call_stop_the_generator(builder):
    x = np.array([[1.0, 0.0], [0.0, 1.0 + 1e-7], [5.0, 5.0]], np.float32)
    with pytest.raises(AssertionError, match="inputs are fixed"):
        builder.add("near-tie", "coreset", 2,
                    inputs={"embeddings": x, "labeled_embeddings": np.zeros((1, 2), np.float32)})


def test_drawn_inputs_too_close_to_call_are_drawn_again(builder):
    draws = iter([np.array([[1.0, 0.0], [0.0, 1.0 + 1e-7]], np.float32),
                  np.array([[1.0, 0.0], [0.0, 2.0]], np.float32)])
    builder.add("redrawn", "coreset", 1, inputs=lambda: {
        "embeddings": next(draws), "labeled_embeddings": np.zeros((1, 2), np.float32)})
    case = builder.cases[-1]
    assert case["expect"]["indices"] == [1] and builder.redraws == 1
    assert case["expect"]["reference"].startswith("tests/kernels/naive.py")
