"""Fixtures of the client tests: a live server on a free loopback port."""

from __future__ import annotations

import pytest

from assay.server.app import start
from assay.server.config import ServerConfig


@pytest.fixture(scope="session")
def live_server(tmp_path_factory):
    """One in-process server for all client suites; yields its "127.0.0.1:port" target."""
    data = tmp_path_factory.mktemp("clients-data")
    server = start(ServerConfig(address="127.0.0.1:0", data_dir=str(data), workers=8,
                                max_concurrent_selects=8))
    try:
        yield f"127.0.0.1:{server.port}"
    finally:
        server.stop(0)
