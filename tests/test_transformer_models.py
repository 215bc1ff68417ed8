"""Models with several graph inputs: a transformer text classifier exported by PyTorch.

The model is built here from ``torch.nn`` with random weights (token and position
embeddings, two encoder layers with dropout, CLS pooling, a linear head) and exported
with ``input_ids`` and ``attention_mask`` as graph inputs, dynamic in items and sequence
length, its dropout kept. The pool holds the padded token ids and masks as
``model_inputs.input_ids`` and ``model_inputs.attention_mask``.

What the server computes from raw token ids must equal the same strategy fed, inline,
the outputs of onnxruntime run here in-process on the exported file: the deterministic
pass through a plain onnxruntime session (checked against PyTorch itself), the MC passes
through the sampling graph with onnxruntime's generator reset, as documented, to the seed
of each (seed, pass, batch).
"""

from __future__ import annotations

import io
import threading

import grpc
import numpy as np
import onnx
import pytest
import reference as ref
import seeding
from test_onnx_safety import reason_of

from assay.client import AssayError
from assay.server.models import inference as model_inference
from assay.server.models.inference import ModelRun, ModelRuntime
from assay.server.models.mc_dropout import (
    DISABLED_OPTIMIZERS,
    pass_seed,
    sampling_dropout,
    seeded,
)

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

VOCAB, WIDTH, HEADS, CLASSES, MAX_LEN = 50, 32, 4, 4, 24
N, BATCH, MC, SEED = 40, 16, 6, 11
OUTPUTS = {"logits": "logits", "embeddings": "cls"}


class EncoderLayer(torch.nn.Module):
    """Post-norm self-attention and feed-forward, with dropout on the attention weights,
    after the attention, inside and after the feed-forward.

    Written out rather than ``nn.TransformerEncoderLayer``, whose traced export fixes the
    sequence length it was traced with."""

    def __init__(self, p: float):
        super().__init__()
        self.qkv = torch.nn.Linear(WIDTH, 3 * WIDTH)
        self.out = torch.nn.Linear(WIDTH, WIDTH)
        self.ff = torch.nn.Sequential(torch.nn.Linear(WIDTH, 2 * WIDTH), torch.nn.GELU(),
                                      torch.nn.Dropout(p), torch.nn.Linear(2 * WIDTH, WIDTH))
        self.norm1, self.norm2 = torch.nn.LayerNorm(WIDTH), torch.nn.LayerNorm(WIDTH)
        self.drop_attn, self.drop1, self.drop2 = (torch.nn.Dropout(p) for _ in range(3))

    def forward(self, x, bias):
        b = x.shape[0]
        q, k, v = self.qkv(x).reshape(b, -1, 3, HEADS, WIDTH // HEADS).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-1, -2) / (WIDTH // HEADS) ** 0.5 + bias, dim=-1)
        y = (self.drop_attn(att) @ v).transpose(1, 2).reshape(b, -1, WIDTH)
        x = self.norm1(x + self.drop1(self.out(y)))
        return self.norm2(x + self.drop2(self.ff(x)))


class TextClassifier(torch.nn.Module):
    """Token ids and a padding mask in; class logits and the CLS embedding out."""

    def __init__(self, p: float = 0.2):
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, WIDTH, padding_idx=0)
        self.pos = torch.nn.Embedding(MAX_LEN, WIDTH)
        self.layers = torch.nn.ModuleList([EncoderLayer(p), EncoderLayer(p)])
        self.head = torch.nn.Linear(WIDTH, CLASSES)

    def forward(self, input_ids, attention_mask):
        positions = torch.cumsum(torch.ones_like(input_ids), dim=1) - 1
        x = self.embed(input_ids) + self.pos(positions)
        bias = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -1e4  # padding: no weight
        for layer in self.layers:
            x = layer(x, bias)
        cls = x[:, 0]
        return self.head(cls), cls


def export(net: TextClassifier) -> bytes:
    """The model as a trainer exports it for MC dropout: eval mode, dropout modules kept."""
    net.eval()
    for m in net.modules():
        if isinstance(m, torch.nn.Dropout):
            m.train()
    ids = torch.ones(2, 5, dtype=torch.int64)
    buffer = io.BytesIO()
    torch.onnx.export(
        net, (ids, torch.ones_like(ids)), buffer, dynamo=False, opset_version=17,
        input_names=["input_ids", "attention_mask"], output_names=["logits", "cls"],
        dynamic_axes={"input_ids": {0: "N", 1: "L"}, "attention_mask": {0: "N", 1: "L"},
                      "logits": {0: "N"}, "cls": {0: "N"}},
        training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False)
    net.eval()
    return buffer.getvalue()


@pytest.fixture(scope="module")
def transformer():
    seed = seeding.seed_for("transformer-weights")
    torch.manual_seed(seed)
    net = TextClassifier()
    return net, export(net)


@pytest.fixture
def rng():
    return seeding.rng()


