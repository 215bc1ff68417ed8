"""Stochastic batch acquisition (Kirsch et al. 2023): any score strategy's batch, sampled.

Top-b of a score picks near-duplicates together; sampling the batch without
replacement from a distribution that follows the scores keeps the informative items
likely and spreads the rest, at the cost of one score pass. Three distributions over
the candidates, each with an inverse temperature beta > 0:

* ``softmax``:  p_i proportional to exp(beta s_i);
* ``power``:    p_i proportional to s_i^beta (scores must be >= 0; zero scores have p = 0);
* ``softrank``: p_i proportional to r_i^-beta, r_i the rank of s_i, 1 for the highest
  (average ranks for ties, so equal scores have equal weights).

Sampling b items without replacement, each draw proportional to the remaining
weights, is the Gumbel-top-k trick: the b largest of log p_i + g_i with g_i i.i.d.
standard Gumbel (Kool et al. 2019), one vectorized draw seeded by the request. Items
of weight 0 come after all others, in uniformly random order.

The inner strategy is composed, not reimplemented: ``score`` names any registered
score strategy and ``score_params`` carries its parameters (a JSON object checked
against its declarations), so every score strategy, present and future, has its
stochastic batch.
"""

from __future__ import annotations

import json

import numpy as np
from scipy.stats import rankdata

from assay.vocab.errors import InvalidInput

from . import registry
from .named import score_strategy
from .registry import Context, Inputs, Param, Selection, Strategy, register

#: The distributions over the candidates.
MODES = ("softmax", "power", "softrank")


def log_weights(scores: np.ndarray, mode: str, beta: float) -> np.ndarray:
    """float64 log p_i up to a constant (-inf: weight 0) of the candidates' ``scores``."""
    s = np.asarray(scores, dtype=np.float64)
    if np.isnan(s).any() or np.isposinf(s).any():
        raise InvalidInput("params.score produced NaN or +Inf scores; stochastic sampling "
                           "needs finite scores", field="params.score")
    if mode == "softmax":
        return beta * s
    if mode == "power":
        if (s < 0).any():
            raise InvalidInput(
                f"params.mode 'power' needs scores >= 0; the score has {s.min():.6g} (use "
                "softmax or softrank for signed scores such as margin)", field="params.mode")
        with np.errstate(divide="ignore"):
            return beta * np.log(s)
    ranks = rankdata(-s, method="average")
    return -beta * np.log(ranks)


def gumbel_top_k(log_w: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Positions of ``k`` draws without replacement, each proportional to exp(log_w) of
    what remains, in draw order: the ``k`` largest log_w + Gumbel noise.

    One Gumbel value per position, drawn in position order; positions of weight 0
    (log_w = -inf) follow all others, ordered by their own noise (uniformly at random).
    Equal keys (probability 0) go to the lower position.
    """
    g = rng.gumbel(size=log_w.size)
    zero = np.isneginf(log_w)
    key = log_w + g
    positive = log_w.size - int(zero.sum())
    if positive >= k:
        return _largest(key, k)
    rest = np.flatnonzero(zero)
    first = np.flatnonzero(~zero)
    return np.concatenate([first[_largest(key[first], positive)],
                           rest[_largest(g[rest], k - positive)]])


def _largest(key: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` largest ``key``, largest first, equal keys by lower position:
    a partition then a sort of the ``k`` only (O(n + k log k))."""
    if k == 0:
        return np.empty(0, dtype=np.int64)
    if k < key.size:
        threshold = key[np.argpartition(key, key.size - k)[key.size - k:]].min()
        above = np.flatnonzero(key > threshold)
        chosen = np.concatenate([above, np.flatnonzero(key == threshold)[:k - above.size]])
    else:
        chosen = np.arange(key.size)
    return chosen[np.lexsort((chosen, -key[chosen]))]


def inner_params(inner: registry.Strategy, text: str) -> dict:
    """The inner strategy's resolved parameters from the JSON object ``text``."""
    field = "params.score_params"
    try:
        given = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError as error:
        raise InvalidInput(f"{field} is not JSON: {error}", field=field) from None
    if not isinstance(given, dict):
        raise InvalidInput(f"{field} must be a JSON object of {inner.name!r}'s parameters",
                           field=field)
    own = {p.name for p in inner.params}
    unknown = sorted(set(given) - own)
    if unknown:
        raise InvalidInput(f"{field}: strategy {inner.name!r} has no parameter {unknown[0]!r}; "
                           f"allowed: {', '.join(sorted(own)) or 'none'}",
                           field=f"{field}.{unknown[0]}")
    try:
        return registry.resolve_params(inner, given)
    except InvalidInput as error:
        name = (error.field or "").removeprefix("params.")
        raise InvalidInput(f"{error.message} (in {field}, for {inner.name!r})",
                           field=f"{field}.{name}" if name else field) from None


def stochastic(inputs: Inputs, budget: int, params: dict, ctx: Context) -> Selection:
    """Sample the batch from the distribution of the inner score over the candidates.

    Indices are in draw order; scores are the inner strategy's scores of the picks.
    """
    if params["beta"] <= 0:
        raise InvalidInput(f"params.beta must be > 0, got {params['beta']}", field="params.beta")
    inner = score_strategy(params["score"], "params.score")
    missing = [r for r in inner.required if r not in inputs]
    if missing:
        raise InvalidInput(f"params.score {inner.name!r} needs input {missing[0]!r}",
                           field=f"inputs.{missing[0]}", reason="MISSING_INPUT")
    resolved = inner_params(inner, params["score_params"])
    scores = np.asarray(inner.fn(inputs, resolved, ctx), dtype=np.float64)
    ctx.check_cancelled()
    cand = ctx.candidates
    picks = cand[gumbel_top_k(log_weights(scores[cand], params["mode"], params["beta"]),
                              budget, ctx.rng)]
    return Selection(indices=picks, scores=scores[picks])


register(Strategy(
    name="stochastic",
    kind="batch",
    fn=stochastic,
    required=(),
    optional=("probs", "samples", "embeddings", "scores", "loss", "discriminator",
              "predictions", "target_samples"),
    description="Stochastic batch acquisition (Kirsch et al. 2023): the batch sampled without "
                "replacement (Gumbel-top-k, seeded) from softmax(beta s), s^beta or "
                "rank^-beta of any score strategy's scores s.",
    params=(
        Param("score", str, "bald", "Score strategy whose scores are sampled from."),
        Param("mode", str, "softmax",
              "Distribution: softmax exp(beta s), power s^beta (scores >= 0), softrank "
              "rank^-beta.", choices=MODES),
        Param("beta", float, 1.0, "Inverse temperature beta > 0 (baal's 1 / temperature).",
              minimum=0.0),
        Param("score_params", str, "",
              "Parameters of the score strategy, as a JSON object (e.g. {\"target_size\": "
              "500}); empty for its defaults."),
    ),
))
