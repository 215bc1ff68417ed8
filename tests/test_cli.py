"""The command line and operations: flags and ``ASSAY_*`` variables, unix sockets, the
health-only port, ``/metrics``, and graceful drain of a real ``assay serve`` process."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import fields
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from assay.client import AssayError, Client
from assay.server.wiring import cli
from assay.server.wiring.app import metrics_host
from assay.server.wiring.config import ServerConfig, markdown_table, parse_bool
from assay.v1 import assay_pb2, assay_pb2_grpc, tensor_pb2

ROOT = Path(__file__).resolve().parents[1]
PROBS = np.random.default_rng(3).dirichlet(np.ones(3), size=40).astype(np.float32)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _health(target: str, timeout: float = 5.0) -> int:
    with grpc.insecure_channel(target) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                         timeout=timeout).status


# -- settings ---------------------------------------------------------------------------------


def test_every_setting_has_a_flag_and_an_env_var(capsys):
    with pytest.raises(SystemExit):
        cli.main(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for f in fields(ServerConfig):
        assert "--" + f.name.replace("_", "-") in text
        assert ServerConfig.env_name(f.name) in text


def test_env_vars_are_read_and_flags_win(monkeypatch, tmp_path):
    monkeypatch.setenv("ASSAY_MAX_POOLS", "7")
    monkeypatch.setenv("ASSAY_MAX_DEADLINE_SECONDS", "2.5")
    monkeypatch.setenv("ASSAY_INSECURE", "yes")
    monkeypatch.setenv("ASSAY_DATA_DIR", str(tmp_path / "from-env"))
    monkeypatch.setenv("ASSAY_ADDRESS", "127.0.0.1:1")
    config = ServerConfig.from_env(address="127.0.0.1:2", max_pools=None)
    assert (config.max_pools, config.max_deadline_seconds, config.insecure) == (7, 2.5, True)
    assert config.address == "127.0.0.1:2"
    assert (tmp_path / "from-env").is_dir()
    monkeypatch.setenv("ASSAY_INSECURE", "off")
    assert ServerConfig.from_env().insecure is False


@pytest.mark.parametrize("name, raw", [("ASSAY_MAX_POOLS", "many"), ("ASSAY_INSECURE", "maybe"),
                                       ("ASSAY_GRACE_SECONDS", "soon"),
                                       ("ASSAY_WORKERS", "0")])
def test_unreadable_env_vars_stop_serve_with_exit_2(monkeypatch, tmp_path, capsys, name, raw):
    monkeypatch.setenv(name, raw)
    assert cli.main(["serve", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("assay serve: error:")
    assert name in err or "workers" in err


def test_serve_refuses_an_exposed_address_with_exit_2(tmp_path, capsys):
    assert cli.main(["serve", "--address", "0.0.0.0:0", "--data-dir", str(tmp_path)]) == 2
    assert "refusing to serve on 0.0.0.0:0" in capsys.readouterr().err


def test_parse_bool_is_strict():
    assert [parse_bool(v) for v in ("1", "TRUE", " on ", "0", "No", "")] == \
        [True, True, True, False, False, False]
    with pytest.raises(ValueError):
        parse_bool("enabled")


def test_the_documented_table_is_the_generated_one():
    doc = (ROOT / "docs" / "deployment.md").read_text()
    match = re.search(r"<!-- settings:begin -->\n(.*?)<!-- settings:end -->", doc, re.S)
    assert match, "docs/deployment.md lost its settings markers"
    assert match.group(1) == markdown_table(), \
        "regenerate the table: python -m assay.server.wiring.config"


# -- addresses ----------------------------------------------------------------------------------


def test_unix_socket_serves_the_python_client_and_health(server_factory, tmp_path, capsys):
    sock = tmp_path / "run" / "assay.sock"
    sock.parent.mkdir()
    srv = server_factory(address=f"127.0.0.1:0,unix:{sock}")
    assert srv.port > 0 and len(srv.ports) == 2
    with Client(f"unix:{sock}", timeout=10) as c:
        assert c.select("entropy", 4, probs=PROBS).indices.size == 4
        c.create_pool("over-socket")
    with Client(f"127.0.0.1:{srv.port}", timeout=10) as c:
        assert [p.pool_id for p in c.list_pools()] == ["over-socket"]
    assert cli.main(["health", "--target", f"unix:{sock}"]) == 0
    assert capsys.readouterr().out.strip() == "SERVING"
    assert metrics_host(srv.config) == "127.0.0.1"


def test_socket_only_server_reports_port_zero_and_metrics_on_loopback(server_factory, tmp_path):
    srv = server_factory(address=f"unix:{tmp_path / 'a.sock'}")
    assert srv.port == 0 and srv.ports == [1]
    assert metrics_host(srv.config) == "127.0.0.1"
    assert metrics_host(ServerConfig(address="[::1]:5", data_dir="")) == "::1"
    assert metrics_host(ServerConfig(metrics_host="0.0.0.0", data_dir="")) == "0.0.0.0"


def test_health_only_port_serves_health_and_nothing_else(server_factory):
    srv = server_factory(health_address="127.0.0.1:0")
    target = f"127.0.0.1:{srv.health_port}"
    assert _health(target) == health_pb2.HealthCheckResponse.SERVING
    with grpc.insecure_channel(target) as channel:
        with pytest.raises(grpc.RpcError) as err:
            assay_pb2_grpc.AssayServiceStub(channel).ListStrategies(
                assay_pb2.ListStrategiesRequest(), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_health_cli_reports_an_unreachable_server(capsys):
    assert cli.main(["health", "--target", f"127.0.0.1:{_free_port()}", "--timeout",
                     "0.5"]) == 1
    assert "unhealthy" in capsys.readouterr().err


# -- metrics --------------------------------------------------------------------------------------


def test_metrics_endpoint_counts_calls_by_code(server_factory):
    port = _free_port()
    srv = server_factory(metrics_port=port)
    with Client(f"127.0.0.1:{srv.port}", timeout=10) as c:
        c.select("entropy", 2, probs=PROBS)
        with pytest.raises(AssayError):
            c.get_pool("absent")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    assert re.search(r'grpc_server_handled_total\{grpc_code="OK",grpc_method="Select",'
                     r'grpc_service="assay.v1.AssayService"\} 1\.0\n', text)
    assert 'grpc_code="NOT_FOUND",grpc_method="GetPool",' \
           'grpc_service="assay.v1.AssayService"} 1.0' in text
    assert 'grpc_server_handling_seconds_count{grpc_method="Select",' \
           'grpc_service="assay.v1.AssayService"} 1.0' in text
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/other", timeout=5)
    assert err.value.code == 404


# -- graceful drain of a real process ----------------------------------------------------


def _metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


@pytest.mark.slow
def test_sigterm_finishes_the_in_flight_upload_and_exits_0(tmp_path):
    metrics_port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASSAY_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "assay.server", "serve", "--address", "127.0.0.1:0",
         "--data-dir", str(tmp_path / "data"), "--metrics-port", str(metrics_port),
         "--grace-seconds", "30", "--workers", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        match = re.match(r"assay listening on 127\.0\.0\.1:(\d+)", line)
        assert match, (line, proc.stderr.read() if proc.poll() is not None else "")
        target = f"127.0.0.1:{match.group(1)}"
        with Client(target, timeout=30) as c:
            c.create_pool("p")

        data = PROBS.tobytes()
        half = len(data) // 2
        release = threading.Event()

        def stream():
            yield assay_pb2.AppendPoolItemsRequest(header=assay_pb2.AppendHeader(
                pool_id="p", arrays=[assay_pb2.ArrayHeader(
                    name="probs", dtype=tensor_pb2.DATA_TYPE_FP32, shape=PROBS.shape)]))
            yield assay_pb2.AppendPoolItemsRequest(chunk=assay_pb2.AppendChunk(
                array_index=0, offset=0, data=data[:half]))
            assert release.wait(30)
            yield assay_pb2.AppendPoolItemsRequest(chunk=assay_pb2.AppendChunk(
                array_index=0, offset=half, data=data[half:]))

        result: dict = {}

        def upload():
            with grpc.insecure_channel(target) as channel:
                try:
                    result["ok"] = assay_pb2_grpc.AssayServiceStub(channel).AppendPoolItems(
                        stream(), timeout=60)
                except grpc.RpcError as error:
                    result["error"] = error

        uploader = threading.Thread(target=upload)
        uploader.start()
        deadline = time.monotonic() + 30
        while _metric(metrics_port, "assay_received_bytes_total") < half:
            assert time.monotonic() < deadline, "the upload never reached the server"
            time.sleep(0.05)

        proc.send_signal(signal.SIGTERM)
        # A fresh deadline: the first append may have paid for compiling the checks.
        deadline = time.monotonic() + 30
        while True:  # draining: new calls are refused while the upload is still open
            try:
                if _health(target, timeout=1) != health_pb2.HealthCheckResponse.SERVING:
                    break
            except grpc.RpcError:
                break
            assert time.monotonic() < deadline, "SIGTERM did not start a drain"
            time.sleep(0.05)
        assert proc.poll() is None, "the server exited with an upload in flight"

        release.set()
        uploader.join(30)
        assert "error" not in result, result.get("error")
        assert (result["ok"].appended_count, result["ok"].pool.item_count) == (40, 40)
        assert proc.wait(30) == 0
        assert "drained" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -- the example trainer shipped in deploy/ --------------------------------------------------


def _configmap_script(path: Path, key: str) -> str:
    """The block-scalar value of ``key`` in a ConfigMap, without a YAML parser."""
    lines = path.read_text().splitlines()
    start = lines.index(f"  {key}: |") + 1
    body = []
    for line in lines[start:]:
        if line.strip() and not line.startswith("    "):
            break
        body.append(line[4:])
    return "\n".join(body) + "\n"


@pytest.mark.slow
def test_the_example_trainer_runs_against_the_sidecar_socket(server_factory, tmp_path):
    sock = tmp_path / "assay.sock"
    srv = server_factory(address=f"unix://{sock}")
    script = tmp_path / "trainer.py"
    script.write_text(_configmap_script(
        ROOT / "deploy" / "kubernetes" / "base" / "trainer-configmap.yaml", "trainer.py"))
    env = {**os.environ, "ASSAY_TARGET": f"unix://{sock}", "POD_NAME": "assay-trainer-x1"}
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "round 4: labeled 160 of 20000"
    assert srv.store.list_pools() == []


def test_a_stuck_thread_cannot_keep_a_drained_server_alive(tmp_path):
    """The interpreter's shutdown joins every non-daemon thread: one that never ends would
    keep a drained pod alive until the kubelet kills it. Past grace + 10 s the server
    exits anyway, with 0 since it had drained, and names the thread."""
    script = (
        "import sys, threading\n"
        "threading.Thread(target=threading.Event().wait, name='stuck-forever').start()\n"
        "from assay.server.wiring.cli import main\n"
        f"sys.argv = ['assay', 'serve', '--address', '127.0.0.1:0', '--data-dir', "
        f"{str(tmp_path / 'data')!r}, '--no-warmup', '--grace-seconds', '1']\n"
        "sys.exit(main())\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASSAY_")}
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().startswith("assay listening on")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "stuck-forever" in proc.stderr.read()