def tokens(rng: np.random.Generator, n: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Padded token ids (a CLS token 1 first, 0 for padding) and their 0/1 mask, of
    varied true lengths, with two exact duplicates so ties occur."""
    lengths = rng.integers(2, length + 1, size=n)
    ids = rng.integers(2, VOCAB, size=(n, length))
    ids[:, 0] = 1
    mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int64)
    ids = ids * mask
    ids[n - 1], mask[n - 1] = ids[0], mask[0]
    return ids.astype(np.int64), mask


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return (z / z.sum(axis=-1, keepdims=True)).astype(np.float32)


def in_process(data: bytes, ids: np.ndarray, mask: np.ndarray, *, mc: int = 0,
               seed: int = 0) -> dict[str, np.ndarray]:
    """onnxruntime here, in the server's batches: probs and the CLS embeddings (mc = 0),
    or MC samples [mc, N, C] through the sampling graph, each run seeded as documented."""
    if mc:
        model = sampling_dropout(onnx.load_from_string(data)).SerializeToString()
        session = ort.InferenceSession(model, providers=["CPUExecutionProvider"],
                                       disabled_optimizers=list(DISABLED_OPTIMIZERS))

        def run(p: int, s: int) -> np.ndarray:
            with seeded(pass_seed(seed, p, s)):  # the generator reset as documented
                return session.run(["logits"], {"input_ids": ids[s:s + BATCH],
                                                "attention_mask": mask[s:s + BATCH]})[0]

        samples = np.stack([np.concatenate([run(p, s) for s in range(0, len(ids), BATCH)])
                            for p in range(mc)])
        return {"samples": softmax(samples)}
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    parts = [session.run(["logits", "cls"], {"input_ids": ids[s:s + BATCH],
                                              "attention_mask": mask[s:s + BATCH]})
             for s in range(0, len(ids), BATCH)]
    return {"probs": softmax(np.concatenate([p[0] for p in parts])),
            "embeddings": np.concatenate([p[1] for p in parts])}


def test_the_in_process_reference_is_the_torch_model(transformer, rng):
    net, data = transformer
    ids, mask = tokens(rng, 12, 16)
    with torch.no_grad():
        logits, cls = net(torch.from_numpy(ids), torch.from_numpy(mask))
    got = in_process(data, ids, mask)
    # float32 through two layers of width 32: agreement to ~1e-5 relative.
    np.testing.assert_allclose(got["embeddings"], cls.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got["probs"], torch.softmax(logits, 1).numpy(), atol=1e-5)
    # Padding changes nothing: the same text padded further gives the same outputs.
    wide_ids = np.pad(ids, ((0, 0), (0, 5)))
    wide = in_process(data, wide_ids, np.pad(mask, ((0, 0), (0, 5))))
    np.testing.assert_allclose(wide["probs"], got["probs"], atol=1e-5)


@pytest.mark.parametrize("strategy, mc", [("entropy", 0), ("bald", MC), ("batchbald", MC),
                                          ("badge", 0), ("cal", 0)])
def test_five_strategies_from_token_ids_equal_in_process(client, transformer, rng,
                                                         strategy, mc):
    _, data = transformer
    model = client.register_model("tx", data, OUTPUTS)
    assert [(i.name, i.dtype, i.array) for i in model.inputs] == [
        ("input_ids", "DATA_TYPE_INT64", "model_inputs.input_ids"),
        ("attention_mask", "DATA_TYPE_INT64", "model_inputs.attention_mask")]
    assert model.inputs[0].shape == (-1, -1) and model.dropout_count == 8
    ids, mask = tokens(rng, N, 20)
    client.create_pool("texts")
    # The mask goes up as int32: it widens to the graph's int64 without loss.
    client.append("texts", model_inputs={"input_ids": ids, "attention_mask": mask.astype(np.int32)})
    labeled = np.sort(rng.choice(N, size=6, replace=False))
    client.label("texts", labeled, rng.integers(0, CLASSES, size=6))
    budget = 5
    got = client.select(strategy, budget, pool="texts", models=["tx"], mc_samples=mc,
                        batch_size=BATCH, seed=SEED)
    arrays = in_process(data, ids, mask, mc=mc, seed=SEED)
    if mc:
        arrays["probs"] = arrays["samples"].mean(axis=0, dtype=np.float64).astype(np.float32)
    if strategy == "cal":
        arrays["labeled_embeddings"] = arrays["embeddings"][labeled]
        arrays["labeled_probs"] = arrays["probs"][labeled]
    want = client.select(strategy, budget, seed=SEED, exclude=labeled, **arrays)
    np.testing.assert_array_equal(got.indices, want.indices)
    np.testing.assert_allclose(got.scores, want.scores, rtol=1e-6, atol=1e-9)
    assert not set(got.indices.tolist()) & set(labeled.tolist())
    assert got.pool_version == client.get_pool("texts").version
    preferred = ("CUDAExecutionProvider" if "CUDAExecutionProvider"
                 in ort.get_available_providers() else "CPUExecutionProvider")
    assert got.execution_providers == (preferred,)
    if strategy == "entropy":  # and against a plain NumPy reference of the score
        candidates = np.setdiff1d(np.arange(N), labeled)
        scores = ref.entropy(arrays["probs"].astype(np.float64))
        np.testing.assert_array_equal(got.indices, ref.top_b(scores, budget, candidates))


def test_inline_named_inputs_and_explicit_bindings(client, transformer, rng):
    _, data = transformer
    model = client.register_model(
        "tx", data, OUTPUTS,
        inputs={"attention_mask": "model_inputs.mask", "input_ids": "model_inputs.tokens"})
    assert {i.name: i.array for i in model.inputs} == {
        "input_ids": "model_inputs.tokens", "attention_mask": "model_inputs.mask"}
    assert client.get_model("tx").inputs == model.inputs
    ids, mask = tokens(rng, 24, 12)
    got = client.select("margin", 4, model_inputs={"tokens": ids, "mask": mask},
                        models=["tx"], batch_size=BATCH)
    probs = in_process(data, ids, mask)["probs"]
    want = client.select("margin", 4, probs=probs)
    np.testing.assert_array_equal(got.indices, want.indices)


def _error(call, *args, **kwargs) -> tuple[grpc.StatusCode, str, str, str]:
    with pytest.raises(AssayError) as info:
        call(*args, **kwargs)
    return (info.value.code, *reason_of(info.value), info.value.message)


def test_bindings_and_inputs_are_checked(client, transformer, rng):
    _, data = transformer
    bad = grpc.StatusCode.INVALID_ARGUMENT
    code, reason, field, message = _error(
        client.register_model, "tx", data, OUTPUTS, inputs={"token_ids": "model_inputs.ids"})
    assert (code, reason, field) == (bad, "INPUT_NOT_FOUND", "header.inputs[0].input_name")
    assert "'input_ids'" in message and "'attention_mask'" in message
    code, _, field, _ = _error(client.register_model, "tx", data, OUTPUTS,
                               inputs={"input_ids": "embeddings", "attention_mask": "m"})
    assert (code, field) == (bad, "header.inputs[0].array")
    code, reason, _, message = _error(client.register_model, "tx", data, OUTPUTS,
                                      inputs={"input_ids": "model_inputs.ids"})
    assert (code, reason) == (bad, "MODEL_INPUTS") and "attention_mask" in message
    assert client.list_models() == []

    client.register_model("tx", data, OUTPUTS)
    ids, mask = tokens(rng, 10, 8)
    code, reason, field, message = _error(client.select, "entropy", 2,
                                          model_inputs={"input_ids": ids}, models=["tx"])
    assert (code, reason, field) == (bad, "MISSING_INPUT", "inputs.model_inputs.attention_mask")
    code, reason, field, _ = _error(
        client.select, "entropy", 2, models=["tx"],
        model_inputs={"input_ids": ids.astype(np.float32), "attention_mask": mask})
    assert (code, reason, field) == (bad, "INPUT_MISMATCH", "inputs.model_inputs.input_ids")
    code, reason, _, message = _error(client.select, "entropy", 2, models=["tx"],
                                      model_inputs={"input_ids": ids, "attention_mask": mask[:9]})
    assert (code, reason) == (bad, "SHAPE_MISMATCH") and "9" in message and "10" in message
    code, _, _, message = _error(client.select, "entropy", 2, models=["tx"],
                                 model_inputs={"input_ids": ids, "../mask": mask})
    assert code == bad and "../mask" in message

    client.create_pool("p")
    code, _, _, _ = _error(client.append, "p",
                           model_inputs={"input_ids": ids, "attention_mask": mask[:9]})
    assert code == bad
    with pytest.raises(ValueError, match="a/b"):  # not a name a pool can store
        client.append("p", model_inputs={"a/b": ids})
    assert client.get_pool("p").item_count == 0


def test_one_mc_session_serves_every_request_with_replayable_masks(server, transformer, rng,
                                                                  monkeypatch):
    """MC-dropout sessions are built once per registration and shared, yet the same seed
    gives the same samples whatever ran before or at the same time."""
    from assay.client import Client

    _, data = transformer
    with Client(f"127.0.0.1:{server.port}") as c:
        c.register_model("tx", data, OUTPUTS)
    builds = []
    real = model_inference.make_session
    monkeypatch.setattr(model_inference, "make_session",
                        lambda *a, **k: builds.append(1) or real(*a, **k))
    runtime = ModelRuntime(server.models, threads=1)
    ids, mask = tokens(rng, 20, 10)
    inputs = {"model_inputs.input_ids": ids, "model_inputs.attention_mask": mask}

    def samples(seed: int) -> np.ndarray:
        run = ModelRun(["tx"], 3, BATCH, seed)
        return runtime.arrays(run, inputs, needed={"samples"}).arrays["samples"]

    first = samples(1)
    other = samples(2)
    results: dict[int, np.ndarray] = {}
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, samples(1 + i % 2)))
               for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1
    assert not np.array_equal(first, other)
    for i, got in results.items():
        np.testing.assert_array_equal(got, first if i % 2 == 0 else other)
    np.testing.assert_array_equal(first, in_process(data, ids, mask, mc=3, seed=1)["samples"])
