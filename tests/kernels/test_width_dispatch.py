"""Score kernels compiled per row width are used only once compiled: a call never waits
for a compile, the generic kernel answers meanwhile, with the same result."""

from __future__ import annotations

import numpy as np

from assay.kernels import rowwise


def test_a_new_width_answers_with_the_generic_kernel_then_its_own():
    rng = np.random.default_rng(7)
    width = 13  # a width no other test compiles
    rows = -(-rowwise.SPECIALIZE_MIN_VALUES // width)
    p = rng.dirichlet(np.ones(width), size=rows)  # float64, C-contiguous, writeable
    twin = rowwise.by_width(rowwise._WIDTH_TEMPLATES, "entropy_rows", width)[0]
    signature = (rowwise.numba.typeof(p),)
    assert signature not in twin.overloads
    first = rowwise.call(rowwise._WIDTH_TEMPLATES, "entropy_rows", False, p)
    rowwise._compiler.submit(lambda: None).result(timeout=600)  # the queued compile is done
    assert signature in twin.overloads
    second = rowwise.call(rowwise._WIDTH_TEMPLATES, "entropy_rows", False, p)
    np.testing.assert_allclose(first, second, rtol=1e-12, atol=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        reference = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=1)
    np.testing.assert_allclose(second, reference, rtol=1e-12, atol=1e-15)
