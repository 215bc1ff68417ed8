"""Scores and selections against peer libraries that implement the same formulas.

modAL (uncertainty and committee disagreement) and baal (BALD, entropy, margin,
least confidence over MC samples) are independent implementations; agreeing
with them on fresh random inputs guards against a shared misreading of a paper.
"""

from __future__ import annotations

import numpy as np
import pytest

from assay.server.acquisition.selection import select

modal_uncertainty = pytest.importorskip("modAL.uncertainty")
modal_disagreement = pytest.importorskip("modAL.disagreement")


class _FixedClassifier:
    """A duck-typed fitted classifier that returns given probabilities."""

    def __init__(self, probs):
        self.probs = probs

    def predict_proba(self, x):
        return self.probs


class _FixedCommittee:
    """A duck-typed modAL committee over given member probabilities [S, N, C]."""

    def __init__(self, samples):
        self.samples = samples
        self.classes_ = np.arange(samples.shape[2])

    def __len__(self):
        return self.samples.shape[0]

    def __iter__(self):
        return iter(range(self.samples.shape[0]))

    def vote(self, x):
        return self.samples.argmax(axis=2).T  # [N, S]

    def vote_proba(self, x):
        return np.transpose(self.samples, (1, 0, 2))  # [N, S, C]

    def predict_proba(self, x):
        return self.samples.mean(axis=0)


def _fresh(seed, n, c, s=None, alpha=1.0):
    rng = np.random.default_rng(seed)
    shape = n if s is None else (s, n)
    return rng.dirichlet(np.full(c, alpha), size=shape)


def _top(scores, b):
    return np.argsort(-scores, kind="stable")[:b]


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("ours,theirs,sign", [
    ("least_confident", "classifier_uncertainty", 1.0),
    ("margin", "classifier_margin", -1.0),
    ("entropy", "classifier_entropy", 1.0),
])
def test_uncertainty_matches_modal(seed, ours, theirs, sign):
    probs = _fresh(seed, 300, 6)
    x = np.zeros((300, 1))
    peer = sign * getattr(modal_uncertainty, theirs)(_FixedClassifier(probs), x)
    got = select(ours, 300, {"probs": probs})
    np.testing.assert_allclose(got.scores, peer[got.indices], rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(select(ours, 25, {"probs": probs}).indices, _top(peer, 25))


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("ours,theirs", [
    ("vote_entropy", "vote_entropy"),
    ("consensus_entropy", "consensus_entropy"),
])
def test_committee_matches_modal(seed, ours, theirs):
    samples = _fresh(seed, 200, 4, s=7, alpha=0.7)
    x = np.zeros((200, 1))
    peer = getattr(modal_disagreement, theirs)(_FixedCommittee(samples), x)
    got = select(ours, 200, {"samples": samples})
    np.testing.assert_allclose(got.scores, peer[got.indices], rtol=1e-9, atol=1e-12)


def test_vote_entropy_ties_where_modal_rounds_apart():
    """The case that changed a selected set: two items with the vote histogram
    (1, 1, 1, 4) in different class orders. modAL sums p log p in class order, so
    its two scores differ in the last bit and its top-2 takes the later item; the
    scores are equal, so the earlier one is ours. With modAL's scores merged where
    they agree to rounding, the two selections are the same."""
    from test_ties import _committee

    histograms = [(2, 2, 2, 1), (1, 1, 4, 1), (1, 1, 1, 4), (7, 0, 0, 0)]
    samples = _committee(histograms)
    peer = modal_disagreement.vote_entropy(_FixedCommittee(samples), np.zeros((4, 1)))
    got = select("vote_entropy", 4, {"samples": samples})
    np.testing.assert_allclose(got.scores, peer[got.indices], rtol=1e-12)
    assert got.scores[1] == got.scores[2]
    merged = np.round(peer, 12)
    np.testing.assert_array_equal(select("vote_entropy", 2, {"samples": samples}).indices,
                                  _top(merged, 2))
    np.testing.assert_array_equal(got.indices, [0, 1, 2, 3])


def test_kl_disagreement_is_the_mean_of_modal_member_kls():
    """modAL reports the max over members; the mean of the same per-member KLs is ours."""
    from scipy.stats import entropy as kl

    samples = _fresh(5, 50, 3, s=4)
    consensus = samples.mean(axis=0)
    per_member = np.array([[kl(samples[s, i], consensus[i]) for i in range(50)] for s in range(4)])
    peer_max = modal_disagreement.KL_max_disagreement(_FixedCommittee(samples), np.zeros((50, 1)))
    np.testing.assert_allclose(per_member.max(axis=0), peer_max, rtol=1e-9)
    got = select("kl_disagreement", 50, {"samples": samples})
    np.testing.assert_allclose(got.scores, per_member.mean(axis=0)[got.indices], rtol=1e-9)


baal_heuristics = None
try:  # baal needs torch; it is installed by CI with the CPU wheel.
    import baal.active.heuristics as baal_heuristics
except Exception:
    baal_heuristics = None

needs_baal = pytest.mark.skipif(baal_heuristics is None, reason="baal (and torch) not installed")


@needs_baal
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("ours,theirs", [
    ("bald", "BALD"),
    ("consensus_entropy", "Entropy"),
])
def test_mc_scores_match_baal(seed, ours, theirs):
    samples = _fresh(seed, 250, 5, s=10, alpha=0.5)
    peer = getattr(baal_heuristics, theirs)().compute_score(np.transpose(samples, (1, 2, 0)))
    got = select(ours, 250, {"samples": samples})
    # baal adds a small epsilon inside its logs; agreement is to ~1e-6.
    np.testing.assert_allclose(got.scores, peer[got.indices], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(select(ours, 20, {"samples": samples}).indices, _top(peer, 20))


@needs_baal
@pytest.mark.parametrize("ours,theirs", [("margin", "Margin"), ("least_confident", "Certainty")])
def test_single_model_scores_rank_like_baal(ours, theirs):
    probs = _fresh(9, 300, 4)
    peer = getattr(baal_heuristics, theirs)().get_ranks(probs[:, :, None])[0]
    got = select(ours, 30, {"probs": probs})
    np.testing.assert_array_equal(got.indices, np.asarray(peer)[:30])
