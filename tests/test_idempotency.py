"""A retried request id never returns an answer about other data, and runs exactly once.

AIP-155 idempotency on a real server: a request id binds the request message, the
identity of the pool it names (a pool deleted and created again under the same id is
another pool) and, for an append, the CRC32C of the streamed data; a duplicate that
arrives while the first attempt still runs waits for it instead of running again;
stored answers expire after a retention window or under a size cap; request ids are
bounded. Every random input is seeded and the seed is printed on failure.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import google_crc32c
import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from assay.client import AssayError, Client
from assay.server.acquisition import selection
from assay.server.edge import idempotency
from assay.server.edge.idempotency import MAX_REQUEST_ID, StreamDigest
from assay.server.pools import request_records
from assay.server.pools.request_records import (
    EVICT_BYTES,
    EVICT_RECORDS,
    RequestKey,
    RequestRecords,
    Retention,
)
from assay.server.pools.store import PoolStore
from assay.vocab.errors import FailedPrecondition

SEED = 20261201


def _probs(rng: np.random.Generator, n: int, c: int = 4) -> np.ndarray:
    return rng.dirichlet(np.ones(c), size=n).astype(np.float32)


def _reason(error: AssayError) -> tuple[str, str]:
    """(ErrorInfo.reason, the offending field) the server attached to a failed call."""
    status = rpc_status.from_call(error.details)
    reason = field = ""
    for detail in status.details:
        info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
        if detail.Unpack(info):
            reason, field = info.reason, field or info.metadata.get("field", "")
        elif detail.Unpack(bad) and bad.field_violations:
            field = bad.field_violations[0].field
    return reason, field


def _connect(server, timeout: float = 60) -> Client:
    return Client(f"127.0.0.1:{server.port}", timeout=timeout, retries=0)


def _refused(call, code: grpc.StatusCode, reason: str) -> AssayError:
    with pytest.raises(AssayError) as err:
        call()
    assert err.value.code == code, err.value
    assert _reason(err.value)[0] == reason, err.value
    return err.value


def _together(n: int, call) -> list:
    """Run ``call(i)`` on n threads released at the same moment; results (or errors) in order."""
    barrier = threading.Barrier(n)
    out: list = [None] * n

    def run(i: int) -> None:
        barrier.wait()
        try:
            out[i] = call(i)
        except Exception as error:
            out[i] = error

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return out


class _Slow:
    """Wraps a callable: counts calls and holds each one ``delay`` seconds first, so that
    duplicates really arrive while the first execution runs."""

    def __init__(self, inner, delay: float, fail_first: bool = False):
        self.inner, self.delay, self.fail_first = inner, delay, fail_first
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self, *args, **kwargs):
        with self._lock:
            self.calls += 1
            first = self.calls == 1
        time.sleep(self.delay)
        if first and self.fail_first:
            raise FailedPrecondition("the first attempt fails (test)", reason="POOL_CHANGED")
        return self.inner(*args, **kwargs)


# -- the pool's identity ----------------------------------------------------------------


def test_a_request_id_reused_on_a_pool_deleted_and_created_again_is_refused(server):
    rng = np.random.default_rng(SEED)
    old, new = _probs(rng, 60), _probs(rng, 60)
    with _connect(server) as c:
        c.create_pool("p")
        c.append("p", probs=old)
        first = c.select("random", 5, pool="p", request_id="sel-1")
        c.label("p", [0, 1], [0, 1], request_id="lab-1")
        c.record_epoch("p", probs=old, request_id="epo-1")
        c.delete_pool("p")
        c.create_pool("p")  # same id, same item count, versions restart
        c.append("p", probs=new)
        before = c.get_pool("p")
        for call in (lambda: c.select("random", 5, pool="p", request_id="sel-1"),
                     lambda: c.label("p", [0, 1], [0, 1], request_id="lab-1"),
                     lambda: c.record_epoch("p", probs=old, request_id="epo-1")):
            error = _refused(call, grpc.StatusCode.FAILED_PRECONDITION, "REQUEST_ID_REUSED")
            assert "deleted and created again" in error.message, error.message
        after = c.get_pool("p")
        assert (after.version, after.labeled_count) == (before.version, before.labeled_count)
        # The same id about another pool is simply another request.
        c.create_pool("q")
        c.append("q", probs=new)
        error = _refused(lambda: c.select("random", 5, pool="q", request_id="sel-1"),
                         grpc.StatusCode.FAILED_PRECONDITION, "REQUEST_ID_REUSED")
        assert "different Select request" in error.message, error.message
        # A new id is a new request about the new pool.
        fresh = c.select("random", 5, pool="p", request_id="sel-2")
        assert fresh.pool_version == before.version
        assert first.request_id == "sel-1"


def test_a_retry_about_a_deleted_pool_is_not_found(server):
    rng = np.random.default_rng(SEED + 1)
    with _connect(server) as c:
        c.create_pool("gone")
        c.append("gone", probs=_probs(rng, 20))
        c.select("random", 3, pool="gone", request_id="sel-gone")
        c.delete_pool("gone")
        _refused(lambda: c.select("random", 3, pool="gone", request_id="sel-gone"),
                 grpc.StatusCode.NOT_FOUND, "POOL_NOT_FOUND")


# -- the appended data -------------------------------------------------------------------


def test_an_append_retried_with_other_data_is_refused_and_stores_nothing(server):
    rng = np.random.default_rng(SEED + 2)
    data = _probs(rng, 500)
    other = _probs(rng, 500)  # same shape and dtype: the header is identical
    with _connect(server) as c:
        c.create_pool("p")
        pool, first, count = c.append("p", probs=data, request_id="app-1")
        assert (first, count, pool.version) == (0, 500, 1)
        # The same bytes cut into other chunks are the same append: answered, not stored again.
        again, first2, count2 = c.append("p", probs=data, request_id="app-1", chunk_bytes=777)
        assert (first2, count2, again.version, again.item_count) == (0, 500, 1, 500)
        error = _refused(lambda: c.append("p", probs=other, request_id="app-1"),
                         grpc.StatusCode.FAILED_PRECONDITION, "REQUEST_ID_REUSED")
        assert _reason(error)[1] == "header.request_id", error
        # One flipped byte is other data too.
        flipped = data.copy()
        flipped.reshape(-1).view(np.uint8)[4000] ^= 1  # the lowest mantissa bit of a float
        _refused(lambda: c.append("p", probs=flipped, request_id="app-1"),
                 grpc.StatusCode.FAILED_PRECONDITION, "REQUEST_ID_REUSED")
        # A different header (more items) is refused as well.
        _refused(lambda: c.append("p", probs=_probs(rng, 501), request_id="app-1"),
                 grpc.StatusCode.FAILED_PRECONDITION, "REQUEST_ID_REUSED")
        pool = c.get_pool("p")
        assert (pool.item_count, pool.version) == (500, 1), f"seed {SEED + 2}"
        # The pool holds the first data: least_confident scores are 1 - max p of `data`.
        got = c.select("least_confident", 500, pool="p")
        want = 1.0 - data.astype(np.float64).max(axis=1)
        # float32 inputs: scores carry float32 rounding of values in [0, 1].
        np.testing.assert_allclose(got.scores, want[got.indices], atol=2 ** -23,
                                   err_msg=f"seed {SEED + 2}")


def test_stream_digest_is_crc32c_of_each_array_whatever_the_chunking():
    rng = np.random.default_rng(SEED + 3)
    a = rng.integers(0, 256, 1000, dtype=np.uint8).tobytes()
    b = rng.integers(0, 256, 37, dtype=np.uint8).tobytes()
    whole = StreamDigest(["probs", "embeddings"], [len(a), len(b)])
    whole.update(0, 0, a)
    whole.update(1, 0, b)
    pieces = StreamDigest(["probs", "embeddings"], [len(a), len(b)])
    for lo in range(0, len(a), 99):  # interleaved with the other array, as a client may
        pieces.update(0, lo, a[lo:lo + 99])
        if lo == 0:
            pieces.update(1, 0, b)
    # Reference: the CRC32C of each whole array, and the check value of the standard.
    assert google_crc32c.value(b"123456789") == 0xE3069283
    want = f"crc32c:{google_crc32c.value(a):08x},{google_crc32c.value(b):08x}"
    assert whole.value() == pieces.value() == want, f"seed {SEED + 3}"


def test_large_buffers_are_checksummed_like_small_ones():
    """Buffers from UNLOCKED_CRC_BYTES on take the path without the interpreter lock;
    both paths must give the standard's CRC32C, continued and on memoryview slices."""
    # The wheel ships the library the lock-free path calls; a build without it falls
    # back to the extension (and this test then checks that path alone).
    if list(Path(google_crc32c.__file__).parent.parent.glob("google_crc32c.libs/*")):
        assert idempotency._extend_unlocked is not None
    rng = np.random.default_rng(SEED + 4)
    limit = idempotency.UNLOCKED_CRC_BYTES
    for size in (0, 1, limit - 1, limit, limit + 7, 5 * limit + 3):
        data = rng.integers(0, 256, size + 5, dtype=np.uint8).tobytes()
        view = memoryview(data)[5:]
        assert idempotency.crc32c(view) == google_crc32c.value(data[5:]), f"size {size}"
        head = google_crc32c.value(data[:5])
        assert idempotency.crc32c(view, head) == google_crc32c.value(data), f"size {size}"


