"""BatchBALD: Assay's kernel vs batchbald-redux's get_batchbald_batch, in the same run.

Usage: python bench/batchbald.py [--sizes 2000,10000] [--large 100000] [--skip-peer]

Inputs look like MC-dropout output: per-item logits plus per-pass noise, softmaxed,
S = 20 passes, C = 10 classes; b = 10 picks with M = 10,000 configurations, so the
first five picks are exact (C^|A| <= 10,000) and the last five sampled. Both
libraries get the same arrays (the peer takes log-probabilities) and its default
float32 joint; Assay runs its default float32 Numba kernel. Prints wall times, the
ratio, and where the exact-regime picks agree. On a shared machine wall times swing with
the load; process CPU seconds (all threads) are reported beside them for that reason.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

os.environ.setdefault("TQDM_DISABLE", "1")

S, C, B, M = 20, 10, 10, 10_000


def make_samples(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(1, n, C)) * 2.0 + rng.normal(size=(S, n, C)) * 0.7
    p = np.exp(logits - logits.max(axis=2, keepdims=True))
    return (p / p.sum(axis=2, keepdims=True)).astype(np.float32)


def run_assay(samples: np.ndarray) -> tuple[float, float, np.ndarray, list[float]]:
    from assay.kernels.batchbald import batchbald_greedy

    steps: list[float] = []
    last = [time.perf_counter()]

    def tick() -> None:
        now = time.perf_counter()
        steps.append(now - last[0])
        last[0] = now

    cpu = time.process_time()
    started = time.perf_counter()
    last[0] = started
    result = batchbald_greedy(samples, B, num_samples=M, max_exact_configs=M,
                              rng=np.random.default_rng(1), check_cancelled=tick)
    total = time.perf_counter() - started
    cpu = time.process_time() - cpu
    tick()
    return total, cpu, result.indices, steps[1:]


def run_peer(samples: np.ndarray) -> tuple[float, float, list[int]]:
    import torch
    from batchbald_redux.batchbald import get_batchbald_batch

    log_probs = torch.from_numpy(np.log(samples).transpose(1, 0, 2).copy())
    torch.manual_seed(1)
    cpu = time.process_time()
    started = time.perf_counter()
    result = get_batchbald_batch(log_probs, B, M)
    return time.perf_counter() - started, time.process_time() - cpu, result.indices


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="2000,10000")
    parser.add_argument("--large", default="100000", help="sizes run by Assay alone")
    parser.add_argument("--skip-peer", action="store_true")
    args = parser.parse_args()
    import numba

    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"numba {numba.__version__} ({numba.get_num_threads()} threads)")
    print(f"# S={S} C={C} b={B} M={M}")
    run_assay(make_samples(64))  # compile outside the timings
    for n in [int(v) for v in args.sizes.split(",") if v]:
        samples = make_samples(n)
        ours, ours_cpu, picks, steps = run_assay(samples)
        line = (f"N={n:>7}: assay {ours:7.2f} s wall, {ours_cpu:7.2f} s CPU (steps: "
                + " ".join(f"{t:.2f}" for t in steps) + ")")
        if not args.skip_peer:
            peer, peer_cpu, peer_picks = run_peer(samples)
            same = sum(a == b for a, b in zip(picks[:5], peer_picks[:5], strict=True))
            line += (f" | batchbald-redux {peer:7.2f} s wall, {peer_cpu:7.2f} s CPU | "
                     f"{peer / ours:5.1f}x wall, {peer_cpu / ours_cpu:5.1f}x CPU | "
                     f"exact picks equal: {same}/5")
        print(line, flush=True)
    for n in [int(v) for v in args.large.split(",") if v]:
        ours, ours_cpu, _, steps = run_assay(make_samples(n))
        print(f"N={n:>7}: assay {ours:7.2f} s wall, {ours_cpu:7.2f} s CPU (steps: "
              + " ".join(f"{t:.2f}" for t in steps) + ") | batchbald-redux not run",
              flush=True)


if __name__ == "__main__":
    main()
