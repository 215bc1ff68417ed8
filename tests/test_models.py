"""Selecting with registered ONNX models: the server's inference against a NumPy forward
pass of the same weights, strategies against their float64 references, the per-round
cache, MC dropout, committees, deadlines, and every rejection with its status."""

from __future__ import annotations

import io
import itertools
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import reference as ref
import seeding
from onnx_builders import ALL_OUTPUTS, endless_loop, mlp, slow_model
from test_onnx_safety import reason_of

from assay.client import AssayError, Client
from assay.server.acquisition import selection
from assay.server.models import inference as model_inference
from assay.server.models.inference import ModelRun, ModelRuntime
from assay.server.models.onnx_runner import default_threads, make_session
from assay.v1 import assay_pb2, assay_pb2_grpc, tensor_pb2
from assay.vocab.dtypes import BFLOAT16

INVALID = grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture
def rng():
    return seeding.rng()


def _entropy(p: np.ndarray) -> np.ndarray:
    return ref.entropy(p)


def _expect(selection, scores: np.ndarray, budget: int, candidates=None, rtol=1e-5):
    """The selection is the reference's top-b, with the reference's scores."""
    want = ref.top_b(scores, budget, candidates)
    np.testing.assert_array_equal(selection.indices, want)
    np.testing.assert_allclose(selection.scores, scores[want], rtol=rtol, atol=1e-6)


def _failure(call, *args, **kwargs) -> AssayError:
    with pytest.raises(AssayError) as info:
        call(*args, **kwargs)
    return info.value


# -- one model -------------------------------------------------------------------------------


def test_one_model_gives_every_role(client, rng):
    m = mlp(rng, classes=5)
    client.register_model("m", m.data, ALL_OUTPUTS)
    x = rng.normal(size=(80, 6)).astype(np.float32)
    client.create_pool("p")
    client.append("p", model_inputs=x)
    labeled = rng.choice(80, size=7, replace=False)
    client.label("p", labeled, np.zeros(7))
    candidates = np.setdiff1d(np.arange(80), labeled)
    kw = dict(pool="p", models=["m"])
    _expect(client.select("entropy", 6, **kw), _entropy(m.probs(x)), 6, candidates)
    _expect(client.select("margin", 6, **kw), ref.margin(m.probs(x)), 6, candidates)
    _expect(client.select("loss_prediction", 6, **kw), m.loss(x), 6, candidates)
    _expect(client.select("discriminator", 6, **kw), -m.discriminator(x), 6, candidates)
    _expect(client.select("egl", 6, **kw), ref.egl(m.probs(x), m.hidden(x)), 6, candidates,
            rtol=1e-4)


def test_probs_output_and_inline_inputs(client, rng):
    m = mlp(rng, probs_output=True)
    client.register_model("m", m.data, {"probs": "probs"})
    x = rng.normal(size=(40, 6)).astype(np.float32)
    for _ in range(2):
        sel = client.select("entropy", 5, model_inputs=x, models=["m"])
        _expect(sel, _entropy(m.probs(x)), 5)
        assert sel.metrics["model_passes"] == 1  # inline inputs are never cached


def test_raw_inputs_of_any_rank_and_type(client, rng):
    cases = [
        (mlp(rng, kind="tokens", input_dtype="int64", vocab=30),
         lambda: rng.integers(0, 30, size=(50, 5)).astype(np.int64)),
        (mlp(rng, kind="tokens", input_dtype="int64", vocab=30),  # INT32 widens to INT64
         lambda: rng.integers(0, 30, size=(50, 5)).astype(np.int32)),
        (mlp(rng, kind="image"), lambda: rng.normal(size=(50, 2, 3)).astype(np.float32)),
        (mlp(rng), lambda: rng.normal(size=(50, 6)).astype(np.float16)),  # FP16 widens
        (mlp(rng, input_dtype="float64"), lambda: rng.normal(size=(50, 6))),
        (mlp(rng, input_dtype="float16"), lambda: rng.normal(size=(50, 6)).astype(np.float16)),
    ]
    for i, (m, make) in enumerate(cases):
        x = make()
        client.register_model(f"m{i}", m.data, {"logits": "logits"})
        client.create_pool(f"p{i}")
        client.append(f"p{i}", model_inputs=x)
        rtol = 1e-2 if m.model.graph.input[0].type.tensor_type.elem_type == 10 else 1e-5
        _expect(client.select("entropy", 4, pool=f"p{i}", models=[f"m{i}"]),
                _entropy(m.probs(x)), 4, rtol=rtol)


