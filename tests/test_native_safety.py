"""No input may abort the server from inside native code.

Finite embeddings around 1e19 (or FP64 beyond the float32 range) overflow the float32
squared distances FAISS and the Numba kernels compute; FAISS then throws inside an
OpenMP region and the whole process aborts (SIGABRT). Every such input must be
answered INVALID_ARGUMENT naming the field, and the server must go on serving. The
reproductions run in a separate server process (and the direct FAISS calls in a
child interpreter), so a regression fails these tests instead of killing pytest.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import time

import grpc
import ml_dtypes
import numpy as np
import pytest
from refusals import field_and_reason, refusal

from assay.client.tensors import to_proto
from assay.kernels import _validate
from assay.v1 import assay_pb2, assay_pb2_grpc

#: A fresh server process warms every kernel up before it listens: minutes on a busy box.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

SEED = 20261201
N, D = 60, 8
#: Well inside float32's range, yet its squares (1e38 each, times d) overflow it.
HUGE = 3e19
INVALID = grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A server in its own process: (process, stub)."""
    data_dir = tmp_path_factory.mktemp("native") / "data"
    proc = subprocess.Popen(
        [sys.executable, "-m", "assay.server", "serve", "--address", "127.0.0.1:0",
         "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    port = None
    deadline = time.monotonic() + 600  # a cold start may compile kernels on a busy box
    while time.monotonic() < deadline and port is None:
        line = proc.stdout.readline()
        match = re.search(r"listening on .*:(\d+)", line)
        if match:
            port = int(match.group(1))
        elif proc.poll() is not None:
            break
    if port is None:
        proc.kill()
        pytest.fail("the server process did not start")
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield proc, assay_pb2_grpc.AssayServiceStub(channel)
    finally:
        channel.close()
        proc.kill()
        proc.wait(30)


def _data(seed: int = SEED):
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(3), size=N).astype(np.float32)
    emb = rng.normal(size=(N, D)).astype(np.float32)
    return probs, emb


def _select(stub, strategy, budget=3, params=None, **arrays):
    request = assay_pb2.SelectRequest(strategy=strategy, budget=budget, seed=1)
    request.inputs.SetInParent()
    for name, array in arrays.items():
        getattr(request.inputs, name).CopyFrom(to_proto(array))
    for name, value in (params or {}).items():
        request.params[name].CopyFrom(assay_pb2.ParamValue(string_value=value))
    return stub.Select(request, timeout=300)


def _huge(emb: np.ndarray, dtype) -> np.ndarray:
    """The same rows with one value pushed to a finite magnitude that overflows float32
    squares: 3e19 in float32/bfloat16, 1e39 (beyond float32 itself) in float64."""
    out = emb.astype(dtype)
    out[7, 2] = 1e39 if np.dtype(dtype) == np.float64 else HUGE
    assert np.isfinite(out.astype(np.float64)).all()
    return out


# Every strategy that measures distances on the embeddings, with what else it needs.
GEOMETRIC = [
    ("kmeans", {}, ()),
    ("diverse_minibatch", {}, ("probs",)),
    ("coreset", {}, ()),
    ("badge", {}, ("probs",)),
    ("suggestive_annotation", {"uncertainty": "entropy"}, ("probs",)),
    ("information_density", {}, ("probs",)),
    ("egl", {}, ("probs",)),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64, ml_dtypes.bfloat16],
                         ids=["fp32", "fp64", "bf16"])
@pytest.mark.parametrize("strategy,params,needs", GEOMETRIC, ids=[g[0] for g in GEOMETRIC])
def test_huge_finite_embeddings_are_refused_and_the_server_lives(served, strategy, params,
                                                                  needs, dtype):
    proc, stub = served
    probs, emb = _data()
    extra = {"probs": probs} if "probs" in needs else {}
    error = refusal(_select, stub, strategy, params=params, embeddings=_huge(emb, dtype),
                     **extra)
    assert proc.poll() is None, f"the server died (exit {proc.returncode}) on {strategy}"
    assert error.code() == INVALID, (strategy, error.details())
    assert field_and_reason(error) == ("inputs.embeddings", "VALUE_TOO_LARGE"), error.details()
    assert "rescale" in error.details()
    # The same request with ordinary values is answered: the server goes on serving.
    ok = _select(stub, strategy, params=params, embeddings=emb.astype(dtype), **extra)
    assert len(ok.indices) == 3


def test_huge_labeled_embeddings_are_refused(served):
    proc, stub = served
    _, emb = _data()
    error = refusal(_select, stub, "coreset", embeddings=emb,
                     labeled_embeddings=_huge(emb[:10], np.float32))
    assert proc.poll() is None
    assert field_and_reason(error) == ("inputs.labeled_embeddings", "VALUE_TOO_LARGE")


@pytest.mark.parametrize("huge_role", ["embeddings", "labeled_embeddings"])
def test_cal_refuses_overflowing_rows_before_its_faiss_search(served, huge_role):
    proc, stub = served
    probs, emb = _data()
    arrays = {"probs": probs, "embeddings": emb, "labeled_embeddings": emb[:10] + 0.5,
              "labeled_probs": probs[:10]}
    arrays[huge_role] = _huge(arrays[huge_role], np.float32)
    error = refusal(_select, stub, "cal", **arrays)
    assert proc.poll() is None
    assert field_and_reason(error) == (f"inputs.{huge_role}", "VALUE_TOO_LARGE"), error.details()
    arrays[huge_role] = (emb[:10] + 0.5) if huge_role == "labeled_embeddings" else emb
    assert len(_select(stub, "cal", **arrays).indices) == 3


