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


def _row_by_row(p, lo, hi, sum_tol):
    """The check's definition, one row at a time: the first row of each kind."""
    first = [-1, -1, -1]
    for i, row in enumerate(np.asarray(p, dtype=np.float64)):
        total = 0.0
        for v in row:  # float64, in column order
            total += v
        if not np.isfinite(row).all():
            kind = 0
        elif ((row < lo) | (row > hi)).any():
            kind = 1
        elif abs(total - 1.0) > sum_tol:
            kind = 2
        else:
            continue
        if first[kind] == -1:
            first[kind] = i
    return tuple(first)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_check_at_every_position_of_a_block(variant, dtype):
    # the check tests whole blocks of rows at once: a bad row first, in the middle and
    # last in a block, in the last partial block, alone or after others of each kind
    check = variant("probability_rows_check")
    br = rowwise.CHECK_ROWS
    n, c = 2 * br + 5, 3
    bad = {0: [np.nan, 0.5, 0.5], 1: [1.5, -0.5, 0.0], 2: [0.4, 0.4, 0.4]}
    for row in (0, br // 2, br - 1, br, 2 * br + 4):
        for kind, values in bad.items():
            p = np.full((n, c), 1 / 3, dtype=dtype)
            p[row] = values
            want = [-1, -1, -1]
            want[kind] = row
            assert check(p, -1e-6, 1 + 1e-6, 1e-3) == tuple(want), (row, kind)
    p = np.full((n, c), 1 / 3, dtype=dtype)
    p[7] = [0.4, 0.4, 0.4]  # a bad sum, then in a later block:
    p[br + 3] = [1.5, np.inf, -0.5]  # out of range and non-finite: non-finite
    p[br + 9] = [-np.inf, 0.5, 0.5]
    p[br + 11] = [2.0, -1.0, 0.0]  # out of range only
    p[2 * br] = [0.5, 0.6, -0.1]
    assert check(p, -1e-6, 1 + 1e-6, 1e-3) == (br + 3, br + 11, 7)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_check_equals_the_row_by_row_definition(variant, dtype):
    rng = seeding.rng()
    check = variant("probability_rows_check")
    for _ in range(30):
        n, c = int(rng.integers(1, 700)), int(rng.integers(1, 12))
        p = rng.dirichlet(np.ones(c), size=n)
        for _ in range(int(rng.integers(0, 4))):
            i, j = rng.integers(n), rng.integers(c)
            p[i, j] = rng.choice([np.nan, np.inf, -np.inf, 1.5, -1e-3, p[i, j] + 2e-3])
        p = p.astype(dtype)
        for tol in (1e-3, 1e-7):  # 1e-7: float32 rows' own rounding decides
            assert check(p, -1e-6, 1 + 1e-6, tol) == _row_by_row(p, -1e-6, 1 + 1e-6, tol), \
                seeding.current()
