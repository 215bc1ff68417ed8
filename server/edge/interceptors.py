"""The one place where domain errors become gRPC statuses, and the call log.

Handlers raise ``AssayError`` subclasses; ``ErrorInterceptor`` maps each to its status
code with ``google.rpc`` details (``ErrorInfo`` with a stable reason, ``BadRequest``
naming the offending field for invalid arguments, and ``RetryInfo`` with a back-off
hint for refusals the same request may retry), and turns anything unexpected into
INTERNAL, with reason ``INTERNAL``, without leaking a traceback (which is logged).

``CallLog``, the outermost interceptor, writes one line per call on the
``assay.server.rpc`` logger: at INFO, at DEBUG for health checks and reflection.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from assay.vocab.errors import DOMAIN, AssayError, InvalidInput

from .metrics import CallRecord, Metrics, note_error, recording

log = logging.getLogger("assay.server")
rpc_log = logging.getLogger("assay.server.rpc")

__all__ = ["DOMAIN", "CallLog", "ErrorInterceptor", "abort_with", "rich_status", "to_status"]


def to_status(error: AssayError) -> status_pb2.Status:
    """Build the rich ``google.rpc.Status`` of a domain error."""
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN)
    if error.field:
        info.metadata["field"] = error.field
    details: list = [info]
    if isinstance(error, InvalidInput):
        details.append(error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=error.field or "",
                                                        description=error.message)]))
    if error.retry_after is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(round(error.retry_after * 1e9))
        details.append(error_details_pb2.RetryInfo(retry_delay=delay))
    packed = []
    for d in details:
        a = any_pb2.Any()
        a.Pack(d)
        packed.append(a)
    return status_pb2.Status(code=code_pb2.Code.Value(error.code_name), message=error.message,
                             details=packed)


#: gRPC's server pushback (gRFC A6): a client whose service config retries the code waits
#: this many milliseconds before the next attempt, or does not retry when it is negative.
PUSHBACK = "grpc-retry-pushback-ms"


def pushback(error: AssayError, remaining: float | None = None) -> str | None:
    """The pushback a refusal carries, so gRPC's own retries follow ``RetryInfo``.

    A ``retryPolicy`` can only name status codes, and RESOURCE_EXHAUSTED is both "come
    back later" (the server is full) and "this will never fit" (a pool over its
    limit). The hint of the first becomes the retry delay; the second says "-1", do
    not retry, so ``protos/assay/v1/service_config.json`` may list the code safely.
    So does a hint longer than half the call's ``remaining`` seconds: gRPC waits a
    pushback out even past the deadline, and a retry needs time of its own, so the
    caller would get a bare DEADLINE_EXCEEDED instead of this refusal and its reason.
    """
    if error.retry_after is not None:
        if remaining is not None and error.retry_after > remaining / 2:
            return "-1"
        return str(max(0, round(error.retry_after * 1000)))
    if error.code_name == "RESOURCE_EXHAUSTED":
        return "-1"
    return None


def rich_status(error: AssayError) -> grpc.Status:
    """The status ``abort_with`` ends a call with for ``error``, before its pushback."""
    return rpc_status.to_status(to_status(error))


def abort_with(context: grpc.ServicerContext, error: AssayError,
               status: grpc.Status | None = None) -> None:
    """End the call with the rich status of ``error`` (raises, as ``context.abort`` does);
    ``status``: its ``rich_status``, when built already (a refusal, made once)."""
    note_error(error.reason, error.message)
    status = rich_status(error) if status is None else status
    if (delay := pushback(error, context.time_remaining())) is not None:
        status = status._replace(trailing_metadata=(*status.trailing_metadata, (PUSHBACK, delay)))
    context.abort_with_status(status)


class ErrorInterceptor(grpc.ServerInterceptor):
    """Maps ``AssayError`` to statuses and records per-method counts and latency."""

    def __init__(self, metrics: Metrics | None = None):
        self.metrics = metrics
        #: method -> (the handler last wrapped, its wrapping): a registered method's
        #: handler is the same object on every call, so it is wrapped once.
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        if handler.unary_unary:
            wrapped = grpc.unary_unary_rpc_method_handler(
                self._wrap(handler.unary_unary, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        elif handler.stream_unary:
            wrapped = grpc.stream_unary_rpc_method_handler(
                self._wrap(handler.stream_unary, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        else:
            return handler
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, behavior: Callable, method: str) -> Callable:
        def wrapper(request, context: grpc.ServicerContext):
            started = time.perf_counter()
            code = "OK"
            try:
                return behavior(request, context)
            except AssayError as error:
                code = error.code_name
                abort_with(context, error)
            except grpc.RpcError:
                code = _code_name(context)
                raise
            except Exception as error:
                # abort() raises a bare Exception after setting the status; keep that status.
                if context.code() not in (None, grpc.StatusCode.OK):
                    code = _code_name(context)
                    raise
                code = "INTERNAL"
                log.exception("%s failed", method)
                abort_with(context, AssayError(f"internal error: {type(error).__name__}"))
            finally:
                if self.metrics is not None:
                    self.metrics.observe_rpc(method, code, time.perf_counter() - started)
        return wrapper


def _code_name(context: grpc.ServicerContext) -> str:
    code = context.code()
    return code.name if code is not None else "UNKNOWN"


#: Methods logged at DEBUG: probes and tooling, many a minute, nothing an operator reads.
QUIET_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")

#: Metadata a caller may tag a call with, logged as ``request_id`` when the request has none.
REQUEST_ID_HEADER = "x-request-id"


class CallLog(grpc.ServerInterceptor):
    """One log line per call, and the errors counted by code and reason.

    The line names the method, the status code, the duration in ms, what the layers
    ``note()``d on the way (a Select's strategy, N, budget and backend, the pool), the
    request id (the request's ``request_id`` or an ``x-request-id`` header), and the
    peer; an error adds its ``ErrorInfo`` reason and message. The fields travel as the
    record's ``rpc`` attribute for a structured formatter (``--log-format json``).

    Put it first among the server's interceptors, so refusals by the admission gate and
    the stream lanes are logged too; the lane a behavior was given is kept.
    """

    def __init__(self, metrics: Metrics | None = None):
        self.metrics = metrics

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        codecs = {"request_deserializer": handler.request_deserializer,
                  "response_serializer": handler.response_serializer}
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, method), **codecs)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                self._unary(handler.stream_unary, method), **codecs)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._streaming(handler.unary_stream, method), **codecs)
        return grpc.stream_stream_rpc_method_handler(
            self._streaming(handler.stream_stream, method), **codecs)

    def _unary(self, behavior: Callable, method: str) -> Callable:
        def run(request: Any, context: grpc.ServicerContext) -> Any:
            with recording(method) as record:
                started = time.perf_counter()
                try:
                    response = behavior(request, context)
                except BaseException:
                    self._finish(record, context, started, request, None, failed=True)
                    raise
                self._finish(record, context, started, request, response, failed=False)
                return response
        return _same_lane(run, behavior)

    def _streaming(self, behavior: Callable, method: str) -> Callable:
        def run(request: Any, context: grpc.ServicerContext) -> Iterator:
            with recording(method) as record:
                started = time.perf_counter()
                try:
                    yield from behavior(request, context)
                except BaseException:
                    self._finish(record, context, started, request, None, failed=True)
                    raise
                self._finish(record, context, started, request, None, failed=False)
        return _same_lane(run, behavior)

    def _finish(self, record: CallRecord, context: grpc.ServicerContext, started: float,
                request: Any, response: Any, *, failed: bool) -> None:
        seconds = time.perf_counter() - started
        code = context.code()
        if code is None or (failed and code == grpc.StatusCode.OK):
            code_name = "UNKNOWN" if failed else "OK"
        else:
            code_name = code.name
        if code_name != "OK" and self.metrics is not None:
            self.metrics.observe_error(record.method, code_name, record.reason)
        level = logging.DEBUG if record.method.startswith(QUIET_PREFIXES) else logging.INFO
        if not rpc_log.isEnabledFor(level):
            return
        fields: dict[str, Any] = {"method": record.method.lstrip("/"), "code": code_name,
                                  "duration_ms": round(seconds * 1e3, 3)}
        for name in _REQUEST_FIELDS:
            value = getattr(request, name, None)
            if isinstance(value, str) and value:
                fields[name] = value
        fields.update(record.fields)
        if "request_id" not in fields:
            request_id = _request_id(response, context)
            if request_id:
                fields["request_id"] = request_id
        if code_name != "OK":
            fields["reason"] = record.reason
            if record.message:
                fields["error"] = record.message
        fields["peer"] = context.peer()
        rpc_log.log(level, "%s", _text(fields), extra={"rpc": fields})


def _same_lane(run: Callable, behavior: Callable) -> Callable:
    pool = getattr(behavior, "experimental_thread_pool", None)
    if pool is not None:
        run.experimental_thread_pool = pool
    return run


#: Fields of a (unary) request message the call's log line repeats.
_REQUEST_FIELDS = ("pool_id", "model_id", "request_id")


def _request_id(response: Any, context: grpc.ServicerContext) -> str:
    """The response's ``request_id`` (a Select's request arrives as bytes), else the
    caller's ``x-request-id`` header."""
    value = getattr(response, "request_id", None)
    if isinstance(value, str) and value:
        return value
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_HEADER and isinstance(value, str):
            return value[:200]
    return ""


def _text(fields: dict[str, Any]) -> str:
    """``Method CODE 1.234 ms key=value ...``; values with spaces or quotes are quoted."""
    head = f"{fields['method']} {fields['code']} {fields['duration_ms']:.3f} ms"
    rest = []
    for key, value in fields.items():
        if key in ("method", "code", "duration_ms"):
            continue
        text = str(value)
        if not text or any(c in text for c in ' "=\n'):
            text = json.dumps(text)
        rest.append(f"{key}={text}")
    return " ".join([head, *rest])
