"""The call log: one line per call at INFO (successes too), with the method, the status,
the duration and what the call did (a Select's strategy, N, budget, backend), the request
id and the peer; health checks at DEBUG; ``--log-format json`` lines that parse."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from assay.client import AssayError, Client
from assay.server.wiring.logs import JsonFormatter

PROBS = np.random.default_rng(11).dirichlet(np.ones(3), size=40).astype(np.float32)
RPC_LOGGER = "assay.server.rpc"
SELECT = "assay.v1.AssayService/Select"


def _calls(caplog, method: str) -> list[dict]:
    return [r.rpc for r in caplog.records if r.name == RPC_LOGGER and r.rpc["method"] == method]


def test_a_successful_select_is_one_info_line_with_its_fields(server, caplog):
    with caplog.at_level(logging.INFO, logger=RPC_LOGGER):
        with Client(f"127.0.0.1:{server.port}", timeout=30) as c:
            selected = c.select("entropy", 2, probs=PROBS, exclude=np.arange(4),
                                request_id="trainer-run-7")
    [record] = [r for r in caplog.records if r.name == RPC_LOGGER]
    assert record.levelno == logging.INFO
    fields = record.rpc
    assert fields["method"] == SELECT and fields["code"] == "OK"
    assert fields["duration_ms"] > 0
    assert (fields["strategy"], fields["n"], fields["budget"], fields["backend"]) == \
        ("entropy", 36, 2, selected.backend)
    assert fields["request_id"] == "trainer-run-7"
    assert re.fullmatch(r"ipv[46]:.+:\d+", fields["peer"]), fields["peer"]
    assert "reason" not in fields
    text = record.getMessage()
    assert text.startswith(f"{SELECT} OK ") and " ms " in text
    for part in ("strategy=entropy", "n=36", "budget=2", f"backend={selected.backend}",
                 "request_id=trainer-run-7", "peer=ipv"):
        assert part in text, text


def test_failed_calls_name_their_code_reason_and_what_is_known(server, caplog):
    with caplog.at_level(logging.INFO, logger=RPC_LOGGER):
        with Client(f"127.0.0.1:{server.port}", timeout=30, retries=0) as c:
            with pytest.raises(AssayError) as absent:
                c.get_pool("absent")
            with pytest.raises(AssayError) as budget:
                c.select("entropy", 100, probs=PROBS)
    [get] = _calls(caplog, "assay.v1.AssayService/GetPool")
    assert (get["code"], get["reason"], get["pool_id"]) == \
        ("NOT_FOUND", absent.value.reason, "absent")
    assert get["error"] == absent.value.message
    [select] = _calls(caplog, SELECT)
    assert (select["code"], select["reason"]) == ("INVALID_ARGUMENT", budget.value.reason)
    assert (select["strategy"], select["budget"]) == ("entropy", 100)
    assert "n" not in select and "backend" not in select
    assert 'error="' in [r for r in caplog.records if r.name == RPC_LOGGER][-1].getMessage()


def test_a_caller_request_id_header_is_logged(server, caplog):
    with caplog.at_level(logging.INFO, logger=RPC_LOGGER):
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            from assay.v1 import assay_pb2, assay_pb2_grpc
            assay_pb2_grpc.AssayServiceStub(channel).ListStrategies(
                assay_pb2.ListStrategiesRequest(), timeout=30,
                metadata=(("x-request-id", "edge-proxy-1"),))
    [call] = _calls(caplog, "assay.v1.AssayService/ListStrategies")
    assert call["request_id"] == "edge-proxy-1"


def test_health_checks_are_logged_at_debug_only(server, caplog):
    def check():
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)

    with caplog.at_level(logging.INFO, logger=RPC_LOGGER):
        check()
    assert not [r for r in caplog.records if r.name == RPC_LOGGER]
    with caplog.at_level(logging.DEBUG, logger=RPC_LOGGER):
        check()
    [record] = [r for r in caplog.records if r.name == RPC_LOGGER]
    assert record.levelno == logging.DEBUG and record.rpc["code"] == "OK"


def test_the_json_formatter_puts_each_field_at_the_top_level(server, caplog):
    with caplog.at_level(logging.INFO, logger=RPC_LOGGER):
        with Client(f"127.0.0.1:{server.port}", timeout=30) as c:
            c.select("entropy", 3, probs=PROBS)
    [record] = [r for r in caplog.records if r.name == RPC_LOGGER]
    line = JsonFormatter().format(record)
    assert "\n" not in line
    data = json.loads(line)
    assert {"time", "level", "logger", "message", "method", "code", "duration_ms", "strategy",
            "n", "budget", "backend", "request_id", "peer"} <= data.keys()
    assert (data["level"], data["logger"], data["method"], data["code"]) == \
        ("INFO", RPC_LOGGER, SELECT, "OK")
    assert (data["strategy"], data["n"], data["budget"]) == ("entropy", 40, 3)
    assert data["time"].endswith("Z")


def test_serve_with_log_format_json_writes_only_json_lines(tmp_path):
    """A real process: start-up lines and call lines are JSON objects, one per line (the
    calls need no kernel: a fresh process would load them from the cache first)."""
    log = tmp_path / "server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASSAY_")}
    with log.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "assay.server", "serve", "--address", "127.0.0.1:0",
             "--data-dir", str(tmp_path / "data"), "--no-warmup", "--log-format", "json",
             "--grace-seconds", "1"],
            stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
    try:
        line = proc.stdout.readline()
        match = re.match(r"assay listening on 127\.0\.0\.1:(\d+)", line)
        assert match, (line, log.read_text())
        with Client(f"127.0.0.1:{match.group(1)}", timeout=60, retries=0) as c:
            c.create_pool("json-pool")
            with pytest.raises(AssayError) as absent:
                c.get_pool("absent")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = log.read_text().splitlines()
    records = [json.loads(text) for text in lines]  # every line parses
    messages = [r["message"] for r in records]
    assert any(m.startswith("kernel warm-up off") for m in messages), messages
    assert any(m.startswith("start-up took") for m in messages), messages
    [created] = [r for r in records if r.get("method") == "assay.v1.AssayService/CreatePool"]
    assert (created["code"], created["pool_id"], created["level"], created["logger"]) == \
        ("OK", "json-pool", "INFO", RPC_LOGGER)
    assert created["duration_ms"] > 0 and created["peer"].startswith("ipv")
    [get] = [r for r in records if r.get("method") == "assay.v1.AssayService/GetPool"]
    assert (get["code"], get["reason"], get["pool_id"]) == \
        ("NOT_FOUND", absent.value.reason, "absent")
