"""Transport security and authentication on a real server.

Certificates are made here with ``cryptography``: a CA, certificates it signed
(current and expired), and a second, unrelated CA. Every rejected call is
checked twice: by its status code, and by a spy on the acquisition layer that
must never have run (nor may the store have changed).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from assay.client import AssayError, Client
from assay.server.acquisition import selection
from assay.server.edge.auth import (
    MIN_TOKEN_CHARS,
    ConfigError,
    TokenInterceptor,
    check_exposure,
    is_local,
    load_tokens,
)
from assay.server.wiring import cli
from assay.server.wiring.config import ServerConfig
from assay.v1 import assay_pb2, assay_pb2_grpc

TOKEN = "s3cret-token-0123456789abcdef"
PROBS = np.random.default_rng(0).dirichlet(np.ones(3), size=20).astype(np.float32)


# -- certificates ---------------------------------------------------------------------------


@dataclass
class Issued:
    cert: Path
    key: Path


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _write(directory: Path, stem: str, cert: x509.Certificate, key) -> Issued:
    cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return Issued(cert_path, key_path)


def _ca(directory: Path, stem: str) -> tuple[Issued, x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(stem)).issuer_name(_name(stem))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return _write(directory, stem, cert, key), cert, key


def _leaf(directory: Path, stem: str, ca_cert: x509.Certificate, ca_key, *, server: bool,
          expired: bool = False) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    start, end = ((now - dt.timedelta(days=10), now - dt.timedelta(days=1)) if expired
                  else (now - dt.timedelta(days=1), now + dt.timedelta(days=30)))
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (x509.CertificateBuilder().subject_name(_name(stem)).issuer_name(ca_cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(start).not_valid_after(end)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
    return _write(directory, stem, builder.sign(ca_key, hashes.SHA256()), key)


@dataclass
class Pki:
    ca: Issued
    other_ca: Issued
    server: Issued
    expired_server: Issued
    client: Issued
    expired_client: Issued
    rogue_client: Issued


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca, ca_cert, ca_key = _ca(d, "assay-test-ca")
    other, other_cert, other_key = _ca(d, "other-ca")
    return Pki(
        ca=ca, other_ca=other,
        server=_leaf(d, "server", ca_cert, ca_key, server=True),
        expired_server=_leaf(d, "expired-server", ca_cert, ca_key, server=True, expired=True),
        client=_leaf(d, "client", ca_cert, ca_key, server=False),
        expired_client=_leaf(d, "expired-client", ca_cert, ca_key, server=False, expired=True),
        rogue_client=_leaf(d, "rogue-client", other_cert, other_key, server=False),
    )


def _creds(ca: Issued, client: Issued | None = None) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        ca.cert.read_bytes(),
        client.key.read_bytes() if client else None,
        client.cert.read_bytes() if client else None)


# -- the spy: nothing rejected may reach the acquisition layer --------------------------------


@pytest.fixture
def selections(monkeypatch) -> list[str]:
    """Names of strategies the acquisition layer was asked to run."""
    calls: list[str] = []
    real = selection.select

    def spy(strategy_name, *args, **kwargs):
        calls.append(strategy_name)
        return real(strategy_name, *args, **kwargs)

    monkeypatch.setattr(selection, "select", spy)
    return calls


def _attempt(client: Client) -> grpc.StatusCode:
    """One Select and one CreatePool; both must fail with the same code."""
    codes = set()
    for call in (lambda: client.select("entropy", 2, probs=PROBS),
                 lambda: client.create_pool("should-not-exist")):
        with pytest.raises(AssayError) as err:
            call()
        codes.add(err.value.code)
    assert len(codes) == 1, codes
    return codes.pop()


def _assert_untouched(server, selections: list[str]) -> None:
    assert selections == []
    assert server.store.list_pools() == []


# -- TLS ------------------------------------------------------------------------------------


def test_tls_serves_a_client_that_trusts_the_ca(server_factory, pki, selections):
    srv = server_factory(tls_cert=str(pki.server.cert), tls_key=str(pki.server.key))
    with Client(f"127.0.0.1:{srv.port}", credentials=_creds(pki.ca), timeout=10) as c:
        assert c.select("entropy", 2, probs=PROBS).indices.size == 2
    assert selections == ["entropy"]


def test_tls_rejects_a_client_trusting_another_ca(server_factory, pki, selections):
    srv = server_factory(tls_cert=str(pki.server.cert), tls_key=str(pki.server.key))
    with Client(f"127.0.0.1:{srv.port}", credentials=_creds(pki.other_ca), timeout=5,
                retries=0) as c:
        assert _attempt(c) == grpc.StatusCode.UNAVAILABLE
    _assert_untouched(srv, selections)


def test_tls_client_rejects_an_expired_server_certificate(server_factory, pki, selections):
    srv = server_factory(tls_cert=str(pki.expired_server.cert),
                         tls_key=str(pki.expired_server.key))
    with Client(f"127.0.0.1:{srv.port}", credentials=_creds(pki.ca), timeout=5,
                retries=0) as c:
        assert _attempt(c) == grpc.StatusCode.UNAVAILABLE
    _assert_untouched(srv, selections)


def test_plaintext_client_cannot_talk_to_a_tls_server(server_factory, pki, selections):
    srv = server_factory(tls_cert=str(pki.server.cert), tls_key=str(pki.server.key))
    with Client(f"127.0.0.1:{srv.port}", timeout=5, retries=0) as c:
        assert _attempt(c) == grpc.StatusCode.UNAVAILABLE
    _assert_untouched(srv, selections)


# -- mutual TLS -----------------------------------------------------------------------------


@pytest.fixture
def mtls_server(server_factory, pki):
    return server_factory(tls_cert=str(pki.server.cert), tls_key=str(pki.server.key),
                          tls_client_ca=str(pki.ca.cert))


def test_mtls_serves_a_client_with_a_certificate_from_the_ca(mtls_server, pki, selections):
    with Client(f"localhost:{mtls_server.port}", credentials=_creds(pki.ca, pki.client),
                timeout=10) as c:
        assert c.select("entropy", 3, probs=PROBS).indices.size == 3
    assert selections == ["entropy"]


@pytest.mark.parametrize("which", ["none", "expired", "other-ca"])
def test_mtls_rejects_missing_expired_and_foreign_client_certificates(mtls_server, pki,
                                                                      selections, which):
    client_cert = {"none": None, "expired": pki.expired_client,
                   "other-ca": pki.rogue_client}[which]
    with Client(f"127.0.0.1:{mtls_server.port}", credentials=_creds(pki.ca, client_cert),
                timeout=5, retries=0) as c:
        assert _attempt(c) == grpc.StatusCode.UNAVAILABLE
    _assert_untouched(mtls_server, selections)


# -- bearer tokens --------------------------------------------------------------------------


@pytest.fixture
def token_server(server_factory, tmp_path):
    path = tmp_path / "tokens"
    path.write_text(f"\n{TOKEN}\nsecond-token-for-rotation-42\n")
    return server_factory(auth_token_file=str(path))


@pytest.mark.parametrize("token", [None, "wrong-token-0123456789abcdef", TOKEN[:-1],
                                   TOKEN + "x", ""])
def test_token_missing_or_wrong_is_unauthenticated(token_server, selections, token):
    with Client(f"127.0.0.1:{token_server.port}", token=token, timeout=5, retries=0) as c:
        assert _attempt(c) == grpc.StatusCode.UNAUTHENTICATED
    _assert_untouched(token_server, selections)


@pytest.mark.parametrize("header", [f"Basic {TOKEN}", TOKEN, f"Bearer{TOKEN}"])
def test_token_in_another_scheme_is_unauthenticated(token_server, selections, header):
    channel = grpc.insecure_channel(f"127.0.0.1:{token_server.port}")
    with channel:
        stub = assay_pb2_grpc.AssayServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.ListStrategies(assay_pb2.ListStrategiesRequest(), timeout=5,
                                metadata=(("authorization", header),))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    _assert_untouched(token_server, selections)


def test_two_authorization_headers_are_unauthenticated(token_server):
    with grpc.insecure_channel(f"127.0.0.1:{token_server.port}") as channel:
        with pytest.raises(grpc.RpcError) as err:
            assay_pb2_grpc.AssayServiceStub(channel).ListStrategies(
                assay_pb2.ListStrategiesRequest(), timeout=5,
                metadata=(("authorization", f"Bearer {TOKEN}"),
                          ("authorization", "Bearer nope-nope-nope-nope")))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_right_tokens_are_served_and_either_rotation_token_works(token_server, selections):
    for token in (TOKEN, "second-token-for-rotation-42"):
        with Client(f"127.0.0.1:{token_server.port}", token=token, timeout=10) as c:
            assert c.select("margin", 2, probs=PROBS).indices.size == 2
    assert selections == ["margin", "margin"]


def test_unauthenticated_upload_stream_stores_nothing(token_server, selections):
    with Client(f"127.0.0.1:{token_server.port}", token=TOKEN, timeout=10) as c:
        c.create_pool("p")
    with Client(f"127.0.0.1:{token_server.port}", token="bad-token-0123456789", timeout=5) as c:
        with pytest.raises(AssayError) as err:
            c.append("p", probs=PROBS, chunk_bytes=64)
    assert err.value.code == grpc.StatusCode.UNAUTHENTICATED
    info = token_server.store.get_pool("p")
    assert (info.item_count, info.version) == (0, 0)
    assert list((Path(token_server.config.data_dir) / "tmp").iterdir()) == []
    assert selections == []


def test_health_needs_no_token_but_reflection_does(token_server):
    with grpc.insecure_channel(f"127.0.0.1:{token_server.port}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                          timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        with pytest.raises(grpc.RpcError) as err:
            list(stub.ServerReflectionInfo(iter([request]), timeout=5))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        answers = list(stub.ServerReflectionInfo(
            iter([request]), timeout=5, metadata=(("authorization", f"Bearer {TOKEN}"),)))
        names = {s.name for s in answers[0].list_services_response.service}
        assert "assay.v1.AssayService" in names


def test_rejections_are_counted_in_metrics(token_server):
    with Client(f"127.0.0.1:{token_server.port}", timeout=5, retries=0) as c:
        with pytest.raises(AssayError):
            c.list_strategies()
    assert 'grpc_code="UNAUTHENTICATED",grpc_method="ListStrategies",' \
           'grpc_service="assay.v1.AssayService"} 1.0' in \
        token_server.metrics.render()


def test_token_and_mtls_together(server_factory, pki, tmp_path, selections):
    path = tmp_path / "token"
    path.write_text(TOKEN)
    srv = server_factory(tls_cert=str(pki.server.cert), tls_key=str(pki.server.key),
                         tls_client_ca=str(pki.ca.cert), auth_token_file=str(path))
    target = f"127.0.0.1:{srv.port}"
    with Client(target, credentials=_creds(pki.ca, pki.client), timeout=5, retries=0) as c:
        assert _attempt(c) == grpc.StatusCode.UNAUTHENTICATED
    with Client(target, credentials=_creds(pki.ca, pki.client), token=TOKEN, timeout=10) as c:
        assert c.select("entropy", 1, probs=PROBS).indices.size == 1
    assert selections == ["entropy"]


# -- token files and the interceptor on its own ------------------------------------------


@pytest.mark.parametrize("content, why", [
    ("", "holds no token"),
    ("\n  \n", "holds no token"),
    ("short", rf"{MIN_TOKEN_CHARS}\+ characters"),
    ("has a space in it 0123456789", rf"{MIN_TOKEN_CHARS}\+ characters"),
])
def test_bad_token_files_are_refused(tmp_path, content, why):
    path = tmp_path / "tokens"
    path.write_text(content)
    with pytest.raises(ConfigError, match=why):
        load_tokens(str(path))


def test_missing_token_file_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_tokens(str(tmp_path / "absent"))


def test_interceptor_accepts_bytes_metadata_and_any_scheme_case():
    interceptor = TokenInterceptor([TOKEN.encode()])
    assert interceptor.authorized([("authorization", f"bearer {TOKEN}".encode())])
    assert interceptor.authorized([("x-other", "1"), ("authorization", f"Bearer  {TOKEN} ")])
    assert not interceptor.authorized(None)
    assert not interceptor.authorized([("authorization", "Bearer \xff\xfe")])
    with pytest.raises(ConfigError):
        TokenInterceptor([])


# -- refusing to expose plaintext ------------------------------------------------------------


@pytest.mark.parametrize("address, local", [
    ("127.0.0.1:50051", True), ("127.8.9.1:1", True), ("localhost:50051", True),
    ("[::1]:50051", True), ("unix:/run/assay/assay.sock", True), ("unix:///tmp/a.sock", True),
    ("unix-abstract:assay", True), ("0.0.0.0:50051", False), ("[::]:50051", False),
    (":50051", False), ("10.1.2.3:50051", False), ("assay.example:50051", False),
])
def test_is_local(address, local):
    assert is_local(address) is local


@pytest.mark.parametrize("address", ["0.0.0.0:0", "127.0.0.1:0,[::]:0", "10.1.2.3:50051"])
def test_exposed_plaintext_is_refused_before_binding(tmp_path, address):
    config = ServerConfig(address=address, data_dir=str(tmp_path / "d"))
    with pytest.raises(ConfigError, match="refusing to serve"):
        check_exposure(config)
    from assay.server.wiring.app import start
    with pytest.raises(ConfigError, match="refusing to serve"):
        start(config)
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("extra", [
    {"insecure": True}, {"auth_token_file": "t"},
    {"tls_cert": "c", "tls_key": "k", "auth_token_file": "t"},
    {"tls_cert": "c", "tls_key": "k", "tls_client_ca": "ca"},
])
def test_exposure_is_allowed_with_client_authentication_or_insecure(tmp_path, extra):
    check_exposure(ServerConfig(address="0.0.0.0:50051", data_dir=str(tmp_path), **extra))


@pytest.mark.parametrize("address", ["0.0.0.0:0", "127.0.0.1:0,[::]:0"])
def test_tls_without_client_authentication_is_refused_on_a_reachable_address(
        tmp_path, pki, address):
    """TLS alone encrypts but authenticates nobody: any client that trusts the (public) CA
    could call every method, so it counts as unprotected."""
    config = ServerConfig(address=address, data_dir=str(tmp_path / "d"),
                          tls_cert=str(pki.server.cert), tls_key=str(pki.server.key))
    from assay.server.wiring.app import start
    with pytest.raises(ConfigError, match="TLS but no client authentication") as err:
        start(config)
    for remedy in ("--auth-token-file", "--tls-client-ca", "--insecure"):
        assert remedy in str(err.value)
    assert not (tmp_path / "d").exists()


def test_tls_without_client_authentication_is_fine_on_loopback(tmp_path, pki):
    check_exposure(ServerConfig(address="127.0.0.1:0,unix:/tmp/assay-h5.sock",
                                data_dir=str(tmp_path), tls_cert=str(pki.server.cert),
                                tls_key=str(pki.server.key)))


def test_an_anonymous_tls_client_cannot_reach_an_exposed_server(server_factory, pki,
                                                                selections):
    """With mutual TLS on 0.0.0.0, a client that trusts the server's CA but presents no
    certificate of its own is refused before any handler runs."""
    srv = server_factory(address="0.0.0.0:0", tls_cert=str(pki.server.cert),
                         tls_key=str(pki.server.key), tls_client_ca=str(pki.ca.cert))
    with Client(f"127.0.0.1:{srv.port}", credentials=_creds(pki.ca), timeout=5,
                retries=0) as c:
        assert _attempt(c) == grpc.StatusCode.UNAVAILABLE
    _assert_untouched(srv, selections)


@pytest.mark.parametrize("settings, why", [
    ({"tls_cert": "server.crt"}, "go together"),
    ({"tls_key": "server.key"}, "go together"),
    ({"tls_client_ca": "ca.crt"}, "needs tls_cert"),
])
def test_incomplete_tls_settings_are_refused(tmp_path, settings, why):
    with pytest.raises(ValueError, match=why):
        ServerConfig(data_dir=str(tmp_path), **settings).validate()


def test_unreadable_or_non_pem_certificates_are_refused(server_factory, pki, tmp_path):
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello")
    with pytest.raises(ConfigError, match="not PEM"):
        server_factory(tls_cert=str(not_pem), tls_key=str(pki.server.key))
    with pytest.raises(ConfigError, match="cannot read TLS client CA"):
        server_factory(tls_cert=str(pki.server.cert), tls_key=str(pki.server.key),
                       tls_client_ca=str(tmp_path / "absent.crt"))


# -- assay health with TLS and token options -------------------------------------------------


def test_health_cli_over_mtls(mtls_server, pki, capsys):
    base = ["health", "--target", f"127.0.0.1:{mtls_server.port}", "--timeout", "5",
            "--tls-ca", str(pki.ca.cert)]
    client = ["--tls-cert", str(pki.client.cert), "--tls-key", str(pki.client.key)]
    assert cli.main([*base, *client]) == 0
    assert capsys.readouterr().out.strip() == "SERVING"
    assert cli.main(base) == 1
    assert "UNAVAILABLE" in capsys.readouterr().err
    assert cli.main([*base, "--tls-cert", str(pki.client.cert)]) == 2
    assert cli.main(["health", "--target", f"127.0.0.1:{mtls_server.port}", "--timeout", "5",
                     "--tls-ca", str(pki.other_ca.cert), *client]) == 1


def test_health_cli_with_a_server_name_override(server_factory, pki, capsys):
    srv = server_factory(tls_cert=str(pki.server.cert), tls_key=str(pki.server.key))
    args = ["health", "--target", f"127.0.0.1:{srv.port}", "--timeout", "5",
            "--tls-ca", str(pki.ca.cert)]
    assert cli.main([*args, "--tls-server-name", "localhost"]) == 0
    assert cli.main([*args, "--tls-server-name", "not-the-server.example"]) == 1
    assert cli.main([*args, "--tls-ca", str(pki.ca.cert) + ".absent"]) == 2


def test_health_cli_sends_the_token_file(token_server, tmp_path, capsys):
    good = tmp_path / "good"
    good.write_text(TOKEN + "\n")
    empty = tmp_path / "empty"
    empty.write_text("")
    target = ["health", "--target", f"127.0.0.1:{token_server.port}", "--timeout", "5"]
    assert cli.main([*target, "--token-file", str(good)]) == 0
    assert cli.main([*target, "--token-file", str(empty)]) == 2
    assert cli.main([*target, "--service", "assay.v1.AssayService"]) == 0
    assert cli.main([*target, "--service", "no.such.Service"]) == 1
