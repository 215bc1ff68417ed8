"""Checks an uploaded ONNX file before anything runs it, and reads what Assay needs from it.

A model is code supplied by a client, so it is judged as data first:

* **External data** is refused. An initializer stored "externally" names a file
  path that onnxruntime would open relative to its working directory, so a
  model could read any file the server can; every tensor anywhere in the file
  (graphs, subgraphs, attributes, sparse tensors, functions, ``training_info``)
  is checked before the checker or onnxruntime sees the model.
* **Only the standard domains** (``ai.onnx`` and ``ai.onnx.ml``): other domains
  need custom-op libraries, i.e. native code. Calls to the model's own local
  functions are allowed, since their bodies are checked the same way, but only
  in a domain onnxruntime implements nothing in: onnxruntime runs its own
  kernel, not the function body, for a function named like one of its operators
  (``com.microsoft.Gelu``), so such a function would bypass the check.
* **Cost**: one item may not need more memory or arithmetic than the server's
  limits (``onnx_cost``).
* **Opsets in range**, then ``onnx.checker``.
* **Graph inputs** (one or several, e.g. a transformer's ``input_ids`` and
  ``attention_mask``), each with axis 0 the item axis, of a type a pool can
  hold, and each bound to a pool array (``model_inputs`` or
  ``model_inputs.<name>``); and the declared output roles must name real
  outputs of the right rank and a floating-point type.

Everything here raises ``InvalidInput`` naming the check (its ``reason``) and the
offending field; the size cap and the digest are enforced while receiving.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import onnx
from google.protobuf.message import DecodeError, Message

from assay.vocab.errors import InvalidInput
from assay.vocab.roles import NAMED_MODEL_INPUTS, is_named_model_input

if TYPE_CHECKING:  # onnx_cost imports this module
    from .onnx_cost import ModelLimits

#: Domains whose operators onnxruntime implements itself ("" is ai.onnx).
ALLOWED_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})
#: Opsets of the default domain accepted: 7 is the oldest onnxruntime runs; 21 the newest
#: that every onnxruntime the package accepts (>= 1.20) implements.
MIN_OPSET, MAX_OPSET = 7, 21
#: Opsets of ai.onnx.ml accepted (onnxruntime >= 1.20 implements up to 5).
MIN_ML_OPSET, MAX_ML_OPSET = 1, 5

#: Output roles a model may declare, with the ranks each accepts.
OUTPUT_ROLES: dict[str, tuple[int, ...]] = {
    "logits": (2,),
    "probs": (2,),
    "embeddings": (2,),
    "loss": (1, 2),
    "discriminator": (1, 2),
}
_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}
#: ONNX element type -> NumPy dtype name, for the graph input.
INPUT_TYPES = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.DOUBLE: "float64",
    onnx.TensorProto.INT32: "int32",
    onnx.TensorProto.INT64: "int64",
}


#: Most graph inputs a model may have.
MAX_INPUTS = 16


@dataclass(frozen=True)
class GraphInput:
    """One graph input and the pool array that feeds it.

    ``shape`` uses -1 for dynamic axes; axis 0 is the item axis.
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    array: str


@dataclass(frozen=True)
class ModelSignature:
    """What Assay reads from a checked model.

    ``outputs`` maps role -> graph output name.
    """

    inputs: tuple[GraphInput, ...]
    outputs: dict[str, str]
    opset: int
    dropout_count: int

    @property
    def fixed_batch(self) -> int:
        """The item count every run must have (a fixed axis 0), or 0 when it is free."""
        return next((i.shape[0] for i in self.inputs if i.shape[0] > 0), 0)


