import datetime

from assay.v1 import tensor_pb2 as _tensor_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ParamType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PARAM_TYPE_UNSPECIFIED: _ClassVar[ParamType]
    PARAM_TYPE_DOUBLE: _ClassVar[ParamType]
    PARAM_TYPE_INT: _ClassVar[ParamType]
    PARAM_TYPE_STRING: _ClassVar[ParamType]
    PARAM_TYPE_BOOL: _ClassVar[ParamType]
PARAM_TYPE_UNSPECIFIED: ParamType
PARAM_TYPE_DOUBLE: ParamType
PARAM_TYPE_INT: ParamType
PARAM_TYPE_STRING: ParamType
PARAM_TYPE_BOOL: ParamType

class ArrayInfo(_message.Message):
    __slots__ = ("name", "dtype", "shape")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: _tensor_pb2.DataType
    shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[_Union[_tensor_pb2.DataType, str]] = ..., shape: _Optional[_Iterable[int]] = ...) -> None: ...

class Pool(_message.Message):
    __slots__ = ("pool_id", "item_count", "labeled_count", "version", "arrays", "create_time", "update_time", "size_bytes", "shards")
    POOL_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_COUNT_FIELD_NUMBER: _ClassVar[int]
    LABELED_COUNT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ARRAYS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    pool_id: str
    item_count: int
    labeled_count: int
    version: int
    arrays: _containers.RepeatedCompositeFieldContainer[ArrayInfo]
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    size_bytes: int
    shards: int
    def __init__(self, pool_id: _Optional[str] = ..., item_count: _Optional[int] = ..., labeled_count: _Optional[int] = ..., version: _Optional[int] = ..., arrays: _Optional[_Iterable[_Union[ArrayInfo, _Mapping]]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., size_bytes: _Optional[int] = ..., shards: _Optional[int] = ...) -> None: ...

class CreatePoolRequest(_message.Message):
    __slots__ = ("pool_id", "shards", "expected_items")
    POOL_ID_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_ITEMS_FIELD_NUMBER: _ClassVar[int]
    pool_id: str
    shards: int
    expected_items: int
    def __init__(self, pool_id: _Optional[str] = ..., shards: _Optional[int] = ..., expected_items: _Optional[int] = ...) -> None: ...

class CreatePoolResponse(_message.Message):
    __slots__ = ("pool",)
    POOL_FIELD_NUMBER: _ClassVar[int]
    pool: Pool
    def __init__(self, pool: _Optional[_Union[Pool, _Mapping]] = ...) -> None: ...

class ArrayHeader(_message.Message):
    __slots__ = ("name", "dtype", "shape")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: _tensor_pb2.DataType
    shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[_Union[_tensor_pb2.DataType, str]] = ..., shape: _Optional[_Iterable[int]] = ...) -> None: ...

class AppendHeader(_message.Message):
    __slots__ = ("pool_id", "arrays", "request_id")
    POOL_ID_FIELD_NUMBER: _ClassVar[int]
    ARRAYS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    pool_id: str
    arrays: _containers.RepeatedCompositeFieldContainer[ArrayHeader]
    request_id: str
    def __init__(self, pool_id: _Optional[str] = ..., arrays: _Optional[_Iterable[_Union[ArrayHeader, _Mapping]]] = ..., request_id: _Optional[str] = ...) -> None: ...

