"""Uncertainty sampling on one model's class probabilities ``probs: float[N, C]``.

Scores are computed in float64 whatever the input precision, so rankings agree
with a float64 reference exactly, not just up to rounding.
"""

from __future__ import annotations

import numpy as np
from scipy.special import entr

from assay.kernels import rowwise

from .registry import Context, Inputs, Strategy, register


def probs64(inputs: Inputs, name: str = "probs") -> np.ndarray:
    """The probabilities as float64, clipped into [0, 1] (inputs were checked within tolerance)."""
    return np.clip(np.asarray(inputs[name], dtype=np.float64), 0.0, 1.0)


def entropy(p: np.ndarray, axis: int = -1) -> np.ndarray:
    """Shannon entropy in nats along ``axis``, with 0 log 0 = 0."""
    return entr(p).sum(axis=axis)


def _fused(inputs: Inputs, kernel: str) -> np.ndarray | None:
    """The compiled one-pass score for float32/float64 probabilities, else None."""
    p = inputs["probs"]
    return rowwise.run(kernel, rowwise.as_rows(p)) if rowwise.compiled(p) else None


def least_confident(inputs: Inputs, params: dict, ctx: Context) -> np.ndarray:
    """1 - max_y P(y|x) (Settles 2010)."""
    fused = _fused(inputs, "least_confident_rows")
    return fused if fused is not None else 1.0 - probs64(inputs).max(axis=1)


def margin(inputs: Inputs, params: dict, ctx: Context) -> np.ndarray:
    """-(P(y1|x) - P(y2|x)) for the two most likely classes (Scheffer 2001)."""
    fused = _fused(inputs, "margin_rows")
    if fused is not None:
        return fused
    p = probs64(inputs)
    top2 = np.partition(p, p.shape[1] - 2, axis=1)[:, -2:]
    return -(top2[:, 1] - top2[:, 0])


def entropy_score(inputs: Inputs, params: dict, ctx: Context) -> np.ndarray:
    """-sum_y P(y|x) log P(y|x) (Shannon; Settles 2010)."""
    fused = _fused(inputs, "entropy_rows")
    return fused if fused is not None else entropy(probs64(inputs))


register(Strategy("least_confident", "score", least_confident, ("probs",),
                  "1 - max_y P(y|x): least confident prediction first (Settles 2010)."))
register(Strategy("margin", "score", margin, ("probs",),
                  "Smallest gap between the two most likely classes first (Scheffer 2001).",
                  min_classes=2))
register(Strategy("entropy", "score", entropy_score, ("probs",),
                  "Highest predictive entropy first (Shannon; Settles 2010)."))
