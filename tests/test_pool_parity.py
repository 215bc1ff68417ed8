"""One pool contract: every pool case gives the same answer and the same status on a
pool held by one machine and on a sharded one.

Two servers run side by side: one keeps its pools on its own disk, the other
splits them over in-process shards (``--ray-address in-process``, no Ray). Each
case runs the same calls, with the same pool ids, on both, and every outcome —
the response (without timestamps) or the status code, ErrorInfo reason, field
and message — must be equal. Selections compare indices exactly and scores to
float32 rounding (the shards rank their rows with the same kernels; only the
order of float sums over a split may differ).
"""

from __future__ import annotations

import uuid

import grpc
import numpy as np
import pytest
from scaleout_data import pool_arrays

from assay.client import AssayError
from assay.client.tensors import to_proto
from assay.server.acquisition.sharded import SHARDED_BATCH
from assay.server.scaleout.topb import ROW_LOCAL
from assay.v1 import assay_pb2, assay_pb2_grpc
from assay.vocab import roles

SHARDS = 3
#: Every strategy a sharded pool runs (row-local scores, k-center greedy, BADGE).
SHARDABLE = tuple(sorted(ROW_LOCAL)) + SHARDED_BATCH
#: Parameters that let a strategy fill every budget below (SEALS' neighbourhood of the
#: three labeled items must hold the 297 unlabeled ones).
PARAMS = {"seals": {"k": assay_pb2.ParamValue(int_value=300)}}


@pytest.fixture
def both(server_factory, tmp_path):
    """Stubs of a plain-pool server and of a server whose pools are sharded."""
    plain = server_factory(data_dir=str(tmp_path / "plain"))
    sharded = server_factory(data_dir=str(tmp_path / "sharded"), ray_address="in-process")
    channels = [grpc.insecure_channel(f"127.0.0.1:{s.port}") for s in (plain, sharded)]
    yield [(assay_pb2_grpc.AssayServiceStub(c), shards)
           for c, shards in zip(channels, (0, SHARDS), strict=True)]
    for c in channels:
        c.close()


def _pool(p: assay_pb2.Pool) -> tuple:
    return (p.pool_id, p.item_count, p.labeled_count, p.version,
            tuple((a.name, a.dtype, tuple(a.shape)) for a in p.arrays))


def _outcome(call):
    """What a call answered: its response reduced to comparable fields, or its status."""
    try:
        response = call()
    except grpc.RpcError as rpc:
        error = AssayError.from_rpc(rpc)
        return ("error", rpc.code().name, error.reason, error.field, rpc.details())
    if hasattr(response, "indices"):
        return ("selected", tuple(response.indices), np.asarray(response.scores),
                response.pool_version, response.strategy)
    if hasattr(response, "pools"):
        return ("pools", tuple(_pool(p) for p in response.pools))
    if hasattr(response, "pool") and response.HasField("pool"):
        extra = tuple(getattr(response, f) for f in ("first_index", "appended_count", "epoch")
                      if hasattr(response, f))
        return ("pool", _pool(response.pool), extra)
    return ("ok",)


def _same(outcomes: list) -> None:
    plain, sharded = outcomes
    assert plain[0] == sharded[0], outcomes
    if plain[0] == "selected":
        assert plain[1] == sharded[1] and plain[3:] == sharded[3:], outcomes
        np.testing.assert_allclose(sharded[2], plain[2], rtol=2e-6, atol=1e-7)
    else:
        assert plain == sharded


def _run(both, case) -> list:
    """Run ``case(stub, shards)`` (a list of calls) on both servers; compare call by call."""
    results = [[_outcome(c) for c in case(stub, shards)] for stub, shards in both]
    assert len(results[0]) == len(results[1])
    for plain, sharded in zip(*results, strict=True):
        _same([plain, sharded])
    return results[0]


def _append(stub, pool_id: str, request_id: str = "", chunk: int = 1 << 16, **arrays):
    """Stream ``arrays`` in chunks of ``chunk`` bytes."""
    header = assay_pb2.AppendHeader(pool_id=pool_id, request_id=request_id)
    for name, a in arrays.items():
        t = to_proto(a)
        header.arrays.add(name=name, dtype=t.dtype, shape=t.shape)

    def messages():
        yield assay_pb2.AppendPoolItemsRequest(header=header)
        for i, a in enumerate(arrays.values()):
            data = np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<")).tobytes()
            for off in range(0, len(data), chunk):
                yield assay_pb2.AppendPoolItemsRequest(chunk=assay_pb2.AppendChunk(
                    array_index=i, offset=off, data=data[off:off + chunk]))
    return lambda: stub.AppendPoolItems(messages())


