"""The pool store: every pool's metadata in one SQLite catalogue, rows as ``.npy``
segments on local disk (or on shards, for a sharded pool).

Why this shape:

* ``.npy`` is memory-mappable and pickle-free; an append stream is written
  straight into its file as chunks arrive (the wire bytes are already
  little-endian, row-major), so receiving and writing overlap and one fsync at
  commit makes it durable. Write-out to disk is started as chunks arrive, and
  their rows are validated on a checker thread while the stream goes on, so
  neither waits for the end of the stream.
* Each append is a new *segment* directory; a pool's array is the concatenation
  of its segments along the item axis. Appending never rewrites old data; the
  first read after appends compacts the segments into one (``compaction``), so a
  pool is read as one memory-mapped file per array, never copied.
* A sharded pool keeps the same metadata here; its appends are received and
  checked the same way (``appends``), then split over its shards (``ShardRows``).
* SQLite is the single commit point. A segment is renamed into place first and
  only becomes part of a pool when the SQLite transaction that references it
  commits, so ``kill -9`` at any moment leaves either the old or the new pool,
  never half of one. Unreferenced directories are swept at start-up.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import sqlite3
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from assay.vocab import roles
from assay.vocab.dtypes import BFLOAT16, from_stored, stored_name
from assay.vocab.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidInput,
    NotFound,
    ResourceExhausted,
)

from ..strategies.validation import check_not_transposed, rank_fits, shape_doc, validate_array
from .appends import AppendWriter
from .compaction import compact
from .durable import Checkpointer, fsync_dir
from .labels import check_labels
from .request_records import RequestKey, RequestRecords, Retention, StoredResponse
from .select_records import SelectRecords

log = logging.getLogger(__name__)

POOL_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
#: The pools table's columns, in the order ``_row`` returns them.
_COLUMNS = "pool_id, uid, item_count, version, create_time, update_time, arrays, shards"
#: Directory of a pool's recorded epochs, beside its segments.
_HISTORY = "history"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pools (
    pool_id TEXT PRIMARY KEY,
    uid TEXT NOT NULL,
    item_count INTEGER NOT NULL,
    version INTEGER NOT NULL,
    create_time REAL NOT NULL,
    update_time REAL NOT NULL,
    arrays TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS segments (
    pool_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    dir TEXT NOT NULL,
    item_count INTEGER NOT NULL,
    size_bytes INTEGER NOT NULL,
    PRIMARY KEY (pool_id, seq)
);
CREATE TABLE IF NOT EXISTS shard_segments (
    pool_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    shard INTEGER NOT NULL,
    first INTEGER NOT NULL,
    item_count INTEGER NOT NULL,
    size_bytes INTEGER NOT NULL,
    PRIMARY KEY (pool_id, seq, shard)
);
CREATE TABLE IF NOT EXISTS labels (
    pool_id TEXT NOT NULL,
    item INTEGER NOT NULL,
    label INTEGER NOT NULL,
    PRIMARY KEY (pool_id, item)
);
CREATE TABLE IF NOT EXISTS epochs (
    pool_id TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    file TEXT NOT NULL,
    item_count INTEGER NOT NULL,
    PRIMARY KEY (pool_id, epoch)
);
"""


#: Size the WAL file is cut back to once checkpointed (it otherwise keeps its largest size).
_WAL_KEEP_BYTES = 32 << 20

@dataclass(frozen=True)
class ArraySpec:
    """One array of a pool: role name, dtype name and full shape."""

    name: str
    dtype: str  # numpy dtype string, "bfloat16" for BF16
    shape: tuple[int, ...]

    @property
    def item_axis(self) -> int:
        return roles.item_axis(self.name)

    def trailing(self) -> tuple[int, ...]:
        """The shape without its item axis: must match across appends."""
        return self.shape[: self.item_axis] + self.shape[self.item_axis + 1:]


@dataclass(frozen=True)
class PoolInfo:
    """A pool's metadata as stored."""

    pool_id: str
    item_count: int
    labeled_count: int
    version: int
    arrays: tuple[ArraySpec, ...]
    create_time: float
    update_time: float
    size_bytes: int
    #: 0 for a pool on this machine's disk, else the shards its rows are split over.
    shards: int = 0


class ShardRows(Protocol):
    """Where a sharded pool's rows live (``scaleout.backend.ShardedBackend``).

    The store keeps every pool's metadata and makes every check and commit; a
    sharded pool's rows alone go to its shards through these calls.
    """

    def place(self, shards: int) -> None:
        """Fail now when ``shards`` shards cannot be placed."""

    def write(self, uid: str, shards: int, seq: int, arrays: dict[str, np.ndarray],
              added: int) -> list[tuple[int, int, int]]:
        """Write append ``seq``, one slice per shard: ``(offset, items, bytes)`` each."""

    def drop(self, uid: str, shards: int) -> None:
        """Delete a deleted pool's rows."""


@dataclass(frozen=True)
class ShardedPool:
    """A sharded pool at one version: its metadata, its identity (``uid``, which names
    its shards), where its rows live and its labeled items.

    ``segments[k]`` lists shard k's slices of the pool as ``(seq, first, count)``:
    append ``seq`` put items ``[first, first + count)`` on that shard.
    """

    info: PoolInfo
    uid: str
    segments: tuple[tuple[tuple[int, int, int], ...], ...]
    labeled: np.ndarray  # int64[L], sorted


