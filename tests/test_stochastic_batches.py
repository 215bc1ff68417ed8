"""Stochastic batch acquisition: softmax, power and soft-rank sampling of any score.

The sampler is checked three ways: its weights against a float64 twin of the closed
form, its picks against baal's ``PowerSampling``, ``GibbsSampling`` and
``RankBasedSampling`` fed the same Gumbel noise (baal's ``np.random.choice`` is
replaced by the Gumbel-top-k of its own distribution), and its draw frequencies on
a tiny pool against the exact probabilities of sequential sampling without
replacement.
"""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import reference as ref
import seeding

from assay.server.acquisition.selection import select
from assay.server.strategies.stochastic import gumbel_top_k, log_weights
from assay.vocab.errors import InvalidInput

SAMPLERS = {"softmax": "GibbsSampling", "power": "PowerSampling", "softrank": "RankBasedSampling"}


# -- float64 twins -------------------------------------------------------------------------

def ref_weights(scores, mode, beta):
    """Normalized p_i, one item at a time (ranks: 1 for the highest, ties averaged)."""
    s = [float(v) for v in scores]
    w = []
    for v in s:
        if mode == "softmax":
            w.append(math.exp(beta * (v - max(s))))
        elif mode == "power":
            w.append(v ** beta)
        else:
            above = sum(1 for u in s if u > v)
            equal = sum(1 for u in s if u == v)
            w.append((above + (equal + 1) / 2.0) ** -beta)
    total = sum(w)
    return np.array([x / total for x in w])


def ref_sequence_probability(p, sequence):
    """P(draws = sequence) when each draw is proportional to the remaining p."""
    prob, left = 1.0, 1.0
    for i in sequence:
        prob *= p[i] / left
        left -= p[i]
    return prob


def _normalized(log_w):
    w = np.exp(log_w - log_w[np.isfinite(log_w)].max())
    return w / w.sum()


@pytest.mark.parametrize("mode", list(SAMPLERS))
@pytest.mark.parametrize("beta", [0.5, 1.0, 3.0])
def test_weights_match_the_closed_form(mode, beta, rng):
    scores = rng.random(40)
    scores[[3, 7, 11]] = scores[5]  # ties
    got = _normalized(log_weights(scores, mode, beta))
    np.testing.assert_allclose(got, ref_weights(scores, mode, beta), rtol=1e-12,
                               err_msg=f"seed={seeding.current()}")
    assert np.unique(got[[3, 5, 7, 11]]).size == 1  # equal scores, equal weights


def test_draw_frequencies_match_sequential_sampling_without_replacement():
    p = np.array([0.4, 0.3, 0.2, 0.1])
    log_w = np.log(p)
    trials, k = 20_000, 2
    counts: dict[tuple, int] = {}
    gen = np.random.default_rng(seeding.current())
    for _ in range(trials):
        pick = tuple(gumbel_top_k(log_w, k, gen).tolist())
        counts[pick] = counts.get(pick, 0) + 1
    for seq in itertools.permutations(range(4), k):
        want = ref_sequence_probability(p, seq)
        # 5 binomial standard errors: over 12 sequences a false alarm has odds < 1e-5.
        tol = 5.0 * math.sqrt(want * (1 - want) / trials)
        assert abs(counts.get(seq, 0) / trials - want) <= tol, (seq, want, seeding.current())


def test_zero_weights_come_last_in_uniform_order():
    log_w = np.array([-np.inf, np.log(0.5), -np.inf, np.log(0.5), -np.inf])
    trials = 6000
    first_zero = np.zeros(5)
    gen = np.random.default_rng(seeding.current())
    for _ in range(trials):
        order = gumbel_top_k(log_w, 5, gen)
        assert set(order[:2].tolist()) == {1, 3}
        first_zero[order[2]] += 1
    for i in (0, 2, 4):  # each zero-weight item is drawn third with probability 1/3
        assert abs(first_zero[i] / trials - 1 / 3) <= 5.0 * math.sqrt(2 / 9 / trials)


# -- the strategy --------------------------------------------------------------------------

def _samples(rng, s=6, n=80, c=4):
    return rng.dirichlet(np.ones(c), size=(s, n))


@pytest.mark.parametrize("mode", list(SAMPLERS))
def test_the_batch_is_the_gumbel_top_k_of_the_inner_scores(mode, rng):
    scores = rng.random(60)
    seed = int(rng.integers(2**31))
    exclude = np.array([2, 9, 40])
    got = select("stochastic", 10, {"scores": scores},
                 {"score": "precomputed", "mode": mode, "beta": 2.0}, seed=seed, exclude=exclude)
    cand = np.setdiff1d(np.arange(60), exclude)
    g = np.random.default_rng(seed).gumbel(size=cand.size)
    key = np.log(ref_weights(scores[cand], mode, 2.0)) + g
    want = cand[np.argsort(-key, kind="stable")[:10]]
    np.testing.assert_array_equal(got.indices, want, err_msg=f"seed={seed}")
    np.testing.assert_array_equal(got.scores, scores[want])


