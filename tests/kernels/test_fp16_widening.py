"""float16 storage is widened exactly on every code-generation target.

With F16C the loader is LLVM's ``fpext half``; for a target without it (Numba told to
generate baseline x86-64 code, ``NUMBA_CPU_NAME=generic``, as the container images
do for a portable kernel cache) LLVM would call ``__extendhfsf2``, which Numba's JIT
does not link, and the process aborted. Each target runs in a fresh interpreter,
since Numba reads the CPU name once.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

_CHECK = r"""
import numpy as np
from numba import njit
from assay.kernels import jit
jit.configure("")
from assay.kernels.bits import load_fp16

@njit
def widen(bits):
    out = np.empty(bits.shape[0], np.float32)
    for i in range(bits.shape[0]):
        out[i] = load_fp16(bits[i])
    return out

bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
got = widen(bits)
ref = bits.view(np.float16).astype(np.float32)  # NumPy's own conversion: the reference
same = (got.view(np.uint32) == ref.view(np.uint32)) | (np.isnan(got) & np.isnan(ref))
bad = np.flatnonzero(~same)
print("MISMATCHES", bad.size, [hex(int(b)) for b in bad[:5]])
"""


@pytest.mark.parametrize("cpu", ["host", "generic"])
def test_every_half_bit_pattern_widens_exactly(cpu):
    env = dict(os.environ)
    env.pop("NUMBA_CPU_NAME", None)
    env.pop("NUMBA_CPU_FEATURES", None)
    if cpu != "host":
        env["NUMBA_CPU_NAME"] = cpu
    done = subprocess.run([sys.executable, "-c", _CHECK], capture_output=True, text=True,
                          env=env, timeout=600)
    assert done.returncode == 0, f"NUMBA_CPU_NAME={cpu}: exit {done.returncode}\n" \
                                 f"{done.stderr[-2000:]}"
    assert "MISMATCHES 0 []" in done.stdout, f"NUMBA_CPU_NAME={cpu}: {done.stdout}"