# -- exactly once ------------------------------------------------------------------------


def test_concurrent_duplicates_of_record_epoch_record_one_epoch(server, monkeypatch):
    rng = np.random.default_rng(SEED + 4)
    probs = _probs(rng, 40)
    slow = _Slow(server.store.record_epoch, 0.5)
    monkeypatch.setattr(server.store, "record_epoch", slow)
    with _connect(server) as c:
        c.create_pool("p")
        base = c.append("p", probs=probs)[0].version
        out = _together(6, lambda i: c.record_epoch("p", probs=probs, request_id="epoch-x"))
        assert all(not isinstance(r, Exception) for r in out), out
        assert slow.calls == 1
        assert {r[1] for r in out} == {0}
        assert {r[0].version for r in out} == {base + 1}
        assert c.get_pool("p").version == base + 1
        # The next epoch is number 1: only one was recorded.
        assert c.record_epoch("p", probs=probs)[1] == 1


def test_concurrent_duplicates_of_label_bump_the_version_once(server, monkeypatch):
    rng = np.random.default_rng(SEED + 5)
    slow = _Slow(server.store.label, 0.5)
    monkeypatch.setattr(server.store, "label", slow)
    with _connect(server) as c:
        c.create_pool("p")
        base = c.append("p", probs=_probs(rng, 40))[0].version
        out = _together(6, lambda i: c.label("p", [3, 4], [1, 2], request_id="label-x"))
        assert all(not isinstance(r, Exception) for r in out), out
        assert slow.calls == 1
        assert {r.version for r in out} == {base + 1}
        assert c.get_pool("p").version == base + 1


