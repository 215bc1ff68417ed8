"""MC-dropout sessions: one keyed session shared by every request against one session
built per request.

Run: ``python bench/mc_sessions.py [--requests R] [--passes S]``.

Per request, S MC passes over one batch, two ways, interleaved request by request so
both see the same load:

- ``per-request`` (the reference): ``enable_mc_dropout`` on the parsed model with the
  request's seed, serialize, ``onnx_runner.make_session`` with ``DISABLED_OPTIMIZERS``,
  then S runs (onnxruntime's Dropout kernel draws the masks);
- ``keyed``: one ``keyed_mc_dropout`` session built once before the requests, then the
  same S runs, each fed fresh ``mc_keys(seed, pass, 0, K)`` (the masks come from the
  Squares generator inside the graph).

Models: (i) ``mlp``, the demo's network (64 features -> 64 ReLU hidden -> Dropout(0.3) ->
10 logits, an ONNX graph written from weights, like ``server/wiring/demo.py``), on the
demo's pool of 1,257 digits in one batch; (ii) ``transformer``, a ``torch.nn`` encoder
classifier with random weights (embedding of 1,000 tokens, d = 64, 2
``TransformerEncoderLayer`` of 4 heads, feed-forward 128, dropout 0.1, CLS pooling,
linear head to 4 classes) exported by ``torch.onnx.export`` with ``input_ids`` and
``attention_mask`` and its Dropout nodes kept, on 64 sequences of up to 48 tokens with
padding; (iii) ``transformer-30k``, the same with a BERT-sized vocabulary of 30,522
tokens, d = 128 and feed-forward 512 (4.3 M weights, 17 MB). Reported: the session build
each request pays (the seconds saved), the request's total both ways, and passes per
second of the runs alone (the run-time cost of the in-graph generator against
onnxruntime's Dropout), best and median of R requests; from the medians, the
milliseconds the generator adds to a pass and the number of passes per request at which
that added cost equals the build saved ("break-even").
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import time
import warnings

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from assay.server.models.mc_dropout import (
    DISABLED_OPTIMIZERS,
    MC_KEYS,
    dropout_count,
    enable_mc_dropout,
    keyed_mc_dropout,
    mc_keys,
)
from assay.server.models.onnx_runner import default_threads, make_session
from assay.server.models.onnx_safety import parse_model


def mlp(rng: np.random.Generator) -> tuple[bytes, dict[str, np.ndarray]]:
    """The demo's MLP graph with random weights, and a batch of the demo's pool size."""
    features, hidden, classes = 64, 64, 10
    w = {"W1": rng.normal(size=(features, hidden)).astype(np.float32) / 8,
         "b1": np.zeros(hidden, np.float32),
         "W2": rng.normal(size=(hidden, classes)).astype(np.float32) / 8,
         "b2": np.zeros(classes, np.float32), "ratio": np.array(0.3, np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["z1"]),
             helper.make_node("Add", ["z1", "b1"], ["a1"]),
             helper.make_node("Relu", ["a1"], ["features"]),
             helper.make_node("Dropout", ["features", "ratio"], ["dropped"]),
             helper.make_node("MatMul", ["dropped", "W2"], ["z2"]),
             helper.make_node("Add", ["z2", "b2"], ["logits"])]
    graph = helper.make_graph(
        nodes, "demo_mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        [numpy_helper.from_array(v, k) for k, v in w.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    x = rng.uniform(0, 16, size=(1257, features)).astype(np.float32)
    return model.SerializeToString(), {"x": x}


def transformer(rng: np.random.Generator, vocab: int = 1000, d: int = 64,
                ff: int = 128) -> tuple[bytes, dict[str, np.ndarray]]:
    """A small encoder classifier exported by torch with its dropout kept."""
    import torch

    class Classifier(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(vocab, d)
            layer = torch.nn.TransformerEncoderLayer(d, 4, ff, dropout=0.1, batch_first=True)
            self.encoder = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
            self.head = torch.nn.Linear(d, 4)

        def forward(self, input_ids, attention_mask):
            h = self.encoder(self.embed(input_ids), src_key_padding_mask=attention_mask == 0)
            return self.head(h[:, 0])

    torch.manual_seed(int(rng.integers(2**31)))
    net = Classifier().eval()
    for module in net.modules():
        if isinstance(module, torch.nn.Dropout):
            module.train()
    n, length = 64, 48
    ids = rng.integers(1, vocab, size=(n, length))
    lengths = rng.integers(8, length + 1, size=n)
    mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int64)
    ids = ids * mask
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.from_numpy(ids[:2]), torch.from_numpy(mask[:2])), buffer,
                          dynamo=False, opset_version=17,
                          input_names=["input_ids", "attention_mask"], output_names=["logits"],
                          dynamic_axes={"input_ids": {0: "N", 1: "L"},
                                        "attention_mask": {0: "N", 1: "L"},
                                        "logits": {0: "N"}},
                          training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False)
    return buffer.getvalue(), {"input_ids": ids, "attention_mask": mask}


def per_request(data: bytes, feed: dict, passes: int, seed: int, threads: int):
    """The reference: a session built for the request, onnxruntime's Dropout."""
    started = time.perf_counter()
    rewritten = enable_mc_dropout(parse_model(data), seed).SerializeToString()
    rewrite = time.perf_counter() - started
    session = make_session(rewritten, threads=threads, disabled_optimizers=DISABLED_OPTIMIZERS)
    built = time.perf_counter()
    outs = [session.run(None, feed)[0] for _ in range(passes)]
    return rewrite, built - started, time.perf_counter() - built, outs


