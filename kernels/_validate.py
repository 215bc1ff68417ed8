"""Argument checks shared by the public kernel functions.

Kernels never validate; these helpers turn a bad argument into an
``InvalidInput`` that names it, before any compiled code runs.
"""

from __future__ import annotations

import numpy as np

from assay.server.errors import InvalidInput


def matrix(array: np.ndarray, name: str) -> np.ndarray:
    """Require a 2-D floating array with at least one column."""
    a = np.asarray(array)
    if a.ndim != 2:
        raise InvalidInput(f"{name} must be a matrix [N, d], got shape {list(a.shape)}",
                           field=name)
    if a.shape[1] < 1:
        raise InvalidInput(f"{name} has width d = 0; embeddings need at least one column",
                           field=name)
    return a


def candidates(cand: np.ndarray | None, n: int) -> tuple[np.ndarray, bool]:
    """Sorted unique in-range candidate rows, and whether they are all of [0, n)."""
    if cand is None:
        return np.arange(n, dtype=np.int64), True
    c = np.asarray(cand, dtype=np.int64)
    if c.ndim != 1:
        raise InvalidInput("candidates must be a 1-D array of row indices", field="candidates")
    if c.size and (c.min() < 0 or c.max() >= n):
        raise InvalidInput(f"candidates must lie in [0, {n})", field="candidates")
    if c.size > 1 and not (np.diff(c) > 0).all():
        raise InvalidInput("candidates must be sorted and unique", field="candidates")
    return np.ascontiguousarray(c), c.size == n


def budget(b: int, m: int) -> int:
    """1 <= b <= m, the number of selectable items."""
    if not 1 <= int(b) <= m:
        raise InvalidInput(f"budget {b} must be between 1 and {m} (selectable items)",
                           field="budget")
    return int(b)
