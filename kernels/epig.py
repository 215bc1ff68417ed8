"""EPIG, the expected predictive information gain (Bickford Smith et al. 2023), on CPU.

For pool item i and target item j, with S parameter samples,

    p_ij(a, b) = (1/S) sum_s P[s, i, a] Q[s, j, b]

is the joint predictive of (y_i, y*_j), and

    EPIG(i) = H[p_i] + (1/M) sum_j H[q_j] - (1/M) sum_j H[p_ij].

The cost is O(N M S C^2) multiply-adds and O(N M C^2) logarithms. The compiled
kernel fuses both: each pair's C x C joint lives in registers and is never stored,
so memory is the float64 copies of one block of candidates and one block of target
items ([rows, C, S] each), whatever N and M are.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from numba import prange
from scipy.special import entr

from .jit import kernel

#: float64 values of one block of pool rows (and of target rows) copied at a time.
BLOCK_VALUES = 1 << 20
#: float64 values of one block of target rows: kept small so a block stays in cache
#: while every candidate of the pool block streams over it.
TARGET_BLOCK_VALUES = 1 << 15


@kernel(parallel=True, nogil=True, fastmath=True)
def _joint_entropy_sums(p, q, out):
    """out[i] += sum_j H[p_ij] for p [n, C, S], q [m, C, S] (float64, rows = items)."""
    n, c, s = p.shape
    m = q.shape[0]
    inv = 1.0 / s
    for i in prange(n):
        acc = 0.0
        for j in range(m):
            for a in range(c):
                for b in range(c):
                    dot = 0.0
                    for k in range(s):
                        dot += p[i, a, k] * q[j, b, k]
                    v = dot * inv
                    if v > 0.0:
                        acc -= v * math.log(v)
        out[i] += acc


def _rows(samples: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """float64 [len(rows), C, S]: the items ``rows`` of ``samples`` [S, N, C], items first."""
    block = np.asarray(samples[:, rows], dtype=np.float64)
    return np.ascontiguousarray(np.clip(block, 0.0, 1.0).transpose(1, 2, 0))


def marginal_entropy(samples: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """float64: H[(1/S) sum_s P[s, i, :]] of the items ``rows`` (all when None)."""
    x = samples if rows is None else samples[:, rows]
    mean = np.clip(np.asarray(x, dtype=np.float64), 0.0, 1.0).mean(axis=0)
    return entr(mean).sum(axis=-1)


def epig_scores(samples: np.ndarray, target: np.ndarray, rows: np.ndarray, *,
                check_cancelled: Callable[[], None] = lambda: None,
                block_values: int = BLOCK_VALUES,
                target_block_values: int = TARGET_BLOCK_VALUES) -> np.ndarray:
    """EPIG of the pool items ``rows`` about the target, float64[len(rows)].

    Parameters
    ----------
    samples : [S, N, C] class probabilities of the pool under S parameter samples.
    target : [S, M, C] the same S parameter samples' probabilities on the target items.
    rows : int64 indices of the pool items to score.
    check_cancelled : called between blocks.
    block_values, target_block_values : float64 values per copied block (memory bound).
    """
    s, _, c = samples.shape
    m = target.shape[1]
    rows = np.asarray(rows, dtype=np.int64)
    joint = np.zeros(rows.size, dtype=np.float64)
    per_pool = max(1, block_values // (s * c))
    per_target = max(1, target_block_values // (s * c))
    for t0 in range(0, m, per_target):
        q = _rows(target, np.arange(t0, min(m, t0 + per_target)))
        for p0 in range(0, rows.size, per_pool):
            check_cancelled()
            p = _rows(samples, rows[p0:p0 + per_pool])
            _joint_entropy_sums(p, q, joint[p0:p0 + per_pool])
    target_entropy = float(marginal_entropy(target).mean())
    return marginal_entropy(samples, rows) + target_entropy - joint / m