def _raw_append(stub, header: assay_pb2.AppendHeader, chunks: list[assay_pb2.AppendChunk]):
    def messages():
        yield assay_pb2.AppendPoolItemsRequest(header=header)
        for c in chunks:
            yield assay_pb2.AppendPoolItemsRequest(chunk=c)
    return lambda: stub.AppendPoolItems(messages())


def _create(stub, pool_id: str, shards: int):
    return lambda: stub.CreatePool(assay_pb2.CreatePoolRequest(pool_id=pool_id, shards=shards))


def _data(seed: int, n: int = 240, d: int = 6, c: int = 4, samples: int = 0):
    return pool_arrays(np.random.default_rng(seed), n, d, c, grid=False, samples=samples)


def test_appends_gets_lists_and_deletes_agree(both):
    arrays = _data(1)

    def case(stub, shards):
        calls = [_create(stub, "p", shards), _create(stub, "p", shards),
                 _create(stub, "Bad Id", shards)]
        for lo, hi in ((0, 70), (70, 71), (71, 240)):
            calls.append(_append(stub, "p", chunk=100, **{k: v[lo:hi] for k, v in arrays.items()}))
        calls += [lambda: stub.GetPool(assay_pb2.GetPoolRequest(pool_id="p")),
                  lambda: stub.ListPools(assay_pb2.ListPoolsRequest()),
                  lambda: stub.DeletePool(assay_pb2.DeletePoolRequest(pool_id="p")),
                  lambda: stub.GetPool(assay_pb2.GetPoolRequest(pool_id="p")),
                  _create(stub, "p", shards),
                  lambda: stub.GetPool(assay_pb2.GetPoolRequest(pool_id="p"))]
        return calls

    outcomes = _run(both, case)
    assert outcomes[1][1] == "ALREADY_EXISTS" and outcomes[2][1] == "INVALID_ARGUMENT"
    assert outcomes[6][1][1:4] == (240, 0, 3)


def test_schema_changes_are_refused_alike(both):
    arrays = _data(2)
    first = {k: v[:50] for k, v in arrays.items()}
    rest = {k: v[50:90] for k, v in arrays.items()}

    def case(stub, shards):
        return [
            _create(stub, "s", shards),
            _append(stub, "s", **first),
            # a dtype change, a missing array, an extra array, a new trailing shape
            _append(stub, "s", probs=rest["probs"],
                    embeddings=rest["embeddings"].astype(np.float64)),
            _append(stub, "s", probs=rest["probs"]),
            _append(stub, "s", **rest, scores=np.zeros(40, np.float32)),
            _append(stub, "s", probs=rest["probs"], embeddings=rest["embeddings"][:, :3]),
            # arrays a pool never stores, and disagreeing item counts
            _append(stub, "s", **rest, labels=np.zeros(40, np.int64)),
            _append(stub, "s", **rest, labeled_embeddings=rest["embeddings"]),
            _append(stub, "s", probs=rest["probs"], embeddings=rest["embeddings"][:30]),
            lambda: stub.GetPool(assay_pb2.GetPoolRequest(pool_id="s")),
        ]

    outcomes = _run(both, case)
    assert [o[2] for o in outcomes[2:6]] == ["SCHEMA_MISMATCH"] * 4
    assert all(o[1] == "INVALID_ARGUMENT" for o in outcomes[6:9])
    assert outcomes[-1][1][1] == 50, "a refused append stores nothing"