def test_batching_fixed_item_axis_and_batch_size(client, rng):
    fixed = mlp(rng, batch=4)  # exported with a fixed batch of 4: the last batch is padded
    free = mlp(rng)
    client.register_model("fixed", fixed.data, ALL_OUTPUTS)
    client.register_model("free", free.data, ALL_OUTPUTS)
    x = rng.normal(size=(10, 6)).astype(np.float32)
    client.create_pool("p")
    client.append("p", model_inputs=x)
    _expect(client.select("entropy", 10, pool="p", models=["fixed"]),
            _entropy(fixed.probs(x)), 10)
    for batch_size in (1, 3, 0):
        sel = client.select("entropy", 10, model_inputs=x, models=["free"],
                            batch_size=batch_size)
        _expect(sel, _entropy(free.probs(x)), 10)


def test_results_are_cached_per_pool_version_and_registration(client, rng):
    m = mlp(rng)
    client.register_model("m", m.data, ALL_OUTPUTS)
    x = rng.normal(size=(30, 6)).astype(np.float32)
    client.create_pool("p")
    client.append("p", model_inputs=x)

    def passes(strategy):
        return client.select(strategy, 3, pool="p", models=["m"]).metrics["model_passes"]

    assert passes("entropy") == 1
    assert passes("margin") == 0  # the same round: served from the cache
    assert client.select("least_confident", 3, pool="p", models=["m"]).metrics[
        "model_cached_passes"] == 1
    client.label("p", [0], [1])
    assert passes("entropy") == 1  # a new pool version
    assert passes("entropy") == 0
    # The same id registered again with other weights must not hit the old results.
    other = mlp(rng)
    client.delete_model("m")
    client.register_model("m", other.data, ALL_OUTPUTS)
    sel = client.select("entropy", 3, pool="p", models=["m"])
    assert sel.metrics["model_passes"] == 1
    _expect(sel, _entropy(other.probs(x)), 3, np.arange(1, 30))
    # So must a pool deleted and re-created under the same id, at the same version.
    y = rng.normal(size=(30, 6)).astype(np.float32)
    client.delete_pool("p")
    client.create_pool("p")
    client.append("p", model_inputs=y)
    client.label("p", [0], [1])
    sel = client.select("entropy", 3, pool="p", models=["m"])
    assert sel.metrics["model_passes"] == 1
    _expect(sel, _entropy(other.probs(y)), 3, np.arange(1, 30))


def test_model_embeddings_replace_the_pools(client, rng):
    """Geometric strategies see the model's embeddings for the pool and its labeled items."""
    m = mlp(rng)
    client.register_model("m", m.data, {"embeddings": "features"})
    x = rng.normal(size=(40, 6)).astype(np.float32)
    client.create_pool("p")
    client.append("p", model_inputs=x, embeddings=rng.normal(size=(40, 3)).astype(np.float32))
    client.label("p", [3, 11], [0, 1])
    # The deadline leaves room for compiling the k-center kernel on a first use.
    got = client.select("coreset", 5, pool="p", models=["m"], timeout=300)
    # k-center greedy in float64 from the labeled items' model embeddings.
    h = m.hidden(x)
    dist = np.linalg.norm(h[:, None] - h[[3, 11]][None], axis=2).min(axis=1)
    candidates = np.setdiff1d(np.arange(40), [3, 11])
    picks, radii = [], []
    for _ in range(5):
        j = candidates[np.argmax(dist[candidates])]
        picks.append(j)
        radii.append(dist[j])
        dist = np.minimum(dist, np.linalg.norm(h - h[j], axis=1))
    np.testing.assert_array_equal(got.indices, picks)
    np.testing.assert_allclose(got.scores, radii, rtol=1e-4)


# -- MC dropout ------------------------------------------------------------------------------


