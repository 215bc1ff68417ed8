"""Sharded pools: the driver's metadata and the routing of every pool call.

The driver (the gRPC server) keeps what a single-machine pool keeps in SQLite —
ids, item counts, versions, array shapes, labels — in ``scaleout.sqlite`` beside
the pool store, plus which segments each shard holds. That table is the commit
point of an append: every shard first writes and fsyncs its slice, then one
SQLite transaction makes the slices part of the pool, so a failure at any point
leaves the previous pool. The rows themselves never stay on the driver.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from assay.kernels import dispatch
from assay.vocab.dtypes import from_stored, stored_name
from assay.vocab.errors import AlreadyExists, FailedPrecondition, InvalidInput, NotFound

from ..acquisition.selection import SelectResult
from ..scaleout import cluster
from ..scaleout.coresets import composable_kcenter
from ..scaleout.kcenter import kcenter
from ..scaleout.kmeanspp import kmeanspp
from ..scaleout.layout import Layout, Session, split
from ..scaleout.topb import ROW_LOCAL, top_b
from ..strategies import registry
from ..strategies.registry import INPUT_ROLES
from ..strategies.validation import check_consistency, validate_array
from .labels import check_labels
from .store import ArraySpec, PoolInfo, check_pool_id

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sharded_pools (
    pool_id TEXT PRIMARY KEY, uid TEXT NOT NULL, shards INTEGER NOT NULL,
    item_count INTEGER NOT NULL, version INTEGER NOT NULL, create_time REAL NOT NULL,
    update_time REAL NOT NULL, arrays TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sharded_segments (
    pool_id TEXT NOT NULL, seq INTEGER NOT NULL, shard INTEGER NOT NULL,
    first INTEGER NOT NULL, count INTEGER NOT NULL, size_bytes INTEGER NOT NULL,
    PRIMARY KEY (pool_id, seq, shard));
CREATE TABLE IF NOT EXISTS sharded_labels (
    pool_id TEXT NOT NULL, item INTEGER NOT NULL, label INTEGER NOT NULL,
    PRIMARY KEY (pool_id, item));
"""

#: Batch strategies that run sharded, besides the row-local score strategies.
SHARDED_BATCH = ("coreset", "badge")
#: Values of the sharded-only ``mode`` parameter of ``coreset``.
MODES = ("exact", "composable")


