"""Uncertainty-then-diversity strategies: Suggestive Annotation and diverse mini-batch.

Both are named instances of the two-stage composition: a score keeps the most
informative candidates, then a diversity step picks the batch among them.

* Suggestive Annotation (Yang et al. 2017): the top K by committee disagreement,
  then facility-location max-cover of the unlabeled pool on cosine similarity,
  by lazy greedy (identical picks to plain greedy, fewer gain evaluations).
* Diverse mini-batch (Zhdanov 2019): the top beta * b by informativeness, k-means
  with b clusters weighted by informativeness, and the member nearest each centre.
"""

from __future__ import annotations

import numpy as np

from assay.kernels import dispatch
from assay.kernels.bits import rows_float32
from assay.kernels.facility import facility_location_greedy
from assay.kernels.kmeans import weighted_kmeans
from assay.vocab.errors import InvalidInput
from assay.vocab.ties import argselect

from . import registry
from .named import score_strategy
from .registry import Context, Inputs, Param, Selection, Strategy, register
from .uncertainty import probs64

#: Name of Suggestive Annotation's own uncertainty: the class-averaged variance of Ps.
COMMITTEE_VARIANCE = "variance"


def named_score(name: str, inputs: Inputs, ctx: Context, field: str,
                also: tuple[str, ...] = ()) -> np.ndarray:
    """float64[N] scores of the score strategy ``name`` with its default parameters.

    Raises ``InvalidInput`` naming ``field`` when ``name`` is a batch strategy or
    its inputs are missing, so a composite strategy reports which part failed; ``also``
    lists the other values the parameter accepts, for the message.
    """
    base = score_strategy(name, field, also=also)
    missing = [r for r in base.required if r not in inputs]
    if missing:
        raise InvalidInput(f"{field} {base.name!r} needs input {missing[0]!r}",
                           field=f"inputs.{missing[0]}", reason="MISSING_INPUT")
    return np.asarray(base.fn(inputs, registry.resolve_params(base, {}), ctx), dtype=np.float64)


def committee_variance(inputs: Inputs) -> np.ndarray:
    """(1/C) sum_c Var_s Ps[s, x, c]: Yang et al.'s disagreement of a committee."""
    if "samples" not in inputs:
        raise InvalidInput("params.uncertainty 'variance' needs input 'samples' [S, N, C] "
                           "(committee members); or name a score strategy",
                           field="inputs.samples", reason="MISSING_INPUT")
    return probs64(inputs, "samples").var(axis=0).mean(axis=1)


def _top(scores: np.ndarray, k: int, budget: int, ctx: Context, field: str) -> np.ndarray:
    """Sorted positions of the top ``k`` candidates (0: ten times the budget)."""
    k = min(k or 10 * budget, ctx.candidates.size)
    if k < budget:
        raise InvalidInput(f"{field} {k} is smaller than the budget {budget}", field=field)
    return np.sort(argselect(scores, k, ctx.candidates, ctx.tiebreak_rng))


def suggestive_annotation(inputs: Inputs, budget: int, params: dict, ctx: Context) -> Selection:
    """Top K uncertain candidates, then lazy-greedy max-cover of the unlabeled candidates.

    Scores are each pick's marginal gain in F(S) = sum_u max_{s in S} cos(h_s, h_u);
    the final F (the representativeness of the batch) goes to the metrics.
    """
    name = params["uncertainty"]
    if name == COMMITTEE_VARIANCE:
        phi = committee_variance(inputs)
    else:
        phi = named_score(name, inputs, ctx, "params.uncertainty", also=(COMMITTEE_VARIANCE,))
    shortlist = _top(phi, params["top_k"], budget, ctx, "params.top_k")
    result = facility_location_greedy(
        inputs["embeddings"], budget, candidates=shortlist, universe=ctx.candidates,
        lazy=params["lazy"], check_cancelled=ctx.check_cancelled)
    ctx.backend = result.backend
    # The gains are measured from F(empty) = -|U| (every max over nothing is -1).
    ctx.metrics["representativeness"] = float(result.gains.sum() - ctx.candidates.size)
    ctx.metrics["facility_evaluations"] = float(result.evaluations)
    ctx.metrics["shortlist_size"] = float(shortlist.size)
    return Selection(indices=result.indices, scores=result.gains)


