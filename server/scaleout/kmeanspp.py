"""Distributed k-means++ seeding of BADGE, drawing from the same uniforms as one machine.

The RNG protocol: the request's generator yields one uniform u per pick after the
first, exactly as ``badge_kmeanspp`` consumes it, and u is mapped through the
cumulative D^2 of the candidates *in global item order* — the single-machine
inverse-CDF draw. Shard boundaries only split that cumulative sum: each shard
reports the D^2 sum of each of its runs, the driver walks the runs in item order
to the one where u * total falls, and that shard finds the item inside the run.
Two round trips per pick: a broadcast step that returns O(runs) sums, and a
draw on one shard that returns the pick's O(d + C) factors.

The first pick (argmax |g|, ties to the lower id) and every D^2 are computed by
the single-machine kernels on the same rows, so they are bit-identical. Only the
order in which the cumulative sum is rounded differs (per run, then across runs,
instead of one running sum of normalized weights), so a pick can differ from
the single-machine one only when u lies within a few units of float64 rounding
(~N * 2^-53 relative) of a step of the CDF.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from assay.kernels import dispatch

from .kcenter import best
from .layout import Session


@dataclass
class DistributedBadge:
    """Picks of the distributed k-means++ seeding (same fields as ``BadgeResult``)."""

    indices: np.ndarray
    distances: np.ndarray
    backend: str


def _draw(session: Session, sums: list[np.ndarray], u: float) -> tuple | None:
    """The pick for uniform ``u`` given every run's D^2 sum; None when all are zero."""
    run_sums = np.array([sums[k][i] for k, i in session.runs], dtype=np.float64)
    cum = np.cumsum(run_sums)
    total = float(cum[-1]) if cum.size else 0.0
    if not total > 0.0:
        return None
    target = u * total
    positive = np.flatnonzero(run_sums > 0.0)
    r = int(np.searchsorted(cum, target, side="left"))
    # A zero-sum run cannot hold the pick; past the end (rounding) means the last positive one.
    r = int(positive[min(np.searchsorted(positive, r), positive.size - 1)])
    residual = target - (cum[r] - run_sums[r])
    k, i = session.runs[r]
    return session.group.call(k, "bd_draw", session.sid, i, residual)


def kmeanspp(session: Session, budget: int, *, rng: np.random.Generator,
             check_cancelled: Callable[[], None] = lambda: None) -> DistributedBadge:
    """BADGE's k-means++ seeding over a sharded pool's candidates.

    Parameters
    ----------
    session : an open select on a pool with ``probs`` (or ``samples``) and ``embeddings``.
    budget : picks, 1 <= budget <= candidates.
    rng : one uniform per pick after the first (the single-machine protocol).
    """
    group, sid = session.group, session.sid
    g, gid, hz, qz = best(group.map("bd_start", sid))
    gz = g
    picks = np.empty(budget, dtype=np.int64)
    dists = np.empty(budget, dtype=np.float64)
    picks[0], dists[0] = gid, np.sqrt(max(g, 0.0))
    for s in range(1, budget):
        check_cancelled()
        sums = group.map("bd_step", sid, hz, qz, gz, int(gid))
        row = _draw(session, sums, float(rng.random()))
        if row is None:  # every remaining candidate coincides with a pick
            free = [f for f in group.map("bd_first_unpicked", sid) if f >= 0]
            first = min(free)
            row = group.call(session.layout.owner(first), "bd_row", sid, first)
        gid, hz, qz, gz, d2 = row
        picks[s], dists[s] = gid, np.sqrt(max(d2, 0.0))
    return DistributedBadge(picks, dists, dispatch.NUMBA_CPU)
