"""Scores from other model heads and training dynamics: EGL, loss prediction,
discriminators (VAAL, MAL), label dispersion, information density, and the
client's own scores.

``label_dispersion`` depends only on the count of the most frequent label, so
items with equal counts tie exactly and the lower index wins.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

from assay.vocab.errors import InvalidInput

from . import registry
from .named import score_strategy
from .registry import Context, Inputs, Param, Strategy, register
from .uncertainty import entropy, probs64


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
        raise InvalidInput("label_dispersion needs at least one epoch of predictions "
                           "(T >= 1); for a pool, call RecordEpoch first",
                           field="inputs.predictions", reason="NO_EPOCHS")
    run = np.ones(ordered.shape[1], dtype=np.int64)
    best = run.copy()
    for epoch in range(1, t):
        run = np.where(ordered[epoch] == ordered[epoch - 1], run + 1, 1)
        np.maximum(best, run, out=best)
    return 1.0 - best / t


def base_informativeness(phi: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """float64[M]: each candidate's base score as its percentile rank among the candidates.

    rank / M with average ranks for ties, so in [1/M, 1]: strictly increasing in
    the base score (equal scores stay exactly equal) and never zero. Settles &
    Craven's product phi * density assumes phi >= 0; the bases here include signed
    ones (margin -(p1 - p2) <= 0, -D, a loss head's or the client's own scores), for
    which a product makes a denser item score lower. A fixed per-base shift would
    not do: scales differ by base (nats, probability gaps, unbounded losses), and a
    min-max shift maps the least informative candidates to 0, where density stops
    counting (a unanimous committee scores 0 on every vote-based base). Ranks put
    every base on one (0, 1] scale, so beta weighs density the same way whatever
    the base, and any increasing rewrite of a base leaves the answer unchanged.
    """
    values = phi[candidates]
    return rankdata(values, method="average") / values.size


def cosine_density(embeddings: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """float64[M]: (1 + mean_u cos(h_x, h_u)) / 2 for each candidate x over the candidates U.

    O(M d): the mean cosine is <h_x/|h_x|, mean_u h_u/|h_u|>. A zero embedding has
    cosine 0 with everything. The mean cosine of signed embeddings lies in [-1, 1];
    a negative factor would reverse the base's order as a signed base did, so it is
    mapped increasingly onto [0, 1]. It is positive for every candidate, whose own
    cosine of 1 is in the mean: at least 1/M.
    """
    # Fancy indexing copies: one float64 array of the candidates' rows, then in place.
    unit = np.asarray(np.asarray(embeddings)[candidates], dtype=np.float64)
    norms = np.linalg.norm(unit, axis=1, keepdims=True)
    np.divide(unit, norms, out=unit, where=norms > 0)  # a zero row stays zero
    # A row-wise sum, not a matrix-vector product: BLAS may take another summation
    # path for some rows, and identical embeddings must get bit-identical densities.
    unit *= unit.mean(axis=0)
    return np.clip((1.0 + unit.sum(axis=1)) / 2.0, 0.0, 1.0)


def information_density(inputs: Inputs, params: dict, ctx: Context) -> np.ndarray:
    """informativeness(x) * density(x)^beta over the candidates U (Settles & Craven 2008).

    Both factors are positive, so at equal density the more informative item wins
    (the base's own order, ties included) and at equal informativeness the denser
    one does. informativeness is the base score's percentile rank among the
    candidates (``base_informativeness``), density the mean cosine similarity to
    the candidates mapped onto [0, 1] (``cosine_density``). Items outside the
    candidates score -inf.
    """
    base = score_strategy(params["base"], "params.base", exclude=("information_density",))
    missing = [r for r in base.required if r not in inputs]
    if missing:
        raise InvalidInput(f"params.base {base.name!r} needs input {missing[0]!r}",
                           field=f"inputs.{missing[0]}")
    phi = np.asarray(base.fn(inputs, registry.resolve_params(base, {}), ctx), dtype=np.float64)
    cand = ctx.candidates
    out = np.full(phi.shape[0], -np.inf)
    out[cand] = (base_informativeness(phi, cand)
                 * cosine_density(inputs["embeddings"], cand) ** params["beta"])
    return out


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
    "Informativeness times density to the power beta (Settles & Craven 2008): the base "
    "score's percentile rank among the candidates, in (0, 1], times (1 + mean cosine "
    "similarity to the candidates) / 2; denser items win at equal base score, more "
    "informative ones at equal density.",
    params=(
        Param("base", str, "entropy",
              "Score strategy giving the informativeness (any sign or scale: only its order "
              "among the candidates counts)."),
        Param("beta", float, 1.0, "Exponent of the density term; 0 ranks by the base alone.",
              0.0, 100.0),
    ),
    optional=("probs", "samples", "loss", "discriminator", "scores", "predictions"),
))
register(Strategy("precomputed", "score", precomputed, ("scores",),
                  "The client's own per-item scores, highest first."))
