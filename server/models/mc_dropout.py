"""MC dropout from any exported model: Dropout nodes that always sample.

Since opset 12, ``Dropout`` takes a ``training_mode`` input; exporters leave it
false (or absent) for inference. A model whose Dropout nodes sample on every
pass gives MC dropout (Gal & Ghahramani 2016) without the trainer exporting a
second model. Two rewrites do this.

``keyed_mc_dropout`` (the one to serve with) replaces every Dropout node by a
few standard operators computing the same thing with a counter-based generator:
element ``i`` of the Dropout's input (its flat index within the tensor) is kept
when ``u_i >= ratio``, where ``u_i`` is the top 24 bits of Widynski's Squares
generator ``squares32(ctr=i, key)`` over 2**24 (B. Widynski, "Squares: A Fast
Counter-Based RNG", 2020, arXiv:2004.06278), and kept elements are scaled by
``1 / (1 - ratio)``. Each node's key is read from a graph input, ``MC_KEYS``
(int64 [K], one key per Dropout node, in ``dropout_nodes`` order). The masks
are a pure function of the keys fed with a run, with no state kept between
runs, so one session per model serves every request, concurrently, and the
same keys give the same masks on any session and any thread. The arithmetic is
uint64 multiply, add and shift (wrapping modulo 2**64; onnxruntime's CPU kernels
take uint64 for Mul, Add and GreaterOrEqual, and BitShift takes unsigned types
only), identical on every execution provider: CPU and CUDA draw the same masks.
The price is about 26 elementwise operations per element under a Dropout, where
onnxruntime's kernel runs one native loop: on CPU a pass over a small model runs
at about half the speed (``bench/mc_sessions.py``). ``mc_keys`` derives a
run's keys from the request's seed, the pass and the batch's first item, so
the masks depend on how items are cut into batches, not on other requests. In
a ``Loop`` or ``Scan`` body a node draws the same mask at every iteration (one
key, same counters). No Dropout node is left, so these sessions need no
disabled optimizer. Every operator exists at opset 12: a model keeps its opset.

``enable_mc_dropout`` (the earlier scheme) sets the nodes' ``training_mode``
to true with a ``seed`` attribute derived from the request's seed. onnxruntime
draws each node's masks from a generator started at session build that
advances on every run, so a session must be built per request (sharing one
would make samples depend on other requests), masks differ between CPU and
CUDA, and onnxruntime's ``EliminateDropout`` optimizer, which deletes Dropout
nodes whatever their ``training_mode``, must be off (``DISABLED_OPTIMIZERS``).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from assay.vocab.errors import FailedPrecondition

from .onnx_safety import default_opset, iter_graphs

#: Optimizers that must be off in a session running a rewritten graph.
DISABLED_OPTIMIZERS = ("EliminateDropout",)
_TRAINING = "assay_mc_dropout_training_mode"
_INFERENCE = "assay_dropout_inference_mode"
_RATIO = "assay_mc_dropout_default_ratio"

KEEP_DROPOUT_HINT = (
    "export the model with its Dropout nodes kept: e.g. in PyTorch put the dropout modules "
    "(only them) in train() mode and call torch.onnx.export(..., dynamo=False, "
    "opset_version >= 12, training=torch.onnx.TrainingMode.PRESERVE, "
    "do_constant_folding=False); Assay switches them on for MC passes and off otherwise")


def _dropout_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for g in iter_graphs(model.graph) for n in g.node
            if n.op_type == "Dropout" and n.domain in ("", "ai.onnx")]


def disable_dropout(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return ``model`` with every Dropout's ``training_mode`` forced false (opset >= 12).

    A model exported with dropout kept may carry ``training_mode = true``; the
    deterministic pass must not sample, whatever the exporter left there (and
    whether or not onnxruntime's optimizer happens to delete the node).
    """
    nodes = _dropout_nodes(model)
    if not nodes or default_opset(model) < 12:
        return model  # older Dropouts have no training mode: they never sample at inference
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.graph.initializer.append(numpy_helper.from_array(np.array(False), _INFERENCE))
    for node in _dropout_nodes(out):
        inputs = list(node.input)
        ratio = inputs[1] if len(inputs) > 1 and inputs[1] else _RATIO
        if ratio == _RATIO and not any(t.name == _RATIO for t in out.graph.initializer):
            out.graph.initializer.append(
                numpy_helper.from_array(np.array(0.5, np.float32), _RATIO))
        del node.input[:]
        node.input.extend([inputs[0], ratio, _INFERENCE])
    return out


