"""Generate the cross-language conformance vectors from the Python reference.

Run ``python tests/vectors/generate.py`` after adding or changing a strategy: it
starts an in-process server on a loopback port, asks it for every registered
strategy (``ListStrategies``), builds inputs for each from its declared required
and optional inputs, sends every case through the Python client, cross-checks
inline cases against the protocol-free acquisition layer, and writes
``select_vectors.json`` beside this file.

File format (the same for every client; see README.md here):

* ``cases[i].inputs.<role>``: ``{"dtype": "FP32", "shape": [...], "values": [...]}``
  with values flat in row-major order; 16-bit floats carry ``"bits"`` (uint16
  patterns) instead of ``"values"``, so every language can build them exactly.
* ``cases[i].pool``: instead of inline inputs, a pool to create and fill with
  ``appends`` (each a role -> tensor map, streamed in ``chunk_bytes`` chunks)
  and then ``label`` (indices, labels); the Select then names the pool.
* ``cases[i].expect``: ``indices`` (exact), ``scores`` (within ``rtol``/``atol``; non-finite
  scores are the strings "Infinity", "-Infinity", "NaN" and must match exactly),
  ``pseudo_label_indices``/``pseudo_labels`` (exact), or ``error`` (a status code name).
"""

from __future__ import annotations

import json
import sys
import tempfile
import uuid
from pathlib import Path

import ml_dtypes
import numpy as np

from assay.client import AssayError, Client
from assay.server import acquisition
from assay.server.app import start
from assay.server.config import ServerConfig
from assay.server.errors import AssayError as DomainError

OUT = Path(__file__).with_name("select_vectors.json")
RTOL, ATOL = 1e-9, 1e-12
FORMAT_VERSION = 1

_NAMES = {np.dtype("float32"): "FP32", np.dtype("float16"): "FP16", np.dtype("float64"): "FP64",
          np.dtype("int32"): "INT32", np.dtype("int64"): "INT64",
          np.dtype(ml_dtypes.bfloat16): "BF16"}


def tensor_json(a: np.ndarray) -> dict:
    """A role array as vector JSON: exact decimal values, or uint16 bits for 16-bit floats."""
    a = np.ascontiguousarray(a)
    out = {"dtype": _NAMES[a.dtype], "shape": list(a.shape)}
    if a.dtype.itemsize == 2 and a.dtype.kind != "i":
        out["bits"] = a.reshape(-1).view(np.uint16).tolist()
    elif a.dtype.kind == "f":
        # float -> Python float is exact; repr round-trips, so parsing as a double and
        # narrowing to float32 gives back the very same float32.
        out["values"] = [float(v) for v in a.reshape(-1)]
    else:
        out["values"] = [int(v) for v in a.reshape(-1)]
    return out


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def make_inputs(rng: np.random.Generator, n: int, c: int, d: int, s: int, t: int, l_: int,
                dtype) -> dict[str, np.ndarray]:
    """One consistent set of every input role, for N items."""
    samples = softmax(rng.normal(size=(s, n, c)) * 2.0)
    inputs = {
        "probs": samples.mean(axis=0),
        "samples": samples,
        "embeddings": rng.normal(size=(n, d)),
        "labeled_embeddings": rng.normal(size=(l_, d)),
        "scores": rng.normal(size=n),
        "loss": rng.gamma(2.0, size=n),
        "discriminator": rng.uniform(size=n),
        "predictions": rng.integers(0, c, size=(t, n)).astype(np.int64),
        "labeled_probs": softmax(rng.normal(size=(l_, c)) * 2.0),
        # Every other item labeled (class in [0, C)), the rest -1.
        "labels": np.where(np.arange(n) % 2 == 0, rng.integers(0, c, size=n), -1).astype(np.int64),
    }
    for k, v in inputs.items():
        if v.dtype.kind == "f":
            inputs[k] = v.astype(dtype)
    return inputs


def roles_for(info, with_optional: bool) -> list[str]:
    roles = list(info.required_inputs)
    if with_optional:
        roles += [r for r in info.optional_inputs if r not in roles]
    # Optional inputs that the defaults lean on (a density's base score, a labeled set).
    for extra in ("probs", "samples", "labeled_embeddings"):
        if extra in info.optional_inputs and extra not in roles:
            roles.append(extra)
    if not roles:
        roles = ["probs"]  # strategies that need no array (random) still need N
    return roles