def test_concurrent_duplicates_of_an_unseeded_select_get_the_same_picks(server, monkeypatch):
    rng = np.random.default_rng(SEED + 6)
    slow = _Slow(selection.select, 0.5)
    monkeypatch.setattr(selection, "select", slow)
    probs = _probs(rng, 2000)
    with _connect(server) as c:
        c.create_pool("p")
        c.append("p", probs=probs)
        out = _together(6, lambda i: c.select("random", 20, pool="p", request_id="select-x"))
        assert all(not isinstance(r, Exception) for r in out), out
        assert slow.calls == 1
        assert len({(tuple(r.indices), r.seed) for r in out}) == 1, f"seed {SEED + 6}"


def test_concurrent_duplicates_of_an_append_store_it_once(server, monkeypatch):
    rng = np.random.default_rng(SEED + 7)
    slow = _Slow(server.store._commit_append, 0.5)
    monkeypatch.setattr(server.store, "_commit_append", slow)
    probs = _probs(rng, 300)
    with _connect(server) as c:
        c.create_pool("p")
        out = _together(5, lambda i: c.append("p", probs=probs, request_id="append-x"))
        assert all(not isinstance(r, Exception) for r in out), out
        assert slow.calls == 1
        assert {(r[1], r[2]) for r in out} == {(0, 300)}
        pool = c.get_pool("p")
        assert (pool.item_count, pool.version) == (300, 1)


