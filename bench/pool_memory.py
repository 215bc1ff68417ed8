"""Memory of a Select on a pool of many appends: concatenated copies vs reads in place.

A pool of several appends is several segments on disk. A store that concatenates
them in memory on every read holds a private copy of the pool per pool version
(a label round makes a new version), beside the pages it mapped to copy from. A
store that compacts the segments once into one file (``assay.server.pools.
compaction``) reads every later version as one memory-mapped view of that file.

For each pool (float32 ``embeddings`` with coreset, float32 ``probs`` with
entropy; ``--appends`` appends of ``--mb`` MB each, written through the
``PoolStore`` append API), a fresh child process per run

1. imports everything and runs the strategy once on a tiny array (JIT warm-up),
   opens the store, resets the kernel's peak-RSS mark and reads its RSS: the
   baseline;
2. loads the pool and selects (``--budget`` items): "first select", the peak RSS
   above the baseline;
3. five label rounds (label ``--label`` items, load, select again): the RSS
   held after them, and the peak over all of it.

The wall time of the first load (with the compaction, for ``compact``) is shown
too: compacting writes the pool once more and fsyncs it.

Figures are ratios to the pool's data bytes; best and median over ``--repeats``
children, each on its own copy of the pool (hard links), so every run starts from
the uncompacted segments. ``concat`` is the store that concatenates; ``compact``
is ``PoolStore``, which compacts on first read; "concat" is the reference,
``ConcatenatingPoolStore`` below, which concatenates per version as the store did.

    python bench/pool_memory.py                  # 10 x 20 MB per pool, 2 repeats
    python bench/pool_memory.py --mb 2 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np

from assay.server.pools.store import ArraySpec, PoolData, PoolStore, check_pool_id

MB = 1e6
CHUNK = 1 << 20
POOL = "bench"
#: case -> (role, trailing width, strategy)
CASES = {
    "embeddings/coreset": ("embeddings", 128, "coreset"),
    "probs/entropy": ("probs", 100, "entropy"),
}
MODES = ("concat", "compact")


class ConcatenatingPoolStore(PoolStore):
    """The reference: a pool of several segments read as one ``np.concatenate`` per
    new version, the last four versions cached (what the store did before it
    compacted; a label round is a new version)."""

    def load(self, pool_id: str) -> PoolData:
        check_pool_id(pool_id)
        with self._lock:
            row = self._row(pool_id)
            versions = self.__dict__.setdefault("_versions", OrderedDict())
            if (pool_id, row[3]) in versions:
                return versions[(pool_id, row[3])]
            info = self._info(row)
            segs = self._segments(pool_id)
            lab = np.array(self._db.execute(
                "SELECT item, label FROM labels WHERE pool_id = ? ORDER BY item",
                (pool_id,)).fetchall(), dtype=np.int64).reshape(-1, 2)
        data = PoolData(info, self._map(info, segs), lab[:, 0].copy(), lab[:, 1].copy())
        with self._lock:
            versions[(pool_id, row[3])] = data
            while len(versions) > self._cache_entries:
                versions.popitem(last=False)
        return data


# -- building the pools ----------------------------------------------------------------


def _rows(rng: np.random.Generator, role: str, n: int, width: int) -> np.ndarray:
    if role == "probs":
        p = rng.random((n, width), dtype=np.float32) + np.float32(1e-3)
        return p / p.sum(axis=1, keepdims=True)
    return rng.standard_normal((n, width), dtype=np.float32)


def build(data_dir: Path, case: str, appends: int, mb: float, seed: int = 0) -> int:
    """A pool of ``appends`` appends of about ``mb`` MB each; returns its data bytes."""
    role, width, _ = CASES[case]
    n = max(1, int(mb * MB) // (4 * width))
    rng = np.random.default_rng(seed)
    store = PoolStore(data_dir, min_free_bytes=0)
    try:
        store.create_pool(POOL)
        for _ in range(appends):
            array = _rows(rng, role, n, width)
            writer = store.begin_append(POOL, [ArraySpec(role, "<f4", array.shape)])
            payload = memoryview(array).cast("B")
            for offset in range(0, len(payload), CHUNK):
                writer.write(0, offset, bytes(payload[offset:offset + CHUNK]))
            writer.commit()
        return store.get_pool(POOL).size_bytes
    finally:
        store.close()


def clone(src: Path, dst: Path) -> None:
    """A copy of a closed store whose segment files are hard links (so it costs no
    disk and a compaction in the copy leaves ``src`` as it was); SQLite files are copied."""
    shutil.copytree(src, dst, copy_function=os.link)
    for db in dst.glob("assay.sqlite*"):
        db.unlink()
        shutil.copy2(src / db.name, db)


# -- one measured run (child process) --------------------------------------------------


def _status(field: str) -> int:
    """``VmRSS``/``VmHWM`` of this process, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak() -> None:
    """Make the peak-RSS mark (``VmHWM``, ``ru_maxrss``) the current RSS (Linux >= 4.0)."""
    Path("/proc/self/clear_refs").write_text("5")


