"""MC-dropout sessions: one session per model shared by every request, each run seeded,
against one session built per request.

Run: ``python bench/mc_sessions.py [--requests R] [--passes S] [--threads MODE ...]``.

Per request, S MC passes over one batch, two ways, interleaved request by request so
both see the same load:

- ``per-request`` (the reference, the earlier scheme): parse the model, force its
  Dropout nodes to sample with ``seed`` attributes drawn from the request's seed
  (``seeded_rewrite`` below), serialize, ``onnx_runner.make_session`` with
  ``DISABLED_OPTIMIZERS``, then S runs (each node's generator advances run by run);
- ``shared``: one ``sampling_dropout`` session built once before the requests, then the
  same S runs, each inside ``seeded(pass_seed(seed, pass, 0))`` (onnxruntime's default
  generator reset under the process-wide lock, as ``ModelRuntime`` runs them).

Both draw with onnxruntime's own Dropout kernel; what differs is the build each request
pays and, per run, the lock and ``set_seed``. Thread modes (``--threads``, several
allowed): ``N`` gives both sessions N intra-op threads; ``server`` gives them what the
server does: a per-request session would get ``default_threads()`` (half the cores, up
to 4), the shared MC session gets ``default_threads(whole=True)`` (every core, up to 8),
since MC runs take turns under the lock.

Models: (i) ``mlp``, the demo's network (64 features -> 64 ReLU hidden -> Dropout(0.3) ->
10 logits, an ONNX graph written from weights, like ``server/wiring/demo.py``), on the
demo's pool of 1,257 digits in one batch; (ii) ``transformer``, a ``torch.nn`` encoder
classifier with random weights (embedding of 1,000 tokens, d = 64, 2
``TransformerEncoderLayer`` of 4 heads, feed-forward 128, dropout 0.1, CLS pooling,
linear head to 4 classes) exported by ``torch.onnx.export`` with ``input_ids`` and
``attention_mask`` and its Dropout nodes kept, on 64 sequences of up to 48 tokens with
padding; (iii) ``transformer-30k``, the same with a BERT-sized vocabulary of 30,522
tokens, d = 128 and feed-forward 512 (4.3 M weights, 17 MB). Reported: the session build
each request saves, passes per second of the runs alone both ways, the whole request both
ways and their ratio, best and median of R requests, the load average before and after
each model, and the cost of ``seeded`` itself per run.
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
import onnx
import onnxruntime as ort
from onnx import helper

from assay.server.models.mc_dropout import (
    DISABLED_OPTIMIZERS,
    pass_seed,
    sampling_dropout,
    seeded,
)
from assay.server.models.onnx_runner import default_threads, make_session
from assay.server.models.onnx_safety import iter_graphs, parse_model
from assay.server.wiring.demo import mlp_onnx


def mlp(rng: np.random.Generator) -> tuple[bytes, dict[str, np.ndarray]]:
    """The demo's MLP graph (``demo.mlp_onnx``) with random weights, and a batch of the
    demo's pool size."""
    features, hidden, classes = 64, 64, 10
    data = mlp_onnx(rng.normal(size=(features, hidden)).astype(np.float32) / 8,
                    np.zeros(hidden, np.float32),
                    rng.normal(size=(hidden, classes)).astype(np.float32) / 8,
                    np.zeros(classes, np.float32))
    x = rng.uniform(0, 16, size=(1257, features)).astype(np.float32)
    return data, {"x": x}


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


def seeded_rewrite(model: onnx.ModelProto, seed: int) -> onnx.ModelProto:
    """The per-request reference: Dropout nodes forced to sample, each with a ``seed``
    attribute drawn from the request's seed (so the session serves that request only)."""
    out = sampling_dropout(model)
    nodes = [n for g in iter_graphs(out.graph) for n in g.node
             if n.op_type == "Dropout" and n.domain in ("", "ai.onnx")]
    seeds = np.random.default_rng([seed, 0x6D63]).integers(1, 2**31 - 1, size=len(nodes))
    for node, node_seed in zip(nodes, seeds, strict=True):
        node.attribute.append(helper.make_attribute("seed", int(node_seed)))
    return out


