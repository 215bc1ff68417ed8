"""Every dimension, count and response size is bounded before work starts.

Zero-size shapes whose other dimensions claim exabytes, appends that carry no data,
responses too large to send, T = 0 epochs, strategies named inside parameters: each
gets a precise status naming the field, and nothing is stored.
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from refusals import field_and_reason, refusal

from assay.client.tensors import to_proto
from assay.kernels.kmeans import weighted_kmeans
from assay.kernels.knn import knn
from assay.server.edge.response_size import min_response_bytes, varint_bytes_below
from assay.server.strategies import registry
from assay.server.strategies.registry import Context, Selection, Strategy
from assay.server.strategies.scores import label_dispersion
from assay.v1 import assay_pb2, assay_pb2_grpc, tensor_pb2
from assay.vocab.errors import InvalidInput

SEED = 11
INVALID = grpc.StatusCode.INVALID_ARGUMENT
FP32 = tensor_pb2.DATA_TYPE_FP32


@pytest.fixture
def stub(server):
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield assay_pb2_grpc.AssayServiceStub(channel)


def _select(stub, strategy="entropy", budget=1, params=None, request_id="", **tensors):
    request = assay_pb2.SelectRequest(strategy=strategy, budget=budget, seed=SEED,
                                      request_id=request_id)
    request.inputs.SetInParent()
    for name, tensor in tensors.items():
        if isinstance(tensor, np.ndarray):
            tensor = to_proto(tensor)
        getattr(request.inputs, name).CopyFrom(tensor)
    for name, value in (params or {}).items():
        request.params[name].CopyFrom(assay_pb2.ParamValue(string_value=value))
    return stub.Select(request, timeout=300)  # a first call may compile kernels


def _probs(n: int, c: int = 3) -> np.ndarray:
    return np.random.default_rng(SEED).dirichlet(np.ones(c), size=n).astype(np.float32)


# -- zero-size dimensions ---------------------------------------------------------------

@pytest.mark.parametrize("role,shape,reason", [
    ("probs", [0, 2**62], "SHAPE_TOO_LARGE"),
    ("probs", [2**40, 0], "SHAPE_TOO_LARGE"),
    ("samples", [0, 2**31, 2**31], "SHAPE_TOO_LARGE"),
    ("embeddings", [10, 0], "EMPTY_DIMENSION"),
    ("samples", [0, 10, 3], "EMPTY_DIMENSION"),
    ("probs", [10, 0], "EMPTY_DIMENSION"),
])
def test_zero_size_inline_shapes_are_invalid_argument(stub, role, shape, reason):
    tensor = tensor_pb2.Tensor(dtype=FP32, shape=shape, data=b"")
    others = {"probs": to_proto(_probs(10))} if role == "embeddings" else {}
    strategy = {"embeddings": "coreset", "samples": "bald"}.get(role, "entropy")
    error = refusal(_select, stub, strategy, **{role: tensor}, **others)
    assert error.code() == INVALID, error.details()
    assert field_and_reason(error) == (f"inputs.{role}", reason), error.details()


def test_an_empty_labeled_set_is_still_accepted(stub):
    """Zero items on the item axis is meaningful for the labeled set: no labels yet."""
    emb = np.random.default_rng(SEED).normal(size=(20, 4)).astype(np.float32)
    empty = tensor_pb2.Tensor(dtype=FP32, shape=[0, 4], data=b"")
    got = _select(stub, "coreset", 3, embeddings=emb, labeled_embeddings=empty)
    assert len(got.indices) == 3


def _append(stub, pool_id, arrays):
    """Raw append: ``arrays`` maps a role to (shape, bytes)."""
    header = assay_pb2.AppendHeader(pool_id=pool_id)
    messages = []
    for i, (name, (shape, data)) in enumerate(arrays.items()):
        header.arrays.append(assay_pb2.ArrayHeader(name=name, dtype=FP32, shape=shape))
        if data:
            messages.append(assay_pb2.AppendPoolItemsRequest(chunk=assay_pb2.AppendChunk(
                array_index=i, offset=0, data=data)))
    return stub.AppendPoolItems(iter([assay_pb2.AppendPoolItemsRequest(header=header),
                                      *messages]), timeout=60)


@pytest.mark.parametrize("arrays,field", [
    ({"samples": ([0, 1_000_000_000, 10], b"")}, "header.arrays[0]"),
    ({"probs": ([0, 3], b"")}, "header.arrays[0]"),
    ({"embeddings": ([5, 0], b"")}, "header.arrays[0]"),
    ({"probs": ([0, 3], b""), "embeddings": ([0, 4], b"")}, "header.arrays[0]"),
])
def test_appends_without_data_store_nothing(client, stub, arrays, field):
    """A ~100-byte request may not create a pool claiming N items; zero items commit no
    empty segment and bump no version."""
    client.create_pool("z")
    before = client.get_pool("z")
    error = refusal(_append, stub, "z", arrays)
    assert error.code() == INVALID, error.details()
    assert field_and_reason(error) == (field, "EMPTY_DIMENSION"), error.details()
    assert client.get_pool("z") == before
    # Real data still goes in, and only it counts.
    probs = _probs(4)
    ok = _append(stub, "z", {"probs": ([4, 3], probs.tobytes())})
    assert (ok.first_index, ok.appended_count, ok.pool.item_count) == (0, 4, 4)


# -- response size ------------------------------------------------------------------------

def test_varint_lower_bound_counts_each_width():
    """Independent count: encode 0 .. n - 1 as protobuf varints one by one."""
    def width(v: int) -> int:
        return max(1, -(-v.bit_length() // 7))

    for n in (0, 1, 127, 128, 129, 16_384, 16_385, 20_000):
        assert varint_bytes_below(n) == sum(width(v) for v in range(n)), n
    packed = assay_pb2.SelectResponse(indices=list(range(20_000)))
    header = 1 + 3  # tag and the length varint of the packed field
    assert packed.ByteSize() == varint_bytes_below(20_000) + header
    assert min_response_bytes(5, True) == 5 + 40


def test_a_budget_whose_response_cannot_be_sent_is_refused_up_front(server_factory):
    srv = server_factory(max_message_bytes=1 << 20)
    n = 150_000  # 150k scores: 600 KB inline; 150k indices + doubles: ~1.6 MB out
    scores = np.random.default_rng(SEED).permutation(n).astype(np.float32)
    with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
        stub = assay_pb2_grpc.AssayServiceStub(channel)
        for attempt in range(2):
            error = refusal(_select, stub, "precomputed", n, request_id="big-1", scores=scores)
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (attempt, error.details())
            assert field_and_reason(error) == ("budget", "RESPONSE_TOO_LARGE"), error.details()
            assert "smaller batches" in error.details()
        small = _select(stub, "precomputed", 1000, scores=scores)
        assert sorted(small.indices) == sorted(np.argsort(-scores)[:1000].tolist())


@pytest.fixture
def scored_batch_strategy(monkeypatch):
    """A batch strategy whose indices alone fit the limit but whose scores do not, so only
    the encoded-size check can catch it."""
    def pick_all(inputs, budget, params, ctx):
        return Selection(indices=ctx.candidates[:budget].copy(),
                         scores=np.arange(budget, dtype=np.float64))

    monkeypatch.setitem(registry._REGISTRY, "test_scored_batch",
                        Strategy("test_scored_batch", "batch", pick_all, ("scores",),
                                 "test only"))


def test_an_unsendable_response_is_refused_and_never_stored(server_factory,
                                                          scored_batch_strategy, monkeypatch):
    from assay.server.edge import response_size

    # The up-front bound counts no scores for this strategy, as for a scoreless one.
    monkeypatch.setattr(response_size, "SCORELESS", frozenset({"test_scored_batch"}))
    srv = server_factory(max_message_bytes=1 << 20)
    n = 150_000
    scores = np.zeros(n, dtype=np.float32)
    with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
        stub = assay_pb2_grpc.AssayServiceStub(channel)
        for attempt in range(2):  # a retry computes afresh: no stored answer to replay
            error = refusal(_select, stub, "test_scored_batch", n, request_id="big-2",
                             scores=scores)
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (attempt, error.details())
            assert field_and_reason(error) == ("budget", "RESPONSE_TOO_LARGE"), error.details()
            assert "nothing was stored" in error.details()
        ok = _select(stub, "test_scored_batch", 1000, request_id="big-3", scores=scores)
        assert list(ok.indices) == list(range(1000))


# -- label_dispersion with no epochs -----------------------------------------------------

def test_no_epochs_is_refused_not_minus_infinity(stub):
    empty = tensor_pb2.Tensor(dtype=tensor_pb2.DATA_TYPE_INT64, shape=[0, 5], data=b"")
    error = refusal(_select, stub, "label_dispersion", predictions=empty)
    assert error.code() == INVALID
    assert field_and_reason(error) == ("inputs.predictions", "NO_EPOCHS")
    assert "RecordEpoch" in error.details()


def test_label_dispersion_itself_refuses_zero_epochs():
    ctx = Context(candidates=np.arange(4), rng=np.random.default_rng(SEED))
    with pytest.raises(InvalidInput) as err:
        label_dispersion({"predictions": np.zeros((0, 4), np.int64)}, {}, ctx)
    assert err.value.reason == "NO_EPOCHS" and "RecordEpoch" in err.value.message


# -- strategies named inside parameters --------------------------------------------------

@pytest.mark.parametrize("strategy,param,needs", [
    ("entropy", "prefilter", ()),
    ("information_density", "base", ("embeddings",)),
    ("suggestive_annotation", "uncertainty", ("embeddings",)),
    ("diverse_minibatch", "informativeness", ("embeddings",)),
    ("ceal", "uncertainty", ()),
])
@pytest.mark.parametrize("value", ["no_such_strategy", "coreset"])
def test_a_bad_strategy_name_in_a_parameter_is_invalid_argument(stub, strategy, param,
                                                                needs, value):
    probs = _probs(30)
    emb = np.random.default_rng(SEED).normal(size=(30, 4)).astype(np.float32)
    arrays = {"probs": probs, **({"embeddings": emb} if needs else {})}
    error = refusal(_select, stub, strategy, 2, params={param: value}, **arrays)
    assert error.code() == INVALID, error.details()
    assert field_and_reason(error) == (f"params.{param}", "INVALID_INPUT"), error.details()
    assert "entropy" in error.details() and "margin" in error.details()  # the choices
    # Only Suggestive Annotation's uncertainty also takes the committee's 'variance'.
    assert ("of: variance," in error.details()) == (strategy == "suggestive_annotation"), (
        error.details())


# -- FAISS sizes ----------------------------------------------------------------------------

def test_faiss_counts_beyond_a_c_int_are_refused_before_any_allocation():
    x = np.random.default_rng(SEED).normal(size=(10, 4)).astype(np.float32)
    with pytest.raises(InvalidInput) as err:
        knn(x, x, 2**31)
    assert (err.value.field, err.value.reason) == ("k", "SHAPE_TOO_LARGE")
    with pytest.raises(InvalidInput) as err:
        weighted_kmeans(x, np.zeros(10), 3, iterations=2, seed=1)
    assert err.value.field == "weights"
