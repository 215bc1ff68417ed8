"""Server settings: one dataclass, filled from flags and ``ASSAY_*`` environment variables.

Each field's metadata holds its help text, so ``assay serve --help`` and the
table in ``docs/deployment.md`` (``python -m assay.server.wiring.config``) come from the
same place and cannot drift apart.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

import platformdirs

MIB = 1 << 20
#: protobuf cannot encode a message of 2 GiB or more.
PROTOBUF_LIMIT = (2 << 30) - 1
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def default_data_dir() -> str:
    """The per-user data directory (e.g. ~/.local/share/assay on Linux)."""
    return platformdirs.user_data_dir("assay", appauthor=False)


def default_kernel_cache_dir() -> str:
    """The per-user cache directory of compiled kernels (e.g. ~/.cache/assay/kernels)."""
    return str(Path(platformdirs.user_cache_dir("assay", appauthor=False)) / "kernels")


def parse_bool(raw: str) -> bool:
    """Read a boolean environment value strictly: a typo must not switch security off."""
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{raw!r} is not a boolean; use one of {sorted(_TRUE | _FALSE - {''})}")


#: Values of ``log_level`` and ``log_format``.
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("text", "json")

#: ``ray_address`` value that runs sharded pools' shards inside the server, without Ray.
IN_PROCESS = "in-process"

@dataclass
class ServerConfig:
    address: str = field(default="127.0.0.1:50051", metadata={
        "help": "where to listen: host:port or unix:/path, several separated by commas; port 0 "
                "picks a free one. A non-loopback host needs client authentication (a token or "
                "mutual TLS; TLS alone is not enough), or --insecure"})
    data_dir: str = field(default_factory=default_data_dir, metadata={
        "help": "directory holding pools (SQLite metadata and .npy arrays)"})
    tls_cert: str = field(default="", metadata={
        "help": "PEM server certificate chain; turns TLS on (needs --tls-key)"})
    tls_key: str = field(default="", metadata={"help": "PEM private key of --tls-cert"})
    tls_client_ca: str = field(default="", metadata={
        "help": "PEM CA bundle; when set, clients must present a certificate it signed (mTLS)"})
    auth_token_file: str = field(default="", metadata={
        "help": "file of bearer tokens, one per line (16+ characters each); calls without "
                "'authorization: Bearer <token>' get UNAUTHENTICATED (health checks excepted)"})
    insecure: bool = field(default=False, metadata={
        "help": "allow a non-loopback address without client authentication (no token, no "
                "mutual TLS; trusted networks only)"})
    health_address: str = field(default="", metadata={
        "help": "extra plaintext host:port serving only grpc.health.v1, for kubelet probes "
                "while the API stays on loopback or a socket (empty: off)"})
    max_message_bytes: int = field(default=64 * MIB, metadata={
        "help": "largest gRPC message accepted or sent (transport limit)"})
    max_inline_bytes: int = field(default=32 * MIB, metadata={
        "help": "largest inline Select inputs; larger inputs belong in a pool"})
    workers: int = field(default=8, metadata={"help": "gRPC worker threads"})
    max_concurrent_rpcs: int = field(default=640, metadata={
        "help": "RPCs in flight (running or queued for a thread) before new ones get "
                "RESOURCE_EXHAUSTED at once: room for the Select queue and the bursts of a "
                "busy sidecar; a queued call's message is not read until a thread takes it up "
                "(what of it has arrived the transport holds, within its flow-control window)"})
    max_concurrent_selects: int = field(default=4, metadata={
        "help": "Select calls running at once: the threads of Select's own lane"})
    max_queued_selects: int = field(default=512, metadata={
        "help": "Select calls that may wait for a thread of that lane (within their "
                "deadline); beyond them, RESOURCE_EXHAUSTED at once (0: no waiting)"})
    max_select_wait_seconds: float = field(default=1.0, metadata={
        "help": "once the oldest waiting Select has waited this long, new ones get "
                "RESOURCE_EXHAUSTED at once until the server catches up: the queue absorbs "
                "bursts and short stalls, not an overload (0: bounded by max_queued_selects "
                "only)"})
    max_deadline_seconds: float = field(default=600.0, metadata={
        "help": "ceiling on the time one Select or upload may run, whatever deadline the "
                "client set or when it set none (DEADLINE_EXCEEDED past it; 0: the "
                "client's deadline only)"})
    max_concurrent_streams: int = field(default=8, metadata={
        "help": "client-streaming calls (AppendPoolItems, RegisterModel, reflection) "
                "running at once, each on a thread of its own rather than a worker; beyond "
                "them RESOURCE_EXHAUSTED at once (keep it below max_concurrent_rpcs)"})
    stream_idle_timeout_seconds: float = field(default=30.0, metadata={
        "help": "longest wait for the next message of a client stream (the header "
                "included); a stream quiet for longer ends with DEADLINE_EXCEEDED and "
                "stores nothing"})
    max_pool_bytes: int = field(default=0, metadata={
        "help": "largest pool in bytes (0: no limit besides free disk)"})
    max_pool_items: int = field(default=0, metadata={
        "help": "most items in one pool (0: no limit)"})
    max_pools: int = field(default=0, metadata={"help": "most pools held (0: no limit)"})
    request_retention_seconds: float = field(default=86400.0, metadata={
        "help": "how long the response to a request with a request_id is kept for its "
                "retries; a retry after that runs again as a new request (0: no time limit)"})
    max_request_records: int = field(default=100_000, metadata={
        "help": "most stored request responses, counted apart for Selects and for the other "
                "requests; beyond it the oldest are dropped first (0: no limit)"})
    max_request_bytes: int = field(default=256 * MIB, metadata={
        "help": "most bytes of stored request responses, counted apart for Selects and for "
                "the other requests; beyond it the oldest are dropped first (0: no limit)"})
    max_model_bytes: int = field(default=256 * MIB, metadata={
        "help": "largest ONNX model accepted by RegisterModel"})
    max_model_memory_bytes: int = field(default=2048 * MIB, metadata={
        "help": "memory onnxruntime may allocate for model inference, all requests together "
                "(past it RESOURCE_EXHAUSTED), and for building one model's session at "
                "registration; a model with a larger tensor for one item is refused "
                "(0: no limit)"})
    max_model_macs: int = field(default=20_000_000_000, metadata={
        "help": "most multiply-adds (matrix products, convolutions) a registered model may "
                "need for one item, read from its graph (0: no limit)"})
    model_load_seconds: float = field(default=20.0, metadata={
        "help": "longest time building a model's onnxruntime session may take at "
                "registration (it runs in a child process that is then stopped)"})
    min_free_disk_bytes: int = field(default=64 * MIB, metadata={
        "help": "free bytes the data directory must keep after an upload; uploads that would "
                "eat into them get RESOURCE_EXHAUSTED before anything is written"})
    kernel_cache_dir: str = field(default_factory=default_kernel_cache_dir, metadata={
        "help": "on-disk cache of compiled kernels, shared by servers of one user; may be "
                "read-only (a cache baked into the image: kernels it lacks for this CPU "
                "compile at start-up and stay in memory) (empty: no disk cache)"})
    warmup: bool = field(default=True, metadata={
        "help": "compile (or load from the kernel cache) every kernel before health reports "
                "SERVING, so no first Select waits for a compile (--no-warmup: compile on "
                "first use)"})
    warmup_strategies: str = field(default="", metadata={
        "help": "comma-separated strategies the warm-up runs (empty: every strategy); the "
                "kernels of the others compile on their first Select"})
    grace_seconds: float = field(default=10.0, metadata={
        "help": "seconds in-flight RPCs get to finish on SIGTERM"})
    metrics_port: int = field(default=0, metadata={
        "help": "port of the Prometheus /metrics endpoint (0: off)"})
    metrics_host: str = field(default="", metadata={
        "help": "host the /metrics endpoint binds (empty: the first TCP listen host, or "
                "127.0.0.1 when listening on sockets only)"})
    log_level: str = field(default="INFO", metadata={
        "help": "least severe log records written to stderr: DEBUG, INFO, WARNING or ERROR "
                "(INFO: one line per call, health checks only at DEBUG)"})
    log_format: str = field(default="text", metadata={
        "help": "text: 'time LEVEL logger message' lines; json: one JSON object per line, "
                "a call's fields (method, code, duration_ms, strategy, n, budget, backend, "
                "request_id, peer) as keys"})
    ray_address: str = field(default="", metadata={
        "help": "Ray cluster for sharded pools: auto, ray://host:port, host:port, or local (a "
                "private single-node instance); in-process: shards run inside the server, "
                "without Ray (one machine; tests and trials); empty: no sharding, Ray is never "
                "imported"})
    auto_shard_items: int = field(default=0, metadata={
        "help": "with --ray-address: a pool created with expected_items above this is sharded, "
                "one shard per this many items (0: only when CreatePool asks for shards)"})
    shard_dir: str = field(default="", metadata={
        "help": "where shard actors persist their segments, a path on every Ray node "
                "(empty: <data-dir>/shards)"})
    shard_threads: int = field(default=0, metadata={
        "help": "Numba threads per shard actor (0: one per core of its node)"})
    shard_cpus: float = field(default=1.0, metadata={
        "help": "CPUs Ray reserves for each shard actor"})
    ray_num_cpus: int = field(default=0, metadata={
        "help": "CPUs of the --ray-address local instance (0: all)"})
    shard_start_timeout_seconds: float = field(default=20.0, metadata={
        "help": "how long CreatePool (or the first call on a sharded pool) waits for Ray to "
                "place its shard actors; past it the call fails with RESOURCE_EXHAUSTED "
                "instead of hanging (a pool needing more CPUs than the cluster has fails "
                "at once)"})

    @classmethod
    def env_name(cls, name: str) -> str:
        return "ASSAY_" + name.upper()

    @classmethod
    def from_env(cls, **overrides) -> ServerConfig:
        """Defaults, then ``ASSAY_*`` variables, then explicit overrides (flags).

        Raises ``ValueError`` naming the variable when one cannot be read or a
        setting is out of range.
        """
        config = cls()
        for f in fields(cls):
            raw = os.environ.get(cls.env_name(f.name))
            if raw is None:
                continue
            kind = type(getattr(config, f.name))
            try:
                value = parse_bool(raw) if kind is bool else kind(raw)
            except ValueError as error:
                raise ValueError(f"{cls.env_name(f.name)}: {error}") from None
            setattr(config, f.name, value)
        for name, value in overrides.items():
            if value is not None:
                setattr(config, name, value)
        config.validate()
        Path(config.data_dir).mkdir(parents=True, exist_ok=True)
        return config

    def addresses(self) -> list[str]:
        """The listen addresses, in the order given."""
        return [a.strip() for a in self.address.split(",") if a.strip()]

    def validate(self) -> None:
        """Reject settings that would fail later or silently mean something else."""
        if not self.addresses():
            raise ValueError("address is empty: give host:port or unix:/path")
        if not 0 < self.max_message_bytes <= PROTOBUF_LIMIT:
            raise ValueError(f"max_message_bytes must be in (0, {PROTOBUF_LIMIT}], got "
                             f"{self.max_message_bytes}")
        for name in ("workers", "max_concurrent_rpcs", "max_concurrent_selects",
                     "max_concurrent_streams", "max_inline_bytes", "max_model_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_queued_selects", "max_select_wait_seconds", "max_pool_bytes",
                     "max_pool_items", "max_pools", "min_free_disk_bytes",
                     "max_model_memory_bytes", "max_model_macs", "max_deadline_seconds",
                     "grace_seconds"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0 switches it off), got "
                                 f"{getattr(self, name)}")
        for name in ("stream_idle_timeout_seconds", "shard_start_timeout_seconds",
                     "model_load_seconds"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("request_retention_seconds", "max_request_records", "max_request_bytes"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0: no limit), got {getattr(self, name)}")
        for name in ("auto_shard_items", "shard_threads", "shard_cpus", "ray_num_cpus"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.auto_shard_items and not self.ray_address:
            raise ValueError("auto_shard_items needs ray_address (sharded pools live on Ray)")
        if not 0 <= self.metrics_port <= 65535:
            raise ValueError(f"metrics_port must be in [0, 65535], got {self.metrics_port}")
        if self.log_level.upper() not in LOG_LEVELS:
            raise ValueError(f"log_level must be one of {', '.join(LOG_LEVELS)}, got "
                             f"{self.log_level!r}")
        if self.log_format not in LOG_FORMATS:
            raise ValueError(f"log_format must be one of {', '.join(LOG_FORMATS)}, got "
                             f"{self.log_format!r}")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert and tls_key go together: give both or neither")
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError("tls_client_ca (mutual TLS) needs tls_cert and tls_key")


def markdown_table() -> str:
    """Every setting as a Markdown table: flag, environment variable, default, meaning."""
    rows = ["| flag | environment variable | default | meaning |", "| --- | --- | --- | --- |"]
    defaults = ServerConfig(data_dir="")
    for f in fields(ServerConfig):
        if f.name == "data_dir":
            default = "per-user data dir"
        elif f.name == "kernel_cache_dir":
            default = "per-user cache dir"
        elif isinstance(getattr(defaults, f.name), bool):
            default = "on" if getattr(defaults, f.name) else "off"
        else:
            value = getattr(defaults, f.name)
            default = f"`{value}`" if value != "" else "(empty)"
        rows.append(f"| `--{f.name.replace('_', '-')}` | `{ServerConfig.env_name(f.name)}` | "
                    f"{default} | {f.metadata['help'].replace('|', '/')} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
