"""Cold-start strategies against their peers, same inputs, same run.

Run: ``python bench/cold_start_strategies.py`` (all three; ``--only probcover`` for one).
Inputs are N unit-norm embeddings (d = 128 by default) around 100 Gaussian centres, as
contrastive features are; nothing is labeled, b = 100. Assay runs through the
acquisition layer (``selection.select``, arrays taken as validated, as a stored pool's
are); the peers run in a spawned child process with
a wall-clock cap (``--cap``, 60 s), so a peer that cannot finish is stopped and
reported as ``> cap``:

* ``typiclust``: scikit-activeml ``TypiClust`` (scikit-learn k-means, k = 5);
* ``probcover``: scikit-activeml ``ProbCover`` at the same δ (``deltas=[δ]``), δ the
  median distance to the 20th neighbour of 1,000 sampled items; it forms the N x N
  float64 distance matrix, so it is not started when that matrix alone would pass
  ``--peer-memory-gb``;
* ``lightweight_coreset``: small-text ``LightweightCoreset`` (angular, the service run
  with ``distance=angular`` to do the same work).

Each figure is the best and the median of ``--repeats`` runs (peers ``--peer-repeats``;
a peer that hit the cap is not repeated). The 1-minute load average is printed before
and after each strategy: the machine is shared. ``--reach`` then grows N for the peer
(doubling from ``--reach-from``, at most ``--reach-max``) until it cannot finish within
the cap, and runs Assay once at that N. Keep one run under about 3 minutes on a shared
machine: ``--only`` one strategy, and ``--reach`` in a run of its own
(``--repeats 0 --peer-repeats 0`` skips the comparison).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import queue
import statistics
import time
import warnings

import numpy as np

from assay.kernels.knn import knn
from assay.server.acquisition import selection

NAMES = ("typiclust", "probcover", "lightweight_coreset")


def embeddings(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((100, d), dtype=np.float32)
    x = centres[rng.integers(0, 100, size=n)]
    x += 0.6 * rng.standard_normal((n, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def delta_for(x: np.ndarray) -> float:
    """The median distance to the 20th neighbour of 1,000 sampled items."""
    rows = np.random.default_rng(1).choice(x.shape[0], size=min(1000, x.shape[0]),
                                           replace=False)
    dist, _, _ = knn(x[rows], x, 21)
    return round(float(np.median(np.sqrt(dist[:, 20]))), 3)


def ours(name: str, x: np.ndarray, budget: int, delta: float, seed: int) -> float:
    params = {"probcover": {"delta": delta}, "lightweight_coreset": {"distance": "angular"}}
    start = time.perf_counter()
    selection.select(name, budget, {"embeddings": x}, params.get(name, {}), seed=seed,
                     validated=True)
    return time.perf_counter() - start


def _peer_run(name: str, n: int, d: int, budget: int, delta: float, repeats: int,
              out) -> None:
    """The peer in a fresh interpreter (spawned: no OpenMP state inherited), on the same
    embeddings regenerated from their seed; sends "ready", then the seconds of each run."""
    warnings.simplefilter("ignore")
    x = embeddings(n, d)
    if name == "typiclust":
        from skactiveml.pool import TypiClust
        run = lambda: TypiClust(random_state=0).query(  # noqa: E731
            x, np.full(n, np.nan), batch_size=budget)
    elif name == "probcover":
        from skactiveml.pool import ProbCover
        run = lambda: ProbCover(deltas=[delta], random_state=0).query(  # noqa: E731
            x, np.full(n, np.nan), batch_size=budget)
    else:
        from small_text.query_strategies import LightweightCoreset
        run = lambda: LightweightCoreset().sample(  # noqa: E731
            None, None, np.arange(n), np.zeros(0, dtype=np.int64), None, budget, x)
    out.put("ready")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        out.put(time.perf_counter() - start)


def peer(name: str, n: int, d: int, budget: int, delta: float, cap: float,
         repeats: int = 1) -> list[float | None]:
    """Seconds of each of ``repeats`` runs in one child; None for a run that did not
    finish within ``cap`` (the child is then stopped). Imports and data are ready
    before the clock starts."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=_peer_run, args=(name, n, d, budget, delta, repeats, out))
    proc.start()
    out.get(timeout=600)
    times: list[float | None] = []
    for _ in range(repeats):
        try:
            times.append(out.get(timeout=cap))
        except queue.Empty:
            times.append(None)
            break
    proc.kill()
    proc.join()
    return times


