"""``assay demo``: a real active-learning loop, end to end through the gRPC client.

The dataset is scikit-learn's digits (shipped inside the package, nothing is
downloaded). The model is a small MLP (one ReLU hidden layer) trained with
scikit-learn; each round its weights are written into an ONNX graph with a
Dropout node after the hidden layer and registered with Assay. The loop is the
one the README describes: one pool per run, created and appended once (the raw
features as ``model_inputs``); each round the trainer refits the MLP, replaces
the pool's ``probs`` and ``embeddings`` (the hidden layer) in one call, labels
the last picks, and Selects by pool id. Strategies that need posterior samples
(bald, batchbald, ...) get them from the registered model with MC dropout on the
server (``mc_samples``), or from a bootstrap committee of MLPs (``committee``).
Same seeds for every strategy, so the curves differ only by what was selected.
"""

from __future__ import annotations

import sys
import tempfile
import time
import warnings
from contextlib import ExitStack

import numpy as np

from assay.client import AssayError, Client

DEFAULT_STRATEGIES = ["random", "margin", "batchbald", "badge"]
HIDDEN = 64
DROPOUT = 0.3
MC_SAMPLES = 16
COMMITTEE = 5
# What the demo can build for a strategy: the roles below, nothing else.
FED_ROLES = {"probs", "embeddings", "samples", "labeled_embeddings", "labeled_probs",
             "labels", "model_inputs"}
_SAMPLE_ROLES = {"samples"}


class _Mlp:
    """An sklearn MLP's weights as float32 arrays over all ``n_classes`` columns."""

    def __init__(self, x, y, n_classes: int, seed: int):
        from sklearn.neural_network import MLPClassifier

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clf = MLPClassifier(hidden_layer_sizes=(HIDDEN,), alpha=1e-3, max_iter=300,
                                random_state=seed).fit(x, y)
        self.w1 = clf.coefs_[0].astype(np.float32)
        self.b1 = clf.intercepts_[0].astype(np.float32)
        w2, b2 = clf.coefs_[1], clf.intercepts_[1]
        if len(clf.classes_) == 2:  # one logistic unit: write it as two logits
            w2, b2 = np.hstack([np.zeros_like(w2), w2]), np.concatenate([[0.0], b2])
        self.w2 = np.zeros((HIDDEN, n_classes), np.float32)
        self.b2 = np.full(n_classes, -30.0, np.float32)  # classes never labeled: ~0
        self.w2[:, clf.classes_] = w2
        self.b2[clf.classes_] = b2

    def hidden(self, x):
        return np.maximum(x.astype(np.float32) @ self.w1 + self.b1, 0.0)

    def probs(self, x):
        z = self.hidden(x) @ self.w2 + self.b2
        z = np.exp(z - z.max(axis=1, keepdims=True))
        return (z / z.sum(axis=1, keepdims=True)).astype(np.float32)

    def onnx(self) -> bytes:
        """The same network as ONNX (``mlp_onnx``)."""
        return mlp_onnx(self.w1, self.b1, self.w2, self.b2)


