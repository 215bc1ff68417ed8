"""The client distribution installs thin: ``pip install ./clients/python`` in a fresh venv
brings grpcio, protobuf, NumPy and ml_dtypes, and none of the server's heavy dependencies.

It needs the package index (as ``.ci/run`` does) and takes a minute or two: a venv, a
wheel build of assay-client and its dependencies. Prints the wheels' total and the
installed size (``python -m pytest -s tests/test_client_install.py`` shows them).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

CLIENT = Path(__file__).resolve().parents[1] / "clients" / "python"
#: What the service needs and a client must not pull (kernels, ONNX, FAISS).
FORBIDDEN = {"numba", "llvmlite", "scipy", "faiss", "faiss-cpu", "faiss-gpu", "faiss-gpu-cu12",
             "onnx", "onnxruntime", "onnxruntime-gpu", "numba-cuda", "grpcio-tools", "torch"}
#: The issue's bound on the wheels of assay-client with its dependencies.
MAX_WHEEL_BYTES = 60_000_000
#: The venv's own tools, not counted in the installed size.
TOOLS = {"pip", "setuptools", "pkg_resources", "_distutils_hack", "wheel"}

CHECK = r"""
import importlib.util, json, sys
import assay.client, assay.v1, assay.vocab
from assay.client import AssayError, Client
from assay.client.tensors import from_proto, to_proto
from assay.v1 import assay_pb2_grpc
from assay.vocab.errors import InvalidInput
print(json.dumps({
    "client": assay.client.__file__,
    "server": importlib.util.find_spec("assay.server") is not None,
    "kernels": importlib.util.find_spec("assay.kernels") is not None,
    "loaded": sorted({name.split(".")[0] for name in sys.modules}),
}))
"""


def _run(args: list, cwd: Path, timeout: float) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"{args}: {done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done.stdout


def _normal(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _bytes_under(path: Path, skip: set[str] = frozenset()) -> int:
    total = 0
    for entry in path.iterdir():
        top = entry.name.split("-")[0] if entry.name.endswith(".dist-info") else entry.name
        if top in skip or top.removesuffix(".pth") in skip:
            continue
        files = [entry] if entry.is_file() else [p for p in entry.rglob("*") if p.is_file()]
        total += sum(p.stat().st_size for p in files)
    return total


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_pip_install_of_the_client_is_thin(tmp_path):
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], tmp_path, 300)
    python = venv / "bin" / "python"
    _run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
          str(CLIENT)], tmp_path, 900)

    installed = {_normal(d["name"]): d["version"] for d in json.loads(_run(
        [python, "-m", "pip", "list", "--format", "json", "--disable-pip-version-check"],
        tmp_path, 120))}
    assert "assay-client" in installed
    assert not FORBIDDEN & set(installed), sorted(FORBIDDEN & set(installed))
    assert {"grpcio", "protobuf", "numpy", "ml-dtypes"} <= set(installed)
    assert "assay" not in installed and "grpcio-status" not in installed

    # -I: neither the working directory nor PYTHONPATH, only what the venv holds.
    found = json.loads(_run([python, "-I", "-c", CHECK], tmp_path, 120))
    assert found["client"].startswith(str(venv)), found["client"]
    assert (found["server"], found["kernels"]) == (False, False)
    assert not {"numba", "scipy", "faiss", "onnx", "onnxruntime"} & set(found["loaded"])

    wheels = tmp_path / "wheels"
    _run([python, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
          "-w", str(wheels), str(CLIENT)], tmp_path, 900)
    sizes = {p.name: p.stat().st_size for p in wheels.glob("*.whl")}
    total = sum(sizes.values())
    site = next((venv / "lib").glob("python3*/site-packages"))
    on_disk = _bytes_under(site, TOOLS)
    each = ", ".join(f"{name.split('-')[0]} {size / 1e6:.1f}"
                     for name, size in sorted(sizes.items()))
    print(f"\nassay-client: {len(sizes)} wheels, {total / 1e6:.1f} MB ({each}); "
          f"installed {on_disk / 1e6:.1f} MB without pip/setuptools")
    assert any(n.startswith("assay_client-") for n in sizes), sorted(sizes)
    assert total < MAX_WHEEL_BYTES, sizes
