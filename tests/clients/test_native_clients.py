"""Each language's own test runner against a live server: ctest, go test, node --test.

The clients are built by ``clients/ci-setup.sh`` (CI runs it before pytest). A
client whose build is missing is skipped locally and fails under CI (CI=true),
so a broken toolchain cannot pass silently.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = ROOT / "clients"


def _missing(what: str) -> None:
    message = f"{what} is not built: run bash clients/ci-setup.sh"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _run(cmd: list[str], cwd: Path, target: str, timeout: float = 240,
         extra_env: dict | None = None) -> str:
    env = dict(os.environ, ASSAY_TARGET=target, **(extra_env or {}))
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{output[-6000:]}"
    return output


def test_cpp_ctest(live_server):
    build = CLIENTS / "cpp" / "build"
    if not (build / "conformance_test").exists() or shutil.which("ctest") is None:
        _missing("the C++ client")
    out = _run(["ctest", "--output-on-failure", "--timeout", "200"], build, live_server)
    assert "100% tests passed" in out, out
    assert "Skipped" not in out, out  # every test ran against the server


def test_cpp_conformance_counts(live_server):
    """The C++ conformance run covers every vector (no silent partial runs)."""
    build = CLIENTS / "cpp" / "build"
    if not (build / "conformance_test").exists():
        _missing("the C++ client")
    import client_vectors
    n = len(client_vectors.load()["cases"])
    out = _run([str(build / "conformance_test")], build, live_server)
    assert f"conformance: {n} passed, 0 failed" in out, out


def test_go_test(live_server):
    go = CLIENTS / "go"
    if not (go / "vendor" / "modules.txt").exists() or shutil.which("go") is None:
        _missing("the Go client")
    import client_vectors
    n = len(client_vectors.load()["cases"])
    out = _run(["go", "test", "-count=1", "-v", "."], go, live_server,
               extra_env={"GOPROXY": "off", "GOFLAGS": "-mod=vendor", "GOTOOLCHAIN": "local"})
    assert f"conformance: {n} passed, 0 failed" in out, out[-4000:]
    assert "--- SKIP: TestConformance" not in out, out[-4000:]
    assert "\nok " in out or out.startswith("ok "), out[-4000:]


def test_node_test(live_server):
    node = CLIENTS / "node"
    if not (node / "dist" / "test" / "conformance.test.js").exists() or shutil.which("node") is None:
        _missing("the TypeScript client")
    import client_vectors
    n = len(client_vectors.load()["cases"])
    out = _run(["node", "--test", "dist/test/"], node, live_server)
    assert f"conformance: {n} passed, 0 failed" in out, out[-4000:]
    assert "# fail 0" in out, out[-4000:]
    assert "# SKIP ASSAY_TARGET" not in out, out[-4000:]
