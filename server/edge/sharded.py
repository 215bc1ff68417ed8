"""The servicer's half for sharded pools: protobuf in, ``ShardedPools`` calls, protobuf out.

``AssayServicer`` hands a call here when the pool it names is sharded (or a
CreatePool asks for shards), so the sharded path shares the servicer's request
ids, limits, cancellation and metrics while the servicer itself stays a router
with one line per method. Like the servicer, this is the only place below it
where protobuf appears.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import numpy as np

from assay.v1 import assay_pb2
from assay.vocab.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidInput,
    NotFound,
)

from ..pools.store import ArraySpec, PoolInfo
from ..wiring.config import ServerConfig
from .streams import stream_chunks


def shards_for(request: assay_pb2.CreatePoolRequest, config: ServerConfig) -> int:
    """Shards a new pool gets: as asked, or one per ``auto_shard_items`` of its expected
    size when that exceeds the threshold; 0 means an ordinary, unsharded pool."""
    if request.shards < 0:
        raise InvalidInput(f"shards must be >= 0, got {request.shards}", field="shards")
    if request.shards:
        return int(request.shards)
    auto = config.auto_shard_items
    if auto and request.expected_items > auto:
        return -(-int(request.expected_items) // auto)
    return 0


def pool_proto(servicer, info: PoolInfo) -> assay_pb2.Pool:
    """``pool_to_proto`` plus the shard count of a sharded pool."""
    from .servicer import pool_to_proto

    pool = pool_to_proto(info)
    if servicer.sharded is not None and servicer.sharded.owns(info.pool_id):
        pool.shards = servicer.sharded.shards(info.pool_id)
    return pool


def create_pool(servicer, request: assay_pb2.CreatePoolRequest,
                shards: int) -> assay_pb2.CreatePoolResponse:
    if servicer.sharded is None:
        raise FailedPrecondition("sharded pools need a Ray cluster: start the server with "
                                 "--ray-address", field="shards", reason="NO_RAY")
    try:
        servicer.store.get_pool(request.pool_id)
    except NotFound:
        pass
    else:
        raise AlreadyExists(f"pool {request.pool_id!r} already exists", field="pool_id")
    info = servicer.sharded.create_pool(request.pool_id, shards)
    return assay_pb2.CreatePoolResponse(pool=pool_proto(servicer, info))


def get_pool(servicer, request) -> assay_pb2.GetPoolResponse:
    return assay_pb2.GetPoolResponse(pool=pool_proto(
        servicer, servicer.sharded.get_pool(request.pool_id)))


def merge_lists(servicer, pools: list[PoolInfo], after: str, limit: int) -> list[PoolInfo]:
    """Unsharded and sharded pools in one id order (ids are unique across both)."""
    both = pools + servicer.sharded.list_pools(after, limit)
    return sorted(both, key=lambda p: p.pool_id)[:limit]


def delete_pool(servicer, request) -> assay_pb2.DeletePoolResponse:
    servicer.sharded.delete_pool(request.pool_id)
    return assay_pb2.DeletePoolResponse()


def label(servicer, request, key) -> assay_pb2.LabelPoolItemsResponse:
    def stored(info: PoolInfo) -> None:
        if key is not None:
            servicer.store.put_request(key, assay_pb2.LabelPoolItemsResponse(
                pool=pool_proto(servicer, info)).SerializeToString())

    info = servicer.sharded.label(request.pool_id, np.asarray(request.indices, dtype=np.int64),
                                  np.asarray(request.labels, dtype=np.int64), stored)
    return assay_pb2.LabelPoolItemsResponse(pool=pool_proto(servicer, info))


def append(servicer, pool_id: str, specs: list[ArraySpec], messages: Iterator, key,
           context, check, digest=None) -> assay_pb2.AppendPoolItemsResponse:
    """``digest``: the stream's ``StreamDigest``, complete once the chunks are consumed and
    stored with the request record so a retry must send the same data."""
    def chunks():
        for chunk in stream_chunks(messages, context, check):
            servicer.metrics.add_bytes(len(chunk.data))
            yield chunk.array_index, chunk.offset, chunk.data

    def response(info: PoolInfo, first: int, count: int) -> assay_pb2.AppendPoolItemsResponse:
        return assay_pb2.AppendPoolItemsResponse(pool=pool_proto(servicer, info),
                                                 first_index=first, appended_count=count)

    def stored(info: PoolInfo, first: int, count: int) -> None:
        if key is not None:
            record = key if digest is None else replace(key, data_digest=digest.value())
            servicer.store.put_request(record, response(info, first, count).SerializeToString())

    return response(*servicer.sharded.append(pool_id, specs, chunks(), stored))
