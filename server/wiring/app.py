"""Builds and runs the gRPC server: servicer, health, reflection, security, limits, drain."""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import sys
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from assay.v1 import assay_pb2, model_pb2, model_pb2_grpc

from ..acquisition.service import AcquisitionService, SelectSlots
from ..edge.admission import AdmissionGate
from ..edge.auth import TokenInterceptor, check_exposure, load_tokens, server_credentials
from ..edge.interceptors import CallLog, ErrorInterceptor
from ..edge.lanes import Foreground, Lanes, SelectLane
from ..edge.metrics import Metrics
from ..edge.model_servicer import ModelServicer
from ..edge.servicer import AssayServicer, EdgeLimits, add_to_server, cancellation_check
from ..models.inference import ModelRuntime
from ..models.onnx_cost import ModelLimits
from ..models.store import ModelStore
from ..pools.request_records import Retention
from ..pools.store import PoolStore
from . import allocator, heap, switching, warmup
from .config import IN_PROCESS, ServerConfig

if TYPE_CHECKING:
    from ..scaleout.backend import ShardedBackend

log = logging.getLogger("assay.server")
#: Longest an upload waits, every 4 MiB it reads (``streams.PACE_BYTES``), for a pause
#: in the Selects (``Foreground``): a Select's latency is what a trainer waits on, an
#: upload's rate is not; under constant Selects an upload still gets 4 MiB per 100 ms.
UPLOAD_YIELD_SECONDS = 0.1
SERVICE_NAME = assay_pb2.DESCRIPTOR.services_by_name["AssayService"].full_name
MODEL_SERVICE_NAME = model_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name


@dataclass
class RunningServer:
    """A started server; ``port`` is the first bound TCP port (useful with port 0)."""

    server: grpc.Server
    port: int
    store: PoolStore
    health: health.HealthServicer
    metrics: Metrics
    config: ServerConfig
    http: ThreadingHTTPServer | None = None
    #: Bound port per listen address, in ``config.addresses()`` order (1 for sockets).
    ports: list[int] = field(default_factory=list)
    health_server: grpc.Server | None = None
    health_port: int = 0
    models: ModelStore | None = None
    #: Where sharded pools' rows live, only with ``--ray-address``.
    sharded: ShardedBackend | None = None
    #: The admission gate (``assay.server.edge.admission``): calls in flight, refusals.
    gate: AdmissionGate | None = None
    #: Health and client-stream lanes (``assay.server.edge.lanes``).
    lanes: Lanes | None = None

    def stop(self, grace: float | None = None) -> None:
        """Report NOT_SERVING, let in-flight RPCs finish for ``grace`` seconds, close."""
        self.health.enter_graceful_shutdown()
        self.server.stop(self.config.grace_seconds if grace is None else grace).wait()
        if self.health_server is not None:
            self.health_server.stop(0).wait()
        if self.gate is not None:
            self.gate.shutdown()
        if self.lanes is not None:
            self.lanes.shutdown()
        if self.http is not None:
            self.http.shutdown()
            self.http.server_close()
        self.store.close()
        if self.models is not None:
            self.models.close()
        if self.sharded is not None:
            self.sharded.close()


def _options(config: ServerConfig) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.so_reuseport", 0),
        # Keepalive the server accepts: client pings no more often than every 10 s.
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
    ]


def _bind(server: grpc.Server, address: str,
          credentials: grpc.ServerCredentials | None) -> int:
    try:
        port = (server.add_insecure_port(address) if credentials is None
                else server.add_secure_port(address, credentials))
    except RuntimeError:  # grpcio's "Failed to bind to address ..."
        port = 0
    if port == 0:
        raise OSError(f"could not bind {address}")
    return port