def test_when_the_first_attempt_fails_the_waiting_duplicate_runs(server, monkeypatch):
    rng = np.random.default_rng(SEED + 8)
    probs = _probs(rng, 30)
    slow = _Slow(server.store.record_epoch, 0.5, fail_first=True)
    monkeypatch.setattr(server.store, "record_epoch", slow)
    with _connect(server) as c:
        c.create_pool("p")
        c.append("p", probs=probs)
        out = _together(2, lambda i: c.record_epoch("p", probs=probs, request_id="epoch-f"))
        failed = [r for r in out if isinstance(r, AssayError)]
        done = [r for r in out if not isinstance(r, Exception)]
        assert len(failed) == 1 and len(done) == 1, out
        assert failed[0].code == grpc.StatusCode.FAILED_PRECONDITION
        assert slow.calls == 2 and done[0][1] == 0
        # Stored once: a later retry gets the same answer without running.
        assert c.record_epoch("p", probs=probs, request_id="epoch-f")[1] == 0
        assert slow.calls == 2


def test_a_waiting_duplicate_keeps_its_own_deadline(server, monkeypatch):
    rng = np.random.default_rng(SEED + 9)
    probs = _probs(rng, 30)
    slow = _Slow(server.store.record_epoch, 4.0)
    monkeypatch.setattr(server.store, "record_epoch", slow)
    with _connect(server) as c, _connect(server, timeout=1.0) as impatient:
        c.create_pool("p")
        c.append("p", probs=probs)
        first = threading.Thread(
            target=lambda: c.record_epoch("p", probs=probs, request_id="epoch-d"))
        first.start()
        while slow.calls == 0:
            time.sleep(0.01)
        with pytest.raises(AssayError) as err:
            impatient.record_epoch("p", probs=probs, request_id="epoch-d")
        assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert first.is_alive(), "the duplicate was answered only after the first finished"
        first.join(60)
        assert slow.calls == 1
        assert c.record_epoch("p", probs=probs, request_id="epoch-d")[1] == 0


# -- crash leftovers -------------------------------------------------------------------


def test_leftover_epoch_files_in_tmp_are_swept_at_start(server_factory, tmp_path):
    first = server_factory()
    first.stop(0)
    tmp = Path(first.config.data_dir) / "tmp"
    (tmp / "epoch-0123456789ab.npy").write_bytes(b"\x93NUMPY half written")
    (tmp / "0f1e2d3c").mkdir()
    (tmp / "0f1e2d3c" / "probs.npy").write_bytes(b"x")
    second = server_factory()
    assert tmp.is_dir() and list(tmp.iterdir()) == []
    second.stop(0)


# -- retention -------------------------------------------------------------------------


def _stored(server) -> int:
    """Live records: the table's (changes) and the journal's (Selects)."""
    with sqlite3.connect(Path(server.config.data_dir) / "assay.sqlite") as db:
        table = db.execute("SELECT COUNT(*) FROM requests").fetchone()[0]
    return table + len(server.store.select_records)


def test_a_retry_after_the_retention_window_runs_again(server_factory):
    rng = np.random.default_rng(SEED + 10)
    probs = _probs(rng, 30)
    server = server_factory(request_retention_seconds=1.0)
    with _connect(server) as c:
        c.create_pool("p")
        c.append("p", probs=probs)
        assert c.record_epoch("p", probs=probs, request_id="e-1")[1] == 0
        assert c.record_epoch("p", probs=probs, request_id="e-1")[1] == 0
        time.sleep(1.5)
        assert c.record_epoch("p", probs=probs, request_id="e-1")[1] == 1


def test_expired_records_are_swept_at_start(server_factory):
    rng = np.random.default_rng(SEED + 11)
    first = server_factory()
    with _connect(first) as c:
        for i in range(5):
            c.select("random", 2, probs=_probs(rng, 10), request_id=f"s-{i}")
    assert _stored(first) == 5
    first.stop(0)
    time.sleep(0.6)
    second = server_factory(request_retention_seconds=0.5)
    assert _stored(second) == 0


