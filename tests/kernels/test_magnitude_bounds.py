"""The Numba kernels' public wrappers refuse rows whose squared distances overflow float32,
and answer exactly up to that bound.

Above the bound the float32 distances become inf: k-center compares infinities and
picks by position, BADGE draws from inf weights, facility location (float64
storage) divides by an infinite norm and sees no similarity at all. None of that
aborts, so it would be silently wrong picks rather than a crash.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from assay_naive_kernels import facility_location as naive_facility
from assay_naive_kernels import kcenter as naive_kcenter
from assay_naive_kernels import kcenter_deltas

from assay.kernels import _validate
from assay.kernels.badge import badge_kmeanspp
from assay.kernels.facility import facility_location_greedy
from assay.kernels.kcenter import kcenter_greedy
from assay.vocab.errors import InvalidInput

SEED = 4242


def _rows(seed: int, n: int = 40, d: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d))


@pytest.mark.parametrize("dtype,value", [
    (np.float32, 3e19), (ml_dtypes.bfloat16, 3e19), (np.float64, 1e30), (np.float64, 1e200),
], ids=["fp32", "bf16", "fp64", "fp64-beyond-float32"])
def test_overflowing_rows_are_refused_by_every_numba_wrapper(dtype, value):
    x = _rows(SEED).astype(dtype)
    x[3, 5] = value
    probs = np.full((x.shape[0], 2), 0.5)
    calls = {
        "kcenter": lambda: kcenter_greedy(x, 3, rng=np.random.default_rng(SEED)),
        "kcenter-unpruned": lambda: kcenter_greedy(x, 3, rng=np.random.default_rng(SEED),
                                                   prune=False),
        "kcenter-labeled": lambda: kcenter_greedy(_rows(SEED).astype(np.float32), 3,
                                                  labeled=x[:5]),
        "badge": lambda: badge_kmeanspp(probs, x, 3, rng=np.random.default_rng(SEED)),
        "facility": lambda: facility_location_greedy(x, 3),
    }
    for name, call in calls.items():
        with pytest.raises(InvalidInput) as err:
            call()
        want = "labeled_embeddings" if name == "kcenter-labeled" else "embeddings"
        assert (err.value.field, err.value.reason) == (want, "VALUE_TOO_LARGE"), (SEED, name)


def test_kcenter_at_the_bound_matches_the_float64_reference():
    """Rows scaled to just inside the bound: every distance finite, picks equal to the
    float64 twin's. Steps where the twin's two largest distances lie within float32's
    rounding of each other, a relative (d + 2) 2^-24 per distance, are not compared."""
    for seed in range(SEED, SEED + 3):
        base = _rows(seed)
        d = base.shape[1]
        x = (base / np.abs(base).max() * _validate.max_abs_value(d) * (1 - 1e-6))
        x = x.astype(np.float32)
        assert np.abs(x.astype(np.float64)).max() <= _validate.max_abs_value(d), seed
        got = kcenter_greedy(x, 6, rng=np.random.default_rng(seed))
        assert np.isfinite(got.distances[1:]).all(), seed
        want, dists, _ = naive_kcenter(x, 6, first=int(got.indices[0]))
        rel = 4 * (d + 2) * 2.0**-24
        for step, (delta, picked) in enumerate(kcenter_deltas(x, want)[1:], start=1):
            top2 = np.sort(np.where(picked, -1.0, delta))[-2:]
            if top2[1] - top2[0] <= rel * top2[1]:
                break  # a near-tie: float32 may take either; later steps then differ
            assert got.indices[step] == want[step], (seed, step)
            np.testing.assert_allclose(got.distances[step], dists[step], rtol=rel,
                                       err_msg=f"seed {seed} step {step}")


def test_badge_and_facility_at_the_bound_stay_finite_and_exact():
    rng = np.random.default_rng(SEED)
    base = _rows(SEED, n=60)
    x = (base / np.abs(base).max() * _validate.max_abs_value(8) * (1 - 1e-6)).astype(np.float32)
    probs = rng.dirichlet(np.ones(3), size=60)
    r = badge_kmeanspp(probs, x, 5, rng=np.random.default_rng(SEED))
    assert np.isfinite(r.distances).all() and len(set(r.indices.tolist())) == 5, SEED
    f = facility_location_greedy(x, 4)
    want, gains = naive_facility(x, 4)
    assert f.indices.tolist() == want.tolist(), SEED
    np.testing.assert_allclose(f.gains, gains, rtol=1e-9, err_msg=f"seed {SEED}")


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16, np.float32, np.float64])
def test_largest_value_agrees_with_a_float64_abs_max(dtype):
    """The scan (bit patterns for 16-bit storage) against |x| max in float64, including
    negative zero, infinities and NaN, on seeded random rows."""
    rng = np.random.default_rng(SEED)
    for trial in range(20):
        x = (rng.normal(size=(rng.integers(1, 50), rng.integers(1, 9)))
             * 10.0 ** rng.integers(-3, 4)).astype(dtype)
        special = rng.integers(0, 5)
        if special == 1:
            x.flat[rng.integers(x.size)] = -np.inf
        elif special == 2:
            x.flat[rng.integers(x.size)] = np.nan
        elif special == 3:
            x[...] = -0.0
        want = np.abs(x.astype(np.float64)).max()
        got = _validate.largest_value(x)
        assert (got == want) or (np.isnan(got) and np.isnan(want)), (SEED, trial, got, want)
    assert _validate.largest_value(np.zeros((0, 4), dtype)) == 0.0
