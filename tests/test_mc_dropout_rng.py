"""Keyed MC dropout: Dropout nodes rewritten to draw their masks from Widynski's Squares
counter-based generator keyed by a graph input, so one session serves every request.

The reference generator below is written from the paper's pseudo-code (B. Widynski,
"Squares: A Fast Counter-Based RNG", 2020, arXiv:2004.06278) in plain NumPy uint64,
independently of the module. Statistical bounds follow from n and p: a count of n
Bernoulli(p) draws is within 5 standard deviations of n p; an empirical correlation of
n independent pairs is within 5 / sqrt(n) of 0 (CLT); failure odds per check < 1e-6.
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

from assay.server.models.mc_dropout import (
    MC_KEYS,
    dropout_count,
    dropout_nodes,
    keyed_mc_dropout,
    mc_keys,
)
from assay.server.models.onnx_safety import count_dropout
from assay.vocab.errors import FailedPrecondition

SIGMAS = 5.0
_TYPES = {np.float32: TensorProto.FLOAT, np.float16: TensorProto.FLOAT16,
          np.float64: TensorProto.DOUBLE}


def squares32(ctr: np.ndarray, key: int) -> np.ndarray:
    """squares32(ctr, key) of the paper, in uint64 arithmetic modulo 2**64."""
    ctr = np.asarray(ctr, np.uint64)
    key = np.uint64(key)
    s32 = np.uint64(32)
    with np.errstate(over="ignore"):
        x = y = ctr * key
        z = y + key
        x = x * x + y
        x = (x >> s32) | (x << s32)  # round 1
        x = x * x + z
        x = (x >> s32) | (x << s32)  # round 2
        x = x * x + y
        x = (x >> s32) | (x << s32)  # round 3
        return ((x * x + z) >> s32).astype(np.uint32)  # round 4


def uniforms(n: int, key: int) -> np.ndarray:
    """u_i = top 24 bits of squares32(i, key) / 2**24, exact in float32."""
    return (squares32(np.arange(n), key) >> np.uint32(8)).astype(np.float32) / np.float32(2**24)


def dropout_model(dtype=np.float32, ratio: float | None = 0.5, ratio_dtype=np.float32,
                  opset: int = 13, mask: bool = True, shape=("N", 64)) -> onnx.ModelProto:
    """x -> Dropout(x, ratio?) -> y (and the mask when asked)."""
    inputs = ["x"]
    inits = []
    if ratio is not None:
        inputs.append("ratio")
        inits.append(numpy_helper.from_array(np.array(ratio, ratio_dtype), "ratio"))
    outputs = ["y", "mask"] if mask else ["y"]
    out_info = [helper.make_tensor_value_info("y", _TYPES[dtype], list(shape))]
    if mask:
        out_info.append(helper.make_tensor_value_info("mask", TensorProto.BOOL, list(shape)))
    graph = helper.make_graph(
        [helper.make_node("Dropout", inputs, outputs)], "dropout",
        [helper.make_tensor_value_info("x", _TYPES[dtype], list(shape))], out_info, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    return model


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def key_of(keys: np.ndarray, k: int = 0) -> int:
    return int(keys.view(np.uint64)[k])


def keys_for(seed: int, count: int = 1, pass_index: int = 0) -> np.ndarray:
    return mc_keys(seed, pass_index, 0, count)


# -- (a) the generator, bit for bit ---------------------------------------------------------

def test_reference_matches_the_paper_on_fixed_values():
    """The reference itself, on values computed by hand from the pseudo-code with Python ints."""
    mask = 2**64 - 1

    def by_hand(ctr: int, key: int) -> int:
        y = x = ctr * key & mask
        z = y + key & mask
        for add in (y, z, y):
            x = x * x + add & mask
            x = (x >> 32 | x << 32) & mask
        return (x * x + z & mask) >> 32

    key = 0xC8E4FD154CE32F6D  # a key of the form the paper's key file lists
    ctrs = np.array([0, 1, 2, 12345, 2**40 + 7, 2**63 + 5], np.uint64)
    assert squares32(ctrs, key).tolist() == [by_hand(int(c), key) for c in ctrs]


def test_graph_uniforms_equal_the_reference_bit_for_bit():
    """The 24-bit uniforms the graph compares with the ratio are those of the reference."""
    keyed = keyed_mc_dropout(dropout_model(shape=(3, 5, 7)))
    compare = next(n for n in keyed.graph.node if n.op_type == "GreaterOrEqual")
    keyed.graph.output.append(helper.make_tensor_value_info(compare.input[0],
                                                            TensorProto.UINT64, None))
    sess = session(keyed)
    for seed in range(4):
        keys = keys_for(seed)
        top = sess.run([compare.input[0]], {"x": np.ones((3, 5, 7), np.float32), MC_KEYS: keys})[0]
        reference = squares32(np.arange(105), key_of(keys)) >> np.uint32(8)
        assert top.shape == (3, 5, 7), seed
        np.testing.assert_array_equal(top.ravel(), reference, err_msg=f"seed {seed}")


@pytest.mark.parametrize("at", [0, 17, 999])
def test_keep_iff_uniform_at_least_ratio_exactly_at_the_boundary(at):
    """ratio = u_at exactly keeps element ``at``; one step above drops it."""
    keys = keys_for(at)
    u = uniforms(1000, key_of(keys))
    for ratio, kept in ((u[at], True), (np.nextafter(u[at], np.float32(1)), False)):
        _, mask = session(keyed_mc_dropout(dropout_model(ratio=ratio, shape=(10, 100)))).run(
            None, {"x": np.ones((10, 100), np.float32), MC_KEYS: keys})
        assert mask.ravel()[at] == kept, (at, ratio)
        np.testing.assert_array_equal(mask.ravel(), u >= ratio, err_msg=f"ratio {ratio!r}")


# -- (b) keep rate and scale ------------------------------------------------------------------

@pytest.mark.parametrize("ratio", [0.1, 0.5, 0.9])
def test_keep_rate_within_binomial_bounds(ratio):
    n = 200_000
    keep = 1.0 - float(np.float32(ratio))
    sess = session(keyed_mc_dropout(dropout_model(ratio=ratio, shape=("N", 1000))))
    x = np.ones((n // 1000, 1000), np.float32)
    y, mask = sess.run(None, {"x": x, MC_KEYS: keys_for(7)})
    bound = SIGMAS * np.sqrt(n * keep * (1 - keep))
    assert abs(int(mask.sum()) - n * keep) < bound, (ratio, int(mask.sum()), n * keep, bound)
    scale = np.float32(1.0 / (1.0 - np.float64(np.float32(ratio))))
    np.testing.assert_array_equal(y, np.where(mask, scale, np.float32(0)))


def test_ratio_zero_is_the_identity():
    rng = seeding.rng()
    x = rng.normal(size=(50, 64)).astype(np.float32)
    x[0, :3] = [np.inf, -np.inf, np.nan]
    y, mask = session(keyed_mc_dropout(dropout_model(ratio=0.0))).run(
        None, {"x": x, MC_KEYS: keys_for(3)})
    assert mask.all()
    np.testing.assert_array_equal(y, x)


# -- (c) independence -------------------------------------------------------------------------

def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64) - a.mean()
    b = b.astype(np.float64) - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def test_masks_uncorrelated_across_keys_and_adjacent_elements():
    """Keys of consecutive passes, batches and seeds; element i against i + 1 and i + 64."""
    n = 64 * 1000
    sess = session(keyed_mc_dropout(dropout_model(ratio=0.5)))
    x = np.ones((1000, 64), np.float32)
    key_sets = {(seed, p, start): mc_keys(seed, p, start, 1)
                for seed in (0, 1) for p in (0, 1) for start in (0, 1000)}
    masks = {what: sess.run(["mask"], {"x": x, MC_KEYS: keys})[0].ravel()
             for what, keys in key_sets.items()}
    bound = SIGMAS / np.sqrt(n)
    names = list(masks)
    for i, a in enumerate(names):
        m = masks[a]
        for lag in (1, 64):
            assert abs(_corr(m[:-lag], m[lag:])) < bound, (a, lag)
        for b in names[i + 1:]:
            assert abs(_corr(m, masks[b])) < bound, (a, b)


def test_mc_keys_have_the_papers_form_and_replay():
    keys = mc_keys(12345, 3, 512, 40)
    assert keys.dtype == np.int64 and keys.shape == (40,)
    np.testing.assert_array_equal(keys, mc_keys(12345, 3, 512, 40))
    assert len(set(keys.tolist())) == 40
    for key in keys.view(np.uint64).tolist():
        digits = [key >> (4 * i) & 0xF for i in range(16)]
        assert key & 1 and all(digits), hex(key)
        assert len(set(digits[:8])) == 8 and len(set(digits[8:])) == 8, hex(key)
    others = [mc_keys(12346, 3, 512, 40), mc_keys(12345, 4, 512, 40), mc_keys(12345, 3, 513, 40),
              mc_keys(-1, 3, 512, 40)]
    for other in others:
        assert not set(keys.tolist()) & set(other.tolist())


# -- (d) determinism: sessions, threads -------------------------------------------------------

def test_same_keys_same_outputs_across_sessions_and_threads():
    rng = seeding.rng()
    model = keyed_mc_dropout(dropout_model(ratio=0.3))
    x = rng.normal(size=(64, 64)).astype(np.float32)
    runs = [mc_keys(11, p, 0, 1) for p in range(8)]
    first, second = session(model), session(model)
    expected = [first.run(None, {"x": x, MC_KEYS: keys}) for keys in runs]
    for keys, (y, mask) in zip(runs, expected, strict=True):
        y2, mask2 = second.run(None, {"x": x, MC_KEYS: keys})
        np.testing.assert_array_equal(y2, y)
        np.testing.assert_array_equal(mask2, mask)
    masks = [m.tobytes() for _, m in expected]
    assert len(set(masks)) == len(masks)  # different keys, different masks

    shared = session(model)
    failures: list[str] = []

    def worker(t: int) -> None:
        for repeat in range(25):
            p = (t + repeat) % len(runs)
            y, mask = shared.run(None, {"x": x, MC_KEYS: runs[p]})
            if not (np.array_equal(y, expected[p][0]) and np.array_equal(mask, expected[p][1])):
                failures.append(f"thread {t} repeat {repeat} pass {p}")

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures[:5]


# -- (e) types, optional inputs, subgraphs, opsets --------------------------------------------

@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("ratio, ratio_dtype", [(None, None), (0.25, np.float32),
                                                (0.3, np.float64), (0.7, np.float16)])
def test_types_and_ratio_input(dtype, ratio, ratio_dtype):
    rng = seeding.rng()
    model = dropout_model(dtype, ratio, ratio_dtype)
    x = rng.normal(size=(20, 64)).astype(dtype)
    keys = keys_for(5)
    y, mask = session(keyed_mc_dropout(model)).run(None, {"x": x, MC_KEYS: keys})
    r = 0.5 if ratio is None else float(np.asarray(ratio, ratio_dtype))
    np.testing.assert_array_equal(mask.ravel(), uniforms(x.size, key_of(keys)) >= r)
    assert y.dtype == dtype
    scale = np.asarray(1.0 / (1.0 - r), dtype)
    np.testing.assert_array_equal(y, np.where(mask, x * scale, dtype(0)))


def test_mask_output_unused_and_opset_kept():
    for opset in (12, 13, 21):
        model = keyed_mc_dropout(dropout_model(ratio=0.5, mask=False, opset=opset))
        onnx.checker.check_model(model, full_check=True)
        assert [o.version for o in model.opset_import if o.domain == ""] == [opset]
        assert not any(n.op_type == "Dropout" for n in model.graph.node)
        inputs = {i.name: i for i in model.graph.input}
        assert inputs[MC_KEYS].type.tensor_type.elem_type == TensorProto.INT64
        assert [d.dim_value for d in inputs[MC_KEYS].type.tensor_type.shape.dim] == [1]
        (y,) = session(model).run(None, {"x": np.ones((4, 64), np.float32),
                                         MC_KEYS: keys_for(opset)})
        np.testing.assert_array_equal(y != 0, uniforms(256, key_of(keys_for(opset))).reshape(
            4, 64) >= 0.5)


def test_dropout_inside_an_if_subgraph_gets_its_own_key():
    """Key 0 for the main graph's Dropout, key 1 for the one in the If's then-branch."""
    f = TensorProto.FLOAT
    then = helper.make_graph(
        [helper.make_node("Dropout", ["h", "ratio"], ["t"])], "then", [],
        [helper.make_tensor_value_info("t", f, [8, 32])])
    other = helper.make_graph([helper.make_node("Identity", ["h"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", f, [8, 32])])
    graph = helper.make_graph(
        [helper.make_node("Dropout", ["x", "ratio"], ["h"]),
         helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other)],
        "branchy",
        [helper.make_tensor_value_info("x", f, [8, 32]),
         helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", f, [8, 32])],
        [numpy_helper.from_array(np.array(0.5, np.float32), "ratio")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 7
    assert dropout_count(model) == count_dropout(model) == 2
    assert [n.input[0] for n in dropout_nodes(model)] == ["x", "h"]
    keyed = keyed_mc_dropout(model)
    onnx.checker.check_model(keyed, full_check=True)
    sess = session(keyed)
    keys = keys_for(9, count=2)
    x = np.ones((8, 32), np.float32)
    first = uniforms(256, key_of(keys, 0)).reshape(8, 32) >= 0.5
    second = uniforms(256, key_of(keys, 1)).reshape(8, 32) >= 0.5
    (y,) = sess.run(None, {"x": x, "cond": np.array(True), MC_KEYS: keys})
    np.testing.assert_array_equal(y, np.where(first & second, np.float32(4), np.float32(0)))
    (y,) = sess.run(None, {"x": x, "cond": np.array(False), MC_KEYS: keys})
    np.testing.assert_array_equal(y, np.where(first, np.float32(2), np.float32(0)))


def test_original_model_unchanged():
    model = dropout_model()
    before = model.SerializeToString()
    keyed_mc_dropout(model)
    assert model.SerializeToString() == before


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
    model = _export(torch, net, 13, kept=True)
    assert dropout_count(model) == 1
    sess = session(keyed_mc_dropout(model))
    x = rng.normal(size=(5, 8)).astype(np.float32)
    passes = 400
    out = np.stack([sess.run(None, {"x": x, MC_KEYS: mc_keys(21, p, 0, 1)})[0]
                    for p in range(passes)]).astype(np.float64)
    w = net[1].weight.detach().double().numpy()
    b = net[1].bias.detach().double().numpy()
    exact = x.astype(np.float64) @ w.T + b
    # one pass: y_j = b_j + sum_i w_ji x_i m_i / (1 - r), m_i ~ Bernoulli(1 - r)
    var = (x.astype(np.float64) ** 2) @ (w.T ** 2) * ratio / (1 - ratio)
    bound = SIGMAS * np.sqrt(var / passes) + 1e-5
    assert (np.abs(out.mean(axis=0) - exact) < bound).all(), (out.mean(axis=0) - exact, bound)
    assert len({o.tobytes() for o in out}) > passes // 2


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torch_exports_without_dropout_or_before_opset_12_are_refused():
    torch = pytest.importorskip("torch")
    net = torch.nn.Sequential(torch.nn.Dropout(0.3), torch.nn.Linear(8, 3))
    with pytest.raises(FailedPrecondition) as error:
        keyed_mc_dropout(_export(torch, net, 13, kept=False))
    assert error.value.reason == "NO_DROPOUT"
    assert "TrainingMode.PRESERVE" in str(error.value)
    with pytest.raises(FailedPrecondition) as error:
        keyed_mc_dropout(_export(torch, net, 11, kept=True))
    assert error.value.reason == "OPSET_TOO_OLD"
