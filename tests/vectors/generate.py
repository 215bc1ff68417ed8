"""Generate the cross-language conformance vectors from the Python reference.

Run ``python tests/vectors/generate.py`` after adding or changing a strategy: it
starts an in-process server on a loopback port, asks it for every registered
strategy (``ListStrategies``), builds inputs for each from its declared required
and optional inputs, and writes ``select_vectors.json`` beside this file.

Expected answers come from the independent float64 twins (``references.py``, over
``tests/reference.py`` and ``tests/kernels/naive.py``), not from the server: the
server's answer through the Python client must match them (indices exactly,
scores within the case's tolerance) or the generator fails. Each case stores the
tolerance derived from the arithmetic of the kernel that computes it
(``tolerance.py``), and inputs are redrawn until no decision (top-b order, greedy
argmax, BADGE draw, k-means membership) is within twice that tolerance, so no host
can pick differently. Cases no twin covers (``FALLBACK``) store the server's answer
after a cross-check against the protocol-free acquisition layer, with
``"reference": "acquisition"``. A case meant to succeed that errors, or an error
case that succeeds, stops the generator with a non-zero exit.

File format (the same for every client; see README.md here):

* ``cases[i].inputs.<role>``: ``{"dtype": "FP32", "shape": [...], "values": [...]}``
  with values flat in row-major order; 16-bit floats carry ``"bits"`` (uint16
  patterns) instead of ``"values"``, so every language can build them exactly.
* ``cases[i].pool``: instead of inline inputs, a pool to create and fill with
  ``appends`` (each a role -> tensor map, streamed in ``chunk_bytes`` chunks)
  and then ``label`` (indices, labels); the Select then names the pool.
* ``cases[i].expect``: ``indices`` (exact), ``scores`` (within ``rtol``/``atol``, the
  case's own tolerance; non-finite scores are the strings "Infinity", "-Infinity",
  "NaN" and must match exactly), ``pseudo_label_indices``/``pseudo_labels`` (exact),
  ``reference`` (what the expected answer comes from), or ``error`` (a status code name).
"""

from __future__ import annotations

import json
import sys
import tempfile
import uuid
from pathlib import Path

import ml_dtypes
import numpy as np
import references
import tolerance as tol

from assay.client import AssayError, Client
from assay.server.acquisition import selection
from assay.server.wiring.app import start
from assay.server.wiring.config import ServerConfig
from assay.vocab.errors import AssayError as DomainError

OUT = Path(__file__).with_name("select_vectors.json")
FORMAT_VERSION = 2
#: Inputs drawn per case before giving up on finding one whose decisions clear the bounds.
ATTEMPTS = 200
#: Client deadline: long enough for a first call that compiles kernels on a busy 2-core box.
TIMEOUT_S = 600
#: Marks "7 unless the strategy is a score strategy" (whose seed only orders exact ties).
DEFAULT_SEED = object()
#: Batch strategies whose seed, too, only orders exact ties: their cases go unseeded, so
#: ties fall to the lower index, as the twins rank them.
TIES_ONLY_SEED = ("cal", "forgetting_events")


def _fallback_rtol(strategy: str, inputs: dict, budget: int, params: dict) -> float:
    """Tolerance of a case no float64 twin covers, from the arithmetic that computes it.

    ``batchbald`` (float32 by default) sums S * (joint configurations) products; the
    other fallbacks score in float64 (``tolerance.FLOAT64_RTOL``).
    """
    if strategy == "batchbald" and params.get("precision", "float32") == "float32":
        s, _, c = np.asarray(inputs["samples"]).shape
        configs = min(c**budget, int(params.get("max_exact_configs", 10000)))
        return tol.round_up(tol.gamma(s * configs + c, tol.U32))
    return tol.FLOAT64_RTOL

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


def clustered(rng: np.random.Generator, n: int, d: int, k: int) -> np.ndarray:
    """``n`` points in ``k`` well-separated Gaussian clusters (every cluster at least
    two points), whose k-means partition does not depend on the initialization."""
    while True:
        centres = rng.normal(size=(k, d))
        centres *= 3.0 / np.linalg.norm(centres, axis=1, keepdims=True)
        gaps = np.linalg.norm(centres[:, None] - centres[None], axis=2) + 9 * np.eye(k)
        if gaps.min() > 2.0:
            break
    label = np.concatenate([np.repeat(np.arange(k), 2), rng.integers(0, k, size=n - 2 * k)])
    rng.shuffle(label)
    return centres[label] + 0.15 * rng.normal(size=(n, d))