def mlp_onnx(w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray,
             dropout: float = DROPOUT) -> bytes:
    """The demo's network as ONNX: x -> features (ReLU hidden) -> Dropout -> logits, with
    ``features`` an output too (the embeddings)."""
    from onnx import TensorProto, helper, numpy_helper

    w = {"W1": w1, "b1": b1, "W2": w2, "b2": b2, "ratio": np.array(dropout, np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["z1"]),
             helper.make_node("Add", ["z1", "b1"], ["a1"]),
             helper.make_node("Relu", ["a1"], ["features"]),
             helper.make_node("Dropout", ["features", "ratio"], ["dropped"]),
             helper.make_node("MatMul", ["dropped", "W2"], ["z2"]),
             helper.make_node("Add", ["z2", "b2"], ["logits"])]
    (c, hidden), d = w1.shape, w2.shape[1]
    graph = helper.make_graph(
        nodes, "demo_mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", d]),
         helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", hidden])],
        [numpy_helper.from_array(v, k) for k, v in w.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


def check_strategies(client: Client, strategies: list[str]) -> str | None:
    """None if the demo can feed every strategy, else the message that says why not."""
    known = {s.name: s for s in client.list_strategies()}
    for name in strategies:
        if name not in known:
            return (f"unknown strategy {name!r}; registered: {', '.join(sorted(known))}")
        missing = sorted(set(_required(known[name])) - FED_ROLES)
        if missing:
            return (f"the demo cannot feed strategy {name!r}: it needs {', '.join(missing)}, "
                    f"and the demo's model gives only probs, embeddings (hidden layer) and "
                    f"samples (MC dropout or a committee). Run it from your own loop with "
                    f"those arrays, or pick another strategy.")
    return None


def _required(strategy) -> tuple[str, ...]:
    for attr in ("required", "required_inputs"):
        if hasattr(strategy, attr):
            return tuple(getattr(strategy, attr))
    return ()


def _learning_curve(client: Client, strategy: str, needs_samples: bool, seed: int, data,
                    rounds: int, batch: int, initial: int, committee: bool, progress):
    x_pool, y_pool, x_test, y_test, n_classes = data
    rng = np.random.default_rng(seed)
    # Every class once, then random: the usual cold start, identical for every strategy.
    first = [rng.choice(np.flatnonzero(y_pool == k)) for k in range(n_classes)]
    rest = rng.choice(np.setdiff1d(np.arange(len(y_pool)), first), size=initial - n_classes,
                      replace=False)
    labeled = np.concatenate([first, rest]).astype(np.int64)
    pool_id = f"demo-{strategy.replace('_', '-')}-{seed}"
    model_id = f"{pool_id}-mlp"
    client.create_pool(pool_id)
    curve, new, registered = [], labeled, False
    try:
        client.append(pool_id, model_inputs=x_pool.astype(np.float32))
        for round_no in range(rounds + 1):
            mlp = _Mlp(x_pool[labeled], y_pool[labeled], n_classes, seed)
            accuracy = float((mlp.probs(x_test).argmax(axis=1) == y_test).mean())
            curve.append((len(labeled), accuracy))
            progress(strategy, seed, round_no, len(labeled), accuracy)
            if round_no == rounds:
                break
            arrays = {"probs": mlp.probs(x_pool), "embeddings": mlp.hidden(x_pool)}
            if needs_samples and committee:
                member_rng = np.random.default_rng([seed, round_no])
                arrays["samples"] = np.stack([
                    _Mlp(*_bootstrap(x_pool[labeled], y_pool[labeled], member_rng), n_classes,
                         seed + 1 + m).probs(x_pool) for m in range(COMMITTEE)])
            client.replace(pool_id, **arrays)
            client.label(pool_id, new, y_pool[new])
            kw = {}
            if needs_samples and not committee:
                if registered:  # the retrained model replaces the last round's
                    client.delete_model(model_id)
                registered = True
                client.register_model(model_id, mlp.onnx(),
                                      {"logits": "logits", "embeddings": "features"})
                kw = dict(models=[model_id], mc_samples=MC_SAMPLES)
            chosen = client.select(strategy, batch, pool=pool_id, seed=seed * 1000 + round_no,
                                   timeout=300, **kw)
            new = np.asarray(chosen.indices, np.int64)
            labeled = np.concatenate([labeled, new])
    finally:
        client.delete_pool(pool_id)
        if registered:
            client.delete_model(model_id)
    return curve


def _bootstrap(x, y, rng):
    """A resample within each class, so every member knows every labeled class."""
    pick = np.concatenate([rng.choice(np.flatnonzero(y == k), size=(y == k).sum())
                           for k in np.unique(y)])
    return x[pick], y[pick]


def run_demo(*, target: str | None = None, rounds: int = 10, batch: int = 20, seeds: int = 3,
             strategies: list[str] | None = None, plot: str | None = "assay-demo.png",
             initial: int = 20, targets: tuple[float, ...] = (0.90, 0.93, 0.95),
             committee: bool = False, pool_size: int | None = None) -> int:
    """Run the loop for each strategy and seed; print progress, the table, write the plot."""
    begun = time.perf_counter()
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    strategies = [s.strip() for s in (strategies or DEFAULT_STRATEGIES) if s.strip()]
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    x_pool, x_test, y_pool, y_test = train_test_split(x, y, test_size=0.3, random_state=0,
                                                      stratify=y)
    if pool_size:
        x_pool, y_pool = x_pool[:pool_size], y_pool[:pool_size]
    n_classes = 10
    if initial < n_classes:
        print(f"assay demo: --initial must be at least {n_classes} (one label per class)",
              file=sys.stderr)
        return 2
    data = (x_pool, y_pool, x_test, y_test, n_classes)
    with ExitStack() as stack:
        if target is None:
            from .app import start
            from .config import ServerConfig

            data_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="assay-demo-"))
            server = start(ServerConfig(address="127.0.0.1:0", data_dir=data_dir))
            stack.callback(server.stop, 0)
            target = f"127.0.0.1:{server.port}"
        client = stack.enter_context(Client(target))
        problem = check_strategies(client, strategies)
        if problem:
            print(f"assay demo: {problem}", file=sys.stderr)
            return 2
        needs = _needs_samples(client, strategies)
        ceiling = float((_Mlp(x_pool, y_pool, n_classes, 0).probs(x_test).argmax(axis=1)
                         == y_test).mean())
        samples_from = (f"a bootstrap committee of {COMMITTEE}" if committee
                        else f"MC dropout (p={DROPOUT}, {MC_SAMPLES} passes) on the server")
        print(f"Assay demo: digits ({len(y_pool)} pool / {len(y_test)} test items), "
              f"MLP {x.shape[1]}-{HIDDEN}-{n_classes} registered as ONNX, {initial} initial "
              f"labels, {rounds} rounds of {batch}, seeds 0..{seeds - 1}, samples from "
              f"{samples_from}, server {target}", flush=True)
        print(f"full-data accuracy (all {len(y_pool)} pool labels): {ceiling:.3f}", flush=True)
        total = len(strategies) * seeds * (rounds + 1)
        started = time.perf_counter()
        spent: dict[str, list[float]] = {s: [0.0, 0] for s in strategies}
        last = [started, 0]

        def progress(strategy, seed, round_no, n_labels, accuracy):
            # The time left: each strategy's own rate once it has one (batchbald's rounds
            # cost more than random's), else the mean rate so far.
            now = time.perf_counter()
            spent[strategy][0] += now - last[0]
            spent[strategy][1] += 1
            last[0], last[1] = now, last[1] + 1
            rates = {s: t / n for s, (t, n) in spent.items() if n}
            mean_rate = (now - started) / last[1]
            left = sum((seeds * (rounds + 1) - n) * rates.get(s, mean_rate)
                       for s, (_, n) in spent.items())
            print(f"[{last[1]:>{len(str(total))}}/{total}] {strategy} seed {seed} round "
                  f"{round_no}/{rounds}: {n_labels} labels, accuracy {accuracy:.3f}  "
                  f"({now - started:.0f} s elapsed, ~{left:.0f} s left)", flush=True)

        curves = {}
        for strategy in strategies:
            try:
                runs = [_learning_curve(client, strategy, strategy in needs, s, data, rounds,
                                        batch, initial, committee, progress)
                        for s in range(seeds)]
            except AssayError as err:  # a refusal is a message, not a traceback
                print(f"assay demo: {strategy} was refused: {err}", file=sys.stderr)
                return 2
            labels = [n for n, _ in runs[0]]
            curves[strategy] = (labels, np.array([[a for _, a in run] for run in runs]))
        elapsed = time.perf_counter() - started
    _print_table(curves, ceiling, targets)
    print(f"({elapsed:.1f} s in the rounds, {time.perf_counter() - begun:.1f} s in all)")
    if plot:
        _plot(curves, plot, seeds, ceiling, targets)
        print(f"learning curves written to {plot}")
    return 0


