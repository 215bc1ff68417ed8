"""Pruned k-center greedy against the unpruned fused pass and the sklearn-pairwise
reference, on clustered, real and isotropic embeddings.

Run: ``python bench/kcenter_pruned.py [--n N] [--budget B] [--repeats R]``.
Pools (float32, d = 128):

- ``mixture``: a Gaussian mixture of 128 components (centres N(0, 4 I), members
  N(centre, I / 4)), the structure penultimate-layer embeddings show;
- ``digits``: scikit-learn's handwritten digits (1,797 x 64), standardized, sent to
  d = 128 by a fixed Gaussian random projection and replicated to N rows with noise
  of a tenth of the median nearest-neighbour distance;
- ``isotropic``: N(0, I), where the triangle inequality rarely clears a centre.

Per pool: the pruned selection of b picks is timed whole (best of ``repeats``), with
the rows each step read; the unpruned pass and the reference are timed for a few
steps (their per-step cost does not depend on the step) and extrapolated to b, except
on the isotropic pool, where the unpruned selection is timed whole as well (the
ratio there is the cost of trying to prune). The unpruned run's picks are compared
with the pruned run's.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import time

import numba
import numpy as np
from kcenter import sklearn_step_seconds
from sklearn.datasets import load_digits

from assay.kernels.kcenter import kcenter_greedy

UNPRUNED_STEPS = 20


def mixture(n: int, d: int, rng: np.random.Generator, components: int = 128) -> np.ndarray:
    """Gaussian mixture: well separated components of isotropic spread."""
    centres = rng.standard_normal((components, d), dtype=np.float32) * 2.0
    x = rng.standard_normal((n, d), dtype=np.float32) * 0.5
    x += centres[rng.integers(components, size=n)]
    return x


def digits(n: int, d: int, rng: np.random.Generator) -> np.ndarray:
    """sklearn digits, standardized, random projection to ``d``, replicated with noise."""
    base = load_digits().data.astype(np.float64)
    base = (base - base.mean(0)) / (base.std(0) + 1e-9)
    proj = rng.standard_normal((base.shape[1], d)) / np.sqrt(d)
    feats = (base @ proj).astype(np.float32)
    sq = (feats**2).sum(1)
    dist = sq[:, None] + sq[None, :] - 2.0 * feats @ feats.T
    np.fill_diagonal(dist, np.inf)
    noise = 0.1 * float(np.median(np.sqrt(np.maximum(dist.min(1), 0.0))))
    x = rng.standard_normal((n, d), dtype=np.float32) * np.float32(noise / np.sqrt(d))
    x += feats[rng.integers(feats.shape[0], size=n)]
    return x


def isotropic(n: int, d: int, rng: np.random.Generator) -> np.ndarray:
    """Standard normal rows: no structure for the bound to use."""
    return rng.standard_normal((n, d), dtype=np.float32)


def timed(x: np.ndarray, budget: int, prune: bool):
    """One selection with per-step timestamps; returns the result and the step times."""
    stamps: list[float] = []
    t0 = time.perf_counter()
    res = kcenter_greedy(x, budget, rng=np.random.default_rng(0), prune=prune,
                         check_cancelled=lambda: stamps.append(time.perf_counter()))
    total = time.perf_counter() - t0
    return res, total, np.diff([*stamps, t0 + total])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--budget", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    n, d, b = args.n, args.d, args.budget
    x = mixture(2000, d, np.random.default_rng(1))
    kcenter_greedy(x, 5, labeled=x[:2])  # compile both paths outside the timing
    kcenter_greedy(x, 5, prune=False)
    print(f"machine: {platform.processor() or platform.machine()}, "
          f"{numba.get_num_threads()} threads, numba {numba.__version__}; "
          f"load average {os.getloadavg()[0]:.1f} at start")
    print(f"N = {n:,}, d = {d}, b = {b}, float32\n")
    print(f"| pool | rows read / step (mean) | last 100 steps | pruned b={b} s | pruned ms/step "
          "| unpruned ms/step | sklearn ms/step | vs unpruned | vs sklearn | same picks "
          "| load |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, make in (("mixture", mixture), ("digits", digits), ("isotropic", isotropic)):
        x = make(n, d, np.random.default_rng(0))
        best = None
        for _ in range(args.repeats if name != "isotropic" else 1):
            res, total, _ = timed(x, b, prune=True)
            if best is None or total < best[1]:
                best = (res, total)
        res, total = best
        full = name == "isotropic"  # no pruning to speak of: time the whole run too
        plain, plain_total, steps = timed(x, b if full else UNPRUNED_STEPS, prune=False)
        plain_step = plain_total / b if full else float(np.median(steps[1:]))
        sk_step = sklearn_step_seconds(x)
        frac = res.rows_read / n
        same = np.array_equal(plain.indices, res.indices[:plain.indices.size])
        print(f"| {name} | {frac.mean():.2%} | {frac[-100:].mean():.2%} | {total:.2f} | "
              f"{total / b * 1e3:.2f} | {plain_step * 1e3:.2f} | {sk_step * 1e3:.1f} | "
              f"{plain_step * b / total:.1f}x | {sk_step * b / total:.0f}x | {same} | "
              f"{os.getloadavg()[0]:.1f} |", flush=True)
        del x, res, plain
        gc.collect()


if __name__ == "__main__":
    main()