def test_the_record_cap_drops_the_oldest_first(server_factory):
    rng = np.random.default_rng(SEED + 12)
    probs = _probs(rng, 30)
    server = server_factory(max_request_records=3)
    with _connect(server) as c:
        c.create_pool("p")
        c.append("p", probs=probs, request_id="a-0")
        epochs = [c.record_epoch("p", probs=probs, request_id=f"e-{i}")[1] for i in range(5)]
        assert epochs == [0, 1, 2, 3, 4]
        assert _stored(server) == 3
        assert c.record_epoch("p", probs=probs, request_id="e-4")[1] == 4  # kept
        assert c.record_epoch("p", probs=probs, request_id="e-0")[1] == 5  # dropped: runs again


def test_the_byte_cap_keeps_at_least_the_newest_record(server_factory):
    rng = np.random.default_rng(SEED + 13)
    probs = _probs(rng, 100)
    server = server_factory(max_request_bytes=1)
    with _connect(server) as c:
        a = c.select("random", 10, probs=probs, request_id="s-a")
        b = c.select("random", 10, probs=probs, request_id="s-b")
        assert _stored(server) == 1
        np.testing.assert_array_equal(
            c.select("random", 10, probs=probs, request_id="s-b").indices, b.indices)
        again = c.select("random", 10, probs=probs, request_id="s-a")  # dropped: runs again
        assert again.seed != a.seed or not np.array_equal(again.indices, a.indices)


def test_records_of_an_earlier_schema_are_migrated_and_never_replayed(tmp_path):
    db = sqlite3.connect(tmp_path / "assay.sqlite", isolation_level=None)
    db.execute("CREATE TABLE requests (request_id TEXT PRIMARY KEY, method TEXT NOT NULL, "
               "fingerprint TEXT NOT NULL, response BLOB NOT NULL, create_time REAL NOT NULL)")
    db.execute("INSERT INTO requests VALUES ('old', 'Select', 'abc', x'0102', ?)", (time.time(),))
    db.close()
    store = PoolStore(tmp_path, retention=Retention(seconds=3600))
    try:
        columns = {r[1] for r in store._db.execute("PRAGMA table_info(requests)")}
        assert {"pool_uid", "data_digest", "size_bytes"} <= columns
        assert store._db.execute("SELECT size_bytes FROM requests").fetchone()[0] == 2
        # The same message, but the record does not say which pool it answered: refused.
        with pytest.raises(FailedPrecondition, match="earlier server release"):
            store.get_request(RequestKey("old", "Select", "abc", pool_uid="0123abcd"))
        # About inline inputs there is no pool to tell apart: the record answers.
        assert store.get_request(RequestKey("old", "Select", "abc")).response == b"\x01\x02"
    finally:
        store.close()


def test_a_record_for_a_pool_replaced_mid_request_is_not_stored(tmp_path):
    store = PoolStore(tmp_path)
    try:
        store.create_pool("p")
        stale = RequestKey("r", "LabelPoolItems", "f", pool_uid="uid-of-a-deleted-pool")
        store._db.execute("BEGIN IMMEDIATE")
        with pytest.raises(FailedPrecondition):
            store.requests.put(stale, b"x", pool_uid=store.pool_uid("p"))
        store._db.execute("ROLLBACK")
        assert store.get_request(stale) is None
    finally:
        store.close()


def test_records_module_counts_match_the_table(tmp_path):
    db = sqlite3.connect(tmp_path / "r.sqlite", isolation_level=None, check_same_thread=False)
    lock = threading.RLock()
    records = RequestRecords(db, lock, Retention(seconds=0, max_records=4, max_bytes=0))
    rng = np.random.default_rng(SEED + 14)
    for i in range(10):
        with lock:
            records.put(RequestKey(f"r-{i}", "Select", "f"),
                        rng.integers(0, 256, 1 + i, dtype=np.uint8).tobytes())
    ids = [r[0] for r in db.execute("SELECT request_id FROM requests ORDER BY create_time")]
    assert ids == ["r-6", "r-7", "r-8", "r-9"], f"seed {SEED + 14}"
    assert records.sweep() == 4
    db.close()


