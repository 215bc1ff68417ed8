"""gRPC layer of models: ``assay.v1.ModelService``.

Translates protobuf to the model store and runtime and back; all checks of an
uploaded model live in ``models.onnx_safety``, all inference in ``models.inference``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc
import numpy as np
from google.protobuf import timestamp_pb2

from assay.client.tensors import enum_of
from assay.v1 import model_pb2, model_pb2_grpc
from assay.vocab.errors import DeadlineExceeded

from ..models.inference import ModelRuntime
from ..models.onnx_safety import inspect_model
from ..models.store import ModelInfo, ModelStore, check_model_id
from .paging import page_end, page_start
from .streams import stream_chunks, stream_header


def model_to_proto(info: ModelInfo) -> model_pb2.Model:
    sig = info.signature
    created = timestamp_pb2.Timestamp()
    created.FromNanoseconds(int(info.create_time * 1e9))
    inputs = [model_pb2.ModelInput(name=i.name, dtype=enum_of(np.dtype(i.dtype)),
                                   shape=list(i.shape), array=i.array) for i in sig.inputs]
    return model_pb2.Model(
        model_id=info.model_id,
        outputs=[model_pb2.OutputBinding(role=r, output_name=n) for r, n in info.bindings],
        input=inputs[0],
        inputs=inputs,
        size_bytes=info.size_bytes,
        sha256=info.sha256,
        opset_version=sig.opset,
        dropout_count=sig.dropout_count,
        create_time=created,
    )


class ModelServicer(model_pb2_grpc.ModelServiceServicer):
    """Implements ``assay.v1.ModelService`` over a ``ModelStore`` and its runtime."""

    def __init__(self, store: ModelStore, runtime: ModelRuntime,
                 check_cancelled: Callable[[grpc.ServicerContext], Callable[[], None]]):
        self.store = store
        self.runtime = runtime
        self._check_cancelled = check_cancelled

    def RegisterModel(self, request_iterator: Iterator, context):
        header = stream_header(request_iterator, "a register stream")
        bindings = tuple((b.role, b.output_name) for b in header.outputs)
        upload = self.store.begin_upload(header.model_id, header.size_bytes, header.sha256)
        committed = False
        check = _registration_check(self._check_cancelled(context))
        try:
            for chunk in stream_chunks(request_iterator, context, check):
                upload.write(chunk)
            data = upload.finish()
            signature = inspect_model(data, bindings, self.runtime.limits,
                                      [(b.input_name, b.array) for b in header.inputs])
            check()
            self.runtime.check_loads(data, check)
            # The row is the commit point: a client told DEADLINE_EXCEEDED finds nothing.
            check()
            info = upload.commit(signature, bindings)
            committed = True
        finally:
            if not committed:
                upload.abort()
        return model_pb2.RegisterModelResponse(model=model_to_proto(info))

    def GetModel(self, request, context):
        return model_pb2.GetModelResponse(model=model_to_proto(self.store.get(request.model_id)))

    def ListModels(self, request, context):
        after, size = page_start(request.page_size, request.page_token, check_model_id,
                                 "ListModels")
        models, token = page_end(self.store.list(after, size + 1), size, lambda m: m.model_id)
        return model_pb2.ListModelsResponse(models=[model_to_proto(m) for m in models],
                                            next_page_token=token)

    def DeleteModel(self, request, context):
        info = self.store.delete(request.model_id)
        self.runtime.forget(info.uid)
        return model_pb2.DeleteModelResponse()


def _registration_check(check: Callable[[], None]) -> Callable[[], None]:
    """``check`` with the registration's own wording when the deadline has passed."""
    def checked() -> None:
        try:
            check()
        except DeadlineExceeded as error:
            raise DeadlineExceeded(
                "the request deadline (or the server's ceiling, --max-deadline-seconds) "
                "passed while the model was received or checked; nothing was stored",
                reason=error.reason) from None
    return checked