def _needs_samples(client: Client, strategies: list[str]) -> set[str]:
    known = {s.name: s for s in client.list_strategies()}
    # Optional samples too: suggestive_annotation's default uncertainty is their variance.
    return {n for n in strategies
            if (set(_required(known[n])) | set(getattr(known[n], "optional_inputs", ())))
            & _SAMPLE_ROLES}


def labels_to_reach(labels, mean, target: float) -> int | None:
    """The first label count whose mean accuracy reaches ``target``; None if none does."""
    hit = np.flatnonzero(np.asarray(mean) >= target)
    return int(labels[hit[0]]) if hit.size else None


def _reach(curves, target):
    """Per strategy: the labels it needs to reach ``target``, and how that compares
    with random ("not reached" where its mean curve never gets there)."""
    reach = {s: labels_to_reach(lab, acc.mean(axis=0), target) for s, (lab, acc) in curves.items()}
    base = reach.get("random")
    text = {}
    for s, n in reach.items():
        if n is None:
            text[s] = "not reached"
        elif s == "random" or "random" not in reach:
            text[s] = f"{n}"
        elif base is None:
            text[s] = f"{n} (random: not reached)"
        else:
            text[s] = f"{n} ({base - n:+d} vs random)"
    return reach, text


def _print_table(curves, ceiling, targets) -> None:
    names = list(curves)
    labels = curves[names[0]][0]
    print("\nmean test accuracy by number of labels")
    print("labels  " + "".join(f"{n:>16}" for n in names))
    for i, n in enumerate(labels):
        print(f"{n:>6}  " + "".join(f"{curves[s][1][:, i].mean():>16.3f}" for s in names))
    print("area   " + "".join(f"{curves[s][1].mean():>16.3f}" for s in names)
          + "   (mean over rounds and seeds)")
    print(f"full-data accuracy: {ceiling:.3f}")
    for target in targets:
        print(f"labels to reach {target:.2f} mean accuracy (labels saved vs random):")
        for s, t in _reach(curves, target)[1].items():
            print(f"  {s:<20} {t}")


def _plot(curves, path: str, seeds: int, ceiling: float, targets) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reach = {t: _reach(curves, t)[0] for t in targets}
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, (labels, acc) in curves.items():
        mean, std = acc.mean(axis=0), acc.std(axis=0)
        needs = ", ".join(f"{t:.2f}: {reach[t][name] or '-'}" for t in targets)
        ax.plot(labels, mean, marker="o", markersize=3, label=f"{name} (labels to {needs})")
        ax.fill_between(labels, mean - std, mean + std, alpha=0.15)
    ax.axhline(ceiling, color="black", linestyle="--", linewidth=1,
               label=f"all pool labels: {ceiling:.3f}")
    for t in targets:
        ax.axhline(t, color="grey", linestyle=":", linewidth=0.8)
    ax.set_xlabel("labeled items")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"Active learning on digits through Assay, ONNX MLP with MC dropout\n"
                 f"(mean ± sd over {seeds} seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
