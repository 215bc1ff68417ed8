"""Exact distributed k-center greedy: b round trips of O(d) bytes.

Per step, every shard folds the newest centre into its running minimum with the
single-machine stepper (``assay.kernels.kcenter.make_stepper``: on the CPU the
pruned pass, which skips the rows the triangle inequality proves unaffected) and
answers its local (max Delta, global id, vector); the driver keeps the largest
(ties to the lower global id, as ``np.argmax`` over the whole pool does) and
broadcasts that vector as the next centre. Shards run the same compiled passes on
the same rows, so every Delta is bit-identical to the single-machine one and so
is the selection.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from assay.kernels import dispatch

from .layout import Session


@dataclass
class DistributedKCenter:
    """Picks of the distributed k-center greedy (same fields as ``KCenterResult``)."""

    indices: np.ndarray
    distances: np.ndarray
    radius: float
    backend: str
    step_seconds: np.ndarray  # wall time of each round trip, for the overhead figures


def best(answers: list[tuple]) -> tuple:
    """The shard answer with the largest value; ties to the lower global id."""
    top = (-np.inf, -1, None)
    for answer in answers:
        value, gid = answer[0], answer[1]
        if gid < 0:
            continue
        if top[1] < 0 or value > top[0] or (value == top[0] and gid < top[1]):
            top = answer
    return top


def kcenter(session: Session, budget: int, *, labeled: np.ndarray | None,
            rng: np.random.Generator, check_cancelled: Callable[[], None] = lambda: None,
            backend: str = dispatch.AUTO) -> DistributedKCenter:
    """k-center greedy over a sharded pool's candidates, identical to ``kcenter_greedy``.

    Parameters
    ----------
    session : an open select on the pool (its candidates are the selectable items).
    budget : picks, 1 <= budget <= candidates.
    labeled : float [L, d], optional — the initial centres (the labeled items).
    rng : draws the first centre when there is no labeled set, exactly as the
        single-machine kernel does: one ``integers(M)`` over the M candidates in
        global order.
    """
    import time

    group, sid = session.group, session.sid
    centres = labeled if labeled is not None and labeled.shape[0] > 0 else None
    answers = group.map("kc_start", sid, centres, backend, budget)
    name = answers[0][3]
    if centres is None:
        k, seg, offset = session.locate(int(rng.integers(session.total)))
        gid, vec = group.call(k, "pick", sid, seg, offset)
        top = np.inf
    else:
        top, gid, vec = best([a[:3] for a in answers])
    picks = np.empty(budget, dtype=np.int64)
    dists = np.empty(budget, dtype=np.float64)
    times = np.empty(budget, dtype=np.float64)
    for s in range(budget):
        check_cancelled()
        picks[s] = gid
        dists[s] = np.sqrt(max(top, 0.0))
        started = time.perf_counter()
        top, gid, vec = best(group.map("kc_step", sid, vec, int(gid)))
        times[s] = time.perf_counter() - started
    radius = float(np.sqrt(max(top, 0.0))) if gid >= 0 else 0.0
    return DistributedKCenter(picks, dists, radius, name, times)


def covering_radius(session: Session, centres: np.ndarray,
                    backend: str = dispatch.AUTO) -> float:
    """Largest distance of any candidate to its nearest centre: one round trip (how
    a composable coreset's picks are scored against the exact ones)."""
    answers = session.group.map("kc_start", session.sid, centres, backend)
    top = max((a[0] for a in answers if a[1] >= 0), default=0.0)
    return float(np.sqrt(max(top, 0.0)))