def test_a_full_cap_evicts_the_oldest_in_a_batch_below_it(tmp_path):
    """At a cap of 128 records the 129th drops the 3 oldest (1/64 of the cap below it),
    so the next 2 records evict nothing; a byte cap keeps the same margin."""
    db = sqlite3.connect(tmp_path / "r.sqlite", isolation_level=None, check_same_thread=False)
    lock = threading.RLock()
    records = RequestRecords(db, lock, Retention(seconds=0, max_records=128, max_bytes=0))

    def ids():
        return [r[0] for r in db.execute("SELECT request_id FROM requests ORDER BY rowid")]

    for i in range(131):
        with lock:
            records.put(RequestKey(f"r-{i}", "Select", "f"), b"x")
        if i == 128:
            assert ids() == [f"r-{j}" for j in range(3, 129)]
    assert ids() == [f"r-{j}" for j in range(3, 131)]
    assert records.sweep() == 128
    db.close()

    db = sqlite3.connect(tmp_path / "b.sqlite", isolation_level=None, check_same_thread=False)
    records = RequestRecords(db, lock, Retention(seconds=0, max_records=0, max_bytes=6400))
    for i in range(65):
        with lock:
            records.put(RequestKey(f"r-{i}", "Select", "f"), b"y" * 100)
    # 6,500 bytes break the cap: down to 6,300 (6,400 - 100) or less, the newest kept.
    assert ids() == [f"r-{j}" for j in range(2, 65)]
    db.close()


def test_a_large_cap_evicts_small_batches(tmp_path):
    """At a cap of 4,096 records (1/64: 64) the batch is EVICT_RECORDS (32), and at a
    byte cap of 8 MiB (1/64: 128 KiB) it is EVICT_BYTES (64 KiB): a full cap never
    deletes thousands of records in one commit."""
    db = sqlite3.connect(tmp_path / "r.sqlite", isolation_level=None, check_same_thread=False)
    lock = threading.RLock()
    records = RequestRecords(db, lock, Retention(seconds=0, max_records=4096, max_bytes=0))
    with lock:
        db.execute("BEGIN")
        for i in range(4097):
            records.put(RequestKey(f"r-{i}", "Select", "f"), b"x")
        db.execute("COMMIT")
    assert EVICT_RECORDS == 32
    assert records.sweep() == 4096 - 32
    assert db.execute("SELECT MIN(rowid) FROM requests").fetchone()[0] == 34
    db.close()

    db = sqlite3.connect(tmp_path / "b.sqlite", isolation_level=None, check_same_thread=False)
    records = RequestRecords(db, lock, Retention(seconds=0, max_records=0, max_bytes=8 << 20))
    with lock:
        db.execute("BEGIN")
        for i in range(8193):
            records.put(RequestKey(f"r-{i}", "Select", "f"), b"y" * 1024)
        db.execute("COMMIT")
    # 8 MiB + 1 KiB: down to 8 MiB - 64 KiB, that is 8,128 records of 1 KiB.
    assert EVICT_BYTES == 64 << 10
    assert records.sweep() == 8128
    db.close()


def test_a_lookup_does_not_wait_for_the_stores_lock(tmp_path):
    """With the database's path, ``get`` reads on a connection of its own: a lookup
    answers while another thread holds the lock (a group of records committing), and
    sees every record committed before it."""
    path = tmp_path / "r.sqlite"
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    lock = threading.RLock()
    records = RequestRecords(db, lock, path=path)
    key = RequestKey("r-1", "Select", "f")
    with lock:
        records.put(key, b"answer")
    held, release = threading.Event(), threading.Event()

    def commit_in_progress():
        with lock:
            held.set()
            release.wait(30)

    holder = threading.Thread(target=commit_in_progress)
    holder.start()
    try:
        assert held.wait(10)
        found: list = []
        reader = threading.Thread(target=lambda: found.append(records.get(key)))
        reader.start()
        reader.join(10)
        assert not reader.is_alive(), "the lookup waited for the store's lock"
        assert found[0].response == b"answer"
        assert records.get(RequestKey("r-2", "Select", "f")) is None
    finally:
        release.set()
        holder.join(10)
    records.close()
    db.close()


