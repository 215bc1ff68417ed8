"""Stored responses of requests that carry a ``request_id`` (AIP-155 idempotency).

A record is written in the same SQLite transaction as the change it answers for
(an append, a labeling, an epoch), so a retry either finds the committed
response or finds nothing and nothing was changed: never half of one. A Select
changes nothing: its record goes to a journal of its own (``select_records``),
with the same retention and the same checks (``check_same_request``).

What makes a retry "the same request":

* ``fingerprint``: a hash of the request message without its id.
* ``pool_uid``: the identity of the pool the request names. Pool ids are reused
  after a delete and a version restarts at 0, so without it a retry against a
  pool deleted and created again would be answered about the deleted one.
* ``data_digest``: for a streamed append, the CRC32C of each array's bytes. The
  header alone does not say what was appended.

Records are kept for a retention window (24 h by default), and at most
``max_records`` of them or ``max_bytes`` of responses, oldest evicted first. A
retry after its record expired or was evicted runs again as a new request.
"""

from __future__ import annotations

import queue
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from assay.vocab.errors import FailedPrecondition

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    request_id TEXT PRIMARY KEY,
    method TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    response BLOB NOT NULL,
    create_time REAL NOT NULL
);
"""
#: Columns added to the table of earlier releases (name, declaration).
_COLUMNS = (
    ("pool_uid", "TEXT NOT NULL DEFAULT ''"),
    ("data_digest", "TEXT NOT NULL DEFAULT ''"),
    ("size_bytes", "INTEGER NOT NULL DEFAULT 0"),
)
#: An eviction leaves each cap this much below its limit: 1/64 of it, at most
#: ``EVICT_RECORDS`` records and ``EVICT_BYTES`` bytes.
EVICT_MARGIN = 64
#: Most records an eviction makes room for at once. Each deleted record rewrites a
#: random page of the id index, under the store's lock: a batch of 1,562 (1/64 of
#: 100,000) stalled every Select for tens of milliseconds, 32 cost about 2 ms.
EVICT_RECORDS = 32
#: Most bytes of responses an eviction makes room for at once (see ``EVICT_RECORDS``).
EVICT_BYTES = 64 << 10
#: Longest pause between two sweeps of expired records (seconds).
_SWEEP_EVERY = 60.0
#: Most request ids kept in memory so that a lookup of an id never used reads nothing
#: (``RequestRecords.get``): 262,144, about 33 MB of memory for UUIDs and 57 MB for
#: 128-character ids (13 MB at the default cap of 100,000 records). A table holding
#: more (a cap above it, or none) reads the table on every lookup instead.
KNOWN_IDS_MAX = 1 << 18


@dataclass(frozen=True)
class Retention:
    """How long, and how many, stored responses are kept (0: no such limit)."""

    seconds: float = 86400.0
    max_records: int = 100_000
    max_bytes: int = 256 << 20


@dataclass(frozen=True)
class RequestKey:
    """Where a new response is stored, and what a retry must match to get it."""

    request_id: str
    method: str
    fingerprint: str
    #: The uid of the pool the request names ("" for inline inputs).
    pool_uid: str = ""
    #: CRC32C of a streamed append's arrays ("" for unary requests).
    data_digest: str = ""
    #: The request's field holding the id, for error messages ("header.request_id").
    field: str = "request_id"


@dataclass(frozen=True)
class StoredResponse:
    """A committed earlier attempt: its serialized response and its data digest."""

    response: bytes
    data_digest: str


class RequestRecords:
    """The ``requests`` table of a store's SQLite database.

    The caller owns the connection and its lock: ``put`` runs inside the caller's
    transaction (with the lock held), ``sweep`` takes the lock. ``get`` reads on
    connections of its own when ``path`` names the database file, without the lock
    (WAL readers never wait for the writer): every Select with a request id looks
    its id up first, and it should not wait behind a pool change committing with its
    fsyncs, which holds the store's lock. (Without ``path`` it reads on ``db`` with the
    lock held.)

    Most lookups are of ids never used (every new request), so the ids the table may
    hold are also kept in memory (``KNOWN_IDS_MAX`` at most): an id not among them is
    answered without a read. On a loaded server a read was a few dozen microseconds
    of a Select's time, and two hand-overs of the interpreter lock. The set may hold
    ids no longer in the table (a record replaced, a write rolled back); it never
    lacks one that is there, except the records of an eviction whose caller's
    transaction rolled back: those were the oldest, chosen to be forgotten, and a
    retry of one runs anew as it would have after the eviction.
    """

    def __init__(self, db: sqlite3.Connection, lock: threading.RLock,
                 retention: Retention | None = None, *, path: Path | None = None):
        self._db = db
        self._lock = lock
        self._path = path
        #: Idle read connections (``get``); at most as many as lookups ran at once.
        self._readers: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._opened: list[sqlite3.Connection] = []
        self._opened_lock = threading.Lock()
        self.retention = retention or Retention()
        with self._lock:
            self._db.executescript(_SCHEMA)
            have = {row[1] for row in self._db.execute("PRAGMA table_info(requests)")}
            for name, declaration in _COLUMNS:
                if name not in have:
                    self._db.execute(f"ALTER TABLE requests ADD COLUMN {name} {declaration}")
            self._db.execute("UPDATE requests SET size_bytes = length(response) "
                             "WHERE size_bytes = 0")
            # Age and size together: the sweep's count and sum and the eviction's walk
            # from the oldest read this small index alone, not the table of responses
            # (a sweep of 100k records scanned 300 ms with the store's lock held).
            self._db.execute("DROP INDEX IF EXISTS requests_by_time")
            self._db.execute("CREATE INDEX IF NOT EXISTS requests_by_age "
                             "ON requests (create_time, size_bytes)")
        self._count = 0
        self._bytes = 0
        self._next_sweep = 0.0
        #: The ids the table may hold (see the class docstring); None: not kept.
        self._known: set[str] | None = None
        self.sweep()
        with self._lock:
            if self._count <= KNOWN_IDS_MAX:
                self._known = {row[0] for row in self._db.execute(
                    "SELECT request_id FROM requests")}

    # -- lookups -----------------------------------------------------------------------

    def get(self, key: RequestKey) -> StoredResponse | None:
        """The live record for ``key.request_id``, or None (also when it expired).

        A record made for another request (another method, message or pool) is
        FAILED_PRECONDITION: answering a different question would be worse than
        refusing.
        """
        now = time.time()
        if now >= self._next_sweep:
            with self._lock:
                if now >= self._next_sweep:
                    self._sweep(now)
        known = self._known
        if known is not None and key.request_id not in known:
            return None
        row = self._lookup(key.request_id)
        if row is None or expired(self.retention, row[5], now):
            return None
        method, fingerprint, pool_uid, response, digest, _ = row
        check_same_request(key, method, fingerprint, pool_uid)
        return StoredResponse(response, digest)

    def _lookup(self, request_id: str) -> tuple | None:
        query = ("SELECT method, fingerprint, pool_uid, response, data_digest, create_time "
                 "FROM requests WHERE request_id = ?")
        if self._path is None:
            with self._lock:
                return self._db.execute(query, (request_id,)).fetchone()
        try:
            reader = self._readers.get_nowait()
        except queue.Empty:
            reader = sqlite3.connect(self._path, check_same_thread=False,
                                     isolation_level=None)
            reader.execute("PRAGMA cache_size=-1024")  # KiB: lookups touch a few pages
            with self._opened_lock:
                self._opened.append(reader)
        try:
            # every row read, so the statement ends and holds no read snapshot
            # (an open one would keep a checkpoint from rewinding the WAL)
            rows = reader.execute(query, (request_id,)).fetchall()
        finally:
            self._readers.put(reader)
        return rows[0] if rows else None

    def close(self) -> None:
        """Close the read connections (the caller closes its own)."""
        with self._opened_lock:
            for reader in self._opened:
                reader.close()
            self._opened.clear()

    # -- writes ------------------------------------------------------------------------

    def put(self, key: RequestKey, response: bytes, pool_uid: str | None = None, *,
            db: sqlite3.Connection | None = None, new: bool = False) -> None:
        """Store ``response`` for ``key``; the caller holds the lock (in its transaction,
        on ``db``, the store's connection unless given).

        ``pool_uid`` is the uid of the pool the change was made to, when the caller
        knows it: a pool deleted and created again since the request was checked
        must not get a record made for the old one. ``new``: ``get`` found no live
        record for the id (an expired one left in place is replaced and counted
        twice until the next sweep, which evicts early at worst).
        """
        if pool_uid is not None and key.pool_uid and pool_uid != key.pool_uid:
            raise FailedPrecondition(
                "the pool was deleted and created again while the request ran; send it again",
                field="pool_id", reason="POOL_CHANGED")
        db = db or self._db
        self._remember(key.request_id)
        old = None if new else db.execute("SELECT size_bytes FROM requests WHERE "
                                          "request_id = ?", (key.request_id,)).fetchone()
        cursor = db.execute(
            "INSERT OR REPLACE INTO requests (request_id, method, fingerprint, response, "
            "create_time, pool_uid, data_digest, size_bytes) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (key.request_id, key.method, key.fingerprint, response, time.time(),
             key.pool_uid, key.data_digest, len(response)))
        # Running totals for the caps; a rolled-back caller transaction leaves them a little
        # high (evicting early at worst) until the next sweep counts the table again.
        if old is not None:
            self._count -= 1
            self._bytes -= old[0]
        self._count += 1
        self._bytes += len(response)
        if self._over_cap(self._count, self._bytes):
            self._evict(db, keep=cursor.lastrowid)

    def _remember(self, request_id: str) -> None:
        """Add ``request_id`` to the ids kept in memory, or stop keeping them past
        ``KNOWN_IDS_MAX`` (set operations are atomic under the interpreter lock)."""
        known = self._known
        if known is None:
            return
        if len(known) >= KNOWN_IDS_MAX:
            self._known = None
        else:
            known.add(request_id)

    def _forget(self, request_ids) -> None:
        """Drop deleted records' ids from the ids kept in memory."""
        known = self._known
        if known is not None:
            known.difference_update(request_ids)

    def _over_cap(self, count: int, size: int) -> bool:
        """Whether ``count`` records of ``size`` bytes in all break a cap."""
        return over_cap(self.retention, count, size)

    def _evict(self, db: sqlite3.Connection, keep: int | None) -> None:
        """Delete the oldest records until both caps hold with a small margin
        (``EVICT_MARGIN``, ``EVICT_RECORDS``, ``EVICT_BYTES``; ``keep``: never this rowid).

        The margin makes eviction a small batch every few dozen records at a full
        cap, not one delete per new record, and never a long stall. The newest record
        is kept even when it alone is over ``max_bytes``: its retry must still find it.
        """
        r = self.retention
        below = Retention(r.seconds,
                          r.max_records - min(r.max_records // EVICT_MARGIN, EVICT_RECORDS),
                          r.max_bytes - min(r.max_bytes // EVICT_MARGIN, EVICT_BYTES))
        doomed, ids = [], []
        count, size = self._count, self._bytes
        for rowid, row_size, request_id in db.execute(
                "SELECT rowid, size_bytes, request_id FROM requests ORDER BY create_time, rowid"):
            if not over_cap(below, count, size):
                break
            if rowid == keep:
                continue
            doomed.append((rowid,))
            ids.append(request_id)
            count -= 1
            size -= row_size
        db.executemany("DELETE FROM requests WHERE rowid = ?", doomed)
        self._count, self._bytes = count, size
        self._forget(ids)

    # -- housekeeping ------------------------------------------------------------------

    def sweep(self) -> int:
        """Delete expired records and enforce the caps; returns how many records remain."""
        with self._lock:
            self._sweep(time.time())
            return self._count

    def _sweep(self, now: float) -> None:
        """Run outside any transaction of the caller (each statement commits on its own)."""
        expired = []
        self._db.execute("BEGIN IMMEDIATE")
        try:
            if self.retention.seconds:
                oldest = (now - self.retention.seconds,)
                expired = [row[0] for row in self._db.execute(
                    "SELECT request_id FROM requests WHERE create_time < ?", oldest)]
                self._db.execute("DELETE FROM requests WHERE create_time < ?", oldest)
            self._count, self._bytes = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(size_bytes), 0) FROM requests").fetchone()
            if self._over_cap(self._count, self._bytes):
                self._evict(self._db, keep=None)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._forget(expired)
        interval = _SWEEP_EVERY
        if self.retention.seconds:
            interval = min(interval, self.retention.seconds / 2)
        self._next_sweep = now + interval


def expired(retention: Retention, create_time: float, now: float) -> bool:
    """Whether a record made at ``create_time`` is past ``retention``'s window at ``now``."""
    return bool(retention.seconds) and create_time < now - retention.seconds


def over_cap(retention: Retention, count: int, size: int) -> bool:
    """Whether ``count`` records of ``size`` bytes in all break a cap of ``retention``."""
    return bool((retention.max_records and count > retention.max_records)
                or (retention.max_bytes and size > retention.max_bytes))


def check_same_request(key: RequestKey, method: str, fingerprint: str, pool_uid: str) -> None:
    """Raise FAILED_PRECONDITION unless a record of ``method``, ``fingerprint`` and
    ``pool_uid`` was made for the request ``key`` describes: answering a different
    question would be worse than refusing."""
    if method != key.method:
        raise FailedPrecondition(
            f"{key.field} {key.request_id!r} was already used for a {method} request; "
            "use a new request_id for a new request", field=key.field,
            reason="REQUEST_ID_REUSED")
    if fingerprint != key.fingerprint:
        raise FailedPrecondition(
            f"{key.field} {key.request_id!r} was already used for a different {method} "
            "request; use a new request_id for a new request", field=key.field,
            reason="REQUEST_ID_REUSED")
    if pool_uid != key.pool_uid:
        # Also a record of an earlier release (no uid kept) for a request about a pool:
        # which pool it answered is unknown, so it is never replayed.
        raise FailedPrecondition(
            f"{key.field} {key.request_id!r} was used for a pool of the same id that has "
            "since been deleted and created again (or by an earlier server release); use "
            "a new request_id for a request about the pool as it is now", field=key.field,
            reason="REQUEST_ID_REUSED")
