"""Facility location / max-cover greedy on cosine similarity (Suggestive Annotation).

F(S) = sum_{u in U} max_{s in S} cos(h_s, h_u), with max over the empty set taken
as -1 (the least cosine), so every step adds argmax_x F(S + x) - F(S) exactly as the
definition does. F is monotone submodular, so lazy greedy (Minoux) re-evaluates a
candidate only when its stale gain still tops the heap, and returns the identical
picks as plain greedy: ties go to the lower candidate in both.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass

import numba
import numpy as np

from . import _validate, config
from ._facility_cpu import kernels as cpu_kernels
from .bits import storage


@dataclass
class FacilityResult:
    """Picks of facility-location greedy.

    Attributes
    ----------
    indices : int64[b]
        Pool rows in pick order.
    gains : float64[b]
        Marginal gain F(S + x) - F(S) of each pick (the first against the -1 baseline).
    evaluations : int
        Gain evaluations (passes over the universe) used; plain greedy needs
        about b * |candidates|.
    backend : str
    """

    indices: np.ndarray
    gains: np.ndarray
    evaluations: int
    backend: str


def facility_location_greedy(
    embeddings: np.ndarray,
    budget: int,
    *,
    candidates: np.ndarray | None = None,
    universe: np.ndarray | None = None,
    lazy: bool = True,
    check_cancelled: Callable[[], None] | None = None,
) -> FacilityResult:
    """Greedy max-cover of ``universe`` by ``budget`` of the ``candidates``.

    Parameters
    ----------
    embeddings : float [N, d]
        The pool (any float dtype); cosine similarity, zero rows similar to nothing.
    budget : int
        Picks, 1 <= budget <= number of candidates.
    candidates : int64[K], optional
        Sorted unique rows that may be picked (all rows when None).
    universe : int64[U], optional
        Sorted unique rows to cover (all rows when None).
    lazy : bool
        Lazy greedy (default) or plain greedy; both give the same picks.
    check_cancelled : callable, optional
        Called between picks.
    """
    x = _validate.matrix(embeddings, "embeddings")
    n = x.shape[0]
    cand, _ = _validate.candidates(candidates, n)
    uni, _ = _validate.candidates(universe, n)
    b = _validate.budget(budget, cand.size)
    _validate.bounded(x, "embeddings")  # float64 storage: squared norms must stay finite
    check = check_cancelled or (lambda: None)
    view, kind = storage(x)
    k = cpu_kernels(kind)
    inv_u = np.empty(uni.size)
    inv_c = np.empty(cand.size)
    with config.parallel_section():
        k.inv_norms(view, uni, inv_u)
        k.inv_norms(view, cand, inv_c)
    cover = np.full(uni.size, -1.0)
    sims = np.empty(uni.size)
    partial = np.empty(max(1, numba.get_num_threads() * config.CHUNKS_PER_THREAD))
    evaluations = 0

    def evaluate(pos: int) -> float:
        nonlocal evaluations
        evaluations += 1
        centre = np.asarray(x[cand[pos]], dtype=np.float64) * inv_c[pos]
        with config.parallel_section():
            return float(k.gain(view, uni, inv_u, centre, cover, sims, partial))

    picks = np.empty(b, dtype=np.int64)
    gains = np.empty(b)
    if lazy:
        heap = [(-evaluate(i), i) for i in range(cand.size)]
        heapq.heapify(heap)
        for s in range(b):
            check()
            while True:
                _, i = heapq.heappop(heap)
                g = evaluate(i)  # fresh gain; leaves this candidate's similarities in sims
                if not heap or (-g, i) <= heap[0]:
                    break
                heapq.heappush(heap, (-g, i))
            picks[s], gains[s] = cand[i], g
            np.maximum(cover, sims, out=cover)
    else:
        taken = np.zeros(cand.size, dtype=bool)
        for s in range(b):
            check()
            best, arg = -np.inf, -1
            for i in range(cand.size):
                if not taken[i]:
                    g = evaluate(i)
                    if g > best:
                        best, arg = g, i
            evaluate(arg)
            taken[arg] = True
            picks[s], gains[s] = cand[arg], best
            np.maximum(cover, sims, out=cover)
    return FacilityResult(indices=picks, gains=gains, evaluations=evaluations,
                          backend="numba-cpu")
