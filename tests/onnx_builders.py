"""Small ONNX models built with the ``onnx`` helper API, and their NumPy twins.

Each builder returns the model and the weights it drew, so a test can compute
what the model must output with a float64 NumPy forward pass written here,
independently of onnxruntime.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

_ONNX_TYPES = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16,
               "float64": TensorProto.DOUBLE, "int64": TensorProto.INT64,
               "int32": TensorProto.INT32}


@dataclass
class Mlp:
    """A tiny classifier: features -> ReLU hidden (the embeddings) -> [Dropout] -> logits,
    with optional loss and discriminator heads on the hidden layer."""

    model: onnx.ModelProto
    w: dict[str, np.ndarray] = field(default_factory=dict)
    dropout: float | None = None
    kind: str = "dense"  # "dense", "image" (flattened) or "tokens" (mean of embeddings)

    @property
    def data(self) -> bytes:
        return self.model.SerializeToString()

    def features(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        if self.kind == "tokens":
            return self.w["E"].astype(np.float64)[x].mean(axis=1)
        return x.reshape(x.shape[0], -1).astype(np.float64)

    def hidden(self, x: np.ndarray) -> np.ndarray:
        """[N, H] float64: the embeddings output."""
        w = {k: v.astype(np.float64) for k, v in self.w.items()}
        return np.maximum(self.features(x) @ w["W1"] + w["b1"], 0.0)

    def logits(self, x: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """[N, C] float64; ``mask`` ([N, H] of 0/1) applies dropout with inverted scaling."""
        h = self.hidden(x)
        if mask is not None:
            h = h * mask / (1.0 - self.dropout)
        return h @ self.w["W2"].astype(np.float64) + self.w["b2"].astype(np.float64)

    def probs(self, x: np.ndarray) -> np.ndarray:
        z = self.logits(x)
        z = np.exp(z - z.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)

    def loss(self, x: np.ndarray) -> np.ndarray:
        return (self.hidden(x) @ self.w["Wl"].astype(np.float64))[:, 0]

    def discriminator(self, x: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(self.hidden(x) @ self.w["Wd"].astype(np.float64))[:, 0]))


def mlp(rng: np.random.Generator, *, d_in: int = 6, hidden: int = 8, classes: int = 4,
        dropout: float | None = None, opset: int = 13, input_dtype: str = "float32",
        input_shape: tuple | None = None, kind: str = "dense", vocab: int = 20,
        probs_output: bool = False, batch: int | str = "N") -> Mlp:
    """Build an MLP classifier with outputs ``logits`` (or ``probs``), ``features``
    ([N, hidden]), ``loss`` ([N, 1]) and ``disc`` ([N, 1], a sigmoid)."""
    w = {
        "W1": (rng.normal(size=(d_in, hidden)) / np.sqrt(d_in)).astype(np.float32),
        "b1": (rng.normal(size=hidden) * 0.1).astype(np.float32),
        "W2": rng.normal(size=(hidden, classes)).astype(np.float32),
        "b2": (rng.normal(size=classes) * 0.1).astype(np.float32),
        "Wl": rng.normal(size=(hidden, 1)).astype(np.float32),
        "Wd": rng.normal(size=(hidden, 1)).astype(np.float32),
    }
    nodes = []
    if kind == "tokens":
        w["E"] = rng.normal(size=(vocab, d_in)).astype(np.float32)
        nodes += [helper.make_node("Gather", ["E", "x"], ["emb"], axis=0),
                  helper.make_node("ReduceMean", ["emb"], ["feat"], axes=[1], keepdims=0)]
        shape = input_shape or [batch, 5]
    elif kind == "image":
        nodes.append(helper.make_node("Flatten", ["x"], ["feat"], axis=1))
        shape = input_shape or [batch, 2, 3]
    else:
        shape = input_shape or [batch, d_in]
        if input_dtype != "float32":
            nodes.append(helper.make_node("Cast", ["x"], ["feat"], to=TensorProto.FLOAT))
        else:
            nodes.append(helper.make_node("Identity", ["x"], ["feat"]))
    nodes += [
        helper.make_node("MatMul", ["feat", "W1"], ["z1"]),
        helper.make_node("Add", ["z1", "b1"], ["a1"]),
        helper.make_node("Relu", ["a1"], ["features"]),
    ]
    last = "features"
    if dropout is not None:
        w["ratio"] = np.array(dropout, np.float32)
        nodes.append(helper.make_node("Dropout", ["features", "ratio"], ["dropped"])
                     if opset >= 12 else helper.make_node("Dropout", ["features"], ["dropped"],
                                                          ratio=dropout))
        last = "dropped"
        if opset < 12:
            del w["ratio"]
    out_name = "probs" if probs_output else "logits"
    nodes += [helper.make_node("MatMul", [last, "W2"], ["z2"]),
              helper.make_node("Add", ["z2", "b2"], ["logits_raw"])]
    nodes.append(helper.make_node("Softmax", ["logits_raw"], [out_name], axis=1)
                 if probs_output else helper.make_node("Identity", ["logits_raw"], [out_name]))
    nodes += [helper.make_node("MatMul", ["features", "Wl"], ["loss"]),
              helper.make_node("MatMul", ["features", "Wd"], ["disc_z"]),
              helper.make_node("Sigmoid", ["disc_z"], ["disc"])]
    outputs = [
        helper.make_tensor_value_info(out_name, TensorProto.FLOAT, [batch, classes]),
        helper.make_tensor_value_info("features", TensorProto.FLOAT, [batch, hidden]),
        helper.make_tensor_value_info("loss", TensorProto.FLOAT, [batch, 1]),
        helper.make_tensor_value_info("disc", TensorProto.FLOAT, [batch, 1]),
    ]
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("x", _ONNX_TYPES[input_dtype], shape)],
        outputs, [numpy_helper.from_array(v, k) for k, v in w.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return Mlp(model, w, dropout, kind)


def slow_model(layers: int = 400, width: int = 256) -> onnx.ModelProto:
    """A chain of ``layers`` MatMul+Tanh blocks over [N, width]: seconds of work per large
    batch, in many nodes, so a run can be stopped between them."""
    rng = np.random.default_rng(7)
    w = numpy_helper.from_array(
        (rng.normal(size=(width, width)) / np.sqrt(width)).astype(np.float32), "W")
    nodes, last = [], "x"
    for i in range(layers):
        nodes += [helper.make_node("MatMul", [last, "W"], [f"m{i}"]),
                  helper.make_node("Tanh", [f"m{i}"], [f"t{i}"])]
        last = f"t{i}"
    nodes.append(helper.make_node("Identity", [last], ["logits"]))
    graph = helper.make_graph(
        nodes, "slow", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", width])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


ALL_OUTPUTS = {"logits": "logits", "embeddings": "features", "loss": "loss",
               "discriminator": "disc"}


# -- hostile models: small files that cost much to load or run ----------------------------------


def _model(nodes: list, initializers: list, *, functions: tuple = (),
           extra_opsets: tuple = ()) -> onnx.ModelProto:
    """A graph x [N, 2] -> logits [N, 2] around ``nodes`` (which must produce ``bias``, added
    to x), opset 13."""
    nodes = [*nodes, helper.make_node("Add", ["x", "bias"], ["logits"])]
    graph = helper.make_graph(
        nodes, "hostile", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])], initializers)
    model = helper.make_model(graph, functions=list(functions), opset_imports=[
        helper.make_opsetid("", 13), *(helper.make_opsetid(d, 1) for d in extra_opsets)])
    model.ir_version = 8
    return model


def _ones(shape_input: str, output: str) -> onnx.NodeProto:
    return helper.make_node("ConstantOfShape", [shape_input], [output],
                            value=helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0]))


def _matmul_chain(square: str, chain: int) -> list[onnx.NodeProto]:
    """``chain`` MatMuls of ``square`` by itself, reduced to a [1, 1] ``bias``."""
    nodes, last = [], square
    for i in range(chain):
        nodes.append(helper.make_node("MatMul", [last, square], [f"product{i}"]))
        last = f"product{i}"
    nodes.append(helper.make_node("ReduceMean", [last], ["bias"], keepdims=1))
    return nodes


def folding_bomb(n: int = 8192, chain: int = 4) -> onnx.ModelProto:
    """ConstantOfShape [n, n] then ``chain`` MatMuls of constants: O(chain * n^3) work that
    onnxruntime's constant folding does while it builds a session (a few hundred bytes)."""
    shape = numpy_helper.from_array(np.array([n, n], np.int64), "shape")
    return _model([_ones("shape", "square"), *_matmul_chain("square", chain)], [shape])


