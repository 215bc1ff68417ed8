"""Acquisition over a sharded pool: the same answer as ``selection.select`` on the same
pool held by one machine, computed where the rows live.

Row-local score strategies rank each shard's items and merge the top ``budget``;
``coreset`` runs exact k-center greedy (one round trip per pick) or the
two-round composable variant; ``badge`` runs k-means++ over the shards.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from assay.kernels import dispatch
from assay.vocab import roles
from assay.vocab.errors import AssayError, FailedPrecondition, InvalidInput
from assay.vocab.ties import tiebreak_generator

from ..pools.store import ShardedPool
from ..scaleout.backend import ShardedBackend
from ..scaleout.coresets import composable_kcenter
from ..scaleout.kcenter import kcenter
from ..scaleout.kmeanspp import kmeanspp
from ..scaleout.topb import ROW_LOCAL, top_b
from ..strategies import registry
from . import sharded_large_batch
from .selection import SelectResult, candidate_indices, qualify

#: Batch strategies that run sharded, besides the row-local score strategies.
SHARDED_BATCH = ("coreset", "badge", "cluster_margin", "seals")
#: Values of the sharded-only ``mode`` parameter of ``coreset``.
MODES = ("exact", "composable")


def select(backend: ShardedBackend, pool: ShardedPool, strategy_name: str, budget: int,
           params: dict[str, Any] | None = None, *, seed: int | None = None,
           exclude: np.ndarray | None = None,
           check_cancelled: Callable[[], None] = lambda: None) -> SelectResult:
    """Run one acquisition on a sharded pool (its labeled items are never picked).

    ``coreset`` takes one more parameter here, ``mode``: ``exact`` (default; b
    round trips) or ``composable`` (two rounds, approximate).
    """
    strategy = registry.get(strategy_name)
    given = dict(params or {})
    mode = given.pop("mode", "exact") if strategy.name == "coreset" else "exact"
    if mode not in MODES:
        raise InvalidInput(f"params.mode must be one of {', '.join(MODES)}; got {mode!r}",
                           field="params.mode")
    resolved = registry.resolve_params(strategy, given)
    if resolved["prefilter"]:
        raise InvalidInput("params.prefilter is not available on sharded pools yet",
                           field="params.prefilter")
    if strategy.name not in SHARDED_BATCH and not (
            strategy.kind == "score" and strategy.name in ROW_LOCAL):
        allowed = ", ".join(sorted((*SHARDED_BATCH, *ROW_LOCAL)))
        raise FailedPrecondition(f"strategy {strategy.name!r} does not run on sharded pools; "
                                 f"these do: {allowed}", field="strategy",
                                 reason="NOT_SHARDABLE")
    info = pool.info
    have = {a.name for a in info.arrays} | (
        {"probs"} if any(a.name == "samples" for a in info.arrays) else set())
    for role in strategy.required:
        if role not in have:
            raise InvalidInput(f"strategy {strategy.name!r} needs input {role!r} "
                               f"{roles.role(role).shape}", field=f"inputs.{role}",
                               reason="MISSING_INPUT")
    if budget <= 0:
        raise InvalidInput(f"budget must be >= 1, got {budget}", field="budget")
    labeled = pool.labeled
    excl = np.asarray(exclude if exclude is not None else [], dtype=np.int64)
    candidate_indices(info.item_count, excl)  # the range check, worded as for any pool
    excl = np.union1d(excl, labeled).astype(np.int64)
    seed_given = seed is not None
    seed = int(seed) if seed_given else secrets.randbits(63)
    rng = np.random.default_rng(seed)
    tiebreak = tiebreak_generator(seed) if seed_given else None
    started = time.perf_counter()
    metrics: dict[str, float] = {"shards": float(info.shards)}
    try:
        with backend.session(pool, excl) as session:
            if budget > session.total:
                n = info.item_count
                raise InvalidInput(f"budget {budget} exceeds the {session.total} selectable items "
                                   f"({n} items, {n - session.total} labeled or excluded)",
                                   field="budget")
            check_cancelled()
            scores = None
            ran_on = "numpy"
            centres = (backend.gather(pool, labeled, "embeddings")
                       if strategy.name == "coreset" and labeled.size else None)
            if strategy.name == "coreset" and mode == "exact":
                r = kcenter(session, budget, labeled=centres, rng=rng,
                            check_cancelled=check_cancelled, backend=resolved["backend"])
                indices, scores, ran_on = r.indices, r.distances, r.backend
                metrics["kcenter_radius"] = r.radius
                metrics["round_trips"] = float(budget + 1)
            elif strategy.name == "coreset":
                r = composable_kcenter(session, budget, labeled=centres, seed=seed,
                                       backend=resolved["backend"])
                indices, scores, ran_on = r.indices, r.distances, r.backend
                metrics["kcenter_radius"] = r.radius
                metrics["union_size"] = float(r.union_size)
                metrics["round_trips"] = 3.0
            elif strategy.name == "badge":
                if resolved["backend"] not in (dispatch.AUTO, dispatch.NUMBA_CPU):
                    raise FailedPrecondition("sharded BADGE runs on numba-cpu",
                                             field="params.backend")
                r = kmeanspp(session, budget, rng=rng, check_cancelled=check_cancelled)
                indices, scores, ran_on = r.indices, r.distances, r.backend
            elif strategy.name == "cluster_margin":
                r = sharded_large_batch.cluster_margin(
                    backend, pool, excl, budget, resolved, rng=rng, tiebreak=tiebreak,
                    metrics=metrics, check_cancelled=check_cancelled)
                indices, scores = r.indices, r.scores
            elif strategy.name == "seals":
                r = sharded_large_batch.seals(backend, pool, excl, budget, resolved,
                                              tiebreak=tiebreak, metrics=metrics,
                                              check_cancelled=check_cancelled)
                indices, scores = r.indices, r.scores
            else:
                indices, scores = top_b(session, strategy.name, given, budget, tiebreak)
    except AssayError as error:
        qualify(error, strategy)
        raise
    check_cancelled()
    return SelectResult(indices=np.asarray(indices, dtype=np.int64),
                        scores=np.asarray(scores, dtype=np.float64), strategy=strategy.name,
                        seed=seed, backend=ran_on if backend.local_shards else f"ray:{ran_on}",
                        compute_seconds=time.perf_counter() - started,
                        metrics=metrics)
