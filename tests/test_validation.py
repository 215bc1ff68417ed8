"""Bad input gets a precise status and an actionable message, and never changes stored
state. Raw stubs are used where the Python client would refuse to send the mistake."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from assay.client import AssayError
from assay.client.tensors import to_proto
from assay.server.strategies import registry
from assay.server.strategies.registry import Selection, Strategy
from assay.v1 import assay_pb2, assay_pb2_grpc, tensor_pb2

INVALID = grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture
def stub(server):
    with grpc.insecure_channel(f"127.0.0.1:{server.port}",
                               options=[("grpc.max_send_message_length", 256 << 20)]) as channel:
        yield assay_pb2_grpc.AssayServiceStub(channel)


@pytest.fixture
def pool(client):
    """A pool with 100 items, 10 labeled: bad requests must leave it exactly like this."""
    rng = np.random.default_rng(0)
    client.create_pool("p")
    client.append("p", probs=rng.dirichlet(np.ones(3), size=100).astype(np.float32),
                  embeddings=rng.normal(size=(100, 4)).astype(np.float32))
    client.label("p", np.arange(10), np.zeros(10))
    return client.get_pool("p")


def _code(fn, *args, **kwargs):
    with pytest.raises(AssayError) as err:
        fn(*args, **kwargs)
    return err.value.code, err.value.message


def _select(stub, strategy="entropy", budget=1, **tensors):
    request = assay_pb2.SelectRequest(strategy=strategy, budget=budget)
    request.inputs.SetInParent()
    for name, tensor in tensors.items():
        getattr(request.inputs, name).CopyFrom(tensor)
    return stub.Select(request, timeout=10)


def _rpc_error(fn, *args, **kwargs):
    with pytest.raises(grpc.RpcError) as err:
        fn(*args, **kwargs)
    return err.value


GOOD = np.array([[0.2, 0.8], [0.5, 0.5], [0.6, 0.4]], dtype=np.float32)


@pytest.mark.parametrize("tensor,needle", [
    (tensor_pb2.Tensor(dtype=tensor_pb2.DATA_TYPE_FP32, shape=[3, 2], data=GOOD.tobytes()[:-1]),
     "has 23 bytes but shape [3, 2] of FP32 needs 24"),
    (tensor_pb2.Tensor(dtype=0, shape=[3, 2], data=GOOD.tobytes()), "dtype is unset"),
    (tensor_pb2.Tensor(dtype=tensor_pb2.DATA_TYPE_FP32, shape=[6], data=GOOD.tobytes()),
     "must have shape [N, C] (rank 2)"),
    (tensor_pb2.Tensor(dtype=tensor_pb2.DATA_TYPE_FP32, shape=[3, -2], data=b""),
     "negative dimension"),
    (to_proto(GOOD.astype(np.int64)), "must be FP32, FP16, BF16 or FP64"),
    (to_proto(np.array([[0.5, np.nan]], np.float32)), "NaN or Inf"),
    (to_proto(np.array([[np.inf, 0.0]], np.float64)), "NaN or Inf"),
    (to_proto(np.array([[1.5, -0.5]], np.float32)), "outside [0, 1]"),
    (to_proto(np.array([[0.5, 0.3]], np.float32)), "sums to 0.8"),
])
def test_malformed_tensors_are_invalid_argument(stub, tensor, needle):
    error = _rpc_error(_select, stub, "entropy", 1, probs=tensor)
    assert error.code() == INVALID
    assert needle in error.details()


def test_errors_carry_field_violations_and_a_reason(stub):
    error = _rpc_error(_select, stub, "entropy", 1,
                       probs=to_proto(np.array([[0.5, 0.3]], np.float32)))
    status = rpc_status.from_call(error)
    kinds = {}
    for detail in status.details:
        for cls in (error_details_pb2.BadRequest, error_details_pb2.ErrorInfo):
            if detail.Is(cls.DESCRIPTOR):
                msg = cls()
                detail.Unpack(msg)
                kinds[cls.__name__] = msg
    assert kinds["BadRequest"].field_violations[0].field == "inputs.probs"
    assert kinds["ErrorInfo"].reason == "NOT_PROBABILITIES"


def test_probability_tolerance_is_documented_one(client):
    near = np.array([[0.5, 0.5 + 9e-4]], np.float32)
    assert client.select("entropy", 1, probs=near).indices.tolist() == [0]
    half = np.array([[0.5, 0.5 + 5e-3]], np.float16)
    assert client.select("entropy", 1, probs=half).indices.tolist() == [0]


def test_selection_errors(client, pool):
    probs = np.full((5, 2), 0.5)
    cases = [
        (dict(strategy="no_such", budget=1, probs=probs), grpc.StatusCode.NOT_FOUND,
         "unknown strategy"),
        (dict(strategy="bald", budget=1, probs=probs), INVALID, "needs input 'samples'"),
        (dict(strategy="entropy", budget=0, probs=probs), INVALID, "budget must be >= 1"),
        (dict(strategy="entropy", budget=-3, probs=probs), INVALID, "budget must be >= 1"),
        (dict(strategy="entropy", budget=6, probs=probs), INVALID, "exceeds the 5 selectable"),
        (dict(strategy="entropy", budget=91, pool="p"), INVALID, "exceeds the 90 selectable"),
        (dict(strategy="entropy", budget=1, pool="missing"), grpc.StatusCode.NOT_FOUND,
         "does not exist"),
        (dict(strategy="entropy", budget=1, pool="Bad Name"), INVALID, "not a valid pool id"),
        (dict(strategy="entropy", budget=1, probs=probs, exclude=[7]), INVALID,
         "outside [0, 5)"),
        (dict(strategy="egl", budget=1, probs=probs, embeddings=np.zeros((4, 2))), INVALID,
         "disagree on the number of items"),
        (dict(strategy="mal", budget=1, probs=probs, discriminator=np.full(5, 0.5),
              params={"alpha": 3.0}), INVALID, "params.alpha must be <= 1.0"),
        (dict(strategy="entropy", budget=1, probs=probs, params={"bogus": 1}), INVALID,
         "no parameter 'bogus'"),
        (dict(strategy="entropy", budget=1), INVALID, "needs input 'probs'"),
    ]
    for kwargs, code, needle in cases:
        got_code, message = _code(client.select, **kwargs)
        assert (got_code, needle in message) == (code, True), (kwargs, message)
    assert client.get_pool("p") == pool


def test_label_errors_leave_the_pool_unchanged(client, pool):
    cases = [
        (([100], [0]), "outside the pool's items [0, 100)"),
        (([-1], [0]), "outside the pool's items"),
        (([3, 3], [0, 1]), "more than once"),
        (([1, 2], [0]), "give one label per index"),
        (([1], [-2]), "labels are class ids >= 0"),
        (([], []), "indices is empty"),
    ]
    for (indices, labels), needle in cases:
        code, message = _code(client.label, "p", indices, labels)
        assert code == INVALID and needle in message, message
    assert _code(client.label, "nope", [0], [0])[0] == grpc.StatusCode.NOT_FOUND
    assert client.get_pool("p") == pool


def test_bad_appends_leave_the_pool_unchanged(client, pool):
    rng = np.random.default_rng(1)
    good_probs = rng.dirichlet(np.ones(3), size=5).astype(np.float32)
    good_emb = rng.normal(size=(5, 4)).astype(np.float32)
    bad_probs = good_probs.copy()
    bad_probs[2, 0] = np.nan
    cases = [
        (dict(probs=bad_probs, embeddings=good_emb), INVALID, "NaN or Inf"),
        (dict(probs=good_probs * 3, embeddings=good_emb), INVALID, "outside [0, 1]"),
        (dict(probs=good_probs), grpc.StatusCode.FAILED_PRECONDITION, "every append must"),
        (dict(probs=good_probs, embeddings=good_emb[:, :3]), grpc.StatusCode.FAILED_PRECONDITION,
         "every dimension but the item axis"),
        (dict(probs=good_probs.astype(np.float64), embeddings=good_emb),
         grpc.StatusCode.FAILED_PRECONDITION, "keep the dtype"),
        (dict(probs=good_probs, embeddings=good_emb[:4]), INVALID, "disagree on the number"),
        (dict(probs=good_probs[0], embeddings=good_emb), INVALID, "must be [N, C]"),
    ]
    for arrays, code, needle in cases:
        got, message = _code(client.append, "p", **arrays)
        assert (got, needle in message) == (code, True), message
    assert client.get_pool("p") == pool


def test_transposed_samples_are_refused_with_the_transpose(client, pool):
    """``samples`` is [S, N, C]; [N, S, C] is refused wherever N is known otherwise."""
    rng = np.random.default_rng(2)
    n, s, c = 6, 4, 3
    transposed = rng.dirichlet(np.ones(c), size=(n, s)).astype(np.float32)
    probs = transposed.mean(axis=1)
    with pytest.raises(AssayError) as err:  # inline, next to probs [N, C]
        client.select("bald", 2, probs=probs, samples=transposed)
    e = err.value
    assert (e.code, e.reason, e.field) == (INVALID, "SHAPE_MISMATCH", "inputs.samples"), e
    assert "looks transposed" in e.message and ".transpose(1, 0, 2)" in e.message, e.message
    assert client.select("bald", 2, probs=probs,
                         samples=transposed.transpose(1, 0, 2)).indices.size == 2
    # A replace covers the pool's 100 items; an append carries them in its other arrays.
    members = rng.dirichlet(np.ones(3), size=(100, s)).astype(np.float32)
    with pytest.raises(AssayError) as err:
        client.replace("p", samples=members)
    assert (err.value.code, err.value.field) == (INVALID, "header.arrays[0].shape"), err.value
    assert "looks transposed" in err.value.message, err.value.message
    with pytest.raises(AssayError) as err:
        client.append("p", probs=members[:5, 0], embeddings=np.zeros((5, 4), np.float32),
                      samples=members[:5])
    assert (err.value.code, err.value.field) == (INVALID, "header.arrays[2].shape"), err.value
    assert client.get_pool("p") == pool


def test_transposition_is_refused_only_where_the_shape_says_so():
    from assay.server.strategies.validation import check_not_transposed
    from assay.vocab.errors import InvalidInput

    check_not_transposed("samples", (4, 6, 3), 6, "inputs.samples")  # [S, N, C]
    check_not_transposed("samples", (6, 6, 3), 6, "inputs.samples")  # S == N: ambiguous
    check_not_transposed("probs", (6, 3), 6, "inputs.probs")  # items first already
    with pytest.raises(InvalidInput, match=r"\[T, N\].*\.transpose\(1, 0\)"):
        check_not_transposed("predictions", (6, 2), 6, "inputs.predictions")


def _stream(stub, messages):
    return stub.AppendPoolItems(iter(messages), timeout=10)


def _header(shape=(4, 2), dtype=tensor_pb2.DATA_TYPE_FP32, pool_id="q"):
    return assay_pb2.AppendPoolItemsRequest(header=assay_pb2.AppendHeader(
        pool_id=pool_id, arrays=[assay_pb2.ArrayHeader(name="probs", dtype=dtype, shape=shape)]))


def _chunk(offset, data, index=0):
    return assay_pb2.AppendPoolItemsRequest(chunk=assay_pb2.AppendChunk(
        array_index=index, offset=offset, data=data))


def test_truncated_and_out_of_order_streams_store_nothing(client, stub, server):
    client.create_pool("q")
    data = np.full((4, 2), 0.5, np.float32).tobytes()  # 32 bytes
    cases = [
        ([_header(), _chunk(0, data[:16])], "truncated"),
        ([_header(), _chunk(0, data[:8]), _chunk(16, data[16:])], "must arrive in order"),
        ([_header(), _chunk(0, data), _chunk(32, b"x")], "more than the 32 bytes"),
        ([_chunk(0, data)], "must be the header"),
        ([], "stream is empty"),
        ([_header(), _header()], "only chunk messages"),
        ([_header(), _chunk(0, data, index=1)], "does not name a declared array"),
        ([_header(dtype=0)], "dtype is unset"),
        ([_header(shape=(4,))], "must be [N, C]"),
        ([_header(pool_id="Q!")], "not a valid pool id"),
    ]
    for messages, needle in cases:
        error = _rpc_error(_stream, stub, messages)
        assert error.code() == INVALID and needle in error.details(), error.details()
    pool = client.get_pool("q")
    assert (pool.item_count, pool.version) == (0, 0)
    assert list((server.store.tmp_dir).iterdir()) == []
    ok = stub.AppendPoolItems(iter([_header(), _chunk(0, data[:10]), _chunk(10, data[10:])]))
    assert ok.appended_count == 4


def test_oversize_inline_is_resource_exhausted_with_a_hint(server_factory):
    from assay.client import Client

    srv = server_factory(max_inline_bytes=1 << 20, max_message_bytes=4 << 20)
    with Client(f"127.0.0.1:{srv.port}") as c:
        big = np.full((200_000, 2), 0.5, np.float32)  # 1.6 MB: over the inline limit
        code, message = _code(c.select, "entropy", 1, probs=big)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "upload them to a pool" in message
        huge = np.full((1_000_000, 2), 0.5, np.float32)  # 8 MB: over the transport limit
        code, message = _code(c.select, "entropy", 1, probs=huge)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "create_pool" in message
        c.create_pool("big")
        c.append("big", probs=huge, chunk_bytes=1 << 20)  # the same array, through a pool
        assert c.select("entropy", 1, pool="big").indices.tolist() == [0]


def test_list_and_page_token_errors(stub):
    error = _rpc_error(stub.ListPools, assay_pb2.ListPoolsRequest(page_size=5000))
    assert error.code() == INVALID
    error = _rpc_error(stub.ListPools, assay_pb2.ListPoolsRequest(page_token="%%%"))
    assert error.code() == INVALID and "page_token" in error.details()


@pytest.fixture
def slow_strategy(monkeypatch):
    """A batch strategy that takes many small steps, checking for cancellation between them."""
    stopped = threading.Event()
    stopped.started = threading.Event()  # set by the first step

    def crawl(inputs, budget, params, ctx):
        # 1000 steps of at least 10 ms: 10 s or more unless a check stops it; only a
        # raised check sets ``stopped``, so it says the run ended early, on any clock.
        stopped.started.set()
        try:
            for _ in range(1000):
                ctx.check_cancelled()
                time.sleep(0.01)
        except Exception:
            stopped.set()
            raise
        return Selection(indices=ctx.candidates[:budget])

    monkeypatch.setitem(registry._REGISTRY, "crawl",
                        Strategy("crawl", "batch", crawl, ("probs",), "slow test strategy"))
    return stopped


def test_past_deadline_selection_stops_within_a_step(client, slow_strategy):
    # A first call pays the one-time costs (strategy registry, imports) outside the 0.3 s,
    # so the deadline falls while the strategy runs, which is what this test is about.
    client.select("entropy", 1, probs=GOOD)
    # 2 s: time to start on a loaded machine, and far less than the 10 s crawl.
    code, _ = _code(client.select, "crawl", 1, probs=GOOD, timeout=2.0)
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    # Generous wait on a loaded machine; ``stopped`` is only set by a check that raised.
    assert slow_strategy.wait(30), "the strategy kept running after the deadline"


def test_cancelled_selection_stops_within_a_step(stub, slow_strategy):
    warm = assay_pb2.SelectRequest(strategy="entropy", budget=1)
    warm.inputs.probs.CopyFrom(to_proto(GOOD))
    stub.Select(warm, timeout=300)  # one-time costs first: the cancel must meet a running step
    request = assay_pb2.SelectRequest(strategy="crawl", budget=1)
    request.inputs.probs.CopyFrom(to_proto(GOOD))
    future = stub.Select.future(request, timeout=30)
    assert slow_strategy.started.wait(30), "the strategy never started"
    future.cancel()
    assert slow_strategy.wait(30), "the strategy kept running after cancellation"


def test_too_many_concurrent_selects_are_shed_at_once(server_factory, held_slot):
    from assay.client import Client

    gate, entered = held_slot
    srv = server_factory(max_concurrent_selects=1, max_queued_selects=0)
    with Client(f"127.0.0.1:{srv.port}", retries=0) as c:
        first = threading.Thread(target=c.select, args=("hold", 1), kwargs={"probs": GOOD})
        first.start()
        assert entered.wait(10)
        code, message = _code(c.select, "entropy", 1, probs=GOOD)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "retry with backoff" in message
        # Refused while the slot is still held (the holder only leaves when the gate is
        # set), so the refusal did not wait for the slot, whatever the machine's speed.
        assert first.is_alive() and not gate.is_set()
        gate.set()
        first.join()
        assert c.select("entropy", 1, probs=GOOD).indices.tolist() == [1]


def test_selects_wait_in_a_bounded_queue_for_a_slot(server_factory, held_slot):
    """With one slot and one queue place: the second call waits and succeeds, the third
    is refused at once, and a waiting call still honours its deadline."""
    from assay.client import Client

    gate, entered = held_slot
    srv = server_factory(max_concurrent_selects=1, max_queued_selects=1)
    with Client(f"127.0.0.1:{srv.port}", retries=0) as c:
        results = {}
        first = threading.Thread(target=lambda: results.update(
            first=c.select("hold", 1, probs=GOOD)))
        first.start()
        assert entered.wait(10)
        code, _ = _code(c.select, "entropy", 1, probs=GOOD, timeout=0.4)
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED  # waited, then its deadline passed
        time.sleep(0.2)  # the server notices within one poll of the queue and frees its place
        def wait_in_queue():
            try:
                results["queued"] = c.select("entropy", 1, probs=GOOD)
            except AssayError as error:
                results["queued"] = error

        queued = threading.Thread(target=wait_in_queue)
        queued.start()
        time.sleep(0.3)
        code, message = _code(c.select, "entropy", 1, probs=GOOD)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "1 waiting" in message
        # Refused while the slot and the queue place are both still taken: it did not wait.
        assert first.is_alive() and queued.is_alive()
        gate.set()
        first.join(10)
        queued.join(10)
        assert results["first"].indices.tolist() == [0]
        assert results["queued"].indices.tolist() == [1], results["queued"]