def keyed(session: ort.InferenceSession, count: int, feed: dict, passes: int, seed: int):
    """One shared session; the keys of each pass are fed with it."""
    started = time.perf_counter()
    outs = [session.run(None, {**feed, MC_KEYS: mc_keys(seed, p, 0, count)})[0]
            for p in range(passes)]
    return time.perf_counter() - started, outs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--requests", type=int, default=7)
    ap.add_argument("--passes", type=int, default=16)
    ap.add_argument("--threads", type=int, default=default_threads(),
                    help="intra-op threads per session (default: the server's)")
    args = ap.parse_args()
    threads = args.threads
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{threads} intra-op threads per session, onnxruntime {ort.__version__} "
          f"({ort.get_device()}); load average {os.getloadavg()[0]:.1f} at start")
    print(f"{args.requests} requests of {args.passes} MC passes each way\n")
    print("| model | graph nodes / Dropouts | keyed build once (s) | per-request build (s) "
          "| of which parse + rewrite + serialize (s) "
          "| request per-request / keyed (s) | per-request / keyed | passes/s ORT Dropout "
          "| passes/s keyed | keyed / ORT | generator ms / pass | break-even passes | load |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    models = (("mlp", mlp), ("transformer", transformer),
              ("transformer-30k", lambda rng: transformer(rng, 30522, 128, 512)))
    for name, make in models:
        data, feed = make(np.random.default_rng(0))
        model = parse_model(data)
        count = dropout_count(model)
        started = time.perf_counter()
        rewritten = keyed_mc_dropout(model)
        shared = make_session(rewritten.SerializeToString(), threads=threads)
        once = time.perf_counter() - started
        per_request(data, feed, 1, 0, threads)  # warm both paths outside the timing
        keyed(shared, count, feed, 1, 0)
        rewrites, builds, old_runs, new_runs, old_totals, new_totals = [], [], [], [], [], []
        for request in range(args.requests):
            seed = 1000 + request
            rewrite, build, run, old = per_request(data, feed, args.passes, seed, threads)
            new_run, new = keyed(shared, count, feed, args.passes, seed)
            if not np.isfinite(np.stack(old)).all() or not np.isfinite(np.stack(new)).all():
                raise SystemExit(f"{name}: non-finite outputs")
            rewrites.append(rewrite)
            builds.append(build)
            old_runs.append(run)
            new_runs.append(new_run)
            old_totals.append(build + run)
            new_totals.append(new_run)

        def bm(values, fmt="{:.3f}"):
            return f"{fmt.format(min(values))} / {fmt.format(statistics.median(values))}"

        rate_old = [args.passes / t for t in old_runs]
        rate_new = [args.passes / t for t in new_runs]
        ratio = statistics.median(old_totals) / statistics.median(new_totals)
        speed = statistics.median(rate_new) / statistics.median(rate_old)
        # what the in-graph generator adds to a pass, and the passes whose added cost
        # equals the build a request saves
        extra = 1 / statistics.median(rate_new) - 1 / statistics.median(rate_old)
        even = f"{statistics.median(builds) / extra:.1f}" if extra > 0 else "never"
        print(f"| {name} | {len(model.graph.node)} / {count} | {once:.3f} | {bm(builds)} | "
              f"{bm(rewrites)} | "
              f"{statistics.median(old_totals):.3f} / {statistics.median(new_totals):.3f} | "
              f"{ratio:.2f} x | {max(rate_old):.0f} / {statistics.median(rate_old):.0f} | "
              f"{max(rate_new):.0f} / {statistics.median(rate_new):.0f} | {speed:.2f} x | "
              f"{extra * 1e3:.2f} | {even} | {os.getloadavg()[0]:.1f} |", flush=True)


if __name__ == "__main__":
    main()
