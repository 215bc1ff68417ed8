"""ReplacePoolArrays: a round of the loop replaces the model's arrays, keeps the rest.

Expected answers come from inline Selects on the arrays the test holds (the
acquisition path the pool feeds), never from the pool under test.
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from assay.client import AssayError, Client
from assay.client.tensors import to_proto
from assay.v1 import assay_pb2, assay_pb2_grpc

N, C, D = 120, 4, 6


def _round(rng: np.random.Generator, width: int = D) -> dict[str, np.ndarray]:
    probs = rng.dirichlet(np.ones(C), size=N).astype(np.float32)
    return {"probs": probs, "embeddings": rng.standard_normal((N, width)).astype(np.float32)}


@pytest.fixture
def pool(client: Client):
    """A pool of three appends with probs, embeddings and raw model inputs, 4 labels."""
    rng = np.random.default_rng(7)
    first = _round(rng)
    inputs = rng.standard_normal((N, 3)).astype(np.float32)
    client.create_pool("loop")
    for lo, hi in ((0, 30), (30, 31), (31, N)):
        client.append("loop", model_inputs=inputs[lo:hi],
                      **{k: v[lo:hi] for k, v in first.items()})
    client.label("loop", [0, 7, 50, 119], [0, 1, 2, 3])
    return inputs


def _refused(call, code: grpc.StatusCode, reason: str) -> AssayError:
    with pytest.raises(AssayError) as err:
        call()
    assert (err.value.code, err.value.reason) == (code, reason), err.value
    return err.value


def test_a_round_replaces_the_model_arrays_and_keeps_labels_inputs_and_epochs(client, pool):
    rng = np.random.default_rng(8)
    client.record_epoch("loop", predicted_labels=rng.integers(0, C, N))
    before = client.get_pool("loop")
    new = _round(rng, width=D + 2)  # the retrained model's embeddings are wider
    after = client.replace("loop", **new)
    assert after.version == before.version + 1 and after.item_count == N
    assert after.labeled_count == 4
    shapes = {name: shape for name, (_, shape) in after.arrays.items()}
    assert shapes == {"probs": (N, C), "embeddings": (N, D + 2), "model_inputs": (N, 3)}
    labeled = np.array([0, 7, 50, 119])
    for strategy in ("entropy", "margin", "coreset"):
        got = client.select(strategy, 9, pool="loop", seed=3)
        inline = dict(new)
        if strategy == "coreset":
            inline["labeled_embeddings"] = new["embeddings"][labeled]
        want = client.select(strategy, 9, seed=3, exclude=labeled, **inline)
        np.testing.assert_array_equal(got.indices, want.indices)
        np.testing.assert_allclose(got.scores, want.scores, rtol=1e-6, atol=1e-7)
        assert got.pool_version == after.version
    # The epoch recorded before the replace still counts (same items).
    assert client.select("label_dispersion", 3, pool="loop").indices.size == 3
    # The raw model inputs were kept bit for bit: a new append continues the new schema.
    client.append("loop", model_inputs=pool[:2], probs=new["probs"][:2],
                  embeddings=new["embeddings"][:2])
    assert client.get_pool("loop").item_count == N + 2


def test_a_replace_can_name_a_subset_or_add_an_array(client, pool):
    rng = np.random.default_rng(9)
    scores = rng.standard_normal(N)
    info = client.replace("loop", scores=scores)
    assert set(info.arrays) == {"probs", "embeddings", "model_inputs", "scores"}
    got = client.select("precomputed", 5, pool="loop")
    want = client.select("precomputed", 5, scores=scores, exclude=[0, 7, 50, 119])
    np.testing.assert_array_equal(got.indices, want.indices)


def test_refused_replaces_change_nothing(client, pool, server):
    rng = np.random.default_rng(10)
    before = client.get_pool("loop")
    short = {k: v[:-1] for k, v in _round(rng).items()}
    err = _refused(lambda: client.replace("loop", **short), grpc.StatusCode.INVALID_ARGUMENT,
                   "SHAPE_MISMATCH")
    assert f"{N} items" in err.message and err.field == "header.arrays"
    bad = _round(rng)
    bad["embeddings"][3, 1] = np.nan
    _refused(lambda: client.replace("loop", **bad), grpc.StatusCode.INVALID_ARGUMENT,
             "NON_FINITE")
    _refused(lambda: client.replace("loop", labels=np.zeros(N, np.int64)),
             grpc.StatusCode.INVALID_ARGUMENT, "INVALID_INPUT")
    _refused(lambda: client.replace("nope", **_round(rng)), grpc.StatusCode.NOT_FOUND,
             "POOL_NOT_FOUND")
    # A stream that stops early: the previous version stays.
    probs = _round(rng)["probs"]
    header = assay_pb2.AppendHeader(pool_id="loop")
    header.arrays.add(name="probs", dtype=to_proto(probs).dtype, shape=probs.shape)
    data = probs.tobytes()
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = assay_pb2_grpc.AssayServiceStub(channel)
        with pytest.raises(grpc.RpcError) as rpc:
            stub.ReplacePoolArrays(iter([
                assay_pb2.ReplacePoolArraysRequest(header=header),
                assay_pb2.ReplacePoolArraysRequest(chunk=assay_pb2.AppendChunk(
                    data=data[:len(data) // 2]))]))
    assert rpc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    after = client.get_pool("loop")
    assert (after.version, after.item_count, after.arrays) == (
        before.version, before.item_count, before.arrays)
    assert list(server.store.tmp_dir.iterdir()) == []


def test_an_empty_pool_has_nothing_to_replace(client):
    client.create_pool("empty")
    _refused(lambda: client.replace("empty", scores=np.zeros(3)),
             grpc.StatusCode.FAILED_PRECONDITION, "EMPTY_POOL")


def test_a_retried_replace_is_answered_once(client, pool):
    rng = np.random.default_rng(11)
    new, other = _round(rng), _round(rng)
    first = client.replace("loop", request_id="round-2", **new)
    again = client.replace("loop", request_id="round-2", chunk_bytes=999, **new)
    assert again.version == first.version == client.get_pool("loop").version
    _refused(lambda: client.replace("loop", request_id="round-2", **other),
             grpc.StatusCode.FAILED_PRECONDITION, "REQUEST_ID_REUSED")


def test_sharded_pools_refuse_a_replace_clearly(server_factory, tmp_path):
    server = server_factory(data_dir=str(tmp_path / "sh"), ray_address="in-process")
    rng = np.random.default_rng(12)
    with Client(f"127.0.0.1:{server.port}", timeout=60) as c:
        c.create_pool("s", shards=2)
        c.append("s", **_round(rng))
        _refused(lambda: c.replace("s", **_round(rng)), grpc.StatusCode.FAILED_PRECONDITION,
                 "NOT_SHARDABLE")


def test_a_round_with_a_registered_model_never_reuses_the_last_rounds_outputs(client, pool):
    """The shorter round: re-register the model and Select. The model's cached outputs
    are keyed by the pool's version and the registration, so neither a replace nor a
    new registration under the same id is served from the last round's cache."""
    from onnx_builders import mlp

    rng = np.random.default_rng(13)
    outputs = {"logits": "logits", "embeddings": "features"}
    first, second = mlp(rng, d_in=3), mlp(rng, d_in=3)
    client.register_model("m", first.data, outputs)

    def run():
        return client.select("entropy", 5, pool="loop", models=["m"], seed=1)

    assert run().metrics["model_passes"] == 1 and run().metrics["model_passes"] == 0
    client.replace("loop", scores=rng.standard_normal(N))
    assert run().metrics["model_passes"] == 1  # a new pool version
    client.delete_model("m")
    client.register_model("m", second.data, outputs)
    got = run()
    assert got.metrics["model_passes"] == 1
    unlabeled = np.setdiff1d(np.arange(N), [0, 7, 50, 119])
    p = second.probs(pool)[unlabeled]
    entropy = -(p * np.log(np.where(p > 0, p, 1.0))).sum(axis=1)
    np.testing.assert_allclose(np.sort(got.scores)[::-1], np.sort(entropy)[::-1][:5],
                               rtol=1e-4, atol=1e-6)