def test_bad_rows_and_broken_streams_are_refused_alike(both):
    arrays = _data(3, n=60)
    nan = arrays["embeddings"].copy()
    nan[17, 2] = np.nan
    unnormal = arrays["probs"].copy()
    unnormal[5] *= 1.5
    negative = arrays["probs"].copy()
    negative[9, 0] = -0.25

    def case(stub, shards):
        emb = arrays["embeddings"]
        data = emb.tobytes()
        header = assay_pb2.AppendHeader(pool_id="b")
        header.arrays.add(name="embeddings", dtype=to_proto(emb).dtype, shape=emb.shape)
        return [
            _create(stub, "b", shards),
            _append(stub, "b", probs=arrays["probs"], embeddings=nan),
            _append(stub, "b", probs=unnormal, embeddings=emb),
            _append(stub, "b", probs=negative, embeddings=emb),
            _raw_append(stub, header, [assay_pb2.AppendChunk(data=data[:100])]),  # truncated
            _raw_append(stub, header, [assay_pb2.AppendChunk(offset=8, data=data)]),
            _raw_append(stub, header, [assay_pb2.AppendChunk(array_index=1, data=data)]),
            _raw_append(stub, header, [assay_pb2.AppendChunk(data=data + b"0000")]),
            _append(stub, "nope", **arrays),
            lambda: stub.GetPool(assay_pb2.GetPoolRequest(pool_id="b")),
        ]

    outcomes = _run(both, case)
    assert [o[2] for o in outcomes[1:4]] == ["NON_FINITE", "NOT_PROBABILITIES",
                                            "NOT_PROBABILITIES"]
    assert outcomes[4][2] == "TRUNCATED" and outcomes[8][2] == "POOL_NOT_FOUND"
    assert outcomes[-1][1][1] == 0


def test_labels_agree(both):
    arrays = _data(4, n=80)

    def case(stub, shards):
        def label(indices, labels, pool="l", request_id=""):
            return lambda: stub.LabelPoolItems(assay_pb2.LabelPoolItemsRequest(
                pool_id=pool, indices=indices, labels=labels, request_id=request_id))
        rid = str(uuid.UUID(int=7))
        return [
            _create(stub, "l", shards), _append(stub, "l", **arrays),
            label([0, 5, 79], [1, 2, 3]), label([5], [0]),        # a relabel replaces
            label([80], [0]), label([-1], [0]), label([3, 3], [0, 1]), label([1, 2], [0]),
            label([], []), label([1], [4]), label([1], [-2]), label([1], [0], pool="zz"),
            label([10, 11], [1, 1], request_id=rid), label([10, 11], [1, 1], request_id=rid),
            label([12], [1], request_id=rid),                     # the id, reused
            lambda: stub.GetPool(assay_pb2.GetPoolRequest(pool_id="l")),
        ]

    outcomes = _run(both, case)
    assert outcomes[-1][1][2] == 5
    assert outcomes[9][2:4] == ("INVALID_INPUT", "labels") or outcomes[9][1] == "INVALID_ARGUMENT"
    assert outcomes[12] == outcomes[13] and outcomes[14][2] == "REQUEST_ID_REUSED"


def test_epochs_agree(both):
    arrays = _data(5, n=50)
    rng = np.random.default_rng(5)

    def case(stub, shards):
        def epoch(pool, labels=None, probs=None):
            request = assay_pb2.RecordEpochRequest(pool_id=pool)
            if labels is not None:
                request.predicted_labels.CopyFrom(to_proto(labels))
            if probs is not None:
                request.probs.CopyFrom(to_proto(probs))
            return lambda: stub.RecordEpoch(request)
        return [
            _create(stub, "e", shards),
            epoch("e", labels=np.zeros(50, np.int64)),             # no items yet
            _append(stub, "e", **arrays),
            epoch("e", labels=rng.integers(0, 4, 50)),
            epoch("e", probs=arrays["probs"]),
            epoch("e", labels=np.zeros(49, np.int64)),
            epoch("e", labels=-np.ones(50, np.int64)),
            epoch("nope", labels=np.zeros(50, np.int64)),
            lambda: stub.GetPool(assay_pb2.GetPoolRequest(pool_id="e")),
        ]

    outcomes = _run(both, case)
    assert outcomes[1][2] == "EMPTY_POOL"
    assert outcomes[3][0] == "pool" and outcomes[3][2] == (0,) and outcomes[4][2] == (1,)


