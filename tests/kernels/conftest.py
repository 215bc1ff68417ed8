"""Kernel-test setup: the naive twins, and the CUDA simulator where no GPU exists.

The CUDA tests run for real when an NVIDIA device is present; otherwise Numba's
CUDA simulator is switched on here, before anything imports ``numba.cuda`` (the
flag is read once, at that import). Collection happens before any test runs, so
the whole session then sees the simulator; ``auto`` dispatch never picks it.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import sys
from pathlib import Path

if "numba.cuda" not in sys.modules and not glob.glob("/dev/nvidia[0-9]*"):
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
    from numba.core import config as _numba_config

    _numba_config.ENABLE_CUDASIM = 1

# Load the twins under a name no other test directory can shadow.
_spec = importlib.util.spec_from_file_location("assay_naive_kernels",
                                               Path(__file__).with_name("naive.py"))
_naive = importlib.util.module_from_spec(_spec)
sys.modules["assay_naive_kernels"] = _naive
_spec.loader.exec_module(_naive)