def _mc_samples(server, x, model_id, s, seed, batch_size):
    runtime = ModelRuntime(server.models, threads=1)
    arrays = runtime.arrays(ModelRun([model_id], s, batch_size, seed), {"model_inputs": x},
                            needed={"samples"}).arrays
    return arrays["samples"]


def _masks_of(samples: np.ndarray, hidden: np.ndarray, logits_under) -> np.ndarray:
    """Check that every pass of every item is the forward pass under one of the 2^H dropout
    masks (``logits_under(item, mask)``: float64 logits); return the masks of the units a
    mask can be seen on (those not zeroed by the ReLU anyway), flattened."""
    masks = np.array(list(itertools.product([0.0, 1.0], repeat=hidden.shape[1])))
    kept = []
    for i in range(samples.shape[1]):
        table = np.stack([logits_under(i, mask) for mask in masks])
        table = np.exp(table - table.max(axis=1, keepdims=True))
        table /= table.sum(axis=1, keepdims=True)
        for s in range(samples.shape[0]):
            dist = np.abs(table - samples[s, i]).max(axis=1)
            assert dist.min() < 1e-5, (i, s)
            kept.append(masks[dist.argmin()][hidden[i] > 0])
    return np.concatenate(kept)


def test_mc_dropout_passes_are_masked_forward_passes(server, client, rng):
    m = mlp(rng, hidden=6, classes=3, dropout=0.5)
    client.register_model("m", m.data, {"logits": "logits"})
    x = rng.normal(size=(12, 6)).astype(np.float32)
    samples = _mc_samples(server, x, "m", 32, seed=11, batch_size=5)
    assert samples.shape == (32, 12, 3)
    np.testing.assert_allclose(samples.sum(axis=2), 1.0, atol=1e-5)
    kept = _masks_of(samples, m.hidden(x), lambda i, mask: m.logits(x[i:i + 1], mask[None])[0])
    # Units are kept at rate 1 - ratio: within 5 standard errors of a fair coin.
    assert abs(kept.mean() - 0.5) < 5 * 0.5 / np.sqrt(kept.size)
    assert len({samples[s].tobytes() for s in range(32)}) == 32  # no two passes alike
    # The same seed and batch size replay; another seed does not.
    np.testing.assert_array_equal(_mc_samples(server, x, "m", 32, 11, 5), samples)
    assert not np.allclose(_mc_samples(server, x, "m", 32, 12, 5), samples)


