"""Scores equal in exact arithmetic compare equal, so ties go to the lower index.

Count-based scores (vote_entropy, variation_ratio, label_dispersion,
forgetting_events) depend only on a multiset of counts and tie exactly under any
relabeling of the classes. Every score ties exactly on duplicated items. For
probability rows that are class permutations of each other, max-based scores tie
exactly and sum-based ones agree to within the rounding of a C-term sum.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import reference as ref
from strategy_cases import CASES

from assay.server.acquisition.selection import select
from assay.server.strategies import registry

EPS = np.finfo(np.float64).eps


def _member_probs(vote: int, c: int) -> np.ndarray:
    """A member's probabilities whose argmax is ``vote`` (0.7 there, the rest shared)."""
    p = np.full(c, 0.3 / (c - 1))
    p[vote] = 0.7
    return p


def _committee(histograms: list[tuple[int, ...]]) -> np.ndarray:
    """samples [S, N, C] whose members' votes on item i follow histograms[i]."""
    s, c = sum(histograms[0]), len(histograms[0])
    samples = np.empty((s, len(histograms), c))
    for item, hist in enumerate(histograms):
        votes = [cls for cls, count in enumerate(hist) for _ in range(count)]
        for member, vote in enumerate(votes):
            samples[member, item] = _member_probs(vote, c)
    return samples


def _vote_entropy_exact(hist: tuple[int, ...]) -> float:
    s = sum(hist)
    return -math.fsum(v / s * math.log(v / s) for v in hist if v)


@pytest.mark.parametrize("hist", [(1, 1, 5, 0), (1, 1, 1, 4), (2, 2, 3, 0), (1, 2, 4, 0)])
def test_permuted_vote_histograms_tie_exactly_and_the_lower_index_wins(hist):
    perms = sorted(set(itertools.permutations(hist)))
    # A clearly higher and a clearly lower item around the tied block.
    histograms = [(7, 0, 0, 0), *perms, (2, 2, 2, 1)]
    samples = _committee(histograms)
    n = len(histograms)
    for name in ("vote_entropy", "variation_ratio"):
        got = select(name, n, {"samples": samples})
        scores = dict(zip(got.indices.tolist(), got.scores.tolist(), strict=True))
        tied = list(range(1, 1 + len(perms)))
        assert len({scores[i] for i in tied}) == 1, (name, hist, [scores[i] for i in tied])
        assert got.indices[0] == n - 1 and got.indices[-1] == 0, (name, got.indices)
        np.testing.assert_array_equal(got.indices[1:-1], tied, err_msg=f"{name} {hist}")
    exact = _vote_entropy_exact(hist)
    got = select("vote_entropy", 1, {"samples": samples}, exclude=np.array([0, n - 1]))
    assert got.indices[0] == 1
    assert abs(got.scores[0] - exact) <= 4 * EPS * exact, (got.scores[0], exact)


def test_permuted_label_histories_tie_exactly():
    """label_dispersion over relabeled histories: the same counts, the same score."""
    history = np.array([0, 0, 1, 2, 2, 2, 3])
    relabel = [np.array(p)[history] for p in itertools.permutations(range(4))]
    predictions = np.stack([np.zeros(7, np.int64), *relabel], axis=1)  # [T, N]
    got = select("label_dispersion", predictions.shape[1], {"predictions": predictions})
    assert got.indices[-1] == 0
    np.testing.assert_array_equal(got.indices[:-1], np.arange(1, predictions.shape[1]))
    assert len(set(got.scores[:-1].tolist())) == 1
    assert got.scores[0] == 1.0 - 3 / 7


def test_forgetting_events_ties_go_to_the_lower_index():
    """Equal event counts at different epochs are equal integers: the lower index first."""
    labels = np.array([0, 1, 2, 1, 0])
    # Item 1 forgets at epoch 1, item 3 at epoch 3, item 0 twice; items 2 and 4 never.
    predictions = np.array([[0, 1, 2, 1, 0],
                            [1, 0, 2, 1, 0],
                            [0, 1, 2, 1, 0],
                            [1, 1, 2, 0, 0],
                            [1, 1, 2, 1, 0]])
    got = select("forgetting_events", 3, {"predictions": predictions, "labels": labels})
    np.testing.assert_array_equal(got.indices, [0, 1, 3])
    np.testing.assert_array_equal(got.scores, [2.0, 1.0, 1.0])


@pytest.mark.parametrize("name", sorted(CASES))
def test_duplicated_items_tie_exactly_for_every_score_strategy(name):
    seed = 4242
    rng = np.random.default_rng(seed)
    inputs = {k: np.array(v) for k, v in CASES[name].make(rng, 30, 4).items()}
    for dup, src in ((17, 3), (29, 3), (8, 5)):
        for role, array in inputs.items():
            axis = registry.INPUT_ROLES[role][1]
            index, source = [slice(None)] * array.ndim, [slice(None)] * array.ndim
            index[axis], source[axis] = dup, src
            array[tuple(index)] = array[tuple(source)]
    got = select(name, 30, inputs, CASES[name].params)
    rank = {int(i): r for r, i in enumerate(got.indices)}
    score = dict(zip(got.indices.tolist(), got.scores.tolist(), strict=True))
    for dup, src in ((17, 3), (29, 3), (8, 5)):
        assert score[dup] == score[src], f"seed={seed} {name}: {score[src]!r} vs {score[dup]!r}"
        assert rank[src] < rank[dup], f"seed={seed} {name}: item {src} after its copy {dup}"


@pytest.mark.parametrize("c", [3, 7, 64])
def test_class_permuted_probability_rows(c):
    """Max-based scores are exact under a class permutation; entropies agree to the
    rounding of a c-term sum (documented: they are summed in class order)."""
    seed = 77 + c
    rng = np.random.default_rng(seed)
    row = rng.dirichlet(np.ones(c))
    probs = np.stack([row, *(row[rng.permutation(c)] for _ in range(9))])
    for name in ("least_confident", "margin"):
        got = select(name, 10, {"probs": probs})
        assert len(set(got.scores.tolist())) == 1, (name, seed)
        np.testing.assert_array_equal(got.indices, np.arange(10), err_msg=f"{name} seed={seed}")
    for dtype in (np.float64, np.float32):
        got = select("entropy", 10, {"probs": probs.astype(dtype)})
        want = ref.entropy(probs.astype(dtype))[got.indices]
        # Each term -p log p carries a few ulps; a sum of c of them, c ulps of the total.
        np.testing.assert_allclose(got.scores, want, rtol=4 * c * EPS, err_msg=f"seed={seed}")
    samples = np.stack([probs, probs[::-1]])  # consensus of permuted rows, per item
    got = select("consensus_entropy", 10, {"samples": samples})
    want = ref.consensus_entropy(samples)[got.indices]
    np.testing.assert_allclose(got.scores, want, rtol=4 * c * EPS, err_msg=f"seed={seed}")
