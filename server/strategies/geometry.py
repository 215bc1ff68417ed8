"""Geometric batch strategies: core-set (k-center greedy), BADGE and k-means.

They work on embeddings through the compiled kernels of ``assay.kernels`` and
honour ``ctx.candidates``, so the two-stage composition (a score prefilter, then
diversity among the survivors) needs nothing from them. The kernel's backend is
reported in the response; figures such as the final covering radius go to
``ctx.metrics``.
"""

from __future__ import annotations

import numpy as np

from assay.kernels import dispatch
from assay.kernels.badge import badge_kmeanspp
from assay.kernels.kcenter import kcenter_greedy
from assay.kernels.kmeans import kmeans_closest

from .registry import Context, Inputs, Param, Selection, Strategy, register


def _backend_param(supported: tuple[str, ...]) -> Param:
    return Param(
        "backend", str, dispatch.AUTO,
        "Kernel backend: auto picks by what is installed and by size; naming a GPU backend "
        "without a GPU fails with FAILED_PRECONDITION.",
        choices=(dispatch.AUTO, *supported),
    )


def coreset(inputs: Inputs, budget: int, params: dict, ctx: Context) -> Selection:
    """k-center greedy among the candidates, labeled embeddings as the initial centres.

    Scores are the distance of each pick to its nearest earlier centre at pick time
    (+inf for the seeded-random first centre when nothing is labeled).
    """
    labeled = inputs.get("labeled_embeddings")
    result = kcenter_greedy(
        inputs["embeddings"], budget, labeled=labeled, candidates=ctx.candidates,
        rng=ctx.rng, check_cancelled=ctx.check_cancelled, backend=params["backend"],
        prune=params["prune"])
    ctx.backend = result.backend
    ctx.metrics["kcenter_radius"] = result.radius
    ctx.metrics["kcenter_rows_read_fraction"] = float(
        result.rows_read.mean() / max(1, ctx.candidates.size))
    return Selection(indices=result.indices, scores=result.distances)


def badge(inputs: Inputs, budget: int, params: dict, ctx: Context) -> Selection:
    """k-means++ seeding on never-materialized gradient embeddings (Ash et al. 2020).

    Scores are the gradient-embedding distance of each pick to its nearest earlier
    pick at pick time (the first pick's score is its gradient norm).
    """
    result = badge_kmeanspp(
        inputs["probs"], inputs["embeddings"], budget, candidates=ctx.candidates,
        rng=ctx.rng, check_cancelled=ctx.check_cancelled, backend=params["backend"])
    ctx.backend = result.backend
    return Selection(indices=result.indices, scores=result.distances)


def kmeans(inputs: Inputs, budget: int, params: dict, ctx: Context) -> Selection:
    """FAISS k-means with ``budget`` clusters; the candidate closest to each centroid.

    Picks are ordered best first like every other strategy's (nearest its centroid
    first, ties to the lower index), not by FAISS's cluster numbering, which depends
    on its random start and so means nothing to a client.
    """
    result = kmeans_closest(
        inputs["embeddings"], budget, candidates=ctx.candidates, rng=ctx.rng,
        iterations=params["iterations"], check_cancelled=ctx.check_cancelled,
        backend=params["backend"])
    ctx.backend = result.backend
    ctx.metrics["kmeans_objective"] = result.objective
    order = np.lexsort((result.indices, result.distances))
    return Selection(indices=result.indices[order], scores=-result.distances[order])


register(Strategy(
    name="coreset",
    kind="batch",
    fn=coreset,
    required=("embeddings",),
    optional=("labeled_embeddings",),
    description="Core-set k-center greedy (Sener & Savarese 2018): repeatedly pick the item "
                "farthest from the labeled set and the picks so far; one fused pass per pick.",
    params=(
        _backend_param((dispatch.NUMBA_CPU, dispatch.NUMBA_CUDA)),
        Param("prune", bool, True,
              "Skip the rows the triangle inequality proves unaffected by a step (CPU; "
              "exact: the same picks, fewer rows read on clustered embeddings)."),
    ),
))

register(Strategy(
    name="badge",
    kind="batch",
    fn=badge,
    required=("probs", "embeddings"),
    description="BADGE (Ash et al. 2020): k-means++ seeding on gradient embeddings "
                "(p - e_argmax) x h, computed in factorized form and never materialized.",
    params=(_backend_param((dispatch.NUMBA_CPU, dispatch.NUMBA_CUDA)),),
))

register(Strategy(
    name="kmeans",
    kind="batch",
    fn=kmeans,
    required=("embeddings",),
    description="k-means with budget clusters (FAISS); returns the item closest to each "
                "centroid. Scores are minus the distance to the centroid.",
    params=(
        _backend_param((dispatch.FAISS_CPU, dispatch.FAISS_GPU)),
        Param("iterations", int, 20, "Lloyd iterations of the k-means.", minimum=1,
              maximum=1000),
    ),
))