def test_a_torch_export_with_dropout_kept(server, client, rng):
    """What the FAILED_PRECONDITION hint says to do works: a PyTorch model exported with its
    dropout kept runs deterministically in a plain pass and samples under mc_samples."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(int(rng.integers(2**31)))
    net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Dropout(0.5),
                              torch.nn.Linear(8, 3))

    def export(**kwargs) -> bytes:
        buffer = io.BytesIO()
        torch.onnx.export(net, (torch.zeros(2, 6),), buffer, dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "N"}, "logits": {0: "N"}}, **kwargs)
        return buffer.getvalue()

    net.eval()
    net[2].train()
    client.register_model("kept", export(training=torch.onnx.TrainingMode.PRESERVE,
                                         do_constant_folding=False), {"logits": "logits"})
    net.eval()
    client.register_model("folded", export(), {"logits": "logits"})
    x = rng.normal(size=(10, 6)).astype(np.float32)
    with torch.no_grad():
        probs = torch.softmax(net(torch.from_numpy(x)), dim=1).double().numpy()
    _expect(client.select("entropy", 10, model_inputs=x, models=["kept"]), _entropy(probs), 10,
            rtol=1e-4)
    w1, b1, w2, b2 = (t.detach().double().numpy() for t in
                      (net[0].weight, net[0].bias, net[3].weight, net[3].bias))
    hidden = np.maximum(x @ w1.T + b1, 0.0)
    kept = _masks_of(_mc_samples(server, x, "kept", 16, 2, 0), hidden,
                     lambda i, mask: (hidden[i] * mask / 0.5) @ w2.T + b2)
    assert 0.35 < kept.mean() < 0.65
    error = _failure(client.select, "bald", 2, model_inputs=x, models=["folded"], mc_samples=4)
    assert (error.code, reason_of(error)[0]) == (grpc.StatusCode.FAILED_PRECONDITION,
                                                 "NO_DROPOUT")


@pytest.mark.parametrize("strategy", ["bald", "variation_ratio", "mean_std", "entropy"])
def test_mc_dropout_selection_matches_the_reference(server, client, rng, strategy):
    m = mlp(rng, hidden=16, dropout=0.3)
    client.register_model("m", m.data, ALL_OUTPUTS)
    x = rng.normal(size=(60, 6)).astype(np.float32)
    client.create_pool("p")
    client.append("p", model_inputs=x)
    kw = dict(pool="p", models=["m"], mc_samples=16, seed=5, batch_size=16)
    sel = client.select(strategy, 8, **kw)
    assert sel.seed == 5 and sel.metrics["model_passes"] == 16
    samples = _mc_samples(server, x, "m", 16, 5, 16).astype(np.float64)
    scores = (_entropy(samples.mean(axis=0)) if strategy == "entropy"
              else getattr(ref, strategy)(samples))
    if strategy == "variation_ratio":  # discrete scores: compare tie-aware
        np.testing.assert_allclose(sel.scores, np.sort(scores)[::-1][:8])
        assert set(sel.scores) <= set(scores)
    else:
        _expect(sel, scores, 8, rtol=1e-4)
    again = client.select(strategy, 8, **kw)
    assert again.metrics["model_cached_passes"] == 1
    np.testing.assert_array_equal(again.indices, sel.indices)


def test_mc_dropout_without_a_seed_reports_the_one_it_drew(client, rng):
    m = mlp(rng, dropout=0.5)
    client.register_model("m", m.data, {"logits": "logits"})
    x = rng.normal(size=(30, 6)).astype(np.float32)
    first = client.select("bald", 5, model_inputs=x, models=["m"], mc_samples=8)
    replay = client.select("bald", 5, model_inputs=x, models=["m"], mc_samples=8,
                           seed=first.seed)
    np.testing.assert_array_equal(replay.indices, first.indices)
    np.testing.assert_array_equal(replay.scores, first.scores)


def test_mc_dropout_needs_dropout_nodes_and_opset_12(client, rng):
    client.register_model("plain", mlp(rng).data, {"logits": "logits"})
    client.register_model("old", mlp(rng, dropout=0.5, opset=11).data, {"logits": "logits"})
    x = rng.normal(size=(10, 6)).astype(np.float32)
    error = _failure(client.select, "bald", 2, model_inputs=x, models=["plain"], mc_samples=4)
    assert error.code == grpc.StatusCode.FAILED_PRECONDITION
    assert reason_of(error) == ("NO_DROPOUT", "mc_samples")
    assert "TrainingMode.PRESERVE" in error.message
    error = _failure(client.select, "bald", 2, model_inputs=x, models=["old"], mc_samples=4)
    assert error.code == grpc.StatusCode.FAILED_PRECONDITION
    assert reason_of(error)[0] == "OPSET_TOO_OLD"


# -- committees ------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["vote_entropy", "consensus_entropy", "kl_disagreement"])
def test_committee_matches_the_reference(client, rng, strategy):
    members = [mlp(rng, classes=3) for _ in range(3)]
    for i, m in enumerate(members):
        client.register_model(f"c{i}", m.data, {"logits": "logits"})
    x = rng.normal(size=(50, 6)).astype(np.float32)
    client.create_pool("p")
    client.append("p", model_inputs=x)
    sel = client.select(strategy, 6, pool="p", models=["c0", "c1", "c2"])
    assert sel.metrics["model_passes"] == 3
    samples = np.stack([m.probs(x) for m in members])
    scores = getattr(ref, strategy)(samples)
    if strategy == "vote_entropy":  # three votes: few distinct values, compare tie-aware
        np.testing.assert_allclose(sel.scores, np.sort(scores)[::-1][:6], atol=1e-9)
        np.testing.assert_allclose(scores[sel.indices], sel.scores, atol=1e-9)
    else:
        _expect(sel, scores, 6, rtol=1e-4)


def test_committee_of_mc_dropout_models(server, client, rng):
    members = [mlp(rng, dropout=0.4) for _ in range(2)]
    for i, m in enumerate(members):
        client.register_model(f"c{i}", m.data, ALL_OUTPUTS)
    x = rng.normal(size=(20, 6)).astype(np.float32)
    runtime = ModelRuntime(server.models, threads=1)
    out = runtime.arrays(ModelRun(["c0", "c1"], 5, 0, 3), {"model_inputs": x},
                         needed={"samples", "embeddings"})
    arrays, stats = out.arrays, out.metrics
    assert arrays["samples"].shape == (10, 20, 4)
    assert stats["model_passes"] == 11  # 2 x 5 MC passes, one deterministic for embeddings
    np.testing.assert_allclose(arrays["embeddings"], members[0].hidden(x), rtol=1e-5,
                               atol=1e-6)
    alone = _mc_samples(server, x, "c1", 5, 3, 0)
    np.testing.assert_array_equal(arrays["samples"][5:], alone)


def test_a_committee_feeds_suggestive_annotation(client, rng):
    """Samples and embeddings from three registered models select what the strategy selects
    on the same arrays computed in NumPy."""
    members = [mlp(rng, hidden=12) for _ in range(3)]
    for i, m in enumerate(members):
        client.register_model(f"c{i}", m.data, {"logits": "logits", "embeddings": "features"})
    x = rng.normal(size=(60, 6)).astype(np.float32)
    client.create_pool("p")
    client.append("p", model_inputs=x)
    client.label("p", [0, 5], [1, 2])
    sel = client.select("suggestive_annotation", 5, pool="p", models=["c0", "c1", "c2"],
                        seed=4, timeout=300)  # room for compiling the kernel on a first use
    want = selection.select(
        "suggestive_annotation", 5,
        {"samples": np.stack([m.probs(x) for m in members]).astype(np.float32),
         "embeddings": members[0].hidden(x).astype(np.float32)},
        seed=4, exclude=np.array([0, 5]))
    np.testing.assert_array_equal(sel.indices, want.indices)
    np.testing.assert_allclose(sel.scores, want.scores, rtol=1e-4)


def test_mc_dropout_feeds_batchbald(server, client, rng):
    m = mlp(rng, hidden=12, dropout=0.4)
    client.register_model("m", m.data, {"logits": "logits"})
    x = rng.normal(size=(40, 6)).astype(np.float32)
    sel = client.select("batchbald", 4, model_inputs=x, models=["m"], mc_samples=8, seed=9,
                        batch_size=10, timeout=300)  # room for compiling the kernel
    samples = _mc_samples(server, x, "m", 8, 9, 10)
    want = selection.select("batchbald", 4, {"samples": samples}, seed=9)
    np.testing.assert_array_equal(sel.indices, want.indices)
    np.testing.assert_allclose(sel.scores, want.scores, rtol=1e-6)


def test_sessions_cap_their_threads(rng):
    session = make_session(mlp(rng).data, threads=1)
    options = session.get_session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (1, 1)
    assert session.get_providers()[-1] == "CPUExecutionProvider"
    assert 1 <= default_threads() <= 4


def test_committee_rejections(client, rng):
    client.register_model("a", mlp(rng, classes=3).data, {"logits": "logits"})
    client.register_model("b", mlp(rng, classes=4).data, {"logits": "logits"})
    client.register_model("e", mlp(rng).data, {"embeddings": "features"})
    x = rng.normal(size=(10, 6)).astype(np.float32)
    error = _failure(client.select, "vote_entropy", 2, model_inputs=x, models=["a", "b"])
    assert (error.code, reason_of(error)[0]) == (INVALID, "SHAPE_MISMATCH")
    error = _failure(client.select, "vote_entropy", 2, model_inputs=x, models=["a", "e"])
    assert (error.code, reason_of(error)[0]) == (INVALID, "MISSING_INPUT")
    assert "'e'" in error.message
    error = _failure(client.select, "vote_entropy", 2, model_inputs=x, models=["a", "a"])
    assert (error.code, reason_of(error)[1]) == (INVALID, "model_ids")


# -- rejections ------------------------------------------------------------------------------


def test_select_rejections(client, rng):
    m = mlp(rng)
    client.register_model("m", m.data, ALL_OUTPUTS)
    client.register_model("lies", m.data, {"probs": "logits"})  # raw logits declared as probs
    x = rng.normal(size=(10, 6)).astype(np.float32)
    client.create_pool("arrays-only")
    client.append("arrays-only", probs=m.probs(x).astype(np.float32))
    cases = [
        (dict(models=["nope"], model_inputs=x), grpc.StatusCode.NOT_FOUND,
         ("MODEL_NOT_FOUND", "model_ids[0]")),
        (dict(models=["m"], pool="arrays-only"), INVALID,
         ("MISSING_INPUT", "inputs.model_inputs")),
        (dict(models=["m"], model_inputs=x.astype(np.float64)), INVALID,
         ("INPUT_MISMATCH", "inputs.model_inputs")),
        (dict(models=["m"], model_inputs=x[:, :5]), INVALID,
         ("INPUT_MISMATCH", "inputs.model_inputs")),
        (dict(models=["m"], model_inputs=x[:, :, None]), INVALID,
         ("INPUT_MISMATCH", "inputs.model_inputs")),
        (dict(models=["lies"], model_inputs=x), INVALID, ("NOT_PROBABILITIES", None)),
        (dict(mc_samples=4, probs=m.probs(x).astype(np.float32)), INVALID,
         ("INVALID_INPUT", "model_ids")),
        (dict(models=["m"], model_inputs=x, mc_samples=1001), INVALID,
         ("INVALID_INPUT", "mc_samples")),
        (dict(models=["m"], model_inputs=x, batch_size=-1), INVALID,
         ("INVALID_INPUT", "batch_size")),
        (dict(models=["m"], model_inputs=x[:0]), INVALID, ("INVALID_INPUT", None)),
    ]
    for kwargs, code, (reason, field) in cases:
        error = _failure(client.select, "entropy", 1, **kwargs)
        assert error.code == code, (kwargs.keys(), error)
        got = reason_of(error)
        assert got[0] == reason, (kwargs.keys(), error)
        if field is not None:
            assert got[1] == field, (kwargs.keys(), error)
    error = _failure(client.select, "entropy", 1, models=["lies"], model_inputs=x)
    assert "'lies'" in error.message and "'logits'" in error.message


def test_model_inputs_are_validated_on_upload(server, client):
    client.create_pool("p")
    bad = np.ones((4, 3), np.float32)
    bad[2, 1] = np.nan
    error = _failure(client.append, "p", model_inputs=bad)
    assert (error.code, reason_of(error)[0]) == (INVALID, "NON_FINITE")
    error = _failure(client.append, "p", model_inputs=np.zeros((4, 2), BFLOAT16))
    assert error.code == INVALID and "bfloat16" in error.message
    # A scalar has no item axis (raw stub: the client would send it as shape [1]).
    header = assay_pb2.AppendHeader(pool_id="p", arrays=[assay_pb2.ArrayHeader(
        name="model_inputs", dtype=tensor_pb2.DATA_TYPE_FP32, shape=[])])
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        with pytest.raises(grpc.RpcError) as info:
            assay_pb2_grpc.AssayServiceStub(channel).AppendPoolItems(
                iter([assay_pb2.AppendPoolItemsRequest(header=header)]), timeout=10)
    assert info.value.code() == INVALID
    assert reason_of(info.value)[1] == "header.arrays[0].shape"
    assert client.get_pool("p").item_count == 0


# -- deadlines -------------------------------------------------------------------------------


def _slow_pool(client: Client, *, stored: bool = False) -> None:
    """A model taking about 12 s over the pool "big" on one core, its session already built
    (by a Select over a few items), so what a deadline interrupts is inference itself.
    ``stored``: model and pool were stored already (by an earlier server on the data dir)."""
    x = np.random.default_rng(0).normal(size=(2048, 512)).astype(np.float32)
    if not stored:
        model = slow_model(layers=600, width=512)
        client.register_model("slow", model.SerializeToString(), {"logits": "logits"})
        client.create_pool("big")
        client.append("big", model_inputs=x)
    client.select("entropy", 1, model_inputs=x[:4], models=["slow"])


def test_the_server_ceiling_stops_a_running_batch(server_factory):
    # Registering (a session build in a child process) and uploading are not what the
    # ceiling is tested on here: a server without one stores the model and the pool.
    first = server_factory()
    with Client(f"127.0.0.1:{first.port}", timeout=120) as client:
        _slow_pool(client)
    first.stop(0)
    server = server_factory(max_deadline_seconds=2.0)
    with Client(f"127.0.0.1:{server.port}", timeout=60) as client:
        for _ in range(10):  # a loaded machine may build the session past the 2 s ceiling;
            try:  # the session is kept all the same, and the next warm-up finds it
                _slow_pool(client, stored=True)
                break
            except AssayError as slow:
                assert slow.code == grpc.StatusCode.DEADLINE_EXCEEDED, slow
        started = time.monotonic()
        error = _failure(client.select, "entropy", 1, pool="big", models=["slow"],
                         batch_size=2048)  # one batch: only RunOptions.terminate can stop it
        elapsed = time.monotonic() - started
    assert error.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "model inference" in error.message  # stopped inside the batch, not after it
    # The message shows where it stopped; the clock only has to rule out the whole
    # ~12 s batch, with room for a loaded 2-core machine.
    assert elapsed < 2.0 + 8.0, elapsed


def test_a_client_deadline_frees_the_server(server_factory):
    # No queue place: while the one selection slot is taken, a Select is refused at once,
    # so polling shows exactly when the abandoned inference gives the slot back.
    server = server_factory(max_concurrent_selects=1, max_queued_selects=0)
    with Client(f"127.0.0.1:{server.port}", timeout=300, retries=0) as client:
        _slow_pool(client)
        # Baseline on this machine, under its current load: a quarter of the batch.
        quarter = np.random.default_rng(1).normal(size=(512, 512)).astype(np.float32)
        started = time.monotonic()
        client.select("entropy", 1, model_inputs=quarter, models=["slow"], batch_size=512)
        batch_s = 4 * (time.monotonic() - started)
        started = time.monotonic()
        error = _failure(client.select, "entropy", 1, pool="big", models=["slow"],
                         batch_size=2048, timeout=0.5)
        assert error.code == grpc.StatusCode.DEADLINE_EXCEEDED
        probs = np.full((4, 2), 0.5, np.float32)
        refused = 0
        while True:
            try:
                client.select("entropy", 1, probs=probs)
                break
            except AssayError as busy:
                assert busy.code == grpc.StatusCode.RESOURCE_EXHAUSTED, busy
                refused += 1
                assert time.monotonic() - started < 3 * batch_s + 60, "the slot never came back"
                time.sleep(0.05)
        freed_s = time.monotonic() - started
    # Inference that ran on after the deadline would hold the slot for the whole batch.
    assert freed_s < 0.5 * batch_s, (
        f"the slot came back {freed_s:.1f} s after the call; the batch takes about "
        f"{batch_s:.1f} s here ({refused} refusals seen)")


def test_a_session_build_does_not_hold_a_select_past_its_deadline(server_factory, rng,
                                                                  monkeypatch):
    # A build is held until released (120 s at most). With one selection slot and no queue,
    # a Select is refused while another holds the slot: so a cheap Select succeeding while
    # the build is still held shows the timed-out Select gave its slot (and worker) back.
    server = server_factory(max_concurrent_selects=1, max_queued_selects=0)
    with Client(f"127.0.0.1:{server.port}", timeout=60, retries=0) as client:
        m = mlp(rng)
        client.register_model("m", m.data, {"logits": "logits"})
        release, builds = threading.Event(), []
        real = model_inference.make_session

        def held_build(*args, **kwargs):
            builds.append(time.monotonic())
            release.wait(120)
            return real(*args, **kwargs)

        monkeypatch.setattr(model_inference, "make_session", held_build)
        x = rng.normal(size=(5, 6)).astype(np.float32)
        try:
            error = _failure(client.select, "entropy", 1, model_inputs=x, models=["m"],
                             timeout=1)
            assert error.code == grpc.StatusCode.DEADLINE_EXCEEDED
            probs = np.full((4, 2), 0.5, np.float32)
            stop = time.monotonic() + 60
            while True:
                try:
                    client.select("entropy", 1, probs=probs)
                    break
                except AssayError as busy:
                    assert busy.code == grpc.StatusCode.RESOURCE_EXHAUSTED, busy
                    assert time.monotonic() < stop, "the Select waited for the session build"
                    time.sleep(0.05)
            assert not release.is_set() and len(builds) == 1
        finally:
            release.set()
        got = client.select("entropy", 1, model_inputs=x, models=["m"])
        assert len(builds) == 1  # the held build finished and was cached, not repeated
        _expect(got, _entropy(m.probs(x)), 1)


def test_a_model_that_loops_forever_is_stopped_by_the_deadline(client):
    # 10^12 trips of a cheap body: no static bound sees it (each node is tiny), the load
    # check passes (nothing to fold), and only the deadline, checked between nodes, ends it.
    client.register_model("loop", endless_loop().SerializeToString(), {"logits": "logits"})
    x = np.zeros((4, 2), np.float32)
    started = time.monotonic()
    error = _failure(client.select, "entropy", 1, model_inputs=x, models=["loop"], timeout=3)
    assert error.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 30  # 3 s deadline; the loop alone would take days
    # The worker is free again: a loop of 3 trips answers (x + 3 in both classes: a tie).
    client.register_model("loop3", endless_loop(3).SerializeToString(), {"logits": "logits"})
    assert client.select("entropy", 1, model_inputs=x, models=["loop3"]).indices.tolist() == [0]


# -- memory ----------------------------------------------------------------------------------

_CAPPED_SELECT = """
import json, resource, sys
import numpy as np
sys.path.insert(0, {tests!r})
from onnx_builders import input_sized_allocation
from test_onnx_safety import reason_of
from assay.client import AssayError, Client
from assay.server.wiring.app import start
from assay.server.wiring.config import ServerConfig