def test_same_seed_same_batch_and_budget_n_is_a_permutation(rng):
    samples = _samples(rng)
    a = select("stochastic", 80, {"samples": samples}, {"mode": "power"}, seed=5)
    b = select("stochastic", 80, {"samples": samples}, {"mode": "power"}, seed=5)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(np.sort(a.indices), np.arange(80))
    one = select("stochastic", 1, {"scores": np.array([0.3])}, {"score": "precomputed"}, seed=1)
    np.testing.assert_array_equal(one.indices, [0])


def test_duplicates_are_drawn_alike(rng):
    # Two identical scores: each is drawn first equally often.
    scores = np.array([1.0, 1.0, 0.0])
    first = [select("stochastic", 1, {"scores": scores},
                    {"score": "precomputed", "beta": 50.0}, seed=s).indices[0]
             for s in range(400)]
    assert set(first) == {0, 1}
    assert abs(first.count(0) / 400 - 0.5) <= 5.0 * math.sqrt(0.25 / 400)


def test_inner_parameters_pass_through(rng):
    samples = _samples(rng, n=50)
    got = select("stochastic", 4, {"samples": samples},
                 {"score": "epig", "score_params": json.dumps({"target_size": 7})}, seed=3)
    assert got.metrics["epig_target_size"] == 7.0


@pytest.mark.parametrize("params,field", [
    ({"beta": 0.0}, "params.beta"),
    ({"beta": -1.0}, "params.beta"),
    ({"score": "nope"}, "params.score"),
    ({"score": "batchbald"}, "params.score"),
    ({"score": "margin", "mode": "power"}, "params.mode"),
    ({"score": "entropy", "mode": "cubic"}, "params.mode"),
    ({"score_params": "{"}, "params.score_params"),
    ({"score_params": "[1]"}, "params.score_params"),
    ({"score_params": '{"alpha": 2}'}, "params.score_params.alpha"),
    ({"score_params": '{"prefilter": "margin"}'}, "params.score_params.prefilter"),
    ({"score": "mal", "score_params": '{"alpha": 2.0}'}, "params.score_params.alpha"),
    ({"score": "egl"}, "inputs.embeddings"),
])
def test_bad_requests_name_the_field(params, field, rng):
    inputs = {"samples": _samples(rng), "discriminator": rng.random(80)}
    with pytest.raises(InvalidInput) as caught:
        select("stochastic", 3, inputs, params, seed=1)
    assert caught.value.field == field, caught.value.message


# -- baal ----------------------------------------------------------------------------------

stochastics = pytest.importorskip("baal.active.heuristics.stochastics")


class _Given:
    """A baal base heuristic whose uncertainties are given scores."""

    def __init__(self, scores):
        self.scores = scores

    def get_uncertainties(self, predictions):
        return self.scores.copy()


def _baal_picks(monkeypatch, heuristic, predictions, noise):
    """baal's ranks with ``np.random.choice`` drawing the Gumbel-top-k of its own p."""
    seen = {}

    def choice(n, size, replace, p):
        assert not replace
        seen["p"] = np.asarray(p, dtype=np.float64)
        with np.errstate(divide="ignore"):
            key = np.log(seen["p"]) + noise
        return np.argsort(-key, kind="stable")[:size]

    monkeypatch.setattr(np.random, "choice", choice)
    picks, _ = heuristic.get_ranks(predictions)
    return np.asarray(picks), seen["p"]


@pytest.mark.parametrize("mode", list(SAMPLERS))
@pytest.mark.parametrize("beta", [0.5, 2.0])
def test_picks_match_baal_given_the_same_noise(monkeypatch, mode, beta, rng):
    n, budget = 200, 15
    scores = rng.random(n) + 0.01
    seed = int(rng.integers(2**31))
    noise = np.random.default_rng(seed).gumbel(size=n)
    sampler = getattr(stochastics, SAMPLERS[mode])(_Given(scores), budget, temperature=1 / beta)
    theirs, p = _baal_picks(monkeypatch, sampler, np.zeros((n, 1)), noise)
    ours = select("stochastic", budget, {"scores": scores},
                  {"score": "precomputed", "mode": mode, "beta": beta}, seed=seed)
    np.testing.assert_allclose(_normalized(log_weights(scores, mode, beta)), p, rtol=1e-10)
    np.testing.assert_array_equal(ours.indices, theirs, err_msg=f"seed={seed}")


def test_power_bald_matches_baal_bald(monkeypatch, rng):
    heuristics = pytest.importorskip("baal.active.heuristics")
    samples = _samples(rng, s=10, n=150, c=5)
    seed = int(rng.integers(2**31))
    noise = np.random.default_rng(seed).gumbel(size=150)
    sampler = stochastics.PowerSampling(heuristics.BALD(), 12, temperature=1.0)
    theirs, p = _baal_picks(monkeypatch, sampler, np.transpose(samples, (1, 2, 0)), noise)
    ours = select("stochastic", 12, {"samples": samples}, {"mode": "power"}, seed=seed)
    # baal adds an epsilon inside its logs: its BALD, hence p, agrees to ~1e-6.
    np.testing.assert_allclose(_normalized(log_weights(ref.bald(samples), "power", 1.0)), p,
                               rtol=1e-4, atol=1e-9)
    np.testing.assert_array_equal(ours.indices, theirs, err_msg=f"seed={seed}")

