"""k-center greedy per step: Assay's fused kernel vs the sklearn-pairwise reference vs a
plain NumPy loop, same inputs, with the measured read bandwidth as the roofline.

Run: ``python bench/kcenter.py [--quick]``. Per-step times are the fastest of a few
steps (the machine is shared, so the minimum is the least disturbed figure): the
kernel's ``KERNEL_STEPS`` steps of a real selection, timed between its per-step
callbacks; the references' ``REF_STEPS`` steps each, since a full b = 1000 run would
take many minutes. Totals for b in {100, 1000} are per-step time x b, extrapolated.
"""

from __future__ import annotations

import argparse
import gc
import platform
import time

import ml_dtypes
import numba
import numpy as np
from roofline import read_bandwidth
from sklearn.metrics import pairwise_distances

from assay.kernels.kcenter import kcenter_greedy

KERNEL_STEPS = 20
REF_STEPS = 3


def kernel_step_seconds(x: np.ndarray) -> float:
    """Fastest step of a real selection, timed between the kernel's per-step callbacks."""
    kcenter_greedy(x[:1000], 3)  # compile outside the timing
    stamps: list[float] = []
    kcenter_greedy(x, KERNEL_STEPS, rng=np.random.default_rng(0),
                   check_cancelled=lambda: stamps.append(time.perf_counter()))
    return float(np.min(np.diff(stamps)))


def sklearn_step_seconds(x: np.ndarray) -> float:
    """The reference's step: pairwise_distances to the new centre, np.minimum, argmax."""
    mind = pairwise_distances(x, x[:1], metric="euclidean")
    times = []
    for _ in range(REF_STEPS):
        t = time.perf_counter()
        dist = pairwise_distances(x, x[[int(np.argmax(mind))]], metric="euclidean")
        mind = np.minimum(mind, dist)
        int(np.argmax(mind))
        times.append(time.perf_counter() - t)
    return float(np.min(times))


def numpy_step_seconds(x: np.ndarray) -> float:
    """A plain NumPy loop step: ((x - c)^2).sum(1), minimum, argmax."""
    mind = np.full(x.shape[0], np.inf, dtype=np.float32)
    times = []
    for s in range(REF_STEPS):
        t = time.perf_counter()
        c = x[int(np.argmax(mind)) if s else 0].astype(np.float32)
        dist = ((x - c) ** 2).sum(axis=1, dtype=np.float32)
        np.minimum(mind, dist, out=mind)
        int(np.argmax(mind))
        times.append(time.perf_counter() - t)
    return float(np.min(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="N = 100k only")
    args = ap.parse_args()
    bw = read_bandwidth()
    print(f"machine: {platform.processor() or platform.machine()}, {numba.get_num_threads()} "
          f"threads, numba {numba.__version__}, threading layer after first kernel")
    print(f"measured read bandwidth (parallel sum over 2 GB): {bw / 1e9:.1f} GB/s\n")
    print("| N | d | dtype | Assay ms/step | % of read BW | sklearn ms/step | NumPy ms/step "
          "| vs sklearn | vs NumPy | vs float32 kernel | Assay b=100 s | Assay b=1000 s "
          "| sklearn b=1000 s (extrap.) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    sizes = [100_000] if args.quick else [100_000, 1_000_000]
    rng = np.random.default_rng(0)
    for n in sizes:
        for d in (128, 512):
            base = rng.standard_normal((n, d), dtype=np.float32)
            f32_step = None
            for dtype in (np.float32, np.float16, ml_dtypes.bfloat16):
                x = base if dtype is np.float32 else base.astype(dtype)
                k = kernel_step_seconds(x)
                f32_step = f32_step or k
                sk = sklearn_step_seconds(base) if dtype is np.float32 else np.nan
                npy = numpy_step_seconds(base) if dtype is np.float32 else np.nan
                frac = x.nbytes / k / bw
                print(f"| {n:,} | {d} | {np.dtype(dtype).name} | {k * 1e3:.2f} | {frac:.0%} | "
                      f"{sk * 1e3:.1f} | {npy * 1e3:.1f} | {sk / k:.1f}x | {npy / k:.1f}x | "
                      f"{f32_step / k:.2f}x | {k * 100:.2f} | {k * 1000:.1f} | "
                      f"{sk * 1000:.0f} |", flush=True)
                del x
                gc.collect()
            del base
            gc.collect()


if __name__ == "__main__":
    main()
