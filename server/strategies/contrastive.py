"""CAL, contrastive active learning (Margatina et al. 2021).

An unlabeled item whose prediction disagrees most with the predictions on its
nearest labeled neighbours in feature space is a contrastive example: close in
the embedding, far in the output. Score(x) = (1/k) sum_{l in N_k(x)}
KL(P_L[l] || P[x]), N_k the k nearest labeled items by exact (FAISS) Euclidean
search; top b.
"""

from __future__ import annotations

import numpy as np
from scipy.special import rel_entr

from assay.kernels import dispatch
from assay.kernels.knn import BACKENDS, knn
from assay.vocab.errors import FailedPrecondition
from assay.vocab.ties import argselect

from .registry import Context, Inputs, Param, Selection, Strategy, register
from .uncertainty import probs64

#: Candidates scored per block, bounding the [block, k, C] KL temporaries.
_BLOCK = 1 << 15


def cal_scores(inputs: Inputs, k: int, ctx: Context, backend: str) -> tuple[np.ndarray, str]:
    """float64[N] CAL scores, -inf outside the candidates; and the KNN backend that ran.

    With fewer than k labeled items every labeled item is a neighbour. A class with
    P_L > 0 and P = 0 makes the divergence +inf (the model rules out what a neighbour
    predicts): such items rank first.
    """
    labeled = inputs["labeled_embeddings"]
    if labeled.shape[0] == 0:
        raise FailedPrecondition(
            "cal needs labeled items: send labeled_embeddings [L, d] and labeled_probs [L, C] "
            "with L >= 1 (for a pool, label some items first)", field="inputs.labeled_probs",
            reason="NO_LABELED_ITEMS")
    cand = ctx.candidates
    k = min(k, labeled.shape[0])
    _, neighbours, ran = knn(np.asarray(inputs["embeddings"])[cand], labeled, k,
                             backend=backend)
    p = probs64(inputs)
    pl = probs64(inputs, "labeled_probs")
    out = np.full(p.shape[0], -np.inf)
    for lo in range(0, cand.size, _BLOCK):
        rows = cand[lo:lo + _BLOCK]
        nb = neighbours[lo:lo + _BLOCK]
        out[rows] = rel_entr(pl[nb], p[rows][:, None, :]).sum(axis=2).mean(axis=1)
    return out, ran


def cal(inputs: Inputs, budget: int, params: dict, ctx: Context) -> Selection:
    """Top b candidates by mean KL divergence from their k nearest labeled neighbours."""
    scores, ran = cal_scores(inputs, params["k"], ctx, params["backend"])
    ctx.backend = ran
    picks = argselect(scores, budget, ctx.candidates, ctx.tiebreak_rng)
    return Selection(indices=picks, scores=scores[picks])


register(Strategy(
    name="cal",
    kind="batch",
    fn=cal,
    required=("probs", "embeddings", "labeled_embeddings", "labeled_probs"),
    description="CAL, contrastive active learning (Margatina et al. 2021): mean "
                "KL(P_L[l] || P[x]) over the k nearest labeled neighbours (exact FAISS "
                "search); top b.",
    params=(
        Param("k", int, 10, "Labeled neighbours per item (all of them when fewer).",
              minimum=1, maximum=4096),
        Param("backend", str, dispatch.AUTO, "Nearest-neighbour backend.",
              choices=(dispatch.AUTO, *BACKENDS)),
    ),
))
