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
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from assay.client import AssayError, Client
from assay.server.acquisition import selection
from assay.server.pools.request_records import RequestKey
from assay.server.wiring.config import PROTOBUF_LIMIT, ServerConfig
from assay.v1 import assay_pb2, assay_pb2_grpc, model_pb2, model_pb2_grpc, tensor_pb2

RNG = np.random.default_rng(7)


@pytest.fixture
def server_factory(server_factory):
    """Servers without the start-up kernel warm-up: several tests here replace or hold the
    acquisition layer, which the warm-up would run through first."""
    def make(**overrides):
        overrides.setdefault("warmup", False)
        return server_factory(**overrides)
    return make


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


def _status_reason(error: grpc.RpcError) -> str:
    """The ``ErrorInfo.reason`` of a failed raw-stub call."""
    status = rpc_status.from_call(error)
    for detail in status.details if status is not None else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info.reason
    raise AssertionError(f"no ErrorInfo in {error}")


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
    real = selection.select

    def spy(strategy_name, *args, **kwargs):
        calls.append(strategy_name)
        return real(strategy_name, *args, **kwargs)

    monkeypatch.setattr(selection, "select", spy)
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
    real = selection.select

    def blocking(*args, **kwargs):
        entered.set()
        assert release.wait(30), "test never released the held selection"
        return real(*args, **kwargs)

    monkeypatch.setattr(selection, "select", blocking)
    yield entered, release
    release.set()


def test_concurrent_selects_over_the_limit_are_refused_at_once(server_factory, held_select):
    entered, release = held_select
    srv = server_factory(max_concurrent_selects=1, max_queued_selects=0)
    probs = _probs(50)
    with _connect(srv) as c, ThreadPoolExecutor(1) as pool:
        first = pool.submit(c.select, "entropy", 3, probs=probs)
        assert entered.wait(10)
        error = _expect(grpc.StatusCode.RESOURCE_EXHAUSTED, c.select, "margin", 3, probs=probs)
        # Refused while the first one is still held (until ``release``, up to 30 s): it
        # did not wait for the slot, on a machine of any speed.
        assert not first.done()
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

    monkeypatch.setattr(selection, "select", slow)
    srv = server_factory(max_deadline_seconds=0.3)
    with _connect(srv) as c:
        started = time.perf_counter()
        error = _expect(grpc.StatusCode.DEADLINE_EXCEEDED, c.select, "entropy", 1,
                        probs=_probs(10), timeout=60, request_id="r-1")
        # The message, not the clock, shows the ceiling (not the 60 s deadline) ended it;
        # the upper bound only has to be well below that deadline on a loaded machine.
        assert 0.3 <= time.perf_counter() - started < 30
        assert "max_deadline_seconds" in error.message
    # No record under the id: a lookup finds none (a stored one would not match this
    # blank fingerprint and raise REQUEST_ID_REUSED instead).
    assert srv.store.get_request(RequestKey("r-1", "Select", "")) is None


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


def test_a_select_without_a_client_deadline_is_stopped_at_the_ceiling(server_factory,
                                                                      monkeypatch):
    def slow(*args, check_cancelled, **kwargs):
        for _ in range(3000):
            check_cancelled()
            time.sleep(0.01)
        raise AssertionError("the ceiling never stopped the selection")

    monkeypatch.setattr(selection, "select", slow)
    srv = server_factory(max_deadline_seconds=0.5)
    request = assay_pb2.SelectRequest(strategy="entropy", budget=1, inputs=assay_pb2.Inputs(
        probs=tensor_pb2.Tensor(dtype=tensor_pb2.DATA_TYPE_FP32, shape=[10, 4],
                                data=_probs(10).tobytes())))
    with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
        with pytest.raises(grpc.RpcError) as err:
            assay_pb2_grpc.AssayServiceStub(channel).Select(request)  # no deadline at all
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "max_deadline_seconds" in err.value.details()


