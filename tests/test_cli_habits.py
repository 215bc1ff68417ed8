"""Command-line habits: ``--help`` shows every default, ``--version`` prints the version,
and a bad flag value or a busy port ends with one line on stderr and a non-zero exit."""

from __future__ import annotations

import importlib.metadata
import socket
from dataclasses import fields

import pytest

from assay.server.wiring import cli
from assay.server.wiring.config import ServerConfig


def _help(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as done:
        cli.main([*argv, "--help"])
    assert done.value.code == 0
    return " ".join(capsys.readouterr().out.split())


def _one_line_error(capfd, argv: list[str], tmp_path=None) -> str:
    """Run ``argv``; it must fail with exit 2 and exactly one line on stderr (fd 2, so
    that grpc's own C-core log would show too), and nothing on stdout."""
    try:
        code = cli.main(argv)
    except SystemExit as done:
        code = done.code
    out, err = capfd.readouterr()
    assert code == 2, (code, err)
    assert out == "", out
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err.strip()


def test_version_prints_the_installed_version(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"assay {importlib.metadata.version('assay')}\n"


def test_serve_help_shows_every_default(capsys):
    text = _help(capsys, "serve")
    assert text.count("(default: ") >= len(fields(ServerConfig))
    defaults = ServerConfig()
    for phrase in ("gRPC worker threads (default: 8)", "(default: 127.0.0.1:50051)",
                   f"(default: {defaults.data_dir})", "(default: text)", "(default: INFO)",
                   "(default: on) [env ASSAY_WARMUP]", "(default: empty) [env ASSAY_TLS_CERT]"):
        assert phrase in text, phrase


@pytest.mark.parametrize("command, phrases", [
    ("health", ["(default: 127.0.0.1:50051)", "(default: 3.0)"]),
    ("demo", ["(default: 10)", "(default: 20)", "(default: assay-demo.png)"]),
    ("warmup", ["(default: every strategy)", "(default: INFO)"]),
])
def test_other_commands_show_their_defaults(capsys, command, phrases):
    text = _help(capsys, command)
    for phrase in phrases:
        assert phrase in text, (command, phrase)
    assert "(default: None)" not in text


@pytest.mark.parametrize("argv, expected", [
    (["serve", "--workers", "many"], "assay serve: error: argument --workers: invalid int "
                                     "value: 'many'"),
    (["serve", "--no-such-flag"], "error: unrecognized arguments: --no-such-flag"),
    (["health", "--timeout", "soon"], "assay health: error: argument --timeout"),
    (["serve", "--log-format", "xml"], "assay serve: error: log_format must be one of text, "
                                       "json, got 'xml'"),
    (["serve", "--log-level", "loud"], "assay serve: error: log_level must be one of"),
])
def test_a_bad_flag_value_is_one_line_and_exit_2(capfd, tmp_path, argv, expected):
    if argv[0] == "serve":
        argv = [*argv, "--data-dir", str(tmp_path)]
    assert expected in _one_line_error(capfd, argv)


@pytest.fixture
def busy_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.mark.parametrize("flag", ["--address", "--health-address", "--metrics-port"])
def test_a_busy_port_is_one_line_and_exit_2(capfd, tmp_path, busy_port, flag):
    value = str(busy_port) if flag == "--metrics-port" else f"127.0.0.1:{busy_port}"
    argv = ["serve", "--data-dir", str(tmp_path), "--no-warmup", flag, value]
    if flag != "--address":
        argv += ["--address", "127.0.0.1:0"]
    line = _one_line_error(capfd, argv)
    assert line.startswith("assay serve: error: cannot ")
    assert f"127.0.0.1:{busy_port}" in line
    assert "in use" in line
