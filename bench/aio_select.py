"""Would ``grpc.aio`` serve inline Selects faster? The same handler, three servers.

Serves ``AssayServicer.Select`` (10,000 x 10 entropy, b = 100, a request id on every call;
no interceptors, so only the transport differs) from

* ``aio``: a ``grpc.aio`` server running the handler on its event loop;
* ``aio-pool``: a ``grpc.aio`` server running it on a pool of ``--threads`` threads;
* ``sync``: grpcio's synchronous server with ``--threads`` workers;

and a raw synchronous echo of the same bytes (``clients/load/echo_server.py``), each in a
process of its own, and drives them with the Go load generator in closed loop, rounds
alternating, so that load changes hit every server alike.

    python bench/aio_select.py [--rounds 2] [--concurrency 8] [--seconds 4]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from concurrent import futures

from load_scenarios import LOADGEN, ROOT, load, start

KINDS = ("aio", "aio-pool", "sync")


class _Context:
    """The few context methods the servicer asks, over either server's context."""

    def __init__(self, context):
        self._context = context

    def time_remaining(self):
        return self._context.time_remaining()

    def is_active(self):
        return True

    def add_callback(self, callback):
        return True

    def peer(self):
        return "ipv4:127.0.0.1:0"

    def invocation_metadata(self):
        return ()

    def set_trailing_metadata(self, metadata):
        pass


def serve(kind: str, threads: int, data_dir: str) -> None:
    """Run one server until killed; prints ``listening on HOST:PORT``."""
    import grpc

    from assay.server.acquisition.service import AcquisitionService, SelectSlots
    from assay.server.edge.metrics import Metrics
    from assay.server.edge.servicer import AssayServicer, EdgeLimits
    from assay.server.pools.store import PoolStore

    store = PoolStore(data_dir)
    metrics = Metrics()
    acquisition = AcquisitionService(store, models=None, max_inline_bytes=32 << 20,
                                     slots=SelectSlots(threads, 96),
                                     observe=metrics.observe_select)
    servicer = AssayServicer(store, acquisition, EdgeLimits(), metrics)
    pool = futures.ThreadPoolExecutor(threads)
    options = [("grpc.max_receive_message_length", 64 << 20), ("grpc.so_reuseport", 0)]

    def select(request, context):
        return servicer.Select(request, _Context(context))

    async def select_on_loop(request, context):
        return servicer.Select(request, _Context(context))

    behavior = select_on_loop if kind == "aio" else select
    handler = grpc.method_handlers_generic_handler("assay.v1.AssayService", {
        "Select": grpc.unary_unary_rpc_method_handler(behavior)})
    if kind == "sync":
        server = grpc.server(pool, handlers=[handler], options=options)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        print(f"listening on 127.0.0.1:{port}", flush=True)
        server.wait_for_termination()
        return

    async def run() -> None:
        server = grpc.aio.server(migration_thread_pool=pool, handlers=[handler],
                                 options=options)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        print(f"listening on 127.0.0.1:{port}", flush=True)
        await server.wait_for_termination()

    asyncio.run(run())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--seconds", type=int, default=4)
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--serve", choices=KINDS, help=argparse.SUPPRESS)
    p.add_argument("--data-dir", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        serve(args.serve, args.threads, args.data_dir)
        return
    if not LOADGEN.exists():
        sys.exit(f"{LOADGEN} is missing: run bash clients/go/build.sh")
    servers = {"echo": start([sys.executable, str(ROOT / "clients" / "load" / "echo_server.py"),
                              "--response-bytes", "1700"], "echo listening")}
    data = tempfile.TemporaryDirectory(prefix="assay-aio-")
    for kind in KINDS:
        servers[kind] = start([sys.executable, __file__, "--serve", kind, "--threads",
                               str(args.threads), "--data-dir", f"{data.name}/{kind}"],
                              "listening")
    rates: dict[str, list[float]] = {name: [] for name in servers}
    try:
        for name, (_, port) in servers.items():  # warm-up: the kernels' width twins compile
            load(port, *(["-method", "echo"] if name == "echo" else []), "-mode", "closed",
                 "-concurrency", "4", "-duration", "3s", "-warmup", "0s")
        print("load before", *os.getloadavg())
        for _ in range(args.rounds):
            for name, (_, port) in servers.items():
                method = ["-method", "echo"] if name == "echo" else []
                r = load(port, *method, "-mode", "closed", "-concurrency",
                         str(args.concurrency), "-duration", f"{args.seconds}s",
                         "-warmup", "1s")
                rates[name].append(r["throughput_rps"])
    finally:
        for proc, _ in servers.values():
            proc.kill()
            proc.wait()
        data.cleanup()
    print("load after", *os.getloadavg())
    print(f"closed loop, {args.concurrency} in flight, {args.rounds} rounds of "
          f"{args.seconds} s; calls/s per round")
    for name, got in rates.items():
        ratio = max(got) / max(rates["echo"])
        print(f"  {name:9s} {', '.join(f'{r:.0f}' for r in got):24s} best / echo's best "
              f"{ratio:.2f}")


if __name__ == "__main__":
    main()