def test_the_server_has_a_ceiling_and_an_idle_limit_by_default():
    config = ServerConfig(data_dir="")
    assert 0 < config.max_deadline_seconds <= 3600
    assert 0 < config.stream_idle_timeout_seconds < config.max_deadline_seconds
    assert 1 <= config.max_concurrent_streams < config.max_concurrent_rpcs


# -- slow clients -----------------------------------------------------------------------------


def _append_header(pool_id: str = "p") -> assay_pb2.AppendPoolItemsRequest:
    return assay_pb2.AppendPoolItemsRequest(header=assay_pb2.AppendHeader(
        pool_id=pool_id, arrays=[assay_pb2.ArrayHeader(
            name="probs", dtype=tensor_pb2.DATA_TYPE_FP32, shape=[4, 2])]))


def _register_header() -> model_pb2.RegisterModelRequest:
    return model_pb2.RegisterModelRequest(header=model_pb2.RegisterModelHeader(
        model_id="m", size_bytes=100, sha256="0" * 64,
        outputs=[model_pb2.OutputBinding(role="probs", output_name="p")]))


class _Stalled:
    """Client streams that send ``first`` (or nothing) and then wait until released."""

    def __init__(self):
        self.release = threading.Event()

    def __call__(self, first=None):
        if first is not None:
            yield first
        self.release.wait(120)


def _wait_for(condition, seconds: float = 30.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _reader_threads() -> int:
    return sum(t.name.startswith("assay-read") for t in threading.enumerate())


def test_idle_streams_hold_no_worker_and_end_at_the_idle_limit(server_factory):
    """As many idle upload streams as there are workers (header then nothing, or nothing
    at all; appends and model registrations): health and a GetPool are still answered
    while they wait, each ends with DEADLINE_EXCEEDED naming the idle limit, and nothing
    is stored."""
    idle = 10.0
    srv = server_factory(workers=8, stream_idle_timeout_seconds=idle)
    assert srv.config.max_concurrent_streams >= srv.config.workers
    readers_before = _reader_threads()
    stalled = _Stalled()
    with _connect(srv) as c:
        c.create_pool("p")
    channel = grpc.insecure_channel(f"127.0.0.1:{srv.port}")
    assay = assay_pb2_grpc.AssayServiceStub(channel)
    models = model_pb2_grpc.ModelServiceStub(channel)
    try:
        started = time.monotonic()
        calls = ([assay.AppendPoolItems.future(stalled(_append_header()), timeout=120)
                  for _ in range(3)]
                 + [assay.AppendPoolItems.future(stalled(), timeout=120) for _ in range(3)]
                 + [models.RegisterModel.future(stalled(_register_header()), timeout=120),
                    models.RegisterModel.future(stalled(), timeout=120)])
        assert len(calls) == srv.config.workers
        assert _wait_for(lambda: srv.lanes.running_streams == len(calls)), \
            f"only {srv.lanes.running_streams} of {len(calls)} streams reached the server"
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                           timeout=idle / 2)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        pool = assay.GetPool(assay_pb2.GetPoolRequest(pool_id="p"), timeout=idle / 2).pool
        assert (pool.item_count, pool.version) == (0, 0)
        assert not any(call.done() for call in calls), \
            "the answers above must come while every idle stream still waits"
        for call in calls:
            error = call.exception(timeout=120)
            assert error is not None, "an idle stream must not succeed"
            assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED, error
            assert "stream_idle_timeout_seconds" in error.details()
            assert _status_reason(error) == "STREAM_IDLE"
        assert time.monotonic() - started >= idle
    finally:
        stalled.release.set()
        channel.close()
    _assert_unchanged(srv, "p", 0, 0)
    assert srv.models.list() == []
    assert _wait_for(lambda: _reader_threads() <= readers_before), \
        "stream reader threads must end with their calls"


