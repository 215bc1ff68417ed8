"""Reading the conformance vectors (tests/vectors/select_vectors.json) into NumPy."""

from __future__ import annotations

import json
from pathlib import Path

import ml_dtypes
import numpy as np

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "select_vectors.json"

#: Client deadline of a vector Select: the first one of a kind may compile its kernel,
#: which took 20 s on a quiet and over 60 s on a loaded 2-core machine.
DEADLINE_S = 300

_DTYPES = {"FP32": np.float32, "FP16": np.float16, "FP64": np.float64, "INT32": np.int32,
           "INT64": np.int64, "BF16": ml_dtypes.bfloat16}


def load() -> dict:
    return json.loads(VECTORS.read_text())


def array(t: dict) -> np.ndarray:
    """A vector tensor as the array a trainer would hold."""
    dtype = np.dtype(_DTYPES[t["dtype"]])
    if "bits" in t:
        flat = np.asarray(t["bits"], dtype=np.uint16).view(dtype)
    else:
        flat = np.asarray(t["values"], dtype=np.float64 if dtype.kind == "f" else np.int64)
        flat = flat.astype(dtype)
    return flat.reshape(t["shape"])


def params(case: dict) -> dict:
    return {k: next(iter(v.values())) for k, v in case.get("params", {}).items()}
