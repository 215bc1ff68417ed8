"""Every refusal that the same request may retry carries RetryInfo, on a real server.

The concurrency limit has its own tests (test_admission.py); here: a full Select queue,
a full disk, and a shard actor that went away (UNAVAILABLE). Refusals that retrying
cannot cure carry no RetryInfo. The same hint travels as gRPC's server pushback, which a
service config's retries obey.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2

from assay.client import AssayError, Client
from assay.client.tensors import to_proto
from assay.server.acquisition import selection
from assay.server.edge.interceptors import PUSHBACK, pushback, to_status
from assay.server.edge.lanes import SelectLane
from assay.server.scaleout.cluster import ShardUnavailable
from assay.v1 import assay_pb2, assay_pb2_grpc
from assay.vocab.errors import REASONS, InvalidInput, ResourceExhausted

SEED = 1107


def _probs(n: int, classes: int = 4) -> np.ndarray:
    return np.random.default_rng(SEED).dirichlet(np.ones(classes), size=n).astype(np.float32)


def _refused(call, *args, **kwargs) -> AssayError:
    with pytest.raises(AssayError) as err:
        call(*args, **kwargs)
    return err.value


@pytest.fixture
def held_selection(monkeypatch):
    """(entered, release): the first selection waits for ``release`` once it has set
    ``entered``, so it holds the only slot; later ones run at once."""
    entered, release = threading.Event(), threading.Event()
    real = selection.select

    def held(*args, **kwargs):
        if not entered.is_set():
            entered.set()
            assert release.wait(60), "the test never released the held selection"
        return real(*args, **kwargs)

    monkeypatch.setattr(selection, "select", held)
    yield entered, release
    release.set()


def test_a_full_select_queue_carries_retry_info(server_factory, held_selection):
    entered, release = held_selection
    # No warm-up: its selections would be held too.
    srv = server_factory(max_concurrent_selects=1, max_queued_selects=0, warmup=False)
    probs = _probs(40)
    try:
        with Client(f"127.0.0.1:{srv.port}", timeout=60, retries=0) as c, \
                ThreadPoolExecutor(1) as pool:
            first = pool.submit(c.select, "entropy", 3, probs=probs)
            assert entered.wait(60)
            e = _refused(c.select, "margin", 3, probs=probs)
            assert (e.code, e.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED,
                                          "TOO_MANY_SELECTS"), e
            assert e.retry_delay == REASONS["TOO_MANY_SELECTS"].retry_after > 0
            release.set()
            assert first.result(60).indices.size == 3
    finally:
        release.set()


def test_a_full_disk_carries_retry_info_and_stores_nothing(server_factory):
    srv = server_factory(min_free_disk_bytes=1 << 62)  # more than any disk has free
    with Client(f"127.0.0.1:{srv.port}", timeout=60, retries=0) as c:
        c.create_pool("p")
        e = _refused(c.append, "p", probs=_probs(8))
        assert (e.code, e.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "DISK_FULL"), e
        assert e.retry_delay == REASONS["DISK_FULL"].retry_after > 0
        assert c.get_pool("p").item_count == 0


def test_refusals_that_retrying_cannot_cure_have_no_retry_info(server_factory):
    srv = server_factory(max_pool_items=4)
    with Client(f"127.0.0.1:{srv.port}", timeout=60, retries=0) as c:
        c.create_pool("p")
        e = _refused(c.append, "p", probs=_probs(8))
        assert (e.reason, e.retry_delay) == ("TOO_MANY_ITEMS", None), e


def test_an_unavailable_shard_carries_retry_info():
    # Sharded pools need Ray; the status the interceptor builds is the same either way.
    status = to_status(ShardUnavailable("a shard actor restarted; retry"))
    assert status.code == grpc.StatusCode.UNAVAILABLE.value[0]
    found = {}
    for detail in status.details:
        for kind in (error_details_pb2.ErrorInfo, error_details_pb2.RetryInfo):
            message = kind()
            if detail.Unpack(message):
                found[kind.DESCRIPTOR.name] = message
    assert found["ErrorInfo"].reason == "SHARD_UNAVAILABLE"
    delay = found["RetryInfo"].retry_delay.ToTimedelta().total_seconds()
    assert delay == REASONS["SHARD_UNAVAILABLE"].retry_after > 0


def test_pushback_follows_retry_info():
    """gRPC's own retries read the pushback: the RetryInfo hint, or -1 (never) for a
    RESOURCE_EXHAUSTED that retrying cannot cure; other codes carry none."""
    full = ResourceExhausted("full", reason="TOO_MANY_SELECTS")
    assert pushback(full) == str(round(REASONS["TOO_MANY_SELECTS"].retry_after * 1000))
    assert pushback(ResourceExhausted("too many", reason="TOO_MANY_ITEMS")) == "-1"
    assert pushback(InvalidInput("bad", field="budget")) is None
    assert pushback(ShardUnavailable("restarting")) == str(
        round(REASONS["SHARD_UNAVAILABLE"].retry_after * 1000))
    # A hint the call's deadline cannot wait out: the refusal itself, not a bare timeout.
    # (A retry needs time after the wait: the hint must fit in half the time left.)
    hint = REASONS["TOO_MANY_SELECTS"].retry_after
    assert pushback(full, remaining=hint) == "-1"
    assert pushback(full, remaining=hint * 1.99) == "-1"
    assert pushback(full, remaining=hint * 2) == str(round(hint * 1000))


def test_a_service_config_retry_waits_out_a_full_select_queue(server_factory, held_selection,
                                                             monkeypatch):
    """A channel whose service config retries RESOURCE_EXHAUSTED gets the refusal's
    pushback as trailing metadata and succeeds on the retry, with no loop of its own."""
    entered, release = held_selection
    refused = []
    real_admission = SelectLane.admission

    def counting(self):
        refusal = real_admission(self)
        if refusal is not None:
            refused.append(1)
        return refusal

    monkeypatch.setattr(SelectLane, "admission", counting)
    srv = server_factory(max_concurrent_selects=1, max_queued_selects=0, warmup=False)
    config = json.dumps({"methodConfig": [{
        "name": [{"service": "assay.v1.AssayService", "method": "Select"}],
        "retryPolicy": {"maxAttempts": 5, "initialBackoff": "0.1s", "maxBackoff": "1s",
                        "backoffMultiplier": 2,
                        "retryableStatusCodes": ["RESOURCE_EXHAUSTED"]}}]})
    request = assay_pb2.SelectRequest(strategy="entropy", budget=3,
                                      inputs=assay_pb2.Inputs(probs=to_proto(_probs(40))))
    with grpc.insecure_channel(f"127.0.0.1:{srv.port}", options=[
            ("grpc.service_config", config), ("grpc.enable_retries", 1)]) as channel, \
            ThreadPoolExecutor(2) as pool:
        stub = assay_pb2_grpc.AssayServiceStub(channel)
        first = pool.submit(stub.Select, request, timeout=60)
        assert entered.wait(60)
        second = pool.submit(stub.Select.with_call, request, timeout=60)
        deadline = time.monotonic() + 60
        while not refused and time.monotonic() < deadline:
            time.sleep(0.01)
        assert refused, f"the second Select was never refused (seed {SEED})"
        release.set()
        response, call = second.result(60)
        assert list(response.indices) == list(first.result(60).indices)
    # The attempt that succeeded carries no pushback; the refusal's was checked above.
    assert PUSHBACK not in dict(call.trailing_metadata() or ())


def test_a_refusal_carries_the_pushback_trailer(server_factory, held_selection):
    entered, release = held_selection
    srv = server_factory(max_concurrent_selects=1, max_queued_selects=0, warmup=False)
    request = assay_pb2.SelectRequest(strategy="entropy", budget=3,
                                      inputs=assay_pb2.Inputs(probs=to_proto(_probs(40))))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{srv.port}",
                                   options=[("grpc.enable_retries", 0)]) as channel, \
                ThreadPoolExecutor(1) as pool:
            stub = assay_pb2_grpc.AssayServiceStub(channel)
            first = pool.submit(stub.Select, request, timeout=60)
            assert entered.wait(60)
            with pytest.raises(grpc.RpcError) as err:
                stub.Select(request, timeout=60)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            trailers = dict(err.value.trailing_metadata())
            assert trailers[PUSHBACK] == str(round(REASONS["TOO_MANY_SELECTS"].retry_after
                                                   * 1000))
            release.set()
            first.result(60)
    finally:
        release.set()


def test_the_shipped_config_gives_a_short_call_the_refusal_not_a_timeout(server_factory,
                                                                       held_selection):
    """The client's shipped service config retries RESOURCE_EXHAUSTED, but a call with less
    time left than the RetryInfo delay is told -1 and gets TOO_MANY_SELECTS at once."""
    entered, release = held_selection
    srv = server_factory(max_concurrent_selects=1, max_queued_selects=0, warmup=False)
    probs = _probs(40)
    hint = REASONS["TOO_MANY_SELECTS"].retry_after
    try:
        with Client(f"127.0.0.1:{srv.port}", timeout=60) as held_client, \
                Client(f"127.0.0.1:{srv.port}", timeout=hint / 2) as short, \
                ThreadPoolExecutor(1) as pool:
            first = pool.submit(held_client.select, "entropy", 3, probs=probs)
            assert entered.wait(60)
            e = _refused(short.select, "margin", 3, probs=probs)
            assert (e.code, e.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED,
                                          "TOO_MANY_SELECTS"), e
            release.set()
            assert first.result(60).indices.size == 3
    finally:
        release.set()