def allocation_bomb(n: int = 25000) -> onnx.ModelProto:
    """A ConstantOfShape [n, n] float32 (n = 25000: 2.5 GB) reduced to the bias."""
    shape = numpy_helper.from_array(np.array([n, n], np.int64), "shape")
    return _model([_ones("shape", "big"),
                   helper.make_node("ReduceMean", ["big"], ["bias"], keepdims=1)], [shape])


def hidden_folding_bomb(n: int = 8192, chain: int = 4) -> onnx.ModelProto:
    """``folding_bomb`` whose square's side is computed by a reduction (ReduceMax of a
    constant), which ONNX shape inference does not evaluate: no static check sees the
    [n, n] shape, yet onnxruntime folds it all when it builds the session."""
    side = numpy_helper.from_array(np.array([float(n), 1.0], np.float32), "side")
    nodes = [helper.make_node("ReduceMax", ["side"], ["n_float"], keepdims=1),
             helper.make_node("Cast", ["n_float"], ["n"], to=TensorProto.INT64),
             helper.make_node("Concat", ["n", "n"], ["shape"], axis=0),
             _ones("shape", "square"), *_matmul_chain("square", chain)]
    return _model(nodes, [side])


def input_sized_allocation() -> onnx.ModelProto:
    """A ConstantOfShape [v, v] where v is the largest input value: its size depends on the
    data sent, so only a bound at run time can stop it (v = 25000: 2.5 GB)."""
    nodes = [helper.make_node("ReduceMax", ["x"], ["v_float"], keepdims=1),
             helper.make_node("Reshape", ["v_float", "one_dim"], ["v_1d"]),
             helper.make_node("Cast", ["v_1d"], ["v"], to=TensorProto.INT64),
             helper.make_node("Concat", ["v", "v"], ["shape"], axis=0),
             _ones("shape", "big"),
             helper.make_node("ReduceMean", ["big"], ["bias"], keepdims=1)]
    return _model(nodes, [numpy_helper.from_array(np.array([1], np.int64), "one_dim")])


