"""EPIG and stochastic batches: Assay against baal in the same run.

Usage: python bench/epig_stochastic.py [--n 100000] [--target 100] [--full-target 1000]
                                       [--repeats 3] [--sample-sizes 1000000,10000000]

Inputs look like MC-dropout output (per-item logits plus per-pass noise, softmaxed),
S = 20 passes, C = 10 classes, as float32.

* EPIG at N items about a target of M = ``--target`` items of the pool (the same rows
  for both: Assay draws them with the request's seed, baal is handed them): Assay's
  ``epig`` Select against ``baal.active.heuristics.EPIG.compute_score``. baal forms the
  N x C x M x C joint at once (float32), N M C^2 x 4 bytes: at N = 100k and M = 1k that
  is 40 GB, so its M is kept small; ``--full-target`` runs Assay alone at that M.
* Stochastic batches: b = 1000 by power sampling of BALD, Assay's ``stochastic``
  Select against ``PowerSampling(BALD(), 1000)``; then the sampling alone (given
  scores) at ``--sample-sizes``, where baal's ``np.random.choice(replace=False, p=...)``
  renormalizes the whole pool once per round of draws.

Best and median of ``--repeats`` wall times; process CPU seconds (all threads) beside
them, and the load average before each part, because on a shared machine wall times
swing with the load. A peer run that would take more than ``--peer-limit`` seconds
(estimated from its first run) is not repeated.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np

S, C, B = 20, 10, 1000


def make_samples(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(1, n, C)) * 2.0 + rng.normal(size=(S, n, C)) * 0.7
    p = np.exp(logits - logits.max(axis=2, keepdims=True))
    return (p / p.sum(axis=2, keepdims=True)).astype(np.float32)


def timed(fn, repeats: int, limit: float = float("inf")) -> tuple[list[float], list[float], object]:
    """Wall and CPU seconds of ``repeats`` calls (fewer when one call passes ``limit``)."""
    walls, cpus, out = [], [], None
    for _ in range(repeats):
        cpu, started = time.process_time(), time.perf_counter()
        out = fn()
        walls.append(time.perf_counter() - started)
        cpus.append(time.process_time() - cpu)
        if walls[-1] * 2 > limit:
            break
    return walls, cpus, out


def line(name: str, walls: list[float], cpus: list[float]) -> str:
    return (f"{name:<34} best {min(walls):8.2f} s  median {statistics.median(walls):8.2f} s  "
            f"cpu {statistics.median(cpus):8.2f} s  ({len(walls)} runs)")


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def target_rows(n: int, m: int, seed: int) -> np.ndarray:
    from assay.server.strategies.target_aware import target_rows as rows

    return rows(np.arange(n, dtype=np.int64), m, np.random.default_rng(seed))


def bench_epig(n: int, m: int, repeats: int, peer_limit: float) -> None:
    from baal.active.heuristics import EPIG

    from assay.server.acquisition.selection import select

    samples = make_samples(n)
    rows = target_rows(n, m, 0)
    print(f"\n## EPIG, N = {n:,}, M = {m:,} ({load()})")
    ours_w, ours_c, ours = timed(
        lambda: select("epig", 10, {"samples": samples}, {"target_size": m}, seed=0), repeats)
    print(line("assay epig", ours_w, ours_c))
    pool = np.ascontiguousarray(samples.transpose(1, 2, 0))
    target = np.ascontiguousarray(samples[:, rows].transpose(1, 2, 0))
    need = n * m * C * C * 4 * 2
    print(f"# baal holds the joint and its x log x: about {need / 2**30:.1f} GiB")
    peer_w, peer_c, peer = timed(lambda: EPIG().compute_score(pool, target), repeats, peer_limit)
    print(line("baal EPIG.compute_score", peer_w, peer_c))
    print(f"ratio (baal / assay, best wall): {min(peer_w) / min(ours_w):.1f}x; "
          f"median CPU: {statistics.median(peer_c) / statistics.median(ours_c):.1f}x")
    top = np.argsort(-peer, kind="stable")[:10]
    print(f"top 10 equal: {bool(np.array_equal(top, ours.indices))}; max |score diff| at "
          f"the picks: {np.abs(peer[ours.indices] - ours.scores).max():.2e} (baal is float32)")
    per_n = min(peer_w) / n
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    print(f"baal at this M reaches about N = {int(60 / per_n):,} in a minute (linear in N); "
          f"its memory, {need / n * 1e6 / 2**30:.1f} GiB per million items, caps it at "
          f"N = {int(ram / need * n):,} on this machine")


def bench_epig_full(n: int, m: int) -> None:
    from assay.server.acquisition.selection import select

    samples = make_samples(n)
    print(f"\n## EPIG, Assay alone, N = {n:,}, M = {m:,} ({load()})")
    walls, cpus, _ = timed(
        lambda: select("epig", 10, {"samples": samples}, {"target_size": m}, seed=0), 1)
    print(line("assay epig", walls, cpus))
    print(f"# baal would hold {n * m * C * C * 4 * 2 / 2**30:.0f} GiB")


class _Given:
    """A baal base heuristic whose uncertainties are given scores."""

    def __init__(self, scores):
        self.scores = scores

    def get_uncertainties(self, predictions):
        return self.scores.copy()


def bench_stochastic(n: int, repeats: int) -> None:
    from baal.active.heuristics import BALD
    from baal.active.heuristics.stochastics import PowerSampling

    from assay.server.acquisition.selection import select

    samples = make_samples(n)
    pool = np.ascontiguousarray(samples.transpose(1, 2, 0))
    print(f"\n## Stochastic batch, power sampling of BALD, N = {n:,}, b = {B} ({load()})")
    w, c, _ = timed(lambda: select("stochastic", B, {"samples": samples},
                                   {"score": "bald", "mode": "power"}, seed=0), repeats)
    print(line("assay stochastic(bald, power)", w, c))
    np.random.seed(0)  # noqa: NPY002 (baal draws from the global generator)
    pw, pc, _ = timed(lambda: PowerSampling(BALD(), B).get_ranks(pool), repeats)
    print(line("baal PowerSampling(BALD)", pw, pc))
    print(f"ratio (baal / assay, best wall): {min(pw) / min(w):.1f}x")


def bench_sampling(n: int, repeats: int, peer_limit: float) -> None:
    from baal.active.heuristics.stochastics import PowerSampling

    from assay.server.acquisition.selection import select

    scores = np.random.default_rng(1).random(n)
    print(f"\n## Sampling alone (given scores), N = {n:,}, b = {B} ({load()})")
    w, c, _ = timed(lambda: select("stochastic", B, {"scores": scores},
                                   {"score": "precomputed", "mode": "power"}, seed=0), repeats)
    print(line("assay stochastic(precomputed)", w, c))
    np.random.seed(0)  # noqa: NPY002 (baal draws from the global generator)
    pw, pc, _ = timed(lambda: PowerSampling(_Given(scores), B).get_ranks(np.zeros(1)),
                      repeats, peer_limit)
    print(line("baal PowerSampling(given)", pw, pc))
    print(f"ratio (baal / assay, best wall): {min(pw) / min(w):.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--target", type=int, default=100, help="M of the run against baal")
    parser.add_argument("--full-target", type=int, default=1000,
                        help="M of a run by Assay alone (0: skip)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peer-limit", type=float, default=60.0)
    parser.add_argument("--sample-sizes", default="1000000,10000000")
    parser.add_argument("--skip", default="", help="parts to skip: epig,full,stochastic,sampling")
    args = parser.parse_args()
    skip = set(args.skip.split(","))
    import numba

    from assay.server.acquisition.selection import select

    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"numba {numba.__version__} ({numba.get_num_threads()} threads); S={S} C={C}")
    warm = make_samples(64)  # compile outside the timings
    select("epig", 2, {"samples": warm}, {"target_size": 8}, seed=0)
    select("stochastic", 2, {"samples": warm}, {"mode": "power"}, seed=0)
    if "epig" not in skip:
        bench_epig(args.n, args.target, args.repeats, args.peer_limit)
    if "full" not in skip and args.full_target:
        bench_epig_full(args.n, args.full_target)
    if "stochastic" not in skip:
        bench_stochastic(args.n, args.repeats)
    if "sampling" not in skip:
        for n in (int(float(x)) for x in args.sample_sizes.split(",") if x):
            bench_sampling(n, args.repeats, args.peer_limit)
    print(f"\n# {load()}")


if __name__ == "__main__":
    main()