def _mc_dropout_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The Dropout nodes MC dropout will sample; raises when the model cannot be sampled."""
    nodes = _dropout_nodes(model)
    if not nodes:
        raise FailedPrecondition(
            "the model has no Dropout nodes, so MC dropout cannot sample it: it was probably "
            f"exported in eval mode, which removes dropout. To use mc_samples, "
            f"{KEEP_DROPOUT_HINT}", field="mc_samples", reason="NO_DROPOUT")
    opset = default_opset(model)
    if opset < 12:
        raise FailedPrecondition(
            f"MC dropout needs Dropout's training_mode input, added in opset 12; the model "
            f"has opset {opset}: re-export it with opset_version >= 12", field="mc_samples",
            reason="OPSET_TOO_OLD")
    return nodes


def enable_mc_dropout(model: onnx.ModelProto, seed: int) -> onnx.ModelProto:
    """Return a copy of ``model`` whose Dropout nodes always sample, seeded from ``seed``.

    Raises
    ------
    FailedPrecondition
        When the model has no Dropout node (dropout was folded away at export)
        or its opset predates Dropout's ``training_mode`` input (< 12).
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes = _mc_dropout_nodes(out)
    out.graph.initializer.append(numpy_helper.from_array(np.array(True), _TRAINING))
    out.graph.initializer.append(numpy_helper.from_array(np.array(0.5, np.float32), _RATIO))
    seeds = np.random.default_rng([seed, 0x6D63]).integers(1, 2**31 - 1, size=len(nodes))
    for node, node_seed in zip(nodes, seeds, strict=True):
        inputs = list(node.input)
        ratio = inputs[1] if len(inputs) > 1 and inputs[1] else _RATIO
        del node.input[:]
        node.input.extend([inputs[0], ratio, _TRAINING])
        kept = [a for a in node.attribute if a.name != "seed"]
        del node.attribute[:]
        node.attribute.extend(kept)
        node.attribute.append(helper.make_attribute("seed", int(node_seed)))
    return out


# -- keyed MC dropout: masks from a counter-based generator keyed by a graph input ---------

#: The int64 [K] graph input holding one Squares key per Dropout node (``dropout_nodes``).
MC_KEYS = "assay_mc_keys"
_PREFIX = "assay_mc_"
_KEY_STREAM = 0x6B657973  # separates the key stream from other uses of a request's seed
_DIGIT_SHIFTS = np.arange(60, -1, -4, dtype=np.uint64)  # hexadecimal digits, high first
_FLOAT_TYPES = {onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE,
                onnx.TensorProto.BFLOAT16}


def dropout_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Dropout nodes of the default domain, in key order: the main graph's in node order,
    then each subgraph's (If, Loop, Scan bodies) in ``iter_graphs`` order, the order
    ``onnx_safety.count_dropout`` counts."""
    return _dropout_nodes(model)


def dropout_count(model: onnx.ModelProto) -> int:
    """K, the length of ``MC_KEYS``: the model's default-domain Dropout nodes."""
    return len(_dropout_nodes(model))


def mc_keys(seed: int, pass_index: int, batch_start: int, count: int) -> np.ndarray:
    """The ``MC_KEYS`` of one run: int64 [count], one Squares key per Dropout node.

    Drawn with NumPy from ``(seed, pass_index, batch_start)`` alone, so a pass over
    a batch gets the same masks on any session, thread or execution provider. The
    keys have the form the Squares paper recommends (irregular bit patterns with
    about as many ones as zeros): each 32-bit half is 8 distinct nonzero hexadecimal
    digits, and the lowest digit is odd. The bits are returned as int64 (two's
    complement of the uint64 key), the type of the graph input.
    """
    rng = np.random.default_rng([int(seed) & (2**64 - 1), int(pass_index), int(batch_start),
                                 _KEY_STREAM])
    draws = rng.random((count, 31))  # one call: this runs once per batch and pass
    odd = (draws[:, 30] * 8).astype(np.int64) * 2 + 1
    low_order = draws[:, 15:30]
    low_order[np.arange(count), odd - 1] = 2.0  # after every draw: the last digit is not reused
    digits = np.empty((count, 16), np.uint64)
    digits[:, :8] = np.argsort(draws[:, :15], axis=1)[:, :8] + 1
    digits[:, 8:15] = np.argsort(low_order, axis=1)[:, :7] + 1
    digits[:, 15] = odd
    return (digits << _DIGIT_SHIFTS).sum(axis=1, dtype=np.uint64).view(np.int64)


