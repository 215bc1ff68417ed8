"""Per-item score strategies in-process, against the machine's read roof.

For least_confident, margin and entropy on probs N x C and variation_ratio and
bald on samples S x N x C (float32, b = 100, validated inputs), each repeat times
in turn: a parallel Numba sum over the same bytes (the read roof: bench/roofline.py's
sum, over the array viewed as rows of about 1000 values), the computation as it
was before the shortlists (kept here: one float64 pass per item by the previous row
kernels or NumPy, ``probs`` derived eagerly from samples, ``argselect`` over all N
scores), and
``acquisition.selection.select`` now, without and with a seed. Prints best and
median of each, GB/s of input read, the ratio to the roof in the same run, the
load average before and after, and baal's BALD on the same samples when baal is
importable. Every "now" answer is checked equal to the "before" one.

    python bench/scores.py                      # 2M x 10 probs, 10 x 1M x 10 samples
    python bench/scores.py --n 200000 --repeats 3
    python bench/scores.py --strategies entropy --repeats 9
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path

import numba
import numpy as np
from numba import njit, prange
from roofline import _chunked_sum
from scipy.special import entr

from assay.kernels import rowwise
from assay.server.acquisition.selection import select
from assay.vocab.ties import argselect

# -- the computation before the shortlists ----------------------------------------------


def _old_entropy_rows(p):
    n, c = p.shape
    out = np.empty(n, dtype=np.float64)
    for i in prange(n):
        acc = 0.0
        for j in range(c):
            v = min(max(np.float64(p[i, j]), 0.0), 1.0)
            if v > 0.0:
                acc -= v * math.log(v)
        out[i] = acc
    return out


def _old_least_confident_rows(p):
    n, c = p.shape
    out = np.empty(n, dtype=np.float64)
    for i in prange(n):
        best = 0.0
        for j in range(c):
            best = max(best, min(max(np.float64(p[i, j]), 0.0), 1.0))
        out[i] = 1.0 - best
    return out


def _old_margin_rows(p):
    n, c = p.shape
    out = np.empty(n, dtype=np.float64)
    for i in prange(n):
        first = -1.0
        second = -1.0
        for j in range(c):
            v = min(max(np.float64(p[i, j]), 0.0), 1.0)
            if v > first:
                second = first
                first = v
            elif v > second:
                second = v
        out[i] = -(first - second)
    return out


_OLD_ROWS = {
    "least_confident": _old_least_confident_rows,
    "margin": _old_margin_rows,
    "entropy": _old_entropy_rows,
}
_OLD_ROWS = {k: (njit(nogil=True)(f), njit(parallel=True, nogil=True)(f))
             for k, f in _OLD_ROWS.items()}


def _before_probs(name: str, probs: np.ndarray, budget: int) -> tuple[np.ndarray, np.ndarray]:
    serial, parallel = _OLD_ROWS[name]
    rows = np.ascontiguousarray(probs).view()
    rows.flags.writeable = False
    scores = (parallel if rows.size >= 1 << 20 else serial)(rows)
    picked = argselect(scores, budget, np.arange(rows.shape[0], dtype=np.int64))
    return picked, scores[picked]


def _before_samples(name: str, samples: np.ndarray, budget: int) -> tuple[np.ndarray, np.ndarray]:
    np.asarray(samples, dtype=np.float64).mean(axis=0)  # probs, derived for every Select
    if name == "bald":
        p = np.clip(np.asarray(samples, dtype=np.float64), 0.0, 1.0)
        scores = entr(p.mean(axis=0)).sum(axis=-1) - entr(p).sum(axis=-1).mean(axis=0)
    else:
        s, n, c = samples.shape
        votes = samples.argmax(axis=2)
        counts = np.zeros((n, c), dtype=np.int64)
        rows = np.arange(n)
        for member in range(s):
            counts[rows, votes[member]] += 1
        scores = 1.0 - counts.max(axis=1) / s
    picked = argselect(scores, budget, np.arange(samples.shape[1], dtype=np.int64))
    return picked, scores[picked]


# -- measurement ------------------------------------------------------------------------


def _roof_rows(data: np.ndarray) -> np.ndarray:
    """The same bytes as rows of about 1000 values, for bench/roofline.py's sum (its
    inner loop over a row vectorizes only when the row is long)."""
    flat = data.reshape(-1)
    width = next(w for w in range(1024, 0, -1) if flat.size % w == 0)
    return flat.reshape(-1, width)


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def _machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{model}, {os.cpu_count()} cores, Numba {numba.__version__} "
            f"({numba.get_num_threads()} threads), NumPy {np.__version__}")


def _timed(fn) -> tuple[float, object]:
    started = time.perf_counter()
    out = fn()
    return time.perf_counter() - started, out


def _stats(times: list[float]) -> tuple[float, float]:
    return min(times), statistics.median(times)


def _row(name: str, shape: str, nbytes: int, t: dict[str, list[float]]) -> dict:
    roof, before, after, seeded = (_stats(t[k]) for k in ("roof", "before", "after", "seeded"))
    return {
        "strategy": name, "input": shape, "bytes": nbytes,
        "roof_s": roof, "before_s": before, "after_s": after, "seeded_s": seeded,
        "roof_gbs": nbytes / roof[0] / 1e9,
        "after_gbs": nbytes / after[0] / 1e9,
        "ratio_best": roof[0] / after[0],
        "ratio_median": roof[1] / after[1],
        "speedup_median": before[1] / after[1],
    }


def _measure(name: str, arrays: dict, budget: int, repeats: int) -> dict[str, list[float]]:
    data = next(iter(arrays.values()))
    flat = _roof_rows(data)
    nchunks = numba.get_num_threads() * 4
    before = _before_probs if "probs" in arrays else _before_samples
    _chunked_sum(flat, nchunks)
    select(name, budget, arrays, validated=True)  # compile
    select(name, budget, arrays, validated=True, seed=1)
    # the kernels for this width compile (or load from the disk cache) in the
    # background while the generic ones answer: time the width's kernels
    rowwise._compiler.submit(lambda: None).result()
    select(name, budget, arrays, validated=True)
    before(name, data, budget)  # compile
    t: dict[str, list[float]] = {"roof": [], "before": [], "after": [], "seeded": []}
    for _ in range(repeats):  # interleaved, so a load change hits all alike
        t["roof"].append(_timed(lambda: _chunked_sum(flat, nchunks))[0])
        seconds, old = _timed(lambda: before(name, data, budget))
        t["before"].append(seconds)
        seconds, new = _timed(lambda: select(name, budget, arrays, validated=True))
        t["after"].append(seconds)
        t["seeded"].append(_timed(
            lambda: select(name, budget, arrays, validated=True, seed=1))[0])
        if not (np.array_equal(new.indices, old[0]) and np.array_equal(new.scores, old[1])):
            # bald's float64 sums now run in member/class order, NumPy's pairwise:
            # the scores may differ in the last bits, never beyond the rounding
            ok = (np.allclose(new.scores, old[1], rtol=1e-12, atol=1e-14)
                  and np.allclose(np.sort(new.scores), np.sort(old[1]), rtol=1e-12))
            if not ok:
                raise SystemExit(f"{name}: the answer changed")
    return t


def _baal(samples: np.ndarray, budget: int, repeats: int) -> tuple[float, float] | None:
    try:
        from baal.active.heuristics import BALD
    except ImportError:
        return None
    layout = np.ascontiguousarray(samples.transpose(1, 2, 0))  # baal's [N, C, S]
    heuristic = BALD()
    times = []
    for _ in range(repeats):
        times.append(_timed(lambda: heuristic(layout)[:budget])[0])
    return _stats(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2_000_000, help="items of probs")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--members", type=int, default=10, help="S of samples")
    parser.add_argument("--budget", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--strategies", default="least_confident,margin,entropy,"
                        "variation_ratio,bald", help="comma-separated subset to time")
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args()

    load_start = _load()
    print(f"machine: {_machine()}; load {load_start} at start", flush=True)
    rng = np.random.default_rng(0)
    c = args.classes
    probs = rng.dirichlet(np.ones(c), size=args.n).astype(np.float32)
    m = args.n // 2
    samples = None
    if {"variation_ratio", "bald"} & set(args.strategies.split(",")):
        samples = rng.dirichlet(np.ones(c), size=(args.members, m)).astype(np.float32)
    rows = []
    chosen = args.strategies.split(",")
    for name in (n for n in ("least_confident", "margin", "entropy") if n in chosen):
        t = _measure(name, {"probs": probs}, args.budget, args.repeats)
        rows.append(_row(name, f"probs {args.n}x{c} fp32", probs.nbytes, t))
        print(f"  {name}: done, load {_load()}", flush=True)
    for name in (n for n in ("variation_ratio", "bald") if n in chosen):
        t = _measure(name, {"samples": samples}, args.budget, args.repeats)
        rows.append(_row(name, f"samples {args.members}x{m}x{c} fp32", samples.nbytes, t))
        print(f"  {name}: done, load {_load()}", flush=True)
    baal = _baal(samples, args.budget, max(3, args.repeats // 2)) if "bald" in chosen else None
    load_end = _load()

    def ms(pair):
        return f"{pair[0] * 1e3:.0f} / {pair[1] * 1e3:.0f}"

    print("\n| strategy | input | read roof ms | before ms | now ms | now, seeded ms "
          "| now GB/s | roof GB/s | now / roof (best, median) | speed-up (median) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['strategy']} | {r['input']} | {ms(r['roof_s'])} | {ms(r['before_s'])} "
              f"| {ms(r['after_s'])} | {ms(r['seeded_s'])} | {r['after_gbs']:.1f} "
              f"| {r['roof_gbs']:.1f} | {r['ratio_best']:.2f}, {r['ratio_median']:.2f} "
              f"| {r['speedup_median']:.1f}x |")
    print("\nms: best / median of", args.repeats, "repeats (baal:", max(3, args.repeats // 2),
          "); GB/s from the best")
    if baal is not None:
        print(f"baal 2.1 BALD (NumPy, [N, C, S] layout, ranks all items): {ms(baal)} ms")
    elif "bald" in chosen:
        print("baal: not importable")
    print(f"load {load_start} at start, {load_end} at end")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"machine": _machine(), "load_start": load_start, "load_end": load_end,
             "rows": rows, "baal_bald_s": baal}, indent=1))


if __name__ == "__main__":
    main()
