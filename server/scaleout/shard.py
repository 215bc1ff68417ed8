"""One shard of a pool: its rows on its own disk, and the per-shard half of every
distributed algorithm.

``Shard`` is a plain class, free of Ray: ``cluster`` wraps it in a Ray actor
(restarted from its persisted segments when its process dies), and the same
class runs in-process for the single-process baseline of the benchmark.

A select opens a *session*: the shard's candidate rows (its rows minus the
excluded ones), their global item ids, and where each segment's candidates
start. Sessions are what make a step cheap to call: the driver sends only a
centre vector and gets back a (value, global id, vector) triple, O(d) bytes each
way. The per-shard halves call the same compiled kernels as a single machine
(``make_stepper``'s k-center stepper, pruned on the CPU as in ``kcenter_greedy``;
``CpuBadge`` steps; FAISS ``knn``; ``kcenter_greedy``), so every distance is
computed exactly as the single-machine strategy computes it.
"""

from __future__ import annotations

import os
import shutil
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from assay.kernels import dispatch
from assay.kernels.badge import CpuBadge, gradient_factors
from assay.kernels.bits import compute_dtype, rows_compute, storage
from assay.kernels.kcenter import kcenter_greedy, make_stepper, start_stepper
from assay.kernels.knn import knn
from assay.vocab.errors import InvalidInput

from ..strategies import registry
from ..strategies.registry import INPUT_ROLES, Context
from . import segments

#: A segment as the driver names it: (sequence number, first global id, rows).
Segment = tuple[int, int, int]
#: Sessions a shard keeps; older ones (a driver that died mid-select) are dropped.
MAX_SESSIONS = 8


@dataclass
class Session:
    """A select in progress on this shard."""

    arrays: dict[str, np.ndarray]
    rows: np.ndarray  # int64[M] local candidate rows, sorted
    gids: np.ndarray  # int64[M] their global item ids (increasing)
    bounds: np.ndarray  # int64[R + 1] candidate positions where each segment starts
    state: dict[str, Any] = field(default_factory=dict)


