"""The on-disk kernel cache (``assay.kernels.jit``): a new process loads what an
earlier one compiled, including kernels built by a factory per storage kind, and
never hands one variant another's machine code.

Numba's own ``cache=True`` keys a closure on a pickle of its captured dispatchers,
which holds a random per-process id: it never hit, and every process added a file.
It also gives a serial and a ``parallel=True`` twin of one function the same key.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

_MODULE = '''
from numba import prange
from assay.kernels.bits import LOADERS
from assay.kernels.jit import kernel


def _build(load):
    @kernel(nogil=True)
    def total(x):
        s = 0.0
        for i in range(x.shape[0]):
            s += load(x[i])
        return s
    return total


def plain(x):
    s = 0.0
    for i in prange(x.shape[0]):
        s += x[i]
    return s


serial = kernel(nogil=True)(plain)
parallel = kernel(parallel=True, nogil=True)(plain)
KERNELS = {kind: _build(load) for kind, load in LOADERS.items()}
'''

_RUN = '''
import json, sys
import numpy as np
from assay.kernels import jit
jit.configure(sys.argv[1])
import cachedmod as m

bits = np.array(sys.argv[2].split(","), dtype=np.uint16)
out = {"float": m.KERNELS["float"](bits.astype(np.float32)),
       "fp16": m.KERNELS["fp16"](bits), "bf16": m.KERNELS["bf16"](bits),
       "serial": m.serial(bits.astype(np.float64)),
       "parallel": m.parallel(bits.astype(np.float64))}
hits, compiles = jit.stats()
print(json.dumps({"values": out, "hits": hits, "compiles": compiles}))
'''


def _run(tmp_path: Path, cache: Path, bits: np.ndarray) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", _RUN, str(cache), ",".join(str(int(b)) for b in bits)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_second_process_loads_every_variant_and_compiles_nothing(tmp_path):
    seed = 5
    (tmp_path / "cachedmod.py").write_text(_MODULE)
    cache = tmp_path / "cache"
    # Bit patterns that are ordinary numbers both as IEEE half and as bfloat16.
    bits = np.random.default_rng(seed).integers(0x3C00, 0x3E00, size=16).astype(np.uint16)
    first = _run(tmp_path, cache, bits)
    second = _run(tmp_path, cache, bits)

    # References from NumPy's and ml_dtypes' own conversions, summed in float64.
    import ml_dtypes
    expected = {
        "float": float(bits.astype(np.float64).sum()),
        "fp16": float(bits.view(np.float16).astype(np.float64).sum()),
        "bf16": float(bits.view(ml_dtypes.bfloat16).astype(np.float64).sum()),
    }
    expected["serial"] = expected["parallel"] = expected["float"]
    for run in (first, second):
        for name, value in expected.items():
            # float32 loads, float64 sums of 16 exact values: exact.
            assert run["values"][name] == value, (seed, name, run["values"][name], value)
    assert first["compiles"] == 5 and first["hits"] == 0, first
    assert second["compiles"] == 0 and second["hits"] == 5, second
    data = sorted(p.name for p in cache.rglob("*.nbc"))
    # One entry per variant: the three loaders of one factory (fp16 and bf16 have the
    # same signature and bytecode) and the serial and parallel twins of one function.
    assert sum(".total-" in n for n in data) == 3, data
    assert sum(".plain-" in n for n in data) == 2, data


def test_an_unwritable_cache_directory_still_runs_every_kernel(tmp_path):
    """A cache that cannot be written (a read-only image layer; here a path below a
    regular file, since the tests may run as root) costs a compile, never an error."""
    (tmp_path / "cachedmod.py").write_text(_MODULE)
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    bits = np.array([0x3C00, 0x3C01, 0x4000], dtype=np.uint16)
    done = subprocess.run(
        [sys.executable, "-c", _RUN, str(blocker / "cache"), ",".join(map(str, bits))],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-3000:]
    run = json.loads(done.stdout.strip().splitlines()[-1])
    assert run["values"]["fp16"] == float(bits.view(np.float16).astype(np.float64).sum())
    assert run["compiles"] == 5, run
    assert "is not writable" in done.stderr, done.stderr[-3000:]
