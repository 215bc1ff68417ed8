"""Learning dynamics kept server-side: RecordEpoch, label_dispersion and forgetting_events.

References are written here from the definitions (Toneva et al. 2019; Bengar et al.
2021) with plain loops over items and epochs.
"""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest

from assay.client import AssayError, Client
from assay.server.acquisition import selection
from assay.server.pools.store import PoolStore
from assay.vocab.errors import InvalidInput


def _forgetting_reference(preds: np.ndarray, labels: np.ndarray) -> dict[int, float]:
    """item -> forgetting events (inf when never learned), over labeled items only."""
    out = {}
    for i, y in enumerate(labels):
        if y < 0:
            continue
        correct = [int(preds[t, i]) == int(y) for t in range(preds.shape[0])]
        if not any(correct):
            out[i] = float("inf")
            continue
        out[i] = float(sum(1 for a, b in itertools.pairwise(correct) if a and not b))
    return out


def _dispersion_reference(preds: np.ndarray) -> np.ndarray:
    t = preds.shape[0]
    return np.array([1.0 - Counter(preds[:, i].tolist()).most_common(1)[0][1] / t
                     for i in range(preds.shape[1])])


def _ranked(scores: dict[int, float], budget: int) -> list[int]:
    """Highest score first, ties by lower item."""
    return sorted(scores, key=lambda i: (-scores[i], i))[:budget]


@pytest.mark.parametrize("t,n", [(1, 5), (2, 30), (7, 60), (12, 1)])
def test_forgetting_events_match_reference(t, n):
    rng = np.random.default_rng([t, n])
    preds = rng.integers(0, 3, size=(t, n))
    labels = np.where(rng.random(n) < 0.6, rng.integers(0, 3, size=n), -1)
    labels[0] = preds[0, 0]  # at least one labeled item
    ref = _forgetting_reference(preds, labels)
    budget = len(ref)
    r = selection.select("forgetting_events", budget, {"predictions": preds, "labels": labels})
    assert r.indices.tolist() == _ranked(ref, budget)
    assert r.scores.tolist() == [ref[i] for i in r.indices]
    assert r.metrics["never_learned"] == sum(np.isinf(v) for v in ref.values())
    unforgettable = {i: float(sum(preds[:, i] == labels[i])) for i, v in ref.items() if v == 0}
    u = selection.select("forgetting_events", budget, {"predictions": preds, "labels": labels},
                           {"mode": "unforgettable"})
    assert u.indices.tolist() == _ranked(unforgettable, budget)
    assert u.scores.tolist() == [unforgettable[i] for i in u.indices]
    assert r.metrics["unforgettable"] == len(unforgettable)


def test_forgetting_events_cases_by_hand():
    # item 0: learned, forgotten twice; 1: never learned; 2: unforgettable; 3: unlabeled
    preds = np.array([[1, 0, 2, 0], [0, 0, 2, 0], [1, 0, 2, 0], [0, 0, 2, 0]])
    labels = np.array([1, 1, 2, -1])
    r = selection.select("forgetting_events", 4, {"predictions": preds, "labels": labels})
    assert r.indices.tolist() == [1, 0, 2]  # fewer than the budget: only labeled items count
    assert r.scores.tolist() == [np.inf, 2.0, 0.0]
    u = selection.select("forgetting_events", 2, {"predictions": preds, "labels": labels},
                           {"mode": "unforgettable"})
    assert u.indices.tolist() == [2]
    with pytest.raises(InvalidInput, match="marks none"):
        selection.select("forgetting_events", 1, {"predictions": preds,
                                                    "labels": np.full(4, -1)})
    with pytest.raises(InvalidInput, match="labels below -1"):
        selection.select("forgetting_events", 1, {"predictions": preds,
                                                    "labels": np.array([1, -2, 0, 0])})
    with pytest.raises(InvalidInput, match="INT32 or INT64 class labels"):
        selection.select("forgetting_events", 1, {"predictions": preds,
                                                    "labels": np.ones(4)})
    with pytest.raises(InvalidInput, match="disagree on the number of items"):
        selection.select("forgetting_events", 1, {"predictions": preds,
                                                    "labels": np.array([1, 0])})


def _pool(client: Client, n: int, c: int, rng) -> np.ndarray:
    probs = rng.dirichlet(np.ones(c), size=n).astype(np.float32)
    client.create_pool("dyn")
    client.append("dyn", probs=probs, embeddings=rng.normal(size=(n, 4)).astype(np.float32))
    return probs


