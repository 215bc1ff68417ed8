"""MC dropout with onnxruntime's own Dropout kernels: ``sampling_dropout`` graphs whose
Dropout nodes draw from onnxruntime's default generator, reset by ``seeded`` to
``pass_seed(seed, pass, batch_start)`` for each run, so one session serves every request.

The references are independent of the module: masks are read from Dropout's own mask
output and checked against binomial bounds, outputs against ``x * mask / (1 - ratio)``
and, for a torch export, the mean of many passes against the deterministic output.
Statistical bounds follow from n and p: a count of n Bernoulli(p) draws is within 5
standard deviations of n p; a mean of S passes within 5 standard errors of its
expectation (CLT); failure odds per check < 1e-6.
"""

from __future__ import annotations

import io
import threading

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import seeding
from onnx import TensorProto, helper, numpy_helper
from onnx_builders import mlp

from assay.server.models import inference as model_inference
from assay.server.models.inference import ModelRun, ModelRuntime, softmax
from assay.server.models.mc_dropout import (
    DISABLED_OPTIMIZERS,
    disable_dropout,
    pass_seed,
    sampling_dropout,
    seeded,
)
from assay.vocab.errors import FailedPrecondition

SIGMAS = 5.0
_TYPES = {np.float32: TensorProto.FLOAT, np.float16: TensorProto.FLOAT16,
          np.float64: TensorProto.DOUBLE}


def dropout_model(dtype=np.float32, ratio: float | None = 0.5, opset: int = 13,
                  mask: bool = True, shape=("N", 64)) -> onnx.ModelProto:
    """x -> Dropout(x, ratio?) -> y (and the mask when asked); opset < 12: ratio attribute."""
    inputs, inits, attrs = ["x"], [], {}
    if ratio is not None and opset >= 12:
        inputs.append("ratio")
        inits.append(numpy_helper.from_array(np.array(ratio, np.float32), "ratio"))
    elif ratio is not None:
        attrs["ratio"] = ratio
    outputs = ["y", "mask"] if mask else ["y"]
    out_info = [helper.make_tensor_value_info("y", _TYPES[dtype], list(shape))]
    if mask:
        out_info.append(helper.make_tensor_value_info("mask", TensorProto.BOOL, list(shape)))
    graph = helper.make_graph(
        [helper.make_node("Dropout", inputs, outputs, **attrs)], "dropout",
        [helper.make_tensor_value_info("x", _TYPES[dtype], list(shape))], out_info, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    return model


def session(model: onnx.ModelProto, threads: int = 1) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"],
                                disabled_optimizers=list(DISABLED_OPTIMIZERS))


def run_seeded(sess: ort.InferenceSession, feed: dict, seed: int) -> list[np.ndarray]:
    with seeded(seed):
        return sess.run(None, feed)


# -- (a) keep rate and scale, per type and ratio --------------------------------------------

