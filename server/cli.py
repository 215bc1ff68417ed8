"""Command line: ``assay serve``, ``assay demo``, ``assay health``."""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import fields

from assay.server.config import ServerConfig


def _serve_parser(sub) -> None:
    p = sub.add_parser("serve", help="run the gRPC service",
                       description="Every flag can also be set as ASSAY_<FLAG> (e.g. "
                                   "ASSAY_DATA_DIR); flags win.")
    for f in fields(ServerConfig):
        kind = {"int": int, "float": float}.get(str(f.type), str)
        p.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=kind, default=None,
                       help=f"{f.metadata['help']} [env {ServerConfig.env_name(f.name)}]")
    p.add_argument("--log-level", default="INFO")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="assay", description="Active-learning acquisition "
                                     "service (gRPC).")
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    d = sub.add_parser("demo", help="run an active-learning loop end to end through gRPC")
    d.add_argument("--target", help="use a running server instead of starting one")
    d.add_argument("--rounds", type=int, default=10)
    d.add_argument("--batch", type=int, default=20)
    d.add_argument("--seeds", type=int, default=3)
    d.add_argument("--strategies", default="random,entropy,margin,least_confident,bald")
    d.add_argument("--plot", default="assay-demo.png", help="PNG learning-curve path")
    h = sub.add_parser("health", help="check a server's grpc.health.v1 status (exit 0 if SERVING)")
    h.add_argument("--target", default="127.0.0.1:50051")
    h.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args(argv)

    if args.command == "serve":
        logging.basicConfig(level=args.log_level.upper(),
                            format="%(asctime)s %(levelname)s %(name)s %(message)s")
        from assay.server.app import serve_forever
        overrides = {f.name: getattr(args, f.name) for f in fields(ServerConfig)}
        serve_forever(ServerConfig.from_env(**overrides))
        return 0
    if args.command == "demo":
        from assay.server.demo import run_demo
        return run_demo(target=args.target, rounds=args.rounds, batch=args.batch,
                        seeds=args.seeds, strategies=args.strategies.split(","), plot=args.plot)
    if args.command == "health":
        return _health(args.target, args.timeout)
    return 2


def _health(target: str, timeout: float) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    with grpc.insecure_channel(target) as channel:
        try:
            r = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                          timeout=timeout)
        except grpc.RpcError as error:
            print(f"unhealthy: {error.code().name} {error.details()}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)
    print(status)
    return 0 if r.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main())
