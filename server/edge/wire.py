"""Reading the two large messages from their wire bytes: inline Select inputs, upload chunks.

Parsed as protobuf objects, a Select carrying 40 MB of probabilities is copied
four times before a strategy sees it: the parse copies every ``bytes`` field, each
read of ``tensor.data`` copies it again, and the idempotency fingerprint serializes
the whole message once more before hashing it. An upload chunk is copied twice or
three times the same way. Here the large fields are never copied: the handler gets
the bytes gRPC received, a scan of the wire format (a handful of fields, so a few
microseconds of Python) finds where each tensor's data lies, and arrays are NumPy
views of those bytes. Everything else (strategy, params, ids, dtypes, shapes) is
parsed by protobuf as usual, from a copy of the message without the payloads.

The fingerprint that binds a request id to its request hashes that payload-free
message (serialized deterministically, so map order does not matter) and each
payload's CRC32C: the same scheme an upload's data digest uses.

Bytes that are not a valid message of the type are ``InvalidInput`` (a parse
failure inside grpcio would surface as INTERNAL).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from assay.v1 import assay_pb2
from assay.vocab.errors import InvalidInput
from assay.vocab.roles import NAMED_MODEL_INPUTS

from .idempotency import crc32c, fingerprint

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
#: Field numbers of the messages read here (see protos/assay/v1).
_SELECT_INPUTS = 3
_NAMED_MODEL_INPUTS = 17
_MAP_KEY, _MAP_VALUE = 1, 2
_TENSOR_DTYPE, _TENSOR_SHAPE, _TENSOR_DATA = 1, 2, 3
_UPLOAD_HEADER, _UPLOAD_CHUNK = 1, 2
_CHUNK_INDEX, _CHUNK_OFFSET, _CHUNK_DATA = 1, 2, 3
_INPUT_FIELDS = {f.number: f.name for f in assay_pb2.Inputs.DESCRIPTOR.fields
                 if f.message_type is not None and not f.is_repeated}


class _Malformed(Exception):
    pass


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _Malformed
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _fields(buf: memoryview, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(number, wire type, a, b) of each field in ``buf[start:end]``: a varint's value in
    ``a``; a length-delimited field's bytes at ``buf[a:b]``."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, kind = key >> 3, key & 7
        if number == 0:
            raise _Malformed
        if kind == _VARINT:
            value, pos = _varint(buf, pos, end)
            yield number, kind, value, pos
        elif kind == _LEN:
            length, pos = _varint(buf, pos, end)
            if pos + length > end:
                raise _Malformed
            yield number, kind, pos, pos + length
            pos += length
        elif kind in (_I64, _I32):
            pos += 8 if kind == _I64 else 4
            if pos > end:
                raise _Malformed
        else:  # groups: never written by proto3
            raise _Malformed


@dataclass
class WireTensor:
    """A Tensor read in place: its dtype enum, shape, and data as a view of the wire bytes."""

    dtype: int
    shape: list[int]
    data: memoryview


def _tensor(buf: memoryview, start: int, end: int) -> WireTensor:
    tensor = WireTensor(0, [], buf[0:0])
    for number, kind, a, b in _fields(buf, start, end):
        if number == _TENSOR_DTYPE and kind == _VARINT:
            tensor.dtype = a
        elif number == _TENSOR_SHAPE and kind == _VARINT:
            tensor.shape.append(_signed(a))
        elif number == _TENSOR_SHAPE and kind == _LEN:  # packed
            pos = a
            while pos < b:
                value, pos = _varint(buf, pos, b)
                tensor.shape.append(_signed(value))
        elif number == _TENSOR_DATA and kind == _LEN:
            tensor.data = buf[a:b]
    return tensor


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


@dataclass
class SelectWire:
    """A SelectRequest read from its wire bytes.

    ``message`` is the request with every inline tensor's ``data`` left empty (its
    dtype and shape kept); ``tensors`` maps each inline array's name (an ``Inputs``
    field, or ``model_inputs.<key>`` for ``named_model_inputs``) to its tensor.
    """

    message: assay_pb2.SelectRequest
    tensors: dict[str, WireTensor]

    def fingerprint(self) -> str:
        """What a retry under the same request id must match: the payload-free message
        without its id, and each payload's name, length and CRC32C."""
        digest = hashlib.sha256(fingerprint(self.message).encode())
        for name in sorted(self.tensors):
            data = self.tensors[name].data
            digest.update(f"\0{name}\0{len(data)}\0{crc32c(data):08x}".encode())
        return digest.hexdigest()