class Builder:
    def __init__(self, client: Client):
        self.client = client
        self.cases: list[dict] = []
        self.names: set[str] = set()

    def add(self, name: str, strategy: str, budget: int, *, inputs=None, pool=None,
            params=None, seed: int | None = 7, exclude=None, expect_error: str | None = None,
            check_reference: bool = True) -> None:
        if name in self.names:
            raise ValueError(f"duplicate case {name}")
        self.names.add(name)
        case: dict = {"name": name, "strategy": strategy, "budget": budget}
        if seed is not None:
            case["seed"] = seed
        if params:
            case["params"] = {k: _param_json(v) for k, v in params.items()}
        if exclude is not None:
            case["exclude"] = [int(i) for i in exclude]
        if pool is not None:
            case["pool"] = {
                "chunk_bytes": pool.get("chunk_bytes", 4096),
                "appends": [{k: tensor_json(v) for k, v in part.items()}
                            for part in pool["appends"]],
            }
            if "label" in pool:
                case["pool"]["label"] = {"indices": list(map(int, pool["label"][0])),
                                         "labels": list(map(int, pool["label"][1]))}
        else:
            case["inputs"] = {k: tensor_json(v) for k, v in (inputs or {}).items()}
        case["expect"] = self._run(case, strategy, budget, inputs, pool, params, seed, exclude,
                                   check_reference)
        if expect_error is not None and case["expect"].get("error") != expect_error:
            raise AssertionError(f"{name}: expected {expect_error}, got {case['expect']}")
        if expect_error is None and "error" in case["expect"]:
            print(f"warning: {name} ({strategy}) failed with {case['expect']['error']}: "
                  f"{case['expect']['message']}", file=sys.stderr)
        self.cases.append(case)

    def _run(self, case, strategy, budget, inputs, pool, params, seed, exclude, check_ref):
        pool_id = None
        try:
            if pool is not None:
                pool_id = f"vec-{uuid.uuid4().hex[:12]}"
                self.client.create_pool(pool_id)
                for part in pool["appends"]:
                    self.client.append(pool_id, chunk_bytes=pool.get("chunk_bytes", 4096), **part)
                if "label" in pool:
                    self.client.label(pool_id, *pool["label"])
                sel = self.client.select(strategy, budget, pool=pool_id, params=params,
                                         seed=seed, exclude=exclude)
            else:
                sel = self.client.select(strategy, budget, params=params, seed=seed,
                                         exclude=exclude, **(inputs or {}))
        except AssayError as error:
            expect = {"error": error.code.name, "message": error.message}
            if pool is None and check_ref:
                _check_reference_error(case["name"], strategy, budget, inputs, params, seed,
                                       exclude, error.code.name)
            return expect
        finally:
            if pool_id is not None:
                self.client.delete_pool(pool_id)
        expect = {"indices": sel.indices.tolist(), "scores": [_float_json(v) for v in sel.scores],
                  "rtol": RTOL, "atol": ATOL}
        if sel.pseudo_label_indices.size:
            expect["pseudo_label_indices"] = sel.pseudo_label_indices.tolist()
            expect["pseudo_labels"] = sel.pseudo_labels.tolist()
        if pool is None and check_ref:
            ref = acquisition.select(strategy, budget, inputs or {}, params, seed=seed,
                                     exclude=None if exclude is None else np.asarray(exclude))
            if ref.indices.tolist() != expect["indices"]:
                raise AssertionError(f"{case['name']}: client and reference disagree")
        return expect


def _check_reference_error(name, strategy, budget, inputs, params, seed, exclude, code):
    try:
        acquisition.select(strategy, budget, inputs or {}, params, seed=seed,
                           exclude=None if exclude is None else np.asarray(exclude))
    except DomainError as error:
        if error.code_name != code:
            raise AssertionError(f"{name}: wire {code} vs reference {error.code_name}") from None
        return
    raise AssertionError(f"{name}: the wire failed with {code} but the reference succeeded")


def _float_json(value: float) -> float | str:
    """A float for JSON: non-finite values (a never-learned item's infinite forgetting
    count) as the strings "Infinity", "-Infinity", "NaN", since JSON has no such numbers."""
    value = float(value)
    if np.isfinite(value):
        return value
    return "NaN" if np.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


def _param_json(value) -> dict:
    if isinstance(value, bool):
        return {"bool": value}
    if isinstance(value, int):
        return {"int": value}
    if isinstance(value, float):
        return {"double": value}
    return {"string": str(value)}


