"""The Python client's AssayError carries code, reason, field and retry delay.

Against a real server: a bad argument names its field, a missing pool its reason, a
call over the concurrency limit its back-off hint; a transport error has no reason.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from assay.client import AssayError, Client
from assay.client.errors import decode_status
from assay.server.edge.servicer import AssayServicer

SEED = 20261201


def test_invalid_argument_names_reason_and_field(client):
    rng = np.random.default_rng(SEED)
    probs = rng.dirichlet(np.ones(3), size=5).astype(np.float32)
    probs[2] *= 1.5  # the row sums to 1.5, not 1
    with pytest.raises(AssayError) as err:
        client.select("entropy", 2, probs=probs)
    e = err.value
    assert e.code == grpc.StatusCode.INVALID_ARGUMENT, f"seed {SEED}: {e}"
    assert (e.reason, e.field, e.retry_delay) == ("NOT_PROBABILITIES", "inputs.probs", None)
    assert "NOT_PROBABILITIES" in str(e)


def test_not_found_has_its_reason(client):
    with pytest.raises(AssayError) as err:
        client.get_pool("no-such-pool")
    assert err.value.code == grpc.StatusCode.NOT_FOUND
    assert err.value.reason == "POOL_NOT_FOUND"
    assert err.value.retry_delay is None


def test_over_the_limit_carries_the_retry_delay(server_factory, monkeypatch):
    release, entered = threading.Event(), threading.Event()
    real = AssayServicer.ListStrategies

    def held(self, request, context):
        entered.set()
        assert release.wait(30), "the test never released the held call"
        return real(self, request, context)

    monkeypatch.setattr(AssayServicer, "ListStrategies", held)
    srv = server_factory(max_concurrent_rpcs=1)
    try:
        with Client(f"127.0.0.1:{srv.port}", timeout=30, retries=0) as c, \
                ThreadPoolExecutor(1) as pool:
            first = pool.submit(c.list_strategies)
            assert entered.wait(30)
            with pytest.raises(AssayError) as err:
                c.get_pool("any")
            e = err.value
            assert (e.code, e.reason, e.field) == (
                grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_REQUESTS", "")
            assert e.retry_delay is not None and e.retry_delay > 0
            release.set()
            assert first.result(30)
    finally:
        release.set()


def test_a_transport_error_has_code_but_no_reason():
    with Client("127.0.0.1:1", timeout=2, retries=0) as c, pytest.raises(AssayError) as err:
        c.list_strategies()
    assert err.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    assert (err.value.reason, err.value.field, err.value.retry_delay) == ("", "", None)


def _packed(*messages) -> list[any_pb2.Any]:
    out = []
    for m in messages:
        a = any_pb2.Any()
        a.Pack(m)
        out.append(a)
    return out


def test_decoding_ignores_other_domains_and_reads_sub_second_delays():
    delay = error_details_pb2.RetryInfo()
    delay.retry_delay.FromNanoseconds(1_250_000_000)
    status = status_pb2.Status(code=code_pb2.UNAVAILABLE, message="m", details=_packed(
        error_details_pb2.ErrorInfo(reason="OTHER", domain="example.com"),
        error_details_pb2.ErrorInfo(reason="SHARD_UNAVAILABLE", domain="assay.v1",
                                    metadata={"field": "pool_id"}),
        delay))
    assert decode_status(status) == {"reason": "SHARD_UNAVAILABLE", "field": "pool_id",
                                     "retry_delay": 1.25}
    assert decode_status(None) == {"reason": "", "field": "", "retry_delay": None}


def test_an_unexpected_failure_is_internal_with_its_reason(server_factory, monkeypatch):
    def broken(self, request, context):
        raise RuntimeError("secret detail /etc/passwd")

    monkeypatch.setattr(AssayServicer, "ListStrategies", broken)
    srv = server_factory()
    with Client(f"127.0.0.1:{srv.port}", timeout=30, retries=0) as c, \
            pytest.raises(AssayError) as err:
        c.list_strategies()
    e = err.value
    assert (e.code, e.reason, e.retry_delay) == (grpc.StatusCode.INTERNAL, "INTERNAL", None)
    assert "RuntimeError" in e.message and "secret" not in e.message
