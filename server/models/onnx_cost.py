"""A static bound on what running a model costs, read from its graph before anything runs it.

Why: an ONNX file of a few hundred bytes can describe gigabytes of tensors
(``ConstantOfShape [25000, 25000]``) or hours of arithmetic (``MatMul`` chains
over such constants), and onnxruntime computes constant subgraphs while it
builds a session, where no deadline reaches. So before a session is built the
graph is measured with ONNX shape inference, with every dynamic input axis set
to 1 (the cost of *one item*):

* no single tensor may exceed ``memory_bytes``: a model that cannot run one
  item within the whole inference memory budget can never run;
* the multiply-adds of the matrix products and convolutions, summed over the
  graph, may not exceed ``macs`` (per item; everything else is linear in the
  bytes bounded above).

Local functions are inlined first, so tensors inside their bodies are measured
too. Shapes that depend on tensor *values* cannot be known statically; those are
bounded at run time (onnxruntime's arena cap, the load probe's limits and the
request deadline), see ``onnx_runner`` and ``probe``.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import onnx
import onnx.inliner
from onnx import AttributeProto, helper

from assay.vocab.errors import InvalidInput

from .onnx_safety import iter_graphs

#: Default limits (see ``ServerConfig.max_model_memory_bytes`` and ``max_model_macs``).
DEFAULT_MEMORY_BYTES = 2 << 30
DEFAULT_MACS = 20_000_000_000
DEFAULT_LOAD_SECONDS = 20.0
#: Most nodes a model may have once its local functions are inlined.
MAX_NODES = 1_000_000

Shape = tuple[int | None, ...]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelLimits:
    """What loading and running one model may cost.

    ``memory_bytes`` caps onnxruntime's CPU allocations for inference (all requests
    together), the memory of a session build at registration, and any one tensor
    of one item; ``macs`` caps the multiply-adds per item; ``load_seconds`` caps
    the time to build a session at registration.
    """

    memory_bytes: int = DEFAULT_MEMORY_BYTES
    macs: int = DEFAULT_MACS
    load_seconds: float = DEFAULT_LOAD_SECONDS


@dataclass(frozen=True)
class ModelCost:
    """The static estimate for one item: the largest tensor, all tensors, multiply-adds."""

    largest_tensor_bytes: int
    tensor_bytes: int
    macs: int


def _nodes_once_inlined(model: onnx.ModelProto) -> int:
    """Nodes the graph has once every local function call is replaced by its body.

    Counted before inlining, since functions calling functions twice over grow the
    graph exponentially (30 levels: a billion nodes from a file of a few kilobytes).
    Raises ``InvalidInput`` on a function that calls itself.
    """
    functions = {(f.domain, f.name): f for f in model.functions}
    sizes: dict[tuple[str, str], int] = {}
    active: set[tuple[str, str]] = set()

    def count(nodes: Sequence[onnx.NodeProto]) -> int:
        total = 0
        for node in nodes:
            key = (node.domain, node.op_type)
            total += size(key) if key in functions else 1
            for attr in node.attribute:
                for sub in ([attr.g] if attr.type == AttributeProto.GRAPH else attr.graphs):
                    total += count(sub.node)
        return total

    def size(key: tuple[str, str]) -> int:
        if key not in sizes:
            if key in active:
                raise InvalidInput(f"local function {key[0]}.{key[1]} calls itself; ONNX "
                                   "functions cannot recurse", field="chunk",
                                   reason="ONNX_CHECKER")
            active.add(key)
            sizes[key] = count(functions[key].node)
            active.discard(key)
        return sizes[key]

    return count(model.graph.node)


def _one_item(model: onnx.ModelProto, max_nodes: int) -> onnx.ModelProto:
    """A copy whose graph inputs have every dynamic axis set to 1, local functions inlined
    (refused first when inlining would make more than ``max_nodes`` nodes)."""
    if model.functions:
        nodes = _nodes_once_inlined(model)
        if nodes > max_nodes:
            raise InvalidInput(
                f"the model is too costly to load: its local functions expand to {nodes} "
                f"nodes once inlined (as onnxruntime does), over the limit of {max_nodes}; "
                "nothing was stored", field="chunk", reason="MODEL_TOO_COSTLY")
        out = onnx.inliner.inline_local_functions(model)
    else:
        out = onnx.ModelProto()
        out.CopyFrom(model)
    initializers = {t.name for t in out.graph.initializer}
    for value in out.graph.input:
        if value.name in initializers:
            continue
        if value.type.HasField("tensor_type") and value.type.tensor_type.HasField("shape"):
            for dim in value.type.tensor_type.shape.dim:
                if not dim.HasField("dim_value") or dim.dim_value < 0:
                    dim.Clear()
                    dim.dim_value = 1
    return out


def _shape(value: onnx.ValueInfoProto) -> Shape | None:
    """Dims with None where unknown; None when the value is not a tensor of known rank."""
    if not value.type.HasField("tensor_type"):
        return None
    tensor = value.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") and d.dim_value >= 0 else None
                 for d in tensor.shape.dim)


def _itemsize(elem_type: int) -> int:
    try:
        return max(1, helper.tensor_dtype_to_np_dtype(elem_type).itemsize)
    except (KeyError, TypeError, ValueError):
        return 8  # strings and types NumPy lacks: counted as 8 bytes an element


def _count(shape: Shape | None) -> int:
    """Elements, with unknown dims counted as 1 (a lower bound)."""
    return math.prod(1 if d is None else d for d in shape) if shape is not None else 1


def _fmt(shape: Shape) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _node_label(node: onnx.NodeProto) -> str:
    if node.name:
        return f"{node.name!r} ({node.op_type})"
    return f"{node.output[0]!r} ({node.op_type})" if node.output else node.op_type


def _einsum_macs(equation: str, shapes: Sequence[Shape | None], out: int) -> int:
    """Output elements times the extent of every contracted index."""
    eq = equation.replace(" ", "")
    lhs, _, rhs = eq.partition("->")
    terms = lhs.split(",")
    extent: dict[str, int] = {}
    for term, shape in zip(terms, shapes, strict=False):
        if shape is None:
            continue
        head, dots, tail = term.partition("...")
        for letter, dim in zip(head, shape, strict=False):
            extent[letter] = max(extent.get(letter, 1), dim or 1)
        if dots and tail:
            for letter, dim in zip(tail, shape[-len(tail):], strict=False):
                extent[letter] = max(extent.get(letter, 1), dim or 1)
    letters = re.sub(r"[^A-Za-z]", "", lhs)
    if "->" in eq:
        kept = set(re.sub(r"[^A-Za-z]", "", rhs))
    else:
        kept = {c for c in letters if letters.count(c) == 1}
    contracted = {c for c in letters if c not in kept}
    return out * math.prod(extent.get(c, 1) for c in contracted)


def _macs(node: onnx.NodeProto, shapes: Mapping[str, Shape | None]) -> int:
    """Multiply-adds of the node kinds whose work is not linear in their tensors."""
    def shape(i: int) -> Shape | None:
        return shapes.get(node.input[i]) if i < len(node.input) else None

    out = _count(shapes.get(node.output[0])) if node.output else 1
    op = node.op_type
    if op in ("MatMul", "MatMulInteger", "QLinearMatMul", "Gemm"):
        a = shape(0)
        if not a:
            return out
        trans_a = any(x.name == "transA" and x.i for x in node.attribute)
        k = a[0] if op == "Gemm" and trans_a and len(a) == 2 else a[-1]
        return out * (k or 1)
    if op in ("Conv", "ConvInteger", "QLinearConv"):
        w = shape(3 if op == "QLinearConv" else 1)
        return out * (_count(w[1:]) if w else 1)
    if op == "ConvTranspose":
        x, w = shape(0), shape(1)
        return _count(x) * (_count(w[1:]) if w else 1)
    if op in ("LSTM", "GRU", "RNN"):
        x, w, r = shape(0), shape(1), shape(2)
        steps = _count(x[:2]) if x else 1
        return steps * (_count(w) + _count(r))
    if op == "Einsum":
        equation = next((x.s.decode() for x in node.attribute if x.name == "equation"), "")
        return _einsum_macs(equation, [shape(i) for i in range(len(node.input))], out)
    return 0


def estimate(model: onnx.ModelProto, max_nodes: int = MAX_NODES
             ) -> tuple[ModelCost, tuple[str, int] | None, tuple[str, int] | None]:
    """The cost of one item, the largest tensor (label, bytes) and the costliest node
    (label, multiply-adds).

    Shape inference that fails as a whole (it skips nodes it cannot type) leaves
    the shapes the file declares; the run-time bounds still hold.
    """
    one = _one_item(model, max_nodes)
    try:
        inferred = onnx.shape_inference.infer_shapes(one, check_type=False, strict_mode=False,
                                                     data_prop=True)
    except Exception as error:  # onnx raises several types; the estimate falls back
        log.warning("shape inference failed, cost estimated from declared shapes: %s", error)
        inferred = one
    shapes: dict[str, Shape | None] = {}
    types: dict[str, int] = {}
    for graph in iter_graphs(inferred.graph):
        for value in (*graph.input, *graph.value_info, *graph.output):
            shapes[value.name] = _shape(value)
            if value.type.HasField("tensor_type"):
                types[value.name] = value.type.tensor_type.elem_type
        for tensor in graph.initializer:
            shapes.setdefault(tensor.name, tuple(tensor.dims))
            types.setdefault(tensor.name, tensor.data_type)
    largest: tuple[str, int] | None = None
    costliest: tuple[str, int] | None = None
    total_bytes = total_macs = 0
    for graph in iter_graphs(inferred.graph):
        for node in graph.node:
            for name in node.output:
                shape = shapes.get(name)
                if not name or shape is None:
                    continue
                size = _count(shape) * _itemsize(types.get(name, onnx.TensorProto.FLOAT))
                total_bytes += size
                if largest is None or size > largest[1]:
                    largest = (f"output {name!r} of node {_node_label(node)}, of shape "
                               f"{_fmt(shape)},", size)
            macs = _macs(node, shapes)
            total_macs += macs
            if macs and (costliest is None or macs > costliest[1]):
                costliest = (f"node {_node_label(node)}", macs)
    cost = ModelCost(largest[1] if largest else 0, total_bytes, total_macs)
    return cost, largest, costliest


def check_cost(model: onnx.ModelProto, limits: ModelLimits) -> ModelCost:
    """Raise ``InvalidInput`` (reason ``MODEL_TOO_COSTLY``, naming the node) unless one
    item of ``model`` fits ``limits``; returns the estimate."""
    cost, largest, costliest = estimate(model)
    if limits.memory_bytes and largest is not None and largest[1] > limits.memory_bytes:
        raise InvalidInput(
            f"the model is too costly to run: {largest[0]} takes {largest[1]} bytes for one "
            f"item, over the server's model memory limit of {limits.memory_bytes} bytes "
            "(--max-model-memory-bytes); nothing was stored", field="chunk",
            reason="MODEL_TOO_COSTLY")
    if limits.macs and cost.macs > limits.macs:
        where = f"; the costliest is {costliest[0]} with {costliest[1]}" if costliest else ""
        raise InvalidInput(
            f"the model is too costly to run: one item takes {cost.macs} multiply-adds{where}, "
            f"over the server's limit of {limits.macs} (--max-model-macs); nothing was stored",
            field="chunk", reason="MODEL_TOO_COSTLY")
    return cost