def _strategy_inputs(strategy: str, n: int) -> dict[str, np.ndarray]:
    """A pool the strategy can run on, with exact ties among its scores."""
    from assay.server.strategies import registry

    required = set(registry.get(strategy).required)
    rng = np.random.default_rng(6)
    arrays = _data(6, n=n, samples=5 if "samples" in required else 0)
    if strategy == "egl":
        arrays["embeddings"] = arrays["embeddings"][:, :4]
    if "discriminator" in required:
        arrays["discriminator"] = rng.integers(0, 5, n).astype(np.float32) / 4
    if "loss" in required:
        arrays["loss"] = rng.integers(0, 7, n).astype(np.float32)
    if "scores" in required:
        arrays["scores"] = np.round(rng.standard_normal(n), 1)
    if "predictions" in required:
        arrays["predictions"] = rng.integers(0, 3, (6, n)).astype(np.int32)
    return arrays


@pytest.mark.parametrize("strategy", SHARDABLE)
def test_every_shardable_strategy_answers_alike(both, strategy):
    arrays = _strategy_inputs(strategy, 300)

    def case(stub, shards):
        calls = [_create(stub, "q", shards)]
        for lo, hi in ((0, 90), (90, 300)):
            calls.append(_append(stub, "q", **{k: np.take(v, np.arange(lo, hi),
                                                          axis=roles.item_axis(k))
                                              for k, v in arrays.items()}))
        calls.append(lambda: stub.LabelPoolItems(assay_pb2.LabelPoolItemsRequest(
            pool_id="q", indices=[3, 150, 299], labels=[0, 1, 2])))
        params = PARAMS.get(strategy, {})
        for budget, exclude, seed in ((1, [], 11), (25, [4, 5, 200], 12), (297, [], 13)):
            calls.append(lambda b=budget, e=exclude, s=seed: stub.Select(assay_pb2.SelectRequest(
                strategy=strategy, budget=b, pool_id="q", exclude_indices=e, seed=s,
                params=params)))
        for budget, exclude in ((0, []), (298, []), (5, [300])):
            calls.append(lambda b=budget, e=exclude: stub.Select(assay_pb2.SelectRequest(
                strategy=strategy, budget=b, pool_id="q", exclude_indices=e, seed=1,
                params=params)))
        return calls

    outcomes = _run(both, case)
    assert [o[0] for o in outcomes[4:7]] == ["selected"] * 3
    assert all(o[1] == "INVALID_ARGUMENT" for o in outcomes[7:])


def test_a_missing_input_is_refused_alike(both):
    arrays = {"embeddings": _data(7, n=40)["embeddings"]}

    def case(stub, shards):
        return [_create(stub, "m", shards), _append(stub, "m", **arrays),
                lambda: stub.Select(assay_pb2.SelectRequest(strategy="margin", budget=3,
                                                            pool_id="m"))]

    assert _run(both, case)[2][2] == "MISSING_INPUT"


def test_the_sharded_side_is_sharded(both):
    """The comparison is between two backends: the second server's pools are sharded."""
    arrays = _data(8, n=30)
    for stub, shards in both:
        _create(stub, "x", shards)()
        _append(stub, "x", **arrays)()
        pool = stub.GetPool(assay_pb2.GetPoolRequest(pool_id="x")).pool
        selected = stub.Select(assay_pb2.SelectRequest(strategy="entropy", budget=2,
                                                       pool_id="x"))
        assert pool.shards == shards
        assert ("shards" in selected.metrics) == bool(shards)


def test_request_ids_replay_alike(both):
    arrays = _data(9, n=60)
    other = _data(10, n=60)

    def case(stub, shards):
        app, sel = str(uuid.UUID(int=21)), str(uuid.UUID(int=22))

        def select(request_id):
            return lambda: stub.Select(assay_pb2.SelectRequest(
                strategy="entropy", budget=4, pool_id="r", request_id=request_id))
        return [
            _create(stub, "r", shards),
            _append(stub, "r", request_id=app, **arrays),
            _append(stub, "r", request_id=app, chunk=333, **arrays),   # a retry: same answer
            _append(stub, "r", request_id=app, **other),                # other data: refused
            select(sel), select(sel),
            lambda: stub.GetPool(assay_pb2.GetPoolRequest(pool_id="r")),
        ]

    outcomes = _run(both, case)
    assert outcomes[1] == outcomes[2] and outcomes[3][2] == "REQUEST_ID_REUSED"
    assert outcomes[-1][1][1] == 60


