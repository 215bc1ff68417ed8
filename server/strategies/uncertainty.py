"""Uncertainty sampling on one model's class probabilities ``probs: float[N, C]``.

Scores are computed in float64 whatever the input precision, so rankings agree
with a float64 reference exactly, not just up to rounding. For a Select, the
``*_top`` shortlists find the top-b without all N float64 scores: least confident
and margin cost no more exactly than approximately (one pass, then only the
candidates at or above the b-th score are kept); entropy is scored in float32
with a polynomial log first and only the candidates within its proven error of
the b-th score are rescored in float64 (``assay.kernels.topscores``).
"""

from __future__ import annotations

import numpy as np
from scipy.special import entr

from assay.kernels import rowwise, topscores

from .registry import Context, Inputs, Strategy, register


def probs64(inputs: Inputs, name: str = "probs") -> np.ndarray:
    """The probabilities as float64, clipped into [0, 1] (inputs were checked within tolerance)."""
    return np.clip(np.asarray(inputs[name], dtype=np.float64), 0.0, 1.0)


def entropy(p: np.ndarray, axis: int = -1) -> np.ndarray:
    """Shannon entropy in nats along ``axis``, with 0 log 0 = 0."""
    return entr(p).sum(axis=axis)


def _rows(inputs: Inputs) -> np.ndarray | None:
    """The probabilities as kernel rows when they are float32/float64, else None."""
    p = inputs["probs"]
    return rowwise.as_rows(p) if rowwise.compiled(p) else None


def _fused(inputs: Inputs, kernel: str) -> np.ndarray | None:
    """The compiled one-pass score for float32/float64 probabilities, else None."""
    p = _rows(inputs)
    return None if p is None else rowwise.run(kernel, p)


def exact_top(scores: np.ndarray, budget: int, ctx: Context) -> tuple[np.ndarray, np.ndarray]:
    """The shortlist of already exact float64 ``scores``: the candidates at or
    above the ``budget``-th best, without sorting or copying all N."""
    items = topscores.shortlist(scores, 0.0, budget, ctx.selectable)
    return items, scores[items]


def _top(inputs: Inputs, kind: str, kernel: str, budget: int, ctx: Context):
    """The shortlist of score ``kind``: ``topscores.top_items``, rescored by the
    strategy's own float64 row kernel ``kernel`` (None for 16-bit input)."""
    p = _rows(inputs)
    if p is None:
        return None
    items = topscores.top_items(kind, p, budget, ctx.selectable)
    return items, rowwise.run(kernel, rowwise.as_rows(p[items]))


def least_confident(inputs: Inputs, params: dict, ctx: Context) -> np.ndarray:
    """1 - max_y P(y|x) (Settles 2010)."""
    fused = _fused(inputs, "least_confident_rows")
    return fused if fused is not None else 1.0 - probs64(inputs).max(axis=1)


def least_confident_top(inputs: Inputs, params: dict, ctx: Context, budget: int):
    """The top-``budget`` shortlist of ``least_confident`` (None for 16-bit input)."""
    return _top(inputs, "least_confident", "least_confident_rows", budget, ctx)


def margin(inputs: Inputs, params: dict, ctx: Context) -> np.ndarray:
    """-(P(y1|x) - P(y2|x)) for the two most likely classes (Scheffer 2001)."""
    fused = _fused(inputs, "margin_rows")
    if fused is not None:
        return fused
    p = probs64(inputs)
    top2 = np.partition(p, p.shape[1] - 2, axis=1)[:, -2:]
    return -(top2[:, 1] - top2[:, 0])


def margin_top(inputs: Inputs, params: dict, ctx: Context, budget: int):
    """The top-``budget`` shortlist of ``margin`` (None for 16-bit input)."""
    return _top(inputs, "margin", "margin_rows", budget, ctx)


def entropy_score(inputs: Inputs, params: dict, ctx: Context) -> np.ndarray:
    """-sum_y P(y|x) log P(y|x) (Shannon; Settles 2010)."""
    fused = _fused(inputs, "entropy_rows")
    return fused if fused is not None else entropy(probs64(inputs))


def entropy_top(inputs: Inputs, params: dict, ctx: Context, budget: int):
    """The top-``budget`` shortlist of ``entropy_score``: a float32 first pass, then
    ``entropy_rows`` (the float64 kernel of ``entropy_score``) on the candidates
    within the first pass's error bound of the ``budget``-th (None for 16-bit input)."""
    return _top(inputs, "entropy", "entropy_rows", budget, ctx)


register(Strategy("least_confident", "score", least_confident, ("probs",),
                  "1 - max_y P(y|x): least confident prediction first (Settles 2010).",
                  shortlist=least_confident_top))
register(Strategy("margin", "score", margin, ("probs",),
                  "Smallest gap between the two most likely classes first (Scheffer 2001).",
                  min_classes=2, shortlist=margin_top))
register(Strategy("entropy", "score", entropy_score, ("probs",),
                  "Highest predictive entropy first (Shannon; Settles 2010).",
                  shortlist=entropy_top))
