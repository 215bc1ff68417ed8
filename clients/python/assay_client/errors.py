"""Decoding the rich status of a failed call: ``google.rpc.ErrorInfo`` and ``RetryInfo``.

The server puts them in the ``grpc-status-details-bin`` trailer (docs/errors.md);
``grpc_status`` unpacks it. Kept apart from ``AssayError`` so that the decoding can
be tested on a status built by hand.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

#: ErrorInfo.domain of Assay's own errors; ErrorInfo of other domains is ignored.
DOMAIN = "assay.v1"


def error_details(error: grpc.RpcError) -> dict[str, Any]:
    """``reason``, ``field`` and ``retry_delay`` (seconds or None) of a failed call.

    Empty strings and ``None`` when the status carries no details (a transport error)
    or details that cannot be decoded: the status code is still there to act on.
    """
    try:
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
    except (ValueError, AttributeError, TypeError):
        status = None
    return decode_status(status)


def decode_status(status: status_pb2.Status | None) -> dict[str, Any]:
    """The Assay details of a ``google.rpc.Status`` (see ``error_details``)."""
    out: dict[str, Any] = {"reason": "", "field": "", "retry_delay": None}
    if status is None:
        return out
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            if info.domain == DOMAIN:
                out["reason"] = info.reason
                out["field"] = info.metadata.get("field", "")
            continue
        retry = error_details_pb2.RetryInfo()
        if detail.Unpack(retry) and retry.HasField("retry_delay"):
            out["retry_delay"] = retry.retry_delay.ToTimedelta().total_seconds()
    return out
