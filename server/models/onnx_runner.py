"""Runs a checked ONNX model over an item array with onnxruntime, in batches.

Why batches: a pool may be far larger than what one forward pass should hold
in memory, and a request's deadline is checked between batches; a batch that
is still running when the deadline passes (or the caller leaves) is stopped
through ``RunOptions.terminate``, which onnxruntime checks between nodes.

Sessions use the CUDA execution provider when onnxruntime-gpu is installed and
a GPU answers (onnxruntime falls back to CPU otherwise), and cap their thread
pools: the server runs several requests at once and must not oversubscribe the
cores the strategies need too.

Memory: a model's tensor sizes may depend on its input values, which no static
check sees, so every session allocates from one shared onnxruntime arena whose
``max_mem`` is the server's model memory limit (``use_memory_cap``), and the
CUDA provider gets the same ``gpu_mem_limit``. An allocation past the cap fails
before anything is allocated and the request answers RESOURCE_EXHAUSTED; every
run shrinks the arena afterwards, so a burst does not stay resident.

onnxruntime comes from the server's cpu or gpu extra (two builds of one module) and is
imported on first use: a server without it starts, and its model calls answer
FAILED_PRECONDITION (``runtime``).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from assay.vocab.errors import (
    AssayError,
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidInput,
    ResourceExhausted,
)

if TYPE_CHECKING:
    import onnxruntime as ort

#: Input bytes of one batch by default (the activations of common models are a small
#: multiple of their input, so a batch stays in the hundreds of MiB at most).
BATCH_BYTES = 64 << 20
#: Items per batch, at most, whatever their size.
MAX_BATCH_ITEMS = 4096


@functools.cache
def available() -> bool:
    """Whether onnxruntime is installed (either build), without importing it."""
    return importlib.util.find_spec("onnxruntime") is not None


def runtime():
    """The ``onnxruntime`` module, imported on first use.

    Raises ``FailedPrecondition`` (``BACKEND_UNAVAILABLE``) on a server installed without
    it: a model call cannot run here, whatever the request.
    """
    if available():
        import onnxruntime

        return onnxruntime
    raise FailedPrecondition(
        "running ONNX models needs onnxruntime, which this server is installed without: "
        "install the server with its cpu or gpu extra (pip install 'assay[cpu]' or "
        "'assay[gpu]')", reason="BACKEND_UNAVAILABLE")


def default_threads(whole: bool = False) -> int:
    """Intra-op threads per session: half the cores, 1 to 4 (``whole``: every core, up to 8,
    for sessions whose runs take turns)."""
    cores = os.cpu_count() or 2
    return max(1, min(8, cores)) if whole else max(1, min(4, cores // 2))


#: Messages of onnxruntime's failed allocations (arena cap, CUDA limit, std::bad_alloc).
_OUT_OF_MEMORY = ("Available memory of", "bad_alloc", "Failed to allocate memory",
                  "bad allocation", "out of memory")
_memory_cap = {"bytes": 0}
_memory_lock = threading.Lock()


def use_memory_cap(max_bytes: int) -> None:
    """Make sessions built from now on allocate from one shared CPU arena of ``max_bytes``.

    onnxruntime's environment holds one such allocator per process; registering
    another replaces it for later sessions (earlier ones keep theirs).
    """
    with _memory_lock:
        if max_bytes <= 0 or _memory_cap["bytes"] == max_bytes or not available():
            return
        ort = runtime()
        info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0,
                                 ort.OrtMemType.DEFAULT)
        # kSameAsRequested (1): grow by what is asked, so the arena never rounds past the cap.
        ort.create_and_register_allocator(info, ort.OrtArenaCfg(max_bytes, 1, -1, -1))
        _memory_cap["bytes"] = max_bytes


def memory_cap() -> int:
    """The shared arena's size in bytes (0: none registered, allocations are unbounded)."""
    return _memory_cap["bytes"]


def providers() -> list:
    """CUDA first when this onnxruntime build has it, CPU always (and as the fallback)."""
    chosen: list = []
    if "CUDAExecutionProvider" in runtime().get_available_providers():
        cap = memory_cap()
        chosen.append(("CUDAExecutionProvider", {"gpu_mem_limit": str(cap)})
                      if cap else "CUDAExecutionProvider")
    return [*chosen, "CPUExecutionProvider"]


def make_session(model: bytes, *, threads: int,
                 disabled_optimizers: Sequence[str] = ()) -> ort.InferenceSession:
    """An inference session over checked model bytes, with capped thread pools and,
    once ``use_memory_cap`` was called, the shared capped arena.

    Raises ``InvalidInput`` when onnxruntime cannot load the model (an operator
    or type it does not implement), since a checked model that does not load is
    still the client's to fix; ``ResourceExhausted`` when building it needs more
    memory than the cap; ``FailedPrecondition`` without onnxruntime (``runtime``).
    """
    ort = runtime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    if memory_cap():
        options.add_session_config_entry("session.use_env_allocators", "1")
    try:
        return ort.InferenceSession(model, options, providers=providers(),
                                    disabled_optimizers=list(disabled_optimizers) or None)
    except Exception as error:  # onnxruntime raises its own exception types
        if is_out_of_memory(error):
            raise _memory_error("building the model's session", "chunk") from None
        raise InvalidInput(f"onnxruntime cannot load the model: {_first_line(error)}",
                           field="chunk", reason="MODEL_LOAD_FAILED") from None


