"""End-to-end check of a running Assay container (run by deploy/ci-setup.sh where a Docker
daemon exists): token enforced, health port answering, a pool streamed, selected from,
labeled, and selected from again.

Usage: python container_smoke.py HOST:PORT HEALTH_HOST:PORT TOKEN_FILE
"""

from __future__ import annotations

import sys
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from assay.client import AssayError, Client


def main(target: str, health_target: str, token_file: str) -> int:
    token = Path(token_file).read_text().split()[0]
    with grpc.insecure_channel(health_target) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                           timeout=10).status
    if status != health_pb2.HealthCheckResponse.SERVING:
        print(f"health port says {status}", file=sys.stderr)
        return 1
    with Client(target, timeout=10, retries=0) as anonymous:
        try:
            anonymous.list_strategies()
        except AssayError as error:
            if error.code != grpc.StatusCode.UNAUTHENTICATED:
                raise
        else:
            print("a call without a token was served", file=sys.stderr)
            return 1
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(5), size=5000).astype(np.float32)
    with Client(target, token=token, timeout=60) as client:
        client.create_pool("smoke")
        pool, _, _ = client.append("smoke", probs=probs, chunk_bytes=1 << 16)
        first = client.select("entropy", 50, pool="smoke", seed=1).indices
        client.label("smoke", first, np.zeros(first.size, dtype=np.int64))
        second = client.select("entropy", 50, pool="smoke", seed=1).indices
        if pool.item_count != 5000 or np.intersect1d(first, second).size:
            print("labeled items were selected again", file=sys.stderr)
            return 1
        client.delete_pool("smoke")
    print("container smoke: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