@pytest.mark.parametrize("ratio", [0.1, 0.5, 0.9, None])
def test_keep_rate_within_binomial_bounds(ratio):
    n = 200_000
    r = 0.5 if ratio is None else float(np.float32(ratio))
    keep = 1.0 - r
    sess = session(sampling_dropout(dropout_model(ratio=ratio, shape=("N", 1000))))
    x = np.ones((n // 1000, 1000), np.float32)
    y, mask = run_seeded(sess, {"x": x}, pass_seed(7, 0, 0))
    bound = SIGMAS * np.sqrt(n * keep * (1 - keep))
    assert abs(int(mask.sum()) - n * keep) < bound, (ratio, int(mask.sum()), n * keep, bound)
    scale = np.float32(1.0 / (1.0 - r))
    np.testing.assert_allclose(y, np.where(mask, scale, np.float32(0)), rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("ratio", [None, 0.1, 0.9])
def test_types_and_ratio_input(dtype, ratio):
    rng = seeding.rng()
    n = 40_000
    r = 0.5 if ratio is None else float(np.float32(ratio))
    sess = session(sampling_dropout(dropout_model(dtype, ratio)))
    x = rng.normal(size=(n // 64, 64)).astype(dtype)
    y, mask = run_seeded(sess, {"x": x}, pass_seed(5, 1, 0))
    assert y.dtype == dtype and mask.dtype == np.bool_
    keep = 1 - r
    assert abs(int(mask.sum()) - mask.size * keep) < SIGMAS * np.sqrt(
        mask.size * keep * (1 - keep)), (dtype, ratio, int(mask.sum()))
    expected = np.where(mask, x.astype(np.float64) / (1 - r), 0.0)
    # the kernel's scale 1 / (1 - ratio) is a float32 (two roundings), the product one more
    rtol = float(np.finfo(np.float32).eps) + float(np.finfo(dtype).eps)
    np.testing.assert_allclose(y.astype(np.float64), expected, rtol=rtol, atol=0)


def test_the_original_model_is_unchanged_and_checks():
    model = dropout_model(mask=False)
    model.graph.node[0].attribute.append(helper.make_attribute("seed", 42))
    before = model.SerializeToString()
    out = sampling_dropout(model)
    assert model.SerializeToString() == before
    onnx.checker.check_model(out, full_check=True)
    (node,) = out.graph.node
    assert not [a for a in node.attribute if a.name == "seed"]
    assert len(node.input) == 3


def test_disable_dropout_is_the_identity_even_with_training_mode_true():
    rng = seeding.rng()
    sampling = sampling_dropout(dropout_model(ratio=0.5))
    x = rng.normal(size=(16, 64)).astype(np.float32)
    y, mask = session(disable_dropout(sampling)).run(None, {"x": x})
    assert mask.all()
    np.testing.assert_array_equal(y, x)


# -- (b) subgraphs ----------------------------------------------------------------------------

def _branchy() -> onnx.ModelProto:
    """x -> Dropout -> h; If(cond): then Dropout(h), else Identity(h)."""
    f = TensorProto.FLOAT
    then = helper.make_graph(
        [helper.make_node("Dropout", ["h", "ratio"], ["t"])], "then", [],
        [helper.make_tensor_value_info("t", f, [8, 256])])
    other = helper.make_graph([helper.make_node("Identity", ["h"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", f, [8, 256])])
    graph = helper.make_graph(
        [helper.make_node("Dropout", ["x", "ratio"], ["h"]),
         helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other)],
        "branchy",
        [helper.make_tensor_value_info("x", f, [8, 256]),
         helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", f, [8, 256]),
         helper.make_tensor_value_info("h", f, [8, 256])],
        [numpy_helper.from_array(np.array(0.5, np.float32), "ratio")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 7
    return model


def test_dropout_inside_an_if_subgraph_samples_too():
    out = sampling_dropout(_branchy())
    onnx.checker.check_model(out, full_check=True)
    sess = session(out)
    x = np.ones((8, 256), np.float32)
    n = x.size
    y, h = run_seeded(sess, {"x": x, "cond": np.array(True)}, pass_seed(9, 0, 0))
    # h keeps 1/2 of the elements (value 2); y keeps 1/2 of those (value 4)
    assert set(np.unique(h).tolist()) <= {0.0, 2.0} and set(np.unique(y).tolist()) <= {0.0, 4.0}
    assert not ((y != 0) & (h == 0)).any()
    kept_h, kept_y = int((h != 0).sum()), int((y != 0).sum())
    assert abs(kept_h - n / 2) < SIGMAS * np.sqrt(n / 4), kept_h
    assert abs(kept_y - kept_h / 2) < SIGMAS * np.sqrt(kept_h / 4), (kept_y, kept_h)
    y, h = run_seeded(sess, {"x": x, "cond": np.array(False)}, pass_seed(9, 0, 0))
    np.testing.assert_array_equal(y, h)
    assert 0 < int((h != 0).sum()) < n


# -- (c) replay: sessions, seeds, threads ---------------------------------------------------

def test_same_pass_seed_same_outputs_across_sessions_different_seeds_differ():
    rng = seeding.rng()
    model = sampling_dropout(dropout_model(ratio=0.3))
    x = rng.normal(size=(64, 64)).astype(np.float32)
    first, second = session(model), session(model, threads=2)
    seeds = [pass_seed(11, p, 0) for p in range(6)]
    expected = [run_seeded(first, {"x": x}, s) for s in seeds]
    for s, (y, mask) in zip(seeds, expected, strict=True):
        y2, mask2 = run_seeded(second, {"x": x}, s)
        np.testing.assert_array_equal(y2, y)
        np.testing.assert_array_equal(mask2, mask)
    masks = [m.tobytes() for _, m in expected]
    assert len(set(masks)) == len(masks)


def test_threads_on_one_shared_session_each_get_their_seeds_outputs():
    rng = seeding.rng()
    model = sampling_dropout(_branchy())
    x = rng.normal(size=(8, 256)).astype(np.float32)
    feed = {"x": x, "cond": np.array(True)}
    seeds = [pass_seed(s, p, 0) for s in (1, 2) for p in range(3)]
    expected = [run_seeded(session(model), feed, s) for s in seeds]
    assert len({y.tobytes() for y, _ in expected}) == len(seeds)
    shared = session(model, threads=2)
    failures: list[str] = []

    def worker(t: int) -> None:
        for repeat in range(20):
            k = (t + repeat) % len(seeds)
            got = run_seeded(shared, feed, seeds[k])
            if not all(np.array_equal(a, b) for a, b in zip(got, expected[k], strict=True)):
                failures.append(f"thread {t} repeat {repeat} seed index {k}")

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures[:5]


# -- (d) pass_seed ----------------------------------------------------------------------------

def test_pass_seed_is_a_function_of_seed_pass_and_start_alone():
    grid = [(seed, p, start) for seed in (0, 1, 2**63 - 1, -1) for p in (0, 1, 7)
            for start in (0, 1, 512)]
    values = {key: pass_seed(*key) for key in grid}
    assert values == {key: pass_seed(*key) for key in reversed(grid)}
    assert len(set(values.values())) == len(grid)  # any change of any part changes it
    assert all(isinstance(v, int) and 0 < v < 2**62 for v in values.values())


# -- (e) the lock honours the request's check -----------------------------------------------

def test_a_waiting_caller_gets_its_checks_exception():
    class Expired(Exception):
        pass

    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with seeded(1):
            held.set()
            release.wait(60)

    thread = threading.Thread(target=holder)
    thread.start()
    calls = []

    def check() -> None:
        calls.append(1)
        raise Expired

    try:
        assert held.wait(60)
        with pytest.raises(Expired), seeded(2, check):
            pass
    finally:
        release.set()
        thread.join()
    assert calls
    with seeded(3, check):  # the lock is free again: no wait, no check
        pass


# -- (f) a real torch export ------------------------------------------------------------------

def _export(torch, net, opset: int, kept: bool) -> onnx.ModelProto:
    net.eval()
    if kept:
        for module in net.modules():
            if isinstance(module, torch.nn.Dropout):
                module.train()
    buffer = io.BytesIO()
    extra = ({"training": torch.onnx.TrainingMode.PRESERVE, "do_constant_folding": False}
             if kept else {})
    torch.onnx.export(net, (torch.zeros(2, 8),), buffer, dynamo=False, opset_version=opset,
                      input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "N"}, "y": {0: "N"}}, **extra)
    return onnx.load_from_string(buffer.getvalue())


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torch_export_mean_of_passes_approaches_the_deterministic_output():
    torch = pytest.importorskip("torch")
    rng = seeding.rng()
    torch.manual_seed(int(rng.integers(2**31)))
    ratio = 0.3
    net = torch.nn.Sequential(torch.nn.Dropout(ratio), torch.nn.Linear(8, 3))
    sess = session(sampling_dropout(_export(torch, net, 13, kept=True)))
    x = rng.normal(size=(5, 8)).astype(np.float32)
    passes = 400
    out = np.stack([run_seeded(sess, {"x": x}, pass_seed(21, p, 0))[0]
                    for p in range(passes)]).astype(np.float64)
    w = net[1].weight.detach().double().numpy()
    b = net[1].bias.detach().double().numpy()
    exact = x.astype(np.float64) @ w.T + b
    # one pass: y_j = b_j + sum_i w_ji x_i m_i / (1 - r), m_i ~ Bernoulli(1 - r)
    var = (x.astype(np.float64) ** 2) @ (w.T ** 2) * ratio / (1 - ratio)
    bound = SIGMAS * np.sqrt(var / passes) + 1e-5
    assert (np.abs(out.mean(axis=0) - exact) < bound).all(), (out.mean(axis=0) - exact, bound)
    assert len({o.tobytes() for o in out}) > passes // 2


# -- (g) refusals -----------------------------------------------------------------------------

def test_models_without_dropout_or_before_opset_12_are_refused():
    no_dropout = dropout_model()
    no_dropout.graph.node[0].op_type = "Identity"
    del no_dropout.graph.node[0].input[1:]
    del no_dropout.graph.node[0].output[1:]
    with pytest.raises(FailedPrecondition) as error:
        sampling_dropout(no_dropout)
    assert error.value.reason == "NO_DROPOUT"
    with pytest.raises(FailedPrecondition) as error:
        sampling_dropout(dropout_model(opset=11))
    assert error.value.reason == "OPSET_TOO_OLD"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torch_exports_without_dropout_or_before_opset_12_are_refused():
    torch = pytest.importorskip("torch")
    net = torch.nn.Sequential(torch.nn.Dropout(0.3), torch.nn.Linear(8, 3))
    with pytest.raises(FailedPrecondition) as error:
        sampling_dropout(_export(torch, net, 13, kept=False))
    assert error.value.reason == "NO_DROPOUT"
    assert "TrainingMode.PRESERVE" in str(error.value)
    with pytest.raises(FailedPrecondition) as error:
        sampling_dropout(_export(torch, net, 11, kept=True))
    assert error.value.reason == "OPSET_TOO_OLD"


# -- (h) through ModelRuntime: one session for every request --------------------------------

def test_model_runtime_builds_the_mc_session_once_for_many_requests(server, client, rng,
                                                                    monkeypatch):
    m = mlp(rng, d_in=6, hidden=16, classes=3, dropout=0.4)
    client.register_model("m", m.data, {"logits": "logits"})
    builds = []
    real = model_inference.make_session
    monkeypatch.setattr(model_inference, "make_session",
                        lambda *a, **k: builds.append(k) or real(*a, **k))
    runtime = ModelRuntime(server.models, threads=1)
    x = rng.normal(size=(10, 6)).astype(np.float32)
    mc, batch = 4, 4

    def samples(seed: int) -> np.ndarray:
        run = ModelRun(["m"], mc, batch, seed)
        return runtime.arrays(run, {"model_inputs": x}, needed={"samples"}).arrays["samples"]

    runs = [(seed, samples(seed)) for seed in (1, 2, 3, 1, 2)]
    assert len(builds) == 1, builds
    assert tuple(builds[0]["disabled_optimizers"]) == DISABLED_OPTIMIZERS
    got = dict(runs[:3])
    assert len({g.tobytes() for g in got.values()}) == 3
    for seed, again in runs[3:]:  # a replay, after other seeds ran on the same session
        np.testing.assert_array_equal(again, got[seed])
    # the reference: a session of our own, each (pass, batch) run under its pass_seed
    sess = session(sampling_dropout(onnx.load_from_string(m.data)))
    for seed in (1, 2, 3):
        ref = np.stack([np.concatenate([
            softmax(run_seeded(sess, {"x": x[start:start + batch]},
                               pass_seed(seed, p, start))[0])
            for start in range(0, len(x), batch)]) for p in range(mc)])
        np.testing.assert_allclose(got[seed], ref, rtol=1e-5, atol=1e-6,
                                   err_msg=f"seed {seed}")