def _reads(records: RequestRecords) -> list[str]:
    """Count the table reads of ``records.get`` (the ids it looked up)."""
    looked_up: list[str] = []
    real = records._lookup

    def counted(request_id):
        looked_up.append(request_id)
        return real(request_id)

    records._lookup = counted
    return looked_up


def test_a_lookup_of_an_unused_id_reads_nothing(tmp_path):
    """Every new request looks its id up: an id never stored is answered from the
    ids kept in memory; a stored one, and only it, is read from the table. The ids
    are loaded when the store opens, so a retry after a restart still finds its
    record."""
    path = tmp_path / "r.sqlite"
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    lock = threading.RLock()
    records = RequestRecords(db, lock, path=path)
    reads = _reads(records)
    with lock:
        records.put(RequestKey("kept", "Select", "f"), b"answer")
    assert records.get(RequestKey("never-used", "Select", "f")) is None
    assert reads == []
    assert records.get(RequestKey("kept", "Select", "f")).response == b"answer"
    assert reads == ["kept"]
    records.close()
    db.close()

    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    reopened = RequestRecords(db, threading.RLock(), path=path)
    assert reopened.get(RequestKey("kept", "Select", "f")).response == b"answer"
    reopened.close()
    db.close()


@pytest.mark.parametrize("known_max", [1 << 18, 5])
def test_the_ids_in_memory_never_hide_a_stored_record(tmp_path, monkeypatch, known_max):
    """Random puts, replacements, evictions at both caps, expiries, rolled-back
    transactions and restarts, against the table itself: ``get`` finds a live record
    exactly when the table holds one, except the records an eviction deleted in a
    transaction rolled back after it (documented: a retry of one runs anew). With
    ``KNOWN_IDS_MAX`` 5 the ids stop being kept once more are stored, and every
    lookup reads the table."""
    monkeypatch.setattr(request_records, "KNOWN_IDS_MAX", known_max)
    seed = SEED + 40
    rng = np.random.default_rng(seed)
    path = tmp_path / "r.sqlite"
    retention = Retention(seconds=30.0, max_records=24, max_bytes=2000)
    clock = [1_000_000.0]
    monkeypatch.setattr(request_records.time, "time", lambda: clock[0])

    def open_records():
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        return db, RequestRecords(db, threading.RLock(), retention, path=path)

    def stored() -> set[str]:
        return {row[0] for row in db.execute("SELECT request_id FROM requests")}

    db, records = open_records()
    ids = [f"id-{i}" for i in range(60)]
    forgiven: set[str] = set()  # restored by a rollback after their eviction
    for step in range(1500):
        action = rng.random()
        request_id = ids[int(rng.integers(len(ids)))]
        key = RequestKey(request_id, "Select", "f")
        if action < 0.5:
            size = int(rng.integers(1, 200))
            with records._lock:
                before = stored()
                db.execute("BEGIN IMMEDIATE")
                records.put(key, bytes(size))
                if rng.random() < 0.1:
                    forgiven |= before - stored()
                    db.execute("ROLLBACK")
                else:
                    forgiven.discard(request_id)
                    db.execute("COMMIT")
        elif action < 0.55:
            clock[0] += float(rng.uniform(0.0, 20.0))  # some records expire
        elif action < 0.57:
            records.close()
            db.close()
            db, records = open_records()
        else:
            row = db.execute("SELECT create_time FROM requests WHERE request_id = ?",
                             (request_id,)).fetchone()
            live = row is not None and row[0] >= clock[0] - retention.seconds
            found = records.get(key)
            if request_id in forgiven and found is None:
                continue
            assert (found is not None) == live, f"seed {seed}, step {step}, {request_id}"
    records.close()
    db.close()


def test_an_older_store_gets_the_covering_index(tmp_path):
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    RequestRecords(db, threading.RLock())
    db.execute("DROP INDEX requests_by_age")
    db.execute("CREATE INDEX requests_by_time ON requests (create_time)")
    db.close()
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    RequestRecords(db, threading.RLock())
    indexes = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "requests_by_age" in indexes and "requests_by_time" not in indexes
    plan = db.execute("EXPLAIN QUERY PLAN SELECT COUNT(*), SUM(size_bytes) FROM requests")
    assert "COVERING INDEX requests_by_age" in str(plan.fetchall())
    db.close()