def _declared_types(graph: onnx.GraphProto) -> dict[str, int]:
    types = {t.name: t.data_type for t in graph.initializer}
    for value in (*graph.input, *graph.output, *graph.value_info):
        if value.type.HasField("tensor_type") and value.type.tensor_type.elem_type:
            types[value.name] = value.type.tensor_type.elem_type
    return types


def _scoped_types(graph: onnx.GraphProto, outer: dict[str, int]) -> list[dict[str, int]]:
    """Element types visible in ``graph`` and each subgraph, in ``iter_graphs`` order."""
    types = {**outer, **_declared_types(graph)}
    scopes = [types]
    for node in graph.node:
        for attr in node.attribute:
            subs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs
            for sub in subs:
                scopes.extend(_scoped_types(sub, types))
    return scopes


def _element_types(model: onnx.ModelProto) -> list[dict[str, int]]:
    """Per graph (``iter_graphs`` order), the element type of every value ONNX infers."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # inference is best effort; declared types still count
        inferred = model
    return _scoped_types(inferred.graph, {})


def _constants(model: onnx.ModelProto, count: int) -> None:
    """Shared scalars the rewritten nodes read, as main-graph initializers (subgraphs
    see them from outer scope); only those some node uses."""
    values = {"u32": np.uint64(32), "u40": np.uint64(40), "i0": np.int64(0),
              "i1": np.int64(1), "d0": np.float64(0), "d1": np.float64(1),
              "d_half": np.float64(0.5), "d_2_24": np.float64(2.0**24)}
    for k in range(count):
        values[f"index{k}"] = np.int64(k)
    used = {name for graph in iter_graphs(model.graph) for node in graph.node
            for name in node.input if name.startswith(_PREFIX)}
    for name, value in values.items():
        if _PREFIX + name in used:
            model.graph.initializer.append(
                numpy_helper.from_array(np.array(value), _PREFIX + name))


def _copy(node: onnx.NodeProto) -> onnx.NodeProto:
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    return copy


def _keyed_dropout(node: onnx.NodeProto, k: int, elem: int) -> list[onnx.NodeProto]:
    """Nodes computing ``node`` (a Dropout) as MC dropout keyed by ``MC_KEYS[k]``."""
    p = f"{_PREFIX}{k}_"
    c = _PREFIX
    nodes: list[onnx.NodeProto] = []

    def op(op_type: str, inputs: list[str], output: str, **attrs) -> str:
        nodes.append(helper.make_node(op_type, inputs, [output], name=output, **attrs))
        return output

    def square_add(value: str, add: str, tag: str) -> str:
        return op("Add", [op("Mul", [value, value], p + tag + "_sq"), add], p + tag)

    def rotate(value: str) -> str:  # (v >> 32) | (v << 32); the halves are disjoint: add
        high = op("BitShift", [value, c + "u32"], value + "_hi", direction="RIGHT")
        low = op("BitShift", [value, c + "u32"], value + "_lo", direction="LEFT")
        return op("Add", [high, low], value + "_rot")

    x = node.input[0]
    size = op("Size", [x], p + "size")
    index = op("Range", [c + "i0", size, c + "i1"], p + "index")
    flat = op("Cast", [index], p + "index_u64", to=onnx.TensorProto.UINT64)
    counter = op("Reshape", [flat, op("Shape", [x], p + "shape")], p + "counter")
    key = op("Gather", [c + "keys_u64", c + f"index{k}"], p + "key")
    # squares32(ctr, key): uint64 arithmetic modulo 2**64, as in the paper
    y = op("Mul", [counter, key], p + "y")
    z = op("Add", [y, key], p + "z")
    v = rotate(square_add(y, y, "r1"))
    v = rotate(square_add(v, z, "r2"))
    v = rotate(square_add(v, y, "r3"))
    top = op("BitShift", [square_add(v, z, "r4"), c + "u40"], p + "u24", direction="RIGHT")
    # keep iff u = top / 2**24 >= ratio, i.e. top >= ceil(ratio * 2**24), exact in double
    given = len(node.input) > 1 and node.input[1]
    ratio = (op("Cast", [node.input[1]], p + "ratio", to=onnx.TensorProto.DOUBLE) if given
             else c + "d_half")
    ratio = op("Min", [op("Max", [ratio, c + "d0"], p + "ratio_lo"), c + "d1"], p + "ratio_in")
    scaled = op("Mul", [ratio, c + "d_2_24"], p + "ratio_2_24")
    threshold = op("Cast", [op("Ceil", [scaled], p + "ratio_ceil")], p + "threshold",
                   to=onnx.TensorProto.UINT64)
    mask = node.output[1] if len(node.output) > 1 and node.output[1] else p + "keep"
    keep = op("GreaterOrEqual", [top, threshold], mask)
    one_minus = op("Sub", [c + "d1", ratio], p + "one_minus_ratio")
    scale = op("Cast", [op("Div", [c + "d1", one_minus], p + "scale_f64")], p + "scale",
               to=elem)
    # mask * x * scale, as ONNX's reference and onnxruntime's kernel compute it (a
    # dropped inf or NaN gives NaN); a Where would also cost 4 x the multiply
    kept = op("Mul", [x, scale], p + "scaled")
    op("Mul", [kept, op("Cast", [keep], p + "keep_float", to=elem)], node.output[0])
    return nodes


def keyed_mc_dropout(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a copy of ``model`` whose Dropout nodes sample masks keyed by ``MC_KEYS``.

    Every default-domain Dropout node ``k`` (in ``dropout_nodes`` order) becomes
    MC dropout with masks drawn from ``squares32(i, MC_KEYS[k])`` for the flat
    index ``i`` of each element of its input, whatever the node's ``training_mode``;
    its mask output, when used, is produced too. The copy has a new graph input
    ``MC_KEYS`` (int64 [K], K = ``dropout_count(model)``) to feed on every run,
    e.g. ``mc_keys(seed, pass_index, batch_start, K)``, and keeps the model's opset.

    Raises
    ------
    FailedPrecondition
        When the model has no Dropout node (dropout was folded away at export,
        ``NO_DROPOUT``), its opset predates Dropout's ``training_mode`` input (< 12,
        ``OPSET_TOO_OLD``), or the element type of a Dropout's input is neither
        declared nor inferable.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    count = len(_mc_dropout_nodes(out))
    graphs = list(iter_graphs(out.graph))
    scopes = _element_types(out)
    if len(scopes) != len(graphs):  # inference reshaped the graph tree: use declarations
        scopes = _scoped_types(out.graph, {})
    plans: list[list[tuple[int, int]]] = []  # per graph: (node position, key index)
    types: dict[int, int] = {}
    k = 0
    for graph, scope in zip(graphs, scopes, strict=True):
        plan = []
        for position, node in enumerate(graph.node):
            if node.op_type == "Dropout" and node.domain in ("", "ai.onnx"):
                elem = scope.get(node.input[0]) or scope.get(node.output[0], 0)
                if elem not in _FLOAT_TYPES:
                    raise FailedPrecondition(
                        f"MC dropout cannot tell the element type of Dropout input "
                        f"{node.input[0]!r} (ONNX shape inference found none): declare it in "
                        "the model's value_info", field="mc_samples")
                plan.append((position, k))
                types[k] = elem
                k += 1
        plans.append(plan)
    # children before parents: a parent's rebuilt node list copies rewritten subgraphs
    for graph, plan in reversed(list(zip(graphs, plans, strict=True))):
        if not plan:
            continue
        replaced = dict(plan)
        nodes: list[onnx.NodeProto] = []
        for position, node in enumerate(graph.node):
            if position in replaced:
                nodes.extend(_keyed_dropout(node, replaced[position], types[replaced[position]]))
            else:
                nodes.append(_copy(node))
        del graph.node[:]
        graph.node.extend(nodes)
    main = out.graph
    main.input.append(helper.make_tensor_value_info(MC_KEYS, onnx.TensorProto.INT64, [count]))
    cast = helper.make_node("Cast", [MC_KEYS], [_PREFIX + "keys_u64"],
                            name=_PREFIX + "keys_u64", to=onnx.TensorProto.UINT64)
    nodes = [cast, *(_copy(n) for n in main.node)]
    del main.node[:]
    main.node.extend(nodes)
    _constants(out, count)
    return out
