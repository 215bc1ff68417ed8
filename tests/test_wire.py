"""Select and upload messages read from their wire bytes (server/edge/wire.py).

The reference is protobuf's own parser: whatever the scan reads in place must be what
``FromString`` reads, on requests built with every field the messages have, and on
encodings protobuf accepts but does not write by default (unpacked shapes, fields out
of order, maps in any order).
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import seeding
from test_onnx_safety import reason_of

from assay.server.edge.wire import read_select, read_upload
from assay.v1 import assay_pb2, tensor_pb2
from assay.vocab.errors import InvalidInput

_TENSOR_FIELDS = [f.name for f in assay_pb2.Inputs.DESCRIPTOR.fields if not f.is_repeated]


@pytest.fixture
def rng():
    return seeding.rng()


def _tensor(rng: np.random.Generator) -> tensor_pb2.Tensor:
    shape = rng.integers(0, 4, size=rng.integers(1, 4)).tolist()
    data = rng.bytes(int(np.prod(shape)) * 4)
    return tensor_pb2.Tensor(dtype=tensor_pb2.DATA_TYPE_FP32, shape=shape, data=data)


def _request(rng: np.random.Generator) -> assay_pb2.SelectRequest:
    r = assay_pb2.SelectRequest(strategy="entropy", budget=int(rng.integers(1, 9)),
                                request_id=f"id-{rng.integers(1 << 30)}",
                                exclude_indices=rng.integers(0, 99, size=5).tolist(),
                                model_ids=["a", "b"], mc_samples=3, batch_size=-2)
    r.seed = int(rng.integers(1 << 63))
    r.params["k"].int_value = 4
    r.params["prefilter"].string_value = "margin"
    r.inputs.SetInParent()
    for name in rng.choice(_TENSOR_FIELDS, size=4, replace=False):
        getattr(r.inputs, name).CopyFrom(_tensor(rng))
    for key in ("input_ids", "attention_mask"):
        r.inputs.named_model_inputs[key].CopyFrom(_tensor(rng))
    return r


def _without_data(request: assay_pb2.SelectRequest) -> assay_pb2.SelectRequest:
    out = assay_pb2.SelectRequest()
    out.CopyFrom(request)
    for name in _TENSOR_FIELDS:
        if out.inputs.HasField(name):
            getattr(out.inputs, name).data = b""
    for t in out.inputs.named_model_inputs.values():
        t.data = b""
    return out


def _data_of(request: assay_pb2.SelectRequest) -> dict[str, bytes]:
    data = {n: getattr(request.inputs, n).data for n in _TENSOR_FIELDS
            if request.inputs.HasField(n)}
    data.update({f"model_inputs.{k}": t.data for k, t in request.inputs.named_model_inputs.items()})
    return data


def test_a_select_reads_as_protobuf_reads_it(rng):
    for _ in range(20):
        request = _request(rng)
        wire = read_select(request.SerializeToString())
        assert wire.message == _without_data(request)
        assert {k: bytes(t.data) for k, t in wire.tensors.items()} == _data_of(request)
        for name, t in wire.tensors.items():
            source = (request.inputs.named_model_inputs[name.split(".", 1)[1]]
                      if name.startswith("model_inputs.") else getattr(request.inputs, name))
            assert (t.dtype, t.shape) == (source.dtype, list(source.shape))


def test_a_pool_select_and_an_empty_inputs_message():
    pool = assay_pb2.SelectRequest(strategy="margin", budget=3, pool_id="p")
    wire = read_select(pool.SerializeToString())
    assert wire.message == pool and wire.tensors == {}
    empty = assay_pb2.SelectRequest(strategy="margin", budget=3)
    empty.inputs.SetInParent()
    wire = read_select(empty.SerializeToString())
    assert wire.message.WhichOneof("source") == "inputs" and wire.tensors == {}


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def test_unpacked_shapes_and_fields_out_of_order():
    """Encodings protobuf accepts: a repeated int64 unpacked, data before dtype, the inputs
    field before the strategy."""
    data = np.arange(6, dtype=np.float32).tobytes()
    tensor = (_field(3, data) + _varint(1 << 3) + _varint(tensor_pb2.DATA_TYPE_FP32)
              + _varint(2 << 3) + _varint(2) + _varint(2 << 3) + _varint(3))
    raw = _field(3, _field(1, tensor)) + _field(1, b"entropy") + _varint(2 << 3) + _varint(2)
    expected = assay_pb2.SelectRequest.FromString(raw)
    wire = read_select(raw)
    assert wire.message == _without_data(expected)
    assert bytes(wire.tensors["probs"].data) == data and wire.tensors["probs"].shape == [2, 3]


def test_malformed_bytes_are_invalid_input(rng):
    raw = _request(rng).SerializeToString()
    for bad in (raw[:-3], raw[:len(raw) // 2], b"\xff" * 12, b"\x0b\x00"):
        with pytest.raises(InvalidInput):
            read_select(bad)
        with pytest.raises(InvalidInput):
            read_upload(bad)


def test_the_fingerprint_ignores_the_id_and_map_order_but_not_a_byte(rng):
    request = _request(rng)
    base = read_select(request.SerializeToString()).fingerprint()
    other_id = assay_pb2.SelectRequest()
    other_id.CopyFrom(request)
    other_id.request_id = "another"
    assert read_select(other_id.SerializeToString()).fingerprint() == base
    # The same params map written in the other order.
    reordered = assay_pb2.SelectRequest()
    reordered.CopyFrom(request)
    reordered.params.clear()
    reordered.params["prefilter"].string_value = "margin"
    reordered.params["k"].int_value = 4
    assert read_select(reordered.SerializeToString()).fingerprint() == base
    changed = assay_pb2.SelectRequest()
    changed.CopyFrom(request)
    name = next(n for n in _TENSOR_FIELDS if changed.inputs.HasField(n)
                and getattr(changed.inputs, n).data)
    data = bytearray(getattr(changed.inputs, name).data)
    data[0] ^= 1
    getattr(changed.inputs, name).data = bytes(data)
    assert read_select(changed.SerializeToString()).fingerprint() != base
    changed.CopyFrom(request)
    changed.budget += 1
    assert read_select(changed.SerializeToString()).fingerprint() != base


def test_upload_messages(rng):
    header = assay_pb2.AppendPoolItemsRequest()
    header.header.pool_id = "p"
    header.header.arrays.add(name="probs", dtype=tensor_pb2.DATA_TYPE_FP32, shape=[2, 3])
    got = read_upload(header.SerializeToString())
    assert got.WhichOneof("part") == "header" and got.header == header.header
    data = rng.bytes(24)
    chunk = assay_pb2.AppendPoolItemsRequest()
    chunk.chunk.array_index, chunk.chunk.offset, chunk.chunk.data = 1, 48, data
    got = read_upload(chunk.SerializeToString())
    assert got.WhichOneof("part") == "chunk"
    assert (got.chunk.array_index, got.chunk.offset, bytes(got.chunk.data)) == (1, 48, data)
    assert read_upload(b"").WhichOneof("part") is None


def test_a_malformed_select_is_invalid_argument_over_grpc(server):
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        select = channel.unary_unary("/assay.v1.AssayService/Select")
        with pytest.raises(grpc.RpcError) as info:
            select(b"\x1a\xff\xff\xff\x0f", timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason_of(info.value)[1] == "request"
