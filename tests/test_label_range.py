"""LabelPoolItems checks labels against the pool's class count, and a refusal changes nothing."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from assay.client import AssayError

SEED = 314


def _probs(n: int, c: int) -> np.ndarray:
    return np.random.default_rng(SEED).dirichlet(np.ones(c), size=n).astype(np.float32)


@pytest.mark.parametrize("role", ["probs", "samples"])
def test_a_label_outside_the_classes_is_refused_naming_entry_item_and_c(client, role):
    client.create_pool("p")
    probs = _probs(20, 4)
    arrays = {"probs": probs} if role == "probs" else {"samples": np.stack([probs, probs])}
    client.append("p", **arrays)
    before = client.label("p", [0, 1], [3, 0])
    with pytest.raises(AssayError) as caught:
        client.label("p", [5, 6, 7], [1, 4, 2])
    error = caught.value
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.field == "labels"
    assert "labels[1]" in error.message and "item 6" in error.message, error.message
    assert "[0, 4)" in error.message and "C = 4" in error.message, error.message
    after = client.get_pool("p")
    assert (after.version, after.labeled_count) == (before.version, before.labeled_count)
    # The stored labels are the ones accepted before: forgetting_events reads them.
    client.record_epoch("p", predicted_labels=np.zeros(20, np.int64))
    got = client.select("forgetting_events", 2, pool="p")
    assert sorted(got.indices.tolist()) == [0, 1]


def test_negative_labels_are_refused_and_any_label_is_accepted_without_classes(client):
    client.create_pool("e")
    client.append("e", embeddings=np.random.default_rng(SEED).normal(size=(6, 3)))
    with pytest.raises(AssayError) as caught:
        client.label("e", [2, 3], [1, -1])
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.field == "labels" and "item 3" in caught.value.message
    # No probs or samples: the pool has no class count to check against.
    assert client.label("e", [2, 3], [17, 1000]).labeled_count == 2


def test_labels_at_the_edge_of_the_classes_are_accepted(client):
    client.create_pool("edge")
    client.append("edge", probs=_probs(5, 3))
    assert client.label("edge", [0, 4], [0, 2]).labeled_count == 2
    with pytest.raises(AssayError, match=r"labels\[0\] \(item 1\) is 3"):
        client.label("edge", [1], [3])