def build(client: Client) -> list[dict]:
    b = Builder(client)
    rng = np.random.default_rng(20240601)
    strategies = client.list_strategies()

    # Every registered strategy, in float32, float16, float64 and bfloat16.
    dtypes = [("fp32", np.float32), ("fp16", np.float16), ("fp64", np.float64),
              ("bf16", ml_dtypes.bfloat16)]
    for info in strategies:
        for tag, dtype in dtypes:
            n = int(rng.integers(40, 90))
            inputs = make_inputs(rng, n, c=7, d=5, s=4, t=6, l_=6, dtype=dtype)
            roles = roles_for(info, with_optional=False)
            b.add(f"{info.name}-{tag}", info.name, 6,
                  inputs={r: inputs[r] for r in roles})
        # Optional inputs too, with an exclusion list.
        inputs = make_inputs(rng, 50, c=4, d=3, s=3, t=5, l_=4, dtype=np.float32)
        b.add(f"{info.name}-optional-exclude", info.name, 5,
              inputs={r: inputs[r] for r in roles_for(info, with_optional=True)},
              exclude=[0, 3, 4, 17, 49])
        # Declared parameters at a non-default value, when they are numbers or bools.
        params = {}
        for pname, spec in info.params.items():
            if pname in ("prefilter", "prefilter_k"):
                continue
            params.update(_non_default(pname, spec))
        if params:
            inputs = make_inputs(rng, 64, c=5, d=4, s=3, t=4, l_=5, dtype=np.float32)
            b.add(f"{info.name}-params", info.name, 4,
                  inputs={r: inputs[r] for r in roles_for(info, with_optional=False)},
                  params=params)

    names = {s.name for s in strategies}
    # Odd shapes: one item, budget = N, one class, wide and narrow.
    one = make_inputs(rng, 1, c=3, d=2, s=2, t=2, l_=0, dtype=np.float32)
    b.add("entropy-n1", "entropy", 1, inputs={"probs": one["probs"]})
    wide = make_inputs(rng, 3, c=257, d=2, s=2, t=2, l_=0, dtype=np.float32)
    b.add("margin-c257-budget-n", "margin", 3, inputs={"probs": wide["probs"]})
    b.add("entropy-c1-ties-by-index", "entropy", 4,
          inputs={"probs": np.ones((9, 1), np.float32)}, seed=None)
    b.add("entropy-c1-ties-seeded", "entropy", 4,
          inputs={"probs": np.ones((9, 1), np.float32)}, seed=123)
    tall = make_inputs(rng, 2000, c=3, d=2, s=2, t=2, l_=0, dtype=np.float16)
    b.add("least-confident-fp16-n2000", "least_confident", 100, inputs={"probs": tall["probs"]})
    s1 = make_inputs(rng, 30, c=6, d=2, s=1, t=2, l_=0, dtype=np.float64)
    b.add("bald-s1", "bald", 5, inputs={"samples": s1["samples"]})
    # Non-symmetric shape: a transposed [C, N] upload must not pass as [N, C].
    asym = make_inputs(rng, 11, c=5, d=2, s=2, t=2, l_=0, dtype=np.float32)
    b.add("entropy-asymmetric-11x5", "entropy", 11, inputs={"probs": asym["probs"]})
    b.add("predictions-int32", "label_dispersion", 5, inputs={
        "predictions": rng.integers(0, 4, size=(7, 25)).astype(np.int32)})
    if "information_density" in names:
        dens = make_inputs(rng, 40, c=4, d=6, s=3, t=2, l_=0, dtype=np.float32)
        b.add("information-density-base-bald", "information_density", 5,
              inputs={"samples": dens["samples"], "embeddings": dens["embeddings"]},
              params={"base": "bald", "beta": 2.0})
    two = make_inputs(rng, 80, c=5, d=4, s=3, t=2, l_=0, dtype=np.float32)
    b.add("prefilter-entropy-then-margin", "margin", 5, inputs={"probs": two["probs"]},
          params={"prefilter": "entropy", "prefilter_k": 20})

    # Pools: chunked streaming (several chunks per array), two appends, labels.
    pool_a = make_inputs(rng, 120, c=6, d=8, s=3, t=2, l_=0, dtype=np.float32)
    pool_b = make_inputs(rng, 37, c=6, d=8, s=3, t=2, l_=0, dtype=np.float32)
    keys = ("probs", "samples", "embeddings")
    pool = {"chunk_bytes": 1000,
            "appends": [{k: pool_a[k] for k in keys}, {k: pool_b[k] for k in keys}],
            "label": ([0, 5, 130, 156], [1, 0, 3, 2])}
    for strategy in ("entropy", "bald", "margin", "random",
                     *[s for s in ("coreset", "badge", "kmeans") if s in names]):
        b.add(f"pool-{strategy}", strategy, 7, pool=pool)
    pool16 = make_inputs(rng, 300, c=10, d=4, s=2, t=2, l_=0, dtype=np.float16)
    b.add("pool-fp16-least-confident", "least_confident", 10,
          pool={"chunk_bytes": 777, "appends": [{"probs": pool16["probs"]}],
                "label": ([1, 2, 3], [0, 0, 0])})

    # Errors with their status codes.
    probs = make_inputs(rng, 10, c=3, d=2, s=2, t=2, l_=0, dtype=np.float32)["probs"]
    b.add("error-unknown-strategy", "no_such_strategy", 1, inputs={"probs": probs},
          expect_error="NOT_FOUND")
    b.add("error-budget-over-n", "entropy", 11, inputs={"probs": probs},
          expect_error="INVALID_ARGUMENT")
    b.add("error-budget-zero", "entropy", 0, inputs={"probs": probs},
          expect_error="INVALID_ARGUMENT")
    b.add("error-not-probabilities", "entropy", 2,
          inputs={"probs": np.full((4, 3), 0.5, np.float32)}, expect_error="INVALID_ARGUMENT")
    b.add("error-nan-fp16", "entropy", 2,
          inputs={"probs": np.array([[0.5, 0.5], [np.nan, 0.5]], np.float16)},
          expect_error="INVALID_ARGUMENT")
    b.add("error-rank", "entropy", 2, inputs={"probs": probs.reshape(-1)},
          expect_error="INVALID_ARGUMENT")
    b.add("error-missing-input", "bald", 2, inputs={"probs": probs},
          expect_error="INVALID_ARGUMENT")
    b.add("error-n-mismatch", "mal", 2,
          inputs={"probs": probs, "discriminator": np.full(9, 0.5, np.float32)},
          expect_error="INVALID_ARGUMENT")
    b.add("error-unknown-param", "entropy", 2, inputs={"probs": probs},
          params={"no_such_param": 1}, expect_error="INVALID_ARGUMENT")
    if "mal" in names:
        b.add("error-param-range", "mal", 2,
              inputs={"probs": probs, "discriminator": np.full(10, 0.5, np.float32)},
              params={"alpha": 1.5}, expect_error="INVALID_ARGUMENT")
    b.add("error-exclude-range", "entropy", 2, inputs={"probs": probs}, exclude=[10],
          expect_error="INVALID_ARGUMENT")
    b.add("error-float-predictions", "label_dispersion", 2,
          inputs={"predictions": np.zeros((3, 10), np.float32)}, expect_error="INVALID_ARGUMENT")
    b.add("error-pool-budget-over-unlabeled", "entropy", 8,
          pool={"appends": [{"probs": probs[:9]}], "label": ([0, 1], [0, 1])},
          expect_error="INVALID_ARGUMENT")
    return b.cases


