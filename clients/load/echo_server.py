"""A raw grpcio echo server: the floor a Python gRPC service can reach for a payload size.

``/assay.bench.Echo/Echo`` takes any bytes and answers ``--response-bytes`` of them, with the
same executor size and message limits as ``assay serve``, and no deserialization at all. The
load scenarios compare Select throughput against it in the same run.

    python clients/load/echo_server.py --address 127.0.0.1:0 --workers 8 --response-bytes 1700
"""

from __future__ import annotations

import argparse
import signal
import threading
from concurrent import futures

import grpc


def serve(address: str, workers: int, response_bytes: int) -> tuple[grpc.Server, int]:
    def echo(request: bytes, context) -> bytes:
        return request[:response_bytes]

    handler = grpc.method_handlers_generic_handler("assay.bench.Echo", {
        "Echo": grpc.unary_unary_rpc_method_handler(echo),  # no (de)serializers: raw bytes
    })
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers),
                         handlers=[handler],
                         options=[("grpc.max_receive_message_length", 64 << 20),
                                  ("grpc.max_send_message_length", 64 << 20),
                                  ("grpc.so_reuseport", 0)])
    port = server.add_insecure_port(address)
    server.start()
    return server, port


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--address", default="127.0.0.1:0")
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--response-bytes", type=int, default=1700)
    args = p.parse_args()
    host = args.address.rsplit(":", 1)[0]
    if host not in ("127.0.0.1", "localhost", "[::1]"):
        raise SystemExit("the echo server is a benchmark tool: loopback addresses only")
    server, port = serve(args.address, args.workers, args.response_bytes)
    print(f"echo listening on {host}:{port}", flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: done.set())
    signal.signal(signal.SIGINT, lambda *a: done.set())
    done.wait()
    server.stop(1).wait()


if __name__ == "__main__":
    main()
