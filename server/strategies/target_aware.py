"""EPIG (Bickford Smith et al. 2023): information gain about predictions on a target set.

BALD rewards information about the parameters, much of which may never matter for
the predictions one cares about; EPIG scores a pool item by the mutual information
between its label and the label of a target input x* ~ p*(x*), averaged over the
target. The target is given as ``target_samples`` (the same S parameter samples'
probabilities on M target inputs) or, by default, ``target_size`` pool candidates
drawn with the request's seed, the pool standing in for p*(x*) as in the paper's
unlabeled-pool setting. The O(N M S C^2) work lives in ``assay.kernels.epig``.
"""

from __future__ import annotations

import numpy as np

from assay.kernels.epig import epig_scores
from assay.vocab.errors import InvalidInput

from .registry import Context, Inputs, Param, Strategy, register

#: The input role of a given target; without it the target is drawn from the pool.
TARGET = "target_samples"


def target_rows(candidates: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted pool items standing in for the target: ``size`` candidates drawn without
    replacement by ``rng`` (all of them, and no draw, when there are at most ``size``)."""
    if candidates.size <= size:
        return candidates
    return np.sort(rng.choice(candidates, size=size, replace=False))


def target_samples(inputs: Inputs, params: dict, ctx: Context) -> np.ndarray:
    """[S, M, C] target probabilities: the given ``target_samples``, else a seeded
    subsample of the pool's own samples (checked against the pool's S and C)."""
    samples = inputs["samples"]
    if TARGET not in inputs:
        rows = target_rows(ctx.candidates, params["target_size"], ctx.rng)
        ctx.metrics["epig_target_size"] = float(rows.size)
        return samples[:, rows]
    target = inputs[TARGET]
    s, _, c = samples.shape
    if target.ndim != 3 or target.shape[0] != s or target.shape[2] != c:
        raise InvalidInput(
            f"inputs.{TARGET} has shape {list(target.shape)}; it must be [S, M, C] with the "
            f"S = {s} parameter samples and C = {c} classes of inputs.samples",
            field=f"inputs.{TARGET}", reason="SHAPE_MISMATCH")
    ctx.metrics["epig_target_size"] = float(target.shape[1])
    return target


def epig(inputs: Inputs, params: dict, ctx: Context) -> np.ndarray:
    """EPIG of each candidate (nats), -inf for the others."""
    samples = inputs["samples"]
    target = target_samples(inputs, params, ctx)
    out = np.full(samples.shape[1], -np.inf)
    out[ctx.candidates] = epig_scores(samples, target, ctx.candidates,
                                      check_cancelled=ctx.check_cancelled)
    ctx.backend = "numba-cpu"
    return out


register(Strategy(
    name="epig",
    kind="score",
    fn=epig,
    required=("samples",),
    optional=(TARGET,),
    description="EPIG (Bickford Smith et al. 2023): expected information gain about the "
                "label of a target input, E_x* I(y; y* | x, x*) = H[y] + E H[y*] - E H[y, y*] "
                "under the S parameter samples; the target is target_samples, else target_size "
                "seeded pool candidates.",
    params=(
        Param("target_size", int, 1000,
              "M, pool candidates drawn (with the request's seed) as the target when "
              "target_samples is not given; all candidates when there are fewer. The cost "
              "is O(N M S C^2).", minimum=1, maximum=1 << 20),
    ),
))