def iter_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """The graph and every subgraph nested in its nodes' attributes (If, Loop, Scan)."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from iter_graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from iter_graphs(sub)


def _node_lists(model: onnx.ModelProto) -> Iterator[tuple[str, Sequence[onnx.NodeProto]]]:
    """(where, nodes) for every graph, subgraph and local function of the model."""
    for graph in iter_graphs(model.graph):
        yield f"graph {graph.name!r}", graph.node
    for function in model.functions:
        yield f"function {function.domain}.{function.name}", function.node
        for node in function.node:
            for attr in node.attribute:
                for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs):
                    for graph in iter_graphs(sub):
                        yield f"graph {graph.name!r}", graph.node


def _tensors(message: Message, path: str = "model") -> Iterator[tuple[str, onnx.TensorProto]]:
    """(where, tensor) for every ``TensorProto`` anywhere in ``message``, found by walking
    the protobuf itself, so no place a tensor can hide (initializers dense and sparse,
    attributes, subgraphs, functions, ``training_info``, fields added later) is missed."""
    if message.DESCRIPTOR is onnx.TensorProto.DESCRIPTOR:
        yield message.name or path, message
        return  # a tensor holds no tensors
    for descriptor, value in message.ListFields():
        if descriptor.message_type is None:
            continue
        if _repeated(descriptor):
            for i, item in enumerate(value):
                label = getattr(item, "name", "") or str(i)
                yield from _tensors(item, f"{path}.{descriptor.name}[{label}]")
        else:
            yield from _tensors(value, f"{path}.{descriptor.name}")


def _repeated(descriptor) -> bool:
    # ``is_repeated`` in protobuf >= 6, ``label`` before.
    repeated = getattr(descriptor, "is_repeated", None)
    return repeated if repeated is not None else descriptor.label == descriptor.LABEL_REPEATED


def parse_model(data: bytes) -> onnx.ModelProto:
    """Parse ONNX bytes without resolving external data (nothing is read from disk)."""
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except DecodeError as error:
        raise InvalidInput(f"the upload is not an ONNX model: {error}", field="chunk",
                           reason="NOT_ONNX") from None
    if not model.HasField("graph"):
        raise InvalidInput("the upload is not an ONNX model: it has no graph", field="chunk",
                           reason="NOT_ONNX")
    return model


def check_no_external_data(model: onnx.ModelProto) -> None:
    """Refuse tensors whose bytes live in a file: loading them would read server paths."""
    for name, tensor in _tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.external_data):
            raise InvalidInput(
                f"tensor {name!r} references external data; external data files are not "
                "accepted (no server path may be read through a model): save the model as a "
                "single file, e.g. onnx.save_model(model, path, save_as_external_data=False)",
                field="chunk", reason="EXTERNAL_DATA")


def default_opset(model: onnx.ModelProto) -> int:
    """The model's opset of the default ONNX domain (0 when it imports none)."""
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


@functools.cache
def _runtime_domains() -> frozenset[str]:
    """Domains onnxruntime implements operators in: those of its operator schemas and
    kernels and of ONNX's own schemas, plus the ones it is known to register."""
    from .onnx_runner import runtime

    capi = runtime().capi.onnxruntime_pybind11_state

    domains = {"", "ai.onnx.ml", "ai.onnx.preview.training", "com.microsoft",
               "com.microsoft.nchwc", "com.microsoft.experimental", "com.ms.internal.nhwc",
               "org.pytorch.aten"}
    for getter in ("get_all_operator_schema", "get_all_opkernel_def"):
        try:
            domains.update(_domain(x.domain) for x in getattr(capi, getter)())
        except Exception:  # an older build without the listing: the domains above hold
            continue
    domains.update(_domain(x.domain) for x in onnx.defs.get_all_schemas_with_history())
    return frozenset(domains)


def _domain(domain: str) -> str:
    return "" if domain == "ai.onnx" else domain


def check_local_functions(model: onnx.ModelProto) -> None:
    """Refuse local functions that onnxruntime would not run: one in a domain it
    implements operators in may be named like one of its operators (now or in a later
    release), and would then be replaced by that operator's built-in kernel, the
    checked body never run. Every operator it or ONNX knows lies in such a domain."""
    domains = _runtime_domains()
    for function in model.functions:
        if _domain(function.domain) in domains:
            raise InvalidInput(
                f"local function {function.domain}.{function.name} is in a domain "
                "onnxruntime implements operators in, or is named like one of its operators: "
                "onnxruntime would run its built-in kernel instead of the function's body. "
                "Put model-local functions in a domain of their own (e.g. 'local.fn')",
                field="chunk", reason="FUNCTION_SHADOWS_OP")