def make_inputs(rng: np.random.Generator, n: int, c: int, d: int, s: int, t: int, l_: int,
                dtype, clusters: int = 0) -> dict[str, np.ndarray]:
    """One consistent set of every input role, for N items (embeddings in ``clusters``
    separated clusters when given)."""
    samples = softmax(rng.normal(size=(s, n, c)) * 2.0)
    inputs = {
        "probs": samples.mean(axis=0),
        "samples": samples,
        "embeddings": clustered(rng, n, d, clusters) if clusters else rng.normal(size=(n, d)),
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


def inline_equivalent(pool: dict, exclude) -> tuple[dict[str, np.ndarray], list[int]]:
    """The inline inputs and exclusions a pool Select amounts to: the appends joined
    (items on axis 1 of ``samples``/``predictions``, else axis 0), labeled items
    excluded and their embeddings passed as ``labeled_embeddings``."""
    roles = pool["appends"][0].keys()
    joined = {r: np.concatenate([part[r] for part in pool["appends"]],
                                axis=1 if r in ("samples", "predictions") else 0)
              for r in roles}
    labeled = sorted(int(i) for i in pool.get("label", ([], []))[0])
    if labeled and "embeddings" in joined:
        joined["labeled_embeddings"] = joined["embeddings"][labeled]
    return joined, sorted(set(labeled) | set(int(i) for i in exclude or []))


class Builder:
    def __init__(self, client: Client):
        self.client = client
        self.cases: list[dict] = []
        self.names: set[str] = set()
        self.kinds = {s.name: s.kind for s in client.list_strategies()}
        self.redraws = 0

    def add(self, name: str, strategy: str, budget: int, *, inputs=None, pool=None,
            params=None, seed=DEFAULT_SEED, exclude=None, expect_error: str | None = None,
            check_reference: bool = True, clustered: bool = False) -> None:
        """Add one case. ``inputs``/``pool`` may be callables that draw fresh data: they
        are called again while a decision of the reference is too close to call."""
        if name in self.names:
            raise ValueError(f"duplicate case {name}")
        self.names.add(name)
        if seed is DEFAULT_SEED:
            seed = None if (self.kinds.get(strategy) == "score"
                            or strategy in TIES_ONLY_SEED) else 7
        last: Exception | None = None
        for _ in range(ATTEMPTS):
            data_in = inputs() if callable(inputs) else inputs
            data_pool = pool() if callable(pool) else pool
            try:
                case = self._case(name, strategy, budget, data_in, data_pool, params, seed,
                                  exclude, expect_error, check_reference, clustered)
            except references.TooClose as why:
                if not (callable(inputs) or callable(pool)):
                    raise AssertionError(f"{name}: {why}, and its inputs are fixed") from None
                self.redraws += 1
                last = why
                continue
            self.cases.append(case)
            return
        raise AssertionError(f"{name}: no inputs in {ATTEMPTS} draws clear the rounding "
                             f"bounds (last: {last})")

    def _case(self, name, strategy, budget, inputs, pool, params, seed, exclude,
              expect_error, check_reference, clustered) -> dict:
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
            ref_inputs, ref_exclude = inline_equivalent(pool, exclude)
        else:
            case["inputs"] = {k: tensor_json(v) for k, v in (inputs or {}).items()}
            ref_inputs, ref_exclude = inputs or {}, exclude
        answer = None
        if expect_error is None:
            answer = references.expected(strategy, budget, ref_inputs, params, seed,
                                         ref_exclude, clustered=clustered)
        got = self._run(case, strategy, budget, inputs, pool, params, seed, exclude,
                        check_reference)
        if expect_error is not None:
            if got.get("error") != expect_error:
                raise AssertionError(f"{name}: expected {expect_error}, got {got}")
            case["expect"] = got
            return case
        if "error" in got:
            raise AssertionError(f"{name} ({strategy}) failed with {got['error']}: "
                                 f"{got['message']}")
        if answer is None:
            got["rtol"] = _fallback_rtol(strategy, ref_inputs, budget, params or {})
            got["atol"] = tol.FLOAT64_ATOL
            got["reference"] = "acquisition"
            case["expect"] = got
            return case
        expect = {"indices": answer.indices, "scores": [_float_json(v) for v in answer.scores],
                  "rtol": answer.rtol, "atol": answer.atol, "reference": answer.basis}
        if got["indices"] != expect["indices"]:
            message = (f"{name}: server picked {got['indices']}, the float64 reference "
                       f"{expect['indices']} ({answer.basis})")
            if clustered:  # FAISS's random start stopped in a local minimum: other data
                raise references.TooClose(message)
            raise AssertionError(message)
        _check_scores(name, got["scores"], expect)
        want_pseudo = answer.pseudo or ([], [])
        got_pseudo = (got.get("pseudo_label_indices", []), got.get("pseudo_labels", []))
        if list(got_pseudo[0]) != want_pseudo[0] or list(got_pseudo[1]) != want_pseudo[1]:
            raise AssertionError(f"{name}: server pseudo-labels {got_pseudo}, the reference "
                                 f"{want_pseudo}")
        if want_pseudo[0]:
            expect["pseudo_label_indices"], expect["pseudo_labels"] = want_pseudo
        case["expect"] = expect
        return case

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
        got = {"indices": sel.indices.tolist(), "scores": [_float_json(v) for v in sel.scores]}
        if sel.pseudo_label_indices.size:
            got["pseudo_label_indices"] = sel.pseudo_label_indices.tolist()
            got["pseudo_labels"] = sel.pseudo_labels.tolist()
        if pool is None and check_ref:
            ref = selection.select(strategy, budget, inputs or {}, params, seed=seed,
                                     exclude=None if exclude is None else np.asarray(exclude))
            if ref.indices.tolist() != got["indices"]:
                raise AssertionError(f"{case['name']}: client and acquisition layer disagree")
        return got


def _check_scores(name: str, got: list, expect: dict) -> None:
    """The server's scores against the reference's, as every client compares them."""
    if len(got) != len(expect["scores"]):
        raise AssertionError(f"{name}: {len(got)} scores, the reference {len(expect['scores'])}")
    for i, (g, w) in enumerate(zip(got, expect["scores"], strict=True)):
        if isinstance(w, str) or isinstance(g, str):
            if g != w:
                raise AssertionError(f"{name}: score {i} is {g}, the reference {w}")
        elif abs(g - w) > expect["atol"] + expect["rtol"] * abs(w):
            raise AssertionError(f"{name}: score {i} is {g!r}, the reference {w!r}, beyond "
                                 f"rtol {expect['rtol']:g} atol {expect['atol']:g}")


def _check_reference_error(name, strategy, budget, inputs, params, seed, exclude, code):
    try:
        selection.select(strategy, budget, inputs or {}, params, seed=seed,
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
        # k-means gets separated clusters, one per pick: the only inputs on which its
        # answer is defined independently of FAISS's random start.
        km = info.name == "kmeans"

        def draw(n, c, d, s, t, l_, dtype, roles, clusters=0):
            def make():
                inputs = make_inputs(rng, n() if callable(n) else n, c=c, d=d, s=s, t=t,
                                     l_=l_, dtype=dtype, clusters=clusters)
                if "labels" in roles and "labeled_embeddings" in roles:
                    # Both given, labels mark pool rows and labeled_embeddings are theirs
                    # (as a stored pool derives them).
                    inputs["labeled_embeddings"] = inputs["embeddings"][inputs["labels"] >= 0]
                return {r: v for r, v in inputs.items() if r in roles}
            return make

        for tag, dtype in dtypes:
            b.add(f"{info.name}-{tag}", info.name, 6,
                  inputs=draw(lambda: int(rng.integers(40, 90)), 7, 5, 4, 6, 6, dtype,
                              roles_for(info, with_optional=False), 6 if km else 0),
                  clustered=km)
        # Optional inputs too, with an exclusion list.
        b.add(f"{info.name}-optional-exclude", info.name, 5,
              inputs=draw(50, 4, 3, 3, 5, 4, np.float32, roles_for(info, with_optional=True),
                          5 if km else 0),
              exclude=[0, 3, 4, 17, 49], clustered=km)
        # Declared parameters at a non-default value, when they are numbers or bools.
        params = {}
        for pname, spec in info.params.items():
            if pname in ("prefilter", "prefilter_k"):
                continue
            params.update(_non_default(pname, spec))
        if params:
            b.add(f"{info.name}-params", info.name, 4,
                  inputs=draw(64, 5, 4, 3, 4, 5, np.float32,
                              roles_for(info, with_optional=False), 4 if km else 0),
                  params=params, clustered=km)

    names = {s.name for s in strategies}

    def role(name, n, c=3, d=2, s=2, t=2, dtype=np.float32):
        return lambda: {name: make_inputs(rng, n, c=c, d=d, s=s, t=t, l_=0, dtype=dtype)[name]}

    # Odd shapes: one item, budget = N, one class, wide and narrow.
    b.add("entropy-n1", "entropy", 1, inputs=role("probs", 1))
    b.add("margin-c257-budget-n", "margin", 3, inputs=role("probs", 3, c=257))
    b.add("entropy-c1-ties-by-index", "entropy", 4,
          inputs={"probs": np.ones((9, 1), np.float32)}, seed=None)
    b.add("entropy-c1-ties-seeded", "entropy", 4,
          inputs={"probs": np.ones((9, 1), np.float32)}, seed=123)
    b.add("least-confident-fp16-n2000", "least_confident", 100,
          inputs=role("probs", 2000, dtype=np.float16))
    b.add("bald-s1", "bald", 5, inputs=role("samples", 30, c=6, s=1, dtype=np.float64))
    # Non-symmetric shape: a transposed [C, N] upload must not pass as [N, C].
    b.add("entropy-asymmetric-11x5", "entropy", 11, inputs=role("probs", 11, c=5))
    b.add("predictions-int32", "label_dispersion", 5, inputs=lambda: {
        "predictions": rng.integers(0, 4, size=(7, 25)).astype(np.int32)})
    if "information_density" in names:
        def dens():
            x = make_inputs(rng, 40, c=4, d=6, s=3, t=2, l_=0, dtype=np.float32)
            return {"samples": x["samples"], "embeddings": x["embeddings"]}
        b.add("information-density-base-bald", "information_density", 5, inputs=dens,
              params={"base": "bald", "beta": 2.0})
    b.add("prefilter-entropy-then-margin", "margin", 5, inputs=role("probs", 80, c=5, d=4),
          params={"prefilter": "entropy", "prefilter_k": 20})
    if "ceal" in names:
        # Sharp predictions, so that some items fall below the threshold 0.5 - 0.01 * 3.
        b.add("ceal-pseudo-labels", "ceal", 4, inputs=lambda: {
            "probs": softmax(rng.normal(size=(40, 4)) * 5.0).astype(np.float32)},
              params={"delta0": 0.5, "decay": 0.01, "round": 3, "max_pseudo_labels": 6})

    # Pools: chunked streaming (several chunks per array), two appends, labels.
    def pool(clusters=0):
        def make():
            keys = ("probs", "samples", "embeddings")
            x = make_inputs(rng, 157, c=6, d=8, s=3, t=2, l_=0, dtype=np.float32,
                            clusters=clusters)
            return {"chunk_bytes": 1000,
                    "appends": [{k: x[k][:, :120] if k == "samples" else x[k][:120]
                                 for k in keys},
                                {k: x[k][:, 120:] if k == "samples" else x[k][120:]
                                 for k in keys}],
                    "label": ([0, 5, 130, 156], [1, 0, 3, 2])}
        return make

    for strategy in ("entropy", "bald", "margin", "random",
                     *[s for s in ("coreset", "badge", "kmeans") if s in names]):
        km = strategy == "kmeans"
        b.add(f"pool-{strategy}", strategy, 7, pool=pool(7 if km else 0), clustered=km)

    def pool16():
        probs = make_inputs(rng, 300, c=10, d=4, s=2, t=2, l_=0, dtype=np.float16)["probs"]
        return {"chunk_bytes": 777, "appends": [{"probs": probs}],
                "label": ([1, 2, 3], [0, 0, 0])}
    b.add("pool-fp16-least-confident", "least_confident", 10, pool=pool16)

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
    return b.cases, b.redraws


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
            with Client(f"127.0.0.1:{server.port}", timeout=TIMEOUT_S) as client:
                cases, redraws = build(client)
                strategies = sorted(s.name for s in client.list_strategies())
        finally:
            server.stop(0)
    doc = {"format": FORMAT_VERSION, "strategies": strategies, "cases": cases}
    OUT.write_text(json.dumps(doc, separators=(",", ":"), allow_nan=False) + "\n")
    errors = sum("error" in c["expect"] for c in cases)
    fallback = sorted(c["name"] for c in cases if c["expect"].get("reference") == "acquisition")
    print(f"wrote {len(cases)} cases ({errors} error cases, {len(strategies)} strategies, "
          f"{redraws} inputs redrawn) to {OUT}")
    print(f"{len(fallback)} cases without an independent twin: {', '.join(fallback)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