def check_free(address: str, what: str = "listen") -> None:
    """Raise ``OSError`` naming ``address`` when its TCP port is taken or not ours to bind.

    Asked before gRPC binds: its own failure is a bare "Failed to bind" after a line of
    C-core log on stderr. Port 0, sockets and hosts that do not resolve here are left to
    the bind itself.
    """
    if _is_socket(address):
        return
    host, _, port = address.rpartition(":")
    if not port.isdigit() or int(port) == 0:
        return
    try:
        infos = socket.getaddrinfo(host.strip("[]") or None, int(port),
                                   type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return
    for family, kind, proto, _, sockaddr in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(sockaddr)
            except OSError as error:
                if error.errno == errno.EADDRINUSE:
                    raise OSError(f"cannot {what} on {address}: the port is in use") from None
                if error.errno == errno.EACCES:
                    raise OSError(f"cannot {what} on {address}: permission denied (ports "
                                  "below 1024 need privileges)") from None


def _health_only_server(address: str, servicer: health.HealthServicer) -> tuple[grpc.Server, int]:
    """A plaintext server with nothing but grpc.health.v1, for kubelet probes: they can send
    neither a token nor a client certificate, and this port exposes no data."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="health"),
                         options=[("grpc.so_reuseport", 0)], maximum_concurrent_rpcs=8)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    return server, _bind(server, address, None)


def start(config: ServerConfig) -> RunningServer:
    """Check the security settings, open the store, warm the kernels up (``warmup``), then
    serve; health turns SERVING only after all three.

    Raises
    ------
    ValueError
        For settings out of range, or (``auth.ConfigError``) an exposed address
        without TLS or token, or unreadable certificates / token file.
    OSError
        When an address (the /metrics one included) is taken or cannot be bound.
    """
    began = time.perf_counter()
    config.validate()
    check_exposure(config)
    credentials = server_credentials(config)
    warm_names = warmup.prepare(config.kernel_cache_dir, config.warmup_strategies)
    for address in config.addresses():
        check_free(address)
    if config.health_address:
        check_free(config.health_address)
    metrics = Metrics()
    # Bound before anything starts, so a busy port stops the start with nothing to undo.
    http = _metrics_server(config, metrics) if config.metrics_port else None
    try:
        return _start(config, credentials, warm_names, metrics, http, began)
    except BaseException:
        if http is not None:
            http.server_close()
        raise


def _start(config: ServerConfig, credentials: grpc.ServerCredentials | None,
           warm_names: list[str], metrics: Metrics, http: ThreadingHTTPServer | None,
           began: float) -> RunningServer:
    """``start`` once the settings are checked and the ports are known to be free."""
    # In place of grpcio's maximum_concurrent_rpcs, whose refusal carries no details: the
    # gate refuses with ErrorInfo TOO_MANY_REQUESTS and RetryInfo, and exempts health.
    gate = AdmissionGate(config.max_concurrent_rpcs, metrics=metrics)
    # Health checks and client streams on lanes of their own: a stream waiting on a slow
    # client holds no worker, and ends after stream_idle_timeout_seconds without a message.
    foreground = Foreground()
    lanes = Lanes(max_streams=config.max_concurrent_streams,
                  stream_threads=config.max_concurrent_rpcs,
                  idle_timeout=config.stream_idle_timeout_seconds,
                  ceiling=config.max_deadline_seconds, metrics=metrics,
                  pace=lambda: foreground.wait_idle(UPLOAD_YIELD_SECONDS),
                  selects=SelectLane(config.max_concurrent_selects,
                                     config.max_queued_selects,
                                     config.max_select_wait_seconds))
    # The call log outermost, so that it sees refusals by the gate and the lanes too.
    interceptors: list[grpc.ServerInterceptor] = [CallLog(metrics), gate.interceptor,
                                                  lanes.interceptor, ErrorInterceptor(metrics)]
    if config.auth_token_file:
        # Inside the error interceptor, so rejected calls are counted as UNAUTHENTICATED.
        interceptors.append(TokenInterceptor(load_tokens(config.auth_token_file)))
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="assay"),
        interceptors=interceptors, options=_options(config))
    health_servicer = health.HealthServicer()
    for name in ("", SERVICE_NAME, MODEL_SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, MODEL_SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    ports = [_bind(server, address, credentials) for address in config.addresses()]
    health_server, health_port = (None, 0)
    if config.health_address:
        health_server, health_port = _health_only_server(config.health_address, health_servicer)
    sharded = _shard_backend(config) if config.ray_address else None
    store = PoolStore(config.data_dir, max_pool_bytes=config.max_pool_bytes,
                      max_pools=config.max_pools, max_pool_items=config.max_pool_items,
                      min_free_bytes=config.min_free_disk_bytes,
                      retention=Retention(config.request_retention_seconds,
                                          config.max_request_records, config.max_request_bytes),
                      sharded=sharded)
    models = ModelStore(config.data_dir, min_free_bytes=config.min_free_disk_bytes,
                        max_model_bytes=config.max_model_bytes)
    runtime = ModelRuntime(models, limits=ModelLimits(
        config.max_model_memory_bytes, config.max_model_macs, config.model_load_seconds))
    acquisition = AcquisitionService(
        store, models=runtime, max_inline_bytes=config.max_inline_bytes,
        slots=SelectSlots(config.max_concurrent_selects, config.max_queued_selects),
        observe=metrics.observe_select)
    add_to_server(AssayServicer(store, acquisition, EdgeLimits.of(config), metrics, foreground),
                  server)
    model_pb2_grpc.add_ModelServiceServicer_to_server(
        ModelServicer(models, runtime,
                      lambda context: cancellation_check(context, config.max_deadline_seconds)),
        server)
    server.start()
    if health_server is not None:
        health_server.start()
    if http is not None:
        threading.Thread(target=http.serve_forever, daemon=True, name="assay-metrics").start()
        log.info("metrics on http://%s/metrics", _host_port(http))
    # Kernels compile (or load from the disk cache) while health still says NOT_SERVING.
    if not config.warmup:
        log.info("kernel warm-up off (--no-warmup): each kernel compiles on its first use")
    elif (report := warmup.once(warm_names)) is not None:
        log.info("%s", report.summary())
    else:
        log.info("kernel warm-up: done before in this process")
    if (settled := heap.settle()) is not None:
        log.info("start-up heap: %d objects frozen out of the collector's full passes "
                 "(%.2f s)", *settled)
    for name in ("", SERVICE_NAME, MODEL_SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("start-up took %.1f s", time.perf_counter() - began)
    log.info("assay serving on %s (%s), data in %s", ", ".join(config.addresses()),
             "TLS" if credentials else "plaintext", config.data_dir)
    tcp = [p for a, p in zip(config.addresses(), ports, strict=True) if not _is_socket(a)]
    return RunningServer(server, tcp[0] if tcp else 0, store, health_servicer, metrics, config,
                         http, ports, health_server, health_port, models, sharded, gate,
                         lanes)


def _shard_backend(config: ServerConfig):
    """Where sharded pools' rows live: shards in this process (``--ray-address
    in-process``), or actors on the Ray cluster joined here; Ray is imported only then."""
    from ..scaleout.backend import ShardedBackend

    local = config.ray_address == IN_PROCESS
    if not local:
        from ..scaleout import cluster

        cluster.connect(config.ray_address, num_cpus=config.ray_num_cpus)
    return ShardedBackend(config.shard_dir or Path(config.data_dir) / "shards",
                          threads=config.shard_threads, actor_cpus=config.shard_cpus,
                          local_shards=local, start_timeout=config.shard_start_timeout_seconds)


def _is_socket(address: str) -> bool:
    return address.startswith(("unix:", "unix-abstract:"))


def metrics_host(config: ServerConfig) -> str:
    """Where /metrics binds: explicit, else the first TCP listen host, else loopback."""
    if config.metrics_host:
        return config.metrics_host
    for address in config.addresses():
        if not _is_socket(address):
            return address.rsplit(":", 1)[0].strip("[]") or "127.0.0.1"
    return "127.0.0.1"


def _metrics_server(config: ServerConfig, metrics: Metrics) -> ThreadingHTTPServer:
    """The /metrics endpoint, bound (``serve_forever`` on a thread starts it): the
    registry's exposition, in OpenMetrics when the scraper asks for it."""
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path.split("?", 1)[0] != "/metrics":
                self.send_error(404)
                return
            body, content_type = metrics.exposition(self.headers.get("Accept"))
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    host = metrics_host(config)

    class Server(ThreadingHTTPServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        daemon_threads = True

    try:
        return Server((host, config.metrics_port), Handler)
    except OSError as error:
        raise OSError(f"cannot serve /metrics on {host}:{config.metrics_port}: "
                      f"{error.strerror or error}") from None


def _host_port(http: ThreadingHTTPServer) -> str:
    host, port = http.server_address[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def serve_forever(config: ServerConfig) -> None:
    """Run until SIGTERM/SIGINT, then drain gracefully (the process is the server's own,
    so once started its interpreter is tuned for serving: ``switching``; not before, while
    the kernel warm-up holds the lock for long stretches), and its allocator keeps
    message buffers (``allocator``)."""
    tuned = allocator.tune()
    running = start(config)
    log.info("%s", tuned)
    switching.tune()
    done = threading.Event()

    def on_signal(signum, frame):
        log.info("signal %d: draining for up to %.0f s", signum, config.grace_seconds)
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    bound = []
    for address, port in zip(config.addresses(), running.ports, strict=True):
        bound.append(address if _is_socket(address) else f"{address.rsplit(':', 1)[0]}:{port}")
    if running.health_server is not None:
        bound.append(f"health {config.health_address.rsplit(':', 1)[0]}:{running.health_port}")
    print(f"assay listening on {', '.join(bound)}", flush=True)
    done.wait()
    drained = threading.Event()
    # A drained server must exit even if a thread stays stuck (the interpreter's shutdown
    # joins every non-daemon thread, a kubelet would wait out its whole grace period and
    # kill the pod): past grace + 10 s the process ends, 0 if it had drained.
    watchdog = threading.Timer(config.grace_seconds + 10, _exit_stuck, (drained,))
    watchdog.daemon = True
    watchdog.start()
    running.stop()
    drained.set()
    log.info("drained; exiting")


def _exit_stuck(drained: threading.Event) -> None:
    stuck = [t.name for t in threading.enumerate()
             if not t.daemon and t not in (threading.current_thread(), threading.main_thread())]
    log.error("still running %s after the drain deadline (threads left: %s); exiting",
              "its exit" if drained.is_set() else "the drain", ", ".join(stuck) or "none")
    logging.shutdown()
    sys.stdout.flush()
    os._exit(0 if drained.is_set() else 1)
