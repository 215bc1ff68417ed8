"""BADGE (Ash et al. 2020): k-means++ seeding on gradient embeddings, never materialized.

The gradient embedding of x is g_x = (p_x - e_yhat) (x) h_x with yhat = argmax p_x.
The first pick is argmax |g_x|; each next pick is drawn with probability
proportional to D(x)^2, D the distance to the nearest pick so far (the reference
``init_centers`` draws by inverse CDF from one uniform per pick, and so does this:
same seed, same picks, on every backend up to float rounding of the sums).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from assay.vocab.errors import InvalidInput

from . import _validate, config, dispatch
from ._badge_cpu import kernels as cpu_kernels
from .bits import compute_dtype, rows_compute, storage

BACKENDS = (dispatch.NUMBA_CPU, dispatch.NUMBA_CUDA)


@dataclass
class BadgeResult:
    """Picks of BADGE's k-means++ seeding.

    Attributes
    ----------
    indices : int64[b]
        Pool rows in pick order.
    distances : float64[b]
        Gradient-embedding distance of each pick to its nearest earlier pick when it
        was drawn; the first entry is the first pick's gradient norm.
    backend : str
        Backend that ran the passes.
    """

    indices: np.ndarray
    distances: np.ndarray
    backend: str


class CpuBadge:
    """Running D^2 on the host, Numba CPU passes."""

    name = dispatch.NUMBA_CPU

    def __init__(self, h: np.ndarray, kind: str, rows: np.ndarray, identity: bool,
                 q: np.ndarray):
        self.h, self.rows, self.identity, self.q = h, rows, identity, q
        self.k = cpu_kernels(kind)
        self.gnorm = np.empty(0)
        self.d2 = np.full(rows.size, np.inf)

    def norms(self, qnorm: np.ndarray) -> np.ndarray:
        hn = np.empty(self.rows.size, dtype=self.q.dtype)
        with config.parallel_section():
            self.k.sqnorms(self.h, self.rows, self.identity, hn)
        self.gnorm = qnorm * hn.astype(np.float64)
        return self.gnorm

    def step(self, hz: np.ndarray, qz: np.ndarray, gz: float) -> np.ndarray:
        with config.parallel_section():
            self.k.step(self.h, self.rows, self.identity, self.q, self.gnorm, hz, qz, gz,
                        self.d2)
        return self.d2

    def mark(self, pos: int) -> None:
        self.d2[pos] = 0.0


def gradient_factors(probs: np.ndarray, rows: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """q = p - e_argmax(p) for the candidate rows, [M, C] (argmax ties: lower class)."""
    p = np.asarray(probs)[rows].astype(dtype)
    p[np.arange(rows.size), np.argmax(p, axis=1)] -= 1.0
    return np.ascontiguousarray(p)


def draw(d2: np.ndarray, u: float) -> int:
    """Inverse-CDF draw from weights ``d2`` with one uniform ``u`` in [0, 1).

    The first position whose cumulative probability reaches ``u`` (as scipy's
    ``rv_discrete`` does); -1 when every weight is zero (every candidate coincides
    with a pick).
    """
    total = d2.sum()
    if not total > 0.0:
        return -1
    cdf = np.cumsum(d2 / total)
    pos = int(np.searchsorted(cdf, u, side="left"))
    if pos >= d2.size or d2[pos] == 0.0:  # rounding at the ends: nearest positive weight
        positive = np.flatnonzero(d2 > 0.0)
        pos = int(positive[min(np.searchsorted(positive, pos), positive.size - 1)])
    return pos


def badge_kmeanspp(
    probs: np.ndarray,
    embeddings: np.ndarray,
    budget: int,
    *,
    candidates: np.ndarray | None = None,
    rng: np.random.Generator | None = None,
    check_cancelled: Callable[[], None] | None = None,
    backend: str = dispatch.AUTO,
) -> BadgeResult:
    """k-means++ seeding of ``budget`` candidates on gradient embeddings.

    Parameters
    ----------
    probs : float [N, C]
        Class probabilities; yhat = argmax (ties to the lower class).
    embeddings : float32/float64/float16/bfloat16 [N, d]
        Penultimate-layer embeddings; read in place.
    budget : int
        Picks, 1 <= budget <= number of candidates.
    candidates : int64[M], optional
        Sorted unique selectable rows.
    rng : Generator, optional
        One uniform per pick after the first.
    check_cancelled : callable, optional
        Called between steps.
    backend : str
        ``auto``, ``numba-cpu`` or ``numba-cuda``.

    Returns
    -------
    BadgeResult. When every remaining candidate coincides with a pick (all D = 0),
    the remaining picks are the lowest unpicked rows.
    """
    h = _validate.matrix(embeddings, "embeddings")
    p = _validate.matrix(probs, "probs")
    if p.shape[0] != h.shape[0]:
        raise InvalidInput(f"probs has {p.shape[0]} rows, embeddings {h.shape[0]}",
                           field="probs")
    rows, identity = _validate.candidates(candidates, h.shape[0])
    b = _validate.budget(budget, rows.size)
    _validate.bounded(h, "embeddings")
    gen = rng if rng is not None else np.random.default_rng()
    check = check_cancelled or (lambda: None)
    chosen_backend = dispatch.choose(backend, BACKENDS, rows.size * h.shape[1])
    view, kind = storage(h)
    q = gradient_factors(p, rows, compute_dtype(h))
    qnorm = (q.astype(np.float64) ** 2).sum(axis=1)
    if chosen_backend == dispatch.NUMBA_CUDA:
        from ._badge_cuda import CudaBadge

        runner = CudaBadge(view, kind, rows, identity, q)
    else:
        runner = CpuBadge(view, kind, rows, identity, q)
    gnorm = runner.norms(qnorm)
    pos = int(np.argmax(gnorm))
    picks = np.empty(b, dtype=np.int64)
    dists = np.empty(b, dtype=np.float64)
    picked = np.zeros(rows.size, dtype=bool)
    dists[0] = np.sqrt(max(gnorm[pos], 0.0))
    for s in range(b):
        if s > 0:
            check()
            d2 = runner.step(rows_compute(h, rows[pos]), q[pos], float(gnorm[pos]))
            nxt = draw(d2, float(gen.random()))
            if nxt < 0:
                nxt = int(np.flatnonzero(~picked)[0])
            pos = nxt
            dists[s] = np.sqrt(max(d2[pos], 0.0))
        picks[s] = rows[pos]
        picked[pos] = True
        runner.mark(pos)
    return BadgeResult(indices=picks, distances=dists, backend=dispatch.report_name(runner.name))
