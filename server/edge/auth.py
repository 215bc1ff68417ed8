"""Who may talk to the server: TLS / mutual-TLS credentials, bearer tokens, bind policy.

Authentication happens before any handler runs: the TLS handshake rejects a
client without a certificate from the configured CA, and ``TokenInterceptor``
answers UNAUTHENTICATED from the call's metadata alone, so a rejected call never
reaches the servicer, the store or a strategy. Health checks are exempt from the
token because kubelet gRPC probes cannot send one, and they reveal only whether
the server is serving.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

import grpc

#: Methods callable without a token (the standard health service).
EXEMPT_PREFIXES = ("/grpc.health.v1.Health/",)
#: Shorter tokens are refused at start-up: they can be guessed.
MIN_TOKEN_CHARS = 16
_LOOPBACK_NAMES = {"localhost", "ip6-localhost"}


class TransportSettings(Protocol):
    """The settings these checks read (``ServerConfig`` has them): how the API listens
    and how it authenticates its callers."""

    tls_cert: str
    tls_key: str
    tls_client_ca: str
    auth_token_file: str
    insecure: bool

    def addresses(self) -> list[str]: ...


class ConfigError(ValueError):
    """A security setting that makes the server refuse to start."""


def load_tokens(path: str) -> tuple[bytes, ...]:
    """Read the accepted tokens: one per line, blank lines ignored (two lines allow rotation).

    Raises
    ------
    ConfigError
        When the file is unreadable, holds no token, or a token is too short.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read auth token file {path!r}: {error}") from None
    tokens = tuple(line.strip().encode() for line in text.splitlines() if line.strip())
    if not tokens:
        raise ConfigError(f"auth token file {path!r} holds no token")
    for i, token in enumerate(tokens):
        if len(token) < MIN_TOKEN_CHARS or b" " in token:
            raise ConfigError(f"token on line {i + 1} of {path!r} must be {MIN_TOKEN_CHARS}+ "
                              "characters without spaces (e.g. `openssl rand -hex 32`)")
    return tokens


def _read(path: str, what: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise ConfigError(f"cannot read {what} {path!r}: {error}") from None
    if b"-----BEGIN" not in data:
        raise ConfigError(f"{what} {path!r} is not PEM")
    return data


def server_credentials(config: TransportSettings) -> grpc.ServerCredentials | None:
    """TLS credentials from the config (client certificates required when a client CA is
    set), or None for plaintext."""
    if not config.tls_cert:
        return None
    key = _read(config.tls_key, "TLS key")
    chain = _read(config.tls_cert, "TLS certificate")
    client_ca = _read(config.tls_client_ca, "TLS client CA") if config.tls_client_ca else None
    return grpc.ssl_server_credentials([(key, chain)], root_certificates=client_ca,
                                       require_client_auth=client_ca is not None)


def is_local(address: str) -> bool:
    """True for Unix sockets and loopback hosts: only this machine (or pod) can connect."""
    if address.startswith(("unix:", "unix-abstract:")):
        return True
    host = address.rsplit(":", 1)[0] if ":" in address else address
    host = host.strip("[]").lower()
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(config: TransportSettings) -> None:
    """Refuse to serve the API on a reachable address that authenticates no client.

    A bearer token or mutual TLS (``--tls-client-ca``) says who is calling; TLS with a
    server certificate alone only encrypts, so an anonymous client on the network
    could still call every method (delete a pool, say) and is refused here too.
    ``--insecure`` overrides this for networks the operator trusts; the health-only
    address is exempt since it serves nothing else.
    """
    if config.insecure or config.auth_token_file or config.tls_client_ca:
        return
    exposed = [a for a in config.addresses() if not is_local(a)]
    if not exposed:
        return
    if config.tls_cert:
        raise ConfigError(
            f"refusing to serve on {', '.join(exposed)} with TLS but no client "
            "authentication: TLS encrypts, it does not say who is calling, so any client "
            "that can connect could call every method. Add --auth-token-file (bearer "
            "tokens) and/or --tls-client-ca (mutual TLS), listen on loopback or a unix: "
            "socket, or pass --insecure on a trusted network")
    raise ConfigError(
        f"refusing to serve on {', '.join(exposed)} without client authentication: set "
        "--auth-token-file (bearer tokens, with --tls-cert/--tls-key so they do not travel "
        "in the clear) and/or --tls-cert/--tls-key with --tls-client-ca (mutual TLS), "
        "listen on loopback or a unix: socket, or pass --insecure on a trusted network")


class TokenInterceptor(grpc.ServerInterceptor):
    """Answers UNAUTHENTICATED unless the call carries ``authorization: Bearer <token>``.

    Every accepted token is compared with ``hmac.compare_digest`` and all of them
    are always compared, so timing reveals neither a token's prefix nor which one
    matched.
    """

    def __init__(self, tokens: Sequence[bytes], exempt: Iterable[str] = EXEMPT_PREFIXES):
        if not tokens:
            raise ConfigError("TokenInterceptor needs at least one token")
        self._tokens = tuple(tokens)
        self._exempt = tuple(exempt)

    def authorized(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> bool:
        values = [v for k, v in (metadata or ()) if k == "authorization"]
        if len(values) != 1:
            return False
        value = values[0].decode("latin-1") if isinstance(values[0], bytes) else values[0]
        scheme, _, presented = value.strip().partition(" ")
        if scheme.lower() != "bearer":
            return False
        candidate = presented.strip().encode("utf-8", "replace")
        matched = False
        for token in self._tokens:
            matched |= hmac.compare_digest(candidate, token)
        return matched

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler_call_details.method.startswith(self._exempt) or self.authorized(
                handler_call_details.invocation_metadata):
            return handler
        return _rejecting(handler)


def _reject(request_or_iterator, context: grpc.ServicerContext):
    context.set_trailing_metadata((("www-authenticate", 'Bearer realm="assay"'),))
    context.abort(grpc.StatusCode.UNAUTHENTICATED,
                  "missing or invalid bearer token: send 'authorization: Bearer <token>'")


def _rejecting(handler: grpc.RpcMethodHandler | None) -> grpc.RpcMethodHandler:
    """A handler of the same streaming kind as ``handler`` that aborts without reading."""
    if handler is not None and handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(_reject)
    if handler is not None and handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(_reject)
    if handler is not None and handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(_reject)
    return grpc.unary_unary_rpc_method_handler(_reject)
