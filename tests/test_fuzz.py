"""Property-based fuzz of the service over the wire.

Pass criterion, for every generated request: no INTERNAL or UNKNOWN status, no process exit,
no answer slower than the request's deadline, and a refused request leaves every pool and
model exactly as it was (ids, item and label counts, versions, arrays, sizes).

The server runs as a subprocess, so a native abort (a FAISS exception escaping an OpenMP
region, say) shows up as an exit code instead of killing pytest. Requests are built with
the raw stubs, not the Python client, so that they can be as wrong as a hand-written
client in any language can make them: unknown dtypes, negative or 2^62 dimensions, byte
lengths that do not match the shape, NaN/Inf and huge finite values, transposed axes,
out-of-range indices, truncated and out-of-order streams, mangled ONNX files.

The suite runs a bounded, derandomized profile (``ASSAY_FUZZ_EXAMPLES`` examples per
family, default 25). ``python bench/fuzz.py --examples 2000`` runs the long, randomized
profile and prints the count of answers per status; the seed Hypothesis used is printed
with any failure.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ml_dtypes import bfloat16
from onnx_builders import mlp

from assay.v1 import assay_pb2, assay_pb2_grpc, model_pb2, model_pb2_grpc, tensor_pb2

EXAMPLES = int(os.environ.get("ASSAY_FUZZ_EXAMPLES", "25"))
LONG = os.environ.get("ASSAY_FUZZ_LONG", "") == "1"
VERBOSE = os.environ.get("ASSAY_FUZZ_VERBOSE", "") == "1"
#: Every call's deadline. Inputs here are tiny: an answer near it is a stall, not work.
DEADLINE = 60.0
#: Codes that mean the server broke rather than refused.
BROKEN = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN,
          grpc.StatusCode.DEADLINE_EXCEEDED}
STATUS_COUNTS: Counter[str] = Counter()

FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES, deadline=None, derandomize=not LONG, database=None,
    suppress_health_check=list(HealthCheck), print_blob=True)

_NUMPY = {tensor_pb2.DATA_TYPE_FP32: np.float32, tensor_pb2.DATA_TYPE_FP16: np.float16,
          tensor_pb2.DATA_TYPE_FP64: np.float64, tensor_pb2.DATA_TYPE_INT32: np.int32,
          tensor_pb2.DATA_TYPE_INT64: np.int64, tensor_pb2.DATA_TYPE_BF16: bfloat16}
ROLES = [f.name for f in assay_pb2.Inputs.DESCRIPTOR.fields if not f.is_repeated]


# -- the server -----------------------------------------------------------------------------

class Served:
    """A server subprocess with stubs and the strategy declarations it serves."""

    def __init__(self, data_dir: Path):
        data_dir.mkdir(parents=True, exist_ok=True)
        # The log goes to a file: a pipe nobody reads would fill and block the server.
        self.log = data_dir.parent / "server.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "assay.server", "serve", "--address", "127.0.0.1:0",
             "--data-dir", str(data_dir), "--max-pool-items", "100000"],
            stdout=subprocess.PIPE, stderr=self.log.open("w"), text=True)
        port = None
        started = time.monotonic()
        while port is None and time.monotonic() - started < 600:
            line = self.proc.stdout.readline()
            match = re.search(r"listening on [^,]*:(\d+)", line)
            if match:
                port = int(match.group(1))
            elif self.proc.poll() is not None:
                break
        if port is None:
            self.proc.kill()
            raise RuntimeError(f"server did not start: {self.log_tail()}")
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.assay = assay_pb2_grpc.AssayServiceStub(self.channel)
        self.models = model_pb2_grpc.ModelServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        self.strategies = {s.name: s for s in self.assay.ListStrategies(
            assay_pb2.ListStrategiesRequest(), timeout=DEADLINE).strategies}

    def call(self, method, request, what: str):
        """Call with the fuzz deadline; return ``(response or None, code)`` and check the
        answer is a refusal or a success, in time, from a live process."""
        started = time.monotonic()
        if VERBOSE:
            print(f"-> {what}", flush=True)
        try:
            response, code = method(request, timeout=DEADLINE), grpc.StatusCode.OK
        except grpc.RpcError as error:
            response, code = None, error.code()
            detail = error.details()
        else:
            detail = ""
        elapsed = time.monotonic() - started
        STATUS_COUNTS[code.name] += 1
        self.assert_alive(what)
        assert code not in BROKEN, f"{what}: {code.name} after {elapsed:.1f} s: {detail}"
        assert elapsed < DEADLINE, f"{what}: answered after {elapsed:.1f} s"
        return response, code

    def assert_alive(self, what: str) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"the server exited with {self.proc.returncode} after {what}: "
                                 f"{self.log_tail()}")
        status = self.health.Check(health_pb2.HealthCheckRequest(), timeout=30).status
        assert status == health_pb2.HealthCheckResponse.SERVING, what

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def state(self) -> tuple:
        """Everything a refused request must leave unchanged."""
        pools = self.assay.ListPools(assay_pb2.ListPoolsRequest(page_size=1000),
                                     timeout=DEADLINE).pools
        models = self.models.ListModels(model_pb2.ListModelsRequest(page_size=1000),
                                        timeout=DEADLINE).models
        return (tuple(_pool_state(p) for p in pools),
                tuple((m.model_id, m.sha256) for m in models))

    def close(self) -> None:
        self.channel.close()
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _pool_state(p: assay_pb2.Pool) -> tuple:
    return (p.pool_id, p.item_count, p.labeled_count, p.version, p.size_bytes,
            tuple((a.name, a.dtype, tuple(a.shape)) for a in p.arrays))


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    srv = Served(tmp_path_factory.mktemp("fuzz") / "data")
    yield srv
    srv.close()
    report = os.environ.get("ASSAY_FUZZ_REPORT")
    if report:
        Path(report).write_text(json.dumps(dict(STATUS_COUNTS), indent=1, sort_keys=True))
    print(f"\nfuzz answers by status: {dict(sorted(STATUS_COUNTS.items()))}")


def mutating(served: Served, method, request, what: str):
    """A call that may change stored state: when refused, nothing may have changed."""
    before = served.state()
    response, code = served.call(method, request, what)
    if code != grpc.StatusCode.OK:
        assert served.state() == before, f"{what} was refused ({code.name}) but changed state"
    return response, code


# -- generators -----------------------------------------------------------------------------

HUGE_DIMS = [2**31 - 1, 2**31, 2**32 + 1, 2**62, -1, -(2**40)]
special_floats = st.sampled_from([
    float("nan"), float("inf"), -float("inf"), 1e19, -1e19, 1e38, -3.4e38, 1e300, 1e-45,
    5e-324, 0.0, -0.0, 1.0, 0.5, 65504.0, 70000.0])
values = st.one_of(special_floats, st.floats(-10, 10), st.integers(-3, 3).map(float))


@st.composite
def tensors(draw, shape: tuple[int, ...] | None = None, rows: str = "any"):
    """A Tensor, usually well formed in its bytes but with hostile values; sometimes with
    a hostile dtype, shape or byte length."""
    hostile = draw(st.integers(0, 9))
    dtype = draw(st.sampled_from(sorted(_NUMPY)))
    if hostile == 0:
        dtype = draw(st.sampled_from([tensor_pb2.DATA_TYPE_UNSPECIFIED, 7, 99]))
    if shape is None or hostile == 1:
        dims = st.one_of(st.integers(0, 5), st.sampled_from(HUGE_DIMS))
        shape = tuple(draw(st.lists(dims, min_size=0, max_size=4)))
    if hostile == 2:
        shape = tuple(reversed(shape))  # a transposed [N, S, C] and the like
    n = math.prod(max(s, 0) for s in shape)
    if dtype not in _NUMPY or n > 4096 or any(s < 0 for s in shape):
        data = draw(st.binary(max_size=64))
    else:
        np_dtype = np.dtype(_NUMPY[dtype])
        if rows == "probs" and len(shape) >= 1 and shape[-1] > 0 and hostile > 3:
            raw = np.asarray(draw(st.lists(st.floats(0, 1), min_size=n, max_size=n)))
            raw = raw.reshape(shape) + 1e-3
            array = raw / raw.sum(axis=-1, keepdims=True)
        elif np_dtype.kind == "i":
            ints = st.one_of(st.integers(-2, 5), st.sampled_from([-(2**62), 2**31, 2**62]))
            array = np.asarray(draw(st.lists(ints, min_size=n, max_size=n)), dtype=np.int64)
        else:
            array = np.asarray(draw(st.lists(values, min_size=n, max_size=n)))
        with np.errstate(all="ignore"):
            data = np.asarray(array).astype(np_dtype).astype(np_dtype.newbyteorder("<")).tobytes()
        if hostile == 3:
            data = data[: draw(st.integers(0, max(len(data) - 1, 0)))] + draw(
                st.binary(max_size=3))
    return tensor_pb2.Tensor(dtype=dtype, shape=shape, data=data)


@st.composite
def role_arrays(draw, n: int, roles: list[str]):
    """Arrays for some roles with consistent N, C, d, S, T."""
    c, d, s, t = (draw(st.integers(1, 4)) for _ in range(4))
    shapes = {"probs": (n, c), "samples": (s, n, c), "embeddings": (n, d),
              "labeled_embeddings": (draw(st.integers(0, 3)), d), "scores": (n,),
              "loss": (n,), "discriminator": (n,), "predictions": (t, n),
              "labeled_probs": (draw(st.integers(0, 3)), c), "labels": (n,),
              "model_inputs": (n, 6), "target_samples": (s, draw(st.integers(1, 3)), c)}
    kinds = {"probs": "probs", "samples": "probs", "labeled_probs": "probs",
             "target_samples": "probs"}
    return {r: draw(tensors(shapes[r], kinds.get(r, "any"))) for r in roles}


def _param(draw, spec: assay_pb2.ParamSpec, strategies: list[str]) -> assay_pb2.ParamValue:
    kind = draw(st.integers(0, 5))
    if kind == 0:  # the wrong type
        return assay_pb2.ParamValue(string_value="x")
    if spec.type == assay_pb2.PARAM_TYPE_DOUBLE:
        return assay_pb2.ParamValue(double_value=draw(values))
    if spec.type == assay_pb2.PARAM_TYPE_INT:
        return assay_pb2.ParamValue(int_value=draw(st.one_of(
            st.integers(-2, 10), st.sampled_from([2**31, 2**62, -(2**62)]))))
    if spec.type == assay_pb2.PARAM_TYPE_BOOL:
        return assay_pb2.ParamValue(bool_value=draw(st.booleans()))
    choices = list(spec.choices) or strategies
    return assay_pb2.ParamValue(string_value=draw(st.sampled_from([*choices, "", "bogus"])))


@st.composite
def select_requests(draw, strategies: dict, source: str | None = None, n: int | None = None):
    names = sorted(strategies)
    name = draw(st.sampled_from([*names, *names, "", "bogus"]))
    info = strategies.get(name)
    n = draw(st.integers(1, 8)) if n is None else n
    request = assay_pb2.SelectRequest(strategy=name)
    budget = draw(st.one_of(st.integers(-1, n + 1), st.sampled_from([2**31, 2**62, 8_000_000])))
    request.budget = budget
    if source is None:
        roles = list(info.required_inputs) + list(info.optional_inputs) if info else []
        roles = draw(st.lists(st.sampled_from(ROLES), max_size=2, unique=True)) + roles
        roles = list(dict.fromkeys(r for r in roles if r in ROLES))
        if draw(st.integers(0, 5)) == 0 and roles:
            roles = roles[1:]  # a required input missing
        for role, tensor in draw(role_arrays(n, roles)).items():
            getattr(request.inputs, role).CopyFrom(tensor)
        if not roles:
            request.inputs.SetInParent()
    else:
        request.pool_id = source
    if info is not None:
        specs = list(info.params)
        for spec in draw(st.lists(st.sampled_from(specs), unique_by=lambda p: p.name,
                                  max_size=3)) if specs else []:
            request.params[spec.name].CopyFrom(_param(draw, spec, names))
    if draw(st.integers(0, 9)) == 0:
        request.params["no_such_param"].int_value = 1
    request.exclude_indices.extend(draw(st.lists(
        st.one_of(st.integers(-1, n), st.just(2**62)), max_size=3)))
    if draw(st.booleans()):
        request.seed = draw(st.one_of(st.integers(0, 5), st.just(2**64 - 1)))
    return request


# -- properties -----------------------------------------------------------------------------

@FUZZ_SETTINGS
@given(data=st.data())
def test_fuzz_inline_select(served, data):
    request = data.draw(select_requests(served.strategies))
    served.call(served.assay.Select, request, f"Select({request.strategy!r}, inline)")


@FUZZ_SETTINGS
@given(data=st.data())
def test_fuzz_pool_lifecycle(served, data):
    """Create, append (sometimes truncated, out of order or inconsistent), label, record an
    epoch and select on one pool; every refusal leaves the store as it was."""
    pool_id = data.draw(st.one_of(st.from_regex(r"fz-[a-z0-9]{6}", fullmatch=True),
                                  st.sampled_from(["", "Bad Id", "x" * 300])))
    mutating(served, served.assay.CreatePool, assay_pb2.CreatePoolRequest(pool_id=pool_id),
             "CreatePool")
    n = data.draw(st.integers(1, 6))
    roles = data.draw(st.lists(st.sampled_from(
        ["probs", "samples", "embeddings", "scores", "loss", "predictions", "model_inputs"]),
        min_size=1, max_size=3, unique=True))
    arrays = data.draw(role_arrays(n, roles))
    header = assay_pb2.AppendHeader(pool_id=pool_id, arrays=[
        assay_pb2.ArrayHeader(name=r, dtype=t.dtype, shape=t.shape) for r, t in arrays.items()])
    if data.draw(st.integers(0, 4)) == 0:
        header.request_id = data.draw(st.sampled_from(["r1", "r2", "x" * 2000]))
    messages = [assay_pb2.AppendPoolItemsRequest(header=header)]
    for i, tensor in enumerate(arrays.values()):
        cut = data.draw(st.integers(0, max(len(tensor.data), 0)))
        offsets = [0, cut] if data.draw(st.booleans()) else [cut, 0]  # sometimes out of order
        parts = [tensor.data[:cut], tensor.data[cut:]]
        for offset, part in zip(offsets, parts if offsets[0] == 0 else parts[::-1], strict=True):
            index = i if data.draw(st.integers(0, 9)) else data.draw(st.sampled_from([-1, 7]))
            messages.append(assay_pb2.AppendPoolItemsRequest(chunk=assay_pb2.AppendChunk(
                array_index=index, offset=offset, data=part)))
    if data.draw(st.integers(0, 5)) == 0:
        messages = messages[: data.draw(st.integers(0, len(messages)))]  # truncated stream
    if data.draw(st.integers(0, 9)) == 0:
        messages.append(assay_pb2.AppendPoolItemsRequest(header=header))  # a second header
    mutating(served, lambda it, timeout: served.assay.AppendPoolItems(iter(it), timeout=timeout),
             messages, f"AppendPoolItems({roles})")

    ints = st.one_of(st.integers(-2, n + 1), st.sampled_from([2**31, 2**62]))
    label = assay_pb2.LabelPoolItemsRequest(
        pool_id=pool_id, indices=data.draw(st.lists(ints, max_size=4)),
        labels=data.draw(st.lists(ints, max_size=4)))
    mutating(served, served.assay.LabelPoolItems, label, "LabelPoolItems")

    epoch = assay_pb2.RecordEpochRequest(pool_id=pool_id)
    which = data.draw(st.sampled_from(["predicted_labels", "probs", None]))
    if which is not None:
        shape = (n,) if which == "predicted_labels" else (n, data.draw(st.integers(1, 3)))
        getattr(epoch, which).CopyFrom(data.draw(tensors(shape, "probs")))
    mutating(served, served.assay.RecordEpoch, epoch, f"RecordEpoch({which})")

    request = data.draw(select_requests(served.strategies, source=pool_id, n=n))
    served.call(served.assay.Select, request, f"Select({request.strategy!r}, pool)")
    served.call(served.assay.DeletePool, assay_pb2.DeletePoolRequest(pool_id=pool_id),
                "DeletePool")


@FUZZ_SETTINGS
@given(data=st.data())
def test_fuzz_register_model(served, data):
    """Mangled, truncated, mislabelled or foreign ONNX files; then a Select through the
    model when one was registered."""
    model = mlp(np.random.default_rng(data.draw(st.integers(0, 2**32 - 1))),
                dropout=data.draw(st.sampled_from([None, 0.3]))).data
    kind = data.draw(st.integers(0, 4))
    if kind == 1:
        flips = data.draw(st.lists(st.integers(0, len(model) - 1), min_size=1, max_size=8))
        mangled = bytearray(model)
        for i in flips:
            mangled[i] ^= 0xFF
        model = bytes(mangled)
    elif kind == 2:
        model = model[: data.draw(st.integers(0, len(model) - 1))]
    elif kind == 3:
        model = data.draw(st.binary(max_size=256))
    model_id = data.draw(st.one_of(st.from_regex(r"m[a-z0-9]{5}", fullmatch=True),
                                   st.sampled_from(["", "UPPER", "a" * 100])))
    roles = data.draw(st.lists(st.sampled_from(
        ["logits", "probs", "embeddings", "loss", "discriminator", "bogus"]),
        min_size=0, max_size=3, unique=True))
    names = {"logits": "logits", "probs": "logits", "embeddings": "features", "loss": "loss",
             "discriminator": "disc", "bogus": "nothing"}
    header = model_pb2.RegisterModelHeader(
        model_id=model_id, size_bytes=len(model), sha256=hashlib.sha256(model).hexdigest(),
        outputs=[model_pb2.OutputBinding(role=r, output_name=names[r]) for r in roles])
    if data.draw(st.integers(0, 5)) == 0:
        header.size_bytes = data.draw(st.sampled_from([0, len(model) + 1, 2**62]))
    if data.draw(st.integers(0, 5)) == 0:
        header.sha256 = "0" * 64
    messages = [model_pb2.RegisterModelRequest(header=header)]
    step = data.draw(st.integers(1, max(len(model), 1)))
    messages += [model_pb2.RegisterModelRequest(chunk=model[i:i + step])
                 for i in range(0, len(model), step)]
    if data.draw(st.integers(0, 5)) == 0:
        messages = messages[: data.draw(st.integers(0, len(messages)))]
    # Everything is drawn before the calls: what Hypothesis draws must not depend on the
    # server's answers, or a replayed example could draw differently.
    request = data.draw(select_requests(served.strategies, n=data.draw(st.integers(1, 6))))
    request.model_ids.append(model_id)
    request.mc_samples = data.draw(st.sampled_from([0, 0, 2, -1, 2**31 - 1]))
    request.batch_size = data.draw(st.sampled_from([0, 1, 3, -5]))
    request.inputs.model_inputs.CopyFrom(data.draw(tensors((data.draw(st.integers(0, 6)), 6))))
    _, code = mutating(
        served, lambda it, timeout: served.models.RegisterModel(iter(it), timeout=timeout),
        messages, f"RegisterModel(kind={kind}, roles={roles})")
    if code == grpc.StatusCode.OK:
        served.call(served.assay.Select, request, f"Select({request.strategy!r}, model)")
        served.call(served.models.DeleteModel, model_pb2.DeleteModelRequest(model_id=model_id),
                    "DeleteModel")
