"""``assay demo``: a real active-learning loop, end to end through the gRPC client.

The dataset is scikit-learn's digits (shipped inside the package, nothing is
downloaded). Each round the "trainer" fits a logistic regression on the labeled
items, uploads the pool's probabilities (and, for BALD, a bootstrap committee's)
to a pool on the server, marks the labeled items, asks Assay for the next batch,
and "labels" it from the ground truth. Same seeds for every strategy, so the
curves differ only by what was selected.
"""

from __future__ import annotations

import tempfile
import time
import warnings
from contextlib import ExitStack

import numpy as np

from assay.client import Client

COMMITTEE = 5


def _fit(x_lab, y_lab, n_classes, rng=None):
    """A logistic regression on the labeled items, as a function x -> probabilities [N, C].

    Classes absent from the labeled set get probability 0, so C stays fixed.
    """
    from sklearn.linear_model import LogisticRegression

    if rng is not None:
        # One committee member: a bootstrap resample within each class, so every member
        # knows every labeled class and members disagree about items, not about which
        # classes exist.
        pick = np.concatenate([rng.choice(np.flatnonzero(y_lab == k), size=(y_lab == k).sum())
                               for k in np.unique(y_lab)])
        x_lab, y_lab = x_lab[pick], y_lab[pick]
    classes = np.unique(y_lab)
    model = None
    if len(classes) > 1:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = LogisticRegression(max_iter=500, C=1.0).fit(x_lab, y_lab)

    def predict(x):
        probs = np.zeros((len(x), n_classes))
        if model is None:
            probs[:, classes[0]] = 1.0
        else:
            probs[:, model.classes_] = model.predict_proba(x)
        return probs

    return predict


def _learning_curve(client: Client, strategy: str, seed: int, data, rounds: int, batch: int,
                    initial: int) -> list[tuple[int, float]]:
    x_pool, y_pool, x_test, y_test, n_classes = data
    rng = np.random.default_rng(seed)
    labeled = rng.choice(len(y_pool), size=initial, replace=False)
    curve = []
    for round_no in range(rounds + 1):
        predict = _fit(x_pool[labeled], y_pool[labeled], n_classes)
        probs = predict(x_pool)
        accuracy = float((predict(x_test).argmax(axis=1) == y_test).mean())
        curve.append((len(labeled), accuracy))
        if round_no == rounds:
            break
        arrays = {"probs": probs.astype(np.float32)}
        if strategy in ("bald", "vote_entropy", "kl_disagreement", "variation_ratio"):
            member_rng = np.random.default_rng([seed, round_no])
            arrays["samples"] = np.stack([
                _fit(x_pool[labeled], y_pool[labeled], n_classes, member_rng)(x_pool)
                for _ in range(COMMITTEE)]).astype(np.float32)
        pool_id = f"demo-{strategy.replace('_', '-')}-{seed}-r{round_no}"
        client.create_pool(pool_id)
        try:
            client.append(pool_id, **arrays)
            client.label(pool_id, labeled, y_pool[labeled])
            chosen = client.select(strategy, batch, pool=pool_id, seed=seed * 1000 + round_no)
        finally:
            client.delete_pool(pool_id)
        labeled = np.concatenate([labeled, chosen.indices])
    return curve


def run_demo(*, target: str | None = None, rounds: int = 10, batch: int = 20, seeds: int = 3,
             strategies: list[str] | None = None, plot: str | None = "assay-demo.png",
             initial: int = 20) -> int:
    """Run the loop for each strategy and seed; print the table, write the plot."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    strategies = strategies or ["random", "entropy", "margin", "least_confident", "bald"]
    x, y = load_digits(return_X_y=True)
    x = x / 16.0
    x_pool, x_test, y_pool, y_test = train_test_split(x, y, test_size=0.3, random_state=0,
                                                      stratify=y)
    data = (x_pool, y_pool, x_test, y_test, 10)
    with ExitStack() as stack:
        if target is None:
            from .app import start
            from .config import ServerConfig

            data_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="assay-demo-"))
            server = start(ServerConfig(address="127.0.0.1:0", data_dir=data_dir))
            stack.callback(server.stop, 0)
            target = f"127.0.0.1:{server.port}"
        client = stack.enter_context(Client(target))
        print(f"Assay demo: digits ({len(y_pool)} pool / {len(y_test)} test items), "
              f"{initial} initial labels, {rounds} rounds of {batch}, seeds 0..{seeds - 1}, "
              f"server {target}")
        started = time.perf_counter()
        curves = {}
        for strategy in strategies:
            runs = [_learning_curve(client, strategy, s, data, rounds, batch, initial)
                    for s in range(seeds)]
            labels = [n for n, _ in runs[0]]
            curves[strategy] = (labels, np.array([[a for _, a in run] for run in runs]))
        elapsed = time.perf_counter() - started
    _print_table(curves)
    print(f"({elapsed:.1f} s including model fits)")
    if plot:
        _plot(curves, plot, seeds)
        print(f"learning curves written to {plot}")
    return 0


def _print_table(curves) -> None:
    names = list(curves)
    labels = curves[names[0]][0]
    print("\nmean test accuracy by number of labels")
    print("labels  " + "".join(f"{n:>16}" for n in names))
    for i, n in enumerate(labels):
        print(f"{n:>6}  " + "".join(f"{curves[s][1][:, i].mean():>16.3f}" for s in names))
    print("area   " + "".join(f"{curves[s][1].mean():>16.3f}" for s in names)
          + "   (mean over rounds and seeds)")


def _plot(curves, path: str, seeds: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, (labels, acc) in curves.items():
        mean, std = acc.mean(axis=0), acc.std(axis=0)
        ax.plot(labels, mean, marker="o", markersize=3, label=name)
        ax.fill_between(labels, mean - std, mean + std, alpha=0.15)
    ax.set_xlabel("labeled items")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"Active learning on digits through Assay (mean ± sd over {seeds} seeds)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
