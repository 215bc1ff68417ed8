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

from assay.kernels import rowwise, topscores

from .registry import Context, Inputs, Strategy, register
from .uncertainty import entropy, exact_top, probs64


def _compiled(samples: np.ndarray) -> np.ndarray | None:
    """float32/float64 samples as a C-contiguous read-only array the kernels read, else None."""
    if samples.ndim == 3 and samples.dtype in (np.float32, np.float64):
        return rowwise.as_rows(samples)
    return None


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
    """Mutual information H(mean p) - mean H(p) (Houlsby 2011; Gal 2017).

    float32/float64 samples take one compiled float64 pass per item (members and
    classes summed in order), the same kernel that rescores ``bald_top``'s
    shortlist, so both give the same bits.
    """
    samples = _compiled(inputs["samples"])
    if samples is not None:
        return topscores.exact("bald", samples)
    p = probs64(inputs, "samples")
    return entropy(p.mean(axis=0)) - entropy(p).mean(axis=0)


def bald_top(inputs: Inputs, params: dict, ctx: Context, budget: int):
    """The top-``budget`` shortlist of ``bald``: a float32 first pass over [S, N, C],
    then the float64 kernel on the candidates within its error bound of the
    ``budget``-th (None for 16-bit samples)."""
    samples = _compiled(inputs["samples"])
    if samples is None:
        return None
    items = topscores.top_items("bald", samples, budget, ctx.selectable)
    return items, topscores.exact("bald", rowwise.as_rows(samples[:, items]))


def variation_ratio(inputs: Inputs, params: dict, ctx: Context) -> np.ndarray:
    """1 - f_mode / S over the members' argmax predictions (Freeman 1965).

    A function of the modal count alone, so equal modal counts give equal scores.
    float32/float64 samples are counted by one compiled pass over [S, N, C].
    """
    samples = _compiled(inputs["samples"])
    if samples is not None:
        return topscores.exact("variation_ratio", samples)
    samples = inputs["samples"]
    return 1.0 - vote_counts(samples).max(axis=1) / samples.shape[0]


def variation_ratio_top(inputs: Inputs, params: dict, ctx: Context, budget: int):
    """The top-``budget`` shortlist of ``variation_ratio`` (None for 16-bit samples)."""
    samples = _compiled(inputs["samples"])
    if samples is None:
        return None
    return exact_top(topscores.exact("variation_ratio", samples), budget, ctx)


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
                  "Mutual information between label and model (BALD; Houlsby 2011, Gal 2017).",
                  shortlist=bald_top))
register(Strategy("variation_ratio", "score", variation_ratio, _S,
                  "1 - share of the modal vote across passes (Freeman 1965; Gal 2017).",
                  shortlist=variation_ratio_top))
register(Strategy("mean_std", "score", mean_std, _S,
                  "Mean over classes of the std of p across passes (Kendall 2015; Gal 2017)."))
