"""Server settings: one dataclass, filled from flags and ``ASSAY_*`` environment variables.

Each field's metadata holds its help text, so ``assay serve --help`` and the
README's table come from the same place.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

import platformdirs

MIB = 1 << 20


def default_data_dir() -> str:
    """The per-user data directory (e.g. ~/.local/share/assay on Linux)."""
    return platformdirs.user_data_dir("assay", appauthor=False)


@dataclass
class ServerConfig:
    address: str = field(default="127.0.0.1:50051", metadata={
        "help": "host:port to listen on (loopback by default); port 0 picks a free one"})
    data_dir: str = field(default_factory=default_data_dir, metadata={
        "help": "directory holding pools (SQLite metadata and .npy arrays)"})
    max_message_bytes: int = field(default=64 * MIB, metadata={
        "help": "largest gRPC message accepted (transport limit)"})
    max_inline_bytes: int = field(default=32 * MIB, metadata={
        "help": "largest inline Select inputs; larger inputs belong in a pool"})
    workers: int = field(default=8, metadata={"help": "gRPC worker threads"})
    max_concurrent_rpcs: int = field(default=64, metadata={
        "help": "RPCs in flight before new ones get RESOURCE_EXHAUSTED (load shedding)"})
    max_concurrent_selects: int = field(default=4, metadata={
        "help": "Select calls computing at once; more get RESOURCE_EXHAUSTED at once"})
    max_pool_bytes: int = field(default=0, metadata={
        "help": "largest pool in bytes (0: no limit besides free disk)"})
    max_pools: int = field(default=0, metadata={"help": "most pools held (0: no limit)"})
    grace_seconds: float = field(default=10.0, metadata={
        "help": "seconds in-flight RPCs get to finish on SIGTERM"})
    metrics_port: int = field(default=0, metadata={
        "help": "port of the Prometheus /metrics endpoint on the listen host (0: off)"})

    @classmethod
    def env_name(cls, name: str) -> str:
        return "ASSAY_" + name.upper()

    @classmethod
    def from_env(cls, **overrides) -> ServerConfig:
        """Defaults, then ``ASSAY_*`` variables, then explicit overrides (flags)."""
        config = cls()
        for f in fields(cls):
            raw = os.environ.get(cls.env_name(f.name))
            if raw is not None:
                kind = type(getattr(config, f.name))
                setattr(config, f.name, kind(raw))
        for name, value in overrides.items():
            if value is not None:
                setattr(config, name, value)
        Path(config.data_dir).mkdir(parents=True, exist_ok=True)
        return config