def test_history_feeds_dispersion_and_forgetting_and_survives_restart(server_factory):
    rng = np.random.default_rng(5)
    n, c, t = 40, 4, 6
    server = server_factory()
    with Client(f"127.0.0.1:{server.port}", timeout=30) as client:
        _pool(client, n, c, rng)
        labeled = np.array([1, 4, 9, 16, 25, 36])
        truth = rng.integers(0, c, size=labeled.size)
        client.label("dyn", labeled, truth)
        preds = rng.integers(0, c, size=(t, n))
        for epoch in range(t - 1):
            pool, index = client.record_epoch("dyn", predicted_labels=preds[epoch])
            assert index == epoch
        # the last epoch as probabilities: its argmax is stored
        last = np.full((n, c), 0.1 / (c - 1), dtype=np.float32)
        last[np.arange(n), preds[t - 1]] = 0.9
        pool, index = client.record_epoch("dyn", probs=last, request_id="epoch-last")
        assert index == t - 1
        again, index2 = client.record_epoch("dyn", probs=last, request_id="epoch-last")
        assert (index2, again.version) == (index, pool.version)  # idempotent retry
        disp = client.select("label_dispersion", 5, pool="dyn")
        ref = _dispersion_reference(preds)
        ref[labeled] = -np.inf
        assert disp.indices.tolist() == sorted(range(n), key=lambda i: (-ref[i], i))[:5]
        np.testing.assert_allclose(disp.scores, ref[disp.indices])
        labels = np.full(n, -1)
        labels[labeled] = truth
        want = _forgetting_reference(preds, labels)
        fe = client.select("forgetting_events", 3, pool="dyn")
        assert fe.indices.tolist() == _ranked(want, 3)
    server.stop(0)
    restarted = server_factory()
    with Client(f"127.0.0.1:{restarted.port}", timeout=30) as client:
        assert client.select("forgetting_events", 3, pool="dyn").indices.tolist() == \
            fe.indices.tolist()
        assert client.select("label_dispersion", 5, pool="dyn").indices.tolist() == \
            disp.indices.tolist()


def test_record_epoch_errors(client):
    rng = np.random.default_rng(1)
    client.create_pool("empty")
    with pytest.raises(AssayError, match="no items") as err:
        client.record_epoch("empty", predicted_labels=np.zeros(3, np.int64))
    assert err.value.code.name == "FAILED_PRECONDITION"
    _pool(client, 10, 3, rng)
    with pytest.raises(AssayError, match="has 9 predictions but pool 'dyn' has 10") as err:
        client.record_epoch("dyn", predicted_labels=np.zeros(9, np.int64))
    assert err.value.code.name == "INVALID_ARGUMENT"
    with pytest.raises(AssayError, match="class ids"):
        client.record_epoch("dyn", predicted_labels=np.full(10, -1, np.int64))
    with pytest.raises(AssayError, match="INT32 or INT64"):
        client.record_epoch("dyn", predicted_labels=np.zeros(10, np.float32))
    with pytest.raises(AssayError, match="sums to"):
        client.record_epoch("dyn", probs=np.full((10, 3), 0.5, np.float32))
    with pytest.raises(AssayError, match="does not exist") as err:
        client.record_epoch("nope", predicted_labels=np.zeros(10, np.int64))
    assert err.value.code.name == "NOT_FOUND"
    with pytest.raises(AssayError, match="is not a pool array"):
        client.append("dyn", probs=np.full((1, 3), 1 / 3, np.float32),
                      embeddings=np.zeros((1, 4), np.float32), labels=np.zeros(1, np.int64))
    # an epoch recorded before the pool grew no longer covers every item
    client.record_epoch("dyn", predicted_labels=np.zeros(10, np.int64))
    client.append("dyn", probs=np.full((2, 3), 1 / 3, np.float32),
                  embeddings=np.zeros((2, 4), np.float32))
    with pytest.raises(AssayError, match="needs input 'predictions'"):
        client.select("label_dispersion", 1, pool="dyn")
    client.record_epoch("dyn", predicted_labels=np.arange(12) % 3)
    assert client.select("label_dispersion", 1, pool="dyn").indices.size == 1


def test_store_sweeps_uncommitted_epoch_files_and_deletes_history(tmp_path):
    store = PoolStore(tmp_path)
    store.create_pool("p")
    writer = store.begin_append("p", [__import__("assay.server.pools.store", fromlist=["ArraySpec"])
                                      .ArraySpec("scores", "<f4", (3,))])
    writer.write(0, 0, np.zeros(3, np.float32).tobytes())
    writer.commit()
    info, epoch = store.record_epoch("p", np.array([0, 1, 2]))
    assert epoch == 0 and info.version == 2
    history = next((tmp_path / "pools").iterdir()) / "history"
    stray = history / "epoch-stray.npy"
    np.save(stray, np.zeros(3, np.int32))
    store.close()
    store = PoolStore(tmp_path)
    assert not stray.exists()
    assert store.load("p").history.tolist() == [[0, 1, 2]]
    store.delete_pool("p")
    assert not history.exists()
    store.close()
