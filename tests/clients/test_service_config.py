"""Retries come from the contract's one service config, with one deadline per call.

Every client ships a copy of protos/assay/v1/service_config.json (written by
protos/gen_service_config.py): the copies hold its exact text. The Python client's
retries are gRPC's own: a server answering UNAVAILABLE twice is called three times
and the call succeeds; a server that takes 0.4 s per UNAVAILABLE answer meets the
call's one deadline of 1 s after at most 3 attempts (each attempt restarting the
deadline would have made 4 attempts and answered UNAVAILABLE). Attempts are counted
on the server. The Go, C++ and TypeScript clients have the same two tests in their own
runners (clients/go/retry_test.go, clients/cpp/tests/error_test.cc,
clients/node/test/retry.test.ts).
"""

from __future__ import annotations

import importlib.util
import json
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest

from assay.client import AssayError, Client, service_config
from assay.v1 import assay_pb2, assay_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "protos" / "assay" / "v1" / "service_config.json"


def _generator():
    spec = importlib.util.spec_from_file_location("gen_service_config",
                                                  ROOT / "protos" / "gen_service_config.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_client_ships_the_same_service_config():
    text = SOURCE.read_text()
    generator = _generator()
    for path, content in generator.copies(text).items():
        assert path.read_text() == content, f"{path} differs: run protos/generate.sh"
        assert generator.embedded(path) == text, path
    assert json.loads(service_config()) == json.loads(text)


def test_service_config_retries_the_methods_safe_to_send_twice():
    config = json.loads(SOURCE.read_text())
    [method] = config["methodConfig"]
    names = {(n["service"], n["method"]) for n in method["name"]}
    assert ("assay.v1.AssayService", "Select") in names
    assert not names & {("assay.v1.AssayService", "CreatePool"),
                        ("assay.v1.AssayService", "DeletePool"),
                        ("assay.v1.ModelService", "RegisterModel"),
                        ("assay.v1.ModelService", "DeleteModel")}
    assert method["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE", "RESOURCE_EXHAUSTED"]
    assert json.loads(service_config(retries=1))["methodConfig"][0]["retryPolicy"][
        "maxAttempts"] == 2


class Flaky(assay_pb2_grpc.AssayServiceServicer):
    """Answers UNAVAILABLE ``failures`` times (after ``delay`` seconds each), then OK."""

    def __init__(self, failures: int, delay: float = 0.0):
        self.failures, self.delay = failures, delay
        self.attempts = 0
        self.request_ids: list[str] = []
        self.lock = threading.Lock()

    def _attempt(self, context) -> None:
        with self.lock:
            self.attempts += 1
            attempt = self.attempts
        if self.delay:
            time.sleep(self.delay)
        if attempt <= self.failures:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"attempt {attempt}: restarting")

    def Select(self, request, context):
        self.request_ids.append(request.request_id)
        self._attempt(context)
        return assay_pb2.SelectResponse(indices=[1], scores=[0.5], strategy=request.strategy,
                                        request_id=request.request_id)

    def CreatePool(self, request, context):
        self._attempt(context)
        return assay_pb2.CreatePoolResponse(pool=assay_pb2.Pool(pool_id=request.pool_id))


@pytest.fixture
def flaky():
    servers = []

    def start(failures: int, delay: float = 0.0) -> tuple[Flaky, str]:
        servicer = Flaky(failures, delay)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        assay_pb2_grpc.add_AssayServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return servicer, f"127.0.0.1:{port}"

    yield start
    for server in servers:
        server.stop(None)


PROBS = np.full((2, 2), 0.5, np.float32)


def test_unavailable_twice_is_retried_by_the_service_config(flaky):
    servicer, target = flaky(failures=2)
    with Client(target, timeout=30) as c:
        selection = c.select("entropy", 1, probs=PROBS)
    assert servicer.attempts == 3
    assert selection.indices.tolist() == [1]
    assert len(set(servicer.request_ids)) == 1  # every attempt sent the same request id


def test_one_deadline_covers_every_attempt(flaky):
    # Each attempt takes 0.4 s on the server: a 4th attempt could start at 1.2 s at the
    # earliest, after the one 1 s deadline, so the call ends DEADLINE_EXCEEDED within 3.
    servicer, target = flaky(failures=10, delay=0.4)
    with Client(target, timeout=1.0) as c, pytest.raises(AssayError) as err:
        c.select("entropy", 1, probs=PROBS)
    assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED, err.value
    assert 1 <= servicer.attempts <= 3


def test_unsafe_methods_and_disabled_retries_are_sent_once(flaky):
    servicer, target = flaky(failures=1)
    with Client(target, timeout=30) as c, pytest.raises(AssayError) as err:
        c.create_pool("p")  # not in the config: a retry could answer ALREADY_EXISTS
    assert err.value.code == grpc.StatusCode.UNAVAILABLE and servicer.attempts == 1
    servicer, target = flaky(failures=1)
    with Client(target, timeout=30, retries=0) as c, pytest.raises(AssayError) as err:
        c.select("entropy", 1, probs=PROBS)
    assert err.value.code == grpc.StatusCode.UNAVAILABLE and servicer.attempts == 1
