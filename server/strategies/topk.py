"""The one top-b helper every score strategy goes through.

Sharing it means tie order is the same everywhere (small-text's ``argselect``):
higher score first; equal scores by lower index, or by a seeded random priority
when the caller asked for randomness. It is O(N) plus O(b log b): a partition
finds the b-th value, then only the chosen items are sorted.
"""

from __future__ import annotations

import numpy as np

from assay.vocab.errors import InvalidInput


def argselect(
    scores: np.ndarray,
    budget: int,
    candidates: np.ndarray | None = None,
    tiebreak_rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Indices of the ``budget`` highest scores, best first.

    Parameters
    ----------
    scores : float[N]
        Per-item scores; NaN is rejected (it has no order).
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
    priority = np.arange(n) if tiebreak_rng is None else tiebreak_rng.permutation(n)
    if budget < n:
        part = np.argpartition(values, n - budget)[n - budget:]
        threshold = values[part].min()
        above = np.flatnonzero(values > threshold)
        ties = np.flatnonzero(values == threshold)
        ties = ties[np.argsort(priority[ties], kind="stable")[: budget - above.size]]
        chosen = np.concatenate([above, ties])
    else:
        chosen = np.arange(n)
    order = np.lexsort((priority[chosen], -values[chosen]))
    picked = chosen[order].astype(np.int64)
    return picked if candidates is None else np.asarray(candidates, dtype=np.int64)[picked]
