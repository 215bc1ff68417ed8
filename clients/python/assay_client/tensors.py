"""Codec between ``assay.v1.Tensor`` and NumPy arrays.

The wire contract is KServe v2's raw contents: little-endian, row-major bytes with
``len(data) == prod(shape) * itemsize``. Decoding is zero-copy (``np.frombuffer``)
so large inline tensors are not duplicated; bfloat16 uses ``ml_dtypes`` so it is
a real NumPy dtype everywhere above the kernels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from assay.v1 import tensor_pb2
from assay.vocab.dtypes import BFLOAT16
from assay.vocab.errors import InvalidInput

#: Wire enum value -> little-endian NumPy dtype.
DTYPES: dict[int, np.dtype] = {
    tensor_pb2.DATA_TYPE_FP32: np.dtype("<f4"),
    tensor_pb2.DATA_TYPE_FP16: np.dtype("<f2"),
    tensor_pb2.DATA_TYPE_FP64: np.dtype("<f8"),
    tensor_pb2.DATA_TYPE_INT32: np.dtype("<i4"),
    tensor_pb2.DATA_TYPE_INT64: np.dtype("<i8"),
    tensor_pb2.DATA_TYPE_BF16: BFLOAT16,
}

#: Canonical short names (KServe v2 spelling) used in messages and metadata.
DTYPE_NAMES: dict[int, str] = {
    tensor_pb2.DATA_TYPE_FP32: "FP32",
    tensor_pb2.DATA_TYPE_FP16: "FP16",
    tensor_pb2.DATA_TYPE_FP64: "FP64",
    tensor_pb2.DATA_TYPE_INT32: "INT32",
    tensor_pb2.DATA_TYPE_INT64: "INT64",
    tensor_pb2.DATA_TYPE_BF16: "BF16",
}
NAME_TO_ENUM = {v: k for k, v in DTYPE_NAMES.items()}

#: Upper bound on dimensions; deeper tensors are never meaningful here.
MAX_RANK = 8
#: Largest tensor one message can carry (protobuf cannot encode 2 GiB): the default
#: bound on what a zero-size tensor's other dimensions may describe.
MAX_TENSOR_BYTES = (2 << 30) - 1


def numpy_dtype(enum_value: int, field: str) -> np.dtype:
    """Return the NumPy dtype of a wire ``DataType``, or raise ``InvalidInput``."""
    try:
        return DTYPES[enum_value]
    except KeyError:
        allowed = ", ".join(DTYPE_NAMES.values())
        raise InvalidInput(
            f"{field}.dtype is {'unset' if enum_value == 0 else enum_value}; use one of {allowed}",
            field=f"{field}.dtype",
        ) from None


def enum_of(dtype: np.dtype) -> int:
    """Return the wire ``DataType`` of a NumPy dtype (byte order ignored)."""
    dtype = np.dtype(dtype)
    if dtype == BFLOAT16:
        return tensor_pb2.DATA_TYPE_BF16
    for enum_value, candidate in DTYPES.items():
        if candidate.kind == dtype.kind and candidate.itemsize == dtype.itemsize:
            return enum_value
    raise TypeError(f"dtype {dtype} has no Assay wire type; use float32/16/64, bfloat16, int32/64")


def check_shape(shape, field: str, *, itemsize: int = 1, max_bytes: int = MAX_TENSOR_BYTES,
                min_dim: int = 0) -> tuple[int, ...]:
    """Validate a declared shape: rank <= MAX_RANK, every dimension >= ``min_dim``, no
    overflow, and every dimension bounded, not only their product.

    A zero dimension makes the product 0 whatever the others claim, so ``[0, 2^62]``
    passes a product check with no data behind it, and a later step that allocates
    along the other axis (per class, per column) asks for exabytes. So the extent,
    the product with zeros counted as 1 times ``itemsize``, must fit ``max_bytes``:
    what one message of that tensor could hold.
    """
    dims = tuple(int(d) for d in shape)
    if len(dims) > MAX_RANK:
        raise InvalidInput(f"{field}.shape has rank {len(dims)}; at most {MAX_RANK}", field=field)
    if any(d < 0 for d in dims):
        raise InvalidInput(f"{field}.shape {list(dims)} has a negative dimension", field=field)
    if any(d < min_dim for d in dims):
        raise InvalidInput(f"{field}.shape {list(dims)} has an empty dimension; every "
                           f"dimension must be >= {min_dim} (nothing is stored without data)",
                           field=field, reason="EMPTY_DIMENSION")
    size = math.prod(dims)
    if size > 2**62:
        raise InvalidInput(f"{field}.shape {list(dims)} is too large", field=field,
                           reason="SHAPE_TOO_LARGE")
    extent = math.prod(max(d, 1) for d in dims) * itemsize
    if size == 0 and extent > max_bytes:
        raise InvalidInput(
            f"{field}.shape {list(dims)} is empty, yet its other dimensions describe "
            f"{extent} bytes, over the {max_bytes} this tensor may hold; every dimension "
            "must fit the data it could carry", field=field, reason="SHAPE_TOO_LARGE")
    return dims


def from_proto(tensor: tensor_pb2.Tensor, field: str,
               max_bytes: int = MAX_TENSOR_BYTES) -> np.ndarray:
    """Decode a Tensor into a read-only NumPy view of its bytes (see ``from_parts``)."""
    return from_parts(tensor.dtype, tensor.shape, tensor.data, field, max_bytes)


def from_parts(dtype_enum: int, dims: Sequence[int], data: bytes | memoryview, field: str,
               max_bytes: int = MAX_TENSOR_BYTES) -> np.ndarray:
    """A read-only NumPy view of ``data`` as a Tensor of that dtype and shape.

    Raises ``InvalidInput`` naming ``field`` when the dtype is unknown, the byte
    length does not match the shape, or a zero-size shape's other dimensions describe
    more than ``max_bytes`` (see ``check_shape``).
    """
    dtype = numpy_dtype(dtype_enum, field)
    shape = check_shape(dims, field, itemsize=dtype.itemsize, max_bytes=max_bytes)
    expected = math.prod(shape) * dtype.itemsize
    if len(data) != expected:
        raise InvalidInput(
            f"{field}.data has {len(data)} bytes but shape {list(shape)} of "
            f"{DTYPE_NAMES[dtype_enum]} needs {expected}",
            field=f"{field}.data",
        )
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def to_proto(array: np.ndarray) -> tensor_pb2.Tensor:
    """Encode an array as a Tensor (little-endian, C order)."""
    array = np.asarray(array)
    enum_value = enum_of(array.dtype)
    wire = DTYPES[enum_value]
    data = np.ascontiguousarray(array, dtype=wire).tobytes()
    return tensor_pb2.Tensor(dtype=enum_value, shape=list(array.shape), data=data)


def as_float(array: np.ndarray) -> np.ndarray:
    """Return a floating array for computation: 16-bit types widen to float32."""
    if array.dtype in (np.float32, np.float64):
        return array
    if array.dtype.kind == "f" or array.dtype == BFLOAT16:
        return array.astype(np.float32)
    return array.astype(np.float64)
