"""BatchBALD: the peer implementation, a brute-force float64 twin, and the sampled regime.

The twin enumerates every label configuration of the batch with itertools, so it
shares nothing with the kernel's normalized-posterior formulation.
"""

from __future__ import annotations

import itertools
import os

import numpy as np
import pytest

from assay.kernels.batchbald import batchbald_greedy, joint_entropies
from assay.server.acquisition import selection
from assay.vocab.errors import Cancelled, InvalidInput

os.environ.setdefault("TQDM_DISABLE", "1")  # the peer prints progress bars otherwise


def _samples(rng, s, n, c, scale=2.0):
    logits = rng.normal(size=(s, n, c)) * scale
    p = np.exp(logits - logits.max(axis=2, keepdims=True))
    return p / p.sum(axis=2, keepdims=True)


def _joint_entropy(p: np.ndarray, batch: list[int]) -> float:
    """H(y_batch) by enumerating all C^|batch| configurations, float64."""
    s, _, c = p.shape
    total = 0.0
    for config in itertools.product(range(c), repeat=len(batch)):
        per_member = np.ones(s)
        for item, label in zip(batch, config, strict=True):
            per_member *= p[:, item, label]
        q = per_member.mean()
        if q > 0:
            total -= q * np.log(q)
    return total


def _cond(p: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.where(p > 0, np.log(p), 0.0)
    return -(p * logs).sum(axis=2).mean(axis=0)


def _reference_greedy(p: np.ndarray, budget: int) -> tuple[list[int], list[float]]:
    """Plain greedy on a(A) = H(y_A) - sum_{i in A} E_s H(y_i | w_s); ties to the lower index."""
    cond = _cond(p)
    batch: list[int] = []
    scores: list[float] = []
    for _ in range(budget):
        best, arg = -np.inf, -1
        for x in range(p.shape[1]):
            if x in batch:
                continue
            a = _joint_entropy(p, [*batch, x]) - cond[[*batch, x]].sum()
            if a > best + 1e-12:
                best, arg = a, x
        batch.append(arg)
        scores.append(best)
    return batch, scores


@pytest.mark.parametrize("precision", ["float64", "float32"])
@pytest.mark.parametrize("s,n,c,budget", [(7, 12, 3, 4), (4, 9, 2, 9), (2, 6, 4, 3),
                                          (5, 1, 3, 1), (9, 8, 5, 3)])
def test_matches_brute_force_twin(precision, s, n, c, budget):
    rng = np.random.default_rng([s, n, c, budget])
    p = _samples(rng, s, n, c)
    want, want_scores = _reference_greedy(p, budget)
    got = batchbald_greedy(p, budget, precision=precision, max_exact_configs=10**6,
                           backend="numba-cpu")
    assert got.indices.tolist() == want
    tol = 1e-9 if precision == "float64" else 2e-5
    np.testing.assert_allclose(got.scores, want_scores, atol=tol)
    assert got.exact_steps == budget


def test_duplicates_and_ties_go_to_the_lower_index():
    rng = np.random.default_rng(3)
    base = _samples(rng, 6, 5, 3)
    p = base[:, [0, 1, 1, 2, 3, 3, 4], :]  # items 1/2 and 4/5 are identical
    want, _ = _reference_greedy(p, 4)
    got = batchbald_greedy(p, 4, precision="float64")
    assert got.indices.tolist() == want
    # identical items never both enter the batch while distinct informative ones remain
    uniform = np.full((4, 3, 2), 0.5)  # three identical, maximally uncertain items
    assert batchbald_greedy(uniform, 3).indices.tolist() == [0, 1, 2]


def test_seeded_tiebreak_is_random_but_replayable():
    uniform = np.full((3, 20, 2), 0.5)
    firsts = {int(batchbald_greedy(uniform, 1, tiebreak_rng=np.random.default_rng(k))
                  .indices[0]) for k in range(12)}
    assert len(firsts) > 1
    a = batchbald_greedy(uniform, 5, tiebreak_rng=np.random.default_rng(7)).indices
    b = batchbald_greedy(uniform, 5, tiebreak_rng=np.random.default_rng(7)).indices
    assert a.tolist() == b.tolist()


def test_sampled_joint_entropy_is_within_monte_carlo_error_of_exact():
    rng = np.random.default_rng(11)
    s, n, c = 6, 25, 3
    p = _samples(rng, s, n, c, scale=1.5)
    batch = [2, 7, 11, 19, 23]  # 243 configurations
    exact, is_exact = joint_entropies(p, batch, max_exact_configs=10**6)
    assert is_exact
    m = 4000
    sampled, is_exact = joint_entropies(p, batch, max_exact_configs=10, num_samples=m,
                                        rng=np.random.default_rng(5))
    assert not is_exact
    for x in (0, 5, 13):  # the exact value is what the twin enumerates
        np.testing.assert_allclose(exact[x], _joint_entropy(p, [*batch, x]), atol=1e-9)
    # Per-candidate standard error of the estimator f(m) = -log p(m, y_x) averaged over
    # configurations of y_A drawn from p(y_A): sd of E_{y_x|m}[-log p(m, y_x)] / sqrt(M).
    configs = list(itertools.product(range(c), repeat=len(batch)))
    joint = np.array([np.prod(p[:, batch, list(cf)], axis=1) for cf in configs])  # [K, S]
    q = joint.mean(axis=1)
    for x in range(n):
        pxc = (joint[:, :, None] * p[:, x, None, :].transpose(1, 0, 2)).mean(axis=1)  # [K, C]
        with np.errstate(divide="ignore", invalid="ignore"):
            f = -np.log(q) + np.where(pxc > 0, -(pxc / q[:, None]) * np.log(pxc / q[:, None]),
                                      0.0).sum(axis=1)
        mean = (q * f).sum()
        sd = np.sqrt((q * (f - mean) ** 2).sum())
        assert abs(sampled[x] - exact[x]) <= 5 * sd / np.sqrt(m) + 1e-6, x


def test_sampled_greedy_is_seeded_and_unique():
    rng = np.random.default_rng(2)
    p = _samples(rng, 5, 60, 4)
    runs = [batchbald_greedy(p, 8, num_samples=500, max_exact_configs=64,
                             rng=np.random.default_rng(9)) for _ in range(2)]
    assert runs[0].indices.tolist() == runs[1].indices.tolist()
    assert np.array_equal(runs[0].scores, runs[1].scores)
    assert len(set(runs[0].indices.tolist())) == 8
    assert runs[0].exact_steps == 4  # 4^0 .. 4^3 <= 64 < 4^4
    assert runs[0].configurations == 500
    # while exact, the joint mutual information of a growing batch never decreases
    assert (np.diff(runs[0].scores[:4]) >= -1e-6).all()


@pytest.mark.parametrize("precision", ["float64", "float32"])
def test_torch_backend_agrees_with_numba(precision):
    pytest.importorskip("torch", reason="the torch backend needs PyTorch (assay[torch])")
    rng = np.random.default_rng(4)
    p = _samples(rng, 6, 40, 3)
    a = batchbald_greedy(p, 6, precision=precision, backend="numba-cpu",
                         rng=np.random.default_rng(1), max_exact_configs=27, num_samples=300)
    b = batchbald_greedy(p, 6, precision=precision, backend="torch",
                         rng=np.random.default_rng(1), max_exact_configs=27, num_samples=300)
    assert a.indices.tolist() == b.indices.tolist()
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-9 if precision == "float64" else 1e-5)
    assert b.backend.startswith("torch-")


