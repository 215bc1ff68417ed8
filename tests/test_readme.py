"""Every Python block of the README runs, against a live server.

A block that starts with its imports is complete and runs as written (only the
address changes to the test server's). The ONNX blocks are fragments of a session:
the prelude here defines what they assume (a client ``c``, raw inputs ``x``, a pool,
``model.onnx`` plus a committee of registered models; ``text.onnx`` with token ids).
The README's two shell commands are what CI runs: ``.ci/run`` installs with the first's
packages and runs the second; ``assay demo`` is tests/test_demo.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from assay.client import Client

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)
ADDRESS = "127.0.0.1:50051"


def _onnx_prelude(client: Client, tmp_path: Path, code: str) -> dict:
    """What the ONNX blocks assume: ``c``, ``x``, ``model.onnx`` (outputs ``logits`` and
    ``penultimate``, with dropout), a pool named "pool" and committee models m1..m3; for the
    transformer block, ``text.onnx`` (tests/test_transformer_models.py) with ``ids`` and
    ``mask``."""
    import onnx
    from onnx_builders import ALL_OUTPUTS, mlp

    rng = np.random.default_rng(3)
    model = mlp(rng, dropout=0.3).model
    for node in model.graph.node:
        node.input[:] = ["penultimate" if n == "features" else n for n in node.input]
        node.output[:] = ["penultimate" if n == "features" else n for n in node.output]
    for out in model.graph.output:
        if out.name == "features":
            out.name = "penultimate"
    onnx.save(model, str(tmp_path / "model.onnx"))
    for name in ("m1", "m2", "m3"):
        client.register_model(name, mlp(rng).data, ALL_OUTPUTS)
    client.create_pool("pool")
    scope = {"c": client, "x": rng.normal(size=(300, 6)).astype(np.float32)}
    if "text.onnx" in code:  # the transformer block: text.onnx, its token ids and masks
        import torch
        from test_transformer_models import TextClassifier, export, tokens

        torch.manual_seed(3)
        (tmp_path / "text.onnx").write_bytes(export(TextClassifier()))
        scope["ids"], scope["mask"] = tokens(rng, 40, 12)
    return scope


def test_the_readme_has_its_python_blocks():
    assert len(BLOCKS) >= 3, "the README lost its Python examples"


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_a_readme_block_runs(index, server, client, tmp_path, monkeypatch):
    code = BLOCKS[index].replace(ADDRESS, f"127.0.0.1:{server.port}")
    monkeypatch.chdir(tmp_path)
    if code.lstrip().startswith(("import", "from")):
        scope: dict = {"__name__": f"readme_block_{index}"}
    elif "register_model" in code:
        scope = _onnx_prelude(client, tmp_path, code)
    else:
        pytest.fail(f"README block {index} is neither complete nor a known fragment:\n{code}")
    exec(compile(code, f"README.md python block {index}", "exec"), scope)
