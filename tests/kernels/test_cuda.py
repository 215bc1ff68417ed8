"""Numba-CUDA kernels against the CPU kernels and the float64 twins.

On a machine with an NVIDIA GPU these run for real; elsewhere under Numba's CUDA
simulator (switched on in this directory's conftest). A warning in the test
summary names which one ran. Threads per block are shrunk so that small inputs
still span several blocks and the cross-block reduction runs.
"""

from __future__ import annotations

import warnings

import assay_naive_kernels as naive
import ml_dtypes
import numpy as np
import pytest
import seeding
from numba import cuda

from assay.kernels import config, dispatch
from assay.kernels._cuda_common import load_bf16
from assay.kernels.badge import badge_kmeanspp
from assay.kernels.kcenter import kcenter_greedy

pytestmark = pytest.mark.cuda

DTYPES = [np.float32, np.float16, ml_dtypes.bfloat16]


@pytest.fixture(autouse=True, scope="module")
def cuda_backend():
    if not dispatch.numba_cuda_available():
        pytest.fail("neither a CUDA GPU nor the Numba CUDA simulator is available")
    name = dispatch.report_name(dispatch.NUMBA_CUDA)
    warnings.warn(f"CUDA kernel tests ran on backend {name!r}", UserWarning, stacklevel=1)
    return name


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    monkeypatch.setattr(config, "CUDA_THREADS_PER_BLOCK", 8 if dispatch.cuda_simulated() else 32)


def small_pool(rng, n, d, dtype):
    return (rng.integers(-2, 3, size=(n, d)) * 0.75).astype(dtype)  # exact, signed, ties


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: np.dtype(t).name)
@pytest.mark.parametrize("labeled_size", [0, 2])
def test_kcenter_cuda_equals_cpu_and_twin(dtype, labeled_size, cuda_backend):
    rng = seeding.rng()
    n, d = int(rng.integers(30, 90)), int(rng.integers(1, 4))
    x = small_pool(rng, n, d, dtype)
    labeled = small_pool(rng, labeled_size, d, dtype)
    cand = np.sort(rng.choice(n, size=n - 5, replace=False))
    budget = int(rng.integers(1, 6))
    seed = int(rng.integers(2**32))
    gpu = kcenter_greedy(x, budget, labeled=labeled, candidates=cand,
                         rng=np.random.default_rng(seed), backend="numba-cuda")
    cpu = kcenter_greedy(x, budget, labeled=labeled, candidates=cand,
                         rng=np.random.default_rng(seed), backend="numba-cpu")
    first = int(np.random.default_rng(seed).integers(cand.size))
    picks, dists, radius = naive.kcenter(x, budget, labeled, cand, first=first)
    assert gpu.backend == cuda_backend
    np.testing.assert_array_equal(gpu.indices, cpu.indices)
    np.testing.assert_array_equal(gpu.indices, picks)
    np.testing.assert_allclose(gpu.distances, dists, rtol=1e-6)
    assert gpu.radius == pytest.approx(radius, rel=1e-6)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: np.dtype(t).name)
def test_badge_cuda_equals_cpu_and_twin(dtype, cuda_backend):
    rng = seeding.rng()
    n, c, d = int(rng.integers(30, 80)), int(rng.integers(2, 5)), int(rng.integers(1, 4))
    p = rng.dirichlet(np.ones(c), n).astype(np.float32)
    h = small_pool(rng, n, d, dtype)
    budget = int(rng.integers(1, 6))
    seed = int(rng.integers(2**32))
    gpu = badge_kmeanspp(p, h, budget, rng=np.random.default_rng(seed), backend="numba-cuda")
    cpu = badge_kmeanspp(p, h, budget, rng=np.random.default_rng(seed), backend="numba-cpu")
    ref = naive.badge(p, h, budget, np.random.default_rng(seed))
    assert gpu.backend == cuda_backend
    np.testing.assert_array_equal(gpu.indices, cpu.indices)
    np.testing.assert_array_equal(gpu.indices, ref)
    np.testing.assert_allclose(gpu.distances, cpu.distances, rtol=1e-5)


@cuda.jit
def widen(bits, out):
    """Launched with a single thread, which widens every value."""
    for i in range(bits.shape[0]):
        out[i] = load_bf16(bits[i])


def test_bfloat16_device_widening_is_exact_for_every_finite_value():
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    values = bits.view(ml_dtypes.bfloat16).astype(np.float32)
    finite = np.isfinite(values)
    if dispatch.cuda_simulated():  # the simulator runs Python: a strided sample suffices
        finite &= np.arange(bits.size) % 61 == 0
    bits, values = bits[finite], values[finite]
    out = cuda.to_device(np.zeros(bits.size, np.float32))
    widen[1, 1](cuda.to_device(bits), out)
    np.testing.assert_array_equal(out.copy_to_host(), values)
