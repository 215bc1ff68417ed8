"""Load shedding that a client can act on: at most ``max_concurrent_rpcs`` calls in flight.

grpcio's own ``maximum_concurrent_rpcs`` refuses the excess with a bare
``RESOURCE_EXHAUSTED: Concurrent RPC limit exceeded!``: no details, so a program
cannot tell "come back later" from "your message is too large" without parsing
text. ``AdmissionGate`` replaces it with the same count and the same limit, and
refuses with the rich status every other refusal has: ``ErrorInfo`` reason
``TOO_MANY_REQUESTS`` and a ``RetryInfo`` back-off hint.

What is counted is what grpcio counts: a call is in flight from the moment it is
accepted until it ends, whether it is running or still queued for a worker (so
the limit sheds load *before* it queues). Health
checks are neither counted nor refused: a probe must be answered however busy
the server is.

Refusals run on a small thread lane of their own (grpcio's
``experimental_thread_pool``), so a refusal is answered at once instead of waiting
for a worker behind the very calls that filled the server. An admitted call's
place is given back when its behavior ends (a streaming response: when the stream
ends), or, for a call that gRPC drops before running it (cancelled while queued),
when its handler is released with the pool task that carried it.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from typing import Any

import grpc

from assay.vocab.errors import ResourceExhausted

from .interceptors import abort_with, rich_status
from .metrics import Metrics

#: Method prefixes that are never counted nor refused.
EXEMPT_PREFIXES = ("/grpc.health.v1.Health/",)


class _Ticket:
    """One admitted call's place in the count; released exactly once."""

    __slots__ = ("_gate", "_released")

    def __init__(self, gate: AdmissionGate):
        self._gate = gate
        self._released = False

    def release(self) -> None:
        gate = self._gate
        with gate._lock:
            if not self._released:
                self._released = True
                gate._in_flight -= 1


class AdmissionGate:
    """Counts in-flight calls and refuses the excess with ErrorInfo and RetryInfo.

    Parameters
    ----------
    limit
        Calls in flight (running or queued for a worker) before new ones are refused:
        ``max_concurrent_rpcs``.
    refusal_threads
        Threads of the lane that answers refusals.
    metrics
        Where refused calls are counted (as RESOURCE_EXHAUSTED), like every other call.
    exempt
        Method-name prefixes that are never counted nor refused (health checks).
    """

    def __init__(self, limit: int, *, metrics: Metrics | None = None,
                 exempt: Iterable[str] = EXEMPT_PREFIXES, refusal_threads: int = 2,
                 thread_name_prefix: str = "assay"):
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        self.limit = limit
        self.exempt = tuple(exempt)
        self.metrics = metrics
        self._lock = threading.Lock()
        self._in_flight = 0
        self.refused = 0
        self.refusals = futures.ThreadPoolExecutor(
            max_workers=refusal_threads, thread_name_prefix=f"{thread_name_prefix}-refuse")
        self.interceptor = GateInterceptor(self)

    @property
    def in_flight(self) -> int:
        """Admitted calls that have not ended yet (running or queued)."""
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

    def shutdown(self) -> None:
        """Stop the refusal lane (with the server)."""
        self.refusals.shutdown(wait=False, cancel_futures=True)

    def refusal(self) -> ResourceExhausted:
        """The error a refused call gets (its RetryInfo hint is the reason's)."""
        return ResourceExhausted(
            f"the server already has {self.limit} calls in flight (max_concurrent_rpcs); "
            "retry after the RetryInfo delay, with backoff", reason="TOO_MANY_REQUESTS")


class GateInterceptor(grpc.ServerInterceptor):
    """Admits or refuses each call as it arrives; runs on gRPC's polling thread.

    Put it first among the server's interceptors, so that what it counts is the
    whole handling of a call, and the lane another interceptor chose for a
    behavior (``experimental_thread_pool``) is kept.
    """

    def __init__(self, gate: AdmissionGate):
        self.gate = gate
        self._refusal = refusal_handler(gate.refusal(), gate.refusals)

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(self.gate.exempt):
            return handler
        ticket = self.gate.admit(method)
        if ticket is None:
            return self._refusal
        return _admitted_handler(handler, ticket)


def refusal_handler(error: ResourceExhausted,
                    lane: futures.ThreadPoolExecutor) -> grpc.RpcMethodHandler:
    """``error``'s rich status, answered on ``lane`` whatever the method.

    Shaped as request-streaming, so that it never waits for a request message: it
    answers before reading anything. Made once per refusal: under overload every
    refused call costs CPU that the admitted ones need, and the handler and the
    status (three packed messages) were a tenth of a refusal's Python.
    """
    status = rich_status(error)

    def refuse(request_iterator: Any, context: grpc.ServicerContext) -> None:
        abort_with(context, error, status)

    refuse.experimental_thread_pool = lane
    return grpc.stream_unary_rpc_method_handler(refuse)


def _admitted_handler(handler: grpc.RpcMethodHandler, ticket: _Ticket) -> grpc.RpcMethodHandler:
    """``handler`` with a behavior that gives the ticket back when the call ends."""
    codecs = {"request_deserializer": handler.request_deserializer,
              "response_serializer": handler.response_serializer}
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(
            _unary(handler.unary_unary, ticket), **codecs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(
            _unary(handler.stream_unary, ticket), **codecs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            _streaming(handler.unary_stream, ticket), **codecs)
    return grpc.stream_stream_rpc_method_handler(
        _streaming(handler.stream_stream, ticket), **codecs)


def _unary(behavior: Callable, ticket: _Ticket) -> Callable:
    def run(request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return behavior(request, context)
        finally:
            ticket.release()
    return _keep_lane(run, behavior, ticket)


def _streaming(behavior: Callable, ticket: _Ticket) -> Callable:
    def run(request: Any, context: grpc.ServicerContext) -> Iterator:
        try:
            yield from behavior(request, context)
        finally:
            ticket.release()
    return _keep_lane(run, behavior, ticket)


def _keep_lane(run: Callable, behavior: Callable, ticket: _Ticket) -> Callable:
    """Carry the inner behavior's lane over, and make sure the ticket comes back.

    gRPC never runs the behavior of a call cancelled while it was queued; its pool
    task ends without it and drops the last reference to ``run``, which releases
    the ticket then.
    """
    pool = getattr(behavior, "experimental_thread_pool", None)
    if pool is not None:
        run.experimental_thread_pool = pool
    weakref.finalize(run, ticket.release)
    return run