def _local_candidates(segs: list[Segment], exclude: np.ndarray,
                      restrict: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate rows, their global ids and per-segment bounds for this shard."""
    rows, gids, bounds = [], [], [0]
    local = 0
    for _, first, count in segs:
        g = np.arange(first, first + count, dtype=np.int64)
        keep = np.ones(count, dtype=bool)
        if exclude.size:
            hit = exclude[(exclude >= first) & (exclude < first + count)]
            keep[hit - first] = False
        if restrict is not None:
            only = np.zeros(count, dtype=bool)
            hit = restrict[(restrict >= first) & (restrict < first + count)]
            only[hit - first] = True
            keep &= only
        pos = np.flatnonzero(keep)
        rows.append(pos + local)
        gids.append(g[pos])
        bounds.append(bounds[-1] + pos.size)
        local += count
    return _cat(rows), _cat(gids), np.asarray(bounds, np.int64)


def _cat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts).astype(np.int64) if parts else np.empty(0, dtype=np.int64)


class Shard:
    """Holds one shard of one pool and computes on it.

    Parameters
    ----------
    root : str
        Directory of this shard's segments (on the node the actor runs on).
    threads : int
        Numba threads for the kernels (0: Numba's default, one per core).
    """

    def __init__(self, root: str, threads: int = 0):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        if threads > 0:
            import numba

            numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        self._opened: tuple[tuple[int, ...], dict[str, np.ndarray]] | None = None
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    # -- storage ---------------------------------------------------------------------

    def pid(self) -> int:
        """The process id (tests kill it to exercise restarts)."""
        return os.getpid()

    def write(self, seq: int, arrays: dict[str, np.ndarray]) -> int:
        """Persist this shard's slice of append ``seq``; returns its bytes."""
        return segments.write_segment(self.root, seq, arrays)

    def sweep(self, keep: list[int]) -> None:
        """Drop segments the driver did not commit (a failed append's slices)."""
        segments.sweep(self.root, set(keep))

    def drop(self) -> None:
        """Delete every segment (the pool was deleted)."""
        self._opened = None
        self._sessions.clear()
        shutil.rmtree(self.root, ignore_errors=True)

    def _arrays(self, segs: list[Segment], dtypes: dict[str, str]) -> dict[str, np.ndarray]:
        """The shard's arrays at the driver's version: its segments concatenated."""
        key = tuple(s[0] for s in segs)
        if self._opened is not None and self._opened[0] == key:
            return self._opened[1]
        parts = [segments.read_segment(self.root, seq, dtypes) for seq, _, _ in segs]
        arrays = {}
        for name in dtypes:
            axis = INPUT_ROLES[name][1]
            pieces = [p[name] for p in parts]
            arrays[name] = pieces[0] if len(pieces) == 1 else np.concatenate(pieces, axis=axis)
        self._opened = (key, arrays)
        return arrays

    def rows(self, segs: list[Segment], dtypes: dict[str, str], gids: np.ndarray,
             names: list[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The rows of the given global ids that this shard holds (labeled sets)."""
        arrays = self._arrays(segs, dtypes)
        local, owned = [], []
        offset = 0
        for _, first, count in segs:
            hit = gids[(gids >= first) & (gids < first + count)]
            local.append(hit - first + offset)
            owned.append(hit)
            offset += count
        rows = np.concatenate(local) if local else np.empty(0, np.int64)
        out = {}
        for name in names:
            axis = INPUT_ROLES[name][1]
            out[name] = np.take(arrays[name], rows, axis=axis)
        return (np.concatenate(owned) if owned else np.empty(0, np.int64)), out

    # -- sessions --------------------------------------------------------------------

    def begin(self, sid: str, segs: list[Segment], dtypes: dict[str, str],
              exclude: np.ndarray, restrict: np.ndarray | None = None) -> np.ndarray:
        """Open a select: returns the number of candidates in each segment."""
        arrays = self._arrays(segs, dtypes)
        rows, gids, bounds = _local_candidates(segs, np.asarray(exclude, np.int64),
                                               None if restrict is None
                                               else np.asarray(restrict, np.int64))
        self._sessions[sid] = Session(arrays, rows, gids, bounds)
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        return np.diff(bounds)

    def end(self, sid: str) -> None:
        self._sessions.pop(sid, None)

    def _session(self, sid: str) -> Session:
        try:
            return self._sessions[sid]
        except KeyError:
            # The actor restarted (or the session was evicted): the driver must start over.
            raise LookupError(f"select session {sid} is gone from this shard") from None

    # -- k-center --------------------------------------------------------------------

    def kc_start(self, sid: str, centres: np.ndarray | None, backend: str = dispatch.AUTO,
                 budget: int = 0) -> tuple[float, int, np.ndarray | None, str]:
        """Running minimum against the labeled centres (or +inf) in the stepper
        ``kcenter_greedy`` would use here, sized for ``budget`` steps; local (max, id,
        vector)."""
        s = self._session(sid)
        x = s.arrays["embeddings"]
        initial = 0 if centres is None else centres.shape[0]
        stepper = make_stepper(x, s.rows, s.rows.size == x.shape[0], initial=initial,
                               budget=budget, backend=backend)
        name = dispatch.report_name(stepper.name)
        s.state["stepper"] = stepper
        if s.rows.size == 0:
            return -np.inf, -1, None, name
        if initial == 0:
            return np.inf, -1, None, name
        top, pos, by_faiss = start_stepper(stepper, x, s.rows, centres)
        return (*self._kc_best(s, top, pos), name + ("+faiss-cpu" if by_faiss else ""))

    def _kc_best(self, s: Session, top: float, pos: int) -> tuple[float, int, np.ndarray | None]:
        if pos < 0:
            return -np.inf, -1, None
        return top, int(s.gids[pos]), rows_compute(s.arrays["embeddings"], s.rows[pos])

    def pick(self, sid: str, segment: int, offset: int) -> tuple[int, np.ndarray]:
        """The ``offset``-th candidate of a segment: a seeded-random first centre."""
        s = self._session(sid)
        pos = int(s.bounds[segment] + offset)
        return int(s.gids[pos]), rows_compute(s.arrays["embeddings"], s.rows[pos])

    def kc_step(self, sid: str, centre: np.ndarray,
                chosen: int) -> tuple[float, int, np.ndarray | None]:
        """Mark the newest pick if it is ours, fold its distance in; local (max, id, vector)."""
        s = self._session(sid)
        stepper = s.state["stepper"]
        if s.rows.size == 0:
            return -np.inf, -1, None
        pos = int(np.searchsorted(s.gids, chosen))
        if pos < s.gids.size and s.gids[pos] == chosen:
            stepper.mark(pos)
        # A writable copy: the same kernel signature as ``kcenter_greedy``'s centres, so a
        # worker compiles the step once for both modes.
        top, pos = stepper.step(np.array(centre))
        return self._kc_best(s, top, pos)

    def kc_local(self, sid: str, budget: int, centres: np.ndarray | None, seed: list[int],
                 backend: str = dispatch.AUTO) -> tuple[np.ndarray, np.ndarray]:
        """Round one of a composable coreset: k-center greedy on this shard alone."""
        s = self._session(sid)
        b = min(budget, s.rows.size)
        x = s.arrays["embeddings"]
        if b == 0:
            return np.empty(0, np.int64), np.empty((0, x.shape[1]), compute_dtype(x))
        result = kcenter_greedy(x, b, labeled=centres, candidates=s.rows,
                                rng=np.random.default_rng(seed), backend=backend)
        gids = s.gids[np.searchsorted(s.rows, result.indices)]
        return gids, rows_compute(x, result.indices)

    # -- k-means++ (BADGE) -----------------------------------------------------------

    def bd_start(self, sid: str) -> tuple[float, int, np.ndarray | None, np.ndarray | None]:
        """Gradient norms; the local (max |g|^2, id, h, q) of the first pick."""
        s = self._session(sid)
        h = s.arrays["embeddings"]
        p = s.arrays["probs"] if "probs" in s.arrays else np.asarray(
            s.arrays["samples"], dtype=np.float64).mean(axis=0)
        view, kind = storage(h)
        q = gradient_factors(p, s.rows, compute_dtype(h))
        qnorm = (q.astype(np.float64) ** 2).sum(axis=1)
        runner = CpuBadge(view, kind, s.rows, s.rows.size == h.shape[0], q)
        s.state.update(badge=runner, q=q, gnorm=runner.norms(qnorm),
                       picked=np.zeros(s.rows.size, dtype=bool))
        if s.rows.size == 0:
            return -np.inf, -1, None, None
        pos = int(np.argmax(s.state["gnorm"]))
        return float(s.state["gnorm"][pos]), int(s.gids[pos]), rows_compute(h, s.rows[pos]), q[pos]

    def bd_mark(self, s: Session, chosen: int) -> None:
        pos = int(np.searchsorted(s.gids, chosen))
        if pos < s.gids.size and s.gids[pos] == chosen:
            s.state["badge"].mark(pos)
            s.state["picked"][pos] = True

    def bd_step(self, sid: str, hz: np.ndarray, qz: np.ndarray, gz: float,
                chosen: int) -> np.ndarray:
        """Mark the newest pick, fold its distance into D^2; the D^2 sum of each segment."""
        s = self._session(sid)
        if s.rows.size == 0:
            return np.zeros(s.bounds.size - 1)
        self.bd_mark(s, chosen)
        d2 = s.state["badge"].step(hz, qz, gz)
        return np.array([d2[lo:hi].sum() for lo, hi in zip(s.bounds[:-1], s.bounds[1:],
                                                             strict=True)])

    def bd_finish(self, sid: str, chosen: int) -> None:
        """Mark the last pick (it has no step after it)."""
        self.bd_mark(self._session(sid), chosen)

    def bd_draw(self, sid: str, segment: int, target: float,
                ) -> tuple[int, np.ndarray, np.ndarray, float, float]:
        """Inverse-CDF draw inside one segment: the first candidate whose cumulative D^2
        (from the segment's start) reaches ``target``; a zero weight there (rounding)
        moves to the nearest positive weight, as the single-machine ``draw`` does."""
        s = self._session(sid)
        lo, hi = int(s.bounds[segment]), int(s.bounds[segment + 1])
        d2 = s.state["badge"].d2[lo:hi]
        pos = int(np.searchsorted(np.cumsum(d2), target, side="left"))
        if pos >= d2.size or d2[pos] == 0.0:
            positive = np.flatnonzero(d2 > 0.0)
            pos = int(positive[min(np.searchsorted(positive, pos), positive.size - 1)])
        return self._bd_row(s, lo + pos)

    def bd_first_unpicked(self, sid: str) -> int:
        """The lowest unpicked candidate's global id (-1 if none): the pick once every
        remaining D is zero."""
        s = self._session(sid)
        free = np.flatnonzero(~s.state["picked"])
        return int(s.gids[free[0]]) if free.size else -1

    def bd_row(self, sid: str, gid: int) -> tuple[int, np.ndarray, np.ndarray, float, float]:
        s = self._session(sid)
        return self._bd_row(s, int(np.searchsorted(s.gids, gid)))

    def _bd_row(self, s: Session, pos: int) -> tuple[int, np.ndarray, np.ndarray, float, float]:
        h = s.arrays["embeddings"]
        return (int(s.gids[pos]), rows_compute(h, s.rows[pos]), s.state["q"][pos],
                float(s.state["gnorm"][pos]), float(s.state["badge"].d2[pos]))

    # -- scores and KNN --------------------------------------------------------------

    def top(self, sid: str, strategy: str, params: dict, budget: int,
            keep_ties: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """This shard's best candidates by a per-item score strategy.

        Returns (scores, global ids, candidate positions) of the ``budget`` best by
        (score descending, id ascending); with ``keep_ties`` every candidate tied
        with the ``budget``-th is returned too, so a driver-side random tie-break
        still sees them all.
        """
        s = self._session(sid)
        strat = registry.get(strategy)
        arrays = dict(s.arrays)
        if "probs" not in arrays and "samples" in arrays:
            arrays["probs"] = np.asarray(arrays["samples"], dtype=np.float64).mean(axis=0)
        ctx = Context(candidates=s.rows, rng=np.random.default_rng(0))
        values = np.asarray(strat.fn(arrays, registry.resolve_params(strat, params), ctx),
                            dtype=np.float64)[s.rows]
        if np.isnan(values).any():
            raise InvalidInput("strategy produced NaN scores; check the inputs", field="inputs")
        if values.size == 0:
            empty = np.empty(0, np.int64)
            return np.empty(0), empty, empty
        order = np.lexsort((np.arange(values.size), -values))
        cut = order[:budget]
        if keep_ties and budget < values.size:
            cut = np.flatnonzero(values >= values[order[budget - 1]])
        return values[cut], s.gids[cut], cut.astype(np.int64)

    def knn(self, sid: str, queries: np.ndarray, k: int,
            metric: str = "l2") -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest of this shard's candidates to every query (FAISS, exact)."""
        s = self._session(sid)
        q = queries.shape[0]
        if s.rows.size == 0:
            fill = np.inf if metric == "l2" else -np.inf
            return np.full((q, k), fill, np.float32), np.full((q, k), -1, np.int64)
        base = np.take(s.arrays["embeddings"], s.rows, axis=0)
        # A private copy: ``knn`` normalizes cosine queries in place, and arrays that
        # arrive through Ray are read-only.
        values, idx, _ = knn(np.array(queries, dtype=np.float32), base, min(k, s.rows.size),
                             metric=metric)
        gids = np.where(idx >= 0, s.gids[np.maximum(idx, 0)], -1)
        return values, gids


class Worker:
    """The body of one shard actor: shard k of *every* pool lives in worker k.

    One long-lived process per worker slot keeps its compiled kernels warm across
    pools (a fresh process compiles each kernel again) and gives Ray one actor per
    node slot to place and restart. Shards are opened lazily from their
    directories, so a restarted worker serves every pool it held; only the select
    sessions in flight are lost.
    """

    def __init__(self, threads: int = 0):
        if threads > 0:
            import numba

            numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        self._shards: dict[str, Shard] = {}

    def pid(self) -> int:
        """The process id (tests kill it to exercise restarts)."""
        return os.getpid()

    def run(self, uid: str, root: str, method: str, *args: Any) -> Any:
        """Call ``method`` on this worker's shard of pool ``uid`` (stored under ``root``)."""
        shard = self._shards.get(uid)
        if shard is None:
            shard = self._shards[uid] = Shard(root)
        try:
            return getattr(shard, method)(*args)
        finally:
            if method == "drop":
                self._shards.pop(uid, None)
