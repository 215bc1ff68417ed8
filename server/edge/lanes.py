"""Thread lanes: health checks and client streams never wait behind other work.

grpcio's synchronous server runs every call on one worker pool, so calls that
wait on something else (a client that streams slowly, or not at all) can take
every worker, and then nothing is answered, health checks included: a kubelet
would restart a server that is merely being held. grpcio lets a method's
behavior name its own pool (``experimental_thread_pool``, as grpcio's own health
servicer does for ``Watch``), and ``LaneInterceptor`` uses that to give

* ``grpc.health.v1.Health/Check`` a small lane of its own, so it is answered
  however busy the workers are;
* every client-streaming call (``AppendPoolItems``, ``RegisterModel``, reflection)
  the *stream lane*: its thread waits for the client, not a worker. At most
  ``max_streams`` run at once (beyond them, RESOURCE_EXHAUSTED ``TOO_MANY_STREAMS``
  at once, so idle streams cannot fill ``max_concurrent_rpcs`` either), and each
  reads its messages through ``streams.BoundedStream``: one that goes quiet for
  ``idle_timeout`` seconds, or runs past the server's ceiling, is ended with
  DEADLINE_EXCEEDED and stores nothing.

The stream lane has as many threads as calls may be in flight, so an admitted
stream never queues for a thread; the cap, not the pool size, bounds them.

Select runs on a lane of its own too (``SelectLane``): as many threads as
selections may compute at once, and a bounded queue in front of them.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc

from assay.vocab.errors import AssayError, ResourceExhausted

from .admission import refusal_handler
from .interceptors import abort_with
from .metrics import Metrics
from .streams import BoundedStream

HEALTH_CHECK = "/grpc.health.v1.Health/Check"
SELECT = "/assay.v1.AssayService/Select"


class Foreground:
    """The Selects running now, or just now: what a trainer is waiting on.

    An upload is bulk work whose rate nobody waits on call by call; on a server
    with few cores, its receive, checksum and write steps take the CPU and the
    interpreter lock from Selects running at the same time (a Select's p99 grew
    more than tenfold while 100 MB uploads streamed). Each upload stream
    therefore asks for its next message, every 4 MiB it reads, only once no
    Select has run for ``quiet`` seconds, or after a short wait (``wait_idle``).

    Why "for ``quiet`` seconds" and not "once none runs": at a few hundred Selects
    a second the lane is empty for a few milliseconds between calls, and an upload
    that took each of those gaps ran at 70-90 MB/s, the Selects arriving during
    each 4 MiB step queued behind it, and their p99 grew sixfold. Waiting for a
    pause in the traffic leaves uploads at full speed when Selects are few, and
    at one message per wait when they are not.
    """

    def __init__(self, quiet: float = 0.02):
        self.quiet = quiet
        self._idle = threading.Condition(threading.Lock())
        self._running = 0
        self._last_end = -math.inf  # time.monotonic() when the last Select ended

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Count the body as a running Select."""
        with self._idle:
            self._running += 1
        try:
            yield
        finally:
            with self._idle:
                self._running -= 1
                self._last_end = time.monotonic()
                if not self._running:
                    self._idle.notify_all()

    def wait_idle(self, timeout: float) -> None:
        """Return once no Select has run for ``quiet`` seconds, or after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while (now := time.monotonic()) < deadline:
                if self._running:
                    self._idle.wait(deadline - now)
                    continue
                calm = self._last_end + self.quiet - now
                if calm <= 0:
                    return
                self._idle.wait(min(calm, deadline - now))


class SelectLane(futures.ThreadPoolExecutor):
    """The threads that run Select (``running`` of them) and a queue in front of them:
    a newcomer is refused (TOO_MANY_SELECTS, at once) when ``queued`` calls wait
    already, or when the oldest of them has waited ``max_wait`` seconds.

    Why a lane and not the shared workers: a small Select is bound by the Python it
    runs under the interpreter lock, and every thread that takes one up (gRPC reads
    the request on it, hands it over, then the handler runs) competes for that lock
    and for the cache. With Selects on the eight shared workers, the server did less
    per second of CPU the more calls were in flight; on a lane of a few threads,
    the other calls wait in this queue, before gRPC has read them, and cost
    nothing (docs/benchmarks.md). So the lane's threads are the selection slots.

    Why the queue is bounded by its wait as well as its length: a count alone is a
    wait that depends on the calls. A hundred small Selects drain in a tenth of a
    second, and a server stalled for half a second (a host's hiccup, a page-in) finds
    more than that waiting when it resumes: at 60 % of its rate it refused one call in
    twenty after each such stall, although the queue would drain in a quarter of a
    second. A hundred large Selects, on the other hand, are minutes of work. So the
    count is large (memory for the requests the transport holds, and a limit on a
    flood) and the wait is what sheds load: once the head of the queue has waited
    ``max_wait``, the server is behind by that much and newcomers are refused until
    it catches up. (The head's age, not an estimate from past calls' durations: a
    stall would inflate the estimate just when the queue needs to absorb it.)

    A queued call its client cancelled, or whose deadline passed, frees its place
    as soon as a newcomer needs it: ``admission`` asks gRPC's state of each queued call
    whether it is still live. (That state is gRPC's own, found among the arguments
    of the task it submits; where it cannot be found, a queued call holds its place
    until a thread reaches it and gRPC skips it.)
    """

    def __init__(self, running: int, queued: int, max_wait: float = 0.0):
        if running < 1 or queued < 0 or max_wait < 0:
            raise ValueError(f"need running >= 1, queued >= 0 and max_wait >= 0, got "
                             f"{running}, {queued}, {max_wait}")
        super().__init__(max_workers=running, thread_name_prefix="assay-select")
        self.running, self.queued, self.max_wait = running, queued, max_wait or math.inf
        self.refusals = futures.ThreadPoolExecutor(1, thread_name_prefix="assay-select-refuse")
        #: What a call beyond the queue's length, or behind a wait too long, gets (each
        #: made once: ``refusal_handler``).
        self.refusal_handler = refusal_handler(self.refusal(), self.refusals)
        self.late_handler = refusal_handler(self.late(), self.refusals)
        self._lock = threading.Lock()
        self._busy = 0
        #: Calls submitted and not started yet -> (gRPC's state of each or None: unknown,
        #: when it was queued); in the order they were queued.
        self._waiting: dict[object, tuple[Any, float]] = {}

    def submit(self, fn, /, *args, **kwargs):
        key = object()
        state = next((a for a in args if hasattr(a, "client") and hasattr(a, "statused")),
                     None)
        with self._lock:
            self._waiting[key] = (state, time.monotonic())

        def run():
            with self._lock:
                self._waiting.pop(key, None)
                self._busy += 1
            try:
                return fn(*args, **kwargs)
            finally:
                with self._lock:
                    self._busy -= 1

        return super().submit(run)

    @property
    def waiting(self) -> int:
        """Calls queued for a thread (live or not yet found dead)."""
        with self._lock:
            return len(self._waiting)

    def admission(self) -> grpc.RpcMethodHandler | None:
        """None when a new call may queue, else the refusal it gets (too many waiting, or
        waiting too long); drops queued calls gRPC has ended."""
        with self._lock:
            if not self._waiting and self._busy < self.running:
                return None
            now = time.monotonic()
            if self._queue_ok(now):
                return None
            for key, (state, _) in list(self._waiting.items()):
                if state is not None and (state.client == "cancelled" or state.statused):
                    del self._waiting[key]
            if self._queue_ok(now):
                return None
            if self._busy + len(self._waiting) >= self.running + self.queued:
                return self.refusal_handler
            return self.late_handler

    def _queue_ok(self, now: float) -> bool:
        if self._busy + len(self._waiting) >= self.running + self.queued:
            return False
        head = next(iter(self._waiting.values()), None)
        return head is None or now - head[1] < self.max_wait

    def refusal(self) -> ResourceExhausted:
        return ResourceExhausted(
            f"the server is already running {self.running} selections with "
            f"{self.queued} waiting (max_concurrent_selects, max_queued_selects); "
            "retry with backoff", reason="TOO_MANY_SELECTS")

    def late(self) -> ResourceExhausted:
        return ResourceExhausted(
            f"the selections waiting for one of the server's {self.running} threads have "
            f"waited {self.max_wait:g} s already (max_select_wait_seconds): the server is "
            "behind; retry with backoff", reason="TOO_MANY_SELECTS")

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self.refusals.shutdown(wait=False, cancel_futures=True)
        super().shutdown(wait=wait, cancel_futures=cancel_futures)


class Lanes:
    """The health, Select and stream lanes of one server, and the stream cap.

    Parameters
    ----------
    max_streams
        Client-streaming calls running at once (``max_concurrent_streams``).
    stream_threads
        Threads of the stream lane; at least ``max_streams`` (the server passes
        ``max_concurrent_rpcs``, so an admitted stream never waits for a thread).
    idle_timeout
        Seconds a stream may go without a message (``stream_idle_timeout_seconds``).
    ceiling
        Seconds a stream may run in all (``max_deadline_seconds``; 0: no ceiling).
    pace
        Run before each message of a stream is read (``BoundedStream``): the server
        passes a short wait for the selections running to finish, so that uploads
        use the gaps between them.
    selects
        Select's lane; None: Select runs on the server's workers.
    """

    def __init__(self, *, max_streams: int, stream_threads: int, idle_timeout: float,
                 ceiling: float = 0.0, metrics: Metrics | None = None,
                 health_threads: int = 2, pace: Callable[[], None] | None = None,
                 selects: SelectLane | None = None):
        if max_streams < 1:
            raise ValueError(f"max_streams must be >= 1, got {max_streams}")
        self.max_streams = max_streams
        self.idle_timeout = idle_timeout
        self.ceiling = ceiling
        self.metrics = metrics
        self.pace = pace
        self.selects = selects
        self.health = futures.ThreadPoolExecutor(health_threads,
                                                 thread_name_prefix="assay-health")
        self.streams = futures.ThreadPoolExecutor(max(stream_threads, max_streams),
                                                  thread_name_prefix="assay-stream")
        self._lock = threading.Lock()
        self._running = 0
        self.interceptor = LaneInterceptor(self)

    @property
    def running_streams(self) -> int:
        """Client-streaming calls running now."""
        with self._lock:
            return self._running

    def _enter(self) -> bool:
        with self._lock:
            if self._running >= self.max_streams:
                return False
            self._running += 1
            return True

    def _leave(self) -> None:
        with self._lock:
            self._running -= 1

    def refusal(self) -> ResourceExhausted:
        return ResourceExhausted(
            f"the server is already receiving {self.max_streams} client streams "
            "(max_concurrent_streams); retry after the RetryInfo delay, with backoff",
            reason="TOO_MANY_STREAMS")

    def shutdown(self) -> None:
        """Stop taking work; threads still waiting on a client end with their calls."""
        self.health.shutdown(wait=False, cancel_futures=True)
        self.streams.shutdown(wait=False, cancel_futures=True)
        if self.selects is not None:
            self.selects.shutdown(wait=False, cancel_futures=True)


class LaneInterceptor(grpc.ServerInterceptor):
    """Puts health checks and client streams on their lanes (see the module docstring).

    Install it outside the error interceptor, so the behaviors it tags are the ones
    grpcio runs, and errors the wrapped handlers raise are still mapped there.
    """

    def __init__(self, lanes: Lanes):
        self.lanes = lanes
        #: Select's handler as last tagged, and its tagging (the handler is the same
        #: object on every call, so it is tagged once).
        self._select: tuple[grpc.RpcMethodHandler | None, grpc.RpcMethodHandler | None] = (
            None, None)

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        selects = self.lanes.selects
        if method == SELECT and selects is not None and handler.unary_unary:
            refused = selects.admission()
            if refused is not None:
                if self.lanes.metrics is not None:
                    self.lanes.metrics.observe_rpc(method, "RESOURCE_EXHAUSTED", 0.0)
                return refused
            inner, tagged = self._select
            if inner is not handler:
                tagged = grpc.unary_unary_rpc_method_handler(
                    _on_lane(_delegate(handler.unary_unary), selects),
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer)
                self._select = (handler, tagged)
            return tagged
        codecs = {"request_deserializer": handler.request_deserializer,
                  "response_serializer": handler.response_serializer}
        if method == HEALTH_CHECK and handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _on_lane(_delegate(handler.unary_unary), self.lanes.health), **codecs)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                _on_lane(self._unary_response(handler.stream_unary, method),
                         self.lanes.streams), **codecs)
        if handler.stream_stream:
            return grpc.stream_stream_rpc_method_handler(
                _on_lane(self._stream_response(handler.stream_stream, method),
                         self.lanes.streams), **codecs)
        return handler

    def _refuse(self, context: grpc.ServicerContext, method: str, error: AssayError) -> None:
        if self.lanes.metrics is not None:
            self.lanes.metrics.observe_rpc(method, error.code_name, 0.0)
        abort_with(context, error)

    @contextlib.contextmanager
    def _bounded(self, request_iterator: Iterator, context: grpc.ServicerContext,
                 method: str) -> Iterator[BoundedStream]:
        """The call's place under the stream cap (refused beyond it), and its messages
        read with the idle limit and the ceiling; both given back when the call ends."""
        lanes = self.lanes
        if not lanes._enter():
            self._refuse(context, method, lanes.refusal())
        stream = None
        try:
            stream = BoundedStream(request_iterator, idle_timeout=lanes.idle_timeout,
                                   ceiling=lanes.ceiling, name=method.rsplit("/", 1)[-1],
                                   pace=lanes.pace)
            yield stream
        finally:
            if stream is not None:
                stream.close()
            lanes._leave()

    def _unary_response(self, behavior: Callable, method: str) -> Callable:
        def run(request_iterator: Iterator, context: grpc.ServicerContext) -> Any:
            with self._bounded(request_iterator, context, method) as stream:
                return behavior(stream, context)
        return run

    def _stream_response(self, behavior: Callable, method: str) -> Callable:
        def run(request_iterator: Iterator, context: grpc.ServicerContext) -> Iterator:
            with self._bounded(request_iterator, context, method) as stream:
                try:
                    yield from behavior(stream, context)
                except AssayError as error:  # no error interceptor maps bidi streams
                    self._refuse(context, method, error)
        return run


def _delegate(behavior: Callable) -> Callable:
    """A plain function calling ``behavior`` (a bound method cannot carry attributes)."""
    def run(request: Any, context: grpc.ServicerContext) -> Any:
        return behavior(request, context)
    return run


def _on_lane(behavior: Callable, pool: futures.ThreadPoolExecutor) -> Callable:
    behavior.experimental_thread_pool = pool
    return behavior
