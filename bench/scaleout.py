"""Distributed k-center greedy on Ray vs the single-process kernel, and the per-step
overhead of the Ray round trip.

Run: ``python bench/scaleout.py [--n 4000000] [--d 128] [--b 100] [--cpus 2]``.
One local Ray instance (loopback, no dashboard, ``--cpus`` CPUs); the pool is
created in a ``PoolStore`` and appended once per shard count (1, 2 and 4 shards),
as the server does it: the store checks and commits each append, the
``ShardedBackend`` writes its slices to the shards. For each shard count the same
selection runs three ways and must agree: the single-process ``kcenter_greedy``,
``acquisition.sharded.select`` (``coreset``, exact) over in-process shards
(``local_shards``, as ``--ray-address in-process``: no Ray, the cost of the
protocol alone), and the same call over Ray actors. ``total_s`` is the wall time
of that call; a step is one round trip of the exact driver, timed between the
calls it makes to ``check_cancelled`` once per pick. The Ray overhead per step is
measured directly as the round trip of an empty call to every shard, and
indirectly as (Ray step time - in-process step time). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=4_000_000)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--b", type=int, default=100)
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--shards", type=int, nargs="+", default=[1, 2, 4])
    args = ap.parse_args()

    import numba

    from assay.kernels.kcenter import kcenter_greedy
    from assay.server.scaleout import cluster

    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.n, args.d), dtype=np.float32)
    kcenter_greedy(x[:1000], 3, rng=np.random.default_rng(1))  # compile outside the timing
    t = time.perf_counter()
    single = kcenter_greedy(x, args.b, rng=np.random.default_rng(1))
    single_s = time.perf_counter() - t
    out = {"n": args.n, "d": args.d, "b": args.b, "cpus": args.cpus,
           "numba_threads": numba.get_num_threads(), "machine": platform.processor() or
           platform.machine(), "single_process_s": single_s,
           "single_process_step_ms": 1e3 * single_s / args.b, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        for shards in args.shards:
            # A fresh instance per shard count: worker actors keep the thread count
            # they were started with.
            cluster.connect("local", num_cpus=args.cpus, object_store_bytes=1 << 30)
            try:
                out["runs"].append(_run(x, args, shards, tmp, single))
            finally:
                cluster.shutdown()
    print(json.dumps(out, indent=2))


def _run(x: np.ndarray, args, shards: int, tmp: str, single) -> dict:
    from assay.server.acquisition import sharded
    from assay.server.pools.store import PoolStore
    from assay.server.scaleout.backend import ShardedBackend

    results: dict = {"shards": shards}
    for mode in ("in-process", "ray"):
        # Ray actors share the CPUs: each gets its share of threads, not all of them.
        threads = 0 if mode == "in-process" else max(1, args.cpus // shards)
        root = f"{tmp}/{mode}-{shards}"
        backend = ShardedBackend(f"{root}/shards", threads=threads, actor_cpus=0,
                                 local_shards=mode == "in-process")
        store = PoolStore(root, sharded=backend)
        try:
            pid = f"bench-{shards}"
            store.create_pool(pid, shards)
            step = 1 << 19  # appends of 256 MiB at d = 128
            for lo in range(0, args.n, step):
                store.append_arrays(pid, {"embeddings": x[lo:lo + step]})
            pool = store.sharded_pool(pid)
            sharded.select(backend, pool, "coreset", 2, seed=1)  # compile in the shards
            ticks: list[float] = []
            t = time.perf_counter()
            r = sharded.select(backend, pool, "coreset", args.b, seed=1,
                               check_cancelled=lambda ticks=ticks: ticks.append(
                                   time.perf_counter()))
            total = time.perf_counter() - t
            # One tick before the driver starts, one per pick, one after the session:
            # the b - 1 gaps between the per-pick ticks are whole round trips.
            assert len(ticks) == args.b + 2, f"{len(ticks)} ticks for {args.b} picks"
            steps = np.diff(ticks[1:args.b + 1])
            if mode == "ray":
                group = backend.group(pool.uid, shards)
                t = time.perf_counter()
                for _ in range(200):
                    group.map("pid")
                results["empty_round_trip_ms"] = 1e3 * (time.perf_counter() - t) / 200
            assert np.array_equal(r.indices, single.indices), f"{mode} {shards}: picks differ"
            results[mode] = {"total_s": total,
                             "step_ms_median": 1e3 * float(np.median(steps)),
                             "step_ms_mean": 1e3 * float(np.mean(steps))}
            store.delete_pool(pid)
        finally:
            backend.close()
            store.close()
    results["ray_overhead_per_step_ms"] = (results["ray"]["step_ms_median"]
                                           - results["in-process"]["step_ms_median"])
    return results


if __name__ == "__main__":
    main()
