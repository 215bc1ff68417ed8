"""Each language's own test runner against a live server: ctest, go test, node --test.

The clients are built by ``clients/ci-setup.sh`` (CI runs it before pytest). A
client whose build is missing is skipped locally and fails under CI (CI=true),
so a broken toolchain cannot pass silently. Each runner reads every case's own
tolerance from the vectors, and its process gets 20 minutes: a cold server may
compile kernels during the first calls on a busy machine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import client_vectors
import grpc
import model_vectors
import numpy as np
import pytest
from conftest import TOKEN

from assay.client import AssayError, Client

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = ROOT / "clients"
#: Offline Go: the vendored tree only; the build cache where build.sh put it.
GO_ENV = {"GOPROXY": "off", "GOFLAGS": "-mod=vendor", "GOTOOLCHAIN": "local",
          **({} if os.environ.get("HOME") or os.environ.get("GOCACHE")
             else {"GOCACHE": "/tmp/assay-go-cache"})}


#: pytest's limit for a whole vector run in one language: above the 300 s default, as
#: the first run may meet a cold server compiling kernels on a loaded machine.
VECTOR_RUN = pytest.mark.timeout(1500)


@pytest.fixture(scope="session")
def models_env(tmp_path_factory) -> dict:
    """The environment naming the model vectors (tests/clients/model_vectors.py)."""
    directory = model_vectors.write(tmp_path_factory.mktemp("model-vectors"))
    return {"ASSAY_MODEL_VECTORS": str(directory)}


def _missing(what: str) -> None:
    message = f"{what} is not built: run bash clients/ci-setup.sh"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _run(cmd: list[str], cwd: Path, target: str, timeout: float = 1200,
         extra_env: dict | None = None) -> str:
    env = dict(os.environ, ASSAY_TARGET=target, **(extra_env or {}))
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{output[-6000:]}"
    return output


@VECTOR_RUN
def test_cpp_ctest(live_server, models_env):
    build = CLIENTS / "cpp" / "build"
    if not (build / "conformance_test").exists() or shutil.which("ctest") is None:
        _missing("the C++ client")
    out = _run(["ctest", "--output-on-failure", "--timeout", "1100"], build, live_server,
               extra_env=models_env)
    assert "100% tests passed" in out, out
    assert "Skipped" not in out, out  # every test ran against the server


@VECTOR_RUN
def test_cpp_conformance_counts(live_server):
    """The C++ conformance run covers every vector (no silent partial runs)."""
    build = CLIENTS / "cpp" / "build"
    if not (build / "conformance_test").exists():
        _missing("the C++ client")
    n = len(client_vectors.load()["cases"])
    out = _run([str(build / "conformance_test")], build, live_server)
    assert f"conformance: {n} passed, 0 failed" in out, out


@VECTOR_RUN
def test_go_test(live_server, models_env):
    go = CLIENTS / "go"
    if not (go / "vendor" / "modules.txt").exists() or shutil.which("go") is None:
        _missing("the Go client")
    n = len(client_vectors.load()["cases"])
    out = _run(["go", "test", "-count=1", "-timeout=20m", "-v", "./..."], go, live_server,
               extra_env={**GO_ENV, **models_env})
    assert f"conformance: {n} passed, 0 failed" in out, out[-4000:]
    assert "--- SKIP: TestConformance" not in out, out[-4000:]
    assert "--- PASS: TestModelVectors" in out, out[-4000:]
    assert "\nok " in out or out.startswith("ok "), out[-4000:]


@VECTOR_RUN
def test_node_test(live_server, models_env):
    node = CLIENTS / "node"
    built = (node / "dist" / "test" / "conformance.test.js").exists()
    if not built or shutil.which("node") is None:
        _missing("the TypeScript client")
    n = len(client_vectors.load()["cases"])
    out = _run(["node", "--test", "dist/test/"], node, live_server, extra_env=models_env)
    assert f"conformance: {n} passed, 0 failed" in out, out[-4000:]
    assert "# fail 0" in out, out[-4000:]
    assert "# SKIP ASSAY_TARGET" not in out, out[-4000:]
    assert "# SKIP ASSAY_MODEL_VECTORS" not in out, out[-4000:]


def test_python_model_vectors(live_server, models_env):
    """The Python client replays the model vectors the other clients' runners replay."""
    directory = Path(models_env["ASSAY_MODEL_VECTORS"])
    v = json.loads((directory / "model.json").read_text())
    raw = {k: np.asarray(t["data"], dtype=t["dtype"]).reshape(t["shape"])
           for k, t in v["inputs"].items()}
    with Client(live_server, timeout=300) as c:
        model = c.register_model("text-python", directory / v["model_file"], v["outputs"])
        assert [i.array for i in model.inputs] == [f"model_inputs.{k}" for k in v["inputs"]]
        c.create_pool("texts-python")
        try:
            c.append("texts-python", model_inputs=raw)
            c.label("texts-python", v["labeled"], v["labels"])
            for case in v["cases"]:
                source = ({"pool": "texts-python"} if case["source"] == "pool"
                          else {"model_inputs": raw})
                got = c.select(case["strategy"], case["budget"], models=["text-python"],
                               mc_samples=case["mc_samples"], seed=case["seed"],
                               batch_size=case["batch_size"], **source)
                assert got.indices.tolist() == case["indices"], case["name"]
                np.testing.assert_allclose(got.scores, case["scores"], rtol=case["tolerance"],
                                           atol=1e-9, err_msg=case["name"])
                assert got.execution_providers == (v["execution_provider"],)
        finally:
            c.delete_pool("texts-python")
            c.delete_model("text-python")