def per_request(data: bytes, feed: dict, passes: int, seed: int, threads: int):
    """A session built for the request, then its runs: (build s, runs s, outputs)."""
    started = time.perf_counter()
    rewritten = seeded_rewrite(parse_model(data), seed).SerializeToString()
    session = make_session(rewritten, threads=threads, disabled_optimizers=DISABLED_OPTIMIZERS)
    built = time.perf_counter()
    outs = [session.run(None, feed)[0] for _ in range(passes)]
    return built - started, time.perf_counter() - built, outs


def shared_runs(session: ort.InferenceSession, feed: dict, passes: int, seed: int):
    """The shared session's runs, each under the generator reset to its pass seed."""
    started = time.perf_counter()
    outs = []
    for p in range(passes):
        with seeded(pass_seed(seed, p, 0)):
            outs.append(session.run(None, feed)[0])
    return time.perf_counter() - started, outs


def thread_counts(mode: str) -> tuple[int, int]:
    """(per-request threads, shared threads) of a ``--threads`` mode."""
    if mode == "server":
        return default_threads(), default_threads(whole=True)
    return int(mode), int(mode)


MODELS = (("mlp", mlp), ("transformer", transformer),
          ("transformer-30k", lambda rng: transformer(rng, 30522, 128, 512)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--requests", type=int, default=5)
    ap.add_argument("--passes", type=int, default=16)
    ap.add_argument("--threads", nargs="+", default=["server"],
                    help="thread modes: N (both ways) or server (the server's defaults)")
    ap.add_argument("--models", nargs="+", default=[name for name, _ in MODELS])
    args = ap.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"onnxruntime {ort.__version__} ({ort.get_device()}), Python "
          f"{platform.python_version()}; default_threads() = {default_threads()}, "
          f"default_threads(whole=True) = {default_threads(whole=True)}")
    started, count = time.perf_counter(), 20_000
    for k in range(count):
        with seeded(k + 1):
            pass
    print(f"seeded() alone (lock, set_seed, release), uncontended: "
          f"{(time.perf_counter() - started) / count * 1e6:.1f} us per run")
    print(f"{args.requests} requests of {args.passes} MC passes each way; best / median\n")
    print("| model | threads per-request / shared | shared build, once (s) "
          "| build saved per request (s) | passes/s per-request | passes/s shared "
          "| request per-request (s) | request shared (s) | per-request / shared (medians) "
          "| load before / after |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    built = {name: make(np.random.default_rng(0)) for name, make in MODELS
             if name in args.models}
    for mode in args.threads:
        old_threads, new_threads = thread_counts(mode)
        for name, (data, feed) in built.items():
            load = os.getloadavg()[0]
            started = time.perf_counter()
            shared = make_session(sampling_dropout(parse_model(data)).SerializeToString(),
                                  threads=new_threads, disabled_optimizers=DISABLED_OPTIMIZERS)
            once = time.perf_counter() - started
            per_request(data, feed, 1, 0, old_threads)  # warm both paths outside the timing
            shared_runs(shared, feed, 1, 0)
            builds, old_runs, new_runs, old_totals = [], [], [], []
            for request in range(args.requests):
                seed = 1000 + request
                build, run, old = per_request(data, feed, args.passes, seed, old_threads)
                new_run, new = shared_runs(shared, feed, args.passes, seed)
                if not np.isfinite(np.stack(old)).all() or not np.isfinite(np.stack(new)).all():
                    raise SystemExit(f"{name}: non-finite outputs")
                builds.append(build)
                old_runs.append(run)
                new_runs.append(new_run)
                old_totals.append(build + run)

            def bm(values, fmt="{:.3f}", best=min):
                return f"{fmt.format(best(values))} / {fmt.format(statistics.median(values))}"

            rate_old = [args.passes / t for t in old_runs]
            rate_new = [args.passes / t for t in new_runs]
            ratio = statistics.median(old_totals) / statistics.median(new_runs)
            print(f"| {name} | {old_threads} / {new_threads} | {once:.3f} | {bm(builds)} | "
                  f"{bm(rate_old, '{:.0f}', max)} | {bm(rate_new, '{:.0f}', max)} | "
                  f"{bm(old_totals)} | {bm(new_runs)} | {ratio:.2f} x | "
                  f"{load:.1f} / {os.getloadavg()[0]:.1f} |", flush=True)


if __name__ == "__main__":
    main()
