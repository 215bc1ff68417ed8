"""Sharded score strategies: per-shard scores and top-b, one merge on the driver.

A per-item score (entropy, margin, BALD, ...) of an item depends on that item's
rows alone, so each shard scores its own candidates and sends back only its b
best; the driver merges them under the single-machine order of ``argselect``:
higher score first, equal scores by lower item id, or, when the request gave a
seed, by the same seeded permutation of candidate positions. For that seeded
case a shard sends every candidate tied with its b-th best too, since any of
them may win a random tie-break.
"""

from __future__ import annotations

import numpy as np

from .layout import Session

#: Score strategies whose score of an item reads only that item's rows: these shard
#: exactly. (information_density and mal normalize over the whole pool; random is a
#: batch draw.)
ROW_LOCAL = frozenset({
    "least_confident", "margin", "entropy", "vote_entropy", "consensus_entropy",
    "kl_disagreement", "bald", "variation_ratio", "mean_std", "egl", "loss_prediction",
    "discriminator", "label_dispersion", "precomputed",
})


def top_b(session: Session, strategy: str, params: dict, budget: int,
          tiebreak_rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray]:
    """The ``budget`` best candidates of a sharded pool by a row-local score strategy.

    Returns (global item ids best first, their scores), equal to ``argselect``
    over the whole pool's scores.
    """
    answers = session.group.map("top", session.sid, strategy, params, budget,
                                tiebreak_rng is not None)
    starts = np.cumsum(session.run_counts) - session.run_counts
    run_start = {run: int(s) for run, s in zip(session.runs, starts, strict=True)}
    scores, gids, positions = [], [], []
    for k, (values, ids, local) in enumerate(answers):
        bounds = np.concatenate([[0], np.cumsum(session.counts[k])])
        seg = np.searchsorted(bounds, local, side="right") - 1
        offset = local - bounds[seg]
        positions.append(np.array([run_start[(k, int(i))] for i in seg], dtype=np.int64)
                         + offset)
        scores.append(values)
        gids.append(ids)
    scores, gids, positions = (np.concatenate(a) for a in (scores, gids, positions))
    priority = positions if tiebreak_rng is None else tiebreak_rng.permutation(
        session.total)[positions]
    order = np.lexsort((priority, -scores))[:budget]
    return gids[order].astype(np.int64), scores[order]
