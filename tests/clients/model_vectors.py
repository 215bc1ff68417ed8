"""Model vectors: a transformer with two graph inputs and what Assay must answer with it.

Every client's own test runner reads ``model.json`` (in the directory named by the
``ASSAY_MODEL_VECTORS`` environment variable) and ``model.onnx`` beside it: it registers
the model with its declared outputs, appends the token ids and masks to a pool as
``model_inputs.input_ids`` and ``model_inputs.attention_mask``, labels the listed items,
and runs each case, inline or on the pool, comparing the answer with the expected indices
(exactly) and scores (within the case's tolerance).

The expected answers come from onnxruntime run here in-process on the exported file
(``test_transformer_models.in_process``) and from the plain reference scores of
``tests/reference.py`` with its tie rule (best first, equal scores by lower index); the
token ids have no duplicate rows, so no near-tie decides a position.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import reference as ref
from test_transformer_models import BATCH, OUTPUTS, TextClassifier, export, in_process, tokens

N, LENGTH, MC, SEED, BUDGET = 30, 12, 6, 11, 5


def _tensor(a: np.ndarray) -> dict:
    return {"dtype": str(a.dtype), "shape": list(a.shape), "data": a.reshape(-1).tolist()}


def write(directory: Path) -> Path:
    """Write ``model.onnx`` and ``model.json`` into ``directory``; returns the directory."""
    import torch

    torch.manual_seed(20261201)
    data = export(TextClassifier())
    rng = np.random.default_rng(20261201)
    ids, mask = tokens(rng, N + 1, LENGTH)
    ids, mask = ids[:N], mask[:N]  # drop the duplicate row tokens() adds
    labeled = np.array([3, 17, 22], dtype=np.int64)
    candidates = np.setdiff1d(np.arange(N), labeled)
    det = in_process(data, ids, mask)
    mc = in_process(data, ids, mask, mc=MC, seed=SEED)["samples"].astype(np.float64)
    entropy = ref.entropy(det["probs"].astype(np.float64))
    bald = ref.bald(mc)
    margin = ref.margin(det["probs"].astype(np.float64))

    def case(name, source, scores, pool_candidates, mc_samples=0):
        want = ref.top_b(scores, BUDGET, pool_candidates)
        return {"name": name, "strategy": name.split("-")[0], "source": source,
                "budget": BUDGET, "mc_samples": mc_samples, "seed": SEED,
                "batch_size": BATCH, "indices": want.tolist(),
                "scores": scores[want].tolist(), "tolerance": 1e-5}

    vectors = {
        "model_file": "model.onnx",
        "outputs": OUTPUTS,
        "inputs": {"input_ids": _tensor(ids), "attention_mask": _tensor(mask)},
        "labeled": labeled.tolist(),
        "labels": [0, 1, 2],
        "execution_provider": "CPUExecutionProvider",
        "cases": [
            case("entropy-pool", "pool", entropy, candidates),
            case("bald-pool", "pool", bald, candidates, mc_samples=MC),
            case("margin-inline", "inline", margin, None),
        ],
    }
    (directory / "model.onnx").write_bytes(data)
    (directory / "model.json").write_text(json.dumps(vectors))
    return directory
