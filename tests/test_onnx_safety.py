"""Registering models: the resource methods, the upload's integrity, and every safety check,
each rejection with its precise status and reason, and nothing stored after one."""

from __future__ import annotations

import hashlib
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import onnx
import onnxruntime as ort
import psutil
import pytest
import seeding
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from onnx import TensorProto, helper, numpy_helper
from onnx_builders import (
    ALL_OUTPUTS,
    allocation_bomb,
    folding_bomb,
    hidden_folding_bomb,
    inlining_bomb,
    mlp,
    shadowing_function,
)

from assay.client import AssayError, Client
from assay.server.models.onnx_cost import ModelLimits, check_cost, estimate
from assay.server.models.probe import MAX_PROBES, running_builds
from assay.v1 import model_pb2, model_pb2_grpc
from assay.vocab.errors import InvalidInput

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def reason_of(error: AssayError | grpc.RpcError) -> tuple[str, str]:
    """(ErrorInfo reason, field) of a failed call."""
    call = error.details if isinstance(error, AssayError) else error
    for detail in rpc_status.from_call(call).details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info.reason, info.metadata.get("field", "")
    raise AssertionError("no ErrorInfo in the status")


def rejected(client: Client, model: onnx.ModelProto | bytes, code=INVALID,
             outputs=None, model_id: str = "m") -> tuple[str, str, str]:
    """Register ``model``, expect ``code``; returns (reason, field, message). Nothing may be
    stored afterwards."""
    data = model if isinstance(model, bytes) else model.SerializeToString()
    with pytest.raises(AssayError) as info:
        client.register_model(model_id, data, {"logits": "logits"} if outputs is None else outputs)
    assert info.value.code == code, info.value
    assert client.list_models() == []
    return (*reason_of(info.value), info.value.message)


@pytest.fixture
def rng():
    return seeding.rng()


@pytest.fixture
def stub(server):
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield model_pb2_grpc.ModelServiceStub(channel)


def _header(data: bytes, **overrides) -> model_pb2.RegisterModelRequest:
    fields = dict(model_id="m", size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest(),
                  outputs=[model_pb2.OutputBinding(role="logits", output_name="logits")])
    fields.update(overrides)
    return model_pb2.RegisterModelRequest(header=model_pb2.RegisterModelHeader(**fields))


def _chunks(data: bytes, size: int = 100):
    return [model_pb2.RegisterModelRequest(chunk=data[i:i + size])
            for i in range(0, len(data), size)]


def _stream_error(stub, messages) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        stub.RegisterModel(iter(messages), timeout=30)
    return info.value


def _tmp_files(server) -> list[str]:
    return os.listdir(server.models.tmp_dir)


# -- the resource ----------------------------------------------------------------------------


def test_register_get_list_delete(client, rng):
    a, b = mlp(rng, dropout=0.3), mlp(rng, d_in=3, classes=2)
    got = client.register_model("b-model", a.data, ALL_OUTPUTS, chunk_bytes=64)
    assert got.model_id == "b-model"
    assert got.outputs == ALL_OUTPUTS
    assert (got.input_name, got.input_dtype, got.input_shape) == ("x", "DATA_TYPE_FP32", (-1, 6))
    assert got.sha256 == hashlib.sha256(a.data).hexdigest()
    assert got.size_bytes == len(a.data)
    assert (got.opset_version, got.dropout_count) == (13, 1)
    client.register_model("a-model", b.data, {"logits": "logits"})
    assert client.get_model("b-model") == got
    assert [m.model_id for m in client.list_models(page_size=1)] == ["a-model", "b-model"]
    client.delete_model("a-model")
    assert [m.model_id for m in client.list_models()] == ["b-model"]
    for call in (client.get_model, client.delete_model):
        with pytest.raises(AssayError) as info:
            call("a-model")
        assert info.value.code == grpc.StatusCode.NOT_FOUND
        assert reason_of(info.value)[0] == "MODEL_NOT_FOUND"
    # The id is free again; the new registration is a different model.
    assert client.register_model("a-model", a.data, {"logits": "logits"}).dropout_count == 1


