"""MC dropout from any exported model: switch its Dropout nodes to training mode.

Since opset 12, ``Dropout`` takes a ``training_mode`` input; exporters leave it
false (or absent) for inference. Feeding it a constant true makes every pass
sample a fresh mask, which is MC dropout (Gal & Ghahramani 2016) without the
trainer exporting a second model.

Seeding: each Dropout node gets a ``seed`` attribute derived from the request's
seed. onnxruntime then draws the mask of every run from a per-node generator
started at that seed, so a fresh session replays the same masks for the same
sequence of runs: the same seed, batch size and execution provider give the same
samples. The masks do depend on how items are cut into batches, and on the
provider (CPU and CUDA use different generators).

onnxruntime's ``EliminateDropout`` optimizer deletes Dropout nodes whatever
their ``training_mode``; sessions running a rewritten graph must disable it
(``DISABLED_OPTIMIZERS``).
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
    nodes = _dropout_nodes(out)
    if not nodes:
        raise FailedPrecondition(
            "the model has no Dropout nodes, so MC dropout cannot sample it: it was probably "
            f"exported in eval mode, which removes dropout. To use mc_samples, "
            f"{KEEP_DROPOUT_HINT}", field="mc_samples", reason="NO_DROPOUT")
    opset = default_opset(out)
    if opset < 12:
        raise FailedPrecondition(
            f"MC dropout needs Dropout's training_mode input, added in opset 12; the model "
            f"has opset {opset}: re-export it with opset_version >= 12", field="mc_samples",
            reason="OPSET_TOO_OLD")
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
