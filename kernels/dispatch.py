"""One place that decides which backend runs a kernel.

Backends are picked by what is installed and by problem size, and a request may
insist on one. A missing GPU is never an error unless a GPU backend was asked
for by name: then ``FailedPrecondition`` says what to install. Under the Numba
CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) the CUDA kernels run on the CPU; that
backend is reported as ``numba-cuda-sim`` so nobody mistakes it for a GPU run, and
``auto`` never picks it (it is for testing, not speed).
"""

from __future__ import annotations

import functools
import glob
import os

from assay.vocab.errors import FailedPrecondition, InvalidInput

NUMBA_CPU = "numba-cpu"
NUMBA_CUDA = "numba-cuda"
FAISS_CPU = "faiss-cpu"
FAISS_GPU = "faiss-gpu"
AUTO = "auto"

#: Every backend name a request may give.
BACKENDS = (AUTO, NUMBA_CPU, NUMBA_CUDA, FAISS_CPU, FAISS_GPU)

_INSTALL_GPU = (
    "install the GPU extra (pip install 'assay[gpu]': numba-cuda, faiss-gpu-cu12) on a "
    "machine with an NVIDIA GPU and driver"
)


def cuda_simulated() -> bool:
    """True when Numba's CUDA target is the CPU simulator."""
    from numba.core import config

    return bool(config.ENABLE_CUDASIM)


@functools.cache
def _gpu_visible() -> bool:
    """Cheap check before importing ``numba.cuda``: a driver device node exists."""
    return bool(glob.glob("/dev/nvidia[0-9]*")) or bool(os.environ.get("CUDA_VISIBLE_DEVICES"))


@functools.cache
def numba_cuda_available() -> bool:
    """True when CUDA kernels can run: a real GPU, or the simulator when enabled."""
    if cuda_simulated():
        return True
    if not _gpu_visible():
        return False
    try:
        from numba import cuda

        return bool(cuda.is_available())
    except Exception:  # a broken driver or toolkit is the same as no GPU
        return False


@functools.cache
def faiss_gpu_count() -> int:
    """Number of GPUs FAISS can use (0 with the CPU wheel)."""
    try:
        import faiss
    except ImportError:
        return 0
    return int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0


@functools.cache
def faiss_available() -> bool:
    """True when the ``faiss`` module imports."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def available() -> tuple[str, ...]:
    """Backends that can run here, CPU first."""
    out = [NUMBA_CPU]
    if faiss_available():
        out.append(FAISS_CPU)
    if numba_cuda_available():
        out.append(NUMBA_CUDA)
    if faiss_gpu_count() > 0:
        out.append(FAISS_GPU)
    return tuple(out)


def report_name(backend: str) -> str:
    """The name reported back in a response (marks simulated CUDA runs)."""
    return "numba-cuda-sim" if backend == NUMBA_CUDA and cuda_simulated() else backend


def choose(requested: str, supported: tuple[str, ...], values: int) -> str:
    """Pick the backend for one kernel call.

    Parameters
    ----------
    requested : ``auto`` or a backend name from ``BACKENDS``.
    supported : the backends this kernel has, in order of preference on CPU.
    values : problem size (pool values streamed per pass) for the auto rule.

    Returns
    -------
    The backend name to run.

    Raises
    ------
    InvalidInput
        The kernel has no such backend.
    FailedPrecondition
        A backend was asked for by name and cannot run here.
    """
    if requested == AUTO:
        gpu = {NUMBA_CUDA: numba_cuda_available() and not cuda_simulated(),
               FAISS_GPU: faiss_gpu_count() > 0}
        if values >= _gpu_min_values():
            for name in supported:
                if gpu.get(name):
                    return name
        for name in supported:
            if name not in gpu:
                if name in (FAISS_CPU,) and not faiss_available():
                    continue
                return name
        raise FailedPrecondition("no backend of this kernel is installed; "
                                 "pip install faiss-cpu", reason="BACKEND_UNAVAILABLE")
    if requested not in supported:
        raise InvalidInput(
            f"backend {requested!r} does not run this strategy; choose one of "
            f"{', '.join((AUTO, *supported))}", field="backend")
    if requested == NUMBA_CUDA and not numba_cuda_available():
        raise FailedPrecondition(
            f"backend 'numba-cuda' needs a CUDA GPU, and none is usable here; "
            f"{_INSTALL_GPU}, or use backend 'auto'", field="backend",
            reason="BACKEND_UNAVAILABLE")
    if requested == FAISS_GPU and faiss_gpu_count() == 0:
        raise FailedPrecondition(
            f"backend 'faiss-gpu' needs FAISS built with GPU support and a GPU; "
            f"{_INSTALL_GPU}, or use backend 'auto'", field="backend",
            reason="BACKEND_UNAVAILABLE")
    if requested == FAISS_CPU and not faiss_available():
        raise FailedPrecondition("backend 'faiss-cpu' needs the faiss-cpu package: "
                                 "pip install faiss-cpu", field="backend",
                                 reason="BACKEND_UNAVAILABLE")
    return requested


def _gpu_min_values() -> int:
    from . import config

    return config.GPU_MIN_VALUES
