"""Shared fixtures: a real server on a loopback port and a client connected to it.

Service tests go through a real in-process gRPC server so interceptors, limits
and codecs all run (mocked contexts would skip exactly the code that breaks).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from assay.client import Client
from assay.server.app import start
from assay.server.config import ServerConfig


@pytest.fixture
def server_factory(tmp_path):
    """Start servers on 127.0.0.1 with a free port; all are stopped after the test."""
    running = []

    def make(**overrides):
        config = ServerConfig(address="127.0.0.1:0", data_dir=str(tmp_path / "data"),
                              grace_seconds=0.5, workers=8)
        for key, value in overrides.items():
            setattr(config, key, value)
        srv = start(config)
        running.append(srv)
        return srv

    yield make
    for srv in running:
        srv.stop(0)


@pytest.fixture
def server(server_factory):
    return server_factory()


@pytest.fixture
def client(server):
    with Client(f"127.0.0.1:{server.port}", timeout=30) as c:
        yield c
