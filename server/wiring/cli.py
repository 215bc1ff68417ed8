"""Command line: ``assay serve``, ``assay demo``, ``assay health``, ``assay warmup``.

``--help`` shows every default; a flag value that cannot be read ends with one line on
stderr and exit 2, as does a setting ``assay serve`` cannot use (a busy port, a bad
value); ``assay --version`` prints the version.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import os
import sys
from dataclasses import fields
from pathlib import Path

from . import logs
from .config import ServerConfig, default_kernel_cache_dir

_TYPES = {"int": int, "float": float, "str": str}


class _Parser(argparse.ArgumentParser):
    """Reports a bad command line in one line (and exit 2), not usage plus an error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _Defaults(argparse.HelpFormatter):
    """Every option's default in its help, "(default: ...)", unless the help names it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("(default" in text or not action.option_strings
                or action.default in (None, argparse.SUPPRESS)):
            return text
        return f"{text} (default: %(default)s)"


def version() -> str:
    """The installed distribution's version."""
    try:
        return importlib.metadata.version("assay")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _default_text(defaults: ServerConfig, name: str) -> str:
    """A setting's default as ``--help`` shows it."""
    value = getattr(defaults, name)
    if isinstance(value, bool):
        return "on" if value else "off"
    return "empty" if value == "" else str(value)


def _serve_parser(sub) -> None:
    p = sub.add_parser("serve", help="run the gRPC service",
                       description="Every flag can also be set as ASSAY_<FLAG> (e.g. "
                                   "ASSAY_DATA_DIR); flags win.")
    defaults = ServerConfig()
    for f in fields(ServerConfig):
        flag = "--" + f.name.replace("_", "-")
        # Defaults are spelled out here: the parser's own stay None, so that a flag left
        # out leaves the environment variable, if any, in force.
        help_text = (f"{f.metadata['help']} (default: {_default_text(defaults, f.name)}) "
                     f"[env {ServerConfig.env_name(f.name)}]").replace("%", "%%")
        if str(f.type) == "bool":
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                           default=None, help=help_text)
        else:
            p.add_argument(flag, dest=f.name, type=_TYPES[str(f.type)], default=None,
                           help=help_text)


def _health_parser(sub) -> None:
    h = sub.add_parser("health", help="check a server's grpc.health.v1 status (exit 0 if "
                                      "SERVING): the container and Kubernetes exec probe",
                       formatter_class=_Defaults)
    h.add_argument("--target", default="127.0.0.1:50051", help="host:port or unix:/path")
    h.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer")
    h.add_argument("--service", default="", help="service name to ask about ('' = server)")
    h.add_argument("--tls", action="store_true",
                   help="use TLS with the system trust store (implied by --tls-ca)")
    h.add_argument("--tls-ca", help="PEM CA bundle that signed the server certificate")
    h.add_argument("--tls-cert", help="PEM client certificate, for servers requiring mTLS")
    h.add_argument("--tls-key", help="PEM private key of --tls-cert")
    h.add_argument("--tls-server-name", help="name to verify in the server certificate, when "
                                             "it differs from the target host")
    h.add_argument("--token-file", help="file whose first line is a bearer token to send")