def test_health_is_answered_while_every_worker_computes(server_factory, held_select):
    """Health checks have a lane of their own: held Selects on every worker, with more
    queued behind them, do not delay the probe."""
    entered, release = held_select
    srv = server_factory(workers=2, max_concurrent_selects=2, max_queued_selects=4)
    probs = _probs(50)
    with _connect(srv) as c, ThreadPoolExecutor(4) as pool:
        selects = [pool.submit(c.select, "entropy", 3, probs=probs) for _ in range(4)]
        assert entered.wait(30)
        with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for _ in range(5):
                answer = health.Check(health_pb2.HealthCheckRequest(), timeout=10)
                assert answer.status == health_pb2.HealthCheckResponse.SERVING
        assert not any(s.done() for s in selects), "the probes must come while all wait"
        release.set()
        assert all(s.result(60).indices.size == 3 for s in selects)


def test_streams_beyond_the_stream_cap_are_refused_at_once(server_factory):
    srv = server_factory(max_concurrent_streams=2, stream_idle_timeout_seconds=30.0)
    stalled = _Stalled()
    with _connect(srv) as c:
        c.create_pool("p")
        channel = grpc.insecure_channel(f"127.0.0.1:{srv.port}")
        stub = assay_pb2_grpc.AssayServiceStub(channel)
        try:
            held = [stub.AppendPoolItems.future(stalled(_append_header()), timeout=120)
                    for _ in range(2)]
            assert _wait_for(lambda: srv.lanes.running_streams == 2)
            error = _expect(grpc.StatusCode.RESOURCE_EXHAUSTED, c.append, "p",
                            probs=_probs(4, 2))
            assert _reason(error) == "TOO_MANY_STREAMS"
            assert "max_concurrent_streams" in error.message
            assert not any(call.done() for call in held)
            info = srv.store.get_pool("p")
            assert (info.item_count, info.version) == (0, 0)
            held[0].cancel()
            assert _wait_for(lambda: srv.lanes.running_streams < 2)
            assert c.append("p", probs=_probs(4, 2))[0].item_count == 4
            held[1].cancel()
            assert _wait_for(lambda: srv.lanes.running_streams == 0)
        finally:
            stalled.release.set()
            channel.close()
    _assert_unchanged(srv, "p", 4, 1)


def test_a_slow_but_steady_stream_is_not_cut(server_factory):
    """The idle limit is between messages, not on the whole upload."""
    idle = 2.0
    srv = server_factory(stream_idle_timeout_seconds=idle)
    probs = _probs(64)
    data = probs.tobytes()
    step = len(data) // 8

    def steady():
        yield assay_pb2.AppendPoolItemsRequest(header=assay_pb2.AppendHeader(
            pool_id="p", arrays=[assay_pb2.ArrayHeader(
                name="probs", dtype=tensor_pb2.DATA_TYPE_FP32, shape=probs.shape)]))
        for offset in range(0, len(data), step):
            time.sleep(idle / 4)
            yield assay_pb2.AppendPoolItemsRequest(chunk=assay_pb2.AppendChunk(
                array_index=0, offset=offset, data=data[offset:offset + step]))

    with _connect(srv) as c:
        c.create_pool("p")
    with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
        started = time.monotonic()
        response = assay_pb2_grpc.AssayServiceStub(channel).AppendPoolItems(steady(),
                                                                            timeout=120)
    assert time.monotonic() - started > idle  # longer in all than the idle limit
    assert response.appended_count == 64
    np.testing.assert_array_equal(np.asarray(srv.store.load("p").arrays["probs"]), probs)


