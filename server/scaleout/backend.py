"""Where a sharded pool's rows live: shard actors on a Ray cluster, or in-process shards.

The pool store keeps a sharded pool's metadata (ids, versions, array shapes,
labels, epochs, request records) in its one SQLite catalogue like any other pool's,
plus which slice of each append every shard holds. This backend only moves rows:
it places a pool's shards, writes each shard's slice of an append, reads rows
back, opens the sessions the distributed algorithms run on, and drops a
deleted pool's shards. Every check and every commit happens in the store, once
for both kinds of pool.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np

from assay.vocab import roles

from ..pools.store import ShardedPool
from . import cluster
from .layout import Layout, Session, split


class ShardedBackend:
    """The shards of every sharded pool (the store's ``ShardRows``).

    Parameters
    ----------
    shard_dir : where shards persist their segments; on a cluster, a path every node
        has (a local disk or volume).
    threads : Numba threads per shard actor (0: one per core of its node).
    actor_cpus : CPUs Ray reserves per shard actor.
    local_shards : run shards in this process instead of as Ray actors (no Ray at all).
    start_timeout : seconds to wait for shard actors to be placed before a call that
        needs them fails (RESOURCE_EXHAUSTED) instead of hanging.
    """

    def __init__(self, shard_dir: str | Path, *, threads: int = 0, actor_cpus: float = 1.0,
                 local_shards: bool = False, start_timeout: float = 20.0):
        self.shard_dir = Path(shard_dir)
        self.threads, self.local_shards = threads, local_shards
        self._lock = threading.Lock()
        self._groups: dict[str, Any] = {}
        self._workers = cluster.Workers(threads=threads, actor_cpus=actor_cpus,
                                        start_timeout=start_timeout)

    def close(self) -> None:
        with self._lock:
            self._groups.clear()

    def sweep(self, live: set[str]) -> None:
        """Remove the rows of pools that no longer exist (deleted while their shards were
        unreachable, or mid-append): every ``<shard_dir>/<uid>`` not in ``live``. On a
        cluster this sees the driver's disk; each node's shard directory is its own."""
        if not self.shard_dir.is_dir():
            return
        for entry in self.shard_dir.iterdir():
            if entry.is_dir() and not entry.is_symlink() and entry.name not in live:
                shutil.rmtree(entry, ignore_errors=True)

    def place(self, shards: int) -> None:
        """Fail now (RESOURCE_EXHAUSTED) when the cluster cannot place ``shards`` actors."""
        if not self.local_shards:
            self._workers.first(shards)

    def group(self, uid: str, shards: int):
        """The shard handles of pool ``uid`` (actors created, or found, on first use).

        Starting actors may wait for Ray to place them (bounded by ``start_timeout``),
        so it happens outside the lock: calls on other pools go on meanwhile.
        """
        with self._lock:
            if uid in self._groups:
                return self._groups[uid]
        roots = [str(self.shard_dir / uid / f"shard-{k}") for k in range(shards)]
        group = (cluster.LocalGroup(roots, threads=self.threads) if self.local_shards
                 else cluster.RayGroup(uid, roots, self._workers.first(shards)))
        with self._lock:
            return self._groups.setdefault(uid, group)

    def write(self, uid: str, shards: int, seq: int, arrays: dict[str, np.ndarray],
              added: int) -> list[tuple[int, int, int]]:
        """Write append ``seq`` (``added`` items) cut into one contiguous slice per shard;
        returns each shard's ``(offset in the append, items, bytes written)``."""
        slices = split(added, shards)
        per_shard = [(seq, {n: np.take(a, np.arange(off, off + count),
                                       axis=roles.item_axis(n))
                            for n, a in arrays.items()}) for off, count in slices]
        sizes = self.group(uid, shards).map("write", per_shard=per_shard)
        return [(off, count, size) for (off, count), size in zip(slices, sizes, strict=True)]

    def drop(self, uid: str, shards: int) -> None:
        """Delete a deleted pool's segments and stop its shards."""
        group = self.group(uid, shards)
        with self._lock:
            self._groups.pop(uid, None)
        try:
            group.map("drop")
        finally:
            group.kill()

    def session(self, pool: ShardedPool, exclude: np.ndarray,
                restrict: np.ndarray | None = None) -> Session:
        """A selection session over the pool's shards, without the ``exclude`` items."""
        dtypes = {a.name: a.dtype for a in pool.info.arrays}
        return Session(self.group(pool.uid, pool.info.shards), Layout(pool.segments), dtypes,
                       exclude, restrict)

    def gather(self, pool: ShardedPool, ids: np.ndarray, name: str) -> np.ndarray:
        """Rows of ``ids`` (sorted) of array ``name``, from the shards that hold them."""
        dtypes = {a.name: a.dtype for a in pool.info.arrays}
        layout = Layout(pool.segments)
        answers = self.group(pool.uid, pool.info.shards).map("rows", per_shard=[
            (list(layout.segments[k]), dtypes, layout.restrict(ids, k), [name])
            for k in range(layout.shards)])
        got = np.concatenate([a[0] for a in answers])
        axis = roles.item_axis(name)
        rows = np.concatenate([a[1][name] for a in answers], axis=axis)
        return np.take(rows, np.argsort(got, kind="stable"), axis=axis)