def check_domains_and_opsets(model: onnx.ModelProto) -> int:
    """Allow only standard domains and supported opsets; returns the default-domain opset."""
    check_local_functions(model)
    local = {(f.domain, f.name) for f in model.functions}
    local_domains = {f.domain for f in model.functions}
    for where, nodes in _node_lists(model):
        for node in nodes:
            if node.domain in ALLOWED_DOMAINS or (node.domain, node.op_type) in local:
                continue
            raise InvalidInput(
                f"{where} node {node.name or node.op_type!r} uses operator "
                f"{node.domain}.{node.op_type}: only the standard ai.onnx and ai.onnx.ml "
                "domains are accepted (custom-op libraries are not loaded)",
                field="chunk", reason="CUSTOM_OP_DOMAIN")
    for opset in model.opset_import:
        if opset.domain not in ALLOWED_DOMAINS and opset.domain not in local_domains:
            raise InvalidInput(
                f"the model imports operator domain {opset.domain!r}: only ai.onnx and "
                "ai.onnx.ml are accepted (custom-op libraries are not loaded)",
                field="chunk", reason="CUSTOM_OP_DOMAIN")
        if opset.domain == "ai.onnx.ml" and not MIN_ML_OPSET <= opset.version <= MAX_ML_OPSET:
            raise InvalidInput(
                f"the model's ai.onnx.ml opset is {opset.version}; accepted: "
                f"{MIN_ML_OPSET} to {MAX_ML_OPSET}", field="chunk", reason="OPSET_UNSUPPORTED")
    version = default_opset(model)
    if not MIN_OPSET <= version <= MAX_OPSET:
        raise InvalidInput(
            f"the model's ONNX opset is {version or 'missing'}; accepted: {MIN_OPSET} to "
            f"{MAX_OPSET} (re-export with opset_version in that range)", field="chunk",
            reason="OPSET_UNSUPPORTED")
    return version


def run_checker(model: onnx.ModelProto) -> None:
    """``onnx.checker`` on the in-memory model (no path: nothing is read from disk)."""
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else "invalid model"
        raise InvalidInput(f"the model fails onnx.checker: {first}", field="chunk",
                           reason="ONNX_CHECKER") from None
    except UnicodeDecodeError:
        # ONNX's proto2 strings are not UTF-8-checked when parsed; the checker's C++ side
        # then fails to decode a mangled name: the file is corrupt, not the server.
        raise InvalidInput("the model fails onnx.checker: a name or string is not valid "
                           "UTF-8 (is the file corrupt?)", field="chunk",
                           reason="ONNX_CHECKER") from None


def _dims(value: onnx.ValueInfoProto) -> tuple[int, ...] | None:
    """Declared shape with -1 for dynamic axes; None when the rank is unknown."""
    tensor = value.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim)


