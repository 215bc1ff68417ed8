"""The one place where domain errors become gRPC statuses.

Handlers raise ``AssayError`` subclasses; this interceptor maps each to its status
code with ``google.rpc`` details (``ErrorInfo`` with a stable reason, ``BadRequest``
naming the offending field for invalid arguments, and ``RetryInfo`` with a back-off
hint for refusals the same request may retry), logs it, and turns anything
unexpected into INTERNAL, with reason ``INTERNAL``, without leaking a traceback.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from assay.vocab.errors import DOMAIN, AssayError, InvalidInput

from .metrics import Metrics

log = logging.getLogger("assay.server")

__all__ = ["DOMAIN", "ErrorInterceptor", "abort_with", "to_status"]


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


def abort_with(context: grpc.ServicerContext, error: AssayError) -> None:
    """End the call with the rich status of ``error`` (raises, as ``context.abort`` does)."""
    context.abort_with_status(rpc_status.to_status(to_status(error)))


class ErrorInterceptor(grpc.ServerInterceptor):
    """Maps ``AssayError`` to statuses and records per-method counts and latency."""

    def __init__(self, metrics: Metrics | None = None):
        self.metrics = metrics

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap(handler.unary_unary, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                self._wrap(handler.stream_unary, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        return handler

    def _wrap(self, behavior: Callable, method: str) -> Callable:
        def wrapper(request, context: grpc.ServicerContext):
            started = time.perf_counter()
            code = "OK"
            try:
                return behavior(request, context)
            except AssayError as error:
                code = error.code_name
                log.info("%s -> %s %s: %s", method, code, error.reason, error.message)
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
