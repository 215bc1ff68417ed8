"""MC dropout from any exported model: Dropout nodes that sample on every pass.

Since opset 12, ``Dropout`` takes a ``training_mode`` input; exporters leave it
false (or absent) for inference. Forcing it true makes every pass sample a fresh
mask, which is MC dropout (Gal & Ghahramani 2016) without the trainer exporting a
second model; ``disable_dropout`` forces it false for the deterministic pass.

Seeding, and why one session per model serves every request: a Dropout node
without a ``seed`` attribute draws each run's mask from onnxruntime's process-wide
default generator (the CPU kernel takes the generator's next seed per run, the
CUDA kernel a Philox offset), and ``onnxruntime.set_seed`` resets that generator.
So ``sampling_dropout`` removes the nodes' seeds, and each MC run happens inside
``seeded``: under one process-wide lock, the generator is reset to a seed derived
from the request's seed, the pass and the batch (``pass_seed``), then the run
goes. The same seed and batch size give the same masks on any session, whatever
other requests run, and a session is built once per model instead of once per
request (``bench/mc_sessions.py`` measures the saving). Runs of MC passes are
serialized by the lock, so MC sessions use every core for each run. The masks
depend on the execution provider (CPU and CUDA kernels draw differently) and on
how items are cut into batches.

onnxruntime's ``EliminateDropout`` optimizer deletes Dropout nodes whatever their
``training_mode``; sessions running a sampling graph must disable it
(``DISABLED_OPTIMIZERS``).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

import numpy as np
import onnx
from onnx import numpy_helper

from assay.vocab.errors import FailedPrecondition

from .onnx_runner import runtime
from .onnx_safety import default_opset, iter_graphs

#: Optimizers that must be off in a session running a sampling graph.
DISABLED_OPTIMIZERS = ("EliminateDropout",)
_STREAM = 0x6D63  # separates the MC seeds from other uses of a request's seed
_POLL_SECONDS = 0.02
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


def sampling_dropout(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a copy of ``model`` whose Dropout nodes always sample, from onnxruntime's
    default generator (their ``seed`` attributes removed; see ``seeded``).

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
    for node in nodes:
        inputs = list(node.input)
        ratio = inputs[1] if len(inputs) > 1 and inputs[1] else _RATIO
        del node.input[:]
        node.input.extend([inputs[0], ratio, _TRAINING])
        kept = [a for a in node.attribute if a.name != "seed"]
        del node.attribute[:]
        node.attribute.extend(kept)
    return out


def pass_seed(seed: int, pass_index: int, batch_start: int) -> int:
    """The generator seed of one MC run: a function of the request's seed, the pass and
    the batch's first item alone."""
    key = [int(seed) & (2**64 - 1), int(pass_index), int(batch_start), _STREAM]
    return int(np.random.default_rng(key).integers(1, 2**62))


_generator = threading.Lock()


@contextlib.contextmanager
def seeded(seed: int, check: Callable[[], None] = lambda: None) -> Iterator[None]:
    """Hold onnxruntime's default generator, reset to ``seed``, for one run.

    Waits for the process-wide lock while checking ``check`` (the request's
    deadline and cancellation), so a request never waits past its time.
    """
    while not _generator.acquire(timeout=_POLL_SECONDS):
        check()
    try:
        runtime().set_seed(seed)
        yield
    finally:
        _generator.release()
