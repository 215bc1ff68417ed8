"""Composable coresets: k-center greedy in two rounds instead of b.

Round one: every shard runs the single-machine k-center greedy on its own
candidates (labeled centres included) and sends its b picks. Round two: the
driver runs k-center greedy on the union of the K * b picks. Indyk et al. (2014)
and Mirrokni & Zadimoghaddam (2015) show such a union is a composable coreset:
the result covers the pool within a constant factor of the greedy radius
(greedy itself is a 2-approximation). It trades that exactness for two round
trips; a third, optional one measures the true covering radius of the picks
over the whole pool, so it can be compared with the exact mode's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from assay.kernels import dispatch
from assay.kernels.kcenter import kcenter_greedy

from .kcenter import covering_radius
from .layout import Session


@dataclass
class ComposableKCenter:
    """Picks of the two-round k-center; ``radius`` is over the whole pool."""

    indices: np.ndarray
    distances: np.ndarray
    radius: float
    union_size: int
    backend: str


def composable_kcenter(session: Session, budget: int, *, labeled: np.ndarray | None,
                       seed: int, measure_radius: bool = True,
                       backend: str = dispatch.AUTO) -> ComposableKCenter:
    """Two-round k-center greedy over a sharded pool.

    Shard k seeds its own first centre (when nothing is labeled) from
    ``[seed, 2, k]``, the union round from ``[seed, 3]``, so a request replays.
    """
    centres = labeled if labeled is not None and labeled.shape[0] > 0 else None
    answers = session.group.map("kc_local", per_shard=[
        (session.sid, budget, centres, [seed, 2, k], backend) for k in range(len(session.group))])
    gids = np.concatenate([a[0] for a in answers])
    vecs = np.concatenate([a[1] for a in answers])
    order = np.argsort(gids, kind="stable")
    gids, vecs = gids[order], vecs[order]
    result = kcenter_greedy(vecs, budget, labeled=centres, rng=np.random.default_rng([seed, 3]),
                            backend=backend)
    radius = float("nan")
    if measure_radius:
        chosen = vecs[result.indices]
        allc = chosen if centres is None else np.concatenate(
            [np.asarray(centres, dtype=chosen.dtype), chosen])
        radius = covering_radius(session, allc, backend)
    return ComposableKCenter(gids[result.indices], result.distances, radius, int(gids.size),
                             result.backend)
