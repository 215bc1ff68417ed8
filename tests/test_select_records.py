"""Stored Select responses: an append-only journal that a restart reads back.

What a retry must find after the server process ends (a crash or a restart), what the
retention window and the caps drop (oldest first, never the newest), what a frame cut
short by a crash or damaged on disk costs (that record and those after it in its
segment, nothing before), and that the ids share one namespace with the records of
changes kept in SQLite. Random bytes are seeded; the seed is printed on failure.
"""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

from assay.server.pools import select_records
from assay.server.pools.request_records import RequestKey, Retention
from assay.server.pools.select_records import SelectRecords
from assay.server.pools.store import PoolStore
from assay.vocab.errors import FailedPrecondition, ResourceExhausted

SEED = 20261202


def _key(i: int, **kw) -> RequestKey:
    return RequestKey(f"s-{i}", kw.pop("method", "Select"), kw.pop("fingerprint", f"fp-{i}"),
                      **kw)


def _responses(seed: int, count: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, int(rng.integers(0, 3000)), dtype=np.uint8).tobytes()
            for _ in range(count)]


def _segments(directory) -> list[str]:
    return sorted(p.name for p in directory.glob("*.log"))


def test_records_survive_a_restart_byte_for_byte(tmp_path):
    responses = _responses(SEED, 50)
    records = SelectRecords(tmp_path)
    for i, response in enumerate(responses):
        records.put(_key(i, pool_uid="u" if i % 2 else ""), response)
    records.close()  # a crash leaves the same files: nothing is buffered in the process
    reopened = SelectRecords(tmp_path)
    assert len(reopened) == 50
    for i, response in enumerate(responses):
        stored = reopened.get(_key(i, pool_uid="u" if i % 2 else ""))
        assert stored is not None and stored.response == response, f"seed {SEED}, record {i}"
        assert stored.data_digest == ""
    assert reopened.get(_key(50)) is None
    reopened.close()


@pytest.mark.parametrize("other", [
    {"method": "LabelPoolItems"},
    {"fingerprint": "another message"},
    {"pool_uid": "a pool created again"},
])
def test_an_id_used_for_another_request_is_refused(tmp_path, other):
    records = SelectRecords(tmp_path)
    records.put(_key(1), b"answer")
    with pytest.raises(FailedPrecondition) as raised:
        records.get(_key(1, **other))
    assert raised.value.reason == "REQUEST_ID_REUSED"
    assert records.get(_key(1)).response == b"answer"
    records.close()