def test_ids_and_pagination_are_checked(client, rng, stub):
    data = mlp(rng).data
    client.register_model("m", data, {"logits": "logits"})
    with pytest.raises(AssayError) as info:
        client.register_model("m", data, {"logits": "logits"})
    assert info.value.code == grpc.StatusCode.ALREADY_EXISTS
    for bad in ("Bad Id", "", "-x", "a" * 64):
        with pytest.raises(AssayError) as info:
            client.register_model(bad, data, {"logits": "logits"})
        assert info.value.code == INVALID
        assert reason_of(info.value)[1] == "header.model_id"
        with pytest.raises(AssayError) as info:
            client.get_model(bad)
        assert info.value.code == INVALID
    for request in (model_pb2.ListModelsRequest(page_token="%%%"),
                    model_pb2.ListModelsRequest(page_size=1001)):
        with pytest.raises(grpc.RpcError) as error:
            stub.ListModels(request, timeout=10)
        assert error.value.code() == INVALID


def test_models_survive_a_restart_and_leftovers_are_swept(server_factory, rng):
    first = server_factory()
    m = mlp(rng)
    with Client(f"127.0.0.1:{first.port}") as c:
        registered = c.register_model("kept", m.data, ALL_OUTPUTS)
    models_dir = first.models.models_dir
    first.stop(0)
    # What a crash could leave: a half-received upload and a renamed file never committed.
    (models_dir / "tmp" / "upload.onnx").write_bytes(b"partial")
    (models_dir / "0123456789abcdef.onnx").write_bytes(m.data)
    second = server_factory()
    with Client(f"127.0.0.1:{second.port}") as c:
        assert c.get_model("kept") == registered
        assert [x.model_id for x in c.list_models()] == ["kept"]
    assert sorted(p.name for p in models_dir.iterdir()) == sorted(
        ["tmp", f"{second.models.get('kept').uid}.onnx"])
    assert _tmp_files(second) == []


# -- integrity of the upload ------------------------------------------------------------------


