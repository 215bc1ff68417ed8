"""Scores from other model heads and training dynamics: EGL, loss prediction,
discriminators (VAAL, MAL), label dispersion, information density, and the
client's own scores.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

from assay.server.errors import FailedPrecondition, InvalidInput
from assay.server.strategies import registry
from assay.server.strategies.named import score_strategy
from assay.server.strategies.registry import Context, Inputs, Param, Strategy, register
from assay.server.strategies.uncertainty import entropy, probs64


def egl(inputs: Inputs, params: dict, ctx: Context) -> np.ndarray:
    """Expected gradient length of a softmax last layer, in closed form (Settles 2008).

    The gradient of the cross-entropy w.r.t. the last layer for label y is
    (p - e_y) h^T, whose norm is ||h|| * ||p - e_y||; and
    ||p - e_y||^2 = ||p||^2 - 2 p_y + 1, so no per-class loop is needed.
    """
    p = probs64(inputs)
    h = np.asarray(inputs["embeddings"], dtype=np.float64)
    sq = np.maximum((p * p).sum(axis=1, keepdims=True) - 2.0 * p + 1.0, 0.0)
    return np.linalg.norm(h, axis=1) * (p * np.sqrt(sq)).sum(axis=1)


def loss_prediction(inputs: Inputs, params: dict, ctx: Context) -> np.ndarray:
    """The loss-prediction module's output l(x), highest first (Yoo & Kweon 2019)."""
    return np.asarray(inputs["loss"], dtype=np.float64)


def discriminator(inputs: Inputs, params: dict, ctx: Context) -> np.ndarray:
    """-D(x): items the discriminator finds least 'labeled-looking' first (VAAL)."""
    return -np.asarray(inputs["discriminator"], dtype=np.float64)


def normalized_rank(values: np.ndarray) -> np.ndarray:
    """Average ranks scaled to [0, 1]: the highest value gets 1, the lowest 0."""
    if values.size < 2:
        return np.ones_like(values, dtype=np.float64)
    return (rankdata(values, method="average") - 1.0) / (values.size - 1.0)


def mal(inputs: Inputs, params: dict, ctx: Context) -> np.ndarray:
    """alpha * rank(-D) + (1 - alpha) * rank(entropy), ranks among the candidates (MAL).

    Ranks, not raw values, because D and entropy live on unrelated scales; ranks
    are normalized to [0, 1] over the selectable items so alpha is a true weight.
    """
    cand = ctx.candidates
    d = -np.asarray(inputs["discriminator"], dtype=np.float64)[cand]
    h = entropy(probs64(inputs)[cand])
    alpha = params["alpha"]
    out = np.full(inputs["discriminator"].shape[0], -np.inf)
    out[cand] = alpha * normalized_rank(d) + (1.0 - alpha) * normalized_rank(h)
    return out


def label_dispersion(inputs: Inputs, params: dict, ctx: Context) -> np.ndarray:
    """1 - f_x / T, f_x the count of x's most frequent predicted label (Bengar 2021)."""
    ordered = np.sort(np.asarray(inputs["predictions"]), axis=0)
    t = ordered.shape[0]
    if t == 0:  # 1 - f/T would be -inf (or NaN) for every item, answered as OK
        raise FailedPrecondition("label_dispersion needs at least one epoch of predictions "
                                 "(T >= 1); for a pool, call RecordEpoch first",
                                 field="inputs.predictions", reason="NO_EPOCHS")
    run = np.ones(ordered.shape[1], dtype=np.int64)
    best = run.copy()
    for epoch in range(1, t):
        run = np.where(ordered[epoch] == ordered[epoch - 1], run + 1, 1)
        np.maximum(best, run, out=best)
    return 1.0 - best / t


def information_density(inputs: Inputs, params: dict, ctx: Context) -> np.ndarray:
    """phi(x) * (mean_u cos(h_x, h_u))^beta over the unlabeled candidates U (Settles & Craven 2008).

    O(N d): the mean cosine is <h_x/|h_x|, mean_u h_u/|h_u|>. A zero embedding has
    similarity 0. For a non-integer beta negative similarities are clipped to 0
    (a fractional power of a negative number is undefined).
    """
    base = score_strategy(params["base"], "params.base", exclude=("information_density",))
    missing = [r for r in base.required if r not in inputs]
    if missing:
        raise InvalidInput(f"params.base {base.name!r} needs input {missing[0]!r}",
                           field=f"inputs.{missing[0]}")
    phi = base.fn(inputs, registry.resolve_params(base, {}), ctx)
    h = np.asarray(inputs["embeddings"], dtype=np.float64)
    norms = np.linalg.norm(h, axis=1, keepdims=True)
    unit = np.divide(h, norms, out=np.zeros_like(h), where=norms > 0)
    sim = unit @ unit[ctx.candidates].mean(axis=0)
    beta = params["beta"]
    if float(beta).is_integer():
        density = sim ** int(beta)
    else:
        density = np.maximum(sim, 0.0) ** beta
    return phi * density


def precomputed(inputs: Inputs, params: dict, ctx: Context) -> np.ndarray:
    """The client's own per-item scores, highest first."""
    return np.asarray(inputs["scores"], dtype=np.float64)


register(Strategy("egl", "score", egl, ("probs", "embeddings"),
                  "Expected gradient length of a softmax last layer (Settles 2008)."))
register(Strategy("loss_prediction", "score", loss_prediction, ("loss",),
                  "Highest predicted loss first (Yoo & Kweon 2019)."))
register(Strategy("discriminator", "score", discriminator, ("discriminator",),
                  "Lowest P(labeled|x) from a VAAL-style discriminator first (Sinha 2019)."))
register(Strategy(
    "mal", "score", mal, ("discriminator", "probs"),
    "alpha * rank(-D) + (1 - alpha) * rank(entropy), ranks in [0, 1] (MAL; Ebrahimi 2021).",
    params=(Param("alpha", float, 0.5, "Weight of the discriminator rank.", 0.0, 1.0),),
))
register(Strategy("label_dispersion", "score", label_dispersion, ("predictions",),
                  "1 - share of the most frequent predicted label over epochs (Bengar 2021)."))
register(Strategy(
    "information_density", "score", information_density, ("embeddings",),
    "A base score times mean cosine similarity to the unlabeled pool, to the power beta "
    "(Settles & Craven 2008).",
    params=(
        Param("base", str, "entropy", "Score strategy weighted by density."),
        Param("beta", float, 1.0, "Exponent of the density term.", 0.0, 100.0),
    ),
    optional=("probs", "samples", "loss", "discriminator", "scores", "predictions"),
))
register(Strategy("precomputed", "score", precomputed, ("scores",),
                  "The client's own per-item scores, highest first."))