def child(data_dir: Path, case: str, mode: str, budget: int, label: int) -> dict:
    from assay.server.acquisition import selection

    role, width, strategy = CASES[case]

    def run(arrays: dict[str, np.ndarray], labeled: np.ndarray) -> None:
        arrays = dict(arrays)
        if role == "embeddings" and labeled.size:
            arrays["labeled_embeddings"] = arrays["embeddings"][labeled]
        selection.select(strategy, budget, arrays, seed=0, exclude=labeled, validated=True)

    # Warm-up: the same calls on a tiny pool, so every code path the rounds take (the
    # labeled paths, FAISS past its labeled minimum) is compiled and loaded before the
    # baseline, and JIT compilation is not counted as pool memory.
    tiny = {role: _rows(np.random.default_rng(1), role, 6 * label + budget, width)}
    for r in range(6):
        run(tiny, np.arange(r * label, dtype=np.int64))
    store = (ConcatenatingPoolStore if mode == "concat" else PoolStore)(data_dir, min_free_bytes=0)
    pool_bytes = store.get_pool(POOL).size_bytes
    _reset_peak()
    base = _status("VmRSS")
    started = time.perf_counter()
    data = store.load(POOL)
    load_s = time.perf_counter() - started
    run(data.arrays, data.labeled)
    first = _status("VmHWM") - base
    n = store.get_pool(POOL).item_count
    for r in range(5):
        items = np.arange(r * label, (r + 1) * label, dtype=np.int64) % n
        store.label(POOL, items, items % 2)
        data = store.load(POOL)
        run(data.arrays, data.labeled)
    held, peak = _status("VmRSS") - base, _status("VmHWM") - base
    segments = store._db.execute("SELECT COUNT(*) FROM segments").fetchone()[0]
    store.close()
    return {"first": first / pool_bytes, "held": held / pool_bytes, "peak": peak / pool_bytes,
            "segments": segments, "load_s": load_s}


# -- driver ----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--appends", type=int, default=10)
    parser.add_argument("--mb", type=float, default=20.0, help="MB per append")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--budget", type=int, default=10)
    parser.add_argument("--label", type=int, default=50,
                        help="items labeled per round (5 rounds; from 256 labeled items "
                             "coreset finds the nearest centres with FAISS)")
    parser.add_argument("--child", nargs=3, metavar=("DATA_DIR", "CASE", "MODE"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        data_dir, case, mode = args.child
        print(json.dumps(child(Path(data_dir), case, mode, args.budget, args.label)))
        return {}

    store_name = PoolStore.__name__
    print(f"pools of {args.appends} appends x {args.mb:g} MB (float32); budget {args.budget}; "
          f"{args.repeats} runs each; compact = {store_name}; load {_load()}")
    print("RSS above the baseline, as a multiple of the pool's data bytes (best / median):")
    print(f"{'case':<20} {'store':<8} {'first select':>14} {'after 5 label rounds':>22} "
          f"{'peak':>14}  segments  first load s")
    results = {}
    with tempfile.TemporaryDirectory(prefix="assay-pool-memory-") as tmp:
        for case in CASES:
            source = Path(tmp) / case.replace("/", "-")
            size = build(source, case, args.appends, args.mb)
            runs: dict[str, list[dict]] = {m: [] for m in MODES}
            for i in range(args.repeats):
                for mode in MODES:  # interleaved, so load falls on both alike
                    copy = Path(tmp) / f"run-{i}-{mode}"
                    clone(source, copy)
                    out = subprocess.run(
                        [sys.executable, __file__, "--budget", str(args.budget), "--label",
                         str(args.label), "--child", str(copy), case, mode],
                        capture_output=True, text=True)
                    if out.returncode:
                        raise SystemExit(f"{case} {mode} run failed:\n{out.stderr}")
                    runs[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
                    shutil.rmtree(copy)
            for mode in MODES:
                cells = [_cell([r[k] for r in runs[mode]]) for k in ("first", "held", "peak")]
                print(f"{case:<20} {mode:<8} {cells[0]:>14} {cells[1]:>22} {cells[2]:>14}  "
                      f"{runs[mode][-1]['segments']:>8}  "
                      f"{_cell([r['load_s'] for r in runs[mode]])}")
                results[(case, mode)] = runs[mode]
            print(f"{'':<20} pool {size / MB:.0f} MB")
    print(f"load {_load()}")
    return results


def _cell(values: list[float]) -> str:
    return f"{min(values):.2f} / {statistics.median(values):.2f}"


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


if __name__ == "__main__":
    main()
