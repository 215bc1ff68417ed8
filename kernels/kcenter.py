"""k-center greedy (core-set, Sener & Savarese 2018) over a pool of embeddings.

Delta(x) = min over centres c of |h_x - h_c|^2; each greedy step picks
u = argmax Delta and folds |h_x - h_u|^2 into Delta. The labeled set, when given,
supplies the initial centres: a fused pass when it is small, a FAISS exact search
(BLAS) when it is large. Every step is ONE pass over the candidate rows: distance
to the newest centre, running minimum and argmax fused, so a step costs the bytes
of the pool once (half of them for float16/bfloat16 storage).

On the CPU the pass is pruned by default: rows grouped by nearest centre, and every
group the triangle inequality proves unaffected by the new centre is not read at
all (``_kcenter_pruned``). The picks are identical; on clustered embeddings a step
then reads a small fraction of the pool.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numba
import numpy as np

from assay.vocab.errors import InvalidInput

from . import _validate, config, dispatch
from ._kcenter_cpu import kernels as cpu_kernels
from ._kcenter_pruned import PrunedStepper
from .bits import compute_dtype, rows_compute, rows_float32, storage

#: Backends of the k-center steps (FAISS serves only the large-labeled-set start).
BACKENDS = (dispatch.NUMBA_CPU, dispatch.NUMBA_CUDA)

#: Value held by chosen items: below any distance, so they never win again.
CHOSEN = -1.0


@dataclass
class KCenterResult:
    """Picks of k-center greedy.

    Attributes
    ----------
    indices : int64[b]
        Pool rows in pick order.
    distances : float64[b]
        Distance of each pick to its nearest earlier centre at pick time (+inf for a
        random first centre when there is no labeled set).
    radius : float
        Covering radius after the last pick: the largest distance of any candidate
        to its nearest centre (0 when every candidate was picked).
    backend : str
        Backend of the greedy steps, ``+faiss-cpu`` appended when FAISS computed the
        initial distances.
    rows_read : int64[b]
        Candidate rows each step's pass read (all of them without pruning): the
        measure of what pruning saved.
    """

    indices: np.ndarray
    distances: np.ndarray
    radius: float
    backend: str
    rows_read: np.ndarray


class CpuStepper:
    """Holds the running minimum on the host and runs the Numba CPU passes."""

    name = dispatch.NUMBA_CPU

    def __init__(self, x: np.ndarray, kind: str, rows: np.ndarray, identity: bool):
        self.x, self.rows, self.identity = x, rows, identity
        self.k = cpu_kernels(kind)
        self.delta = np.full(rows.size, np.inf, dtype=np.float32)
        nchunks = max(1, min(rows.size, numba.get_num_threads() * config.CHUNKS_PER_THREAD))
        self.best_val = np.empty(nchunks, dtype=np.float32)
        self.best_pos = np.empty(nchunks, dtype=np.int64)

    def init(self, centres: np.ndarray) -> tuple[float, int]:
        with config.parallel_section():
            v, p = self.k.init(self.x, self.rows, self.identity, centres, self.delta,
                               self.best_val, self.best_pos)
        return float(v), int(p)

    def load(self, delta: np.ndarray) -> tuple[float, int]:
        self.delta[:] = delta
        p = int(np.argmax(self.delta))
        return float(self.delta[p]), p

    def step(self, centre: np.ndarray) -> tuple[float, int]:
        with config.parallel_section():
            v, p = self.k.step(self.x, self.rows, self.identity, centre, self.delta,
                               self.best_val, self.best_pos)
        return float(v), int(p)

    def mark(self, pos: int) -> None:
        self.delta[pos] = CHOSEN


class Stepper(Protocol):
    """What ``kcenter_greedy`` and a shard drive: ``CpuStepper``, ``PrunedStepper`` or
    the CUDA stepper. Each holds Delta over its candidate rows and every call answers
    the new (max Delta, its position), ties to the lower position."""

    name: str

    def init(self, centres: np.ndarray) -> tuple[float, int]:
        """Delta to a small set of initial centres."""

    def step(self, centre: np.ndarray) -> tuple[float, int]:
        """Fold one more centre into Delta (any number of times, one at a time)."""

    def mark(self, pos: int) -> None:
        """Retire a pick: it never wins again."""


def make_stepper(x: np.ndarray, rows: np.ndarray, identity: bool, *, initial: int = 0,
                 budget: int = 0, backend: str = dispatch.AUTO, prune: bool = True) -> Stepper:
    """The stepper ``kcenter_greedy`` runs over these candidate rows.

    Parameters
    ----------
    x : float32/float64/float16/bfloat16 [N, d]
        The pool, validated (``kcenter_greedy`` checks it; a shard holds checked rows).
    rows : int64[M]
        Sorted unique candidate rows; ``identity`` when they are all of [0, N).
    initial : int
        Number of initial (labeled) centres, 0 for none.
    budget : int
        Steps to come: sizes the pruned stepper's centre tables (they grow past it).
    backend : str
        ``auto``, ``numba-cpu`` or ``numba-cuda``.
    prune : bool
        On the CPU, the pruned stepper (the same picks; far fewer rows read on
        clustered embeddings) rather than the plain fused pass.
    """
    chosen = dispatch.choose(backend, BACKENDS, rows.size * x.shape[1])
    view, kind = storage(x)
    if chosen == dispatch.NUMBA_CUDA:
        from ._kcenter_cuda import CudaStepper

        return CudaStepper(view, kind, rows, identity)
    if prune:
        return PrunedStepper(view, kind, rows, identity, initial, budget, compute_dtype(x))
    return CpuStepper(view, kind, rows, identity)


def start_stepper(stepper: Stepper, x: np.ndarray, rows: np.ndarray,
          centres: np.ndarray) -> tuple[float, int, bool]:
    """Fold a non-empty set of initial centres into a fresh stepper: the fused pass
    when the set is small, FAISS exact search when it is large (and FAISS is here).

    Returns (max Delta, its position, whether FAISS computed the distances).
    """
    if centres.shape[0] >= config.FAISS_LABELED_MIN and dispatch.faiss_available():
        dist, nearest = _faiss_nearest(x, rows, centres)
        if isinstance(stepper, PrunedStepper):
            top, pos = stepper.load(dist, nearest, rows_compute(centres, slice(None)))
        else:
            top, pos = stepper.load(dist)
        return top, pos, True
    top, pos = stepper.init(np.asarray(centres, dtype=rows_compute(x, 0).dtype))
    return top, pos, False


def kcenter_greedy(
    embeddings: np.ndarray,
    budget: int,
    *,
    labeled: np.ndarray | None = None,
    candidates: np.ndarray | None = None,
    rng: np.random.Generator | None = None,
    check_cancelled: Callable[[], None] | None = None,
    backend: str = dispatch.AUTO,
    prune: bool = True,
) -> KCenterResult:
    """Greedy k-center selection of ``budget`` candidate rows.

    Parameters
    ----------
    embeddings : float32/float64/float16/bfloat16 [N, d]
        The pool; read in place (16-bit storage is widened in registers).
    budget : int
        Picks, 1 <= budget <= number of candidates.
    labeled : float [L, d], optional
        Embeddings of already-labeled items: the initial centres. Empty or None
        means the first centre is a seeded-random candidate.
    candidates : int64[M], optional
        Sorted unique rows that may be picked (and whose distances matter).
    rng : Generator, optional
        Draws the random first centre when there is no labeled set.
    check_cancelled : callable, optional
        Called between steps; raising from it stops the selection within one step.
    backend : str
        ``auto``, ``numba-cpu`` or ``numba-cuda``.
    prune : bool
        Skip, on the CPU, the rows the triangle inequality proves unaffected by a
        step (exact: the same picks). The CUDA passes always read every row.

    Returns
    -------
    KCenterResult. Exact ties in distance go to the lower row.
    """
    x = _validate.matrix(embeddings, "embeddings")
    n, d = x.shape
    rows, identity = _validate.candidates(candidates, n)
    b = _validate.budget(budget, rows.size)
    _validate.bounded(x, "embeddings")
    centres = None
    if labeled is not None and np.asarray(labeled).shape[0] > 0:
        lab = _validate.matrix(labeled, "labeled_embeddings")
        if lab.shape[1] != d:
            raise InvalidInput(f"labeled_embeddings has width {lab.shape[1]}, the pool {d}",
                               field="labeled_embeddings")
        centres = _validate.bounded(lab, "labeled_embeddings")
    check = check_cancelled or (lambda: None)
    stepper = make_stepper(x, rows, identity, initial=0 if centres is None else centres.shape[0],
                           budget=b, backend=backend, prune=prune)
    name = dispatch.report_name(stepper.name)
    if centres is None:
        gen = rng if rng is not None else np.random.default_rng()
        top, pos = np.inf, int(gen.integers(rows.size))
    else:
        top, pos, by_faiss = start_stepper(stepper, x, rows, centres)
        name += "+faiss-cpu" if by_faiss else ""
    picks = np.empty(b, dtype=np.int64)
    dists = np.empty(b, dtype=np.float64)
    for s in range(b):
        check()
        picks[s] = rows[pos]
        dists[s] = np.sqrt(max(top, 0.0))
        stepper.mark(pos)
        top, pos = stepper.step(rows_compute(x, rows[pos]))
    radius = float(np.sqrt(max(top, 0.0))) if pos >= 0 else 0.0
    read = (np.asarray(stepper.read, dtype=np.int64) if isinstance(stepper, PrunedStepper)
            else np.full(b, rows.size, dtype=np.int64))
    return KCenterResult(indices=picks, distances=dists, radius=radius, backend=name,
                         rows_read=read)


def _faiss_nearest(x: np.ndarray, rows: np.ndarray,
                   centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Squared distance of each candidate to its nearest centre, and that centre, by
    FAISS exact search: float32[M] and int64[M].

    FAISS computes |x|^2 + |c|^2 - 2 x.c with BLAS, so near-duplicates may come out a
    few ulps from zero (clamped at 0); rows are widened to float32 block by block.
    """
    import faiss

    index = faiss.IndexFlatL2(x.shape[1])
    index.add(rows_float32(centres, slice(None)))
    out = np.empty(rows.size, dtype=np.float32)
    nearest = np.empty(rows.size, dtype=np.int64)
    step = config.FAISS_BLOCK_ROWS
    for lo in range(0, rows.size, step):
        block = rows_float32(x, rows[lo:lo + step])
        dist, idx = index.search(block, 1)
        out[lo:lo + step] = np.maximum(dist[:, 0], 0.0)
        nearest[lo:lo + step] = idx[:, 0]
    return out, nearest
