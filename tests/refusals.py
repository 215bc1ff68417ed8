"""What a refused call says beyond its code: the field and the reason of its details."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status


def field_and_reason(error: grpc.RpcError) -> tuple[str, str]:
    """(field, reason) from a refusal's BadRequest and ErrorInfo details."""
    field = reason = ""
    for detail in rpc_status.from_call(error).details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            msg = error_details_pb2.BadRequest()
            detail.Unpack(msg)
            field = msg.field_violations[0].field
        elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            msg = error_details_pb2.ErrorInfo()
            detail.Unpack(msg)
            reason = msg.reason
            field = field or msg.metadata.get("field", "")
    return field, reason


def refusal(fn, *args, **kwargs) -> grpc.RpcError:
    """The RpcError ``fn(*args, **kwargs)`` raises (fails the test if it succeeds)."""
    with pytest.raises(grpc.RpcError) as err:
        fn(*args, **kwargs)
    return err.value