# -- the example trainers: the round loop users copy -----------------------------------------

#: Each language's example trainer, as built by clients/ci-setup.sh: (what it needs, command).
EXAMPLES = {
    "cpp": (CLIENTS / "cpp" / "build" / "example_trainer",
            [str(CLIENTS / "cpp" / "build" / "example_trainer")]),
    "go": (CLIENTS / "go" / "bin" / "example_trainer",
           [str(CLIENTS / "go" / "bin" / "example_trainer")]),
    "node": (CLIENTS / "node" / "dist" / "examples" / "example_trainer.js",
             ["node", str(CLIENTS / "node" / "dist" / "examples" / "example_trainer.js")]),
}


@pytest.mark.parametrize("language", sorted(EXAMPLES))
def test_example_trainer_runs_the_round_loop(live_server, language):
    """One pool through every round: each Select reports a newer pool version (the
    trainer itself exits 1 when a Select misses the version its replace left, picks a
    labeled item, or the pool loses a label)."""
    needs, cmd = EXAMPLES[language]
    if not needs.exists() or shutil.which(cmd[0]) is None:
        _missing(f"the {language} example trainer")
    rounds = 4
    out = _run([*cmd, "--rounds", str(rounds), "--strategy", "margin"], CLIENTS, live_server)
    seen = [tuple(map(int, m)) for m in re.findall(r"^round (\d+): pool version (\d+),", out, re.M)]
    assert [r for r, _ in seen] == list(range(rounds)), out
    versions = [v for _, v in seen]
    assert versions == sorted(set(versions)), out  # strictly increasing
    assert re.search(rf"^final: accuracy [0-9.]+ with {4 + 20 * rounds} labels$", out, re.M), out
    assert not any(p.pool_id.startswith("example-trainer") for p in _pools(live_server))


def _pools(target: str):
    with Client(target, timeout=10) as c:
        return c.list_pools()


@pytest.mark.parametrize("language", ["go", "node"])  # C++: test_cpp_over_mtls_with_token
def test_example_trainer_over_mtls_with_token(secure_server, language):
    """The trainers take the token and TLS files from ASSAY_TOKEN and ASSAY_TLS_*."""
    target, env = secure_server
    needs, cmd = EXAMPLES[language]
    if not needs.exists() or shutil.which(cmd[0]) is None:
        _missing(f"the {language} example trainer")
    out = _run([*cmd, "--rounds", "2"], CLIENTS, target, extra_env=env)
    assert "round 1: pool version" in out, out


# -- the same clients over mTLS with a bearer token ------------------------------------------


def test_cpp_over_mtls_with_token(secure_server):
    target, env = secure_server
    build = CLIENTS / "cpp" / "build"
    if not (build / "conformance_test").exists():
        _missing("the C++ client")
    out = _run([str(build / "conformance_test"), "--client-checks"], build, target, extra_env=env)
    assert "client: 7 passed, 0 failed" in out, out  # the token check ran too
    out = _run([str(build / "example_trainer"), "--rounds", "2"], build, target, extra_env=env)
    assert "round 1:" in out


def test_go_over_mtls_with_token(secure_server):
    target, env = secure_server
    go = CLIENTS / "go"
    if not (go / "vendor" / "modules.txt").exists():
        _missing("the Go client")
    out = _run(["go", "test", "-count=1", "-v", "-run",
                "TestListStrategies|TestRetried|TestPoolLifecycle|TestBearerTokenRequired", "."],
               go, target, extra_env={**env, **GO_ENV})
    assert "--- PASS: TestBearerTokenRequired" in out, out[-4000:]
    assert "--- SKIP" not in out, out[-4000:]


def test_node_over_mtls_with_token(secure_server):
    target, env = secure_server
    node = CLIENTS / "node"
    if not (node / "dist" / "test" / "conformance.test.js").exists():
        _missing("the TypeScript client")
    out = _run(["node", "--test", "--test-name-pattern=client behaviour|listStrategies|retried|"
                "lifecycle|UNAUTHENTICATED", "dist/test/"], node, target, extra_env=env)
    assert "# fail 0" in out, out[-4000:]
    assert "ok 6 - a call without the bearer token is UNAUTHENTICATED" in out, out[-4000:]


def test_python_over_mtls_with_token(secure_server):
    target, env = secure_server
    creds = grpc.ssl_channel_credentials(
        Path(env["ASSAY_TLS_CA"]).read_bytes(), Path(env["ASSAY_TLS_KEY"]).read_bytes(),
        Path(env["ASSAY_TLS_CERT"]).read_bytes())
    with Client(target, credentials=creds, token=TOKEN, timeout=10) as c:
        assert any(s.name == "entropy" for s in c.list_strategies())
    with Client(target, credentials=creds, timeout=10) as c, pytest.raises(AssayError) as info:
        c.list_strategies()
    assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
