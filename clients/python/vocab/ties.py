"""The tie-breaking rule: one order for equal scores, everywhere.

Every top-b choice in Assay (score strategies, the two-stage prefilter, the
strategies that rank inside their own step, BatchBALD's greedy picks, the
sharded merge) orders items the same way, so the same request gives the same
answer on any path (small-text's ``argselect``):

1. Higher score first. Scores compare exactly, with no tolerance; NaN has no
   order and is refused.
2. Equal scores go by a priority over the candidate positions (the candidates
   are sorted item indices):

   - no seed in the request: the priority is the position itself, so the
     **lower item index wins**; the answer does not depend on any randomness;
   - a seed in the request: the priority is a random permutation of the
     positions drawn from the tie-break generator ``tiebreak_generator(seed)``
     (``default_rng([seed, 1])``), a stream of its own, so the draws a strategy
     makes from its main generator (``default_rng(seed)``) do not move the tie
     order, and a replay with the same seed breaks ties the same way. Each
     ``argselect`` call draws one permutation of its n candidates.

The greedy geometric kernels (k-center, facility location, BADGE's first pick)
take the lower candidate position on an exact tie at each step, seed or not:
their argmax is ``np.argmax``'s first maximum, reduced across threads and blocks
with the same lower-position rule. BatchBALD picks each step with
``argselect(value, 1, None, tiebreak_rng)``, so it follows the rule above.

This module needs NumPy and imports nothing of Assay.
"""

from __future__ import annotations

import numpy as np

from .errors import InvalidInput


def tiebreak_generator(seed: int) -> np.random.Generator:
    """The generator that orders ties for a request that gave ``seed``.

    Separate from the strategy's ``default_rng(seed)``: drawing from one never
    shifts the other.
    """
    return np.random.default_rng([int(seed), 1])


def priority(n: int, tiebreak_rng: np.random.Generator | None = None) -> np.ndarray:
    """The tie priority of ``n`` candidate positions: lower wins.

    The positions themselves without ``tiebreak_rng``; else one permutation
    drawn from it.
    """
    return np.arange(n) if tiebreak_rng is None else tiebreak_rng.permutation(n)


def argselect(
    scores: np.ndarray,
    budget: int,
    candidates: np.ndarray | None = None,
    tiebreak_rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Indices of the ``budget`` highest scores, best first, ties by the rule above.

    O(N) plus O(b log b): a partition finds the b-th value, then only the chosen
    items are sorted.

    Parameters
    ----------
    scores : float[N]
        Per-item scores; NaN is refused (it has no order).
    budget : int
        Number to select, 1 <= budget <= number of candidates.
    candidates : int64[M], optional
        Sorted item indices allowed to be selected; all items when None.
    tiebreak_rng : Generator, optional
        When given, equal scores are ordered by a random permutation drawn from it
        instead of by index.

    Returns
    -------
    int64[budget] indices into ``scores``.
    """
    values = scores if candidates is None else scores[candidates]
    n = values.shape[0]
    if not 1 <= budget <= n:
        raise InvalidInput(f"budget {budget} must be between 1 and {n} (selectable items)",
                           field="budget")
    if np.isnan(values).any():
        raise InvalidInput("strategy produced NaN scores; check the inputs", field="inputs")
    rank = priority(n, tiebreak_rng)
    if budget < n:
        part = np.argpartition(values, n - budget)[n - budget:]
        threshold = values[part].min()
        above = np.flatnonzero(values > threshold)
        ties = np.flatnonzero(values == threshold)
        ties = ties[np.argsort(rank[ties], kind="stable")[: budget - above.size]]
        chosen = np.concatenate([above, ties])
    else:
        chosen = np.arange(n)
    order = np.lexsort((rank[chosen], -values[chosen]))
    picked = chosen[order].astype(np.int64)
    return picked if candidates is None else np.asarray(candidates, dtype=np.int64)[picked]