def read_inputs(model: onnx.ModelProto, bindings: Sequence[tuple[str, str]] = (),
                field: str = "header.inputs") -> tuple[GraphInput, ...]:
    """The graph inputs fed from the pool, each with its pool array.

    ``bindings`` are (graph input, array) pairs. Without them, one graph input
    reads ``model_inputs`` and several read ``model_inputs.<input name>`` each.
    Graph inputs that an initializer backs are constants, not inputs.
    """
    initializers = {t.name for t in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in initializers]
    if not inputs:
        raise InvalidInput("the model has no graph input to feed the pool's model_inputs to",
                           field="chunk", reason="MODEL_INPUTS")
    if len(inputs) > MAX_INPUTS:
        raise InvalidInput(f"the model has {len(inputs)} graph inputs; at most {MAX_INPUTS}",
                           field="chunk", reason="MODEL_INPUTS")
    arrays = _bind_inputs([v.name for v in inputs], bindings, field)
    fixed = set()
    out = []
    for value in inputs:
        if not value.type.HasField("tensor_type"):
            raise InvalidInput(f"graph input {value.name!r} is not a tensor", field="chunk",
                               reason="MODEL_INPUTS")
        elem = value.type.tensor_type.elem_type
        if elem not in INPUT_TYPES:
            raise InvalidInput(
                f"graph input {value.name!r} has type {onnx.TensorProto.DataType.Name(elem)}; "
                "accepted: FLOAT, FLOAT16, DOUBLE, INT32, INT64", field="chunk",
                reason="MODEL_INPUTS")
        shape = _dims(value)
        if not shape:
            raise InvalidInput(
                f"graph input {value.name!r} must declare its rank, with the item axis first",
                field="chunk", reason="MODEL_INPUTS")
        if shape[0] > 0:
            fixed.add(shape[0])
        out.append(GraphInput(value.name, INPUT_TYPES[elem], shape, arrays[value.name]))
    if len(fixed) > 1:
        raise InvalidInput(f"the graph inputs fix different item counts on axis 0 "
                           f"({sorted(fixed)}); they must agree", field="chunk",
                           reason="MODEL_INPUTS")
    return tuple(out)


def _bind_inputs(names: Sequence[str], bindings: Sequence[tuple[str, str]],
                 field: str) -> dict[str, str]:
    """Graph input -> pool array, from the declared bindings or the default names."""
    if not bindings:
        if len(names) == 1:
            return {names[0]: "model_inputs"}
        arrays = {n: f"{NAMED_MODEL_INPUTS}{n}" for n in names}
        for n, a in arrays.items():
            if not is_named_model_input(a):
                raise InvalidInput(
                    f"graph input {n!r} cannot name a pool array (letters, digits, _ . - "
                    f"only): bind it to one in {field}", field=field, reason="MODEL_INPUTS")
        return arrays
    arrays: dict[str, str] = {}
    for i, (name, array) in enumerate(bindings):
        where = f"{field}[{i}]"
        if name not in names:
            known = ", ".join(repr(n) for n in names)
            raise InvalidInput(f"{where}: the graph has no input {name!r}; its inputs are "
                               f"{known}", field=f"{where}.input_name",
                               reason="INPUT_NOT_FOUND")
        if name in arrays:
            raise InvalidInput(f"{where}: graph input {name!r} is bound twice",
                               field=f"{where}.input_name")
        if array != "model_inputs" and not is_named_model_input(array):
            raise InvalidInput(
                f"{where}.array {array!r} must be model_inputs or model_inputs.<name> "
                "(letters, digits, _ . -)", field=f"{where}.array")
        arrays[name] = array
    missing = [n for n in names if n not in arrays]
    if missing:
        raise InvalidInput(f"{field} binds some graph inputs but not {missing}: bind every "
                           "one, or none for the default names", field=field,
                           reason="MODEL_INPUTS")
    return arrays


