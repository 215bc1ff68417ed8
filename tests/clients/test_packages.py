"""The C++, Go and TypeScript clients used as packages, by a project of their own.

Each client directory holds a consumer project (``consumer/``) that knows the client only
the way its ecosystem hands it out: a CMake package found with ``find_package(assay
CONFIG)`` in an install prefix, a Go module required by its path, an npm tarball made by
``npm pack``. Each test builds its consumer from what ``clients/ci-setup.sh`` built (the
C++ build tree, the Go vendor tree, the TypeScript ``dist/``) and runs it against a live
server: one entropy Select over four items, whose two most uncertain are items 1 and 2.

A missing build is skipped locally and fails under CI (CI=true), as in
test_native_clients.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = ROOT / "clients"
#: What each consumer prints: the entropy ranking of its four rows, best first.
SELECTED = "consumer: selected [1 2]"
#: Offline Go: vendored trees only (as in test_native_clients.py).
GO_ENV = {"GOPROXY": "off", "GOFLAGS": "-mod=vendor", "GOTOOLCHAIN": "local",
          **({} if os.environ.get("HOME") or os.environ.get("GOCACHE")
             else {"GOCACHE": "/tmp/assay-go-cache"})}
GO_MODULE = "github.com/assay-dev/assay/clients/go"


def _missing(what: str) -> None:
    message = f"{what} is not built: run bash clients/ci-setup.sh"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _run(cmd: list[str], cwd: Path, env: dict | None = None, timeout: float = 600) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=dict(os.environ, **(env or {})),
                          capture_output=True, text=True, timeout=timeout, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{output[-6000:]}"
    return output


def _committed(paths: list[Path]) -> None:
    """The build left these files as committed (a build that rewrites them fails here)."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        return
    rel = [str(p.relative_to(ROOT)) for p in paths]
    proc = subprocess.run(["git", "status", "--porcelain", "--", *rel], cwd=ROOT,
                          capture_output=True, text=True, check=True)
    assert not proc.stdout.strip(), f"the build left these unlike the commit:\n{proc.stdout}"


def test_cpp_consumer_finds_the_installed_package(live_server, tmp_path):
    build = CLIENTS / "cpp" / "build"
    if not (build / "CMakeCache.txt").exists() or shutil.which("cmake") is None:
        _missing("the C++ client")
    prefix = tmp_path / "prefix"
    _run(["cmake", "--install", str(build), "--prefix", str(prefix)], ROOT)
    config = next(prefix.glob("lib*/cmake/assay/assayConfig.cmake"), None)
    assert config is not None, sorted(str(p) for p in prefix.rglob("*"))
    assert (prefix / "include" / "assay" / "client.h").exists()
    # The generated protobuf headers stay private to the library.
    assert not list(prefix.rglob("*.pb.h"))

    out = tmp_path / "consumer-build"
    _run(["cmake", "-S", str(CLIENTS / "cpp" / "consumer"), "-B", str(out),
          f"-DCMAKE_PREFIX_PATH={prefix}"], ROOT)
    _run(["cmake", "--build", str(out)], ROOT)
    assert SELECTED in _run([str(out / "consumer")], out, {"ASSAY_TARGET": live_server})


def test_go_consumer_requires_the_module_by_its_path(live_server, tmp_path):
    go = CLIENTS / "go"
    if not (go / "vendor" / "modules.txt").exists() or shutil.which("go") is None:
        _missing("the Go client")
    consumer = go / "consumer"
    assert re.search(rf"^module {re.escape(GO_MODULE)}$", (go / "go.mod").read_text(), re.M)
    mod = (consumer / "go.mod").read_text()
    assert re.search(rf"^require {re.escape(GO_MODULE)} v\S+$", mod, re.M), mod
    assert re.search(rf"^replace {re.escape(GO_MODULE)} => \.\./$", mod, re.M), mod
    # The generated code is committed (a module is fetched without protoc), build.sh
    # regenerates it: a difference means a proto changed without committing clients/go/gen.
    _committed([go / "go.mod", consumer / "go.mod", go / "gen"])

    _run(["python3", "tools/vendor_from_debian.py", "consumer"], go, GO_ENV)
    binary = tmp_path / "consumer"
    _run(["go", "build", "-o", str(binary), "."], consumer, GO_ENV)  # build.sh vets it
    _committed([consumer / "go.mod"])
    assert SELECTED in _run([str(binary)], tmp_path, {"ASSAY_TARGET": live_server})


def test_node_consumer_installs_the_packed_tarball(live_server, tmp_path):
    node = CLIENTS / "node"
    if (not (node / "dist" / "src" / "index.d.ts").exists()
            or shutil.which("node") is None or shutil.which("npm") is None):
        _missing("the TypeScript client")
    package = json.loads((node / "package.json").read_text())
    # dist/ is what ci-setup.sh built; without --ignore-scripts, prepack rebuilds it.
    _run(["npm", "pack", "--ignore-scripts", "--silent", "--pack-destination", str(tmp_path)],
         node)
    tarball = tmp_path / f"{package['name'].lstrip('@').replace('/', '-')}-{package['version']}.tgz"
    assert tarball.exists(), sorted(p.name for p in tmp_path.iterdir())
    with tarfile.open(tarball) as tar:
        names = set(tar.getnames())
    for entry in ("main", "types"):
        assert f"package/{package[entry]}" in names, (entry, sorted(names))
    assert not any(n.startswith(("package/dist/test/", "package/src/")) for n in names), names

    # The consumer as committed, beside the tarball its package.json names (../NAME.tgz).
    consumer = tmp_path / "consumer"
    shutil.copytree(node / "consumer", consumer,
                    ignore=shutil.ignore_patterns("node_modules", "dist", "package-lock.json"))
    wanted = json.loads((consumer / "package.json").read_text())["dependencies"][package["name"]]
    assert wanted == f"file:../{tarball.name}", (wanted, tarball.name)
    _run(["npm", "install", "--prefer-offline", "--no-audit", "--no-fund", "--loglevel=error"],
         consumer)
    _run([str(consumer / "node_modules" / ".bin" / "tsc"), "-p", "."], consumer)
    out = _run(["node", "dist/main.js"], consumer, {"ASSAY_TARGET": live_server})
    assert SELECTED in out, out