def test_digest_mismatch_stores_nothing(server, client, stub, rng):
    data = mlp(rng).data
    wrong = hashlib.sha256(data + b"x").hexdigest()
    error = _stream_error(stub, [_header(data, sha256=wrong), *_chunks(data)])
    assert error.code() == INVALID
    assert reason_of(error) == ("DIGEST_MISMATCH", "header.sha256")
    # A flipped byte in transit is caught the same way.
    corrupted = bytearray(data)
    corrupted[len(data) // 2] ^= 0xFF
    error = _stream_error(stub, [_header(data), *_chunks(bytes(corrupted))])
    assert reason_of(error)[0] == "DIGEST_MISMATCH"
    assert client.list_models() == []
    assert _tmp_files(server) == []


def test_truncated_overrun_and_misordered_streams(server, client, stub, rng):
    data = mlp(rng).data
    cases = {
        "TRUNCATED": [_header(data), *_chunks(data[:-10])],
        "OVERRUN": [_header(data), *_chunks(data + b"extra")],
        "OUT_OF_ORDER": [*_chunks(data)],
    }
    for reason, messages in cases.items():
        error = _stream_error(stub, messages)
        assert error.code() == INVALID, reason
        assert reason_of(error)[0] == reason
    error = _stream_error(stub, [_header(data), _header(data)])
    assert (error.code(), reason_of(error)[0]) == (INVALID, "OUT_OF_ORDER")
    error = _stream_error(stub, [])
    assert error.code() == INVALID
    for bad in ({"sha256": "abc"}, {"size_bytes": 0}):
        error = _stream_error(stub, [_header(data, **bad), *_chunks(data)])
        assert error.code() == INVALID
        assert reason_of(error)[1] == f"header.{next(iter(bad))}"
    assert client.list_models() == []
    assert _tmp_files(server) == []


def test_size_cap(server, client, rng):
    data = mlp(rng).data
    server.models.max_model_bytes = len(data) - 1
    reason, field, message = rejected(client, data, grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert (reason, field) == ("MODEL_TOO_LARGE", "header.size_bytes")
    assert str(len(data) - 1) in message
    server.models.max_model_bytes = len(data)
    client.register_model("m", data, {"logits": "logits"})


# -- what a model may contain -----------------------------------------------------------------


def _external(model: onnx.ModelProto, name: str, location: str) -> onnx.ModelProto:
    """Move initializer ``name`` into an external file reference (bytes dropped)."""
    for tensor in model.graph.initializer:
        if tensor.name == name:
            tensor.ClearField("raw_data")
            tensor.ClearField("float_data")
            tensor.data_location = TensorProto.EXTERNAL
            del tensor.external_data[:]
            entry = tensor.external_data.add()
            entry.key, entry.value = "location", location
    return model


def test_external_data_is_refused_before_anything_reads_it(client, rng, tmp_path, monkeypatch):
    m = mlp(rng)
    # The referenced file exists and holds exactly the right bytes: a loader that followed
    # the reference would succeed, so only the refusal keeps it from being read.
    weights = tmp_path / "weights.bin"
    weights.write_bytes(m.w["W1"].tobytes())
    monkeypatch.chdir(tmp_path)
    for location in ("weights.bin", str(weights), "../../etc/passwd"):
        model = _external(mlp(rng).model, "W1", location)
        reason, _, message = rejected(client, model)
        assert reason == "EXTERNAL_DATA"
        assert "'W1'" in message
    # A tensor attribute (a Constant node) is a tensor too.
    m = mlp(rng)
    const = numpy_helper.from_array(np.ones(3, np.float32), "c")
    const.ClearField("raw_data")
    const.data_location = TensorProto.EXTERNAL
    const.external_data.add(key="location", value=str(weights))
    m.model.graph.node.insert(0, helper.make_node("Constant", [], ["unused"], value=const))
    assert rejected(client, m.model)[0] == "EXTERNAL_DATA"


def test_only_standard_domains(client, rng):
    m = mlp(rng)
    m.model.graph.node[-1].domain = "com.microsoft"  # the Sigmoid of the disc head
    m.model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    reason, _, message = rejected(client, m.model)
    assert reason == "CUSTOM_OP_DOMAIN"
    assert "com.microsoft.Sigmoid" in message
    # A custom-op library's domain imported without use is refused as well.
    m = mlp(rng)
    m.model.opset_import.append(helper.make_opsetid("my.custom.ops", 1))
    assert rejected(client, m.model)[0] == "CUSTOM_OP_DOMAIN"
    # ai.onnx.ml is standard.
    m = mlp(rng)
    m.model.opset_import.append(helper.make_opsetid("ai.onnx.ml", 3))
    client.register_model("ml", m.data, {"logits": "logits"})


def test_local_functions_are_checked_like_graphs(client, rng):
    def with_function(body_domain: str) -> onnx.ModelProto:
        m = mlp(rng)
        body = [helper.make_node("Relu", ["a"], ["b"], domain=body_domain)]
        function = helper.make_function("local.fn", "MyRelu", ["a"], ["b"], body,
                                        [helper.make_opsetid("", 13),
                                         helper.make_opsetid(body_domain, 1)]
                                        if body_domain else [helper.make_opsetid("", 13)])
        for node in m.model.graph.node:
            if node.op_type == "Relu":
                node.op_type, node.domain = "MyRelu", "local.fn"
        m.model.functions.append(function)
        m.model.opset_import.append(helper.make_opsetid("local.fn", 1))
        return m.model

    client.register_model("fn", with_function("").SerializeToString(), {"logits": "logits"})
    client.delete_model("fn")
    assert rejected(client, with_function("evil.ops"))[0] == "CUSTOM_OP_DOMAIN"


@pytest.mark.parametrize(("domain", "version"), [("", 6), ("", 22), ("ai.onnx.ml", 6)])
def test_opset_range(client, rng, domain, version):
    m = mlp(rng)
    if domain:
        m.model.opset_import.append(helper.make_opsetid(domain, version))
    else:
        m.model.opset_import[0].version = version
    reason, _, message = rejected(client, m.model)
    assert reason == "OPSET_UNSUPPORTED"
    assert str(version) in message


def test_checker_and_loader_failures(client, rng):
    m = mlp(rng)
    m.model.graph.node[1].input[1] = "no_such_tensor"
    reason, _, message = rejected(client, m.model)
    assert reason == "ONNX_CHECKER"
    assert "no_such_tensor" in message
    assert rejected(client, b"definitely not a protobuf")[0] == "NOT_ONNX"
    # Passes the checker (which infers no types) but onnxruntime refuses the type clash.
    m = mlp(rng)
    for tensor in m.model.graph.initializer:
        if tensor.name == "W2":
            tensor.CopyFrom(numpy_helper.from_array(m.w["W2"].astype(np.float64), "W2"))
    reason, _, message = rejected(client, m.model)
    assert reason == "MODEL_LOAD_FAILED"
    assert "onnxruntime" in message


def test_graph_inputs_must_be_tensors_of_a_pool_type(client, rng):
    m = mlp(rng)
    m.model.graph.input.append(helper.make_tensor_value_info("mask", TensorProto.STRING, [4]))
    reason, _, message = rejected(client, m.model)
    assert reason == "MODEL_INPUTS"
    assert "'mask'" in message
    m = mlp(rng)
    m.model.graph.input[0].type.tensor_type.elem_type = TensorProto.STRING
    assert rejected(client, m.model)[0] == "MODEL_INPUTS"
    m = mlp(rng)
    del m.model.graph.input[0].type.tensor_type.shape.dim[:]  # a scalar has no item axis
    reason, _, message = rejected(client, m.model)
    assert reason == "MODEL_INPUTS"
    assert "item axis" in message


def test_declared_outputs_are_checked_against_the_graph(client, rng):
    data = mlp(rng).data
    cases = [
        ({"logits": "logitz"}, "OUTPUT_NOT_FOUND", "header.outputs[0].output_name", "'logitz'"),
        ({"logits": "logits", "embeddings": "features", "loss": "features"}, "OUTPUT_SHAPE",
         "header.outputs[2].output_name", "[N] or [N, 1]"),
        ({"scores": "logits"}, "INVALID_INPUT", "header.outputs[0].role", "'scores'"),
        ({"logits": "logits", "probs": "logits"}, "INVALID_INPUT", "header.outputs",
         "not both"),
        ({}, "INVALID_INPUT", "header.outputs", "at least one"),
    ]
    for outputs, reason, field, needle in cases:
        got = rejected(client, data, outputs=outputs)
        assert got[:2] == (reason, field), outputs
        assert needle in got[2]
    # A loss head declared on a [N, C] output names the output and its shape.
    got = rejected(client, data, outputs={"logits": "logits", "loss": "logits"})
    assert got[:2] == ("OUTPUT_SHAPE", "header.outputs[1].output_name")
    assert "'logits'" in got[2] and "[N] or [N, 1]" in got[2]
    # An integer output cannot carry a role.
    m = mlp(rng)
    m.model.graph.output[1].type.tensor_type.elem_type = TensorProto.INT64
    got = rejected(client, m.model, outputs={"logits": "logits", "embeddings": "features"})
    assert got[:2] == ("OUTPUT_SHAPE", "header.outputs[1].output_name")
    # An embeddings output of rank 3.
    m = mlp(rng)
    dims = m.model.graph.output[1].type.tensor_type.shape.dim
    dims.add().dim_value = 2
    got = rejected(client, m.model, outputs={"embeddings": "features"})
    assert got[:2] == ("OUTPUT_SHAPE", "header.outputs[0].output_name")
    assert "[N, d]" in got[2]


def test_a_local_function_named_like_a_runtime_op_is_refused(client):
    # Why it matters: onnxruntime runs its own com.microsoft.Gelu kernel, not the checked body
    # (Neg), so logits = x + gelu(x) instead of x - x = 0.
    x = np.array([[1.0, -2.0]], np.float32)
    session = ort.InferenceSession(shadowing_function().SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    gelu = 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))
    np.testing.assert_allclose(session.run(None, {"x": x})[0], x + gelu, rtol=1e-5)
    for domain, name in (("com.microsoft", "Gelu"), ("com.microsoft", "MyOwnName"),
                         ("", "Gelu"), ("ai.onnx.ml", "Normalizer")):
        reason, field, message = rejected(client, shadowing_function(domain, name))
        assert (reason, field) == ("FUNCTION_SHADOWS_OP", "chunk"), (domain, name)
        assert f"{domain}.{name}" in message
    # The same body in a domain of its own runs as written, and is accepted.
    client.register_model("own", shadowing_function("local.fn", "Gelu").SerializeToString(),
                          {"logits": "logits"})
    got = client.select("entropy", 1, model_inputs=np.ones((3, 2), np.float32), models=["own"])
    np.testing.assert_allclose(got.scores, np.log(2.0), rtol=1e-6)  # logits 0: uniform


def _external_tensor(name: str) -> onnx.TensorProto:
    tensor = numpy_helper.from_array(np.ones(3, np.float32), name)
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value="/etc/passwd")
    return tensor


