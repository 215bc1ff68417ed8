"""Stalls and costs of the request records' store: eviction, checkpoints, Select records.

Three measurements, each comparing the server's way with the one it replaced, in the same
run, on a temporary SQLite database set up as the store sets up its own (WAL, automatic
checkpoints off):

* **eviction**: commits of 4 records each (1,700-byte responses, random 32-hex ids) into a
  table capped at ``--cap`` records, once with batches of 1/64 of the cap (before) and once
  with ``EVICT_RECORDS`` (now); commit latency past the cap.
* **checkpoint**: one writer at ``--rate`` commits/s for ``--seconds`` while the
  ``Checkpointer`` runs every second, once with a TRUNCATE checkpoint past a 64 MB WAL
  (before) and once as the server runs it (RESTART); commit latency and WAL size.
* **select records**: CPU per stored Select response (1,700 bytes, random 32-hex ids), as
  a transaction of one record in the table (before) and appended to the journal
  (``SelectRecords``, now), ``--records`` each, rounds alternating; best and median.

    python bench/records_store.py [--cap 20000] [--rate 250] [--seconds 60] [--records 20000]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

from assay.server.pools import durable, request_records
from assay.server.pools.request_records import RequestKey, RequestRecords, Retention
from assay.server.pools.select_records import SelectRecords

RESPONSE = os.urandom(1700)


def _connect(path: Path, synchronous: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={synchronous}")
    db.execute("PRAGMA wal_autocheckpoint=0")
    return db


def _summary(ms: np.ndarray) -> str:
    return (f"p50 {np.median(ms):.2f}  p99 {np.percentile(ms, 99):.2f}  "
            f"p99.9 {np.percentile(ms, 99.9):.2f}  max {ms.max():.1f} ms")


def eviction(cap: int, batch: int) -> np.ndarray:
    """Commit latencies (ms) past the cap, evicting ``batch`` records at a time."""
    saved = request_records.EVICT_RECORDS
    request_records.EVICT_RECORDS = batch
    try:
        with tempfile.TemporaryDirectory() as d:
            db = _connect(Path(d) / "r.sqlite", "NORMAL")
            lock = threading.RLock()
            records = RequestRecords(db, lock, Retention(0, cap, 0))
            times = []
            for _ in range(cap // 4 + 2500):
                began = time.perf_counter()
                with lock:
                    db.execute("BEGIN IMMEDIATE")
                    for _ in range(4):
                        records.put(RequestKey(uuid.uuid4().hex, "Select", "f" * 32), RESPONSE,
                                    new=True)
                    db.execute("COMMIT")
                times.append(time.perf_counter() - began)
            db.close()
    finally:
        request_records.EVICT_RECORDS = saved
    return np.array(times[cap // 4 + 100:]) * 1e3


class _Truncating(durable.Checkpointer):
    """The checkpointer as it was: TRUNCATE once the WAL file passes the bound."""

    def __init__(self, path: Path, interval: float, restart_bytes: int):
        self._wal, self._bytes = Path(f"{path}-wal"), restart_bytes
        super().__init__(path, interval, restart_bytes)

    def checkpoint(self) -> None:
        self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        if self._wal.stat().st_size > self._bytes:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()


def checkpoint(kind: type, rate: float, seconds: float) -> tuple[np.ndarray, int]:
    """Commit latencies (ms) of one writer at ``rate``/s, and the WAL's size at the end."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "c.sqlite"
        db = _connect(path, "FULL")
        db.execute("CREATE TABLE requests (request_id TEXT PRIMARY KEY, response BLOB, t REAL)")
        db.execute("CREATE INDEX by_t ON requests (t)")
        writer = _connect(path, "NORMAL")
        checkpoints = kind(path, 1.0, 64 << 20)
        times, began, i = [], time.perf_counter(), 0
        while time.perf_counter() - began < seconds:
            pause = began + i / rate - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            start = time.perf_counter()
            writer.execute("BEGIN IMMEDIATE")
            writer.execute("INSERT INTO requests VALUES (?, ?, ?)",
                           (uuid.uuid4().hex, RESPONSE, time.time()))
            writer.execute("COMMIT")
            times.append(time.perf_counter() - start)
            i += 1
        wal = os.path.getsize(f"{path}-wal")
        checkpoints.close()
        writer.close()
        db.close()
    return np.array(times) * 1e3, wal


def select_records(kind: str, count: int) -> float:
    """CPU microseconds per stored Select response, in the table or in the journal."""
    keys = [RequestKey(uuid.uuid4().hex, "Select", "f" * 64) for _ in range(count)]
    with tempfile.TemporaryDirectory() as d:
        if kind == "journal":
            journal = SelectRecords(Path(d))
            began = time.process_time()
            for key in keys:
                journal.put(key, RESPONSE)
            spent = time.process_time() - began
            journal.close()
        else:
            db = _connect(Path(d) / "r.sqlite", "NORMAL")
            lock = threading.RLock()
            records = RequestRecords(db, lock, Retention())
            began = time.process_time()
            for key in keys:
                with lock:
                    db.execute("BEGIN IMMEDIATE")
                    records.put(key, RESPONSE, new=True)
                    db.execute("COMMIT")
            spent = time.process_time() - began
            db.close()
    return spent / count * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cap", type=int, default=20_000)
    p.add_argument("--rate", type=float, default=250.0)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--records", type=int, default=20_000)
    args = p.parse_args()
    print("load before", *os.getloadavg())
    costs: dict[str, list[float]] = {"table": [], "journal": []}
    for _ in range(5):
        for kind, spent in costs.items():
            spent.append(select_records(kind, args.records))
    for kind, spent in costs.items():
        print(f"select records, {kind}: {min(spent):.1f} us best, {np.median(spent):.1f} us "
              f"median CPU per record ({args.records:,} records, 5 rounds)")
    old = max(1, args.cap // request_records.EVICT_MARGIN)
    for label, batch in ((f"batches of {old} (1/64 of the cap, before)", old),
                         (f"batches of {request_records.EVICT_RECORDS} (now)",
                          request_records.EVICT_RECORDS)):
        print(f"eviction, cap {args.cap:,}, {label}: {_summary(eviction(args.cap, batch))}")
    for label, kind in (("TRUNCATE past 64 MB (before)", _Truncating),
                        ("RESTART past 64 MB of frames (now)", durable.Checkpointer)):
        ms, wal = checkpoint(kind, args.rate, args.seconds)
        print(f"checkpoint, {label}: {_summary(ms)}, WAL {wal / 2**20:.0f} MB at the end")
    print("load after", *os.getloadavg())


if __name__ == "__main__":
    main()