class ShardedPools:
    """Sharded pools over one Ray cluster (or in-process shards, ``local_shards``).

    Parameters
    ----------
    data_dir : the server's data directory (metadata lives here).
    shard_dir : where shard actors persist their segments; on a cluster, a path
        every node has (a local disk or volume), on one machine under data_dir.
    threads : Numba threads per shard actor (0: one per core of its node).
    actor_cpus : CPUs Ray reserves per shard actor.
    local_shards : run shards in-process instead of as Ray actors (no Ray at all).
    start_timeout : seconds to wait for shard actors to be placed before a call that
        needs them fails (RESOURCE_EXHAUSTED) instead of hanging.
    """

    def __init__(self, data_dir: str, shard_dir: str = "", *, threads: int = 0,
                 actor_cpus: float = 1.0, local_shards: bool = False,
                 start_timeout: float = 20.0):
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.shard_dir = Path(shard_dir) if shard_dir else self.data_dir / "shards"
        self.threads, self.actor_cpus, self.local_shards = threads, actor_cpus, local_shards
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.data_dir / "scaleout.sqlite", check_same_thread=False,
                                   isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._groups: dict[str, Any] = {}
        self._workers = cluster.Workers(threads=threads, actor_cpus=actor_cpus,
                                        start_timeout=start_timeout)

    def close(self) -> None:
        with self._lock:
            self._groups.clear()
            self._db.close()

    # -- metadata --------------------------------------------------------------------

    def owns(self, pool_id: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM sharded_pools WHERE pool_id = ?",
                                    (pool_id,)).fetchone() is not None

    def _row(self, pool_id: str) -> tuple:
        row = self._db.execute(
            "SELECT pool_id, uid, shards, item_count, version, create_time, update_time, "
            "arrays FROM sharded_pools WHERE pool_id = ?", (pool_id,)).fetchone()
        if row is None:
            raise NotFound(f"pool {pool_id!r} does not exist; create it with CreatePool",
                           field="pool_id", reason="POOL_NOT_FOUND")
        return row

    @staticmethod
    def _specs(row: tuple) -> tuple[ArraySpec, ...]:
        return tuple(ArraySpec(a["name"], a["dtype"], tuple(a["shape"]))
                     for a in json.loads(row[7]))

    def _info(self, row: tuple) -> PoolInfo:
        pool_id, _, _, count, version, ctime, utime, _ = row
        specs = self._specs(row)
        labeled = self._db.execute("SELECT COUNT(*) FROM sharded_labels WHERE pool_id = ?",
                                   (pool_id,)).fetchone()[0]
        size = self._db.execute("SELECT COALESCE(SUM(size_bytes), 0) FROM sharded_segments "
                                "WHERE pool_id = ?", (pool_id,)).fetchone()[0]
        return PoolInfo(pool_id, count, labeled, version, specs, ctime, utime, size)

    def shards(self, pool_id: str) -> int:
        with self._lock:
            return int(self._row(pool_id)[2])

    def uid(self, pool_id: str) -> str:
        """The identity of the pool now under ``pool_id`` (request ids bind it)."""
        with self._lock:
            return self._row(pool_id)[1]

    def layout(self, pool_id: str) -> Layout:
        with self._lock:
            row = self._row(pool_id)
            segs = [[] for _ in range(row[2])]
            for seq, shard, first, count in self._db.execute(
                    "SELECT seq, shard, first, count FROM sharded_segments WHERE pool_id = ? "
                    "AND count > 0 ORDER BY seq", (pool_id,)):
                segs[shard].append((seq, first, count))
        return Layout(tuple(tuple(s) for s in segs))

    def group(self, pool_id: str):
        """The shard handles of a pool (actors created, or found, on first use).

        Starting actors may wait for Ray to place them (bounded by ``start_timeout``),
        so it happens outside the lock: calls on other pools go on meanwhile.
        """
        with self._lock:
            _, uid, shards = self._row(pool_id)[:3]
            if uid in self._groups:
                return self._groups[uid]
        roots = [str(self.shard_dir / uid / f"shard-{k}") for k in range(shards)]
        group = (cluster.LocalGroup(roots, threads=self.threads) if self.local_shards
                 else cluster.RayGroup(uid, roots, self._workers.first(shards)))
        with self._lock:
            return self._groups.setdefault(uid, group)

    # -- pool methods ----------------------------------------------------------------

    def create_pool(self, pool_id: str, shards: int) -> PoolInfo:
        check_pool_id(pool_id)
        if shards < 1:
            raise InvalidInput(f"shards must be >= 1, got {shards}", field="shards")
        if self.owns(pool_id):
            raise AlreadyExists(f"pool {pool_id!r} already exists", field="pool_id")
        if not self.local_shards:
            # Placed before the pool exists: a cluster without room for
            # its shards fails the create at once, not the first append after minutes.
            self._workers.first(shards)
        now = time.time()
        with self._lock:
            try:
                self._db.execute("INSERT INTO sharded_pools VALUES (?, ?, ?, 0, 0, ?, ?, '[]')",
                                 (pool_id, uuid.uuid4().hex, shards, now, now))
            except sqlite3.IntegrityError:
                raise AlreadyExists(f"pool {pool_id!r} already exists", field="pool_id") from None
            info = self._info(self._row(pool_id))
        self.group(pool_id)
        return info

    def get_pool(self, pool_id: str) -> PoolInfo:
        check_pool_id(pool_id)
        with self._lock:
            return self._info(self._row(pool_id))

    def list_pools(self, after: str = "", limit: int = 100) -> list[PoolInfo]:
        with self._lock:
            rows = self._db.execute(
                "SELECT pool_id, uid, shards, item_count, version, create_time, update_time, "
                "arrays FROM sharded_pools WHERE pool_id > ? ORDER BY pool_id LIMIT ?",
                (after, limit)).fetchall()
            return [self._info(r) for r in rows]

    def delete_pool(self, pool_id: str) -> None:
        check_pool_id(pool_id)
        group = self.group(pool_id)
        with self._lock:
            uid = self._row(pool_id)[1]
            self._db.execute("BEGIN IMMEDIATE")
            for table in ("sharded_pools", "sharded_segments", "sharded_labels"):
                self._db.execute(f"DELETE FROM {table} WHERE pool_id = ?", (pool_id,))
            self._db.execute("COMMIT")
            self._groups.pop(uid, None)
        try:
            group.map("drop")
        finally:
            group.kill()

    def append(self, pool_id: str, specs: list[ArraySpec],
               chunks: Iterable[tuple[int, int, bytes]],
               on_commit: Callable[[PoolInfo, int, int], None] | None = None,
               ) -> tuple[PoolInfo, int, int]:
        """Receive one append, split it over the shards, commit it.

        The append is held in driver memory once while it is split; send a large
        pool in appends of a few GB.
        """
        check_pool_id(pool_id)
        info = self.get_pool(pool_id)
        self._check_specs(info, specs)
        dtypes = [from_stored(s.dtype) for s in specs]
        buffers = [bytearray(int(np.prod(s.shape)) * d.itemsize)
                   for s, d in zip(specs, dtypes, strict=True)]
        received = [0] * len(specs)
        for index, offset, data in chunks:
            if not 0 <= index < len(specs):
                raise InvalidInput(f"chunk.array_index {index} does not name a declared array",
                                   field="chunk.array_index")
            if offset != received[index] or offset + len(data) > len(buffers[index]):
                raise InvalidInput("chunks must arrive in order and fit the declared shape",
                                   field="chunk.offset", reason="OUT_OF_ORDER")
            buffers[index][offset:offset + len(data)] = data
            received[index] += len(data)
        arrays = {}
        for spec, dtype, buf, got in zip(specs, dtypes, buffers, received, strict=True):
            if got != len(buf):
                raise InvalidInput(f"the stream ended after {got} of {len(buf)} bytes of array "
                                   f"{spec.name!r}: nothing was stored", field="chunk.data",
                                   reason="TRUNCATED")
            arrays[spec.name] = np.frombuffer(buf, dtype=dtype).reshape(spec.shape)
            validate_array(spec.name, arrays[spec.name], field=f"array {spec.name!r}")
        added = check_consistency(arrays)
        return self.append_arrays(pool_id, arrays, on_commit, _checked=added)

    def append_arrays(self, pool_id: str, arrays: dict[str, np.ndarray],
                      on_commit: Callable[[PoolInfo, int, int], None] | None = None,
                      _checked: int | None = None) -> tuple[PoolInfo, int, int]:
        """Append validated arrays (the in-process path of benchmarks and tests)."""
        added = _checked if _checked is not None else check_consistency(arrays)
        if _checked is None:
            specs = [ArraySpec(n, stored_name(a.dtype), a.shape)
                     for n, a in arrays.items()]
            self._check_specs(self.get_pool(pool_id), specs)
        group = self.group(pool_id)
        with self._lock:
            row = self._row(pool_id)
            first = int(row[3])
            seq = self._db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM sharded_segments "
                                   "WHERE pool_id = ?", (pool_id,)).fetchone()[0]
        slices = split(added, row[2])
        per_shard = []
        for off, count in slices:
            per_shard.append((seq, {n: np.take(a, np.arange(off, off + count),
                                               axis=INPUT_ROLES[n][1])
                                    for n, a in arrays.items()}))
        sizes = group.map("write", per_shard=per_shard)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if int(self._row(pool_id)[3]) != first:
                    raise FailedPrecondition("another append committed meanwhile; retry",
                                             reason="CONCURRENT_APPEND")
                for k, ((off, count), size) in enumerate(zip(slices, sizes, strict=True)):
                    self._db.execute("INSERT INTO sharded_segments VALUES (?, ?, ?, ?, ?, ?)",
                                     (pool_id, seq, k, first + off, count, size))
                merged = []
                for n, a in arrays.items():
                    shape = list(a.shape)
                    shape[INPUT_ROLES[n][1]] = first + added
                    merged.append({"name": n, "dtype": stored_name(a.dtype), "shape": shape})
                self._db.execute("UPDATE sharded_pools SET item_count = ?, version = version + 1,"
                                 " update_time = ?, arrays = ? WHERE pool_id = ?",
                                 (first + added, time.time(), json.dumps(merged), pool_id))
                info = self._info(self._row(pool_id))
                if on_commit is not None:
                    on_commit(info, first, added)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return info, first, added

    @staticmethod
    def _check_specs(info: PoolInfo, specs: list[ArraySpec]) -> None:
        if not specs:
            raise InvalidInput("the append header declares no arrays", field="header.arrays")
        for spec in specs:
            if spec.name not in INPUT_ROLES or spec.name == "labeled_embeddings":
                raise InvalidInput(f"{spec.name!r} is not a pool array", field="header.arrays")
        if info.arrays:
            have = {a.name: a for a in info.arrays}
            if set(have) != {s.name for s in specs}:
                raise FailedPrecondition(f"appends to pool {info.pool_id!r} must carry the "
                                         f"arrays {sorted(have)}", field="header.arrays",
                                         reason="SCHEMA_MISMATCH")
            for s in specs:
                if have[s.name].dtype != s.dtype or have[s.name].trailing() != s.trailing():
                    raise FailedPrecondition(
                        f"array {s.name!r} must keep dtype {have[s.name].dtype} and shape "
                        f"{list(have[s.name].shape)} apart from its item axis",
                        field="header.arrays", reason="SCHEMA_MISMATCH")

    def label(self, pool_id: str, indices: np.ndarray, labels: np.ndarray,
              on_commit: Callable[[PoolInfo], None] | None = None) -> PoolInfo:
        """Mark items labeled (relabeling replaces); checked before anything is written."""
        indices = np.asarray(indices, dtype=np.int64)
        labels = np.asarray(labels, dtype=np.int64)
        if indices.size == 0 or indices.size != labels.size:
            raise InvalidInput("give one label per index, at least one", field="indices")
        if labels.min() < 0:
            raise InvalidInput("labels must be >= 0 (class ids)", field="labels")
        if np.unique(indices).size != indices.size:
            raise InvalidInput("indices lists an item more than once", field="indices")
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._row(pool_id)
                count = int(row[3])
                if indices.min() < 0 or indices.max() >= count:
                    raise InvalidInput(f"indices must lie in [0, {count})", field="indices")
                check_labels(indices, labels, self._specs(row))
                self._db.executemany("INSERT OR REPLACE INTO sharded_labels VALUES (?, ?, ?)",
                                     ((pool_id, int(i), int(y)) for i, y in zip(
                                         indices, labels, strict=True)))
                self._db.execute("UPDATE sharded_pools SET version = version + 1, "
                                 "update_time = ? WHERE pool_id = ?", (time.time(), pool_id))
                info = self._info(self._row(pool_id))
                if on_commit is not None:
                    on_commit(info)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return info

    def labeled(self, pool_id: str) -> np.ndarray:
        with self._lock:
            return np.array([r[0] for r in self._db.execute(
                "SELECT item FROM sharded_labels WHERE pool_id = ? ORDER BY item", (pool_id,))],
                dtype=np.int64)

    # -- selection -------------------------------------------------------------------

    def session(self, pool_id: str, exclude: np.ndarray,
                restrict: np.ndarray | None = None) -> Session:
        info = self.get_pool(pool_id)
        dtypes = {a.name: a.dtype for a in info.arrays}
        return Session(self.group(pool_id), self.layout(pool_id), dtypes, exclude, restrict)

    def gather(self, pool_id: str, ids: np.ndarray, name: str) -> np.ndarray:
        """Rows of ``ids`` (sorted) from the shards that hold them, in id order."""
        info = self.get_pool(pool_id)
        dtypes = {a.name: a.dtype for a in info.arrays}
        lay, group = self.layout(pool_id), self.group(pool_id)
        answers = group.map("rows", per_shard=[
            (list(lay.segments[k]), dtypes, lay.restrict(ids, k), [name])
            for k in range(lay.shards)])
        got = np.concatenate([a[0] for a in answers])
        rows = np.concatenate([a[1][name] for a in answers], axis=INPUT_ROLES[name][1])
        return np.take(rows, np.argsort(got, kind="stable"), axis=INPUT_ROLES[name][1])

    def select(self, pool_id: str, strategy_name: str, budget: int,
               params: dict[str, Any] | None = None, *, seed: int | None = None,
               exclude: np.ndarray | None = None,
               check_cancelled: Callable[[], None] = lambda: None) -> SelectResult:
        """Run one acquisition on a sharded pool; the same answer as ``acquisition.select``
        on the same pool held by one machine.

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
        info = self.get_pool(pool_id)
        have = {a.name for a in info.arrays} | (
            {"probs"} if any(a.name == "samples" for a in info.arrays) else set())
        for role in strategy.required:
            if role not in have:
                raise InvalidInput(f"strategy {strategy.name!r} needs input {role!r}",
                                   field=f"inputs.{role}", reason="MISSING_INPUT")
        if budget <= 0:
            raise InvalidInput(f"budget must be >= 1, got {budget}", field="budget")
        labeled = self.labeled(pool_id)
        excl = np.asarray(exclude if exclude is not None else [], dtype=np.int64)
        if excl.size and (excl.min() < 0 or excl.max() >= info.item_count):
            raise InvalidInput(f"exclude_indices must lie in [0, {info.item_count})",
                               field="exclude_indices")
        excl = np.union1d(excl, labeled).astype(np.int64)
        seed_given = seed is not None
        seed = int(seed) if seed_given else secrets.randbits(63)
        rng = np.random.default_rng(seed)
        tiebreak = np.random.default_rng([seed, 1]) if seed_given else None
        started = time.perf_counter()
        metrics: dict[str, float] = {"shards": float(self.shards(pool_id))}
        with self.session(pool_id, excl) as session:
            if budget > session.total:
                raise InvalidInput(f"budget {budget} exceeds the {session.total} selectable "
                                   "items", field="budget")
            check_cancelled()
            scores = None
            backend = "numpy"
            centres = (self.gather(pool_id, labeled, "embeddings")
                       if strategy.name == "coreset" and labeled.size else None)
            if strategy.name == "coreset" and mode == "exact":
                r = kcenter(session, budget, labeled=centres, rng=rng,
                            check_cancelled=check_cancelled, backend=resolved["backend"])
                indices, scores, backend = r.indices, r.distances, r.backend
                metrics["kcenter_radius"] = r.radius
                metrics["round_trips"] = float(budget + 1)
            elif strategy.name == "coreset":
                r = composable_kcenter(session, budget, labeled=centres, seed=seed,
                                       backend=resolved["backend"])
                indices, scores, backend = r.indices, r.distances, r.backend
                metrics["kcenter_radius"] = r.radius
                metrics["union_size"] = float(r.union_size)
                metrics["round_trips"] = 3.0
            elif strategy.name == "badge":
                if resolved["backend"] not in (dispatch.AUTO, dispatch.NUMBA_CPU):
                    raise FailedPrecondition("sharded BADGE runs on numba-cpu",
                                             field="params.backend")
                r = kmeanspp(session, budget, rng=rng, check_cancelled=check_cancelled)
                indices, scores, backend = r.indices, r.distances, r.backend
            else:
                indices, scores = top_b(session, strategy.name, given, budget, tiebreak)
        check_cancelled()
        return SelectResult(indices=np.asarray(indices, dtype=np.int64),
                            scores=np.asarray(scores, dtype=np.float64), strategy=strategy.name,
                            seed=seed, backend=f"ray:{backend}" if not self.local_shards
                            else backend, compute_seconds=time.perf_counter() - started,
                            metrics=metrics)
