"""Fixtures of the client tests: a live server on a free loopback port."""

from __future__ import annotations

import certs
import pytest

from assay.server.wiring.app import start
from assay.server.wiring.config import ServerConfig

#: Bearer token of the secure server (16+ characters, as the server requires).
TOKEN = "client-suite-token-0123456789"


@pytest.fixture(scope="session")
def live_server(tmp_path_factory):
    """One in-process server for all client suites; yields its "127.0.0.1:port" target."""
    data = tmp_path_factory.mktemp("clients-data")
    # No warm-up: compiling every kernel x dtype before the first test would count against
    # that test's timeout (over 300 s on a loaded 2-core box without a kernel cache);
    # the vectors' first calls compile what they use, within the clients' deadline.
    server = start(ServerConfig(address="127.0.0.1:0", data_dir=str(data), workers=8,
                                max_concurrent_selects=8, warmup=False))
    try:
        yield f"127.0.0.1:{server.port}"
    finally:
        server.stop(0)


@pytest.fixture(scope="session")
def secure_server(tmp_path_factory):
    """A server with mTLS and a bearer token; yields (target, env for the client suites)."""
    keys = tmp_path_factory.mktemp("clients-tls")
    paths = certs.make(keys)
    tokens = keys / "tokens"
    tokens.write_text(TOKEN + "\n")
    server = start(ServerConfig(
        address="127.0.0.1:0", data_dir=str(tmp_path_factory.mktemp("clients-secure-data")),
        tls_cert=str(paths["server_cert"]), tls_key=str(paths["server_key"]),
        tls_client_ca=str(paths["ca"]), auth_token_file=str(tokens)))
    env = {"ASSAY_TOKEN": TOKEN, "ASSAY_TLS_CA": str(paths["ca"]),
           "ASSAY_TLS_CERT": str(paths["client_cert"]), "ASSAY_TLS_KEY": str(paths["client_key"])}
    try:
        yield f"127.0.0.1:{server.port}", env
    finally:
        server.stop(0)