@dataclass(frozen=True)
class PoolData:
    """A pool's arrays at one version, with its labeled items."""

    info: PoolInfo
    arrays: dict[str, np.ndarray]
    labeled: np.ndarray  # int64[L], sorted
    labels: np.ndarray  # int64[L]
    #: int32[T, N]: the recorded epochs that cover every item (None when there are none).
    history: np.ndarray | None = None


def _nbytes(spec: ArraySpec) -> int:
    """Data bytes of an array of this spec."""
    return int(np.prod(spec.shape)) * from_stored(spec.dtype).itemsize


def check_pool_id(pool_id: str, field: str = "pool_id") -> str:
    """Raise ``InvalidInput`` unless ``pool_id`` has the documented form."""
    if not POOL_ID.match(pool_id or ""):
        raise InvalidInput(
            f"{field} {pool_id!r} is not a valid pool id: 1-63 characters of [a-z0-9._-], "
            "starting with a letter or digit",
            field=field,
        )
    return pool_id


class PoolStore:
    """Durable pools under ``data_dir``; safe for concurrent use from threads."""

    def __init__(self, data_dir: str | os.PathLike, *, max_pool_bytes: int = 0,
                 max_pools: int = 0, cache_entries: int = 4, max_pool_items: int = 0,
                 min_free_bytes: int = 64 << 20, retention: Retention | None = None,
                 sharded: ShardRows | None = None):
        self.data_dir = Path(data_dir)
        self.pools_dir = self.data_dir / "pools"
        self.tmp_dir = self.data_dir / "tmp"
        self.max_pool_bytes = max_pool_bytes
        self.max_pools = max_pools
        self.max_pool_items = max_pool_items
        self.min_free_bytes = min_free_bytes
        self.pools_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        database = self.data_dir / "assay.sqlite"
        self._db = sqlite3.connect(database, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA wal_autocheckpoint=0")  # the checkpointer's job
        self._db.execute(f"PRAGMA journal_size_limit={_WAL_KEEP_BYTES}")
        self._checkpoints = Checkpointer(database, restart_bytes=2 * _WAL_KEEP_BYTES)
        self._db.executescript(_SCHEMA)
        if "shards" not in {r[1] for r in self._db.execute("PRAGMA table_info(pools)")}:
            self._db.execute("ALTER TABLE pools ADD COLUMN shards INTEGER NOT NULL DEFAULT 0")
        #: Where sharded pools keep their rows (None: no cluster, no sharded pools).
        self.sharded = sharded
        #: Serialises the commits of one sharded pool: its shards write before SQLite commits.
        self._shard_commits: dict[str, threading.Lock] = {}
        #: Stored responses of requests with a request_id (swept on open, then lazily).
        self.requests = RequestRecords(self._db, self._lock, retention, path=database)
        #: Stored responses of Selects, which change nothing: appended to a journal of
        #: their own, not committed to the table (``select_records``).
        self.select_records = SelectRecords(self.data_dir / "select-records", retention)
        #: pool id -> ((uid, segment dirs), its data): one entry per pool, keyed by the
        #: segments it maps, so a new version with the same rows (a label round, an
        #: epoch) reuses the mapped arrays.
        self._cache: OrderedDict[str, tuple[tuple, PoolData]] = OrderedDict()
        #: One compaction at a time per pool (by uid): a second reader of the same pool
        #: waits for the first, then finds a single segment; other pools go on.
        self._compactions: dict[str, threading.Lock] = {}
        self._cache_entries = cache_entries
        self._adopt_sharded_catalogue()
        self._sweep()
        if sharded is not None:
            sharded.sweep({r[0] for r in self._db.execute(
                "SELECT uid FROM pools WHERE shards > 0")})

    # -- housekeeping -------------------------------------------------------------------

    def _adopt_sharded_catalogue(self) -> None:
        """Take over the sharded pools of a data directory written before sharded pools
        shared this catalogue (their own ``scaleout.sqlite``), once; their shards keep
        their rows where they were (``<shard-dir>/<uid>``)."""
        old = self.data_dir / "scaleout.sqlite"
        if not old.exists():
            return
        with self._lock:
            self._db.execute("ATTACH DATABASE ? AS old", (str(old),))
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute(
                    f"INSERT OR IGNORE INTO pools ({_COLUMNS}) SELECT pool_id, uid, item_count, "
                    "version, create_time, update_time, arrays, shards FROM old.sharded_pools")
                self._db.execute(
                    "INSERT OR IGNORE INTO shard_segments SELECT pool_id, seq, shard, first, "
                    "count, size_bytes FROM old.sharded_segments")
                self._db.execute("INSERT OR IGNORE INTO labels SELECT pool_id, item, label "
                                 "FROM old.sharded_labels")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            finally:
                self._db.execute("DETACH DATABASE old")
        old.rename(old.with_name("scaleout.sqlite.adopted"))

    def _sweep(self) -> None:
        """Remove what a crash left behind: temp uploads and epoch files, unreferenced
        segments. ``tmp`` holds upload directories and ``epoch-*.npy`` files."""
        for entry in self.tmp_dir.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        referenced = {row[0] for row in self._db.execute("SELECT dir FROM segments")}
        live_uids = {row[0] for row in self._db.execute("SELECT uid FROM pools")}
        for pool_dir in self.pools_dir.iterdir():
            if pool_dir.name not in live_uids:
                shutil.rmtree(pool_dir, ignore_errors=True)
                continue
            for seg in pool_dir.iterdir():
                if seg.name == _HISTORY:
                    self._sweep_history(seg)
                elif f"{pool_dir.name}/{seg.name}" not in referenced:
                    shutil.rmtree(seg, ignore_errors=True)

    def _sweep_history(self, history: Path) -> None:
        """Remove epoch files a crash left unreferenced (renamed in, never committed)."""
        kept = {row[0] for row in self._db.execute("SELECT file FROM epochs")}
        for entry in history.iterdir():
            if f"{history.parent.name}/{_HISTORY}/{entry.name}" not in kept:
                entry.unlink(missing_ok=True)

    def close(self) -> None:
        self._checkpoints.close()
        self.requests.close()
        self.select_records.close()
        with self._lock:
            self._db.close()

    # -- metadata ----------------------------------------------------------------------

    def _row(self, pool_id: str) -> tuple:
        row = self._db.execute(f"SELECT {_COLUMNS} FROM pools WHERE pool_id = ?",
                               (pool_id,)).fetchone()
        if row is None:
            raise NotFound(f"pool {pool_id!r} does not exist; create it with CreatePool",
                           field="pool_id", reason="POOL_NOT_FOUND")
        return row

    def _info(self, row: tuple) -> PoolInfo:
        pool_id, _, item_count, version, ctime, utime, arrays_json, shards = row
        specs = tuple(
            ArraySpec(a["name"], a["dtype"], tuple(a["shape"])) for a in json.loads(arrays_json)
        )
        labeled = self._db.execute("SELECT COUNT(*) FROM labels WHERE pool_id = ?",
                                   (pool_id,)).fetchone()[0]
        table = "shard_segments" if shards else "segments"
        size = self._db.execute(f"SELECT COALESCE(SUM(size_bytes), 0) FROM {table} "
                                "WHERE pool_id = ?", (pool_id,)).fetchone()[0]
        return PoolInfo(pool_id, item_count, labeled, version, specs, ctime, utime, size,
                        shards)

    def create_pool(self, pool_id: str, shards: int = 0) -> PoolInfo:
        """A new, empty pool; ``shards`` > 0 splits its rows over that many shards."""
        check_pool_id(pool_id)
        if shards < 0:
            raise InvalidInput(f"shards must be >= 0, got {shards}", field="shards")
        with self._lock:
            self._check_room(pool_id)
        if shards:
            self._shard_rows("shards")
            # Placed before the pool exists: a cluster without room for its shards fails
            # the create at once, not the first append after minutes.
            self.sharded.place(shards)
        with self._lock:
            self._check_room(pool_id)
            now = time.time()
            try:
                self._db.execute(
                    f"INSERT INTO pools ({_COLUMNS}) VALUES (?, ?, 0, 0, ?, ?, '[]', ?)",
                    (pool_id, uuid.uuid4().hex, now, now, shards))
            except sqlite3.IntegrityError:
                raise AlreadyExists(f"pool {pool_id!r} already exists", field="pool_id") from None
            return self._info(self._row(pool_id))

    def _check_room(self, pool_id: str) -> None:
        """Refuse a create whose id is taken, or that would pass ``max_pools``."""
        if self._db.execute("SELECT 1 FROM pools WHERE pool_id = ?", (pool_id,)).fetchone():
            raise AlreadyExists(f"pool {pool_id!r} already exists", field="pool_id")
        if self.max_pools:
            count = self._db.execute("SELECT COUNT(*) FROM pools").fetchone()[0]
            if count >= self.max_pools:
                raise ResourceExhausted(f"the server holds its maximum of {self.max_pools} "
                                        "pools; delete one first")

    def _shard_rows(self, field: str = "pool_id") -> ShardRows:
        """Where sharded pools' rows live, or FAILED_PRECONDITION when this server has none
        (started without ``--ray-address``; a sharded pool created earlier stays listed,
        labelled and deletable, but its rows cannot be reached)."""
        if self.sharded is None:
            raise FailedPrecondition("sharded pools need a Ray cluster: start the server with "
                                     "--ray-address (or --ray-address in-process)",
                                     field=field, reason="NO_RAY")
        return self.sharded

    def get_pool(self, pool_id: str) -> PoolInfo:
        check_pool_id(pool_id)
        with self._lock:
            return self._info(self._row(pool_id))

    def shards(self, pool_id: str) -> int:
        """The shards of pool ``pool_id`` (0: held on this machine); NOT_FOUND when there is
        no such pool. Reads only its row: a Select routes on it before loading."""
        check_pool_id(pool_id)
        with self._lock:
            return int(self._row(pool_id)[7])

    def pool_uid(self, pool_id: str, field: str = "pool_id") -> str:
        """The identity of the pool now under ``pool_id``; a new one after delete + create."""
        check_pool_id(pool_id, field)
        with self._lock:
            return self._row(pool_id)[1]

    def list_pools(self, after: str = "", limit: int = 100) -> list[PoolInfo]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM pools WHERE pool_id > ? ORDER BY pool_id LIMIT ?",
                (after, limit)).fetchall()
            return [self._info(r) for r in rows]

    def delete_pool(self, pool_id: str) -> None:
        check_pool_id(pool_id)
        with self._lock:
            row = self._row(pool_id)
            uid, shards = row[1], row[7]
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for table in ("pools", "segments", "shard_segments", "labels", "epochs"):
                    self._db.execute(f"DELETE FROM {table} WHERE pool_id = ?", (pool_id,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._drop_cache(pool_id)
            commits = self._shard_commits.pop(uid, None)
            self._compactions.pop(uid, None)
        shutil.rmtree(self.pools_dir / uid, ignore_errors=True)
        if shards and self.sharded is not None:
            # After any commit of this pool in flight: its rows are on the shards by then.
            with commits or contextlib.nullcontext():
                try:
                    self.sharded.drop(uid, shards)
                except Exception:  # the pool is gone; its shards are swept at next start
                    log.warning("could not drop the shards of deleted pool %r", pool_id,
                                exc_info=True)

    # -- appends -----------------------------------------------------------------------

    def begin_append(self, pool_id: str, specs: list[ArraySpec], *,
                     replace: bool = False) -> AppendWriter:
        """Check an append header against the pool and open its temp files.

        ``replace``: the arrays replace (or add) those of the same names for every item
        of the pool, which keeps its other arrays, labels and epochs
        (``ReplacePoolArrays``); they must cover exactly the pool's items.
        """
        check_pool_id(pool_id)
        if not specs:
            raise InvalidInput("the append header declares no arrays", field="header.arrays")
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise InvalidInput("the append header names an array twice", field="header.arrays")
        counts = set()
        for i, spec in enumerate(specs):
            where = f"header.arrays[{i}]"
            if not roles.is_stored(spec.name):
                allowed = ", ".join(roles.stored_roles())
                raise InvalidInput(f"{where}.name {spec.name!r} is not a pool array; use one of "
                                   f"{allowed}, or model_inputs.<name> (letters, digits, _ . -) "
                                   "for a model with several inputs", field=f"{where}.name")
            if not rank_fits(spec.name, len(spec.shape)):
                raise InvalidInput(f"{where}.shape must be {shape_doc(spec.name)}, got "
                                   f"{list(spec.shape)}", field=f"{where}.shape")
            if min(spec.shape) < 1:
                # Zero items would commit an empty segment and bump the version; a zero
                # class/width/member axis would let a pool claim N items with no bytes.
                raise InvalidInput(
                    f"{where}.shape {list(spec.shape)} has an empty dimension; an append "
                    "carries at least one item and every dimension must be >= 1",
                    field=f"{where}.shape", reason="EMPTY_DIMENSION")
            counts.add(spec.shape[spec.item_axis])
        first = {s.shape[s.item_axis] for s in specs if s.item_axis == 0}
        if len(counts) != 1 and len(first) == 1:
            # [N, S, C] samples next to [N, ...] arrays: name the transposed one.
            for i, spec in enumerate(specs):
                check_not_transposed(spec.name, spec.shape, next(iter(first)),
                                     f"header.arrays[{i}].shape")
        if len(counts) != 1:
            raise InvalidInput("the appended arrays disagree on the number of new items",
                               field="header.arrays", reason="SHAPE_MISMATCH")
        with self._lock:
            info = self._info(self._row(pool_id))
            uid = self._row(pool_id)[1]
        if replace and info.item_count:
            # A replace covers the pool's N items: an [N, S, C] samples array is transposed.
            for i, spec in enumerate(specs):
                check_not_transposed(spec.name, spec.shape, info.item_count,
                                     f"header.arrays[{i}].shape")
        added = counts.pop()
        total = sum(_nbytes(s) for s in specs)
        if replace:
            self._check_replace(info, added)
            size = info.size_bytes + total - sum(_nbytes(a) for a in info.arrays
                                                 if a.name in set(names))
        else:
            if info.shards:
                self._shard_rows()
            self._check_schema(info, specs)
            size = info.size_bytes + total
        if self.max_pool_bytes and size > self.max_pool_bytes:
            raise ResourceExhausted(
                f"pool {pool_id!r} would hold {size} bytes, over the "
                f"server's limit of {self.max_pool_bytes}", field="header.arrays")
        if not replace and self.max_pool_items and info.item_count + added > self.max_pool_items:
            raise ResourceExhausted(
                f"pool {pool_id!r} would hold {info.item_count + added} items, over the "
                f"server's limit of {self.max_pool_items}", field="header.arrays",
                reason="TOO_MANY_ITEMS")
        free = shutil.disk_usage(self.data_dir).free
        if total + self.min_free_bytes > free:
            raise ResourceExhausted(f"the data directory has {free} bytes free; this append "
                                    f"needs {total} and {self.min_free_bytes} must stay free",
                                    reason="DISK_FULL")
        return AppendWriter(self, pool_id, uid, specs, info.shards, replace=replace)

    @staticmethod
    def _check_replace(info: PoolInfo, count: int) -> None:
        """A replace covers every item of a pool held on this machine."""
        if info.shards:
            raise FailedPrecondition(f"pool {info.pool_id!r} is sharded: replacing its arrays "
                                     "is not available yet; append to a new pool instead",
                                     field="pool_id", reason="NOT_SHARDABLE")
        if info.item_count == 0:
            raise FailedPrecondition(f"pool {info.pool_id!r} has no items to replace arrays "
                                     "of; append them first", field="pool_id",
                                     reason="EMPTY_POOL")
        if count != info.item_count:
            raise InvalidInput(f"a replace covers every item of pool {info.pool_id!r}: its "
                               f"arrays must have {info.item_count} items on their item axis, "
                               f"got {count}; nothing was changed", field="header.arrays",
                               reason="SHAPE_MISMATCH")

    @staticmethod
    def _check_schema(info: PoolInfo, specs: list[ArraySpec]) -> None:
        if not info.arrays:
            return
        existing = {a.name: a for a in info.arrays}
        if set(existing) != {s.name for s in specs}:
            raise FailedPrecondition(
                f"pool {info.pool_id!r} holds arrays {sorted(existing)}; every append must "
                f"carry exactly those, got {sorted(s.name for s in specs)}",
                field="header.arrays", reason="SCHEMA_MISMATCH")
        for spec in specs:
            old = existing[spec.name]
            if old.dtype != spec.dtype or old.trailing() != spec.trailing():
                raise FailedPrecondition(
                    f"array {spec.name!r} is stored as {old.dtype} with shape {list(old.shape)}; "
                    f"an append must keep the dtype and every dimension but the item axis, got "
                    f"{spec.dtype} {list(spec.shape)}", field="header.arrays",
                    reason="SCHEMA_MISMATCH")

    def _commit_append(self, writer: AppendWriter, request: RequestKey | None,
                       make_response) -> tuple[PoolInfo, int, int]:
        """Make a fully written segment part of its pool, atomically."""
        if writer.replace:
            return self._commit_replace(writer, request, make_response)
        if writer.shards:
            return self._commit_sharded(writer, request, make_response)
        specs = writer.specs
        added = specs[0].shape[specs[0].item_axis]
        (self.pools_dir / writer.uid).mkdir(parents=True, exist_ok=True)
        seg_dir, final = self._place_segment(writer.tmp, writer.uid)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                info = self._info(self._live_row(writer))
                self._check_schema(info, specs)
                first = info.item_count
                seq = self._db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM segments "
                                       "WHERE pool_id = ?", (writer.pool_id,)).fetchone()[0]
                self._db.execute("INSERT INTO segments VALUES (?, ?, ?, ?, ?)",
                                 (writer.pool_id, seq, seg_dir, added,
                                  writer.total_bytes))
                new_info = self._grow(writer, info, added, request, make_response)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                shutil.rmtree(final, ignore_errors=True)
                raise
        return new_info, first, added

    def _commit_sharded(self, writer: AppendWriter, request: RequestKey | None,
                        make_response) -> tuple[PoolInfo, int, int]:
        """Split a fully written append over the pool's shards, then commit it.

        The append was received, checked and fsync'd like any other (in ``tmp``);
        each shard then writes and fsyncs its slice, and one SQLite transaction
        makes the slices part of the pool, so a failure at any point leaves the
        previous pool. Commits of one pool are serialised: its next rows start where
        the last commit ended.
        """
        specs = writer.specs
        added = specs[0].shape[specs[0].item_axis]
        with self._lock:
            lock = self._lock_of(self._shard_commits, writer.uid)
        try:
            with lock:
                with self._lock:
                    info = self._info(self._live_row(writer))
                    self._check_schema(info, specs)
                    seq = self._db.execute(
                        "SELECT COALESCE(MAX(seq), 0) + 1 FROM shard_segments WHERE pool_id = ?",
                        (writer.pool_id,)).fetchone()[0]
                arrays = {s.name: self._open(writer.tmp / f"{s.name}.npy", s) for s in specs}
                written = self.sharded.write(writer.uid, writer.shards, seq, arrays, added)
                del arrays
                first = info.item_count
                with self._lock:
                    self._db.execute("BEGIN IMMEDIATE")
                    try:
                        self._live_row(writer)
                        self._db.executemany(
                            "INSERT INTO shard_segments VALUES (?, ?, ?, ?, ?, ?)",
                            ((writer.pool_id, seq, k, first + off, count, size)
                             for k, (off, count, size) in enumerate(written)))
                        new_info = self._grow(writer, info, added, request, make_response)
                        self._db.execute("COMMIT")
                    except BaseException:
                        self._db.execute("ROLLBACK")
                        raise
        finally:
            shutil.rmtree(writer.tmp, ignore_errors=True)
        return new_info, first, added

    def _commit_replace(self, writer: AppendWriter, request: RequestKey | None,
                        make_response) -> tuple[PoolInfo, int, int]:
        """Publish a replace: one new segment with the replaced arrays and (hard links to)
        the kept ones, swapped for the pool's segment in one transaction.

        The pool is compacted first, so its kept arrays are one file each; an append
        committed meanwhile makes the replace FAILED_PRECONDITION ``POOL_CHANGED`` and
        changes nothing (send it again for the new items).
        """
        names = {s.name for s in writer.specs}
        count = writer.specs[0].shape[writer.specs[0].item_axis]
        self._compact(writer.pool_id)
        with self._lock:
            lock = self._lock_of(self._compactions, writer.uid)
        with lock:
            with self._lock:
                info = self._info(self._live_row(writer))
                segs = self._segments(writer.pool_id)
            if info.item_count != count or len(segs) != 1:
                raise FailedPrecondition(
                    f"pool {writer.pool_id!r} changed while the replace was sent (now "
                    f"{info.item_count} items); send it again for the current items",
                    field="pool_id", reason="POOL_CHANGED")
            kept = [a for a in info.arrays if a.name not in names]
            for spec in kept:
                source = self.pools_dir / segs[0][1] / f"{spec.name}.npy"
                try:
                    os.link(source, writer.tmp / source.name)
                except OSError:  # a file system without hard links: copy
                    shutil.copyfile(source, writer.tmp / source.name)
            fsync_dir(writer.tmp)
            seg_dir, final = self._place_segment(writer.tmp, writer.uid)
            shapes = [{"name": s.name, "dtype": s.dtype, "shape": list(s.shape)}
                      for s in (*kept, *writer.specs)]
            with self._lock:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    self._live_row(writer)
                    if self._segments(writer.pool_id) != segs:
                        raise FailedPrecondition(
                            f"pool {writer.pool_id!r} changed while the replace was sent; "
                            "send it again", field="pool_id", reason="POOL_CHANGED")
                    self._db.execute("DELETE FROM segments WHERE pool_id = ?",
                                     (writer.pool_id,))
                    self._db.execute("INSERT INTO segments VALUES (?, ?, ?, ?, ?)",
                                     (writer.pool_id, segs[0][0] + 1,
                                      seg_dir, count,
                                      writer.total_bytes + sum(_nbytes(a) for a in kept)))
                    self._db.execute("UPDATE pools SET version = version + 1, update_time = ?, "
                                     "arrays = ? WHERE pool_id = ?",
                                     (time.time(), json.dumps(shapes), writer.pool_id))
                    new_info = self._info(self._row(writer.pool_id))
                    if request is not None:
                        self.requests.put(request, make_response(new_info, 0, count),
                                          pool_uid=writer.uid)
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    shutil.rmtree(final, ignore_errors=True)
                    raise
            shutil.rmtree(self.pools_dir / segs[0][1], ignore_errors=True)
        return new_info, 0, count

    def _place_segment(self, tmp: Path, uid: str) -> tuple[str, Path]:
        """Rename a fully written segment directory into pool ``uid``'s directory,
        durably; returns its name in the catalogue (``<uid>/seg-...``) and its path. It
        becomes part of the pool only when a transaction references it."""
        name = f"seg-{uuid.uuid4().hex[:12]}"
        final = self.pools_dir / uid / name
        os.rename(tmp, final)
        fsync_dir(final.parent)
        return f"{uid}/{name}", final

    @staticmethod
    def _lock_of(locks: dict[str, threading.Lock], uid: str) -> threading.Lock:
        """The lock of pool ``uid`` in ``locks`` (created on first use; the caller holds
        the store lock, and drops the entry when the pool is deleted)."""
        return locks.setdefault(uid, threading.Lock())

    def _grow(self, writer: AppendWriter, info: PoolInfo, added: int,
              request: RequestKey | None, make_response) -> PoolInfo:
        """In an append's transaction: grow the pool by its ``added`` items (a new version)
        and store the request's response with it; returns the pool's new metadata."""
        first = info.item_count
        shapes = [{"name": s.name, "dtype": s.dtype, "shape": list(self._grown(info, s, added))}
                  for s in writer.specs]
        self._db.execute("UPDATE pools SET item_count = ?, version = version + 1, "
                         "update_time = ?, arrays = ? WHERE pool_id = ?",
                         (first + added, time.time(), json.dumps(shapes), writer.pool_id))
        new_info = self._info(self._row(writer.pool_id))
        if request is not None:
            self.requests.put(request, make_response(new_info, first, added),
                              pool_uid=writer.uid)
        return new_info

    def _live_row(self, writer: AppendWriter) -> tuple:
        """The row of the pool an upload writes to, unless it was deleted meanwhile."""
        row = self._row(writer.pool_id)
        if row[1] != writer.uid:
            raise NotFound(f"pool {writer.pool_id!r} was deleted during the upload",
                           field="pool_id", reason="POOL_NOT_FOUND")
        return row

    @staticmethod
    def _grown(info: PoolInfo, spec: ArraySpec, added: int) -> tuple[int, ...]:
        shape = list(spec.shape)
        shape[spec.item_axis] = info.item_count + added
        return tuple(shape)

    # -- labels ------------------------------------------------------------------------

    def label(self, pool_id: str, indices: np.ndarray, labels: np.ndarray,
              request: RequestKey | None = None, make_response=None) -> PoolInfo:
        """Mark items labeled (relabeling replaces). Validates everything before writing."""
        check_pool_id(pool_id)
        indices = np.asarray(indices, dtype=np.int64)
        labels = np.asarray(labels, dtype=np.int64)
        if indices.size == 0:
            raise InvalidInput("indices is empty: name at least one item to label",
                               field="indices")
        if indices.size != labels.size:
            raise InvalidInput(f"indices has {indices.size} entries but labels has "
                               f"{labels.size}; give one label per index", field="labels")
        uniq, counts = np.unique(indices, return_counts=True)
        if (counts > 1).any():
            raise InvalidInput(f"indices lists item {int(uniq[counts > 1][0])} more than once",
                               field="indices")
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._row(pool_id)
                info = self._info(row)
                if indices.min() < 0 or indices.max() >= info.item_count:
                    bad = int(indices[(indices < 0) | (indices >= info.item_count)][0])
                    raise InvalidInput(f"index {bad} is outside the pool's items "
                                       f"[0, {info.item_count})", field="indices")
                check_labels(indices, labels, info.arrays)
                self._db.executemany(
                    "INSERT OR REPLACE INTO labels VALUES (?, ?, ?)",
                    ((pool_id, int(i), int(y)) for i, y in zip(indices, labels, strict=True)))
                self._db.execute("UPDATE pools SET version = version + 1, update_time = ? "
                                 "WHERE pool_id = ?", (time.time(), pool_id))
                new_info = self._info(self._row(pool_id))
                if request is not None:
                    self.requests.put(request, make_response(new_info), pool_uid=row[1])
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            return new_info

    # -- learning dynamics -------------------------------------------------------------

    def record_epoch(self, pool_id: str, predicted: np.ndarray | None = None,
                     request: RequestKey | None = None, make_response=None, *,
                     probs: np.ndarray | None = None) -> tuple[PoolInfo, int]:
        """Store one epoch's predicted labels for every item; returns (pool, epoch index).

        The epoch comes as labels (``predicted``) or as class probabilities (``probs``,
        each row's argmax is its label). The labels go to their own ``.npy`` file
        (written to a temp file, fsync'd and renamed into the pool's history directory)
        that becomes part of the pool only when the SQLite row referencing it commits,
        like an append segment.
        """
        check_pool_id(pool_id)
        if probs is not None:
            validate_array("probs", probs, field="probs")
            predicted = np.asarray(probs, dtype=np.float64).argmax(axis=1)
        labels = np.asarray(predicted)
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise InvalidInput(f"predicted_labels must be INT32 or INT64 class labels [N], got "
                               f"{labels.dtype} {list(labels.shape)}", field="predicted_labels")
        if labels.size and (labels.min() < 0 or labels.max() > np.iinfo(np.int32).max):
            raise InvalidInput("predicted_labels must be class ids in [0, 2^31)",
                               field="predicted_labels")
        with self._lock:
            row = self._row(pool_id)
        if row[2] == 0:
            raise FailedPrecondition(f"pool {pool_id!r} has no items; append items before "
                                     "recording an epoch", field="pool_id", reason="EMPTY_POOL")
        if labels.size != row[2]:
            raise InvalidInput(f"the epoch has {labels.size} predictions but pool {pool_id!r} "
                               f"has {row[2]} items; send one per item, in item order",
                               field="predicted_labels", reason="SHAPE_MISMATCH")
        uid = row[1]
        name = f"epoch-{uuid.uuid4().hex[:12]}.npy"
        tmp = self.tmp_dir / name
        with open(tmp, "wb") as f:
            np.save(f, labels.astype("<i4"), allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        folder = self.pools_dir / uid / _HISTORY
        folder.mkdir(parents=True, exist_ok=True)
        final = folder / name
        os.rename(tmp, final)
        fsync_dir(folder)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._row(pool_id)
                if row[1] != uid or row[2] != labels.size:
                    raise FailedPrecondition(
                        f"pool {pool_id!r} changed while the epoch was written (now {row[2]} "
                        "items); send the epoch again for the current items", field="pool_id",
                        reason="POOL_CHANGED")
                epoch = self._db.execute("SELECT COALESCE(MAX(epoch) + 1, 0) FROM epochs "
                                         "WHERE pool_id = ?", (pool_id,)).fetchone()[0]
                self._db.execute("INSERT INTO epochs VALUES (?, ?, ?, ?)",
                                 (pool_id, epoch, f"{uid}/{_HISTORY}/{name}", labels.size))
                self._db.execute("UPDATE pools SET version = version + 1, update_time = ? "
                                 "WHERE pool_id = ?", (time.time(), pool_id))
                new_info = self._info(self._row(pool_id))
                if request is not None:
                    self.requests.put(request, make_response(new_info, epoch), pool_uid=uid)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                final.unlink(missing_ok=True)
                raise
        return new_info, epoch

    def _history(self, pool_id: str, item_count: int) -> np.ndarray | None:
        """int32[T, N] of the epochs recorded at the current item count (caller holds the lock)."""
        files = [r[0] for r in self._db.execute(
            "SELECT file FROM epochs WHERE pool_id = ? AND item_count = ? ORDER BY epoch",
            (pool_id, item_count))]
        if not files:
            return None
        return np.stack([np.load(self.pools_dir / f, allow_pickle=False) for f in files])

    # -- reads -------------------------------------------------------------------------

    def _drop_cache(self, pool_id: str) -> None:
        self._cache.pop(pool_id, None)

    def _segments(self, pool_id: str) -> list[tuple]:
        """(seq, dir, item_count, size_bytes) of the pool's segments, in order (caller
        holds the lock)."""
        return self._db.execute(
            "SELECT seq, dir, item_count, size_bytes FROM segments WHERE pool_id = ? "
            "ORDER BY seq", (pool_id,)).fetchall()

    def load(self, pool_id: str) -> PoolData:
        """The pool's arrays: memory-mapped views of one file per role, never copied.

        A pool whose data spans several segments is first compacted into one (once
        per new append, see ``_compact``). If that could not happen (an append
        landed meanwhile, or the disk is too full), this read concatenates, as a
        fallback; the next read compacts again.
        """
        check_pool_id(pool_id)
        with self._lock:
            self._row(pool_id)
            several = len(self._segments(pool_id)) > 1
        if several:
            self._compact(pool_id)
        with self._lock:
            row = self._row(pool_id)
            segs = self._segments(pool_id)
            key = (row[1], tuple(s[1] for s in segs))
            cached = self._cache.get(pool_id)
            if cached is not None and cached[0] == key and cached[1].info.version == row[3]:
                self._cache.move_to_end(pool_id)
                return cached[1]
            info = self._info(row)
            if info.shards:
                raise FailedPrecondition(f"pool {pool_id!r} is sharded: its rows stay on its "
                                         "shards", field="pool_id", reason="NOT_SHARDABLE")
            # Opened under the lock: a compaction commits under it too, and only then
            # removes the merged directories (a mapped file outlives its removal).
            arrays = (cached[1].arrays if cached is not None and cached[0] == key
                      else self._map(info, segs))
            lab = np.array(self._db.execute(
                "SELECT item, label FROM labels WHERE pool_id = ? ORDER BY item",
                (pool_id,)).fetchall(), dtype=np.int64).reshape(-1, 2)
            history = self._history(pool_id, info.item_count)
            data = PoolData(info, arrays, lab[:, 0].copy(), lab[:, 1].copy(), history)
            self._cache[pool_id] = (key, data)
            self._cache.move_to_end(pool_id)
            while len(self._cache) > self._cache_entries:
                self._cache.popitem(last=False)
        return data

    def _map(self, info, segs: list[tuple]) -> dict[str, np.ndarray]:
        """Each role memory-mapped; concatenated only when several segments remain."""
        arrays = {}
        for spec in info.arrays:
            parts = [self._open(self.pools_dir / s[1] / f"{spec.name}.npy", spec) for s in segs]
            arrays[spec.name] = parts[0] if len(parts) == 1 else np.concatenate(
                parts, axis=spec.item_axis)
        return arrays

    def _compact(self, pool_id: str) -> None:
        """Replace the pool's segments by one holding their concatenation.

        The copy is written outside the store lock (it reads and writes the whole
        pool) and published like an append: renamed into the pool's directory, then
        swapped for the merged rows in one transaction, which first checks that the
        pool and those rows are unchanged. The new row takes the last merged ``seq``,
        so appends committed meanwhile stay after it; the pool's version does not
        change (its data does not). The merged directories are removed after the
        commit. A crash before the commit leaves an unreferenced new directory, one
        after it unreferenced old ones: the start-up sweep removes either.
        """
        with self._lock:
            lock = self._lock_of(self._compactions, self._row(pool_id)[1])
        with lock:
            with self._lock:
                row = self._row(pool_id)
                segs = self._segments(pool_id)
                info = self._info(row)
            if len(segs) < 2:
                return  # another reader compacted it while this one waited
            uid, size = row[1], sum(s[3] for s in segs)
            if shutil.disk_usage(self.data_dir).free < size + self.min_free_bytes:
                return
            tmp = self.tmp_dir / uuid.uuid4().hex
            try:
                compact([self.pools_dir / s[1] for s in segs], info.arrays, tmp)
            except OSError:
                return  # e.g. the disk filled up meanwhile: this read concatenates
            try:
                seg_dir, final = self._place_segment(tmp, uid)
            except FileNotFoundError:  # the pool was deleted meanwhile
                shutil.rmtree(tmp, ignore_errors=True)
                return
            last = segs[-1][0]
            with self._lock:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    now = self._db.execute("SELECT uid FROM pools WHERE pool_id = ?",
                                           (pool_id,)).fetchone()
                    merged = self._db.execute(
                        "SELECT seq, dir, item_count, size_bytes FROM segments "
                        "WHERE pool_id = ? AND seq <= ? ORDER BY seq", (pool_id, last)).fetchall()
                    if now is None or now[0] != uid or merged != segs:
                        self._db.execute("ROLLBACK")
                        shutil.rmtree(final, ignore_errors=True)
                        return
                    self._db.execute("DELETE FROM segments WHERE pool_id = ? AND seq <= ?",
                                     (pool_id, last))
                    self._db.execute("INSERT INTO segments VALUES (?, ?, ?, ?, ?)",
                                     (pool_id, last, seg_dir,
                                      sum(s[2] for s in segs), size))
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    shutil.rmtree(final, ignore_errors=True)
                    raise
            for s in segs:
                shutil.rmtree(self.pools_dir / s[1], ignore_errors=True)

    def sharded_pool(self, pool_id: str) -> ShardedPool:
        """A sharded pool as its selections see it: metadata, where its rows live, labels."""
        check_pool_id(pool_id)
        self._shard_rows()
        with self._lock:
            row = self._row(pool_id)
            info = self._info(row)
            if not info.shards:
                raise FailedPrecondition(f"pool {pool_id!r} is not sharded", field="pool_id")
            segments = [[] for _ in range(info.shards)]
            for seq, shard, first, count in self._db.execute(
                    "SELECT seq, shard, first, item_count FROM shard_segments "
                    "WHERE pool_id = ? AND item_count > 0 ORDER BY seq", (pool_id,)):
                segments[shard].append((seq, first, count))
            labeled = np.array([r[0] for r in self._db.execute(
                "SELECT item FROM labels WHERE pool_id = ? ORDER BY item", (pool_id,))],
                dtype=np.int64)
        return ShardedPool(info, row[1], tuple(tuple(s) for s in segments), labeled)

    def append_arrays(self, pool_id: str,
                      arrays: dict[str, np.ndarray]) -> tuple[PoolInfo, int, int]:
        """Append in-process arrays through the same path, checks and commit as a stream."""
        specs = [ArraySpec(name, stored_name(a.dtype), tuple(a.shape))
                 for name, a in arrays.items()]
        writer = self.begin_append(pool_id, specs)
        try:
            for index, a in enumerate(arrays.values()):
                data = np.ascontiguousarray(a).tobytes()
                for offset in range(0, len(data), 1 << 22):
                    writer.write(index, offset, data[offset:offset + (1 << 22)])
            return writer.commit()
        except BaseException:
            writer.abort()
            raise

    @staticmethod
    def _open(path: Path, spec: ArraySpec) -> np.ndarray:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
        return array.view(BFLOAT16) if spec.dtype == "bfloat16" else array

    # -- idempotency -------------------------------------------------------------------

    def get_request(self, key: RequestKey) -> StoredResponse | None:
        """The stored response of a committed earlier attempt of ``key``, from the table
        or the Selects' journal (one namespace of ids: a reused id with another request
        is FAILED_PRECONDITION, see ``request_records.check_same_request``)."""
        stored = self.requests.get(key)
        return stored if stored is not None else self.select_records.get(key)

    def put_request(self, key: RequestKey, response: bytes) -> None:
        """Store the response of a request that changed nothing (a Select); ``key``'s id
        had no live record when the request was looked up (``get_request``), and the
        caller still holds it.

        Returns once the record is in the journal's file, without an fsync
        (``select_records``): a Select changes nothing, so its record need only
        survive the server process (a crash, a restart), not a power loss, after
        which a retry computes the answer anew.
        """
        self.select_records.put(key, response)
