"""Class labels of a pool's items: in range for the pool's class count, when it has one.

A label is a class id in [0, C). When a pool holds class probabilities
(``probs [N, C]`` or ``samples [S, N, C]``), C is known, and a label outside it
is a mistake that would otherwise surface far from its cause: forgetting events
would count the item as never learned, and labeled probabilities would be read at
a class that does not exist. A pool with neither array has no class count, and
any label >= 0 is accepted.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from assay.vocab.errors import InvalidInput

#: Arrays whose last axis is the class axis.
CLASS_ARRAYS = ("probs", "samples")


def class_count(arrays: Iterable) -> int | None:
    """C from the pool's ``probs``/``samples`` specs (objects with ``name`` and
    ``shape``), or None when the pool holds neither."""
    for spec in arrays:
        if spec.name in CLASS_ARRAYS:
            return int(spec.shape[-1])
    return None


def check_labels(indices: np.ndarray, labels: np.ndarray, arrays: Iterable) -> None:
    """Raise ``InvalidInput`` on ``labels`` for a negative label, or one >= C when the
    pool's arrays give C; the message names the first offending entry, its item and C."""
    indices = np.asarray(indices, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size == 0:
        return
    negative = np.flatnonzero(labels < 0)
    if negative.size:
        i = int(negative[0])
        raise InvalidInput(f"labels[{i}] (item {int(indices[i])}) is {int(labels[i])}; labels "
                           "are class ids >= 0", field="labels")
    c = class_count(arrays)
    if c is None:
        return
    outside = np.flatnonzero(labels >= c)
    if outside.size:
        i = int(outside[0])
        raise InvalidInput(
            f"labels[{i}] (item {int(indices[i])}) is {int(labels[i])}, outside the pool's "
            f"classes [0, {c}) (its class probabilities have C = {c}); {outside.size} of "
            f"{labels.size} labels are out of range: send class ids below {c}", field="labels")
