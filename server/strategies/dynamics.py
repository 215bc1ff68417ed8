"""Forgetting events (Toneva et al. 2019) over a labeled set's stored predictions.

For each labeled item (``labels >= 0``) and its predictions over T successive
evaluations, a forgetting event is a transition from correct to incorrect. Items
never predicted correctly count as infinitely forgettable. The strategy returns
the most forgettable labeled items, or the unforgettable ones (learned and never
forgotten: candidates for pruning). It ranks labeled items, so the candidate set
of unlabeled items (and ``exclude_indices``) does not apply; the budget bounds
how many are returned, and fewer come back when fewer qualify.
"""

from __future__ import annotations

import numpy as np

from assay.vocab.errors import InvalidInput
from assay.vocab.ties import argselect

from .registry import Context, Inputs, Param, Selection, Strategy, register


def forgetting_counts(predictions: np.ndarray, labels: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(events float64[L], correct int64[L]) for labeled rows: events is +inf when never learned.

    ``predictions`` is int[T, L], ``labels`` int[L].
    """
    acc = np.asarray(predictions) == np.asarray(labels)[None, :]
    events = (acc[:-1] & ~acc[1:]).sum(axis=0).astype(np.float64)
    events[~acc.any(axis=0)] = np.inf
    return events, acc.sum(axis=0)


def forgetting_events(inputs: Inputs, budget: int, params: dict, ctx: Context) -> Selection:
    """Most forgettable labeled items (score: events), or unforgettable ones (epochs correct)."""
    labels = np.asarray(inputs["labels"], dtype=np.int64)
    labeled = np.flatnonzero(labels >= 0)
    if labeled.size == 0:
        raise InvalidInput("forgetting_events ranks labeled items, and inputs.labels marks none "
                           "(-1 everywhere); label items first", field="inputs.labels")
    events, correct = forgetting_counts(np.asarray(inputs["predictions"])[:, labeled],
                                        labels[labeled])
    ctx.metrics["never_learned"] = float(np.isinf(events).sum())
    ctx.metrics["unforgettable"] = float((events == 0).sum())
    ctx.metrics["epochs"] = float(inputs["predictions"].shape[0])
    if params["mode"] == "forgettable":
        pos = argselect(events, min(budget, labeled.size), None, ctx.tiebreak_rng)
        return Selection(indices=labeled[pos], scores=events[pos])
    keep = np.flatnonzero(events == 0)
    if keep.size == 0:
        return Selection(indices=np.empty(0, np.int64), scores=np.empty(0))
    pos = keep[argselect(correct[keep].astype(np.float64), min(budget, keep.size), None,
                         ctx.tiebreak_rng)]
    return Selection(indices=labeled[pos], scores=correct[pos].astype(np.float64))


register(Strategy(
    name="forgetting_events",
    kind="batch",
    fn=forgetting_events,
    required=("predictions", "labels"),
    description="Forgetting events (Toneva et al. 2019): labeled items ranked by correct->"
                "incorrect transitions over stored epochs (never learned = infinite), or the "
                "unforgettable ones. Pools supply predictions from RecordEpoch and their labels.",
    params=(
        Param("mode", str, "forgettable",
              "forgettable: most forgetting events first; unforgettable: learned and never "
              "forgotten, most epochs correct first.",
              choices=("forgettable", "unforgettable")),
    ),
))