def _append(stub, pool_id, **arrays):
    header = assay_pb2.AppendHeader(pool_id=pool_id)
    chunks = []
    for i, (name, array) in enumerate(arrays.items()):
        tensor = to_proto(array)
        header.arrays.append(assay_pb2.ArrayHeader(name=name, dtype=tensor.dtype,
                                                   shape=tensor.shape))
        chunks.append(assay_pb2.AppendPoolItemsRequest(chunk=assay_pb2.AppendChunk(
            array_index=i, offset=0, data=tensor.data)))
    messages = [assay_pb2.AppendPoolItemsRequest(header=header), *chunks]
    return stub.AppendPoolItems(iter(messages), timeout=300)


def test_a_pool_never_takes_rows_that_would_poison_every_select(served):
    """Such rows are refused at append (decided there, so a pool never holds them):
    the pool is unchanged, and every later Select on it works."""
    proc, stub = served
    probs, emb = _data()
    stub.CreatePool(assay_pb2.CreatePoolRequest(pool_id="guarded"), timeout=30)
    _append(stub, "guarded", probs=probs, embeddings=emb)
    before = stub.GetPool(assay_pb2.GetPoolRequest(pool_id="guarded"), timeout=30).pool
    for dtype in (np.float32,):
        error = refusal(_append, stub, "guarded", probs=probs,
                         embeddings=_huge(emb, dtype))
        assert error.code() == INVALID, error.details()
        assert field_and_reason(error)[1] == "VALUE_TOO_LARGE", error.details()
    after = stub.GetPool(assay_pb2.GetPoolRequest(pool_id="guarded"), timeout=30).pool
    assert after == before
    for strategy in ("kmeans", "diverse_minibatch", "coreset"):
        for _ in range(2):
            request = assay_pb2.SelectRequest(strategy=strategy, budget=3, seed=1,
                                              pool_id="guarded")
            assert len(stub.Select(request, timeout=300).indices) == 3
    assert proc.poll() is None


_CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np
    from assay.kernels._validate import max_abs_value
    from assay.kernels.kmeans import kmeans_closest, weighted_kmeans
    from assay.kernels.knn import knn
    from assay.vocab.errors import InvalidInput

    seed = int(sys.argv[1])
    rng = np.random.default_rng(seed)
    out = {}
    for name, dtype, value in (("fp32", np.float32, 3e19), ("fp64", np.float64, 1e39)):
        x = rng.normal(size=(400, 8)).astype(dtype)
        x[5, 1] = value
        calls = {
            "kmeans": lambda: kmeans_closest(x, 5, rng=np.random.default_rng(seed)),
            "weighted_kmeans": lambda: weighted_kmeans(x, np.ones(400), 5, iterations=5,
                                                       seed=1),
            "knn": lambda: knn(x, x, 3),
            "knn_cosine": lambda: knn(x, x, 3, metric="cosine"),
        }
        for call, fn in calls.items():
            try:
                fn()
                out[f"{call}/{name}"] = "answered"
            except InvalidInput as e:
                out[f"{call}/{name}"] = f"{e.field}:{e.reason}"
    # Just inside the bound, FAISS must answer and every distance must be finite.
    lim = max_abs_value(8) * (1 - 1e-6)
    y = (np.sign(rng.normal(size=(4000, 8))) * lim).astype(np.float32)
    r = kmeans_closest(y, 5, rng=np.random.default_rng(seed))
    c, _, _ = weighted_kmeans(y, np.ones(4000), 5, iterations=5, seed=1)
    v, i, _ = knn(y, y[:50], 3)
    out["at_bound"] = bool(np.isfinite(r.distances).all() and np.isfinite(c).all()
                           and np.isfinite(v).all() and (i >= 0).all()
                           and len(set(r.indices.tolist())) == 5)
    print(json.dumps(out))
""")


def test_faiss_entry_points_refuse_overflowing_rows_in_a_child_process():
    """Direct calls of every FAISS wrapper; in a child, so an abort fails the test only."""
    done = subprocess.run([sys.executable, "-c", _CHILD, str(SEED)], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, (f"seed {SEED}: child exited {done.returncode}",
                                  done.stderr[-2000:])
    got = json.loads(done.stdout.strip().splitlines()[-1])
    for call in ("kmeans", "weighted_kmeans", "knn", "knn_cosine"):
        field = "queries" if call.startswith("knn") else "embeddings"
        for dtype in ("fp32", "fp64"):
            assert got[f"{call}/{dtype}"] == f"{field}:VALUE_TOO_LARGE", (SEED, call, got)
    assert got["at_bound"] is True, (SEED, got)


def test_the_bound_is_what_float32_squares_need():
    """d * limit^2 times the 4 x headroom stays below float32's largest value, and a value
    twice the limit breaks that: the bound is not looser than the arithmetic allows."""
    f32_max = float(np.finfo(np.float32).max)
    for d in (1, 3, 64, 4096):
        lim = _validate.max_abs_value(d)
        assert 4.0 * _validate.HEADROOM * d * lim**2 <= f32_max * (1 + 1e-12), d
        assert 4.0 * _validate.HEADROOM * d * (2 * lim) ** 2 > f32_max, d