def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

config = ServerConfig(address="127.0.0.1:0", data_dir={data!r}, max_model_memory_bytes={cap})
if hasattr(config, "warmup"):
    config.warmup = False  # no kernel runs here: no compiles before SERVING
server = start(config)
out = {{}}
with Client(f"127.0.0.1:{{server.port}}", timeout=120) as client:
    client.register_model("m", input_sized_allocation().SerializeToString(),
                          {{"logits": "logits"}})
    small = np.full((8, 2), {small}, np.float32)
    client.select("entropy", 1, model_inputs=small, models=["m"])
    out["before"] = peak()
    try:
        client.select("entropy", 1, model_inputs=np.full((8, 2), {side}, np.float32),
                      models=["m"])
        out["outcome"] = ["OK", ""]
    except AssayError as error:
        out["outcome"] = [error.code.name, reason_of(error)[0], error.message]
    out["after"] = peak()
    # The arena is not left full: the same small Select runs again.
    out["again"] = client.select("entropy", 1, model_inputs=small, models=["m"]).indices.tolist()
server.stop(0)
print(json.dumps(out))
"""


def test_inference_allocations_past_the_memory_cap_are_refused_before_they_happen(tmp_path):
    # The model's ConstantOfShape is [v, v] for the largest input value v, so no check of its
    # graph can bound it: v = 25000 asks for 25000^2 * 4 = 2.5 GB in one allocation. With a
    # 256 MiB cap it must fail without the server's peak memory growing by anything near it.
    side, cap = 25000, 256 << 20
    script = _CAPPED_SELECT.format(tests=str(Path(__file__).parent), data=str(tmp_path / "d"),
                                   cap=cap, small=100.0, side=float(side))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    code, reason, message = out["outcome"]
    assert (code, reason) == ("RESOURCE_EXHAUSTED", "MODEL_MEMORY"), out
    assert str(cap) in message and "batch_size" in message
    wanted = side * side * 4
    assert out["after"] - out["before"] < wanted // 2, out  # nothing near 2.5 GB was touched
    assert out["again"] == [0]  # equal scores: ties go to the lowest index
