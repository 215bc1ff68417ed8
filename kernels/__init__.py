"""Compiled hot loops of Assay: Numba CPU, Numba-CUDA and FAISS behind one dispatch.

Public functions validate and prepare arrays, then call private kernels that only
compute (``_*_cpu`` with ``@njit``, ``_*_cuda`` with ``@cuda.jit``). ``bounded`` is
the magnitude check every geometric kernel makes, public so that uploads can be
refused with the same words before any kernel runs.
"""

from ._validate import bounded
from .badge import BadgeResult, badge_kmeanspp
from .facility import FacilityResult, facility_location_greedy
from .kcenter import KCenterResult, kcenter_greedy
from .kmeans import KMeansResult, kmeans_closest
from .knn import knn

__all__ = [
    "BadgeResult",
    "FacilityResult",
    "KCenterResult",
    "KMeansResult",
    "badge_kmeanspp",
    "bounded",
    "facility_location_greedy",
    "kcenter_greedy",
    "kmeans_closest",
    "knn",
]
