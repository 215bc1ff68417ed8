"""kill -9 at any moment leaves every committed pool intact and no half pool visible.

A real server process is SIGKILLed while appends stream in; after a restart the
pool must equal exactly a prefix of the appends that were acknowledged or in
flight, byte for byte, and no temp files may survive.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest

from assay.client import AssayError, Client
from assay.v1 import assay_pb2, assay_pb2_grpc, tensor_pb2

pytestmark = pytest.mark.slow

ROWS = 20_000  # items per append: 20k x 64 float32 = 5 MB, streamed in 64 KiB chunks


def _start(data_dir) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "assay.server", "serve", "--address", "127.0.0.1:0",
         "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        match = re.search(r"listening on .*:(\d+)", line)
        if match:
            return proc, int(match.group(1))
        if proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError("server did not start")


def _batch(k: int) -> np.ndarray:
    """Append number k: every value encodes k, so a restored pool shows which appends landed."""
    return np.full((ROWS, 64), float(k), dtype=np.float32)


@pytest.mark.parametrize("kill_after", [0.15, 0.4, 0.9])
def test_sigkill_during_streamed_uploads(tmp_path, kill_after):
    data_dir = tmp_path / "data"
    proc, port = _start(data_dir)
    acked: list[int] = []
    with Client(f"127.0.0.1:{port}", timeout=30) as c:
        c.create_pool("durable")
        c.append("durable", embeddings=_batch(0), chunk_bytes=64 << 10)
        acked.append(0)
        c.create_pool("only-empty")

        def keep_appending():
            for k in range(1, 1000):
                try:
                    c.append("durable", embeddings=_batch(k), chunk_bytes=64 << 10)
                except AssayError:
                    return
                acked.append(k)

        def never_finishing_first_append():
            """Half of an upload, then silence: it must never become visible."""
            header = assay_pb2.AppendHeader(pool_id="only-empty", arrays=[
                assay_pb2.ArrayHeader(name="embeddings", dtype=tensor_pb2.DATA_TYPE_FP32,
                                      shape=[ROWS, 64])])

            def messages():
                yield assay_pb2.AppendPoolItemsRequest(header=header)
                yield assay_pb2.AppendPoolItemsRequest(chunk=assay_pb2.AppendChunk(
                    array_index=0, offset=0, data=_batch(1)[: ROWS // 2].tobytes()))
                killed.wait(30)

            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = assay_pb2_grpc.AssayServiceStub(channel)
                with contextlib.suppress(grpc.RpcError):
                    stub.AppendPoolItems(messages(), timeout=30)

        killed = threading.Event()
        threads = [threading.Thread(target=keep_appending),
                   threading.Thread(target=never_finishing_first_append)]
        for t in threads:
            t.start()
        time.sleep(kill_after)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        killed.set()
        for t in threads:
            t.join(30)

    proc, port = _start(data_dir)
    try:
        with Client(f"127.0.0.1:{port}", timeout=30) as c:
            pool = c.get_pool("durable")
            landed = pool.item_count // ROWS
            assert pool.item_count % ROWS == 0, "a partial append became visible"
            # Everything acknowledged landed; at most the one in flight landed besides.
            assert landed in (len(acked), len(acked) + 1)
            assert pool.version == landed
            empty = c.get_pool("only-empty")
            assert (empty.item_count, empty.version) == (0, 0)
            assert list((data_dir / "tmp").iterdir()) == []
    finally:
        proc.terminate()
        proc.wait(10)
    # Byte for byte: item block k holds the value k.
    stored = _read_pool(data_dir, "durable")
    np.testing.assert_array_equal(stored, np.concatenate([_batch(k) for k in range(landed)]))


def _read_pool(data_dir, pool_id) -> np.ndarray:
    """Read the committed arrays back through the store, as a restarted server would."""
    from assay.server.pools.store import PoolStore

    store = PoolStore(data_dir)
    try:
        return np.asarray(store.load(pool_id).arrays["embeddings"])
    finally:
        store.close()


def test_sigkill_during_selects_keeps_every_answered_selects_record(tmp_path):
    """A Select's record is on file before its answer leaves: after kill -9 mid-stream of
    unseeded Selects (each answer drawn anew), a retry of every answered one replays it."""
    data_dir = tmp_path / "data"
    proc, port = _start(data_dir)
    probs = np.random.default_rng(20261202).dirichlet(np.ones(5), size=500).astype(np.float32)
    answered: dict[str, tuple[list[int], int]] = {}
    stop = threading.Event()

    def selects(worker: int) -> None:
        with Client(f"127.0.0.1:{port}", timeout=30, retries=0) as c:
            for i in range(10_000):
                if stop.is_set():
                    return
                request_id = f"w{worker}-{i}"
                try:
                    r = c.select("random", 20, probs=probs, request_id=request_id)
                except AssayError:
                    return  # the server was killed
                answered[request_id] = (list(r.indices), r.seed)

    threads = [threading.Thread(target=selects, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    stop.set()
    for t in threads:
        t.join(30)
    assert len(answered) > 20, "too few Selects were answered before the kill to tell"

    proc, port = _start(data_dir)
    try:
        with Client(f"127.0.0.1:{port}", timeout=30, retries=0) as c:
            for request_id, (indices, seed) in answered.items():
                again = c.select("random", 20, probs=probs, request_id=request_id)
                assert (list(again.indices), again.seed) == (indices, seed), request_id
    finally:
        proc.terminate()
        proc.wait(10)