def _warmup_parser(sub) -> None:
    w = sub.add_parser("warmup", help="compile every kernel into the on-disk kernel cache "
                                      "(run when a container image is built), then exit",
                       description="Fills the cache 'assay serve' loads its kernels from. "
                                   "Kernels are compiled for this CPU, or for the one named "
                                   "by NUMBA_CPU_NAME (e.g. generic, for a portable cache).",
                       formatter_class=_Defaults)
    w.add_argument("--kernel-cache-dir", default=None,
                   help="cache directory [env ASSAY_KERNEL_CACHE_DIR; default: the per-user "
                        "cache dir]")
    w.add_argument("--strategies", default="",
                   help="comma-separated strategies to warm up (default: every strategy)")
    w.add_argument("--log-level", default="INFO", help="least severe log records shown")


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="assay", description="Active-learning acquisition service (gRPC).")
    parser.add_argument("--version", action="version", version=f"assay {version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    d = sub.add_parser("demo", help="run an active-learning loop end to end through gRPC",
                       formatter_class=_Defaults)
    d.add_argument("--target", help="use a running server instead of starting one")
    d.add_argument("--rounds", type=int, default=10, help="labeling rounds per run")
    d.add_argument("--batch", type=int, default=20, help="items selected per round")
    d.add_argument("--seeds", type=int, default=3, help="runs per strategy, one per seed")
    d.add_argument("--strategies", default=None,
                   help="comma-separated strategies (default: random,margin,batchbald,badge: "
                        "one of each family)")
    d.add_argument("--initial", type=int, default=20, help="labels to start from")
    d.add_argument("--pool-size", type=int, default=0,
                   help="use only this many pool items (0: all)")
    d.add_argument("--committee", action="store_true",
                   help="samples from a bootstrap committee instead of MC dropout")
    d.add_argument("--plot", default="assay-demo.png", help="PNG learning-curve path")
    _health_parser(sub)
    _warmup_parser(sub)
    args = parser.parse_args(argv)

    if args.command == "serve":
        return _serve(args)
    if args.command == "demo":
        from .demo import run_demo
        return run_demo(target=args.target, rounds=args.rounds, batch=args.batch,
                        seeds=args.seeds, plot=args.plot, initial=args.initial,
                        strategies=args.strategies.split(",") if args.strategies else None,
                        committee=args.committee, pool_size=args.pool_size or None)
    if args.command == "health":
        return _health(args)
    if args.command == "warmup":
        return _warmup(args)
    return 2


def _warmup(args: argparse.Namespace) -> int:
    """Fill the kernel cache; exit 1 if any kernel failed to compile."""
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    from assay.vocab.errors import AssayError

    from .warmup import warm_up
    cache_dir = args.kernel_cache_dir
    if cache_dir is None:
        cache_dir = os.environ.get(ServerConfig.env_name("kernel_cache_dir"),
                                   default_kernel_cache_dir())
    names = [n.strip() for n in args.strategies.split(",") if n.strip()]
    try:
        report = warm_up(cache_dir, names)
    except AssayError as error:
        print(f"assay warmup: error: {error}", file=sys.stderr)
        return 2
    print(report.summary(), flush=True)
    for failure in report.failures:
        print(f"failed: {failure}", file=sys.stderr)
    return 1 if report.failures else 0


def _serve(args: argparse.Namespace) -> int:
    """Start serving; configuration mistakes (a bad value, a busy port) end with a one-line
    message and exit 2."""
    from .app import serve_forever
    overrides = {f.name: getattr(args, f.name) for f in fields(ServerConfig)}
    handler = None
    try:
        config = ServerConfig.from_env(**overrides)
        handler = logs.configure(config.log_level, config.log_format)
        serve_forever(config)
    except (ValueError, OSError) as error:
        print(f"assay serve: error: {error}", file=sys.stderr)
        return 2
    finally:
        if handler is not None:
            logs.remove(handler)
    return 0


def _read(path: str | None) -> bytes | None:
    return Path(path).read_bytes() if path else None


def _health(args: argparse.Namespace) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    if bool(args.tls_cert) != bool(args.tls_key):
        print("unhealthy: --tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    try:
        metadata = ()
        if args.token_file:
            token = Path(args.token_file).read_text(encoding="utf-8").strip().splitlines()[0]
            metadata = (("authorization", f"Bearer {token.strip()}"),)
        options = [("grpc.ssl_target_name_override", args.tls_server_name)] \
            if args.tls_server_name else []
        if args.tls or args.tls_ca or args.tls_cert:
            creds = grpc.ssl_channel_credentials(_read(args.tls_ca), _read(args.tls_key),
                                                 _read(args.tls_cert))
            channel = grpc.secure_channel(args.target, creds, options=options)
        else:
            channel = grpc.insecure_channel(args.target, options=options)
    except (OSError, IndexError) as error:
        print(f"unhealthy: cannot read TLS or token file: {error}", file=sys.stderr)
        return 2
    with channel:
        try:
            r = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout,
                metadata=metadata)
        except grpc.RpcError as error:
            print(f"unhealthy: {error.code().name} {error.details()}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)
    print(status)
    return 0 if r.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main())