# -- request ids -----------------------------------------------------------------------


@pytest.mark.parametrize("request_id", [
    "x" * (MAX_REQUEST_ID + 1), "x" * (1 << 20), "has space", "tab\there", "caf\u00e9", "nul\x00"])
def test_bad_request_ids_are_invalid_argument_and_change_nothing(server, request_id):
    rng = np.random.default_rng(SEED + 15)
    probs = _probs(rng, 20)
    with _connect(server) as c:
        c.create_pool("p")
        c.append("p", probs=probs)
        before, records = c.get_pool("p").version, _stored(server)
        for call, field in (
                (lambda: c.select("random", 2, pool="p", request_id=request_id), "request_id"),
                (lambda: c.label("p", [0], [1], request_id=request_id), "request_id"),
                (lambda: c.record_epoch("p", probs=probs, request_id=request_id), "request_id"),
                (lambda: c.append("p", probs=probs, request_id=request_id),
                 "header.request_id")):
            error = _refused(call, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST_ID")
            assert _reason(error)[1] == field, error
        assert c.get_pool("p").version == before
        assert _stored(server) == records


def test_a_uuid_and_a_128_character_id_are_accepted(server):
    rng = np.random.default_rng(SEED + 16)
    probs = _probs(rng, 20)
    with _connect(server) as c:
        for request_id in ("0b6e4a9e-2f4b-4d53-9c55-7a7f7c3a2d10", "k" * MAX_REQUEST_ID):
            a = c.select("random", 3, probs=probs, request_id=request_id)
            b = c.select("random", 3, probs=probs, request_id=request_id)
            np.testing.assert_array_equal(a.indices, b.indices)


# -- sharded pools (Ray) -----------------------------------------------------------------


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray", reason="the ray extra is not installed: pip install "
                                            "'assay[ray]'")
    import os

    os.environ.setdefault("RAY_gcs_server_port_wait_time_s", "180")
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=96 << 20,
             _node_ip_address="127.0.0.1", namespace="assay", log_to_driver=False,
             configure_logging=False)
    yield
    ray.shutdown()


def test_sharded_pools_bind_identity_and_data_and_run_once(local_ray, server_factory,
                                                            monkeypatch):
    from assay.v1 import assay_pb2, assay_pb2_grpc

    rng = np.random.default_rng(SEED + 17)
    data, other = _probs(rng, 90), _probs(rng, 90)
    server = server_factory(ray_address="auto", shard_cpus=0.0, shard_threads=1)
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    stub = assay_pb2_grpc.AssayServiceStub(channel)

    def create() -> None:
        stub.CreatePool(assay_pb2.CreatePoolRequest(pool_id="sh", shards=2), timeout=120)

    with channel, _connect(server, timeout=120) as c:
        create()
        assert c.append("sh", probs=data, request_id="sh-app")[1:] == (0, 90)
        assert c.append("sh", probs=data, request_id="sh-app", chunk_bytes=100)[1:] == (0, 90)
        _refused(lambda: c.append("sh", probs=other, request_id="sh-app"),
                 grpc.StatusCode.FAILED_PRECONDITION, "REQUEST_ID_REUSED")
        assert c.get_pool("sh").item_count == 90
        slow = _Slow(server.store.label, 0.5)
        monkeypatch.setattr(server.store, "label", slow)
        out = _together(4, lambda i: c.label("sh", [1, 2], [0, 1], request_id="sh-lab"))
        assert all(not isinstance(r, Exception) for r in out), out
        assert slow.calls == 1 and len({r.version for r in out}) == 1
        first = c.select("entropy", 5, pool="sh", request_id="sh-sel")
        stub.DeletePool(assay_pb2.DeletePoolRequest(pool_id="sh"), timeout=120)
        create()
        c.append("sh", probs=other)
        error = _refused(lambda: c.select("entropy", 5, pool="sh", request_id="sh-sel"),
                         grpc.StatusCode.FAILED_PRECONDITION, "REQUEST_ID_REUSED")
        assert "deleted and created again" in error.message
        assert first.request_id == "sh-sel"
        stub.DeletePool(assay_pb2.DeletePoolRequest(pool_id="sh"), timeout=120)
