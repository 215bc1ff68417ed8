"""Element types of Assay's arrays and their stored names.

bfloat16 comes from ``ml_dtypes`` so it is a real NumPy dtype everywhere above
the kernels. A stored name is NumPy's little-endian dtype string (``"<f4"``), or
``"bfloat16"``, which NumPy cannot spell: pool metadata and shard segments keep
dtypes in this form.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

BFLOAT16 = np.dtype(ml_dtypes.bfloat16)


def stored_name(dtype: np.dtype) -> str:
    """The stored name of ``dtype`` (little-endian; ``"bfloat16"`` for BF16)."""
    dtype = np.dtype(dtype)
    return "bfloat16" if dtype == BFLOAT16 else dtype.newbyteorder("<").str


def from_stored(name: str) -> np.dtype:
    """The dtype a stored name stands for (inverse of ``stored_name``)."""
    return BFLOAT16 if name == "bfloat16" else np.dtype(name)