@pytest.mark.parametrize("seed", range(4))
def test_equal_selections_to_batchbald_redux_in_the_exact_regime(seed):
    torch = pytest.importorskip("torch", reason="batchbald-redux needs PyTorch")
    redux = pytest.importorskip("batchbald_redux.batchbald",
                                reason="peer library: pip install --no-deps batchbald-redux "
                                       "toma tqdm")
    rng = np.random.default_rng(100 + seed)
    s, n, c, b = [(8, 50, 3, 6), (5, 40, 4, 5), (10, 30, 2, 10), (3, 20, 5, 4)][seed]
    p = _samples(rng, s, n, c)
    log_probs = torch.from_numpy(np.log(p).transpose(1, 0, 2).copy())
    peer = redux.get_batchbald_batch(log_probs, b, c ** (b - 1), dtype=torch.double)
    for precision in ("float64", "float32"):
        ours = batchbald_greedy(p, b, max_exact_configs=c ** (b - 1), precision=precision)
        assert ours.exact_steps == b
        assert ours.indices.tolist() == peer.indices, precision
        np.testing.assert_allclose(ours.scores, peer.scores,
                                   atol=1e-9 if precision == "float64" else 2e-5)


def test_through_acquisition_honours_candidates_and_seed():
    rng = np.random.default_rng(8)
    p = _samples(rng, 5, 30, 3).astype(np.float32)
    exclude = np.arange(0, 30, 3)
    r = selection.select("batchbald", 6, {"samples": p}, {"num_samples": 200,
                                                          "max_exact_configs": 9},
                           seed=4, exclude=exclude)
    assert not set(r.indices.tolist()) & set(exclude.tolist())
    keep = np.setdiff1d(np.arange(30), exclude)
    direct = batchbald_greedy(p, 6, candidates=keep, num_samples=200, max_exact_configs=9,
                              rng=np.random.default_rng(4),
                              tiebreak_rng=np.random.default_rng([4, 1]))
    assert r.indices.tolist() == direct.indices.tolist()
    assert r.metrics["batchbald_exact_steps"] == 3
    assert r.metrics["batchbald_configurations"] == 200
    assert r.backend == "numba-cpu"
    again = selection.select("batchbald", 6, {"samples": p}, {"num_samples": 200,
                                                              "max_exact_configs": 9},
                               seed=4, exclude=exclude)
    assert again.indices.tolist() == r.indices.tolist()
    # budget = all selectable items, and n = 1
    full = selection.select("batchbald", 20, {"samples": p}, seed=1, exclude=exclude)
    assert sorted(full.indices.tolist()) == keep.tolist()
    one = selection.select("batchbald", 1, {"samples": p[:, :1]}, seed=1)
    assert one.indices.tolist() == [0]


