"""Python client of Assay: NumPy arrays in, NumPy arrays out.

>>> from assay.client import Client
>>> with Client("127.0.0.1:50051") as c:
...     sel = c.select("entropy", 10, probs=probs)
...     sel.indices  # int64[10], best first

Arrays go inline (``select(probs=...)``) or into a pool (``append``, then
``select(pool=...)``), not both in one call. Any byte order is accepted: arrays
are sent little-endian, as the wire requires, converting big-endian ones.

Large arrays go to pools with ``append``, which streams them in chunks. Every
call has one deadline, which covers all its attempts: gRPC itself retries
UNAVAILABLE for the methods safe to send twice, by the contract's service config
(``assay/v1/service_config.json``, shipped in ``assay.v1``), and the writes among
them carry a request id (the server answers a retried id identically). Every failure surfaces as
``AssayError`` carrying the gRPC status code and the server's ``reason``, ``field``
and ``retry_delay``.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from assay.client.errors import error_details
from assay.client.tensors import enum_of, to_proto
from assay.v1 import assay_pb2, assay_pb2_grpc, model_pb2, model_pb2_grpc, tensor_pb2
from assay.vocab import roles

__all__ = ["AssayError", "Client", "Model", "Pool", "Selection", "StrategyInfo", "service_config"]

#: Bytes per streamed chunk: large enough to amortize per-message cost, far below limits.
CHUNK_BYTES = 4 << 20
#: Inline arrays above this go to a temporary pool instead (the server's default is 32 MiB).
INLINE_HINT = "upload large arrays with create_pool/append and select(pool=...)"


def service_config(retries: int | None = None) -> str:
    """The contract's gRPC service config (JSON), as every Assay client uses it.

    ``retries`` replaces the extra attempts of its retry policy (``maxAttempts`` =
    ``retries + 1``; gRPC caps attempts at 5); None keeps the shipped policy.
    """
    config = json.loads(resources.files("assay.v1").joinpath("service_config.json").read_text())
    if retries is not None:
        for method in config["methodConfig"]:
            if "retryPolicy" in method:
                method["retryPolicy"]["maxAttempts"] = retries + 1
    return json.dumps(config)


class AssayError(Exception):
    """A failed call, with what a program needs to act on it.

    ``code`` is the ``grpc.StatusCode`` and ``message`` the server's text, for people.
    ``reason`` is the stable ``ErrorInfo`` reason to branch on (``"DISK_FULL"``,
    ``"TOO_MANY_REQUESTS"``, ...; the list is docs/errors.md), ``""`` for a status
    that did not come from Assay itself (the transport, an unreachable server).
    ``field`` names the offending request field (``""``: none). ``retry_delay`` is
    the server's back-off hint in seconds (``RetryInfo``) for a refusal that the same
    request may retry, ``None`` otherwise. ``details`` is the ``grpc.RpcError``.
    """

    def __init__(self, code: grpc.StatusCode, message: str, details: Any = None, *,
                 reason: str = "", field: str = "", retry_delay: float | None = None):
        super().__init__(f"{code.name}{f' {reason}' if reason else ''}: {message}")
        self.code = code
        self.message = message
        self.details = details
        self.reason = reason
        self.field = field
        self.retry_delay = retry_delay

    @classmethod
    def from_rpc(cls, error: grpc.RpcError) -> AssayError:
        code = error.code()
        message = error.details() or ""
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in message:
            message += f" ({INLINE_HINT})"
        return cls(code, message, error, **error_details(error))


@dataclass(frozen=True)
class Selection:
    """A Select answer."""

    indices: np.ndarray
    scores: np.ndarray
    strategy: str
    backend: str
    seed: int
    pool_version: int
    request_id: str
    metrics: dict[str, float] = field(default_factory=dict)
    pseudo_label_indices: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    pseudo_labels: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    compute_seconds: float = 0.0
    #: Per model of ``models``, the onnxruntime execution provider that ran it.
    execution_providers: tuple[str, ...] = ()


@dataclass(frozen=True)
class Pool:
    """A pool's metadata."""

    pool_id: str
    item_count: int
    labeled_count: int
    version: int
    arrays: dict[str, tuple[str, tuple[int, ...]]]
    size_bytes: int
    #: Shards the pool is split over (0: a pool on one machine).
    shards: int = 0


