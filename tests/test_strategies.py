"""Every score strategy against its float64 reference, plus the contract all share:
n = 1, budget = n, budget > n, ties, unique in-range output, seeded determinism."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import reference as ref
from strategy_cases import CASES, dirichlet

from assay.server.acquisition.selection import select
from assay.server.strategies import registry
from assay.vocab.errors import InvalidInput

SCORE_STRATEGIES = sorted(CASES)


def test_every_registered_score_strategy_has_a_reference():
    registered = {s.name for s in registry.all_strategies() if s.kind == "score"}
    assert registered <= set(CASES), registered - set(CASES)


@pytest.mark.parametrize("name", SCORE_STRATEGIES)
@pytest.mark.parametrize("n,c", [(1, 2), (2, 2), (37, 2), (200, 5), (50, 1000)])
def test_matches_reference(name, n, c):
    # A stable seed per case (str hash() is salted per process), so a failure replays.
    seed = zlib.crc32(f"{name}/{n}/{c}".encode())
    rng = np.random.default_rng(seed)
    case = CASES[name]
    inputs = case.make(rng, n, c)
    expected = case.reference(inputs, np.arange(n))
    for budget in sorted({1, max(1, n // 3), n}):
        result = select(name, budget, inputs, case.params)
        want = ref.top_b(expected, budget)
        why = f"seed {seed}, budget {budget}"
        np.testing.assert_array_equal(result.indices, want, err_msg=why)
        np.testing.assert_allclose(result.scores, expected[want], rtol=1e-9, atol=1e-12,
                                   err_msg=why)


@pytest.mark.parametrize("name", SCORE_STRATEGIES)
def test_contract(name):
    rng = np.random.default_rng(7)
    case = CASES[name]
    inputs = case.make(rng, 40, 4)
    with pytest.raises(InvalidInput, match="budget"):
        select(name, 41, inputs, case.params)
    with pytest.raises(InvalidInput, match="budget"):
        select(name, 0, inputs, case.params)
    result = select(name, 40, inputs, case.params)
    assert sorted(result.indices.tolist()) == list(range(40))
    a = select(name, 10, inputs, case.params, seed=5)
    b = select(name, 10, inputs, case.params, seed=5)
    np.testing.assert_array_equal(a.indices, b.indices)
    assert a.seed == 5


@pytest.mark.parametrize("name", SCORE_STRATEGIES)
def test_exclusions_are_never_selected(name):
    rng = np.random.default_rng(11)
    case = CASES[name]
    inputs = case.make(rng, 60, 3)
    exclude = rng.choice(60, size=25, replace=False)
    candidates = np.setdiff1d(np.arange(60), exclude)
    result = select(name, 35, inputs, case.params, exclude=exclude)
    assert set(result.indices.tolist()) == set(candidates.tolist())
    expected = case.reference(inputs, candidates)
    np.testing.assert_array_equal(select(name, 5, inputs, case.params, exclude=exclude).indices,
                                  ref.top_b(expected, 5, candidates))


def test_ties_break_by_lower_index_without_seed_and_randomly_with_one():
    probs = np.tile([[0.5, 0.5]], (10, 1))
    probs[3] = [0.9, 0.1]
    result = select("entropy", 4, {"probs": probs})
    np.testing.assert_array_equal(result.indices, [0, 1, 2, 4])
    draws = {tuple(select("entropy", 4, {"probs": probs}, seed=s).indices) for s in range(20)}
    assert len(draws) > 1
    for d in draws:
        assert 3 not in d
    np.testing.assert_array_equal(select("entropy", 4, {"probs": probs}, seed=3).indices,
                                  select("entropy", 4, {"probs": probs}, seed=3).indices)


def test_duplicated_items_get_equal_scores_and_lower_index_first():
    rng = np.random.default_rng(3)
    probs = dirichlet(rng, 20, 4)
    probs[15] = probs[2]
    scores = ref.entropy(probs)
    order = ref.top_b(scores, 20)
    result = select("entropy", 20, {"probs": probs})
    np.testing.assert_array_equal(result.indices, order)
    assert list(result.indices).index(2) < list(result.indices).index(15)


def test_random_is_a_seeded_uniform_sample_without_replacement():
    probs = dirichlet(np.random.default_rng(0), 100, 3)
    a = select("random", 30, {"probs": probs}, seed=9)
    assert len(set(a.indices.tolist())) == 30
    np.testing.assert_array_equal(a.indices, select("random", 30, {"probs": probs}, seed=9).indices)
    assert not np.array_equal(a.indices, select("random", 30, {"probs": probs}, seed=10).indices)
    # Every item equally likely. Over seeds 0..299 each item's count is Binomial(300, 0.3):
    # mean 90, standard error sqrt(300 * 0.3 * 0.7) = 7.9. Five standard errors for the
    # most extreme of the 100 items (a false alarm under 1e-4) catch a favoured or a
    # never-picked item.
    draws, picks, n = 300, 30, 100
    counts = np.zeros(n)
    index_sum = 0.0
    for s in range(draws):
        chosen = select("random", picks, {"probs": probs}, seed=s).indices
        counts[chosen] += 1
        index_sum += chosen.sum()
    p = picks / n
    se = np.sqrt(draws * p * (1 - p))
    worst = int(np.argmax(np.abs(counts - draws * p)))
    assert abs(counts[worst] - draws * p) < 5 * se, (
        f"seeds 0..{draws - 1}: item {worst} picked {counts[worst]:.0f} times, "
        f"expected {draws * p:.0f} +- {se:.1f}")
    # No position bias: the mean picked index is (n - 1) / 2; one draw's mean of 30 indices
    # sampled without replacement has variance (n^2 - 1) / 12 / 30 * (n - 30) / (n - 1).
    mean_se = np.sqrt((n * n - 1) / 12 / picks * (n - picks) / (n - 1) / draws)
    mean_index = index_sum / (draws * picks)
    assert abs(mean_index - (n - 1) / 2) < 5 * mean_se, (
        f"seeds 0..{draws - 1}: mean picked index {mean_index:.2f}, expected "
        f"{(n - 1) / 2} +- {mean_se:.2f}")


def test_probs_are_derived_from_samples_when_absent():
    samples = dirichlet(np.random.default_rng(1), (4, 30), 3)
    got = select("entropy", 5, {"samples": samples})
    np.testing.assert_array_equal(got.indices, ref.top_b(ref.entropy(samples.mean(axis=0)), 5))


def test_float16_and_bfloat16_inputs_score_like_their_float64_values():
    from assay.vocab.dtypes import BFLOAT16

    rng = np.random.default_rng(2)
    probs = dirichlet(rng, 64, 3)
    for dtype in (np.float16, BFLOAT16):
        low = probs.astype(dtype)
        expected = ref.least_confident(low.astype(np.float64))
        got = select("least_confident", 10, {"probs": low})
        np.testing.assert_allclose(got.scores, expected[got.indices])
        np.testing.assert_array_equal(got.indices, ref.top_b(expected, 10))


def test_two_stage_prefilter_restricts_candidates():
    rng = np.random.default_rng(4)
    probs = dirichlet(rng, 100, 4)
    loss = rng.uniform(size=100)
    top_entropy = set(ref.top_b(ref.entropy(probs), 20).tolist())
    got = select("loss_prediction", 5, {"probs": probs, "loss": loss},
                 {"prefilter": "entropy", "prefilter_k": 20})
    expected = ref.top_b(loss, 5, sorted(top_entropy))
    np.testing.assert_array_equal(got.indices, expected)
    assert got.metrics["prefilter_k"] == 20
    with pytest.raises(InvalidInput, match="prefilter_k"):
        select("loss_prediction", 5, {"probs": probs, "loss": loss},
               {"prefilter": "entropy", "prefilter_k": 3})
    with pytest.raises(InvalidInput, match="score strategy"):
        select("entropy", 5, {"probs": probs}, {"prefilter": "random"})
    with pytest.raises(InvalidInput, match="needs input 'samples'"):
        select("entropy", 5, {"probs": probs}, {"prefilter": "bald"})


@pytest.mark.parametrize("params,match", [
    ({"nope": 1}, "no parameter 'nope'"),
    ({"alpha": 2.0}, "<= 1.0"),
    ({"alpha": "x"}, "must be float"),
    ({"alpha": float("nan")}, "finite"),
])
def test_parameters_are_validated(params, match):
    rng = np.random.default_rng(0)
    inputs = CASES["mal"].make(rng, 10, 3)
    with pytest.raises(InvalidInput, match=match):
        select("mal", 2, inputs, params)


def test_margin_needs_two_classes_and_missing_inputs_are_named():
    with pytest.raises(InvalidInput, match="at least 2 classes"):
        select("margin", 1, {"probs": np.ones((3, 1))})
    with pytest.raises(InvalidInput, match="needs input 'samples'"):
        select("bald", 1, {"probs": np.full((3, 2), 0.5)})
    with pytest.raises(InvalidInput, match="needs input 'embeddings'"):
        select("egl", 1, {"probs": np.full((3, 2), 0.5)})
