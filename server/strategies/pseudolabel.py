"""CEAL, cost-effective active learning (Wang et al. 2016).

Besides the b most uncertain candidates (sent to annotators), CEAL proposes the
high-confidence candidates, entropy below delta_t = delta_0 - r * t at round t,
for training with the model's own argmax labels. The two sets never overlap and
travel in separate response fields: ``indices`` are to be labeled,
``pseudo_label_indices`` / ``pseudo_labels`` are the model's proposals.
"""

from __future__ import annotations

import numpy as np

from assay.vocab.ties import argselect

from .hybrid import named_score
from .registry import Context, Inputs, Param, Selection, Strategy, register
from .uncertainty import entropy, probs64


def ceal(inputs: Inputs, budget: int, params: dict, ctx: Context) -> Selection:
    """The b most uncertain candidates, plus confident ones with their pseudo-labels.

    Pseudo-labeled items are the remaining candidates with entropy < delta_t, most
    confident first (ties: lower index), at most ``max_pseudo_labels`` (0: all); the
    label is the argmax class (the lowest class on ties).
    """
    phi = named_score(params["uncertainty"], inputs, ctx, "params.uncertainty")
    picks = argselect(phi, budget, ctx.candidates, ctx.tiebreak_rng)
    p = probs64(inputs)
    threshold = params["delta0"] - params["decay"] * params["round"]
    rest = np.setdiff1d(ctx.candidates, picks, assume_unique=True)
    h = entropy(p[rest])
    confident = rest[h < threshold]
    order = np.lexsort((confident, h[h < threshold]))
    confident = confident[order]
    if params["max_pseudo_labels"]:
        confident = confident[: params["max_pseudo_labels"]]
    ctx.metrics["ceal_threshold"] = float(threshold)
    ctx.metrics["ceal_pseudo_labels"] = float(confident.size)
    return Selection(indices=picks, scores=phi[picks],
                     pseudo_label_indices=confident.astype(np.int64),
                     pseudo_labels=p[confident].argmax(axis=1).astype(np.int64))


register(Strategy(
    name="ceal",
    kind="batch",
    fn=ceal,
    required=("probs",),
    optional=("samples", "embeddings", "scores", "loss", "discriminator", "predictions"),
    description="CEAL (Wang et al. 2016): the b most uncertain items to label, plus the "
                "confident ones (entropy < delta0 - decay x round) with their argmax "
                "pseudo-labels in pseudo_label_indices / pseudo_labels.",
    params=(
        Param("uncertainty", str, "entropy",
              "Score strategy choosing the items to label (least_confident, margin, "
              "entropy, ...)."),
        Param("delta0", float, 0.05, "Initial entropy threshold delta_0, in nats.",
              minimum=0.0),
        Param("decay", float, 0.0033, "Threshold decay r per round.", minimum=0.0),
        Param("round", int, 0, "The active-learning round t, counted by the client.",
              minimum=0),
        Param("max_pseudo_labels", int, 0, "Most pseudo-labels returned; 0 means all.",
              minimum=0),
    ),
))
