"""Runs a checked ONNX model over an item array with onnxruntime, in batches.

Why batches: a pool may be far larger than what one forward pass should hold
in memory, and a request's deadline is checked between batches; a batch that
is still running when the deadline passes (or the caller leaves) is stopped
through ``RunOptions.terminate``, which onnxruntime checks between nodes.

Sessions use the CUDA execution provider when onnxruntime-gpu is installed and
a GPU answers (onnxruntime falls back to CPU otherwise), and cap their thread
pools: the server runs several requests at once and must not oversubscribe the
cores the strategies need too.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence

import numpy as np
import onnxruntime as ort

from assay.server.errors import AssayError, Cancelled, DeadlineExceeded, InvalidInput

#: Input bytes of one batch by default (the activations of common models are a small
#: multiple of their input, so a batch stays in the hundreds of MiB at most).
BATCH_BYTES = 64 << 20
#: Items per batch, at most, whatever their size.
MAX_BATCH_ITEMS = 4096


def default_threads() -> int:
    """Intra-op threads per session: half the cores, 1 to 4."""
    return max(1, min(4, (os.cpu_count() or 2) // 2))


def providers() -> list[str]:
    """CUDA first when this onnxruntime build has it, CPU always (and as the fallback)."""
    available = ort.get_available_providers()
    chosen = [p for p in ("CUDAExecutionProvider",) if p in available]
    return [*chosen, "CPUExecutionProvider"]


def make_session(model: bytes, *, threads: int,
                 disabled_optimizers: Sequence[str] = ()) -> ort.InferenceSession:
    """An inference session over checked model bytes, with capped thread pools.

    Raises ``InvalidInput`` when onnxruntime cannot load the model (an operator
    or type it does not implement), since a checked model that does not load is
    still the client's to fix.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(model, options, providers=providers(),
                                    disabled_optimizers=list(disabled_optimizers) or None)
    except Exception as error:  # onnxruntime raises its own exception types
        raise InvalidInput(f"onnxruntime cannot load the model: {_first_line(error)}",
                           field="chunk", reason="MODEL_LOAD_FAILED") from None


def session_backend(session: ort.InferenceSession) -> str:
    """``onnxruntime-cuda`` or ``onnxruntime-cpu``: what actually runs the session."""
    return ("onnxruntime-cuda" if "CUDAExecutionProvider" in session.get_providers()
            else "onnxruntime-cpu")


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def default_batch_size(item_bytes: int) -> int:
    """Items per batch: ``BATCH_BYTES`` of input, 1 to ``MAX_BATCH_ITEMS`` items.

    It depends on the item size only (not on free memory), so MC-dropout masks,
    which depend on how items are cut into batches, replay for a given seed.
    """
    return int(np.clip(BATCH_BYTES // max(item_bytes, 1), 1, MAX_BATCH_ITEMS))


class Terminator:
    """Stops running inference when a request's time is up or its caller left.

    ``run_options`` goes to every ``session.run`` of the request; ``fire``
    (from a timer or a cancellation callback, on any thread) sets its
    ``terminate`` flag, and ``error`` says why, so the failed run is reported as
    DEADLINE_EXCEEDED or CANCELLED rather than as a model failure.
    """

    def __init__(self, seconds: float | None = None):
        self.run_options = ort.RunOptions()
        self.run_options.log_severity_level = 3
        self.error: AssayError | None = None
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        if seconds is not None:
            self._timer = threading.Timer(max(seconds, 0.0), self.fire, args=(DeadlineExceeded(
                "the request deadline passed during model inference; nothing was stored"),))
            self._timer.daemon = True
            self._timer.start()

    def fire(self, error: AssayError | None = None) -> None:
        with self._lock:
            if self.error is None:
                self.error = error or Cancelled("the client cancelled the request")
                self.run_options.terminate = True

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def __enter__(self) -> Terminator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def run_batches(session: ort.InferenceSession, inputs: np.ndarray, output_names: Sequence[str],
                *, batch_size: int, passes: int = 1, fixed_batch: int | None = None,
                input_dtype: np.dtype | None = None,
                check_cancelled: Callable[[], None] = lambda: None,
                terminator: Terminator | None = None) -> list[np.ndarray]:
    """Run ``session`` over ``inputs`` ([N, ...]) and return each named output, [passes, N, ...].

    Parameters
    ----------
    batch_size : items per run; ignored when ``fixed_batch`` (a model whose item axis
        is fixed) is given: then every run has exactly that many items, the last
        padded with zeros and its padding dropped.
    passes : runs per batch (MC dropout samples a fresh mask on every run).
    input_dtype : dtype the model takes (inputs are cast to it: lossless widening only,
        checked by the caller).
    check_cancelled : raises between batches once the request must stop.
    terminator : stops a batch that is running when the request must stop.
    """
    n = inputs.shape[0]
    if n == 0:
        raise InvalidInput("model_inputs holds no items", field="inputs.model_inputs")
    step = fixed_batch or batch_size
    input_name = session.get_inputs()[0].name
    options = terminator.run_options if terminator is not None else None
    results: list[np.ndarray | None] = [None] * len(output_names)
    for start in range(0, n, step):
        check_cancelled()
        batch = np.ascontiguousarray(inputs[start:start + step], dtype=input_dtype)
        rows = batch.shape[0]
        if fixed_batch and rows < fixed_batch:
            pad = np.zeros((fixed_batch - rows, *batch.shape[1:]), dtype=batch.dtype)
            batch = np.concatenate([batch, pad])
        for p in range(passes):
            outs = _run(session, output_names, {input_name: batch}, options, terminator)
            for k, (name, out) in enumerate(zip(output_names, outs, strict=True)):
                out = np.asarray(out)
                if out.ndim == 0 or out.shape[0] != batch.shape[0]:
                    raise InvalidInput(
                        f"model output {name!r} has shape {list(out.shape)} for a batch of "
                        f"{batch.shape[0]} items: axis 0 must be the item axis",
                        field="model_ids", reason="OUTPUT_SHAPE")
                if results[k] is None:
                    dtype = np.float32 if out.dtype == np.float16 else out.dtype
                    results[k] = np.empty((passes, n, *out.shape[1:]), dtype=dtype)
                elif results[k].shape[2:] != out.shape[1:]:
                    raise InvalidInput(
                        f"model output {name!r} changed shape between batches "
                        f"({list(results[k].shape[2:])} then {list(out.shape[1:])})",
                        field="model_ids", reason="OUTPUT_SHAPE")
                results[k][p, start:start + rows] = out[:rows]
    check_cancelled()
    return results  # type: ignore[return-value]


def _run(session: ort.InferenceSession, names: Sequence[str], feed: dict,
         options: ort.RunOptions | None, terminator: Terminator | None) -> list:
    try:
        return session.run(list(names), feed, options)
    except Exception as error:  # onnxruntime raises its own exception types
        if terminator is not None and terminator.error is not None:
            raise terminator.error from None
        raise InvalidInput(f"the model failed on the inputs: {_first_line(error)}",
                           field="inputs.model_inputs", reason="INFERENCE_FAILED") from None
