"""Load shedding that a client can act on: at most ``max_concurrent_rpcs`` calls in flight.

grpcio's own ``maximum_concurrent_rpcs`` refuses the excess with a bare
``RESOURCE_EXHAUSTED: Concurrent RPC limit exceeded!``: no details, so a program
cannot tell "come back later" from "your message is too large" without parsing
text. ``AdmissionGate`` replaces it with the same count and the same limit, and
refuses with the rich status every other refusal has: ``ErrorInfo`` reason
``TOO_MANY_REQUESTS`` and a ``RetryInfo`` back-off hint.

What is counted is what grpcio counts: a call is in flight from the moment it is
handed to the worker pool until its pool task ends, whether it is running or
still queued for a worker (so the limit sheds load *before* it queues). Health
checks are neither counted nor refused: a probe must be answered however busy
the server is.

Two pieces work together, because an interceptor alone cannot do either job:

* ``GateInterceptor`` decides, when a call arrives (on gRPC's polling thread),
  whether it is admitted, and tags the handler it returns with a ticket.
* ``GateExecutor`` is the server's worker pool. It releases a ticket when the
  pool task that carries it ends (which also covers a call cancelled while still
  queued, whose handler gRPC never runs), and it runs refusals on a small lane of
  their own, so a refusal is answered at once instead of waiting behind the very
  calls that filled the server.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable
from concurrent import futures
from typing import Any

import grpc

from assay.server.errors import ResourceExhausted
from assay.server.interceptors import abort_with
from assay.server.metrics import Metrics

#: Method prefixes that are never counted nor refused.
EXEMPT_PREFIXES = ("/grpc.health.v1.Health/",)


class _Ticket:
    """One admitted call's place in the count; released exactly once."""

    __slots__ = ("_gate", "_released")

    def __init__(self, gate: AdmissionGate):
        self._gate = gate
        self._released = False

    def release(self, *_ignored: Any) -> None:
        gate = self._gate
        with gate._lock:
            if not self._released:
                self._released = True
                gate._in_flight -= 1


class _Admitted:
    """An admitted call's behavior, carrying its ticket so the pool can release it."""

    __slots__ = ("__weakref__", "behavior", "ticket")

    def __init__(self, behavior: Callable, ticket: _Ticket):
        self.behavior = behavior
        self.ticket = ticket

    def __call__(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self.behavior(request, context)


class _Refusal:
    """A refused call's behavior: the rich RESOURCE_EXHAUSTED, without reading the request."""

    __slots__ = ("error",)

    def __init__(self, error: ResourceExhausted):
        self.error = error

    def __call__(self, request_iterator: Any, context: grpc.ServicerContext) -> None:
        abort_with(context, self.error)


class AdmissionGate:
    """Counts in-flight calls and refuses the excess with ErrorInfo and RetryInfo.

    Parameters
    ----------
    limit
        Calls in flight (running or queued for a worker) before new ones are refused:
        ``max_concurrent_rpcs``.
    workers
        Threads of the worker pool (``workers``).
    metrics
        Where refused calls are counted (as RESOURCE_EXHAUSTED), like every other call.
    exempt
        Method-name prefixes that are never counted nor refused (health checks).
    """

    def __init__(self, limit: int, workers: int, *, metrics: Metrics | None = None,
                 exempt: Iterable[str] = EXEMPT_PREFIXES, thread_name_prefix: str = "assay"):
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        self.limit = limit
        self.exempt = tuple(exempt)
        self.metrics = metrics
        self._lock = threading.Lock()
        self._in_flight = 0
        self.refused = 0
        self.executor = GateExecutor(max_workers=workers, thread_name_prefix=thread_name_prefix)
        self.interceptor = GateInterceptor(self)

    @property
    def in_flight(self) -> int:
        """Admitted calls whose pool task has not ended yet."""
        with self._lock:
            return self._in_flight

    def admit(self, method: str) -> _Ticket | None:
        """A ticket for ``method``, or ``None`` when the server is full."""
        with self._lock:
            full = self._in_flight >= self.limit
            if full:
                self.refused += 1
            else:
                self._in_flight += 1
        if full:
            if self.metrics is not None:
                self.metrics.observe_rpc(method, "RESOURCE_EXHAUSTED", 0.0)
            return None
        return _Ticket(self)

    def refusal(self) -> ResourceExhausted:
        """The error a refused call gets (its RetryInfo hint is the reason's)."""
        return ResourceExhausted(
            f"the server already has {self.limit} calls in flight (max_concurrent_rpcs); "
            "retry after the RetryInfo delay, with backoff", reason="TOO_MANY_REQUESTS")


class GateInterceptor(grpc.ServerInterceptor):
    """Admits or refuses each call as it arrives; runs on gRPC's polling thread.

    Put it first among the server's interceptors, so that what it counts is the
    whole handling of a call.
    """

    def __init__(self, gate: AdmissionGate):
        self.gate = gate

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(self.gate.exempt):
            return handler
        ticket = self.gate.admit(method)
        if ticket is None:
            # Shaped as request-streaming whatever the method is, so that the refusal
            # never waits for the request message: it answers before reading anything.
            return grpc.stream_unary_rpc_method_handler(_Refusal(self.gate.refusal()))
        admitted = _rebuild(handler, lambda behavior: _Admitted(behavior, ticket))
        # Backstop: should a handler ever be dropped without its pool task (a call that
        # died before it was handed over), the count still comes back.
        weakref.finalize(_behavior_of(admitted), ticket.release)
        return admitted


class GateExecutor(futures.ThreadPoolExecutor):
    """The server's worker pool: releases tickets when tasks end, runs refusals apart."""

    def __init__(self, max_workers: int, thread_name_prefix: str = "assay", *,
                 refusal_threads: int = 2):
        super().__init__(max_workers=max_workers, thread_name_prefix=thread_name_prefix)
        self._refusals = futures.ThreadPoolExecutor(
            max_workers=refusal_threads, thread_name_prefix=f"{thread_name_prefix}-refuse")

    def submit(self, fn, /, *args, **kwargs):
        for arg in args:
            if isinstance(arg, _Refusal):
                return self._refusals.submit(fn, *args, **kwargs)
            if isinstance(arg, _Admitted):
                # A lane the wrapped behavior names (``lanes.LaneInterceptor``), as grpcio
                # itself honours ``experimental_thread_pool`` on an unwrapped behavior.
                lane = getattr(arg.behavior, "experimental_thread_pool", None)
                submit = (lane.submit if isinstance(lane, futures.ThreadPoolExecutor)
                          else super().submit)
                future = submit(fn, *args, **kwargs)
                future.add_done_callback(arg.ticket.release)
                return future
        return super().submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._refusals.shutdown(wait=wait, cancel_futures=cancel_futures)
        super().shutdown(wait=wait, cancel_futures=cancel_futures)


def _behavior_of(handler: grpc.RpcMethodHandler) -> Callable:
    return (handler.unary_unary or handler.unary_stream or handler.stream_unary
            or handler.stream_stream)


def _rebuild(handler: grpc.RpcMethodHandler,
             wrap: Callable[[Callable], Callable]) -> grpc.RpcMethodHandler:
    """``handler`` with its behavior wrapped, keeping its arity and (de)serializers."""
    codecs = {"request_deserializer": handler.request_deserializer,
              "response_serializer": handler.response_serializer}
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(wrap(handler.unary_unary), **codecs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(wrap(handler.unary_stream), **codecs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(wrap(handler.stream_unary), **codecs)
    return grpc.stream_stream_rpc_method_handler(wrap(handler.stream_stream), **codecs)
