"""Decoding the rich status of a failed call: ``google.rpc.ErrorInfo`` and ``RetryInfo``.

The server puts a ``google.rpc.Status`` in the ``grpc-status-details-bin`` trailer
(docs/errors.md). The client reads it with the protobuf runtime alone: the three messages
it needs are declared here, in a descriptor pool of their own, so the client does not
depend on ``googleapis-common-protos`` or ``grpcio-status`` and does not clash with them
when a program loads those too. Kept apart from ``AssayError`` so that the decoding can
be tested on a status built by hand.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, duration_pb2
from google.protobuf.message import DecodeError
from google.protobuf.message_factory import GetMessageClass

#: ErrorInfo.domain of Assay's own errors; ErrorInfo of other domains is ignored.
DOMAIN = "assay.v1"
#: The trailer that carries the serialized ``google.rpc.Status`` (gRPC's convention).
DETAILS_KEY = "grpc-status-details-bin"


def _rpc_messages() -> tuple[type, type, type]:
    """``Status``, ``ErrorInfo`` and ``RetryInfo`` with the field numbers and types of
    protos/third_party/google/rpc (wire-compatible; only the fields read here)."""
    fd = descriptor_pb2.FieldDescriptorProto
    pool = descriptor_pool.DescriptorPool()
    for well_known in (any_pb2, duration_pb2):
        pool.AddSerializedFile(well_known.DESCRIPTOR.serialized_pb)
    file = descriptor_pb2.FileDescriptorProto(
        name="assay/client/google_rpc_status.proto", package="google.rpc", syntax="proto3",
        dependency=["google/protobuf/any.proto", "google/protobuf/duration.proto"])

    def field(message, name, number, kind, label=fd.LABEL_OPTIONAL, type_name=""):
        added = message.field.add(name=name, json_name=name, number=number, type=kind,
                                  label=label)
        if type_name:
            added.type_name = type_name

    status = file.message_type.add(name="Status")
    field(status, "code", 1, fd.TYPE_INT32)
    field(status, "message", 2, fd.TYPE_STRING)
    field(status, "details", 3, fd.TYPE_MESSAGE, fd.LABEL_REPEATED, ".google.protobuf.Any")
    info = file.message_type.add(name="ErrorInfo")
    field(info, "reason", 1, fd.TYPE_STRING)
    field(info, "domain", 2, fd.TYPE_STRING)
    entry = info.nested_type.add(name="MetadataEntry")
    entry.options.map_entry = True
    field(entry, "key", 1, fd.TYPE_STRING)
    field(entry, "value", 2, fd.TYPE_STRING)
    field(info, "metadata", 3, fd.TYPE_MESSAGE, fd.LABEL_REPEATED,
          ".google.rpc.ErrorInfo.MetadataEntry")
    retry = file.message_type.add(name="RetryInfo")
    field(retry, "retry_delay", 1, fd.TYPE_MESSAGE, type_name=".google.protobuf.Duration")
    pool.Add(file)
    return tuple(GetMessageClass(pool.FindMessageTypeByName(f"google.rpc.{name}"))
                 for name in ("Status", "ErrorInfo", "RetryInfo"))


Status, ErrorInfo, RetryInfo = _rpc_messages()


def status_of(error: grpc.RpcError) -> Any:
    """The ``google.rpc.Status`` of a failed call, or None when it carries none, it does
    not decode, or its code or message differ from the call's own (a status that is not
    this call's)."""
    try:
        trailers = error.trailing_metadata() or ()  # type: ignore[attr-defined]
        for key, value in trailers:
            if key == DETAILS_KEY:
                status = Status.FromString(value)
                code, message = error.code(), error.details()  # type: ignore[attr-defined]
                if status.code == code.value[0] and status.message == (message or ""):
                    return status
                return None
    except (DecodeError, ValueError, AttributeError, TypeError):  # the code remains
        return None
    return None


def error_details(error: grpc.RpcError) -> dict[str, Any]:
    """``reason``, ``field`` and ``retry_delay`` (seconds or None) of a failed call.

    Empty strings and ``None`` when the status carries no details (a transport error)
    or details that cannot be decoded: the status code is still there to act on.
    """
    return decode_status(status_of(error))


def decode_status(status: Any) -> dict[str, Any]:
    """The Assay details of a ``google.rpc.Status`` (see ``error_details``): a Status of
    this module or of ``googleapis-common-protos`` (its ``details`` are read as bytes)."""
    out: dict[str, Any] = {"reason": "", "field": "", "retry_delay": None}
    if status is None:
        return out
    for detail in status.details:
        kind = detail.type_url.rpartition("/")[2]
        if kind == "google.rpc.ErrorInfo":
            info = ErrorInfo.FromString(detail.value)
            if info.domain == DOMAIN:
                out["reason"] = info.reason
                out["field"] = info.metadata.get("field", "")
        elif kind == "google.rpc.RetryInfo":
            retry = RetryInfo.FromString(detail.value)
            if retry.HasField("retry_delay"):
                delay = retry.retry_delay
                out["retry_delay"] = delay.seconds + delay.nanos / 1e9
    return out