@dataclass(frozen=True)
class ModelInput:
    """A graph input of a registered model and the array that feeds it."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    array: str


@dataclass(frozen=True)
class Model:
    """A registered ONNX model's metadata; ``outputs`` maps role -> graph output name.

    ``inputs`` lists every graph input; ``input_name``, ``input_dtype`` and
    ``input_shape`` describe the first.
    """

    model_id: str
    outputs: dict[str, str]
    input_name: str
    input_dtype: str
    input_shape: tuple[int, ...]
    size_bytes: int
    sha256: str
    opset_version: int
    dropout_count: int
    inputs: tuple[ModelInput, ...] = ()


def _model(m: model_pb2.Model) -> Model:
    inputs = tuple(ModelInput(i.name, tensor_pb2.DataType.Name(i.dtype), tuple(i.shape),
                              i.array) for i in m.inputs)
    return Model(m.model_id, {b.role: b.output_name for b in m.outputs}, m.input.name,
                 tensor_pb2.DataType.Name(m.input.dtype), tuple(m.input.shape), m.size_bytes,
                 m.sha256, m.opset_version, m.dropout_count, inputs)


def _named_inputs(arrays: Mapping[str, Any]) -> dict[str, Any]:
    """``model_inputs={"input_ids": ..., ...}`` as the arrays ``model_inputs.input_ids``, ...
    (a model with several graph inputs); other arrays as they are."""
    raw = arrays.get("model_inputs")
    if not isinstance(raw, Mapping):
        return dict(arrays)
    out = {k: v for k, v in arrays.items() if k != "model_inputs"}
    out.update({roles.NAMED_MODEL_INPUTS + name: v for name, v in raw.items()})
    return out


@dataclass(frozen=True)
class StrategyInfo:
    """What ListStrategies says of one strategy."""

    name: str
    kind: str
    description: str
    required_inputs: tuple[str, ...]
    optional_inputs: tuple[str, ...]
    params: dict[str, dict[str, Any]]


#: Wire tags (field number << 3 | length-delimited) of AppendPoolItemsRequest.chunk and
#: AppendChunk.data, for encoding chunk messages around the array's buffer.
_CHUNK_TAG = bytes([assay_pb2.AppendPoolItemsRequest.CHUNK_FIELD_NUMBER << 3 | 2])
_DATA_TAG = bytes([assay_pb2.AppendChunk.DATA_FIELD_NUMBER << 3 | 2])


def _varint(value: int) -> bytes:
    """Protobuf base-128 varint of a non-negative integer."""
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_ITEM_AXIS = {"samples": 1, "predictions": 1}


def little_endian(array: np.ndarray) -> np.ndarray:
    """``array`` with little-endian elements (no copy when they already are).

    The wire format is little-endian (KServe v2 raw contents); the bytes of a
    big-endian array sent as they are would be read as other numbers, finite and
    plausible, so nothing downstream could tell.
    """
    return array.astype(array.dtype.newbyteorder("<"), copy=False)


def _pool(p: assay_pb2.Pool) -> Pool:
    return Pool(p.pool_id, p.item_count, p.labeled_count, p.version,
                {a.name: (tensor_pb2.DataType.Name(a.dtype), tuple(a.shape)) for a in p.arrays},
                p.size_bytes, p.shards)


def _param(value: Any) -> assay_pb2.ParamValue:
    if isinstance(value, bool | np.bool_):
        return assay_pb2.ParamValue(bool_value=bool(value))
    if isinstance(value, int | np.integer):
        return assay_pb2.ParamValue(int_value=int(value))
    if isinstance(value, float | np.floating):
        return assay_pb2.ParamValue(double_value=float(value))
    return assay_pb2.ParamValue(string_value=str(value))


def _unparam(value: assay_pb2.ParamValue) -> Any:
    kind = value.WhichOneof("kind")
    return None if kind is None else getattr(value, kind)


class Client:
    """A connection to an Assay server.

    Parameters
    ----------
    target : "host:port" or "unix:/path".
    timeout : default deadline in seconds for every call: one deadline covers all the
        attempts of a call.
    retries : extra attempts on UNAVAILABLE of the methods that are safe to send twice
        (the contract's service config, ``service_config()``; None keeps its policy of
        at most 3; 0 turns retries off).
    credentials : ``grpc.ChannelCredentials`` for TLS; None for plaintext.
    token : bearer token sent as ``authorization: Bearer <token>``.
    """

    def __init__(self, target: str, *, timeout: float = 60.0, retries: int | None = None,
                 credentials: grpc.ChannelCredentials | None = None, token: str | None = None,
                 max_message_bytes: int = 64 << 20):
        # Retries are gRPC's own (gRFC A6), by the contract's service config: the call's
        # deadline covers every attempt, and a pushback from the server replaces the backoff.
        options = [("grpc.max_send_message_length", max_message_bytes),
                   ("grpc.max_receive_message_length", max_message_bytes),
                   ("grpc.enable_retries", 0 if retries == 0 else 1),
                   ("grpc.service_config", service_config(retries or None))]
        if credentials is None:
            self._channel = grpc.insecure_channel(target, options=options)
        else:
            self._channel = grpc.secure_channel(target, credentials, options=options)
        self._stub = assay_pb2_grpc.AssayServiceStub(self._channel)
        self._models = model_pb2_grpc.ModelServiceStub(self._channel)
        self.timeout = timeout
        self.retries = retries
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method, request, timeout: float | None = None):
        try:
            return method(request, timeout=timeout or self.timeout, metadata=self._metadata)
        except grpc.RpcError as error:
            raise AssayError.from_rpc(error) from None

    # -- strategies --------------------------------------------------------------------

    def list_strategies(self) -> list[StrategyInfo]:
        """Every strategy the server offers, with inputs and parameter declarations."""
        response = self._call(self._stub.ListStrategies, assay_pb2.ListStrategiesRequest())
        return [
            StrategyInfo(
                s.name, s.kind, s.description, tuple(s.required_inputs), tuple(s.optional_inputs),
                {p.name: {"type": assay_pb2.ParamType.Name(p.type),
                          "default": _unparam(p.default_value),
                          "minimum": p.minimum if p.HasField("minimum") else None,
                          "maximum": p.maximum if p.HasField("maximum") else None,
                          "choices": list(p.choices), "description": p.description}
                 for p in s.params})
            for s in response.strategies
        ]

    def select(self, strategy: str, budget: int, *, pool: str | None = None,
               probs: np.ndarray | None = None, samples: np.ndarray | None = None,
               embeddings: np.ndarray | None = None,
               labeled_embeddings: np.ndarray | None = None, scores: np.ndarray | None = None,
               loss: np.ndarray | None = None, discriminator: np.ndarray | None = None,
               predictions: np.ndarray | None = None, params: Mapping[str, Any] | None = None,
               seed: int | None = None, request_id: str | None = None,
               exclude: np.ndarray | None = None, timeout: float | None = None,
               model_inputs: np.ndarray | Mapping[str, np.ndarray] | None = None,
               models: Sequence[str] = (),
               mc_samples: int = 0, batch_size: int = 0,
               labeled_probs: np.ndarray | None = None,
               labels: np.ndarray | None = None,
               target_samples: np.ndarray | None = None) -> Selection:
        """Select ``budget`` items by ``strategy`` from inline arrays or a stored pool.

        With ``models`` (registered model ids), the server runs them over the raw
        ``model_inputs`` (inline, or the pool's) to produce the strategy's inputs;
        a model with several graph inputs takes a dict, ``model_inputs={"input_ids":
        ids, "attention_mask": mask}`` (the arrays ``model_inputs.<name>``).
        ``mc_samples`` > 0 samples each with MC dropout; several models form a
        committee. gRPC retries it on UNAVAILABLE, within the one deadline, with the same
        ``request_id`` (one is generated when not given), so a retry never yields a
        second, different answer.
        """
        given = {name: value for name, value in {
            "probs": probs, "samples": samples, "embeddings": embeddings,
            "labeled_embeddings": labeled_embeddings, "scores": scores, "loss": loss,
            "discriminator": discriminator, "predictions": predictions,
            "model_inputs": model_inputs, "labeled_probs": labeled_probs,
            "labels": labels, "target_samples": target_samples}.items() if value is not None}
        request = assay_pb2.SelectRequest(
            strategy=strategy, budget=int(budget),
            params={k: _param(v) for k, v in (params or {}).items()},
            request_id=request_id or str(uuid.uuid4()),
            exclude_indices=[] if exclude is None else np.asarray(exclude, np.int64).tolist(),
            model_ids=list(models), mc_samples=int(mc_samples), batch_size=int(batch_size))
        if seed is not None:
            request.seed = int(seed)
        if pool is not None:
            if given:
                # The request holds a pool id or inline arrays, never both: the arrays
                # would be dropped without a word and the pool's used instead.
                raise ValueError(
                    f"select got pool={pool!r} and inline arrays {sorted(given)}; choose one: "
                    f"append the arrays to the pool, or leave out pool= to send them inline")
            request.pool_id = pool
        else:
            request.inputs.SetInParent()
            for name, value in _named_inputs(given).items():
                if name.startswith(roles.NAMED_MODEL_INPUTS):
                    key = name[len(roles.NAMED_MODEL_INPUTS):]
                    request.inputs.named_model_inputs[key].CopyFrom(to_proto(np.asarray(value)))
                else:
                    getattr(request.inputs, name).CopyFrom(to_proto(np.asarray(value)))
        r = self._call(self._stub.Select, request, timeout)
        return Selection(
            indices=np.asarray(r.indices, dtype=np.int64),
            scores=np.asarray(r.scores, dtype=np.float64),
            strategy=r.strategy, backend=r.backend, seed=r.seed, pool_version=r.pool_version,
            request_id=r.request_id, metrics=dict(r.metrics),
            pseudo_label_indices=np.asarray(r.pseudo_label_indices, dtype=np.int64),
            pseudo_labels=np.asarray(r.pseudo_labels, dtype=np.int64),
            compute_seconds=r.compute_seconds,
            execution_providers=tuple(r.execution_providers))

    # -- models ------------------------------------------------------------------------

    def register_model(self, model_id: str, model: bytes | str | os.PathLike,
                       outputs: Mapping[str, str], *, inputs: Mapping[str, str] | None = None,
                       chunk_bytes: int = CHUNK_BYTES, timeout: float | None = None) -> Model:
        """Upload an ONNX model (bytes or a file path) under ``model_id``.

        ``outputs`` maps roles (logits or probs, embeddings, loss, discriminator)
        to the graph's output names. ``inputs`` maps graph input names to the
        arrays that feed them (``model_inputs`` or ``model_inputs.<name>``); by
        default one graph input reads ``model_inputs`` and several read
        ``model_inputs.<input name>`` each. The file is streamed in chunks with its
        SHA-256, which the server verifies before storing anything.
        """
        data = model if isinstance(model, bytes) else Path(model).read_bytes()
        header = model_pb2.RegisterModelHeader(
            model_id=model_id, size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest(),
            outputs=[model_pb2.OutputBinding(role=r, output_name=n) for r, n in outputs.items()],
            inputs=[model_pb2.InputBinding(input_name=n, array=a)
                    for n, a in (inputs or {}).items()])

        def messages() -> Iterator[model_pb2.RegisterModelRequest]:
            yield model_pb2.RegisterModelRequest(header=header)
            for offset in range(0, len(data), chunk_bytes):
                yield model_pb2.RegisterModelRequest(chunk=data[offset:offset + chunk_bytes])

        return _model(self._call(self._models.RegisterModel, messages(), timeout).model)

    def get_model(self, model_id: str) -> Model:
        return _model(self._call(self._models.GetModel,
                                 model_pb2.GetModelRequest(model_id=model_id)).model)

    def list_models(self, page_size: int = 100) -> list[Model]:
        """Every registered model, following pagination."""
        models, token = [], ""
        while True:
            r = self._call(self._models.ListModels,
                           model_pb2.ListModelsRequest(page_size=page_size, page_token=token))
            models.extend(_model(m) for m in r.models)
            token = r.next_page_token
            if not token:
                return models

    def delete_model(self, model_id: str) -> None:
        self._call(self._models.DeleteModel, model_pb2.DeleteModelRequest(model_id=model_id))

    # -- pools -------------------------------------------------------------------------

    def create_pool(self, pool_id: str, *, shards: int = 0, expected_items: int = 0) -> Pool:
        """Create an empty pool; fill it with ``append``.

        ``shards`` > 0 splits the pool over that many shards, each held by a Ray actor on
        a server started with ``--ray-address`` (FAILED_PRECONDITION, reason ``NO_RAY``,
        on a server without Ray). ``expected_items`` is a size hint: with ``shards=0``, a
        server started with ``--auto-shard-items M`` gives a pool of more than M expected
        items ⌈expected_items / M⌉ shards. The defaults give a pool on one machine;
        ``Pool.shards`` says which it got. See docs/scale.md.
        """
        request = assay_pb2.CreatePoolRequest(pool_id=pool_id, shards=shards,
                                              expected_items=expected_items)
        return _pool(self._call(self._stub.CreatePool, request).pool)

    def get_pool(self, pool_id: str) -> Pool:
        return _pool(self._call(self._stub.GetPool, assay_pb2.GetPoolRequest(pool_id=pool_id)).pool)

    def list_pools(self, page_size: int = 100) -> list[Pool]:
        """Every pool, following pagination."""
        pools, token = [], ""
        while True:
            r = self._call(self._stub.ListPools,
                           assay_pb2.ListPoolsRequest(page_size=page_size, page_token=token))
            pools.extend(_pool(p) for p in r.pools)
            token = r.next_page_token
            if not token:
                return pools

    def delete_pool(self, pool_id: str) -> None:
        self._call(self._stub.DeletePool, assay_pb2.DeletePoolRequest(pool_id=pool_id))

    def label(self, pool_id: str, indices, labels, *, request_id: str | None = None) -> Pool:
        """Mark items labeled with their class labels."""
        request = assay_pb2.LabelPoolItemsRequest(
            pool_id=pool_id, indices=np.asarray(indices, np.int64).tolist(),
            labels=np.asarray(labels, np.int64).tolist(),
            request_id=request_id or str(uuid.uuid4()))
        return _pool(self._call(self._stub.LabelPoolItems, request).pool)

    def record_epoch(self, pool_id: str, *, predicted_labels: np.ndarray | None = None,
                     probs: np.ndarray | None = None,
                     request_id: str | None = None) -> tuple[Pool, int]:
        """Store one epoch's predictions for every pool item (labels [N], or probs [N, C]).

        Returns the pool and the epoch's index. The stored epochs feed
        ``label_dispersion`` and ``forgetting_events`` on the pool.
        """
        if (predicted_labels is None) == (probs is None):
            raise ValueError("give exactly one of predicted_labels and probs")
        request = assay_pb2.RecordEpochRequest(pool_id=pool_id,
                                               request_id=request_id or str(uuid.uuid4()))
        if probs is not None:
            request.probs.CopyFrom(to_proto(np.asarray(probs)))
        else:
            request.predicted_labels.CopyFrom(to_proto(np.asarray(predicted_labels)))
        r = self._call(self._stub.RecordEpoch, request)
        return _pool(r.pool), r.epoch

    def append(self, pool_id: str, *, request_id: str | None = None,
               chunk_bytes: int = CHUNK_BYTES, timeout: float | None = None,
               **arrays: np.ndarray) -> tuple[Pool, int, int]:
        """Stream arrays (``probs=``, ``embeddings=``, ...) into a pool in chunks.

        Raw inputs of a model with several graph inputs go as a dict,
        ``model_inputs={"input_ids": ids, "attention_mask": mask}`` (stored as
        ``model_inputs.input_ids`` and ``model_inputs.attention_mask``). Returns
        (pool, first_index, appended_count). Nothing is stored unless the whole
        stream arrives.
        """
        r = self._upload("AppendPoolItems", assay_pb2.AppendPoolItemsResponse, pool_id,
                         request_id, chunk_bytes, timeout, arrays)
        return _pool(r.pool), r.first_index, r.appended_count

    def replace(self, pool_id: str, *, request_id: str | None = None,
                chunk_bytes: int = CHUNK_BYTES, timeout: float | None = None,
                **arrays: np.ndarray) -> Pool:
        """Replace arrays (``probs=``, ``embeddings=``, ...) of a pool for all its items.

        One round of an active-learning loop: the retrained model's outputs take the
        place of the last round's, while the pool keeps its other arrays (raw
        ``model_inputs``), its labels and recorded epochs. Every array must cover
        exactly the pool's items; an array may change its width or dtype, or be new.
        Streamed in chunks like ``append``; nothing changes unless the whole stream
        arrives. Returns the pool at its new version (``Selection.pool_version`` of
        later Selects).
        """
        return _pool(self._upload("ReplacePoolArrays", assay_pb2.ReplacePoolArraysResponse,
                                  pool_id, request_id, chunk_bytes, timeout, arrays).pool)

    def _upload(self, method: str, response_type, pool_id: str, request_id: str | None,
                chunk_bytes: int, timeout: float | None, arrays: Mapping[str, Any]):
        """Stream ``arrays`` to ``method`` (an append or a replace: their messages have the
        same field numbers) and return its response."""
        arrays = _named_inputs(arrays)
        unknown = {name for name in arrays if not roles.is_role(name)}
        if unknown:
            # Roles that a pool derives instead of storing go to the server, which says why.
            raise ValueError(f"unknown arrays {sorted(unknown)}; the roles are "
                             f"{', '.join(roles.names())}")
        prepared = {k: np.ascontiguousarray(np.asarray(v)) for k, v in arrays.items()}
        header = assay_pb2.AppendHeader(pool_id=pool_id, request_id=request_id or str(uuid.uuid4()))
        for name, a in prepared.items():
            header.arrays.add(name=name, dtype=enum_of(a.dtype), shape=a.shape)
        # The stream's messages are encoded by _chunks, so the call sends bytes as they are.
        upload = self._channel.stream_unary(
            f"/assay.v1.AssayService/{method}", request_serializer=None,
            response_deserializer=response_type.FromString)
        return self._call(upload, self._chunks(header, prepared, chunk_bytes), timeout)

    @staticmethod
    def _chunks(header: assay_pb2.AppendHeader, arrays: dict[str, np.ndarray],
                chunk_bytes: int) -> Iterator[bytes]:
        """Serialized ``AppendPoolItemsRequest`` messages: the header, then the chunks.

        A chunk message is encoded around a slice of the array's buffer in one
        copy. Building it as a protobuf message would copy the slice three times
        (into ``bytes``, into the message, into its serialization), which on a
        small machine costs about as much as the loopback transfer. The bytes are
        exactly what ``SerializeToString`` writes: fields in number order, the
        zero ``array_index``/``offset`` left out.
        """
        yield assay_pb2.AppendPoolItemsRequest(header=header).SerializeToString()
        for index, array in enumerate(arrays.values()):
            # The wire is little-endian whatever the host: big-endian arrays ('>f4', or
            # native ones on a big-endian host) are converted; little-endian ones pass as is.
            array = little_endian(array)
            data = memoryview(array.reshape(-1).view(np.uint8))
            for offset in range(0, len(data), chunk_bytes):
                piece = data[offset:offset + chunk_bytes]
                fields = assay_pb2.AppendChunk(array_index=index, offset=offset).SerializeToString()
                fields += _DATA_TAG + _varint(len(piece))
                yield b"".join((_CHUNK_TAG, _varint(len(fields) + len(piece)), fields, piece))
