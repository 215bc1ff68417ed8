"""Compiled hot loops of Assay: Numba CPU, Numba-CUDA and FAISS behind one dispatch.

Public functions validate and prepare arrays, then call private kernels that only
compute (``_*_cpu`` with ``@njit``, ``_*_cuda`` with ``@cuda.jit``).
"""

from assay.kernels.kcenter import KCenterResult, kcenter_greedy

__all__ = ["KCenterResult", "kcenter_greedy"]
