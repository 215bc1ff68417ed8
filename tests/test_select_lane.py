"""Select runs on a lane of its own: ``max_concurrent_selects`` threads and a bounded
queue in front of them (``assay.server.edge.lanes.SelectLane``).

What is checked: Selects run only on the lane's threads and never more at once than
it has; other calls and health checks are answered while the lane and its queue are
full; a queued call whose client gave up frees its place for the next one; the
lane's own count, with and without gRPC's call state to ask; newcomers are refused
once the oldest queued call has waited ``max_select_wait_seconds``, and admitted again
once the queue has moved.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from assay.client import AssayError, Client
from assay.server.acquisition import selection
from assay.server.edge import lanes
from assay.server.edge.lanes import SelectLane

SEED = 4242


def _probs(n: int) -> np.ndarray:
    return np.random.default_rng(SEED).dirichlet(np.ones(4), size=n).astype(np.float32)


def test_selects_run_on_the_lane_and_never_more_than_its_threads(server_factory,
                                                                  monkeypatch):
    running, most, names = [0], [0], set()
    lock = threading.Lock()
    real = selection.select

    def watched(*args, **kwargs):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
            names.add(threading.current_thread().name.rsplit("_", 1)[0])
        try:
            time.sleep(0.02)  # long enough for calls to overlap if the lane let them
            return real(*args, **kwargs)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(selection, "select", watched)
    srv = server_factory(max_concurrent_selects=2, max_queued_selects=32)
    probs = _probs(30)
    entropy = -(probs.astype(np.float64) * np.log(probs.astype(np.float64))).sum(1)
    expected = np.argsort(-entropy, kind="stable")[:3]
    with Client(f"127.0.0.1:{srv.port}", timeout=60, retries=0) as c, \
            ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: c.select("entropy", 3, probs=probs), range(24)))
    assert all(sorted(r.indices.tolist()) == sorted(expected.tolist()) for r in results), \
        f"seed {SEED}"
    assert names == {"assay-select"}, names
    assert most[0] <= 2, f"{most[0]} selections ran at once on a lane of 2"


def _hold_and_queue_one(c: Client, pool: ThreadPoolExecutor, srv, entered: threading.Event,
                        probs: np.ndarray) -> tuple:
    """A Select holding the lane's one thread, and one queued behind it (their futures)."""
    first = pool.submit(c.select, "hold", 1, probs=probs)
    assert entered.wait(30)
    queued = pool.submit(c.select, "entropy", 1, probs=probs)
    deadline = time.monotonic() + 30
    while srv.lanes.selects.waiting < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    return first, queued


def test_other_calls_are_answered_while_the_lane_and_its_queue_are_full(server_factory,
                                                                        held_slot):
    gate, entered = held_slot
    srv = server_factory(max_concurrent_selects=1, max_queued_selects=1)
    probs = _probs(20)
    with Client(f"127.0.0.1:{srv.port}", timeout=60, retries=0) as c, \
            ThreadPoolExecutor(2) as pool:
        first, queued = _hold_and_queue_one(c, pool, srv, entered, probs)
        with pytest.raises(AssayError) as refused:
            c.select("entropy", 1, probs=probs)
        assert (refused.value.code, refused.value.reason) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_SELECTS")
        assert c.list_strategies()  # the shared workers still answer
        with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=10).status
        assert status == health_pb2.HealthCheckResponse.SERVING
        assert not first.done() and not queued.done()
        gate.set()
        assert first.result(30).indices.size == 1
        assert queued.result(30).indices.size == 1


def _call_state(client: str = "", statused: bool = False) -> SimpleNamespace:
    """Stands for gRPC's state of one call, as the lane reads it."""
    return SimpleNamespace(client=client, statused=statused)