def test_an_endless_trickle_without_a_client_deadline_ends_at_the_ceiling(server_factory):
    """A client that sends one small chunk now and then, never pausing past the idle
    limit and never finishing, with no deadline of its own: the ceiling ends it."""
    ceiling = 1.5
    srv = server_factory(max_deadline_seconds=ceiling, stream_idle_timeout_seconds=5.0)
    stop = threading.Event()

    def trickle():
        yield assay_pb2.AppendPoolItemsRequest(header=assay_pb2.AppendHeader(
            pool_id="p", arrays=[assay_pb2.ArrayHeader(  # 512 KiB: never sent in full
                name="probs", dtype=tensor_pb2.DATA_TYPE_FP32, shape=[65536, 2])]))
        offset = 0
        while not stop.is_set() and offset < 1 << 19:
            time.sleep(0.1)
            yield assay_pb2.AppendPoolItemsRequest(chunk=assay_pb2.AppendChunk(
                array_index=0, offset=offset, data=b"\0"))
            offset += 1

    with _connect(srv) as c:
        c.create_pool("p")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as err:
                assay_pb2_grpc.AssayServiceStub(channel).AppendPoolItems(trickle())
            assert time.monotonic() - started >= ceiling
    finally:
        stop.set()
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "max_deadline_seconds" in err.value.details()
    assert _wait_for(lambda: srv.lanes.running_streams == 0)
    _assert_unchanged(srv, "p", 0, 0)


def test_an_idle_reflection_stream_ends_at_the_idle_limit(server_factory):
    srv = server_factory(stream_idle_timeout_seconds=1.0)
    stalled = _Stalled()
    with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(
            stalled(reflection_pb2.ServerReflectionRequest(list_services="")), timeout=120)
        try:
            first = next(responses)
            assert first.list_services_response.service
            with pytest.raises(grpc.RpcError) as err:
                next(responses)
        finally:
            stalled.release.set()
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "stream_idle_timeout_seconds" in err.value.details()


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
    ({"max_concurrent_streams": 0}, "max_concurrent_streams"),
    ({"stream_idle_timeout_seconds": 0.0}, "stream_idle_timeout_seconds"),
    ({"shard_start_timeout_seconds": -1.0}, "shard_start_timeout_seconds"),
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

    import assay.server.pools.appends as appends_module

    monkeypatch.setattr(appends_module, "open", opener, raising=False)
    with pytest.raises(AssayError) as err:
        client.append("full", probs=np.full((100, 2), 0.5, np.float32))
    assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "ran out of space" in err.value.message
    pool = client.get_pool("full")
    assert (pool.item_count, pool.version) == (0, 0)
    assert list(server.store.tmp_dir.iterdir()) == []


@pytest.mark.parametrize("code, refused", [("ENOSPC", True), ("EOPNOTSUPP", False)])
def test_space_reserved_before_the_chunks(client, server, monkeypatch, code, refused):
    """An upload's files are allocated before its first chunk: a disk that cannot hold
    them refuses it at once (RESOURCE_EXHAUSTED, DISK_FULL, nothing left behind), while
    a filesystem that cannot allocate ahead still takes the upload, chunk by chunk."""
    import ctypes
    import errno

    import assay.server.pools.appends as appends_module

    asked = []

    def fallocate(fd, mode, offset, size):
        asked.append((mode, offset, size))
        ctypes.set_errno(getattr(errno, code))
        return -1

    monkeypatch.setattr(appends_module, "_fallocate", fallocate)
    client.create_pool("reserve")
    probs = np.full((100, 2), 0.5, np.float32)
    if refused:
        with pytest.raises(AssayError) as err:
            client.append("reserve", probs=probs)
        assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert _reason(err.value) == "DISK_FULL"
        _assert_unchanged(server, "reserve", 0, 0)
        assert list(server.store.tmp_dir.iterdir()) == []
    else:
        assert client.append("reserve", probs=probs)[0].item_count == 100
        np.testing.assert_array_equal(server.store.load("reserve").arrays["probs"], probs)
    # One request, for the whole file: the .npy header and the array's 800 bytes.
    assert len(asked) == 1 and asked[0][:2] == (0, 0) and asked[0][2] >= probs.nbytes + 64
