"""The conformance vectors through the Python client against a live server."""

from __future__ import annotations

import uuid

import client_vectors as vectors
import numpy as np
import pytest

from assay.client import AssayError, Client

DOC = vectors.load()
CASES = DOC["cases"]


@pytest.fixture(scope="module")
def client(live_server):
    with Client(live_server, timeout=vectors.DEADLINE_S) as c:
        yield c


def test_vectors_cover_every_strategy(client):
    """The vectors were generated with today's registry: regenerate when a strategy is added."""
    served = sorted(s.name for s in client.list_strategies())
    missing = sorted(set(served) - set(DOC["strategies"]))
    assert not missing, (f"strategies {missing} have no vectors: run "
                         "python tests/vectors/generate.py")
    covered = {c["strategy"] for c in CASES}
    assert set(DOC["strategies"]) <= covered


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_vector(client, case):
    pool_id = None
    kwargs = dict(params=vectors.params(case), seed=case.get("seed"),
                  exclude=case.get("exclude"))
    try:
        if "pool" in case:
            pool_id = f"py-{uuid.uuid4().hex[:12]}"
            client.create_pool(pool_id)
            for part in case["pool"]["appends"]:
                client.append(pool_id, chunk_bytes=case["pool"]["chunk_bytes"],
                              **{k: vectors.array(t) for k, t in part.items()})
            if "label" in case["pool"]:
                client.label(pool_id, case["pool"]["label"]["indices"],
                             case["pool"]["label"]["labels"])
            def run():
                return client.select(case["strategy"], case["budget"], pool=pool_id, **kwargs)
        else:
            inputs = {k: vectors.array(t) for k, t in case["inputs"].items()}
            def run():
                return client.select(case["strategy"], case["budget"], **inputs, **kwargs)
        expect = case["expect"]
        if "error" in expect:
            with pytest.raises(AssayError) as info:
                run()
            assert info.value.code.name == expect["error"], info.value.message
            return
        sel = run()
        why = f"{case['name']}: expected from {expect.get('reference', 'the server')}"
        assert sel.indices.tolist() == expect["indices"], why
        np.testing.assert_allclose(sel.scores, np.asarray(expect["scores"], dtype=np.float64),
                                   rtol=expect["rtol"], atol=expect["atol"], err_msg=why)
        assert sel.pseudo_label_indices.tolist() == expect.get("pseudo_label_indices", [])
        assert sel.pseudo_labels.tolist() == expect.get("pseudo_labels", [])
    finally:
        if pool_id is not None:
            client.delete_pool(pool_id)


def test_every_case_carries_its_own_tolerance_and_reference():
    """Tolerances come from the arithmetic of each case (tests/vectors/tolerance.py), and
    answers from a named reference: a vector file without them is out of date."""
    assert DOC["format"] >= 2, "run python tests/vectors/generate.py"
    for case in CASES:
        expect = case["expect"]
        if "error" in expect:
            continue
        assert expect["reference"], case["name"]
        assert 0.0 <= expect["rtol"] < 1e-2 and 0.0 <= expect["atol"] < 1e-2, case["name"]
        assert expect["rtol"] > 0.0 or expect["atol"] > 0.0, case["name"]
    geometric = [c for c in CASES if c["strategy"] in ("coreset", "badge", "kmeans")
                 and "error" not in c["expect"]]
    assert geometric and all(c["expect"]["reference"] != "acquisition" for c in geometric)


def test_a_byte_swapped_tensor_fails_the_vectors(client):
    """The vectors catch wire bugs: big-endian bytes sent as little-endian change the answer."""
    case = next(c for c in CASES if c["name"] == "entropy-asymmetric-11x5")
    probs = vectors.array(case["inputs"]["probs"])
    from assay.client.tensors import to_proto
    from assay.v1 import assay_pb2
    tensor = to_proto(probs)
    tensor.data = probs.astype(">f4").tobytes()  # the bug: wrong byte order on the wire
    request = assay_pb2.SelectRequest(strategy="entropy", budget=case["budget"], seed=7)
    request.inputs.probs.CopyFrom(tensor)
    with pytest.raises(Exception) as info:
        client._stub.Select(request, timeout=10)
    assert "INVALID_ARGUMENT" in str(info.value)  # garbage floats are not probabilities
