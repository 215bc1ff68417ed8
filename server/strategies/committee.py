"""Committee and Bayesian disagreement over ``samples: float[S, N, C]``.

The S axis may be committee members, ensemble members or MC-dropout passes; the
formulas do not need to know which.

Ties. Ties go to the lower index, so scores that are equal in exact arithmetic
must be bit-identical. The vote-based scores (``vote_entropy``,
``variation_ratio``) depend only on the multiset of vote counts and are computed
from it (counts sorted before summing), so two items whose histograms differ by a
class permutation score exactly alike. (A member whose top probabilities tie
votes for the lowest of those classes, so permuting the tied classes may move its
vote; the score of a given histogram never changes.) The probability-based scores
sum over classes in class order: identical rows score identically, but a row and
a class permutation of it may differ by a few units in the last place (about C
machine epsilons relative), because floating-point addition is not associative;
making them exact would need a per-row sort of C terms on every call.
"""

from __future__ import annotations

import numpy as np
from scipy.special import rel_entr

from .registry import Context, Inputs, Strategy, register
from .uncertainty import entropy, probs64


def vote_counts(samples: np.ndarray) -> np.ndarray:
    """int64[N, C]: how many of the S members predict each class (argmax, lowest class on ties)."""
    s, n, c = samples.shape
    votes = samples.argmax(axis=2)
    counts = np.zeros((n, c), dtype=np.int64)
    rows = np.arange(n)
    for member in range(s):
        counts[rows, votes[member]] += 1
    return counts


def vote_entropy(inputs: Inputs, params: dict, ctx: Context) -> np.ndarray:
    """Entropy of the vote distribution V(y)/S (Dagan & Engelson 1995).

    The counts are sorted per item before the terms are summed: the entropy of a
    histogram does not depend on which class got which count, and summing in
    class order made two such items differ by a rounding step, so the higher
    index could win a tie that belongs to the lower one.
    """
    samples = inputs["samples"]
    return entropy(np.sort(vote_counts(samples), axis=1) / samples.shape[0])


def consensus_entropy(inputs: Inputs, params: dict, ctx: Context) -> np.ndarray:
    """Entropy of the mean prediction (Settles 2010)."""
    return entropy(probs64(inputs, "samples").mean(axis=0))


def kl_disagreement(inputs: Inputs, params: dict, ctx: Context) -> np.ndarray:
    """Mean KL divergence of each member from the consensus (McCallum & Nigam 1998)."""
    p = probs64(inputs, "samples")
    return rel_entr(p, p.mean(axis=0)).sum(axis=2).mean(axis=0)


def bald(inputs: Inputs, params: dict, ctx: Context) -> np.ndarray:
    """Mutual information H(mean p) - mean H(p) (Houlsby 2011; Gal 2017)."""
    p = probs64(inputs, "samples")
    return entropy(p.mean(axis=0)) - entropy(p).mean(axis=0)


def variation_ratio(inputs: Inputs, params: dict, ctx: Context) -> np.ndarray:
    """1 - f_mode / S over the members' argmax predictions (Freeman 1965).

    A function of the modal count alone, so equal modal counts give equal scores.
    """
    samples = inputs["samples"]
    return 1.0 - vote_counts(samples).max(axis=1) / samples.shape[0]


def mean_std(inputs: Inputs, params: dict, ctx: Context) -> np.ndarray:
    """Class-averaged standard deviation of the probabilities across members (Kendall 2015)."""
    return probs64(inputs, "samples").std(axis=0).mean(axis=1)


_S = ("samples",)
register(Strategy("vote_entropy", "score", vote_entropy, _S,
                  "Entropy of the committee's hard votes (Dagan & Engelson 1995)."))
register(Strategy("consensus_entropy", "score", consensus_entropy, _S,
                  "Entropy of the committee's mean prediction (Settles 2010)."))
register(Strategy("kl_disagreement", "score", kl_disagreement, _S,
                  "Mean KL(member || consensus) (McCallum & Nigam 1998)."))
register(Strategy("bald", "score", bald, _S,
                  "Mutual information between label and model (BALD; Houlsby 2011, Gal 2017)."))
register(Strategy("variation_ratio", "score", variation_ratio, _S,
                  "1 - share of the modal vote across passes (Freeman 1965; Gal 2017)."))
register(Strategy("mean_std", "score", mean_std, _S,
                  "Mean over classes of the std of p across passes (Kendall 2015; Gal 2017)."))
