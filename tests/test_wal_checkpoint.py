"""The WAL stays bounded under steady writes (``assay.server.pools.durable.Checkpointer``).

Passive checkpoints alone never let SQLite rewind the WAL while commits keep coming
(one lands during each checkpoint), so under Select traffic with request ids it grew
by megabytes a second. Once it holds more than a size, a round ends by rewinding it:
the next commit writes from the file's start, so the file stops growing.
"""

from __future__ import annotations

import sqlite3

from assay.server.pools.durable import Checkpointer

ROW = 4096


def _db_with_wal(path, commits: int) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA wal_autocheckpoint=0")
    db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)")
    for i in range(commits):
        db.execute("INSERT OR REPLACE INTO t VALUES (?, ?)", (i % 50, bytes(ROW)))
    return db


def _frames(db: sqlite3.Connection) -> int:
    """Frames in the WAL now (a passive checkpoint's second column)."""
    return db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]


def test_a_round_rewinds_a_wal_past_the_bound_and_keeps_every_row(tmp_path):
    path = tmp_path / "big.sqlite"
    db = _db_with_wal(path, 200)  # 200 commits of a 4 KB row: well over 256 KB
    wal = tmp_path / "big.sqlite-wal"
    size = wal.stat().st_size
    assert size > 256 << 10 and _frames(db) > 200
    checkpoints = Checkpointer(path, interval=3600, restart_bytes=256 << 10)
    try:
        checkpoints.checkpoint()
        assert db.execute("SELECT COUNT(*) FROM t").fetchone()[0] == 50
        db.execute("INSERT INTO t VALUES (50, ?)", (bytes(ROW),))  # writes go on after it
        # ... from the start of the WAL: a few frames, and the file has not grown
        assert 0 < _frames(db) < 10
        assert wal.stat().st_size == size
    finally:
        checkpoints.close()
        db.close()
    reopened = sqlite3.connect(path)
    assert reopened.execute("SELECT COUNT(*) FROM t").fetchone()[0] == 51
    reopened.close()


def test_the_wal_stays_bounded_under_steady_commits(tmp_path):
    """Rounds between commits: the file never passes the bound and one round's commits."""
    path = tmp_path / "steady.sqlite"
    db = _db_with_wal(path, 0)
    wal = tmp_path / "steady.sqlite-wal"
    checkpoints = Checkpointer(path, interval=3600, restart_bytes=256 << 10)
    try:
        for i in range(2000):
            db.execute("INSERT OR REPLACE INTO t VALUES (?, ?)", (i % 50, bytes(ROW)))
            if i % 20 == 19:  # a round every 20 commits (about 80 KB of frames)
                checkpoints.checkpoint()
        assert wal.stat().st_size < (256 << 10) + 2 * 20 * (ROW + 4096)
    finally:
        checkpoints.close()
        db.close()


def test_below_the_bound_a_round_only_copies(tmp_path):
    path = tmp_path / "small.sqlite"
    db = _db_with_wal(path, 20)
    wal = tmp_path / "small.sqlite-wal"
    size = wal.stat().st_size
    checkpoints = Checkpointer(path, interval=3600, restart_bytes=1 << 30)
    try:
        checkpoints.checkpoint()
        assert wal.stat().st_size == size  # copied into the database, not emptied
        busy, frames, copied = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        assert (busy, copied) == (0, frames)
    finally:
        checkpoints.close()
        db.close()
