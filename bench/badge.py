"""BADGE k-means++ seeding: Assay's factorized kernel vs the reference ``init_centers``
(materialized gradient embeddings) vs a quick factorized NumPy version.

Run: ``python bench/badge.py``. Every variant runs in its own process so its peak
RSS (``ru_maxrss``) is its own; inputs are generated in that process too, and the
ratio is peak RSS over the bytes of the inputs (probs + embeddings); the runtime
(interpreter, NumPy, SciPy, scikit-learn, Numba) is measured before the inputs exist
and reported separately.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

import numpy as np


def inputs(n: int, c: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((n, c), dtype=np.float32) * 3
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    return p, rng.standard_normal((n, d), dtype=np.float32)


def run_one(variant: str, n: int, c: int, d: int, b: int) -> dict:
    from badge_reference import factorized_numpy, gradient_embeddings, init_centers

    from assay.kernels.badge import badge_kmeanspp

    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # the runtime
    p, h = inputs(n, c, d)
    stamps: list[float] = []
    t = time.perf_counter()
    if variant == "assay":
        badge_kmeanspp(p[:500], h[:500], 3)  # compile outside the timing
        t = time.perf_counter()
        picks = badge_kmeanspp(p, h, b, rng=np.random.default_rng(1),
                               check_cancelled=lambda: stamps.append(time.perf_counter())
                               ).indices.tolist()
    elif variant == "init_centers":
        picks = init_centers(gradient_embeddings(p, h), b, np.random.default_rng(1))
    else:
        picks = factorized_numpy(p, h, b, np.random.default_rng(1))
    total = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    step = float(np.min(np.diff(stamps))) if len(stamps) > 2 else total / max(b - 1, 1)
    return {"variant": variant, "seconds": total, "step": step, "picks": picks,
            "input_bytes": p.nbytes + h.nbytes, "peak_rss": peak, "base_rss": base_rss}


def measure(variant: str, n: int, c: int, d: int, b: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--one", variant, str(n), str(c), str(d),
                          str(b)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    from roofline import read_bandwidth

    # Children first: Linux carries the high-water RSS across fork + exec, so the
    # 2 GB bandwidth array must not exist yet when they start.
    rows = []
    for n, c, d, b, variants in ((50_000, 10, 512, 10, ("assay", "numpy", "init_centers")),
                                 (1_000_000, 10, 512, 100, ("assay", "numpy"))):
        ref = None
        for v in variants:
            r = measure(v, n, c, d, b)
            ref = ref or r["picks"]
            rows.append((n, c, d, b, v, r, r["picks"] == ref))
    bw = read_bandwidth()
    print(f"measured read bandwidth: {bw / 1e9:.1f} GB/s\n")
    print("| N | C | d | b | variant | total s | s/step | % read BW per step | peak RSS GB "
          "| peak RSS / inputs | (peak - runtime) / inputs | same picks as assay |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for n, c, d, b, v, r, same in rows:
        step_bytes = n * d * 4 + n * c * 4
        extra = (r["peak_rss"] - r["base_rss"]) / r["input_bytes"]
        print(f"| {n:,} | {c} | {d} | {b} | {v} | {r['seconds']:.2f} | {r['step']:.4f} | "
              f"{step_bytes / r['step'] / bw:.0%} | {r['peak_rss'] / 1e9:.2f} | "
              f"{r['peak_rss'] / r['input_bytes']:.2f} | {extra:.2f} | {same} |")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--one":
        variant, *nums = sys.argv[2:]
        print(json.dumps(run_one(variant, *map(int, nums))))
    else:
        main()