def _hiding_places() -> dict[str, onnx.ModelProto]:
    """A model per place a TensorProto can hide, each one external."""
    rng = np.random.default_rng(11)
    models = {}
    m = mlp(rng).model  # training_info: its initialization graph's initializers
    init = helper.make_graph([], "init", [], [], [_external_tensor("t_init")])
    m.training_info.add().initialization.CopyFrom(init)
    models["training_info"] = m
    m = mlp(rng).model  # a sparse initializer's values
    sparse = helper.make_sparse_tensor(_external_tensor("s_values"),
                                       numpy_helper.from_array(np.arange(3, dtype=np.int64),
                                                               "s_indices"), [5])
    m.graph.sparse_initializer.append(sparse)
    models["sparse_initializer"] = m
    m = mlp(rng).model  # a SPARSE_TENSOR attribute
    m.graph.node.insert(0, helper.make_node("Constant", [], ["unused"], sparse_value=sparse))
    models["sparse attribute"] = m
    m = mlp(rng).model  # an initializer of an If's subgraph
    branch = helper.make_graph([helper.make_node("Identity", ["t_sub"], ["o"])], "branch", [],
                               [helper.make_tensor_value_info("o", TensorProto.FLOAT, [3])],
                               [_external_tensor("t_sub")])
    cond = numpy_helper.from_array(np.array(True), "cond")
    m.graph.initializer.append(cond)
    m.graph.node.insert(0, helper.make_node("If", ["cond"], ["unused"], then_branch=branch,
                                            else_branch=branch))
    models["subgraph"] = m
    m = mlp(rng).model  # a Constant inside a local function's body
    body = [helper.make_node("Constant", [], ["k"], value=_external_tensor("t_fn")),
            helper.make_node("Relu", ["a"], ["b"])]
    m.functions.append(helper.make_function("local.fn", "MyRelu", ["a"], ["b"], body,
                                            [helper.make_opsetid("", 13)]))
    m.opset_import.append(helper.make_opsetid("local.fn", 1))
    for node in m.graph.node:
        if node.op_type == "Relu":
            node.op_type, node.domain = "MyRelu", "local.fn"
    models["function"] = m
    return models


