"""Cold start: process start to SERVING, and the first Select against a warm one.

What it answers: how long does ``assay serve`` take to report SERVING with an empty
kernel cache (every kernel compiles during the warm-up) and with a filled one (every
kernel loads from disk), and is the first Select of a strategy after start as fast
as the same Select repeated (goal: at most 2x)?

Each start is a fresh ``python -m assay.server serve`` process on a free port with
its own data directory; "start -> SERVING" runs from spawning the process to the
``assay listening`` line, which the server prints once health reports SERVING. The
first-call figures come from a start with a filled cache: one Select per strategy
(inline inputs, on a channel already connected), then the same Select ``--warm``
more times. ``--no-warmup`` adds a
start without the warm-up and with an empty cache: the behaviour before the
warm-up existed, where the first Select compiles.

Run ``python bench/coldstart.py`` (several minutes on 2 cores: every cold start
compiles all kernels) or ``--cold 1 --warm-starts 2`` for a shorter run. Results
and the machine they came from are in ``docs/benchmarks.md`` ("Cold start").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from assay.client import Client

SELECT_TIMEOUT = 900.0


def _inputs(seed: int) -> dict[str, dict[str, np.ndarray]]:
    """Per strategy, the inline arrays of its Select: sizes a trainer sends inline."""
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((20_000, 64)).astype(np.float32)
    probs = rng.dirichlet(np.ones(10), size=20_000).astype(np.float32)
    samples = rng.dirichlet(np.ones(10), size=(20, 2_000)).astype(np.float32)
    return {
        "coreset": {"embeddings": emb},
        "badge": {"embeddings": emb, "probs": probs},
        "batchbald": {"samples": samples},
        "entropy": {"probs": rng.dirichlet(np.ones(10), size=200_000).astype(np.float32)},
    }


class Server:
    """One ``assay serve`` process; stderr is collected by a thread."""

    def __init__(self, data: Path, cache: Path, warmup: bool) -> None:
        self.began = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "assay.server", "serve", "--address", "127.0.0.1:0",
             "--data-dir", str(data), "--kernel-cache-dir", str(cache),
             "--warmup" if warmup else "--no-warmup", "--max-inline-bytes", str(64 << 20),
             "--log-level", "INFO"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        threading.Thread(target=lambda: self.lines.extend(self.proc.stderr), daemon=True).start()
        line = self.proc.stdout.readline()
        self.serving = time.perf_counter() - self.began
        match = re.match(r"assay listening on 127\.0\.0\.1:(\d+)", line)
        if not match:
            self.stop()
            raise RuntimeError(f"server did not start: {line!r} {''.join(self.lines)[-2000:]}")
        self.target = f"127.0.0.1:{match.group(1)}"

    def warmup_line(self) -> str:
        for _ in range(100):
            found = [ln for ln in self.lines if "kernel warm-up" in ln]
            if found:
                return found[0].split("assay.server.wiring.warmup ", 1)[-1].strip()
            time.sleep(0.05)
        return "(no warm-up)"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


#: Budget per strategy: 100 picks, but 10 for BatchBALD, whose greedy joint entropies make
#: every further pick dearer (100 picks take minutes on 2 cores, warm or not).
BUDGET = {"batchbald": 10}


def _select(client: Client, strategy: str, arrays: dict[str, np.ndarray]) -> float:
    t = time.perf_counter()
    client.select(strategy, BUDGET.get(strategy, 100), seed=1, timeout=SELECT_TIMEOUT,
                  **arrays)
    return time.perf_counter() - t


def _first_calls(data: Path, cache: Path, warmup: bool, warm: int,
                 inputs: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, float]]:
    server = Server(data, cache, warmup)
    try:
        out: dict[str, dict[str, float]] = {}
        with Client(server.target, timeout=SELECT_TIMEOUT, retries=0) as client:
            client.list_strategies()  # connect first: a channel's set-up is not a cold kernel
            for strategy, arrays in inputs.items():
                first = _select(client, strategy, arrays)
                again = [_select(client, strategy, arrays) for _ in range(warm)]
                out[strategy] = {"first": first, "warm_best": min(again),
                                 "warm_median": statistics.median(again)}
        return out
    finally:
        server.stop()


def _summary(values: list[float]) -> str:
    return f"{min(values):.2f} / {statistics.median(values):.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cold", type=int, default=2, help="starts with an empty cache")
    parser.add_argument("--warm-starts", type=int, default=5, help="starts with a filled cache")
    parser.add_argument("--first-call-starts", type=int, default=3,
                        help="starts measuring the first Select per strategy")
    parser.add_argument("--warm", type=int, default=5, help="repeats of each warm Select")
    parser.add_argument("--no-warmup", action="store_true",
                        help="also measure first Selects without the warm-up, empty cache")
    parser.add_argument("--cache", help="kernel cache of the warm starts (default: the last "
                        "cold start's); filled first if it lacks kernels")
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args()

    load = os.getloadavg()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, NUMBA_CPU_NAME="
          f"{os.environ.get('NUMBA_CPU_NAME', '(host)')}, load average "
          f"{load[0]:.1f} {load[1]:.1f} {load[2]:.1f} at start", flush=True)
    inputs = _inputs(seed=7)
    results: dict[str, object] = {"load_start": load}
    with tempfile.TemporaryDirectory(prefix="assay-coldstart-") as tmp:
        root = Path(tmp)
        cold, warm_starts, lines = [], [], []
        for i in range(args.cold):
            server = Server(root / f"cold{i}", root / f"cache-cold{i}", warmup=True)
            cold.append(server.serving)
            lines.append(server.warmup_line())
            server.stop()
            print(f"cold start {i}: {server.serving:.1f} s to SERVING; {lines[-1]}", flush=True)
        cache = Path(args.cache) if args.cache else root / f"cache-cold{args.cold - 1}"
        if args.cache or not args.cold:  # fill it (compiles only what it lacks)
            server = Server(root / "fill", cache, warmup=True)
            server.stop()
            print(f"fill: {server.serving:.1f} s to SERVING; {server.warmup_line()}", flush=True)
        for i in range(args.warm_starts):
            server = Server(root / f"warm{i}", cache, warmup=True)
            warm_starts.append(server.serving)
            line = server.warmup_line()
            server.stop()
            print(f"warm start {i}: {server.serving:.1f} s to SERVING; {line}", flush=True)
        results["start_to_serving"] = {"cold": cold, "warm": warm_starts}
        firsts = [_first_calls(root / f"first{i}", cache, True, args.warm, inputs)
                  for i in range(args.first_call_starts)]
        results["first_select"] = firsts
        if args.no_warmup:
            results["first_select_no_warmup_cold_cache"] = _first_calls(
                root / "nowarm", root / "cache-nowarm", False, args.warm, inputs)
    load = os.getloadavg()
    results["load_end"] = load

    print("\n| start -> SERVING (s) | best / median | starts |\n| --- | --- | --- |")
    if cold:
        print(f"| empty kernel cache | {_summary(cold)} | {len(cold)} |")
    print(f"| filled kernel cache | {_summary(warm_starts)} | {len(warm_starts)} |")
    print("\n| strategy | first Select after start (s), best / median | same Select warm (s), "
          "best / median | first / warm median |\n| --- | --- | --- | --- |")
    for strategy in inputs:
        first = [f[strategy]["first"] for f in firsts]
        warm = [f[strategy]["warm_median"] for f in firsts]
        best = [f[strategy]["warm_best"] for f in firsts]
        print(f"| {strategy} | {_summary(first)} | {min(best):.3f} / "
              f"{statistics.median(warm):.3f} | "
              f"{statistics.median(first) / statistics.median(warm):.2f}x |")
    if args.no_warmup:
        print("\nwithout warm-up, empty cache (first / warm median, s):")
        for strategy, r in results["first_select_no_warmup_cold_cache"].items():
            print(f"  {strategy}: {r['first']:.2f} / {r['warm_median']:.3f}")
    print(f"\nload average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} at end")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
