"""The concurrency limit on a real server: the excess gets RESOURCE_EXHAUSTED with
ErrorInfo TOO_MANY_REQUESTS and a RetryInfo hint, at once, while health is answered.

The server runs one worker and ``max_concurrent_rpcs=2``; ListStrategies is held, so
one call runs, a second queues for the worker, and a third is over the limit.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from assay.server.edge.servicer import AssayServicer
from assay.v1 import assay_pb2, assay_pb2_grpc, tensor_pb2
from assay.vocab.errors import REASONS

# Generous: a loaded two-core machine may take seconds to schedule a thread.
PATIENCE_S = 30.0


@pytest.fixture
def held(monkeypatch):
    """ListStrategies blocks until ``release`` is set; ``entered`` counts the calls."""
    release = threading.Event()
    entered: list[float] = []
    real = AssayServicer.ListStrategies

    def blocking(self, request, context):
        entered.append(time.monotonic())
        assert release.wait(PATIENCE_S), "the test never released the held call"
        return real(self, request, context)

    monkeypatch.setattr(AssayServicer, "ListStrategies", blocking)
    yield entered, release
    release.set()


def _wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + PATIENCE_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.01)


def _details(error: grpc.RpcError) -> dict[str, object]:
    status = rpc_status.from_call(error)
    assert status is not None, f"no rich status on {error.code()}: {error.details()}"
    out = {}
    for detail in status.details:
        for kind in (error_details_pb2.ErrorInfo, error_details_pb2.RetryInfo):
            message = kind()
            if detail.Unpack(message):
                out[kind.DESCRIPTOR.name] = message
    return out


def _assert_too_many_requests(error: grpc.RpcError) -> None:
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
    details = _details(error)
    assert details["ErrorInfo"].reason == "TOO_MANY_REQUESTS"
    assert details["ErrorInfo"].domain == "assay.v1"
    hint = details["RetryInfo"].retry_delay.ToTimedelta().total_seconds()
    assert hint == REASONS["TOO_MANY_REQUESTS"].retry_after and hint > 0
    assert "max_concurrent_rpcs" in error.details()


def _append_stream() -> Iterator[assay_pb2.AppendPoolItemsRequest]:
    yield assay_pb2.AppendPoolItemsRequest(header=assay_pb2.AppendHeader(
        pool_id="p", arrays=[assay_pb2.ArrayHeader(
            name="probs", dtype=tensor_pb2.DATA_TYPE_FP32, shape=[1, 2])]))


def test_over_the_limit_calls_get_error_info_and_retry_info(server_factory, held):
    entered, release = held
    srv = server_factory(workers=1, max_concurrent_rpcs=2)
    request = assay_pb2.ListStrategiesRequest()
    with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as channel, \
            ThreadPoolExecutor(2) as pool:
        stub = assay_pb2_grpc.AssayServiceStub(channel)
        running = pool.submit(stub.ListStrategies, request, timeout=PATIENCE_S)
        _wait_for(lambda: len(entered) == 1, "the first call runs")
        queued = pool.submit(stub.ListStrategies, request, timeout=PATIENCE_S)
        _wait_for(lambda: srv.gate.in_flight == 2, "the second call is queued")

        # The only worker is held, so these answers come from the refusal lane: had
        # they queued for the worker, they would end DEADLINE_EXCEEDED instead.
        with pytest.raises(grpc.RpcError) as unary:
            stub.ListStrategies(request, timeout=PATIENCE_S / 2)
        _assert_too_many_requests(unary.value)
        with pytest.raises(grpc.RpcError) as streaming:
            stub.AppendPoolItems(_append_stream(), timeout=PATIENCE_S / 2)
        _assert_too_many_requests(streaming.value)
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=PATIENCE_S / 2)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        assert not running.done() and len(entered) == 1

        release.set()
        assert running.result(PATIENCE_S).strategies
        assert queued.result(PATIENCE_S).strategies
        _wait_for(lambda: srv.gate.in_flight == 0, "both calls gave their places back")
        assert stub.ListStrategies(request, timeout=PATIENCE_S).strategies
    assert srv.gate.refused == 2
    assert 'grpc_code="RESOURCE_EXHAUSTED",grpc_method="ListStrategies",' \
           'grpc_service="assay.v1.AssayService"} 1.0' in srv.metrics.render()


def test_a_call_cancelled_while_queued_gives_its_place_back(server_factory, held):
    entered, release = held
    srv = server_factory(workers=1, max_concurrent_rpcs=2)
    request = assay_pb2.ListStrategiesRequest()
    with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as channel, \
            ThreadPoolExecutor(1) as pool:
        stub = assay_pb2_grpc.AssayServiceStub(channel)
        running = pool.submit(stub.ListStrategies, request, timeout=PATIENCE_S)
        _wait_for(lambda: len(entered) == 1, "the first call runs")
        with pytest.raises(grpc.RpcError) as expired:
            stub.ListStrategies(request, timeout=0.5)  # queued behind the held call
        assert expired.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # Let the server see the cancellation before the worker frees up: then gRPC drops
        # the expired call without running its handler (were the server slower, it would
        # run it, and the test would merely not exercise that path).
        time.sleep(1.0)
        release.set()
        assert running.result(PATIENCE_S).strategies
        # The dropped call's place must come back all the same, or the server would shed
        # everything once enough calls had expired in its queue.
        _wait_for(lambda: srv.gate.in_flight == 0, "the expired call gave its place back")
        for _ in range(3):
            assert stub.ListStrategies(request, timeout=PATIENCE_S).strategies


def test_health_is_never_refused(server_factory, held):
    entered, release = held
    srv = server_factory(workers=2, max_concurrent_rpcs=1)
    with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as channel, \
            ThreadPoolExecutor(1) as pool:
        stub = assay_pb2_grpc.AssayServiceStub(channel)
        running = pool.submit(stub.ListStrategies, assay_pb2.ListStrategiesRequest(),
                              timeout=PATIENCE_S)
        _wait_for(lambda: len(entered) == 1, "the call runs")
        health = health_pb2_grpc.HealthStub(channel)
        for _ in range(5):
            answer = health.Check(health_pb2.HealthCheckRequest(), timeout=PATIENCE_S / 2)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        assert srv.gate.in_flight == 1 and srv.gate.refused == 0
        release.set()
        running.result(PATIENCE_S)