@pytest.mark.parametrize("queued", [0, 1])
def test_selects_on_both_kinds_of_pool_share_the_bounded_queue(server_factory, tmp_path,
                                                               held_slot, queued):
    """With the one select slot held: a Select on a plain or a sharded pool waits in the
    queue (and its deadline passes there) when there is room, else is refused at once."""
    import threading

    gate, entered = held_slot
    server = server_factory(data_dir=str(tmp_path / "q"), ray_address="in-process",
                            max_concurrent_selects=1, max_queued_selects=queued)
    arrays = _data(11, n=40)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = assay_pb2_grpc.AssayServiceStub(channel)
        for pool_id, shards in (("plain", 0), ("sharded", SHARDS)):
            _create(stub, pool_id, shards)()
            _append(stub, pool_id, **arrays)()
        holder = threading.Thread(target=lambda: stub.Select(assay_pb2.SelectRequest(
            strategy="hold", budget=1, inputs=assay_pb2.Inputs(probs=to_proto(arrays["probs"])))))
        holder.start()
        try:
            assert entered.wait(30)
            got = [_queued_select(stub, p, queued) for p in ("plain", "sharded")]
        finally:
            gate.set()
            holder.join()
    want = "DEADLINE_EXCEEDED" if queued else "RESOURCE_EXHAUSTED"
    for outcome in got:
        assert outcome[0] == "error" and outcome[1] == want, got


def _queued_select(stub, pool_id: str, queued: int):
    """A Select that finds the slot held. The queue place of an earlier call whose
    deadline passed frees within a poll of the server's queue; until it has, a refusal
    says someone is waiting, and the call is sent again."""
    for _ in range(200):
        outcome = _outcome(lambda: stub.Select(assay_pb2.SelectRequest(
            strategy="entropy", budget=2, pool_id=pool_id), timeout=0.5))
        if not (queued and outcome[1] == "RESOURCE_EXHAUSTED"):
            return outcome
    return outcome


def test_model_settings_without_models_are_refused_alike(both):
    arrays = _data(12, n=30)

    def case(stub, shards):
        return [_create(stub, "mc", shards), _append(stub, "mc", **arrays),
                lambda: stub.Select(assay_pb2.SelectRequest(strategy="entropy", budget=2,
                                                            pool_id="mc", mc_samples=4)),
                lambda: stub.Select(assay_pb2.SelectRequest(strategy="entropy", budget=2,
                                                            pool_id="mc", batch_size=8))]

    outcomes = _run(both, case)
    assert outcomes[2][1:4] == ("INVALID_ARGUMENT", "INVALID_INPUT", "model_ids")


def test_a_sharded_pool_on_a_server_without_shards(server_factory, tmp_path):
    """Restarted without --ray-address, a sharded pool stays listed, labelled and deletable;
    what needs its rows answers FAILED_PRECONDITION NO_RAY, before any upload is read."""
    data_dir = str(tmp_path / "restart")
    arrays = _data(13, n=30)
    first = server_factory(data_dir=data_dir, ray_address="in-process")
    with grpc.insecure_channel(f"127.0.0.1:{first.port}") as channel:
        stub = assay_pb2_grpc.AssayServiceStub(channel)
        _create(stub, "kept", SHARDS)()
        _append(stub, "kept", **arrays)()
    first.stop(0)
    second = server_factory(data_dir=data_dir)
    with grpc.insecure_channel(f"127.0.0.1:{second.port}") as channel:
        stub = assay_pb2_grpc.AssayServiceStub(channel)
        pool = stub.GetPool(assay_pb2.GetPoolRequest(pool_id="kept")).pool
        assert (pool.item_count, pool.shards) == (30, SHARDS)
        refused = [_outcome(_append(stub, "kept", **arrays)),
                   _outcome(lambda: stub.Select(assay_pb2.SelectRequest(
                       strategy="entropy", budget=2, pool_id="kept")))]
        assert [o[1:3] for o in refused] == [("FAILED_PRECONDITION", "NO_RAY")] * 2, refused
        labelled = stub.LabelPoolItems(assay_pb2.LabelPoolItemsRequest(
            pool_id="kept", indices=[1], labels=[0])).pool
        assert labelled.labeled_count == 1
        stub.DeletePool(assay_pb2.DeletePoolRequest(pool_id="kept"))
    third = server_factory(data_dir=data_dir, ray_address="in-process")
    assert not any((tmp_path / "restart" / "shards").iterdir()), \
        "a deleted pool's shard rows are swept when shards are back"
    third.stop(0)