def informativeness_weights(scores: np.ndarray, margin: bool) -> np.ndarray:
    """Positive k-means weights from informativeness scores.

    Margin scores are -(p1 - p2), so 1 + score = 1 - (p1 - p2) in [0, 1] is Zhdanov's
    weight. Other scores have no fixed range: they are scaled to [0, 1] over the
    shortlist (all 1 when equal). A floor of 1e-3 keeps every item in the clustering.
    """
    if margin:
        w = 1.0 + scores
    else:
        lo, hi = scores.min(), scores.max()
        w = (scores - lo) / (hi - lo) if hi > lo else np.ones_like(scores)
    return np.maximum(w, 1e-3)


def diverse_minibatch(inputs: Inputs, budget: int, params: dict, ctx: Context) -> Selection:
    """Zhdanov (2019): weighted k-means on the beta * b most informative candidates.

    Picks are the shortlisted item nearest each centre (a centre whose nearest item
    is taken falls back to its next nearest), reported most informative first with
    their informativeness as scores.
    """
    name = params["informativeness"]
    phi = named_score(name, inputs, ctx, "params.informativeness")
    shortlist = _top(phi, params["beta"] * budget, budget, ctx, "params.beta x budget")
    ctx.metrics["shortlist_size"] = float(shortlist.size)
    if shortlist.size == budget:
        picks = shortlist
    else:
        x = rows_float32(inputs["embeddings"], shortlist)
        w = informativeness_weights(phi[shortlist], name == "margin").astype(np.float32)
        centres, objective, backend = _weighted_kmeans(x, w, budget, params, ctx)
        ctx.backend = backend
        ctx.metrics["kmeans_objective"] = objective
        ctx.check_cancelled()
        picks = shortlist[_nearest_unique(x, centres)]
    order = np.lexsort((picks, -phi[picks]))
    return Selection(indices=picks[order], scores=phi[picks[order]])


def _weighted_kmeans(x: np.ndarray, w: np.ndarray, k: int, params: dict,
                     ctx: Context) -> tuple[np.ndarray, float, str]:
    """FAISS k-means of ``x`` with per-point weights ``w``, seeded from the request."""
    return weighted_kmeans(x, w, k, iterations=params["iterations"],
                           seed=int(ctx.rng.integers(2**31 - 1)), backend=params["backend"])


def _nearest_unique(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """For each centre in turn, the nearest not yet taken row of ``x`` (ties: lower row)."""
    x64 = np.asarray(x, dtype=np.float64)
    d2 = ((x64 * x64).sum(axis=1)[None, :] - 2.0 * centres @ x64.T
          + (centres * centres).sum(axis=1)[:, None])
    taken = np.zeros(x.shape[0], dtype=bool)
    out = np.empty(centres.shape[0], dtype=np.int64)
    for j in range(centres.shape[0]):
        row = np.where(taken, np.inf, d2[j])
        out[j] = int(np.argmin(row))
        taken[out[j]] = True
    return out


register(Strategy(
    name="suggestive_annotation",
    kind="batch",
    fn=suggestive_annotation,
    required=("embeddings",),
    optional=("samples", "probs", "scores", "loss", "discriminator", "predictions"),
    description="Suggestive Annotation (Yang et al. 2017): top K by committee disagreement, "
                "then lazy-greedy facility-location max-cover of the unlabeled pool on cosine "
                "similarity; the representativeness F(S) is reported in the metrics.",
    params=(
        Param("uncertainty", str, COMMITTEE_VARIANCE,
              "Shortlist score: 'variance' (class-averaged variance of the committee's "
              "samples, Yang et al.) or the name of any score strategy."),
        Param("top_k", int, 0, "Shortlist size K; 0 means 10 x budget.", minimum=0),
        Param("lazy", bool, True,
              "Lazy greedy (same picks as plain greedy, fewer evaluations)."),
    ),
))

register(Strategy(
    name="diverse_minibatch",
    kind="batch",
    fn=diverse_minibatch,
    required=("embeddings",),
    optional=("probs", "samples", "scores", "loss", "discriminator", "predictions"),
    description="Diverse mini-batch (Zhdanov 2019): the beta x b most informative candidates, "
                "informativeness-weighted k-means with b clusters (FAISS), the member nearest "
                "each centre.",
    params=(
        Param("informativeness", str, "margin",
              "Score strategy ranking and weighting the shortlist (margin: weight "
              "1 - (p1 - p2), as in the paper)."),
        Param("beta", int, 10, "Shortlist size as a multiple of the budget.", minimum=1,
              maximum=1000),
        Param("iterations", int, 20, "Lloyd iterations of the k-means.", minimum=1,
              maximum=1000),
        Param("backend", str, dispatch.AUTO, "k-means backend.",
              choices=(dispatch.AUTO, dispatch.FAISS_CPU, dispatch.FAISS_GPU)),
    ),
))
