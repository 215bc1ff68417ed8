"""The service end to end on a real loopback server: pools, selection, idempotency,
restart, health, reflection, and discovery."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import reference as ref
from grpc_health.v1 import health_pb2, health_pb2_grpc

from assay.client import AssayError, Client
from assay.server.strategies import registry
from assay.vocab.dtypes import BFLOAT16


def _probs(rng, n, c=4):
    return rng.dirichlet(np.ones(c), size=n).astype(np.float32)


def test_pool_lifecycle(client):
    rng = np.random.default_rng(0)
    probs, emb = _probs(rng, 500), rng.normal(size=(500, 16)).astype(np.float16)
    pool = client.create_pool("round-1")
    assert (pool.item_count, pool.version, pool.arrays) == (0, 0, {})
    pool, first, count = client.append("round-1", probs=probs, embeddings=emb, chunk_bytes=777)
    assert (pool.item_count, first, count, pool.version) == (500, 0, 500, 1)
    assert pool.arrays == {"probs": ("DATA_TYPE_FP32", (500, 4)),
                           "embeddings": ("DATA_TYPE_FP16", (500, 16))}
    more = _probs(rng, 30)
    pool, first, count = client.append("round-1", probs=more, embeddings=emb[:30])
    assert (pool.item_count, first, count) == (530, 500, 30)
    all_probs = np.concatenate([probs, more])

    labeled = ref.top_b(ref.entropy(all_probs), 10)
    pool = client.label("round-1", labeled, np.arange(10) % 4)
    assert (pool.labeled_count, pool.version) == (10, 3)
    got = client.select("entropy", 20, pool="round-1")
    candidates = np.setdiff1d(np.arange(530), labeled)
    np.testing.assert_array_equal(got.indices, ref.top_b(ref.entropy(all_probs), 20, candidates))
    assert got.pool_version == 3
    inline = client.select("entropy", 20, probs=all_probs, exclude=labeled)
    np.testing.assert_array_equal(inline.indices, got.indices)
    np.testing.assert_allclose(inline.scores, got.scores)

    client.delete_pool("round-1")
    with pytest.raises(AssayError) as err:
        client.get_pool("round-1")
    assert err.value.code == grpc.StatusCode.NOT_FOUND


def test_list_pools_paginates_in_id_order(client):
    for name in ["e", "a", "d", "c", "b"]:
        client.create_pool(name)
    assert [p.pool_id for p in client.list_pools(page_size=2)] == list("abcde")
    with pytest.raises(AssayError) as err:
        client.create_pool("c")
    assert err.value.code == grpc.StatusCode.ALREADY_EXISTS


@pytest.mark.parametrize("dtype", [np.float16, np.float64, BFLOAT16])
def test_pool_dtypes_round_trip(client, dtype):
    rng = np.random.default_rng(1)
    probs = _probs(rng, 64).astype(np.float64)
    emb = rng.normal(size=(64, 3)).astype(dtype)
    client.create_pool("p")
    client.append("p", probs=probs.astype(dtype), embeddings=emb)
    got = client.select("egl", 64, pool="p")
    want = ref.egl(probs.astype(dtype).astype(np.float64), emb.astype(np.float64))
    np.testing.assert_allclose(got.scores, want[got.indices], rtol=1e-6)


def test_samples_and_predictions_append_along_their_item_axis(client):
    rng = np.random.default_rng(2)
    s1, s2 = rng.dirichlet(np.ones(3), size=(6, 40)), rng.dirichlet(np.ones(3), size=(6, 25))
    p1, p2 = rng.integers(0, 3, size=(5, 40)), rng.integers(0, 3, size=(5, 25))
    client.create_pool("mc")
    client.append("mc", samples=s1, predictions=p1)
    pool, first, _ = client.append("mc", samples=s2, predictions=p2)
    assert pool.arrays["samples"][1] == (6, 65, 3) and first == 40
    samples = np.concatenate([s1, s2], axis=1)
    got = client.select("bald", 65, pool="mc")
    np.testing.assert_allclose(got.scores, ref.bald(samples)[got.indices], rtol=1e-9)
    got = client.select("label_dispersion", 10, pool="mc")
    disp = ref.label_dispersion(np.concatenate([p1, p2], axis=1))
    np.testing.assert_array_equal(got.indices, ref.top_b(disp, 10))


def test_select_retries_with_the_same_request_id_get_the_same_answer(client):
    probs = _probs(np.random.default_rng(3), 1000)
    a = client.select("random", 50, probs=probs, request_id="r-1")
    b = client.select("random", 50, probs=probs, request_id="r-1")
    np.testing.assert_array_equal(a.indices, b.indices)
    assert a.seed == b.seed
    c = client.select("random", 50, probs=probs, request_id="r-2")
    assert not np.array_equal(a.indices, c.indices)
    with pytest.raises(AssayError) as err:
        client.select("entropy", 50, probs=probs, request_id="r-1")
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "already used" in err.value.message


def test_append_and_label_retries_apply_once(client):
    rng = np.random.default_rng(4)
    client.create_pool("p")
    probs = _probs(rng, 10)
    client.append("p", probs=probs, request_id="a-1")
    pool, first, count = client.append("p", probs=probs, request_id="a-1")
    assert (pool.item_count, first, count, pool.version) == (10, 0, 10, 1)
    client.label("p", [1, 2], [0, 1], request_id="l-1")
    pool = client.label("p", [1, 2], [0, 1], request_id="l-1")
    assert (pool.labeled_count, pool.version) == (2, 2)


def test_restart_serves_every_committed_pool(server_factory):
    rng = np.random.default_rng(5)
    probs = _probs(rng, 300)
    first = server_factory()
    with Client(f"127.0.0.1:{first.port}") as c:
        c.create_pool("kept")
        c.append("kept", probs=probs)
        c.label("kept", [0, 5], [1, 1])
        answer = c.select("random", 7, pool="kept", request_id="before-restart")
    first.stop(0)
    second = server_factory()
    with Client(f"127.0.0.1:{second.port}") as c:
        pool = c.get_pool("kept")
        assert (pool.item_count, pool.labeled_count, pool.version) == (300, 2, 2)
        again = c.select("random", 7, pool="kept", request_id="before-restart")
        np.testing.assert_array_equal(answer.indices, again.indices)
        got = c.select("least_confident", 5, pool="kept")
        cand = np.setdiff1d(np.arange(300), [0, 5])
        np.testing.assert_array_equal(got.indices, ref.top_b(ref.least_confident(probs), 5, cand))


def test_health_is_serving(server):
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "assay.v1.AssayService"):
            r = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert r.status == health_pb2.HealthCheckResponse.SERVING


def test_list_strategies_is_generated_from_the_registry(client):
    listed = {s.name: s for s in client.list_strategies()}
    assert set(listed) == {s.name for s in registry.all_strategies()}
    mal = listed["mal"]
    assert mal.required_inputs == ("discriminator", "probs")
    assert mal.params["alpha"] == {"type": "PARAM_TYPE_DOUBLE", "default": 0.5, "minimum": 0.0,
                                   "maximum": 1.0, "choices": [],
                                   "description": "Weight of the discriminator rank."}
    assert "prefilter" in listed["entropy"].params
    assert listed["random"].kind == "batch" and listed["entropy"].kind == "score"


def test_a_generic_reflection_client_can_discover_and_call(server):
    """grpc-requests builds its stubs from server reflection alone: no generated code."""
    from grpc_requests import Client as ReflectionClient

    rc = ReflectionClient.get_by_endpoint(f"127.0.0.1:{server.port}")
    assert "assay.v1.AssayService" in rc.service_names
    listed = rc.request("assay.v1.AssayService", "ListStrategies", {})
    assert "entropy" in {s["name"] for s in listed["strategies"]}
    probs = np.array([[0.9, 0.1], [0.5, 0.5], [0.7, 0.3]], dtype="<f4")
    import base64

    reply = rc.request("assay.v1.AssayService", "Select", {
        "strategy": "entropy", "budget": 2,
        "inputs": {"probs": {"dtype": "DATA_TYPE_FP32", "shape": [3, 2],
                             "data": base64.b64encode(probs.tobytes()).decode()}},
    })
    assert [int(i) for i in reply["indices"]] == [1, 2]
