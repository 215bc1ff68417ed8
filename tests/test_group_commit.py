"""Stored Select responses are committed in groups, each writer returning once durable."""

from __future__ import annotations

import threading

import pytest

from assay.server.pools.request_records import GroupCommit, RequestKey
from assay.server.pools.store import PoolStore


def test_concurrent_writers_share_commits_and_every_write_is_durable(tmp_path):
    store = PoolStore(tmp_path)
    commits = []
    real = store._put_requests

    def counted(records):
        commits.append(len(records))
        real(records)

    store._responses = GroupCommit(counted)
    keys = [RequestKey(f"id-{i}", "Select", f"fp-{i}") for i in range(64)]
    barrier = threading.Barrier(16)

    def writer(chunk):
        barrier.wait()
        for key in chunk:
            store.put_request(key, key.request_id.encode())

    threads = [threading.Thread(target=writer, args=(keys[i::16],)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(commits) == 64
    store.close()
    reopened = PoolStore(tmp_path)  # what a restart finds
    for key in keys:
        stored = reopened.get_request(key)
        assert stored is not None and stored.response == key.request_id.encode()
    reopened.close()


def test_a_failed_commit_fails_every_writer_of_its_group():
    started, release = threading.Event(), threading.Event()
    groups = []

    def commit(items):
        groups.append(list(items))
        if len(groups) == 1:  # hold the first commit so the others queue behind it
            started.set()
            release.wait(10)
            return
        raise OSError("disk gone")

    group = GroupCommit(commit)
    first = threading.Thread(target=group.put, args=("first",))
    first.start()
    started.wait(10)
    errors = []

    def writer(item):
        try:
            group.put(item)
        except OSError as error:
            errors.append((item, str(error)))

    waiting = [threading.Thread(target=writer, args=(i,)) for i in range(5)]
    for t in waiting:
        t.start()
    while sum(t.is_alive() for t in waiting) and len(group._queue) < 5:
        threading.Event().wait(0.01)
    release.set()
    first.join()
    for t in waiting:
        t.join()
    assert groups[0] == ["first"]
    assert sorted(groups[1]) == list(range(5))  # the queued writers shared one commit
    assert sorted(errors) == [(i, "disk gone") for i in range(5)]


def test_a_lone_writer_commits_at_once():
    seen = []
    group = GroupCommit(seen.append)
    group.put("a")
    group.put("b")
    assert seen == [["a"], ["b"]]
    with pytest.raises(ZeroDivisionError):
        GroupCommit(lambda items: 1 / 0).put("x")
