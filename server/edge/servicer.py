"""The gRPC servicer: translates protobuf to domain calls and back, nothing more.

Protobuf stops here: below this module there are only NumPy arrays and domain
types. Every check of the wire (sizes, oneofs, tensor byte lengths) happens here
or in the codecs it calls; domain errors are mapped to statuses by the
interceptor.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields, replace

import grpc
import numpy as np
from google.protobuf import timestamp_pb2

from assay.client.tensors import DTYPES, check_shape, from_parts, from_proto, numpy_dtype
from assay.v1 import assay_pb2, assay_pb2_grpc
from assay.vocab import roles
from assay.vocab.dtypes import stored_name
from assay.vocab.errors import (
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidInput,
)

from ..acquisition.service import AcquisitionService, Caller, SelectCall
from ..pools.request_records import RequestKey, StoredResponse
from ..pools.store import ArraySpec, PoolInfo, PoolStore, check_pool_id
from ..strategies import registry
from .idempotency import SingleFlight, StreamDigest, check_request_id, fingerprint
from .lanes import Foreground
from .metrics import Metrics, note
from .paging import page_end, page_start
from .response_size import check_budget, check_encoded
from .streams import stream_chunks, stream_header
from .wire import SelectWire, read_select, read_upload

_PARAM_TYPES = {
    float: assay_pb2.PARAM_TYPE_DOUBLE,
    int: assay_pb2.PARAM_TYPE_INT,
    str: assay_pb2.PARAM_TYPE_STRING,
    bool: assay_pb2.PARAM_TYPE_BOOL,
}


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


#: Stored dtype name (see ``store.ArraySpec.dtype``) -> wire enum.
_STORED_DTYPES = {stored_name(d): k for k, d in DTYPES.items()}


def pool_to_proto(info: PoolInfo) -> assay_pb2.Pool:
    return assay_pb2.Pool(
        pool_id=info.pool_id,
        item_count=info.item_count,
        labeled_count=info.labeled_count,
        version=info.version,
        arrays=[assay_pb2.ArrayInfo(name=a.name, dtype=_STORED_DTYPES[a.dtype], shape=a.shape)
                for a in info.arrays],
        create_time=_timestamp(info.create_time),
        update_time=_timestamp(info.update_time),
        size_bytes=info.size_bytes,
        shards=info.shards,
    )


@dataclass(frozen=True)
class EdgeLimits:
    """The settings the edge enforces itself (``ServerConfig`` has the same names)."""

    #: Ceiling on any request's run time, whatever its deadline (0: none).
    max_deadline_seconds: float = 600.0
    #: Largest message sent or received: a Select whose answer could not fit is refused.
    max_message_bytes: int = 64 << 20
    #: Largest inline ``inputs`` of a Select.
    max_inline_bytes: int = 32 << 20
    #: A pool created with ``expected_items`` above this is sharded (0: never by size).
    auto_shard_items: int = 0

    @classmethod
    def of(cls, config) -> EdgeLimits:
        """The limits of a ``ServerConfig`` (or anything with the same attributes)."""
        return cls(**{f.name: getattr(config, f.name) for f in fields(cls)})


def shards_for(request: assay_pb2.CreatePoolRequest, limits: EdgeLimits) -> int:
    """Shards a new pool gets: as asked, or one per ``auto_shard_items`` of its expected
    size when that exceeds the threshold; 0 means an ordinary, unsharded pool."""
    if request.shards < 0:
        raise InvalidInput(f"shards must be >= 0, got {request.shards}", field="shards")
    if request.shards:
        return int(request.shards)
    auto = limits.auto_shard_items
    if auto and request.expected_items > auto:
        return -(-int(request.expected_items) // auto)
    return 0


def param_from_proto(value: assay_pb2.ParamValue, name: str):
    kind = value.WhichOneof("kind")
    if kind is None:
        raise InvalidInput(f"params.{name} has no value set", field=f"params.{name}")
    return getattr(value, kind)


def param_to_proto(value) -> assay_pb2.ParamValue:
    if isinstance(value, bool):
        return assay_pb2.ParamValue(bool_value=value)
    if isinstance(value, int):
        return assay_pb2.ParamValue(int_value=value)
    if isinstance(value, float):
        return assay_pb2.ParamValue(double_value=value)
    return assay_pb2.ParamValue(string_value=str(value))


def cancellation_check(context: grpc.ServicerContext, ceiling: float = 0.0):
    """A check that raises once the caller left, its deadline passed, or the server's
    ceiling (``max_deadline_seconds``, 0: none) did."""
    stop_at = time.monotonic() + ceiling if ceiling > 0 else None

    def check() -> None:
        if stop_at is not None and time.monotonic() > stop_at:
            raise DeadlineExceeded(f"the request ran past the server's ceiling of {ceiling} s "
                                   "(max_deadline_seconds); nothing was stored")
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            raise DeadlineExceeded("the request deadline passed during selection; nothing "
                                   "was stored")
        if not context.is_active():
            raise Cancelled("the client cancelled the request")
    return check


def caller(context: grpc.ServicerContext, ceiling: float = 0.0) -> Caller:
    """The domain's view of a gRPC caller: its cancellation check, the seconds it has
    left (its deadline or the server's ceiling) and a hook run when it goes away."""
    def time_left() -> float | None:
        limits = [x for x in (context.time_remaining(), ceiling if ceiling > 0 else None)
                  if x is not None]
        return min(limits) if limits else None

    return Caller(check=cancellation_check(context, ceiling), time_left=time_left,
                  on_cancel=context.add_callback)


#: Response type of each upload method.
_UPLOAD_RESPONSES = {"AppendPoolItems": assay_pb2.AppendPoolItemsResponse,
                     "ReplacePoolArrays": assay_pb2.ReplacePoolArraysResponse}


def _upload_response(method: str, info: PoolInfo, first_index: int, count: int):
    if method == "ReplacePoolArrays":
        return assay_pb2.ReplacePoolArraysResponse(pool=pool_to_proto(info))
    return assay_pb2.AppendPoolItemsResponse(pool=pool_to_proto(info), first_index=first_index,
                                             appended_count=count)


def _digested(messages: Iterator, digest: StreamDigest) -> Iterator:
    """Pass an append stream's messages on, adding each chunk to ``digest`` first."""
    for message in messages:
        if message.WhichOneof("part") == "chunk":
            chunk = message.chunk
            digest.update(chunk.array_index, chunk.offset, chunk.data)
        yield message


class AssayServicer(assay_pb2_grpc.AssayServiceServicer):
    """Implements ``assay.v1.AssayService``: decodes, calls the pools or the acquisition
    service, encodes."""

    def __init__(self, store: PoolStore, acquisition: AcquisitionService, limits: EdgeLimits,
                 metrics: Metrics, foreground: Foreground | None = None):
        self.store = store
        self.acquisition = acquisition
        self.limits = limits
        self.metrics = metrics
        #: Where running Selects are counted, for uploads to yield to (``lanes``).
        self.foreground = foreground or Foreground()
        self._flights = SingleFlight()

    @contextlib.contextmanager
    def _once(self, message, method: str, context, pool_id: str = "",
              field: str = "request_id", pool_field: str = "pool_id",
              digest: Callable[[], str] | None = None,
              ) -> Iterator[tuple[StoredResponse | None, RequestKey | None]]:
        """Idempotency (AIP-155), one execution per request id.

        Yields ``(stored, None)`` when a committed earlier attempt of this request
        answered it, else ``(None, key)`` with the key to store the new response
        under (``(None, None)`` without a request id). The body runs while this
        request id is held: a duplicate arriving meanwhile waits (within its own
        deadline) and then finds the stored answer, or runs itself if the first
        attempt stored none (it failed or was cancelled). ``pool_id`` names the pool
        the request is about: a retry must name the same pool, not one deleted and
        created again under that id since (its uid is part of the key).
        ``digest`` computes the request's
        fingerprint when the message alone is not the request (a Select read in place).
        """
        request_id = message.request_id
        if not request_id:
            yield None, None
            return
        check_request_id(request_id, field)
        note(request_id=request_id)
        with self._flights.hold(request_id,
                                cancellation_check(context, self.limits.max_deadline_seconds)):
            uid = self.store.pool_uid(pool_id, pool_field) if pool_id else ""
            key = RequestKey(request_id, method, (digest or (lambda: fingerprint(message)))(),
                             uid, field=field)
            stored = self.store.get_request(key)
            yield (stored, None) if stored is not None else (None, key)

    # -- pools -------------------------------------------------------------------------

    def CreatePool(self, request, context):
        info = self.store.create_pool(request.pool_id, shards_for(request, self.limits))
        return assay_pb2.CreatePoolResponse(pool=pool_to_proto(info))

    def GetPool(self, request, context):
        return assay_pb2.GetPoolResponse(pool=pool_to_proto(self.store.get_pool(request.pool_id)))

    def ListPools(self, request, context):
        after, size = page_start(request.page_size, request.page_token, check_pool_id,
                                 "ListPools")
        pools, token = page_end(self.store.list_pools(after, size + 1), size,
                                lambda p: p.pool_id)
        return assay_pb2.ListPoolsResponse(pools=[pool_to_proto(p) for p in pools],
                                           next_page_token=token)

    def DeletePool(self, request, context):
        self.store.delete_pool(request.pool_id)
        return assay_pb2.DeletePoolResponse()

    def LabelPoolItems(self, request, context):
        with self._once(request, "LabelPoolItems", context, request.pool_id) as (stored, key):
            if stored is not None:
                return assay_pb2.LabelPoolItemsResponse.FromString(stored.response)
            return self._label(request, key)

    def _label(self, request, key: RequestKey | None):
        info = self.store.label(
            request.pool_id, np.asarray(request.indices, dtype=np.int64),
            np.asarray(request.labels, dtype=np.int64), key,
            lambda i: assay_pb2.LabelPoolItemsResponse(pool=pool_to_proto(i)).SerializeToString())
        return assay_pb2.LabelPoolItemsResponse(pool=pool_to_proto(info))

    def RecordEpoch(self, request, context):
        with self._once(request, "RecordEpoch", context, request.pool_id) as (stored, key):
            if stored is not None:
                return assay_pb2.RecordEpochResponse.FromString(stored.response)
            return self._record_epoch(request, key)

    def _record_epoch(self, request, key: RequestKey | None):
        check_pool_id(request.pool_id)
        which = request.WhichOneof("predictions")
        if which is None:
            raise InvalidInput("set predicted_labels [N] or probs [N, C]: the epoch's "
                               "predictions for every pool item", field="predictions")
        given = from_proto(getattr(request, which), which)
        info, epoch = self.store.record_epoch(
            request.pool_id, given if which == "predicted_labels" else None, key,
            lambda i, e: assay_pb2.RecordEpochResponse(pool=pool_to_proto(i),
                                                       epoch=e).SerializeToString(),
            probs=given if which == "probs" else None)
        return assay_pb2.RecordEpochResponse(pool=pool_to_proto(info), epoch=epoch)

    def AppendPoolItems(self, request_iterator: Iterator, context):
        return self._upload(request_iterator, context, "AppendPoolItems")

    def ReplacePoolArrays(self, request_iterator: Iterator, context):
        return self._upload(request_iterator, context, "ReplacePoolArrays")

    def _upload(self, request_iterator: Iterator, context, method: str):
        """An append or a replace stream: the same header checks, request ids, chunk
        reading and commit; only what the store does with the arrays differs."""
        request_iterator = map(read_upload, request_iterator)
        header = stream_header(request_iterator, "an append stream")
        check_pool_id(header.pool_id, "header.pool_id")
        specs = []
        for i, a in enumerate(header.arrays):
            numpy_dtype(a.dtype, f"header.arrays[{i}]")
            name = next(k for k, v in _STORED_DTYPES.items() if v == a.dtype)
            specs.append(ArraySpec(a.name, name, check_shape(a.shape, f"header.arrays[{i}]",
                                                             min_dim=1)))
        with self._once(header, method, context, header.pool_id,
                        "header.request_id", "header.pool_id") as (stored, key):
            if key is None and stored is None:
                return self._append(header, specs, request_iterator, context, None, None,
                                    method)
            digest = StreamDigest([s.name for s in specs], [
                math.prod(s.shape) * DTYPES[a.dtype].itemsize
                for s, a in zip(specs, header.arrays, strict=True)])
            messages = _digested(request_iterator, digest)
            if stored is not None:
                return self._replay_append(stored, digest, messages, context, method)
            return self._append(header, specs, messages, context, key, digest, method)

    def _replay_append(self, stored: StoredResponse, digest: StreamDigest, messages: Iterator,
                       context, method: str):
        """Answer a retried append from its stored response, once its data proved equal.

        The header arrives before the data, so the retry's stream is read to the end
        (checked and CRC'd, not written) before it is answered: the stored answer
        may only go to a retry that sent the same bytes.
        """
        check = cancellation_check(context, self.limits.max_deadline_seconds)
        for chunk in stream_chunks(messages, context, check):
            self.metrics.add_bytes(len(chunk.data))
        digest.check_complete()
        if digest.value() != stored.data_digest:
            raise FailedPrecondition(
                "header.request_id was already used for an append of different data to this "
                "pool; nothing was stored. Use a new request_id for a new append",
                field="header.request_id", reason="REQUEST_ID_REUSED")
        return _UPLOAD_RESPONSES[method].FromString(stored.response)

    def _append(self, header, specs: list[ArraySpec], request_iterator: Iterator, context,
                key: RequestKey | None, digest: StreamDigest | None, method: str):
        writer = self.store.begin_append(header.pool_id, specs,
                                         replace=method == "ReplacePoolArrays")
        committed = False
        check = cancellation_check(context, self.limits.max_deadline_seconds)
        try:
            for chunk in stream_chunks(request_iterator, context, check):
                writer.write(chunk.array_index, chunk.offset, chunk.data)
                self.metrics.add_bytes(len(chunk.data))

            def response(info: PoolInfo, first_index: int, count: int) -> bytes:
                return _upload_response(method, info, first_index, count).SerializeToString()

            if key is not None:
                key = replace(key, data_digest=digest.value())
            info, first_index, count = writer.commit(key, response)
            committed = True
        finally:
            if not committed:
                writer.abort()
        return _upload_response(method, info, first_index, count)

    # -- selection ---------------------------------------------------------------------

    def Select(self, raw: bytes, context):
        """Registered with the request's wire bytes (``add_to_server``): the inline
        tensors are read in place (``wire``)."""
        with self.foreground.running():
            wire = read_select(raw)
            request = wire.message
            pool_id = request.pool_id if request.WhichOneof("source") == "pool_id" else ""
            with self._once(request, "Select", context, pool_id,
                            digest=wire.fingerprint) as (stored, key):
                if stored is not None:
                    return stored.response
                return self._select(wire, context, key)

    def _select(self, wire: SelectWire, context, key: RequestKey | None) -> bytes:
        """The serialized SelectResponse: encoded once, for the wire and for the record
        (``add_to_server`` registers Select's answer as bytes)."""
        request = wire.message
        note(strategy=request.strategy, budget=request.budget)
        call = self._select_call(wire)
        selected = self.acquisition.select(call, caller(context, self.limits.max_deadline_seconds))
        result = selected.result
        self.metrics.observe_kernel(result.strategy, result.backend, result.compute_seconds)
        response = assay_pb2.SelectResponse(
            indices=result.indices.tolist(),
            scores=[] if result.scores is None else result.scores.tolist(),
            strategy=result.strategy, backend=result.backend, seed=result.seed,
            pool_version=selected.pool_version, request_id=request.request_id,
            metrics=selected.metrics, compute_seconds=result.compute_seconds,
            execution_providers=selected.execution_providers)
        if result.pseudo_label_indices is not None:
            response.pseudo_label_indices.extend(result.pseudo_label_indices.tolist())
            response.pseudo_labels.extend(result.pseudo_labels.tolist())
        encoded = response.SerializeToString()
        check_encoded(len(encoded), request.budget, self.limits.max_message_bytes)
        if key is not None:
            self.store.put_request(key, encoded)
        return encoded

    def _select_call(self, wire: SelectWire) -> SelectCall:
        """Decode a SelectRequest; a budget whose answer could not be sent is refused here,
        before any work."""
        request = wire.message
        if not request.strategy:
            raise InvalidInput("strategy is empty; ListStrategies names them", field="strategy")
        strategy = registry.get(request.strategy)
        check_budget(strategy.name, strategy.kind, request.budget,
                     self.limits.max_message_bytes)
        params = {k: param_from_proto(v, k) for k, v in request.params.items()}
        source = request.WhichOneof("source")
        inputs = None
        if source == "inputs":
            inputs = {}
            for name, t in wire.tensors.items():
                where = f"inputs.{name}"
                if name.startswith(roles.NAMED_MODEL_INPUTS):
                    where = f"inputs.named_model_inputs[{name[len(roles.NAMED_MODEL_INPUTS):]!r}]"
                    if not roles.is_named_model_input(name):
                        raise InvalidInput(f"{where}: the name must be 1-100 of [A-Za-z0-9_.-], "
                                           "not starting with . or -", field=where)
                inputs[name] = from_parts(t.dtype, t.shape, t.data, where,
                                          max_bytes=self.limits.max_inline_bytes)
        elif source != "pool_id":
            raise InvalidInput("set either inputs or pool_id", field="source")
        return SelectCall(
            strategy=request.strategy, budget=request.budget, params=params,
            pool_id=request.pool_id if source == "pool_id" else "", inputs=inputs,
            exclude=np.asarray(request.exclude_indices, dtype=np.int64),
            seed=request.seed if request.HasField("seed") else None,
            model_ids=tuple(request.model_ids), mc_samples=request.mc_samples,
            batch_size=request.batch_size)

    def ListStrategies(self, request, context):
        infos = []
        for s in registry.all_strategies():
            params = []
            for p in registry.all_params(s):
                spec = assay_pb2.ParamSpec(name=p.name, type=_PARAM_TYPES[p.type],
                                           default_value=param_to_proto(p.default),
                                           choices=list(p.choices), description=p.description)
                if p.minimum is not None:
                    spec.minimum = p.minimum
                if p.maximum is not None:
                    spec.maximum = p.maximum
                params.append(spec)
            infos.append(assay_pb2.StrategyInfo(
                name=s.name, description=s.description, required_inputs=list(s.required),
                optional_inputs=list(s.optional), params=params, kind=s.kind))
        return assay_pb2.ListStrategiesResponse(strategies=infos)


#: Methods registered with their wire bytes: their large payloads are read in place.
_READ_IN_PLACE = ("Select", "AppendPoolItems", "ReplacePoolArrays")
#: Methods whose behavior answers with the response already serialized.
_ANSWER_ENCODED = ("Select",)


def add_to_server(servicer: AssayServicer, server: grpc.Server) -> None:
    """Register ``servicer`` like the generated ``add_AssayServiceServicer_to_server``,
    except that Select and the upload streams get each request's bytes unparsed
    (``wire``), and Select answers with its response's bytes."""
    service = assay_pb2.DESCRIPTOR.services_by_name["AssayService"]
    handlers = {}
    for method in service.methods:
        request = getattr(assay_pb2, method.input_type.name)
        response = getattr(assay_pb2, method.output_type.name)
        make = (grpc.stream_unary_rpc_method_handler if method.client_streaming
                else grpc.unary_unary_rpc_method_handler)
        handlers[method.name] = make(
            getattr(servicer, method.name),
            request_deserializer=None if method.name in _READ_IN_PLACE else request.FromString,
            response_serializer=None if method.name in _ANSWER_ENCODED
            else response.SerializeToString)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),))
    server.add_registered_method_handlers(service.full_name, handlers)