def is_out_of_memory(error: BaseException) -> bool:
    """Whether onnxruntime failed because an allocation was refused."""
    return isinstance(error, MemoryError) or any(m in str(error) for m in _OUT_OF_MEMORY)


def _memory_error(what: str, field: str) -> ResourceExhausted:
    cap = memory_cap()
    limit = f" of {cap} bytes (--max-model-memory-bytes)" if cap else ""
    return ResourceExhausted(
        f"{what} needs more memory than the server's model memory limit{limit}, shared by "
        "the requests running models at once: lower batch_size, retry when fewer requests "
        "run, or use a smaller model; nothing was stored", field=field, reason="MODEL_MEMORY")


def execution_provider(session: ort.InferenceSession) -> str:
    """The execution provider that runs ``session`` (onnxruntime lists the one it chose
    first; CUDA falls back to CPU when no GPU answers)."""
    return session.get_providers()[0]


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def default_batch_size(item_bytes: int) -> int:
    """Items per batch: ``BATCH_BYTES`` of input, 1 to ``MAX_BATCH_ITEMS`` items.

    It depends on the item size only (not on free memory), so MC-dropout masks,
    which depend on how items are cut into batches, replay for a given seed.
    """
    return int(np.clip(BATCH_BYTES // max(item_bytes, 1), 1, MAX_BATCH_ITEMS))


def run_options() -> ort.RunOptions:
    """Options of every run: quiet, and the arena hands back what the run freed."""
    options = runtime().RunOptions()
    options.log_severity_level = 3
    if memory_cap():
        options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return options


class Terminator:
    """Stops running inference when a request's time is up or its caller left.

    ``run_options`` goes to every ``session.run`` of the request; ``fire``
    (from a timer or a cancellation callback, on any thread) sets its
    ``terminate`` flag, and ``error`` says why, so the failed run is reported as
    DEADLINE_EXCEEDED or CANCELLED rather than as a model failure.
    """

    def __init__(self, seconds: float | None = None):
        self.run_options = run_options()
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


def run_batches(session: ort.InferenceSession, inputs: Mapping[str, np.ndarray],
                output_names: Sequence[str], *, batch_size: int, passes: int = 1,
                fixed_batch: int | None = None,
                input_dtypes: Mapping[str, np.dtype] | None = None,
                around: Callable[[int, int], contextlib.AbstractContextManager] | None = None,
                check_cancelled: Callable[[], None] = lambda: None,
                terminator: Terminator | None = None) -> list[np.ndarray]:
    """Run ``session`` over ``inputs`` and return each named output, [passes, N, ...].

    Parameters
    ----------
    inputs : graph input name -> [N, ...] array; every array has the same N.
    batch_size : items per run; ignored when ``fixed_batch`` (a model whose item axis
        is fixed) is given: then every run has exactly that many items, the last
        padded with zeros and its padding dropped.
    passes : runs per batch (MC dropout samples a fresh mask on every run).
    input_dtypes : graph input name -> the dtype the model takes (inputs are cast to
        it: lossless widening only, checked by the caller).
    around : (pass, first item of the batch) -> a context each run happens in (MC
        dropout seeds onnxruntime's generator there).
    check_cancelled : raises between batches once the request must stop.
    terminator : stops a batch that is running when the request must stop.
    """
    n = next(iter(inputs.values())).shape[0]
    if n == 0:
        raise InvalidInput("model_inputs holds no items", field="inputs.model_inputs")
    dtypes = input_dtypes or {}
    step = fixed_batch or batch_size
    options = terminator.run_options if terminator is not None else run_options()
    results: list[np.ndarray | None] = [None] * len(output_names)
    for start in range(0, n, step):
        check_cancelled()
        feed = {}
        for name, array in inputs.items():
            batch = np.ascontiguousarray(array[start:start + step], dtype=dtypes.get(name))
            if fixed_batch and batch.shape[0] < fixed_batch:
                pad = np.zeros((fixed_batch - batch.shape[0], *batch.shape[1:]), batch.dtype)
                batch = np.concatenate([batch, pad])
            feed[name] = batch
        rows = min(step, n - start)
        size = fixed_batch or rows
        for p in range(passes):
            with contextlib.nullcontext() if around is None else around(p, start):
                outs = _run(session, output_names, feed, options, terminator)
            for k, (name, out) in enumerate(zip(output_names, outs, strict=True)):
                out = np.asarray(out)
                if out.ndim == 0 or out.shape[0] != size:
                    raise InvalidInput(
                        f"model output {name!r} has shape {list(out.shape)} for a batch of "
                        f"{size} items: axis 0 must be the item axis",
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
         options: ort.RunOptions, terminator: Terminator | None) -> list:
    try:
        return session.run(list(names), feed, options)
    except Exception as error:  # onnxruntime raises its own exception types
        if terminator is not None and terminator.error is not None:
            raise terminator.error from None
        if is_out_of_memory(error):
            raise _memory_error("running the model", "model_ids") from None
        raise InvalidInput(f"the model failed on the inputs: {_first_line(error)}",
                           field="inputs.model_inputs", reason="INFERENCE_FAILED") from None
