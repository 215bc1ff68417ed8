"""Entries of a seeded permutation equal NumPy's own ``permutation``, and the generator
is left where ``permutation`` leaves it."""

from __future__ import annotations

import numpy as np
import pytest
import seeding

from assay.kernels import permutation


def _case(n, seed, positions, buffered):
    """(what NumPy's permutation gives at ``positions`` and draws next, the same by
    ``permutation_at``); ``buffered``: a 32-bit draw first, so half an output waits."""
    want_rng, got_rng = np.random.default_rng([seed, 1]), np.random.default_rng([seed, 1])
    if buffered:
        want_rng.integers(0, 7, dtype=np.uint32)
        got_rng.integers(0, 7, dtype=np.uint32)
    want = want_rng.permutation(n)[positions]
    got = permutation.permutation_at(got_rng, n, positions)
    return (want, _next(want_rng)), (got, _next(got_rng))


def _next(rng):
    """The generator's next draws: 32-bit ones first (they take a waiting half)."""
    return np.concatenate([rng.integers(0, 1 << 31, size=3, dtype=np.uint32),
                           rng.integers(1 << 62, size=3)])


@pytest.mark.parametrize("n", [1, 2, 1000, permutation.MIN_N, permutation.MIN_N + 1, 300_007])
@pytest.mark.parametrize("buffered", [False, True])
def test_entries_and_the_next_draws_equal_numpys(n, buffered):
    rng = seeding.rng()
    for _ in range(3):
        seed = int(rng.integers(2**63))
        size = int(rng.integers(1, min(n, 500) + 1))
        positions = np.sort(rng.choice(n, size=size, replace=False))
        if n > 2:  # the first and the last positions, which the swaps touch first and last
            positions = np.union1d(positions, [0, n - 1])
        (want, want_next), (got, got_next) = _case(n, seed, positions, buffered)
        case = f"n={n} seed={seed} test-seed={seeding.current()}"
        np.testing.assert_array_equal(got, want, err_msg=case)
        np.testing.assert_array_equal(got_next, want_next, err_msg=case)


def test_every_position_at_once():
    n = permutation.MIN_N + 3
    (want, want_next), (got, got_next) = _case(n, 9, np.arange(n), False)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got_next, want_next)


def test_this_numpy_draws_as_the_swaps_assume():
    assert permutation._agrees()
