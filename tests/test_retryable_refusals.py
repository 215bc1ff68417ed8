"""Every refusal that the same request may retry carries RetryInfo, on a real server.

The concurrency limit has its own tests (test_admission.py); here: a full Select queue,
a full disk, and a shard actor that went away (UNAVAILABLE). Refusals that retrying
cannot cure carry no RetryInfo.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2

from assay.client import AssayError, Client
from assay.server.acquisition import selection
from assay.server.edge.interceptors import to_status
from assay.server.scaleout.cluster import ShardUnavailable
from assay.vocab.errors import REASONS

SEED = 1107


def _probs(n: int, classes: int = 4) -> np.ndarray:
    return np.random.default_rng(SEED).dirichlet(np.ones(classes), size=n).astype(np.float32)


def _refused(call, *args, **kwargs) -> AssayError:
    with pytest.raises(AssayError) as err:
        call(*args, **kwargs)
    return err.value


def test_a_full_select_queue_carries_retry_info(server_factory, monkeypatch):
    entered, release = threading.Event(), threading.Event()
    real = selection.select

    def held(*args, **kwargs):
        entered.set()
        assert release.wait(60), "the test never released the held selection"
        return real(*args, **kwargs)

    monkeypatch.setattr(selection, "select", held)
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
