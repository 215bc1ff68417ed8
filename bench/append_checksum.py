"""What binding an append's data to its request id costs the upload.

An ``AppendPoolItems`` stream with a ``request_id`` is CRC32C'd chunk by chunk as
it arrives (``assay.server.edge.idempotency.StreamDigest``), and its request record is
written in the commit transaction; one without a request id does neither. This
alternates the two on the same server and array, one new pool per upload, and
prints best and median MB/s of each, their ratio, and CRC32C's own speed on the
same payload, with the machine line and load average of bench/service.py.

The end-to-end figures swing with the load of a shared machine, so the store's
receive path is also timed alone, in this process and without gRPC: the same
chunks written through ``AppendWriter`` to commit, with and without feeding a
``StreamDigest``, alternating; wall and process CPU time.

    python bench/append_checksum.py            # 40 MB, 8 rounds
    python bench/append_checksum.py --n 2000000 --repeats 12
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import google_crc32c
import numpy as np
from service import CHUNK_BYTES, MB, MIB, Servers, load, machine_line, make_probs, timed

from assay.client import Client
from assay.client.tensors import enum_of
from assay.server.edge.idempotency import StreamDigest
from assay.server.pools.store import ArraySpec, PoolStore
from assay.v1 import assay_pb2 as _pb2


def _upload_without_id(client: Client, pool_id: str, probs: np.ndarray) -> None:
    """``Client.append`` always sends a request id; the same stream with the id left empty."""
    header = _pb2.AppendHeader(pool_id=pool_id)
    header.arrays.add(name="probs", dtype=enum_of(probs.dtype), shape=probs.shape)
    upload = client._channel.stream_unary(
        "/assay.v1.AssayService/AppendPoolItems", request_serializer=None,
        response_deserializer=_pb2.AppendPoolItemsResponse.FromString)
    client._call(upload, client._chunks(header, {"probs": probs}, CHUNK_BYTES))


def _direct(probs: np.ndarray, data_dir: Path, repeats: int) -> dict[str, list[tuple]]:
    """(wall, cpu) seconds of receiving ``probs`` through the store, with and without digest."""
    payload = memoryview(probs.tobytes())
    chunks = [(o, bytes(payload[o:o + CHUNK_BYTES])) for o in range(0, len(payload), CHUNK_BYTES)]
    store = PoolStore(data_dir / "direct")
    spec = [ArraySpec("probs", probs.dtype.str, probs.shape)]
    out: dict[str, list[tuple]] = {"store + CRC32C": [], "store alone": []}
    try:
        for i in range(repeats):
            for name in out:
                pool_id = f"d{i}-{len(out[name])}-{'c' if 'CRC' in name else 'n'}"
                store.create_pool(pool_id)
                wall, cpu = time.perf_counter(), time.process_time()
                writer = store.begin_append(pool_id, spec)
                digest = StreamDigest(["probs"], [len(payload)]) if "CRC" in name else None
                for offset, data in chunks:
                    if digest is not None:
                        digest.update(0, offset, data)
                    writer.write(0, offset, data)
                writer.commit()
                out[name].append((time.perf_counter() - wall, time.process_time() - cpu))
                store.delete_pool(pool_id)
    finally:
        store.close()
    return out


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="items N (float32 [N, C])")
    parser.add_argument("--c", type=int, default=10, help="classes C")
    parser.add_argument("--repeats", type=int, default=8, help="uploads of each kind")
    parser.add_argument("--data-dir", default=None, help="parent of the temp data directory")
    args = parser.parse_args(argv)

    probs = make_probs(args.n, args.c)
    nbytes = probs.nbytes
    data_dir = Path(tempfile.mkdtemp(prefix="assay-bench-", dir=args.data_dir))
    print(machine_line(data_dir))
    print(f"workload: AppendPoolItems of float32 [{args.n}, {args.c}] ({nbytes / MB:.1f} MB) "
          f"in {CHUNK_BYTES // MIB} MiB chunks, {args.repeats} uploads each way, alternating",
          flush=True)
    payload = probs.tobytes()
    crc = [timed(lambda: google_crc32c.value(payload)) for _ in range(5)]
    limit = max(64 * MIB, 2 * nbytes + MIB)
    servers = Servers(data_dir, limit)
    times: dict[str, list[float]] = {"with request_id (CRC32C + record)": [],
                                     "without request_id": []}
    try:
        _, port = servers.start()
        with Client(f"127.0.0.1:{port}", max_message_bytes=limit, timeout=300) as client:
            client.create_pool("warm")
            client.append("warm", probs=probs)  # first-use costs out of the way
            for i in range(args.repeats):
                for name, call in (
                        ("with request_id (CRC32C + record)",
                         lambda pid: client.append(pid, probs=probs)),
                        ("without request_id", lambda pid: _upload_without_id(client, pid, probs))):
                    pool_id = f"p{i}-{len(times[name])}-{'a' if 'with ' in name else 'b'}"
                    client.create_pool(pool_id)
                    times[name].append(timed(lambda: call(pool_id)))  # noqa: B023 - called now
                    client.delete_pool(pool_id)
    finally:
        servers.stop()

    print(f"{'upload':40s} {'best MB/s':>10s} {'median MB/s':>12s}")
    rates = {}
    for name, ts in times.items():
        best, median = nbytes / min(ts) / MB, nbytes / statistics.median(ts) / MB
        rates[name] = (best, median)
        print(f"{name:40s} {best:10.0f} {median:12.0f}")
    (wb, wm), (ob, om) = rates.values()
    print(f"with / without: best {wb / ob:.3f}, median {wm / om:.3f}")
    direct = _direct(probs, data_dir, args.repeats)
    print(f"{'store receive path, no gRPC':40s} {'best MB/s':>10s} {'median MB/s':>12s} "
          f"{'CPU s (median)':>15s}")
    for name, runs in direct.items():
        walls, cpus = [w for w, _ in runs], [c for _, c in runs]
        print(f"{name:40s} {nbytes / min(walls) / MB:10.0f} "
              f"{nbytes / statistics.median(walls) / MB:12.0f} {statistics.median(cpus):15.3f}")
    print(f"CRC32C alone on the payload ({google_crc32c.implementation} implementation): "
          f"{nbytes / min(crc) / 1e9:.1f} GB/s, {min(crc) * 1e3:.1f} ms")
    shutil.rmtree(data_dir, ignore_errors=True)
    print(f"load average after: {load()}  (at {time.strftime('%H:%M:%S')})")
    return {"best_ratio": wb / ob, "median_ratio": wm / om}


if __name__ == "__main__":
    main()