@pytest.mark.parametrize("place", sorted(_hiding_places()))
def test_external_data_is_refused_wherever_a_tensor_hides(client, place):
    reason, _, message = rejected(client, _hiding_places()[place])
    assert reason == "EXTERNAL_DATA", (place, message)


# -- what a model may cost ----------------------------------------------------------------------


def test_the_cost_estimate_matches_the_arithmetic():
    # Multiply-adds counted by hand for one item: Conv [1,3,8,8] * W [4,3,3,3] pad 1 ->
    # [1,4,8,8], each output 3*3*3 products; Gemm [1,256]x[256,10]; Einsum contracting j (5)
    # and k (6) into [1,7]; the largest tensor is the Conv output (256 floats).
    rng = np.random.default_rng(5)
    w = numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "W")
    g = numpy_helper.from_array(rng.normal(size=(256, 10)).astype(np.float32), "G")
    e = numpy_helper.from_array(rng.normal(size=(5, 6, 7)).astype(np.float32), "E")
    f = numpy_helper.from_array(rng.normal(size=(10, 30)).astype(np.float32), "F")
    shape = numpy_helper.from_array(np.array([-1, 5, 6], np.int64), "s")
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Flatten", ["c"], ["flat"]),
             helper.make_node("Gemm", ["flat", "G"], ["y"]),
             helper.make_node("MatMul", ["y", "F"], ["y30"]),
             helper.make_node("Reshape", ["y30", "s"], ["y56"]),
             helper.make_node("Einsum", ["y56", "E"], ["logits"], equation="njk,jkl->nl")]
    graph = helper.make_graph(
        nodes, "cost", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 7])], [w, g, e, f, shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    cost, largest, costliest = estimate(model)
    conv, gemm, matmul, einsum = 4 * 8 * 8 * 27, 256 * 10, 10 * 30, 7 * 5 * 6
    assert cost.macs == conv + gemm + matmul + einsum
    assert cost.largest_tensor_bytes == 4 * 8 * 8 * 4
    assert "'c'" in largest[0] and "(Conv)" in costliest[0]
    limits = ModelLimits(memory_bytes=4 * 8 * 8 * 4, macs=cost.macs)
    assert check_cost(model, limits) == cost  # exactly at both limits: accepted
    with pytest.raises(InvalidInput) as info:
        check_cost(model, ModelLimits(memory_bytes=4 * 8 * 8 * 4 - 1, macs=cost.macs))
    assert info.value.reason == "MODEL_TOO_COSTLY"
    with pytest.raises(InvalidInput) as info:
        check_cost(model, ModelLimits(memory_bytes=0, macs=cost.macs - 1))
    assert info.value.reason == "MODEL_TOO_COSTLY" and str(cost.macs) in info.value.message


def test_models_too_costly_for_one_item_are_refused_from_their_graph(client):
    # The two files are a few hundred bytes; a session build or a Select would take hours
    # (4 products of 8192^2 matrices) or 2.5 GB (a [25000, 25000] float32 constant).
    started = time.monotonic()
    reason, field, message = rejected(client, folding_bomb(8192))
    assert (reason, field) == ("MODEL_TOO_COSTLY", "chunk")
    assert "(MatMul)" in message and str(4 * 8192**3) in message and "--max-model-macs" in message
    reason, field, message = rejected(client, allocation_bomb(25000))
    assert (reason, field) == ("MODEL_TOO_COSTLY", "chunk")
    assert "(ConstantOfShape)" in message and "[25000, 25000]" in message
    assert str(25000 * 25000 * 4) in message and "--max-model-memory-bytes" in message
    # Generous: the static check takes milliseconds; folding would take hours.
    assert time.monotonic() - started < 60
    # The same shapes scaled down are ordinary models.
    client.register_model("small", folding_bomb(16).SerializeToString(), {"logits": "logits"})


def test_functions_that_expand_past_the_node_limit_are_refused(client):
    # 30 levels of functions calling the next one twice: f0 is 2^29 Identity nodes once
    # inlined, from a file of a few kilobytes; counted, not expanded.
    started = time.monotonic()
    reason, field, message = rejected(client, inlining_bomb(30))
    assert (reason, field) == ("MODEL_TOO_COSTLY", "chunk")
    assert str(2**29 + 1) in message  # f0's 2^29 nodes and the graph's Add
    assert time.monotonic() - started < 60
    # Shallow nesting is an ordinary model: x + x.
    client.register_model("nested", inlining_bomb(3).SerializeToString(), {"logits": "logits"})
    got = client.select("entropy", 1, model_inputs=np.zeros((2, 2), np.float32),
                        models=["nested"])
    np.testing.assert_allclose(got.scores, np.log(2.0), rtol=1e-6)


def _builds_running() -> list[int]:
    """Session-build children running now; each is remembered so ``_no_build_left`` can
    check that it really ended."""
    pids = running_builds()
    _seen_builds.update(pids)
    return pids


_seen_builds: set[int] = set()


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _no_build_left() -> None:
    """Every session-build child was stopped (a generous few seconds for the kill)."""
    stop = time.monotonic() + 30
    while running_builds() or any(_alive(pid) for pid in _seen_builds):
        assert time.monotonic() < stop, "a session-build child outlived its registration"
        time.sleep(0.1)
    _seen_builds.clear()


def _watch_builds(seconds: float) -> None:
    """Note the build children started within ``seconds`` (they start when the upload ends)."""
    stop = time.monotonic() + seconds
    while not _builds_running() and time.monotonic() < stop:
        time.sleep(0.05)


def test_folding_no_static_check_sees_stops_at_the_load_limit(server_factory):
    server = server_factory(model_load_seconds=2.0)
    with Client(f"127.0.0.1:{server.port}", timeout=120) as client:
        started = time.monotonic()
        with ThreadPoolExecutor(1) as pool:
            call = pool.submit(rejected, client, hidden_folding_bomb())
            _watch_builds(30)
            reason, field, message = call.result()
        elapsed = time.monotonic() - started
        assert _seen_builds, "no session-build child was seen"
        assert (reason, field) == ("MODEL_TOO_COSTLY", "chunk")
        assert "--model-load-seconds" in message
        assert elapsed < 60, elapsed  # the limit is 2 s; folding would take hours
        _no_build_left()
        assert _tmp_files(server) == []


@pytest.mark.parametrize("limit", ["client deadline", "server ceiling"])
def test_a_deadline_ends_registration_and_nothing_is_stored(server_factory, limit):
    ceiling = limit == "server ceiling"
    # 6 s: time for the upload and the static checks on a loaded machine, then the build.
    server = server_factory(max_deadline_seconds=6.0) if ceiling else server_factory()
    data = hidden_folding_bomb().SerializeToString()
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel, \
            Client(f"127.0.0.1:{server.port}", timeout=120) as client:
        stub = model_pb2_grpc.ModelServiceStub(channel)
        started = time.monotonic()
        call = stub.RegisterModel.future(iter([_header(data), *_chunks(data, 4096)]),
                                         timeout=120 if ceiling else 6)
        _watch_builds(6)
        with pytest.raises(grpc.RpcError) as info:
            call.result()
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, info.value
        assert time.monotonic() - started < 60  # 6 s; the build alone would take hours
        assert _seen_builds, "the build never started: the deadline test tested nothing"
        _no_build_left()  # the server stopped the build, not only the client its wait
        stop = time.monotonic() + 30
        while _tmp_files(server):  # the handler has returned once its temp file is gone
            assert time.monotonic() < stop, "the registration kept running past its deadline"
            time.sleep(0.1)
        assert client.list_models() == []
        if not ceiling:  # (under a 6 s ceiling a loaded machine could fail the control)
            # The id is free: a well-formed model registers under it.
            client.register_model("m", mlp(np.random.default_rng(3)).data,
                                  {"logits": "logits"})


def test_cheap_calls_are_answered_while_builds_run_and_excess_builds_are_refused(server_factory):
    server = server_factory(model_load_seconds=15.0)  # room for the calls made meanwhile
    data = hidden_folding_bomb().SerializeToString()
    address = f"127.0.0.1:{server.port}"
    with Client(address, timeout=60) as client, ThreadPoolExecutor(MAX_PROBES) as pool:
        builds = [pool.submit(rejected, client, data, model_id=f"bomb{i}")
                  for i in range(MAX_PROBES)]
        stop = time.monotonic() + 30
        while len(_builds_running()) < MAX_PROBES:
            assert time.monotonic() < stop, "the builds did not start"
            time.sleep(0.05)
        # All build slots taken: another registration is refused at once, retryably.
        reason, _, message = rejected(client, data, grpc.StatusCode.RESOURCE_EXHAUSTED,
                                      model_id="one-more")
        assert reason == "MODEL_LOADS_BUSY" and "retry" in message
        with grpc.insecure_channel(address) as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        assert client.list_models() == []
        assert len(_builds_running()) == MAX_PROBES  # answered while both builds still ran
        for build in builds:
            assert build.result()[0] == "MODEL_TOO_COSTLY"
    _no_build_left()