def test_errors_are_precise():
    p = np.full((2, 4, 2), 0.5)
    with pytest.raises(InvalidInput, match="budget 5 must be between 1 and 4"):
        batchbald_greedy(p, 5)
    with pytest.raises(InvalidInput, match="exceeds the 2 selectable items"):
        selection.select("batchbald", 3, {"samples": p}, exclude=np.array([0, 1]))
    with pytest.raises(InvalidInput, match=r"needs input 'samples' \[S, N, C\]"):
        selection.select("batchbald", 1, {"probs": p[0]})
    with pytest.raises(InvalidInput, match="precision must be one of float32, float64"):
        selection.select("batchbald", 1, {"samples": p}, {"precision": "half"})
    with pytest.raises(InvalidInput, match="num_samples must be >= 1"):
        selection.select("batchbald", 1, {"samples": p}, {"num_samples": 0})
    big = np.full((128, 3, 2), 0.5)
    with pytest.raises(InvalidInput, match=r"joint state.*lower it to at most 1048576"):
        selection.select("batchbald", 1, {"samples": big}, {"num_samples": 1 << 24})
    with pytest.raises(InvalidInput, match="backend 'numba-cuda' does not run this strategy"):
        batchbald_greedy(p, 1, backend="numba-cuda")
    with pytest.raises(InvalidInput, match="samples must have shape"):
        batchbald_greedy(p[0], 1)


def test_cancellation_stops_between_picks():
    calls = []

    def check():
        calls.append(1)
        if len(calls) > 2:
            raise Cancelled("the client cancelled the request")

    p = _samples(np.random.default_rng(1), 3, 10, 2)
    with pytest.raises(Cancelled):
        batchbald_greedy(p, 6, check_cancelled=check)
    assert len(calls) == 3