def test_the_lane_counts_queued_calls_and_drops_the_ones_grpc_ended():
    lane = SelectLane(1, 2)
    started, release = threading.Event(), threading.Event()
    try:
        busy = lane.submit(lambda: (started.set(), release.wait(30)))
        assert started.wait(30)
        live, ended = _call_state(), _call_state()
        lane.submit(lambda state: None, ended)
        assert lane.admission() is None  # 1 running + 1 queued, of 1 + 2
        lane.submit(lambda state: None, live)
        assert lane.waiting == 2
        ended.client = "cancelled"  # its client went away while it waited
        assert lane.admission() is None and lane.waiting == 1
        finished = _call_state()
        lane.submit(lambda state: None, finished)
        finished.statused = True  # answered already (e.g. its deadline passed)
        assert lane.admission() is None and lane.waiting == 1
        lane.submit(lambda state: None, _call_state())
        assert lane.admission() is not None, "1 running + 2 live queued fill a lane of 1 + 2"
        assert "1 selections with 2 waiting" in lane.refusal().message
        release.set()
        busy.result(30)
        deadline = time.monotonic() + 30
        while lane.waiting and time.monotonic() < deadline:
            time.sleep(0.01)
        assert lane.admission() is None and lane.waiting == 0
    finally:
        release.set()
        lane.shutdown()


def test_without_a_call_state_a_queued_call_holds_its_place_until_it_runs():
    lane = SelectLane(1, 1)
    started, release = threading.Event(), threading.Event()
    try:
        lane.submit(lambda: (started.set(), release.wait(30)))
        assert started.wait(30)
        lane.submit(lambda: None)  # nothing to ask whether it is still live
        assert lane.admission() is not None
        release.set()
        deadline = time.monotonic() + 30
        while lane.admission() is not None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert lane.admission() is None
    finally:
        release.set()
        lane.shutdown()


def test_a_lane_needs_a_thread():
    with pytest.raises(ValueError):
        SelectLane(0, 4)
    with pytest.raises(ValueError):
        SelectLane(1, -1)
    with pytest.raises(ValueError):
        SelectLane(1, 4, -1.0)


class _Clock:
    """``time`` for the lane, on a clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.mark.parametrize("max_wait", [0.5, 0.0])
def test_newcomers_are_refused_once_the_oldest_queued_call_has_waited_too_long(
        monkeypatch, max_wait):
    clock = _Clock()
    monkeypatch.setattr(lanes, "time", clock)
    lane = SelectLane(1, 8, max_wait)
    started, release = threading.Event(), threading.Event()
    try:
        lane.submit(lambda: (started.set(), release.wait(30)))
        assert started.wait(30)
        cancelled, live = _call_state(), _call_state()
        lane.submit(lambda state: None, cancelled)
        clock.now += 0.3
        lane.submit(lambda state: None, live)
        assert lane.admission() is None
        clock.now += 0.3  # the head has waited 0.6 s, the next 0.3 s
        if not max_wait:  # no bound by time: only the count refuses
            assert lane.admission() is None
            return
        assert lane.admission() is lane.late_handler
        assert "max_select_wait_seconds" in lane.late().message
        cancelled.client = "cancelled"  # the head leaves; the oldest live one waited 0.3 s
        assert lane.admission() is None and lane.waiting == 1
        clock.now += 0.3
        assert lane.admission() is not None
        for _ in range(7):  # the count refuses with its own message, whatever the wait
            lane.submit(lambda state: None, _call_state())
        assert lane.admission() is lane.refusal_handler
        release.set()
        deadline = time.monotonic() + 30
        while lane.waiting and time.monotonic() < deadline:
            time.sleep(0.01)
        assert lane.admission() is None, "an empty queue admits whatever the clock says"
    finally:
        release.set()
        lane.shutdown()


def test_the_server_refuses_selects_behind_a_queue_that_has_waited_too_long(
        server_factory, held_slot):
    gate, entered = held_slot
    srv = server_factory(max_concurrent_selects=1, max_queued_selects=8,
                         max_select_wait_seconds=0.3)
    probs = _probs(20)
    with Client(f"127.0.0.1:{srv.port}", timeout=60, retries=0) as c, \
            ThreadPoolExecutor(2) as pool:
        first, queued = _hold_and_queue_one(c, pool, srv, entered, probs)
        time.sleep(0.4)  # the queued call has now waited longer than 0.3 s
        with pytest.raises(AssayError) as refused:
            c.select("entropy", 1, probs=probs)
        assert (refused.value.code, refused.value.reason) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_SELECTS")
        assert "max_select_wait_seconds" in refused.value.message
        gate.set()
        assert first.result(30).indices.size == 1
        assert queued.result(30).indices.size == 1
        assert c.select("entropy", 1, probs=probs).indices.size == 1
