"""The Java client (clients/java) against a live server: its checks and the conformance vectors,
a consumer project built against the installed jar, and the example trainer's round loop.

``clients/ci-setup.sh`` builds the client (``clients/java/build.sh``); when the build is missing
or older than its sources, the first test builds it. Skipped only where ``javac`` is missing
(CI installs it); a missing protoc or Debian jar fails.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import client_vectors
import model_vectors
import pytest

from assay.client import Client

ROOT = Path(__file__).resolve().parents[2]
JAVA = ROOT / "clients" / "java"
BUILD = JAVA / "build"
VERSION = "0.1.0"
JAR = BUILD / f"assay-client-{VERSION}.jar"
#: What the build reads: a build older than any of these is rebuilt.
SOURCES = [JAVA / "src", JAVA / "examples", JAVA / "build.sh", JAVA / "pom.xml.in",
           ROOT / "protos" / "assay" / "v1", ROOT / "protos" / "third_party"]

pytestmark = pytest.mark.skipif(shutil.which("javac") is None,
                                reason="javac is missing (clients/ci-setup.sh installs it)")


def _newest(paths: list[Path]) -> float:
    return max(f.stat().st_mtime for p in paths for f in ([p] if p.is_file() else p.rglob("*"))
               if f.is_file())


@pytest.fixture(scope="module")
def built() -> str:
    """The built client; returns the runtime classpath of its dependencies."""
    outputs = [JAR, BUILD / "classpath.txt", BUILD / "test-classes", BUILD / "example-classes"]
    if not all(p.exists() for p in outputs) or JAR.stat().st_mtime < _newest(SOURCES):
        proc = subprocess.run(["bash", str(JAVA / "build.sh")], capture_output=True, text=True,
                              timeout=900, check=False)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return (BUILD / "classpath.txt").read_text().strip()


def _java(classpath: list[str], main: str, args: list[str], target: str,
          extra_env: dict | None = None, timeout: float = 1200) -> str:
    env = dict(os.environ, ASSAY_TARGET=target, **(extra_env or {}))
    proc = subprocess.run(["java", "-cp", ":".join(classpath), main, *args], cwd=JAVA, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{main} {args} failed ({proc.returncode}):\n{out[-6000:]}"
    return out


@pytest.mark.timeout(1500)  # a cold server compiles kernels during the first vectors
def test_java_checks_and_vectors(built, live_server, tmp_path):
    """Every conformance vector and the model vectors, the client's calls (pools, replace,
    idempotent retries, reason/field of errors, deadlines) and, against an in-process fake
    server, the retries of the bundled service config within one deadline."""
    models = model_vectors.write(tmp_path)
    out = _java([str(JAR), str(BUILD / "test-classes"), built], "dev.assay.client.ClientChecks",
                [], live_server, {"ASSAY_MODEL_VECTORS": str(models)})
    n = len(client_vectors.load()["cases"])
    assert f"conformance: {n} passed, 0 failed" in out, out[-4000:]
    assert "ok   model vectors" in out, out[-4000:]
    assert "ok   UNAVAILABLE is retried by the service config, then answered" in out, out[-4000:]
    assert re.search(r"^checks: \d+ passed, 0 failed$", out, re.M), out[-4000:]


def test_java_consumer_project(built, live_server, tmp_path):
    """A project of its own compiles against the jar installed into a Maven-layout repository
    (no source of the client) and runs a pool round trip."""
    env = dict(os.environ, ASSAY_MAVEN_REPO=str(tmp_path / "m2"), ASSAY_TARGET=live_server)
    proc = subprocess.run(["bash", str(JAVA / "build.sh"), "install"], env=env,
                          capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    installed = tmp_path / "m2" / "dev" / "assay" / "assay-client" / VERSION
    assert (installed / f"assay-client-{VERSION}.jar").exists()
    assert "<artifactId>grpc-netty</artifactId>" in (
        installed / f"assay-client-{VERSION}.pom").read_text()
    proc = subprocess.run(["bash", str(JAVA / "consumer" / "build.sh"), "run"], env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "selected [1, 2] at pool version 1" in out, out
    assert "after delete: NOT_FOUND POOL_NOT_FOUND" in out, out


def test_java_example_trainer(built, live_server):
    """The round loop: each Select reports a newer pool version (the trainer itself exits 1
    when a Select misses the version its replace left, picks a labeled item, or the pool loses
    a label), and the pool is gone at the end."""
    rounds = 4
    out = _java([str(JAR), str(BUILD / "example-classes"), built],
                "dev.assay.examples.ExampleTrainer",
                ["--rounds", str(rounds), "--strategy", "margin"], live_server)
    seen = [tuple(map(int, m)) for m in re.findall(r"^round (\d+): pool version (\d+),", out, re.M)]
    assert [r for r, _ in seen] == list(range(rounds)), out
    versions = [v for _, v in seen]
    assert versions == sorted(set(versions)), out  # strictly increasing
    assert re.search(rf"^final: accuracy [0-9.]+ with {4 + 20 * rounds} labels$", out, re.M), out
    with Client(live_server, timeout=10) as c:
        assert not any(p.pool_id == "example-trainer-java" for p in c.list_pools())


@pytest.mark.timeout(1500)  # the secure server warms every kernel up before it serves
def test_java_over_mtls_with_token(built, secure_server):
    """The client's checks and the trainer over mTLS with a bearer token (ASSAY_TOKEN,
    ASSAY_TLS_*), including a call without the token: UNAUTHENTICATED."""
    target, env = secure_server
    out = _java([str(JAR), str(BUILD / "test-classes"), built], "dev.assay.client.ClientChecks",
                ["--client-checks"], target, env)
    assert "ok   a call without the bearer token is UNAUTHENTICATED" in out, out[-4000:]
    assert re.search(r"^checks: \d+ passed, 0 failed$", out, re.M), out[-4000:]
    out = _java([str(JAR), str(BUILD / "example-classes"), built],
                "dev.assay.examples.ExampleTrainer", ["--rounds", "2"], target, env)
    assert "round 1: pool version" in out, out
