"""The fused per-row kernels, serial and parallel variants, against NumPy float64."""

from __future__ import annotations

import numpy as np
import pytest
import reference as ref
import seeding

from assay.kernels import rowwise


@pytest.fixture(params=[0, 1], ids=["serial", "parallel"])
def variant(request):
    return lambda name: rowwise._KERNELS[name][request.param]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n,c", [(1, 2), (57, 3), (300, 40)])
def test_scores_match_the_reference(variant, dtype, n, c):
    rng = seeding.rng()
    p = rng.dirichlet(np.full(c, 0.3), size=n).astype(dtype)
    p[n // 2] = 0.0
    p[n // 2, 0] = 1.0  # a one-hot row: 0 log 0 terms
    if n > 2:
        p[-1] = p[0]  # duplicates
    wide = p.astype(np.float64)
    np.testing.assert_allclose(variant("entropy_rows")(p), ref.entropy(wide), rtol=1e-12,
                               atol=1e-15)
    np.testing.assert_allclose(variant("least_confident_rows")(p), ref.least_confident(wide),
                               rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(variant("margin_rows")(p), ref.margin(wide), rtol=1e-12,
                               atol=1e-15)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_check_reports_the_first_row_of_each_problem(variant, dtype):
    check = variant("probability_rows_check")
    p = np.full((50, 4), 0.25, dtype=dtype)
    assert check(p, -1e-6, 1 + 1e-6, 1e-3) == (-1, -1, -1)
    p[30, 1] = np.nan
    p[12, 0] = np.inf
    p[20] = [1.5, -0.5, 0.0, 0.0]  # sums to 1 but out of range
    p[7] = [0.3, 0.3, 0.3, 0.3]  # in range, sums to 1.2
    p[40] = [0.3, 0.3, 0.3, 0.3]
    assert check(p, -1e-6, 1 + 1e-6, 1e-3) == (12, 20, 7)


def test_size_picks_the_variant():
    small = np.full((10, 2), 0.5)
    big = np.full((rowwise.PARALLEL_MIN_VALUES // 2, 2), 0.5)
    np.testing.assert_allclose(rowwise.run("entropy_rows", small), np.log(2))
    np.testing.assert_allclose(rowwise.run("entropy_rows", big)[[0, -1]], np.log(2))