def read_select(raw: bytes) -> SelectWire:
    """Parse a serialized SelectRequest, its inline tensors' data left in place."""
    buf = memoryview(raw)
    tensors: dict[str, WireTensor] = {}
    spans: list[tuple[int, int]] = []  # the inputs field(s), left out of the parse below
    try:
        for number, kind, a, b in _fields(buf, 0, len(buf)):
            if number == _SELECT_INPUTS and kind == _LEN:
                spans.append((a, b))
                tensors.update(_inputs(buf, a, b))
        message = assay_pb2.SelectRequest.FromString(_without(buf, spans))
    except (_Malformed, DecodeError, UnicodeDecodeError):
        raise InvalidInput("the request is not a valid SelectRequest message",
                           field="request") from None
    if spans:
        message.inputs.SetInParent()
        for name, tensor in tensors.items():
            if name.startswith(NAMED_MODEL_INPUTS):
                target = message.inputs.named_model_inputs[name[len(NAMED_MODEL_INPUTS):]]
            else:
                target = getattr(message.inputs, name)
            target.dtype = tensor.dtype
            target.shape.extend(tensor.shape)
    return SelectWire(message, tensors)


def _inputs(buf: memoryview, start: int, end: int) -> Iterator[tuple[str, WireTensor]]:
    """The tensors of an ``Inputs`` message, by array name."""
    for number, kind, a, b in _fields(buf, start, end):
        if kind != _LEN:
            continue
        if number in _INPUT_FIELDS:
            yield _INPUT_FIELDS[number], _tensor(buf, a, b)
        elif number == _NAMED_MODEL_INPUTS:  # a map entry: key 1, value 2
            key, value = "", WireTensor(0, [], buf[0:0])
            for n, k, x, y in _fields(buf, a, b):
                if n == _MAP_KEY and k == _LEN:
                    key = bytes(buf[x:y]).decode()
                elif n == _MAP_VALUE and k == _LEN:
                    value = _tensor(buf, x, y)
            yield NAMED_MODEL_INPUTS + key, value


def _without(buf: memoryview, spans: list[tuple[int, int]]) -> bytes:
    """The message's bytes without the length-delimited fields whose contents are ``spans``
    (their key and length prefixes dropped too)."""
    if not spans:
        return bytes(buf)
    out = bytearray()
    pos = 0
    for a, b in spans:
        out += buf[pos:_field_start(buf, pos, a)]
        pos = b
    out += buf[pos:]
    return bytes(out)


def _field_start(buf: memoryview, pos: int, contents: int) -> int:
    """Where the field whose contents start at ``contents`` begins (its key), scanning
    fields from ``pos``."""
    while pos < contents:
        start = pos
        key, pos = _varint(buf, pos, len(buf))
        kind = key & 7
        if kind == _LEN:
            length, pos = _varint(buf, pos, len(buf))
            if pos == contents:
                return start
            pos += length
        elif kind == _VARINT:
            _, pos = _varint(buf, pos, len(buf))
        else:
            pos += 8 if kind == _I64 else 4
    raise _Malformed


@dataclass
class WireChunk:
    """An upload chunk read in place (``AppendChunk``), its data a view of the wire bytes."""

    array_index: int
    offset: int
    data: memoryview


class UploadWire:
    """One message of an append or replace stream: ``header`` parsed, or a chunk in place.

    Mirrors the generated message where the stream code reads it
    (``WhichOneof("part")``, ``header``, ``chunk``).
    """

    __slots__ = ("chunk", "header")

    def __init__(self, header=None, chunk: WireChunk | None = None):
        self.header, self.chunk = header, chunk

    def WhichOneof(self, name: str) -> str | None:  # the protobuf method, for the stream code
        return "chunk" if self.chunk is not None else (
            "header" if self.header is not None else None)


def read_upload(raw: bytes) -> UploadWire:
    """Parse one serialized AppendPoolItemsRequest (or ReplacePoolArraysRequest: the same
    fields), a chunk's data left in place; a header is parsed by protobuf (it is small)."""
    buf = memoryview(raw)
    try:
        chunk = None
        for number, kind, a, b in _fields(buf, 0, len(buf)):
            if number == _UPLOAD_CHUNK and kind == _LEN:
                chunk = WireChunk(0, 0, buf[0:0])
                for n, k, x, y in _fields(buf, a, b):
                    if n == _CHUNK_INDEX and k == _VARINT:
                        chunk.array_index = _signed(x)
                    elif n == _CHUNK_OFFSET and k == _VARINT:
                        chunk.offset = _signed(x)
                    elif n == _CHUNK_DATA and k == _LEN:
                        chunk.data = buf[x:y]
            elif number == _UPLOAD_HEADER:
                message = assay_pb2.AppendPoolItemsRequest.FromString(raw)
                return UploadWire(header=message.header)
    except (_Malformed, DecodeError):
        raise InvalidInput("a stream message is not a valid AppendPoolItemsRequest",
                           field="chunk") from None
    return UploadWire(chunk=chunk)