def check_outputs(model: onnx.ModelProto, bindings: Sequence[tuple[str, str]],
                  field: str = "header.outputs") -> dict[str, str]:
    """Check the declared (role, output name) pairs against the graph's outputs.

    Returns role -> output name. Output shapes left undeclared in the graph are
    checked again on the first batch of inference.
    """
    if not bindings:
        raise InvalidInput("declare at least one output role (logits or probs, embeddings, "
                           "loss, discriminator)", field=field)
    outputs = {v.name: v for v in model.graph.output}
    roles: dict[str, str] = {}
    for i, (role, name) in enumerate(bindings):
        where = f"{field}[{i}]"
        if role not in OUTPUT_ROLES:
            raise InvalidInput(f"{where}.role {role!r} is not an output role; use one of "
                               f"{', '.join(OUTPUT_ROLES)}", field=f"{where}.role")
        if role in roles:
            raise InvalidInput(f"{where}.role {role!r} is declared twice", field=f"{where}.role")
        if name not in outputs:
            known = ", ".join(repr(n) for n in outputs)
            raise InvalidInput(
                f"{where}: the graph has no output {name!r} for role {role!r}; its outputs "
                f"are {known}", field=f"{where}.output_name", reason="OUTPUT_NOT_FOUND")
        tensor = outputs[name].type.tensor_type
        if outputs[name].type.HasField("tensor_type") and tensor.elem_type not in _FLOAT_TYPES:
            raise InvalidInput(
                f"{where}: output {name!r} ({role}) has type "
                f"{onnx.TensorProto.DataType.Name(tensor.elem_type)}; roles need FLOAT, FLOAT16 "
                "or DOUBLE", field=f"{where}.output_name", reason="OUTPUT_SHAPE")
        shape = _dims(outputs[name])
        ranks = OUTPUT_ROLES[role]
        bad_rank = shape is not None and len(shape) not in ranks
        bad_width = (shape is not None and len(shape) == 2 and ranks == (1, 2)
                     and shape[1] not in (1, -1))
        if bad_rank or bad_width:
            want = "[N] or [N, 1]" if ranks == (1, 2) else (
                "[N, d]" if role == "embeddings" else "[N, C]")
            got = [d if d >= 0 else "?" for d in shape]
            raise InvalidInput(f"{where}: output {name!r} declared as {role} must have shape "
                               f"{want}, the graph declares {got}",
                               field=f"{where}.output_name", reason="OUTPUT_SHAPE")
        roles[role] = name
    if "logits" in roles and "probs" in roles:
        raise InvalidInput("declare logits or probs, not both", field=field)
    return roles


def count_dropout(model: onnx.ModelProto) -> int:
    """Dropout nodes of the default domain in the graph and its subgraphs."""
    return sum(1 for graph in iter_graphs(model.graph) for n in graph.node
               if n.op_type == "Dropout" and n.domain in ("", "ai.onnx"))


def inspect_model(data: bytes, bindings: Sequence[tuple[str, str]],
                  limits: ModelLimits | None = None,
                  input_bindings: Sequence[tuple[str, str]] = ()) -> ModelSignature:
    """Run every static check on ``data`` and return the model's signature.

    ``bindings`` are the declared (role, output name) pairs, ``input_bindings``
    the (graph input, pool array) pairs (``read_inputs``). The order matters:
    external data is refused before any tool that could resolve it (the checker,
    onnxruntime) sees the model; the cost check (when ``limits`` are given) runs
    on a model known to be well formed.
    """
    model = parse_model(data)
    check_no_external_data(model)
    opset = check_domains_and_opsets(model)
    run_checker(model)
    inputs = read_inputs(model, input_bindings)
    outputs = check_outputs(model, bindings)
    if limits is not None:
        from .onnx_cost import check_cost

        check_cost(model, limits)
    return ModelSignature(inputs, outputs, opset, count_dropout(model))


_WIDENING = {(np.dtype("float16"), np.dtype("float32")), (np.dtype("int32"), np.dtype("int64"))}


def input_fits(spec: GraphInput, dtype: np.dtype, shape: tuple[int, ...],
               field: str = "", model_id: str = "") -> None:
    """Raise ``InvalidInput`` unless arrays of ``dtype``/``shape`` ([N, ...]) can feed the
    graph input ``spec``.

    Types must match or widen without loss (float16 to float32, int32 to int64);
    every fixed axis after the item axis must match.
    """
    field = field or f"inputs.{spec.array}"
    who = f"model {model_id!r}" if model_id else "the model"
    want = np.dtype(spec.dtype)
    have = np.dtype(dtype)
    if have != want and (have, want) not in _WIDENING:
        raise InvalidInput(f"{field} is {have.name} but {who} takes {want.name} input "
                           f"{spec.name!r}", field=field, reason="INPUT_MISMATCH")
    expected = spec.shape
    mismatch = len(shape) != len(expected) or any(
        e >= 0 and e != s for e, s in zip(expected[1:], shape[1:], strict=False))
    if mismatch:
        doc = ["N", *(d if d >= 0 else "?" for d in expected[1:])]
        raise InvalidInput(f"{field} has shape {list(shape)} but {who} input "
                           f"{spec.name!r} takes {doc}", field=field,
                           reason="INPUT_MISMATCH")
