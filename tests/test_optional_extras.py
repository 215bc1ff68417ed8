"""A server installed without its cpu/gpu extra (no faiss, no onnxruntime) starts and says
precisely what it cannot do.

The two modules are hidden in a child interpreter (``sys.modules[name] = None``: import
fails and ``importlib.util.find_spec`` answers None, as when the package is absent).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

CHILD = r"""
import json, sys
sys.modules["faiss"] = None
sys.modules["onnxruntime"] = None
sys.path.insert(0, sys.argv[2])

import numpy as np
from onnx_builders import mlp

from assay.client import AssayError, Client
from assay.server.wiring.app import start
from assay.server.wiring.config import ServerConfig

rng = np.random.default_rng(5)
srv = start(ServerConfig(address="127.0.0.1:0", data_dir=sys.argv[1], grace_seconds=0.5,
                         workers=4, warmup=False))
out = {}
try:
    with Client(f"127.0.0.1:{srv.port}", timeout=60, retries=0) as c:
        probs = rng.dirichlet(np.ones(3), size=40)
        out["entropy"] = len(c.select("entropy", 4, probs=probs).indices)
        calls = {
            "kmeans": lambda: c.select("kmeans", 4, embeddings=rng.normal(size=(40, 5))),
            "register_model": lambda: c.register_model("m", mlp(rng).data,
                                                       {"logits": "logits"}),
        }
        for name, call in calls.items():
            try:
                call()
                out[name] = "OK"
            except AssayError as error:
                out[name] = [error.code.name, error.reason, error.message]
        out["models"] = [m.model_id for m in c.list_models()]
finally:
    srv.stop(0)
print(json.dumps(out))
"""


@pytest.mark.timeout(600)
def test_a_server_without_faiss_and_onnxruntime_starts_and_refuses_precisely(tmp_path):
    tests = Path(__file__).parent
    done = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "data"), str(tests)],
                          capture_output=True, text=True, timeout=540)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["entropy"] == 4
    code, reason, message = out["kmeans"]
    assert (code, reason) == ("FAILED_PRECONDITION", "BACKEND_UNAVAILABLE")
    assert "faiss" in message
    code, reason, message = out["register_model"]
    assert (code, reason) == ("FAILED_PRECONDITION", "BACKEND_UNAVAILABLE")
    assert "onnxruntime" in message and "assay[cpu]" in message
    assert out["models"] == []
