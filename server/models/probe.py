"""Builds an uploaded model's first onnxruntime session in a child process, under limits.

Why a child process: building a session runs the model's constant subgraphs
(constant folding), and a graph can make that arbitrarily long or large through
shapes no static check can see (a shape computed by a reduction, say). A thread
cannot be stopped inside onnxruntime; a process can be killed, and
``resource.setrlimit`` bounds its address space. Folding does not depend on
the inputs, so a model whose build finished here within the limits builds
within them in the server too.

The child imports onnxruntime ahead of time (a spare one is kept started, see
``prepare``), then reads the cap and the model from stdin, caps its address
space at what it uses plus ``memory_bytes``, builds a session with the server's
own options, and exits 0 (built), 3 (onnxruntime refused the model: the reason
on stderr) or 4 (an allocation was refused). The parent waits at most
``seconds``, polls the request's deadline and cancellation meanwhile, and
kills the child when either ends first.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from assay.vocab.errors import AssayError, InvalidInput, ResourceExhausted

from .onnx_runner import available, runtime

#: Session builds running at once: each may take ``memory_bytes``, so they are few.
MAX_PROBES = 2
_EXIT_REFUSED, _EXIT_MEMORY = 3, 4
_POLL_SECONDS = 0.1
_slots = threading.BoundedSemaphore(MAX_PROBES)
_spare_lock = threading.Lock()
_spare: list[subprocess.Popen] = []  # at most one child, started and waiting for a model
_building: set[int] = set()


def _spawn() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "assay.server.models.probe"],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


def prepare() -> None:
    """Start a spare child now: it imports onnxruntime (a second or so on a busy machine)
    while nothing waits, and the next registration hands it the model at once."""
    if not available():  # no onnxruntime: model registrations are refused before a probe
        return
    with _spare_lock:
        if not _spare or _spare[0].poll() is not None:
            _spare[:] = [_spawn()]


def _take() -> subprocess.Popen:
    """The spare child, or a new one when there is none (the next spare is started once
    this build is over, so its imports do not compete with the build for the CPU)."""
    with _spare_lock:
        child = _spare.pop() if _spare and _spare[0].poll() is None else _spawn()
        _spare.clear()
        _building.add(child.pid)
        return child


def running_builds() -> list[int]:
    """Process ids of the children building a session right now."""
    with _spare_lock:
        return sorted(_building)


def probe_session(data: bytes, *, seconds: float, memory_bytes: int,
                  check: Callable[[], None] = lambda: None) -> float:
    """Build a session for ``data`` in a child process; return the seconds it took.

    Raises ``InvalidInput`` (``MODEL_TOO_COSTLY`` past ``seconds`` or
    ``memory_bytes``, ``MODEL_LOAD_FAILED`` when onnxruntime refuses the model),
    ``ResourceExhausted`` when ``MAX_PROBES`` builds are already running, and
    whatever ``check`` raises (the request's deadline or cancellation), the
    child killed in every case; ``FailedPrecondition`` without onnxruntime.
    """
    runtime()
    if not _slots.acquire(blocking=False):
        raise ResourceExhausted(
            f"{MAX_PROBES} model registrations are being checked already; retry shortly",
            reason="MODEL_LOADS_BUSY")
    try:
        return _probe(data, seconds, memory_bytes, check)
    finally:
        _slots.release()


def _probe(data: bytes, seconds: float, memory_bytes: int, check: Callable[[], None]) -> float:
    started = time.monotonic()
    child = _take()
    try:
        stderr = _wait(child, b"%d\n" % int(memory_bytes) + data, started + seconds, check)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
        with _spare_lock:
            _building.discard(child.pid)
        prepare()
    elapsed = time.monotonic() - started
    if stderr is None:
        raise InvalidInput(
            f"the model is too costly to load: building its onnxruntime session took more "
            f"than the server's limit of {seconds:g} s (--model-load-seconds), e.g. by "
            "constant folding of large tensors; nothing was stored", field="chunk",
            reason="MODEL_TOO_COSTLY")
    if child.returncode == 0:
        return elapsed
    text = stderr.decode(errors="replace").strip()
    detail = text.splitlines()[-1] if text else f"exit status {child.returncode}"
    if child.returncode == _EXIT_REFUSED:
        prefix = "" if detail.startswith("onnxruntime cannot") else \
            "onnxruntime cannot load the model: "
        raise InvalidInput(prefix + detail, field="chunk", reason="MODEL_LOAD_FAILED")
    if child.returncode == _EXIT_MEMORY:
        raise InvalidInput(
            f"the model is too costly to load: building its onnxruntime session needs more "
            f"than the server's model memory limit of {memory_bytes} bytes "
            f"(--max-model-memory-bytes) ({detail}); nothing was stored", field="chunk",
            reason="MODEL_TOO_COSTLY")
    if child.returncode < 0:
        raise InvalidInput(
            f"onnxruntime stopped with signal {-child.returncode} while building the model's "
            "session: it crashed on the model, or an allocation past the model memory limit "
            f"of {memory_bytes} bytes (--max-model-memory-bytes) was refused; nothing was "
            "stored", field="chunk", reason="MODEL_LOAD_FAILED")
    # Any other status is the checking process failing, not the model.
    raise AssayError(f"the model check could not run (exit status {child.returncode}: "
                     f"{detail}); nothing was stored")


def _wait(child: subprocess.Popen, data: bytes, stop_at: float,
          check: Callable[[], None]) -> bytes | None:
    """The child's stderr once it exits; None when ``stop_at`` passed first.

    ``communicate`` runs on a thread of its own (it writes the model, closes stdin
    and drains stderr), so this thread can poll ``check`` and the clock meanwhile;
    killing the child ends it.
    """
    result: list[bytes] = []

    def talk() -> None:
        try:
            result.append(child.communicate(data)[1] or b"")
        except (BrokenPipeError, ValueError, OSError):
            result.append(b"")

    talker = threading.Thread(target=talk, name="model-probe-io", daemon=True)
    talker.start()
    try:
        while True:
            talker.join(min(_POLL_SECONDS, max(stop_at - time.monotonic(), 0.0)))
            if not talker.is_alive():
                return result[0] if result else b""
            check()
            if time.monotonic() >= stop_at:
                return None
    finally:
        if talker.is_alive():
            child.kill()
            talker.join()


def _address_space() -> int:
    """This process's virtual size in bytes (VmSize)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def main() -> int:
    """The child: import onnxruntime, then wait for a memory cap (one line) and a model on
    stdin, and build one session under an address-space cap. An empty stdin (the server
    exited before handing over a model) ends it quietly."""
    from .onnx_runner import is_out_of_memory, make_session

    runtime()  # imported now, while no model waits
    line = sys.stdin.buffer.readline()
    if not line.strip():
        return 0
    memory_bytes = int(line)
    data = sys.stdin.buffer.read()
    if memory_bytes > 0:
        limit = _address_space() + len(data) + memory_bytes
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        make_session(data, threads=1)
    except (MemoryError, ResourceExhausted):
        return _EXIT_MEMORY
    except InvalidInput as error:
        print(error.message, file=sys.stderr)
        return _EXIT_REFUSED
    except Exception as error:  # any other failure is a refusal, with its text
        print(str(error).strip() or type(error).__name__, file=sys.stderr)
        return _EXIT_MEMORY if is_out_of_memory(error) else _EXIT_REFUSED
    return 0


if __name__ == "__main__":
    status = main()
    sys.stderr.flush()
    os._exit(status)  # skip interpreter and onnxruntime teardown: a few hundred ms saved
