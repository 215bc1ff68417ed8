"""Cold start: the strategy registry under concurrent first calls, the on-disk kernel
cache, and the warm-up that runs before health reports SERVING.

Every test here starts a fresh interpreter (``subprocess``): a first call is only a
first call once per process.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from assay.client import Client

ROOT = Path(__file__).resolve().parents[1]
#: Generous bounds for a loaded 2-core machine: a fresh interpreter imports numba,
#: FAISS and onnxruntime, and a cold kernel may compile for tens of seconds.
START_SECONDS = 600.0
CALL_SECONDS = 300.0

_REGISTRY_RACE = r"""
import json, threading
from concurrent.futures import ThreadPoolExecutor
from assay.vocab.errors import AssayError
from assay.server.strategies import registry

n = 16
barrier = threading.Barrier(n)

def first(i):
    barrier.wait()
    try:
        if i % 2:
            return sorted(s.name for s in registry.all_strategies())
        return [registry.get("entropy").name]
    except AssayError as error:
        return "error: " + str(error)

with ThreadPoolExecutor(n) as pool:
    results = list(pool.map(first, range(n)))
print(json.dumps({"results": results,
                  "after": sorted(s.name for s in registry.all_strategies())}))
"""


def _python(code: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=START_SECONDS, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.parametrize("run", range(2))
def test_concurrent_first_registry_lookups_in_a_fresh_interpreter(run):
    """16 threads released together on a registry nobody has loaded yet: each lookup
    waits for the one import and sees every strategy (it used to answer NOT_FOUND
    with an empty list while another thread was still importing)."""
    out = json.loads(_python(_REGISTRY_RACE).strip().splitlines()[-1])
    everything = out["after"]
    assert {"entropy", "coreset", "badge", "batchbald"} <= set(everything), everything
    for i, result in enumerate(out["results"]):
        expected = everything if i % 2 else ["entropy"]
        assert result == expected, f"thread {i} (run {run}) got {result!r}"


def _serve(data_dir: Path, cache_dir: Path | str, *extra: str,
           env_extra: dict[str, str] | None = None) -> tuple[subprocess.Popen, list[str]]:
    """Start ``assay serve`` on a free port; return the process and a live list of its
    stderr lines (read by a thread, so the pipe never fills)."""
    env = dict(os.environ, **(env_extra or {}))
    proc = subprocess.Popen(
        [sys.executable, "-m", "assay.server", "serve", "--address", "127.0.0.1:0",
         "--data-dir", str(data_dir), "--kernel-cache-dir", str(cache_dir),
         "--grace-seconds", "1", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True).start()
    return proc, lines


def _target(proc: subprocess.Popen, lines: list[str]) -> str:
    line = proc.stdout.readline()
    match = re.match(r"assay listening on 127\.0\.0\.1:(\d+)", line)
    assert match, (line, "".join(lines)[-3000:])
    return f"127.0.0.1:{match.group(1)}"


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_concurrent_first_calls_on_a_fresh_server_all_succeed(tmp_path):
    """A trainer's burst at start-up: Selects and ListStrategies sent at once to a
    server process that has answered nothing yet. None may be NOT_FOUND."""
    seed = 11
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(4), size=64).astype(np.float32)
    # Warm-up off: this test is about the registry, not the kernels; the server must
    # load the registry at start-up whatever the warm-up setting.
    proc, lines = _serve(tmp_path / "data", tmp_path / "kernels", "--no-warmup",
                         "--max-concurrent-rpcs", "64", "--max-queued-selects", "32")
    try:
        target = _target(proc, lines)
        n = 16
        barrier = threading.Barrier(n)

        def call(i: int):
            with Client(target, timeout=CALL_SECONDS, retries=0) as client:
                barrier.wait()
                if i % 2:
                    return sorted(s.name for s in client.list_strategies())
                return client.select("entropy", 3, probs=probs, seed=seed).indices.tolist()

        with ThreadPoolExecutor(n) as pool:
            results = list(pool.map(call, range(n)))
    finally:
        _stop(proc)
    p64 = probs.astype(np.float64)
    entropy = -(p64 * np.log(p64)).sum(axis=1)
    order = np.argsort(-entropy, kind="stable")
    expected = order[:3].tolist()
    # The kernel sums in another order: the 3rd and 4th must be far apart beyond rounding.
    assert entropy[order[2]] - entropy[order[3]] > 1e-9, f"seed {seed}: near-tie, pick another"
    for i, result in enumerate(results):
        if i % 2:
            assert {"entropy", "coreset", "badge"} <= set(result), (i, result)
        else:
            assert result == expected, f"seed {seed}: select {i} gave {result}, not {expected}"


def _health(target: str) -> int | None:
    try:
        with grpc.insecure_channel(target) as channel:
            return health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5).status
    except grpc.RpcError:
        return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cache_files(cache: Path) -> set[str]:
    return {str(p.relative_to(cache)) for p in cache.rglob("*") if p.suffix in (".nbi", ".nbc")}


_WARM = re.compile(r"^(\S+ \S+) INFO \S+ kernel warm-up [\d.]+ s: (\d+) selects, "
                   r"(\d+) kernels from cache, (\d+) compiled", re.M)


def _start_and_watch_health(data: Path, cache: Path) -> tuple[list[int], float, str]:
    """Start a server, probe its health port from the first moment until SERVING;
    return the statuses seen, the wall time SERVING was first seen, and the log."""
    port = _free_port()
    # One strategy keeps a cold start short on a loaded machine: its row kernels (and
    # the input checks') in every dtype, serial and parallel.
    proc, lines = _serve(data, cache, "--health-address", f"127.0.0.1:{port}",
                         "--warmup-strategies", "entropy", "--log-level", "INFO")
    statuses: list[int] = []
    serving_at = 0.0
    try:
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline and proc.poll() is None:
            status = _health(f"127.0.0.1:{port}")
            if status is not None:
                statuses.append(status)
                if status == health_pb2.HealthCheckResponse.SERVING:
                    serving_at = time.time()
                    break
            time.sleep(0.02)
        _target(proc, lines)  # the process went on to serve its API port too
        while "start-up took" not in "".join(lines) and time.monotonic() < deadline:
            time.sleep(0.05)  # the stderr reader may lag behind the health answer
    finally:
        _stop(proc)
    return statuses, serving_at, "".join(lines)


def test_warm_up_fills_an_empty_cache_before_serving_and_a_restart_reuses_it(tmp_path):
    """First start on an empty cache directory compiles its kernels into it while
    health says NOT_SERVING, and turns SERVING only after the warm-up; a second start
    loads every kernel from the cache, compiles none and writes no file."""
    cache = tmp_path / "kernels"
    counts = []
    files: list[set[str]] = []
    for _ in range(2):
        statuses, serving_at, log = _start_and_watch_health(tmp_path / "data", cache)
        assert statuses and statuses[-1] == health_pb2.HealthCheckResponse.SERVING, \
            (statuses[-5:], log[-3000:])
        assert set(statuses[:-1]) <= {health_pb2.HealthCheckResponse.NOT_SERVING}, statuses
        warm = _WARM.search(log)
        assert warm, log[-3000:]
        assert "warm-up of" not in log, log[-3000:]  # no kernel failed
        # Logged before health turned SERVING (same clock; log stamps have ms resolution).
        logged = datetime.strptime(warm.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        assert logged <= serving_at + 0.002, (warm.group(0), serving_at)
        counts.append(tuple(int(g) for g in warm.groups()[1:]))
        files.append(_cache_files(cache))
    (_, _, compiled_first), (_, hits_second, compiled_second) = counts
    assert compiled_first > 0, counts
    # The cold start saw NOT_SERVING while it compiled; one data file per compile.
    assert sum(f.endswith(".nbc") for f in files[0]) == compiled_first, (counts, files[0])
    assert compiled_second == 0 and hits_second > 0, counts
    assert files[1] == files[0], "a warm restart wrote new cache files"


def test_an_unknown_warmup_strategy_stops_serve_with_exit_2(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "assay.server", "serve", "--address", "127.0.0.1:0",
         "--data-dir", str(tmp_path), "--warmup-strategies", "entropy,nonesuch"],
        capture_output=True, text=True, timeout=START_SECONDS, cwd=ROOT)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "nonesuch" in done.stderr and "warmup_strategies" in done.stderr, done.stderr


def test_assay_warmup_fills_the_cache_and_exits(tmp_path):
    """The command the images run at build time: it compiles into the given directory,
    says what it did, and exits 0 (2 for an unknown strategy)."""
    cache = tmp_path / "kernels"
    done = subprocess.run(
        [sys.executable, "-m", "assay.server", "warmup", "--kernel-cache-dir", str(cache),
         "--strategies", "margin"], capture_output=True, text=True, timeout=START_SECONDS,
        cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    match = re.search(r"kernel warm-up [\d.]+ s: \d+ selects, \d+ kernels from cache, "
                      r"(\d+) compiled", done.stdout)
    assert match and int(match.group(1)) > 0, done.stdout
    assert sum(1 for _ in cache.rglob("*.nbc")) == int(match.group(1)), done.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "assay.server", "warmup", "--kernel-cache-dir", str(cache),
         "--strategies", "nonesuch"], capture_output=True, text=True,
        timeout=START_SECONDS, cwd=ROOT)
    assert bad.returncode == 2 and "nonesuch" in bad.stderr, bad.stderr[-2000:]
