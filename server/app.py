"""Builds and runs the gRPC server: servicer, health, reflection, limits, drain."""

from __future__ import annotations

import logging
import signal
import threading
from concurrent import futures
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from assay.server.config import ServerConfig
from assay.server.interceptors import ErrorInterceptor
from assay.server.metrics import Metrics
from assay.server.servicer import AssayServicer
from assay.server.store import PoolStore
from assay.v1 import assay_pb2, assay_pb2_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

log = logging.getLogger("assay.server")
SERVICE_NAME = assay_pb2.DESCRIPTOR.services_by_name["AssayService"].full_name


@dataclass
class RunningServer:
    """A started server; ``port`` is the bound port (useful with port 0)."""

    server: grpc.Server
    port: int
    store: PoolStore
    health: health.HealthServicer
    metrics: Metrics
    config: ServerConfig
    http: ThreadingHTTPServer | None = None

    def stop(self, grace: float | None = None) -> None:
        """Report NOT_SERVING, let in-flight RPCs finish for ``grace`` seconds, close."""
        self.health.enter_graceful_shutdown()
        self.server.stop(self.config.grace_seconds if grace is None else grace).wait()
        if self.http is not None:
            self.http.shutdown()
        self.store.close()


def start(config: ServerConfig) -> RunningServer:
    """Open the store, then start serving; health turns SERVING only after both."""
    metrics = Metrics()
    options = [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.so_reuseport", 0),
        # Keepalive the server accepts: client pings no more often than every 10 s.
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
    ]
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="assay"),
        interceptors=[ErrorInterceptor(metrics)],
        options=options,
        maximum_concurrent_rpcs=config.max_concurrent_rpcs,
    )
    health_servicer = health.HealthServicer()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    port = server.add_insecure_port(config.address)
    if port == 0:
        raise OSError(f"could not bind {config.address}")
    store = PoolStore(config.data_dir, max_pool_bytes=config.max_pool_bytes,
                      max_pools=config.max_pools)
    assay_pb2_grpc.add_AssayServiceServicer_to_server(AssayServicer(store, config, metrics),
                                                      server)
    server.start()
    http = _serve_metrics(config, metrics) if config.metrics_port else None
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("assay serving on port %d, data in %s", port, config.data_dir)
    return RunningServer(server, port, store, health_servicer, metrics, config, http)


def _serve_metrics(config: ServerConfig, metrics: Metrics) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path != "/metrics":
                self.send_error(404)
                return
            body = metrics.render().encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    host = config.address.rsplit(":", 1)[0].strip("[]") or "127.0.0.1"
    http = ThreadingHTTPServer((host, config.metrics_port), Handler)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    return http


def serve_forever(config: ServerConfig) -> None:
    """Run until SIGTERM/SIGINT, then drain gracefully."""
    running = start(config)
    done = threading.Event()

    def on_signal(signum, frame):
        log.info("signal %d: draining for up to %.0f s", signum, config.grace_seconds)
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"assay listening on {config.address.rsplit(':', 1)[0]}:{running.port}", flush=True)
    done.wait()
    running.stop()