def peer_fits(name: str, n: int, limit_gb: float) -> bool:
    return name != "probcover" or n * n * 8 / 1e9 <= limit_gb


def load() -> str:
    return f"{os.getloadavg()[0]:.1f}"


def fmt(times: list[float]) -> str:
    return f"{min(times):.2f} / {statistics.median(times):.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=NAMES, action="append")
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--budget", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--peer-repeats", type=int, default=3)
    ap.add_argument("--cap", type=float, default=60.0, help="peer wall-clock cap, s")
    ap.add_argument("--peer-memory-gb", type=float, default=4.0,
                    help="largest N x N float64 matrix a peer may form")
    ap.add_argument("--reach", action="store_true")
    ap.add_argument("--reach-from", type=int, default=0,
                    help="first N of the reach search (default: --n)")
    ap.add_argument("--reach-max", type=int, default=2_000_000,
                    help="largest N the reach search tries (memory)")
    args = ap.parse_args()
    names = args.only or list(NAMES)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"N = {args.n:,}, d = {args.d}, b = {args.budget}")
    print("| strategy | load before | Assay s (best / median) | peer s (best / median) "
          "| peer / Assay (best) | load after |")
    print("|---|---|---|---|---|---|")
    x = embeddings(args.n, args.d)
    delta = delta_for(x) if "probcover" in names else 0.0
    for name in names if args.repeats else ():
        before = load()
        mine = [ours(name, x, args.budget, delta, seed) for seed in range(args.repeats)]
        theirs: list[float] = []
        note = ""
        if not peer_fits(name, args.n, args.peer_memory_gb):
            note = f"not run: N x N float64 = {args.n ** 2 * 8 / 1e9:.0f} GB"
        else:
            for t in peer(name, args.n, args.d, args.budget, delta, args.cap,
                          args.peer_repeats):
                if t is None:
                    note = f"> {args.cap:.0f} (stopped)"
                    break
                theirs.append(t)
        peer_txt = note or fmt(theirs)
        ratio = f"{min(theirs) / min(mine):.1f}x" if theirs and not note else "-"
        label = f"{name} (δ = {delta})" if name == "probcover" else name
        print(f"| {label} | {before} | {fmt(mine)} | {peer_txt} | {ratio} | {load()} |",
              flush=True)
    if not args.reach:
        return
    print("\n| strategy | N | peer s (cap) | Assay s | load before / after |")
    print("|---|---|---|---|---|")
    for name in names:
        n = args.reach_from or args.n
        while n <= args.reach_max:
            before = load()
            xr = embeddings(n, args.d)
            if not peer_fits(name, n, args.peer_memory_gb):
                t, shown = None, f"not run: N x N = {n * n * 8 / 1e9:.0f} GB"
            else:
                t = peer(name, n, args.d, args.budget, delta, args.cap)[0]
                shown = f"> {args.cap:.0f}" if t is None else f"{t:.1f}"
            if t is None:
                mine_t = ours(name, xr, args.budget, delta, 0)
                print(f"| {name} | {n:,} | {shown} | {mine_t:.1f} | {before} / {load()} |",
                      flush=True)
                break
            print(f"| {name} | {n:,} | {shown} | | {before} / {load()} |", flush=True)
            n *= 2
        else:
            n //= 2
            xr = embeddings(n, args.d)
            print(f"| {name} | {n:,} (the largest tried) | finished every N | "
                  f"{ours(name, xr, args.budget, delta, 0):.1f} | |")


if __name__ == "__main__":
    main()