def _non_default(name: str, spec: dict) -> dict:
    kind, default = spec["type"], spec["default"]
    lo, hi = spec["minimum"], spec["maximum"]
    if kind == "PARAM_TYPE_DOUBLE":
        value = float(default) * 0.5 if default else 0.25
        if lo is not None:
            value = max(value, lo)
        if hi is not None:
            value = min(value, hi)
        return {name: value} if value != default else {}
    if kind == "PARAM_TYPE_INT":
        if not default:  # 0 usually means "automatic": leave it alone
            return {}
        value = int(default) + 1
        if hi is not None and value > hi:
            value = int(default) - 1
        if lo is not None and value < lo:
            return {}
        return {name: value}
    if kind == "PARAM_TYPE_BOOL":
        return {name: not default}
    return {}


def main() -> int:
    with tempfile.TemporaryDirectory() as data:
        server = start(ServerConfig(address="127.0.0.1:0", data_dir=data, workers=4))
        try:
            with Client(f"127.0.0.1:{server.port}", timeout=60) as client:
                cases = build(client)
                strategies = sorted(s.name for s in client.list_strategies())
        finally:
            server.stop(0)
    doc = {"format": FORMAT_VERSION, "strategies": strategies, "cases": cases}
    OUT.write_text(json.dumps(doc, separators=(",", ":"), allow_nan=False) + "\n")
    errors = sum("error" in c["expect"] for c in cases)
    print(f"wrote {len(cases)} cases ({errors} error cases, {len(strategies)} strategies) "
          f"to {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