def shadowing_function(domain: str = "com.microsoft", name: str = "Gelu") -> onnx.ModelProto:
    """A model-local function ``domain.name`` whose body negates its input, called on x and
    added to it (so a checked body would give logits = x - x = 0). onnxruntime has a kernel
    com.microsoft.Gelu and runs that instead of the body."""
    body = [helper.make_node("Neg", ["a"], ["b"])]
    function = helper.make_function(domain, name, ["a"], ["b"], body,
                                    [helper.make_opsetid("", 13)])
    call = helper.make_node(name, ["x"], ["bias"], domain=domain)
    return _model([call], [], functions=(function,), extra_opsets=(domain,))


def inlining_bomb(depth: int = 30) -> onnx.ModelProto:
    """Local functions f0..f{depth-1}, each calling the next twice (the last one Identity):
    inlined, as onnxruntime does when it loads the model, f0 is 2^depth nodes."""
    functions = []
    for level in range(depth):
        if level == depth - 1:
            body = [helper.make_node("Identity", ["a"], ["b"])]
        else:
            callee = f"f{level + 1}"
            body = [helper.make_node(callee, ["a"], ["h"], domain="local.fn"),
                    helper.make_node(callee, ["h"], ["b"], domain="local.fn")]
        functions.append(helper.make_function(
            "local.fn", f"f{level}", ["a"], ["b"], body,
            [helper.make_opsetid("", 13), helper.make_opsetid("local.fn", 1)]))
    call = helper.make_node("f0", ["x"], ["bias"], domain="local.fn")
    return _model([call], [], functions=tuple(functions), extra_opsets=("local.fn",))


def endless_loop(trips: int = 10**12) -> onnx.ModelProto:
    """A Loop adding 1 to x ``trips`` times: cheap per node, endless in total, so only the
    request's deadline (``RunOptions.terminate``, checked between nodes) can end it."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Add", ["v_in", "one"], ["v_out"])], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_in", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, ["N", 2])])
    graph = helper.make_graph(
        [helper.make_node("Loop", ["trips", "cond", "x"], ["logits"], body=body)], "loop",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])],
        [numpy_helper.from_array(np.array(trips, np.int64), "trips"),
         numpy_helper.from_array(np.array(True), "cond"),
         numpy_helper.from_array(np.array(1.0, np.float32), "one")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model