def test_a_torn_last_frame_drops_that_record_alone(tmp_path):
    responses = _responses(SEED + 1, 10)
    records = SelectRecords(tmp_path)
    for i, response in enumerate(responses):
        records.put(_key(i), response)
    records.close()
    (segment,) = tmp_path.glob("*.log")
    size = segment.stat().st_size
    os.truncate(segment, size - max(1, len(responses[-1]) // 2))  # a crash mid-write
    reopened = SelectRecords(tmp_path)
    assert [reopened.get(_key(i)) is not None for i in range(10)] == [True] * 9 + [False]
    reopened.put(_key(10), b"after the crash")  # written after the restart: kept too
    reopened.close()
    again = SelectRecords(tmp_path)
    assert again.get(_key(8)).response == responses[8], f"seed {SEED + 1}"
    assert again.get(_key(10)).response == b"after the crash"
    again.close()


def test_a_damaged_frame_ends_its_segment_and_keeps_what_came_before(tmp_path):
    responses = [bytes([i]) * 100 for i in range(6)]
    records = SelectRecords(tmp_path)
    for i, response in enumerate(responses):
        records.put(_key(i), response)
    records.close()
    (segment,) = tmp_path.glob("*.log")
    data = bytearray(segment.read_bytes())
    at = data.index(bytes([3]) * 100)  # inside record 3's response
    data[at + 50] ^= 0xFF
    segment.write_bytes(bytes(data))
    reopened = SelectRecords(tmp_path)
    assert [reopened.get(_key(i)) is not None for i in range(6)] == [True] * 3 + [False] * 3
    reopened.close()


def test_the_record_cap_drops_the_oldest_and_their_segments(tmp_path):
    records = SelectRecords(tmp_path, Retention(seconds=0, max_records=5, max_bytes=0),
                            segment_bytes=300)
    for i in range(40):
        records.put(_key(i), bytes(100))
        assert len(records) == min(i + 1, 5)
    assert [records.get(_key(i)) is not None for i in range(40)] == [False] * 35 + [True] * 5
    # two frames fit in a segment: at most three hold the five live records, one more
    # is being written; those of dropped records are gone
    assert len(_segments(tmp_path)) <= 4
    records.close()
    reopened = SelectRecords(tmp_path, Retention(seconds=0, max_records=5, max_bytes=0))
    assert [reopened.get(_key(i)) is not None for i in range(40)] == [False] * 35 + [True] * 5
    reopened.close()


def test_the_byte_cap_keeps_at_least_the_newest(tmp_path):
    records = SelectRecords(tmp_path, Retention(seconds=0, max_records=0, max_bytes=250))
    for i in range(4):
        records.put(_key(i), bytes(100))
    assert [records.get(_key(i)) is not None for i in range(4)] == [False, False, True, True]
    records.put(_key(4), bytes(1000))  # alone over the cap: kept, every other dropped
    assert [records.get(_key(i)) is not None for i in range(5)] == [False] * 4 + [True]
    records.close()
    reopened = SelectRecords(tmp_path, Retention(seconds=0, max_records=0, max_bytes=250))
    assert [reopened.get(_key(i)) is not None for i in range(5)] == [False] * 4 + [True]
    reopened.close()


def test_records_past_the_window_are_not_found_and_leave(tmp_path, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(select_records.time, "time", lambda: clock[0])
    records = SelectRecords(tmp_path, Retention(seconds=10, max_records=0, max_bytes=0),
                            segment_bytes=1)
    records.put(_key(0), b"old")
    clock[0] += 6
    records.put(_key(1), b"newer")
    clock[0] += 5  # record 0 is 11 s old, record 1 is 5 s old
    assert records.get(_key(0)) is None
    assert records.get(_key(1)).response == b"newer"
    records.put(_key(2), b"newest")
    assert len(records) == 2
    records.close()
    clock[0] += 6  # record 1 is 11 s old at the restart
    reopened = SelectRecords(tmp_path, Retention(seconds=10, max_records=0, max_bytes=0))
    assert len(reopened) == 1 and reopened.get(_key(2)).response == b"newest"
    assert len(_segments(tmp_path)) == 2  # record 2's and the new one to write in
    reopened.close()
    clock[0] += 10  # every record expired, the newest too: none left after a restart
    again = SelectRecords(tmp_path, Retention(seconds=10, max_records=0, max_bytes=0))
    assert len(again) == 0 and again.get(_key(2)) is None
    assert len(_segments(tmp_path)) == 1  # the new one to write in
    again.close()


def test_a_failed_write_leaves_no_torn_frame(tmp_path, monkeypatch):
    records = SelectRecords(tmp_path)
    records.put(_key(0), b"kept")
    real = os.write

    def short(fd, data):
        return real(fd, data[: len(data) // 2])  # what a full disk does

    monkeypatch.setattr(select_records.os, "write", short)
    with pytest.raises(ResourceExhausted) as raised:
        records.put(_key(1), b"x" * 1000)
    assert raised.value.reason == "DISK_FULL"
    monkeypatch.setattr(select_records.os, "write", real)
    assert records.get(_key(1)) is None
    records.put(_key(2), b"next")
    records.close()
    reopened = SelectRecords(tmp_path)
    assert reopened.get(_key(0)).response == b"kept"
    assert reopened.get(_key(1)) is None
    assert reopened.get(_key(2)).response == b"next"
    reopened.close()


def test_concurrent_writers_all_land(tmp_path):
    keys = [_key(i) for i in range(400)]
    records = SelectRecords(tmp_path, segment_bytes=4096)
    barrier = threading.Barrier(8)

    def writer(chunk):
        barrier.wait()
        for key in chunk:
            records.put(key, key.request_id.encode() * 20)
            assert records.get(key).response == key.request_id.encode() * 20

    threads = [threading.Thread(target=writer, args=(keys[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    records.close()
    reopened = SelectRecords(tmp_path)
    assert len(reopened) == 400
    for key in keys:
        assert reopened.get(key).response == key.request_id.encode() * 20
    reopened.close()


def test_lookups_while_records_and_segments_leave_find_only_their_own(tmp_path):
    """Readers race writers whose puts drop the oldest records and delete their segments:
    a lookup finds its own answer or nothing, never another's, never an error."""
    records = SelectRecords(tmp_path, Retention(seconds=0, max_records=8, max_bytes=0),
                            segment_bytes=300)
    stop, failures = threading.Event(), []

    def writer(w):
        for i in range(300):
            records.put(_key(w * 1000 + i), f"answer {w * 1000 + i}".encode() * 5)

    def reader():
        rng = np.random.default_rng(SEED + 2)
        while not stop.is_set():
            i = int(rng.choice([0, 1000, 2000])) + int(rng.integers(0, 300))
            try:
                stored = records.get(_key(i))
            except Exception as error:  # any error is the failure
                failures.append(repr(error))
                return
            if stored is not None and stored.response != f"answer {i}".encode() * 5:
                failures.append(f"record {i} answered {stored.response[:20]!r}")

    readers = [threading.Thread(target=reader) for _ in range(3)]
    writers = [threading.Thread(target=writer, args=(w,)) for w in range(3)]
    for t in readers + writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    for t in readers:
        t.join()
    assert failures == [], f"seed {SEED + 2}"
    assert len(records) == 8 and len(_segments(tmp_path)) <= 6
    records.close()


def test_a_put_after_close_writes_nowhere(tmp_path):
    records = SelectRecords(tmp_path)
    records.put(_key(0), b"before")
    records.close()
    other = tmp_path / "other.bin"
    fd = os.open(other, os.O_RDWR | os.O_CREAT)  # likely the number the segment had
    try:
        with pytest.raises(RuntimeError, match="closed"):
            records.put(_key(1), b"after")
        assert records.get(_key(0)) is None
        assert os.fstat(fd).st_size == 0
    finally:
        os.close(fd)


def test_select_ids_and_the_tables_ids_are_one_namespace(tmp_path):
    store = PoolStore(tmp_path)
    try:
        store.create_pool("p")
        store.put_request(RequestKey("x", "Select", "f"), b"picked")
        assert store.get_request(RequestKey("x", "Select", "f")).response == b"picked"
        with pytest.raises(FailedPrecondition, match="already used for a Select"):
            store.get_request(RequestKey("x", "LabelPoolItems", "g",
                                         pool_uid=store.pool_uid("p")))
        with store._lock:
            store._db.execute("BEGIN IMMEDIATE")
            store.requests.put(RequestKey("y", "LabelPoolItems", "g"), b"labeled")
            store._db.execute("COMMIT")
        with pytest.raises(FailedPrecondition, match="already used for a LabelPoolItems"):
            store.get_request(RequestKey("y", "Select", "f"))
    finally:
        store.close()
