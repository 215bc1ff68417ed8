"""Every configured limit on a real server: each excess gets its status at once, and an
upload that is refused leaves the pool exactly as it was, with no temp file behind."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from assay.client import AssayError, Client
from assay.server import acquisition
from assay.server.config import PROTOBUF_LIMIT, ServerConfig
from assay.v1 import assay_pb2, assay_pb2_grpc, tensor_pb2

RNG = np.random.default_rng(7)


def _probs(n: int, c: int = 4) -> np.ndarray:
    return RNG.dirichlet(np.ones(c), size=n).astype(np.float32)


def _reason(error: AssayError) -> str:
    """The ``ErrorInfo.reason`` the server attached to a failed call."""
    status = rpc_status.from_call(error.details)
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info.reason
    raise AssertionError(f"no ErrorInfo in {status}")


def _connect(server, **kwargs) -> Client:
    return Client(f"127.0.0.1:{server.port}", timeout=30, retries=0, **kwargs)


def _assert_unchanged(server, pool_id: str, items: int, version: int) -> None:
    info = server.store.get_pool(pool_id)
    assert (info.item_count, info.version) == (items, version)
    assert list((Path(server.config.data_dir) / "tmp").iterdir()) == []


def _expect(code: grpc.StatusCode, call, *args, **kwargs) -> AssayError:
    with pytest.raises(AssayError) as err:
        call(*args, **kwargs)
    assert err.value.code == code, err.value
    return err.value


# -- message and inline sizes -----------------------------------------------------------------


def test_message_over_the_transport_limit(server_factory, monkeypatch):
    calls = []
    real = acquisition.select

    def spy(strategy_name, *args, **kwargs):
        calls.append(strategy_name)
        return real(strategy_name, *args, **kwargs)

    monkeypatch.setattr(acquisition, "select", spy)
    srv = server_factory(max_message_bytes=1 << 20)
    with _connect(srv) as c:
        error = _expect(grpc.StatusCode.RESOURCE_EXHAUSTED, c.select, "entropy", 1,
                        probs=_probs(80_000))
        assert "create_pool" in error.message
        assert calls == []
        assert c.select("entropy", 1, probs=_probs(1000)).indices.size == 1
    assert calls == ["entropy"]


def test_inline_inputs_over_the_inline_limit(server_factory):
    srv = server_factory(max_inline_bytes=4096)
    with _connect(srv) as c:
        error = _expect(grpc.StatusCode.RESOURCE_EXHAUSTED, c.select, "entropy", 1,
                        probs=_probs(1000))
        assert _reason(error) == "INLINE_TOO_LARGE"
        assert c.select("entropy", 2, probs=_probs(100)).indices.size == 2


# -- pools -------------------------------------------------------------------------------------


def test_pool_bytes(server_factory):
    srv = server_factory(max_pool_bytes=100 * 4 * 4)
    with _connect(srv) as c:
        c.create_pool("p")
        _expect(grpc.StatusCode.RESOURCE_EXHAUSTED, c.append, "p", probs=_probs(101))
        _assert_unchanged(srv, "p", 0, 0)
        c.append("p", probs=_probs(60))
        _expect(grpc.StatusCode.RESOURCE_EXHAUSTED, c.append, "p", probs=_probs(41))
        _assert_unchanged(srv, "p", 60, 1)
        pool, _, _ = c.append("p", probs=_probs(40))
        assert pool.item_count == 100


def test_pool_items(server_factory):
    srv = server_factory(max_pool_items=50)
    with _connect(srv) as c:
        c.create_pool("p")
        c.append("p", probs=_probs(40), embeddings=RNG.normal(size=(40, 8)))
        error = _expect(grpc.StatusCode.RESOURCE_EXHAUSTED, c.append, "p", probs=_probs(11),
                        embeddings=RNG.normal(size=(11, 8)))
        assert _reason(error) == "TOO_MANY_ITEMS"
        _assert_unchanged(srv, "p", 40, 1)
        pool, _, _ = c.append("p", probs=_probs(10), embeddings=RNG.normal(size=(10, 8)))
        assert pool.item_count == 50


def test_pool_items_counts_samples_along_their_item_axis(server_factory):
    srv = server_factory(max_pool_items=30)
    samples = RNG.dirichlet(np.ones(3), size=(50, 31))  # 50 MC samples of 31 items
    with _connect(srv) as c:
        c.create_pool("mc")
        _expect(grpc.StatusCode.RESOURCE_EXHAUSTED, c.append, "mc", samples=samples)
        _assert_unchanged(srv, "mc", 0, 0)
        c.append("mc", samples=samples[:, :30])


def test_pool_count(server_factory):
    srv = server_factory(max_pools=2)
    with _connect(srv) as c:
        c.create_pool("a")
        c.create_pool("b")
        _expect(grpc.StatusCode.RESOURCE_EXHAUSTED, c.create_pool, "c")
        assert [p.pool_id for p in c.list_pools()] == ["a", "b"]
        c.delete_pool("a")
        c.create_pool("c")


def test_free_disk_floor(server_factory):
    srv = server_factory(min_free_disk_bytes=1 << 62)
    with _connect(srv) as c:
        c.create_pool("p")
        error = _expect(grpc.StatusCode.RESOURCE_EXHAUSTED, c.append, "p", probs=_probs(10))
        assert _reason(error) == "DISK_FULL"
        _assert_unchanged(srv, "p", 0, 0)
    srv.store.min_free_bytes = 0
    with _connect(srv) as c:
        assert c.append("p", probs=_probs(10))[0].item_count == 10


# -- concurrency --------------------------------------------------------------------------------


@pytest.fixture
def held_select(monkeypatch):
    """Selections block until ``release`` is set; ``entered`` says one is computing."""
    entered, release = threading.Event(), threading.Event()
    real = acquisition.select

    def blocking(*args, **kwargs):
        entered.set()
        assert release.wait(30), "test never released the held selection"
        return real(*args, **kwargs)

    monkeypatch.setattr(acquisition, "select", blocking)
    yield entered, release
    release.set()


def test_concurrent_selects_over_the_limit_are_refused_at_once(server_factory, held_select):
    entered, release = held_select
    srv = server_factory(max_concurrent_selects=1, max_queued_selects=0)
    probs = _probs(50)
    with _connect(srv) as c, ThreadPoolExecutor(1) as pool:
        first = pool.submit(c.select, "entropy", 3, probs=probs)
        assert entered.wait(10)
        started = time.perf_counter()
        error = _expect(grpc.StatusCode.RESOURCE_EXHAUSTED, c.select, "margin", 3, probs=probs)
        assert time.perf_counter() - started < 2.0
        assert _reason(error) == "TOO_MANY_SELECTS"
        assert c.list_strategies()  # other calls are not held up
        release.set()
        assert first.result(30).indices.size == 3
        assert c.select("margin", 3, probs=probs).indices.size == 3


def test_concurrent_rpcs_over_the_limit_are_shed(server_factory, held_select):
    entered, release = held_select
    srv = server_factory(max_concurrent_rpcs=1)
    with _connect(srv) as c, ThreadPoolExecutor(1) as pool:
        first = pool.submit(c.select, "entropy", 3, probs=_probs(50))
        assert entered.wait(10)
        _expect(grpc.StatusCode.RESOURCE_EXHAUSTED, c.list_strategies)
        release.set()
        first.result(30)
        assert c.list_strategies()


# -- deadline ceiling -------------------------------------------------------------------------


def test_select_is_stopped_at_the_deadline_ceiling(server_factory, monkeypatch):
    def slow(*args, check_cancelled, **kwargs):
        for _ in range(1000):
            check_cancelled()
            time.sleep(0.01)
        raise AssertionError("the ceiling never stopped the selection")

    monkeypatch.setattr(acquisition, "select", slow)
    srv = server_factory(max_deadline_seconds=0.3)
    with _connect(srv) as c:
        started = time.perf_counter()
        error = _expect(grpc.StatusCode.DEADLINE_EXCEEDED, c.select, "entropy", 1,
                        probs=_probs(10), timeout=60, request_id="r-1")
        assert 0.3 <= time.perf_counter() - started < 5
        assert "max_deadline_seconds" in error.message
    assert srv.store.get_request("r-1", "Select", "") is None


def test_upload_is_stopped_at_the_deadline_ceiling(server_factory):
    srv = server_factory(max_deadline_seconds=0.3)
    probs = _probs(64)
    data = probs.tobytes()

    def slow_stream():
        yield assay_pb2.AppendPoolItemsRequest(header=assay_pb2.AppendHeader(
            pool_id="p", arrays=[assay_pb2.ArrayHeader(
                name="probs", dtype=tensor_pb2.DATA_TYPE_FP32, shape=probs.shape)]))
        for offset in range(0, len(data), 128):
            time.sleep(0.1)
            yield assay_pb2.AppendPoolItemsRequest(chunk=assay_pb2.AppendChunk(
                array_index=0, offset=offset, data=data[offset:offset + 128]))

    with _connect(srv) as c:
        c.create_pool("p")
    with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
        with pytest.raises(grpc.RpcError) as err:
            assay_pb2_grpc.AssayServiceStub(channel).AppendPoolItems(slow_stream(), timeout=60)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    _assert_unchanged(srv, "p", 0, 0)


# -- settings out of range ---------------------------------------------------------------------


@pytest.mark.parametrize("settings, why", [
    ({"max_message_bytes": 0}, "max_message_bytes"),
    ({"max_message_bytes": PROTOBUF_LIMIT + 1}, "max_message_bytes"),
    ({"workers": 0}, "workers"),
    ({"max_concurrent_rpcs": 0}, "max_concurrent_rpcs"),
    ({"max_concurrent_selects": 0}, "max_concurrent_selects"),
    ({"max_inline_bytes": 0}, "max_inline_bytes"),
    ({"max_pool_bytes": -1}, "max_pool_bytes"),
    ({"max_pool_items": -1}, "max_pool_items"),
    ({"max_pools": -1}, "max_pools"),
    ({"min_free_disk_bytes": -1}, "min_free_disk_bytes"),
    ({"max_deadline_seconds": -0.5}, "max_deadline_seconds"),
    ({"grace_seconds": -1.0}, "grace_seconds"),
    ({"metrics_port": 70000}, "metrics_port"),
    ({"address": " , "}, "address is empty"),
])
def test_out_of_range_settings_are_refused(server_factory, tmp_path, settings, why):
    with pytest.raises(ValueError, match=why):
        ServerConfig(data_dir=str(tmp_path), **settings).validate()
    with pytest.raises(ValueError, match=why):
        server_factory(**settings)


def test_disk_filling_up_during_an_upload_is_resource_exhausted(client, server, monkeypatch):
    """ENOSPC from the file system mid-stream: RESOURCE_EXHAUSTED, and nothing is left."""
    import errno

    client.create_pool("full")
    real_open = open

    class FullFile:
        """Takes the .npy header, then the disk is full."""

        def __init__(self, f):
            self._f = f
            self._writes = 0

        def write(self, data):
            self._writes += 1
            if self._writes > 1:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self._f.write(data)

        def __getattr__(self, name):
            return getattr(self._f, name)

    def opener(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        return FullFile(f) if str(path).endswith(".npy") and "w" in mode else f

    import assay.server.store as store_module

    monkeypatch.setattr(store_module, "open", opener, raising=False)
    with pytest.raises(AssayError) as err:
        client.append("full", probs=np.full((100, 2), 0.5, np.float32))
    assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "ran out of space" in err.value.message
    pool = client.get_pool("full")
    assert (pool.item_count, pool.version) == (0, 0)
    assert list(server.store.tmp_dir.iterdir()) == []
