"""Distributed k-center greedy on Ray vs the single-process kernel, and the per-step
overhead of the Ray round trip.

Run: ``python bench/scaleout.py [--n 4000000] [--d 128] [--b 100] [--cpus 2]``.
One local Ray instance (loopback, no dashboard, ``--cpus`` CPUs); the pool is
appended once per shard count (1, 2 and 4 shards). For each, the same selection
runs three ways and must agree: the single-process ``kcenter_greedy``, the
distributed driver over in-process shards (no Ray: the cost of the protocol
alone), and the distributed driver over Ray actors. The Ray overhead per step is
measured directly as the round trip of an empty call to every shard, and
indirectly as (Ray step time - in-process step time). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=4_000_000)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--b", type=int, default=100)
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--shards", type=int, nargs="+", default=[1, 2, 4])
    args = ap.parse_args()

    import numba
    import ray

    from assay.kernels.kcenter import kcenter_greedy
    from assay.server.scaleout import cluster
    from assay.server.scaleout.backend import ShardedPools
    from assay.server.scaleout.kcenter import kcenter

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
                out["runs"].append(_run(x, args, shards, tmp, single, kcenter,
                                        ShardedPools, ray))
            finally:
                cluster.shutdown()
    print(json.dumps(out, indent=2))


def _run(x, args, shards, tmp, single, kcenter, ShardedPools, ray) -> dict:
    results = {"shards": shards}
    for mode in ("in-process", "ray"):
        # Ray actors share the CPUs: each gets its share of threads, not all of them.
        threads = 0 if mode == "in-process" else max(1, args.cpus // shards)
        pools = ShardedPools(f"{tmp}/{mode}-{shards}", threads=threads, actor_cpus=0,
                             local_shards=mode == "in-process")
        pid = f"bench-{shards}"
        pools.create_pool(pid, shards)
        step = 1 << 19  # appends of 256 MiB at d = 128
        for lo in range(0, args.n, step):
            pools.append_arrays(pid, {"embeddings": x[lo:lo + step]})
        with pools.session(pid, np.empty(0, np.int64)) as s:
            kcenter(s, 2, labeled=None, rng=np.random.default_rng(1))  # compile in the shards
            t = time.perf_counter()
            r = kcenter(s, args.b, labeled=None, rng=np.random.default_rng(1))
            total = time.perf_counter() - t
            if mode == "ray":
                group = s.group
                t = time.perf_counter()
                for _ in range(200):
                    group.map("pid")
                results["empty_round_trip_ms"] = 1e3 * (time.perf_counter() - t) / 200
        assert np.array_equal(r.indices, single.indices), f"{mode} {shards}: picks differ"
        results[mode] = {"total_s": total, "step_ms_median": 1e3 * float(np.median(
            r.step_seconds)), "step_ms_mean": 1e3 * float(np.mean(r.step_seconds))}
        pools.delete_pool(pid)
        pools.close()
    results["ray_overhead_per_step_ms"] = (results["ray"]["step_ms_median"]
                                           - results["in-process"]["step_ms_median"])
    return results


if __name__ == "__main__":
    main()