class AppendChunk(_message.Message):
    __slots__ = ("array_index", "offset", "data")
    ARRAY_INDEX_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    array_index: int
    offset: int
    data: bytes
    def __init__(self, array_index: _Optional[int] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class AppendPoolItemsRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: AppendHeader
    chunk: AppendChunk
    def __init__(self, header: _Optional[_Union[AppendHeader, _Mapping]] = ..., chunk: _Optional[_Union[AppendChunk, _Mapping]] = ...) -> None: ...

class ReplacePoolArraysRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: AppendHeader
    chunk: AppendChunk
    def __init__(self, header: _Optional[_Union[AppendHeader, _Mapping]] = ..., chunk: _Optional[_Union[AppendChunk, _Mapping]] = ...) -> None: ...

class ReplacePoolArraysResponse(_message.Message):
    __slots__ = ("pool",)
    POOL_FIELD_NUMBER: _ClassVar[int]
    pool: Pool
    def __init__(self, pool: _Optional[_Union[Pool, _Mapping]] = ...) -> None: ...

class AppendPoolItemsResponse(_message.Message):
    __slots__ = ("pool", "first_index", "appended_count")
    POOL_FIELD_NUMBER: _ClassVar[int]
    FIRST_INDEX_FIELD_NUMBER: _ClassVar[int]
    APPENDED_COUNT_FIELD_NUMBER: _ClassVar[int]
    pool: Pool
    first_index: int
    appended_count: int
    def __init__(self, pool: _Optional[_Union[Pool, _Mapping]] = ..., first_index: _Optional[int] = ..., appended_count: _Optional[int] = ...) -> None: ...

class LabelPoolItemsRequest(_message.Message):
    __slots__ = ("pool_id", "indices", "labels", "request_id")
    POOL_ID_FIELD_NUMBER: _ClassVar[int]
    INDICES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    pool_id: str
    indices: _containers.RepeatedScalarFieldContainer[int]
    labels: _containers.RepeatedScalarFieldContainer[int]
    request_id: str
    def __init__(self, pool_id: _Optional[str] = ..., indices: _Optional[_Iterable[int]] = ..., labels: _Optional[_Iterable[int]] = ..., request_id: _Optional[str] = ...) -> None: ...

class LabelPoolItemsResponse(_message.Message):
    __slots__ = ("pool",)
    POOL_FIELD_NUMBER: _ClassVar[int]
    pool: Pool
    def __init__(self, pool: _Optional[_Union[Pool, _Mapping]] = ...) -> None: ...

class RecordEpochRequest(_message.Message):
    __slots__ = ("pool_id", "predicted_labels", "probs", "request_id")
    POOL_ID_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_LABELS_FIELD_NUMBER: _ClassVar[int]
    PROBS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    pool_id: str
    predicted_labels: _tensor_pb2.Tensor
    probs: _tensor_pb2.Tensor
    request_id: str
    def __init__(self, pool_id: _Optional[str] = ..., predicted_labels: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., probs: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class RecordEpochResponse(_message.Message):
    __slots__ = ("pool", "epoch")
    POOL_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    pool: Pool
    epoch: int
    def __init__(self, pool: _Optional[_Union[Pool, _Mapping]] = ..., epoch: _Optional[int] = ...) -> None: ...

class GetPoolRequest(_message.Message):
    __slots__ = ("pool_id",)
    POOL_ID_FIELD_NUMBER: _ClassVar[int]
    pool_id: str
    def __init__(self, pool_id: _Optional[str] = ...) -> None: ...

class GetPoolResponse(_message.Message):
    __slots__ = ("pool",)
    POOL_FIELD_NUMBER: _ClassVar[int]
    pool: Pool
    def __init__(self, pool: _Optional[_Union[Pool, _Mapping]] = ...) -> None: ...

class ListPoolsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListPoolsResponse(_message.Message):
    __slots__ = ("pools", "next_page_token")
    POOLS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    pools: _containers.RepeatedCompositeFieldContainer[Pool]
    next_page_token: str
    def __init__(self, pools: _Optional[_Iterable[_Union[Pool, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeletePoolRequest(_message.Message):
    __slots__ = ("pool_id",)
    POOL_ID_FIELD_NUMBER: _ClassVar[int]
    pool_id: str
    def __init__(self, pool_id: _Optional[str] = ...) -> None: ...

class DeletePoolResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Inputs(_message.Message):
    __slots__ = ("probs", "samples", "embeddings", "labeled_embeddings", "scores", "loss", "discriminator", "predictions", "labeled_probs", "labels", "target_samples", "model_inputs", "named_model_inputs")
    class NamedModelInputsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _tensor_pb2.Tensor
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ...) -> None: ...
    PROBS_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    LABELED_EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    DISCRIMINATOR_FIELD_NUMBER: _ClassVar[int]
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    LABELED_PROBS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    TARGET_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    MODEL_INPUTS_FIELD_NUMBER: _ClassVar[int]
    NAMED_MODEL_INPUTS_FIELD_NUMBER: _ClassVar[int]
    probs: _tensor_pb2.Tensor
    samples: _tensor_pb2.Tensor
    embeddings: _tensor_pb2.Tensor
    labeled_embeddings: _tensor_pb2.Tensor
    scores: _tensor_pb2.Tensor
    loss: _tensor_pb2.Tensor
    discriminator: _tensor_pb2.Tensor
    predictions: _tensor_pb2.Tensor
    labeled_probs: _tensor_pb2.Tensor
    labels: _tensor_pb2.Tensor
    target_samples: _tensor_pb2.Tensor
    model_inputs: _tensor_pb2.Tensor
    named_model_inputs: _containers.MessageMap[str, _tensor_pb2.Tensor]
    def __init__(self, probs: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., samples: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., embeddings: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., labeled_embeddings: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., scores: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., loss: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., discriminator: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., predictions: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., labeled_probs: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., labels: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., target_samples: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., model_inputs: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., named_model_inputs: _Optional[_Mapping[str, _tensor_pb2.Tensor]] = ...) -> None: ...

class ParamValue(_message.Message):
    __slots__ = ("double_value", "int_value", "string_value", "bool_value")
    DOUBLE_VALUE_FIELD_NUMBER: _ClassVar[int]
    INT_VALUE_FIELD_NUMBER: _ClassVar[int]
    STRING_VALUE_FIELD_NUMBER: _ClassVar[int]
    BOOL_VALUE_FIELD_NUMBER: _ClassVar[int]
    double_value: float
    int_value: int
    string_value: str
    bool_value: bool
    def __init__(self, double_value: _Optional[float] = ..., int_value: _Optional[int] = ..., string_value: _Optional[str] = ..., bool_value: _Optional[bool] = ...) -> None: ...

class SelectRequest(_message.Message):
    __slots__ = ("strategy", "budget", "inputs", "pool_id", "params", "seed", "request_id", "exclude_indices", "model_ids", "mc_samples", "batch_size")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: ParamValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[ParamValue, _Mapping]] = ...) -> None: ...
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    POOL_ID_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_INDICES_FIELD_NUMBER: _ClassVar[int]
    MODEL_IDS_FIELD_NUMBER: _ClassVar[int]
    MC_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    strategy: str
    budget: int
    inputs: Inputs
    pool_id: str
    params: _containers.MessageMap[str, ParamValue]
    seed: int
    request_id: str
    exclude_indices: _containers.RepeatedScalarFieldContainer[int]
    model_ids: _containers.RepeatedScalarFieldContainer[str]
    mc_samples: int
    batch_size: int
    def __init__(self, strategy: _Optional[str] = ..., budget: _Optional[int] = ..., inputs: _Optional[_Union[Inputs, _Mapping]] = ..., pool_id: _Optional[str] = ..., params: _Optional[_Mapping[str, ParamValue]] = ..., seed: _Optional[int] = ..., request_id: _Optional[str] = ..., exclude_indices: _Optional[_Iterable[int]] = ..., model_ids: _Optional[_Iterable[str]] = ..., mc_samples: _Optional[int] = ..., batch_size: _Optional[int] = ...) -> None: ...

class SelectResponse(_message.Message):
    __slots__ = ("indices", "scores", "strategy", "backend", "seed", "pool_version", "request_id", "metrics", "pseudo_label_indices", "pseudo_labels", "compute_seconds", "execution_providers")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    INDICES_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    POOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    PSEUDO_LABEL_INDICES_FIELD_NUMBER: _ClassVar[int]
    PSEUDO_LABELS_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    indices: _containers.RepeatedScalarFieldContainer[int]
    scores: _containers.RepeatedScalarFieldContainer[float]
    strategy: str
    backend: str
    seed: int
    pool_version: int
    request_id: str
    metrics: _containers.ScalarMap[str, float]
    pseudo_label_indices: _containers.RepeatedScalarFieldContainer[int]
    pseudo_labels: _containers.RepeatedScalarFieldContainer[int]
    compute_seconds: float
    execution_providers: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, indices: _Optional[_Iterable[int]] = ..., scores: _Optional[_Iterable[float]] = ..., strategy: _Optional[str] = ..., backend: _Optional[str] = ..., seed: _Optional[int] = ..., pool_version: _Optional[int] = ..., request_id: _Optional[str] = ..., metrics: _Optional[_Mapping[str, float]] = ..., pseudo_label_indices: _Optional[_Iterable[int]] = ..., pseudo_labels: _Optional[_Iterable[int]] = ..., compute_seconds: _Optional[float] = ..., execution_providers: _Optional[_Iterable[str]] = ...) -> None: ...

class ListStrategiesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ParamSpec(_message.Message):
    __slots__ = ("name", "type", "default_value", "minimum", "maximum", "choices", "description")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_VALUE_FIELD_NUMBER: _ClassVar[int]
    MINIMUM_FIELD_NUMBER: _ClassVar[int]
    MAXIMUM_FIELD_NUMBER: _ClassVar[int]
    CHOICES_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: ParamType
    default_value: ParamValue
    minimum: float
    maximum: float
    choices: _containers.RepeatedScalarFieldContainer[str]
    description: str
    def __init__(self, name: _Optional[str] = ..., type: _Optional[_Union[ParamType, str]] = ..., default_value: _Optional[_Union[ParamValue, _Mapping]] = ..., minimum: _Optional[float] = ..., maximum: _Optional[float] = ..., choices: _Optional[_Iterable[str]] = ..., description: _Optional[str] = ...) -> None: ...

class StrategyInfo(_message.Message):
    __slots__ = ("name", "description", "required_inputs", "optional_inputs", "params", "kind")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    REQUIRED_INPUTS_FIELD_NUMBER: _ClassVar[int]
    OPTIONAL_INPUTS_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    required_inputs: _containers.RepeatedScalarFieldContainer[str]
    optional_inputs: _containers.RepeatedScalarFieldContainer[str]
    params: _containers.RepeatedCompositeFieldContainer[ParamSpec]
    kind: str
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., required_inputs: _Optional[_Iterable[str]] = ..., optional_inputs: _Optional[_Iterable[str]] = ..., params: _Optional[_Iterable[_Union[ParamSpec, _Mapping]]] = ..., kind: _Optional[str] = ...) -> None: ...

class ListStrategiesResponse(_message.Message):
    __slots__ = ("strategies",)
    STRATEGIES_FIELD_NUMBER: _ClassVar[int]
    strategies: _containers.RepeatedCompositeFieldContainer[StrategyInfo]
    def __init__(self, strategies: _Optional[_Iterable[_Union[StrategyInfo, _Mapping]]] = ...) -> None: ...
