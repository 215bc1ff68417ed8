"""The top-b of the per-item scores, by shortlist, equals the float64 answer exactly.

Score strategies with a ``shortlist`` rank a float32 first pass (or exact scores)
and rescore in float64 only the candidates near the b-th score. Whatever the data,
a Select must give the indices and scores of ``argselect`` on all of the strategy's
float64 scores (bit for bit), and those scores must be the float64 reference's
(tests/reference.py) within the rounding of a C- or S-term float64 sum.
"""

from __future__ import annotations

import numpy as np
import pytest
import reference as ref
import seeding

from assay.kernels import permutation, rowwise, topscores
from assay.server.acquisition.selection import candidate_indices, select
from assay.server.strategies import registry
from assay.server.strategies.registry import Context
from assay.vocab.ties import argselect, tiebreak_generator

PROBS = ("least_confident", "margin", "entropy")
SAMPLES = ("bald", "variation_ratio")
REFERENCE = {"least_confident": ref.least_confident, "margin": ref.margin,
             "entropy": ref.entropy, "bald": ref.bald, "variation_ratio": ref.variation_ratio}


def _rows(rng, n, c, dtype, alpha=0.3):
    """Rows of C probabilities with the awkward cases: one-hot rows (0 log 0 and
    log 1), exact duplicates, uniform rows, and rows holding values far below the
    float32 normal range."""
    p = rng.dirichlet(np.full(c, alpha), size=n)
    if n >= 8:
        p[1] = 0.0
        p[1, c - 1] = 1.0  # one-hot
        p[2] = 1.0 / c  # uniform: the largest entropy
        p[n // 2:n // 2 + 3] = p[3]  # duplicates
        if c >= 2:
            p[4] = 0.0
            p[4, 0], p[4, 1] = 1.0 - 1e-40, 1e-40  # float32: 0 after rounding
    return p.astype(dtype)


def _near_ties(rng, n, c, dtype):
    """Rows whose scores differ by about the float32 first pass's error, so its
    order at the b-th score is noise: a base row and copies with mass moved
    between two classes by up to 30 float32 units in the last place (the row sum
    kept), so some also tie exactly."""
    base = rng.dirichlet(np.full(c, 2.0))
    p = np.repeat(base[None, :], n, axis=0)
    step = np.finfo(np.float32).eps * base[0] * rng.integers(-30, 31, size=n)
    step[0] = 0.0
    p[:, 0] += step
    p[:, c - 1] -= step
    return p.astype(dtype)


def _expected(name, arrays, budget, seed=None, exclude=None):
    """``argselect`` on all of the strategy's float64 scores: the answer before shortlists."""
    strategy = registry.get(name)
    n = next(iter(arrays.values())).shape[-2]
    cand = candidate_indices(n, exclude)
    ctx = Context(candidates=cand, rng=np.random.default_rng(0))
    scores = strategy.fn(arrays, registry.resolve_params(strategy, {}), ctx)
    rng = tiebreak_generator(seed) if seed is not None else None
    picked = argselect(scores, budget, cand, rng)
    return picked, scores[picked], scores


def _check(name, arrays, budget, seed=None, exclude=None, reference=None):
    case = f"{name} budget={budget} seed={seed} test-seed={seeding.current()}"
    got = select(name, budget, arrays, seed=seed, exclude=exclude, validated=True)
    want, want_scores, all_scores = _expected(name, arrays, budget, seed, exclude)
    np.testing.assert_array_equal(got.indices, want, err_msg=case)
    np.testing.assert_array_equal(got.scores, want_scores, err_msg=case)
    if reference is not None:
        # the float64 scores are the reference's up to the rounding of a short sum
        np.testing.assert_allclose(all_scores, reference, rtol=1e-12, atol=1e-14,
                                   err_msg=case)
        _check_ranking(got.indices, reference, budget, exclude, case)


def _check_ranking(indices, reference, budget, exclude, case, tol=1e-12):
    """The picks are a top-b of the reference scores up to ``tol``, best first."""
    cand = candidate_indices(reference.size, exclude)
    picked = reference[indices]
    assert np.all(np.diff(picked) <= tol), case
    others = np.setdiff1d(cand, indices)
    if others.size:
        assert picked.min() >= reference[others].max() - tol, case


@pytest.fixture(params=[np.float32, np.float64], ids=["fp32", "fp64"])
def dtype(request):
    return request.param


def test_the_polynomial_log_stays_within_its_bound():
    # every 97th float32 in [2^-126, 1]; the full sweep (step 1) gives 1.512e-6
    assert topscores.log_error(97) <= topscores.LOG_K


@pytest.mark.parametrize("c", [1, 2, 10, 1000])
def test_entropy_first_pass_within_its_bound(dtype, c):
    rng = seeding.rng()
    p = _rows(rng, 3000 if c < 1000 else 300, c, dtype, alpha=0.05)
    p = np.concatenate([p, _near_ties(rng, 50, c, dtype) if c > 1 else p[:50]])
    rows = rowwise.as_rows(p)
    approx, error = topscores.entropy_first(rows)
    exact = rowwise.run("entropy_rows", rows)
    assert np.abs(approx.astype(np.float64) - exact).max() <= error, seeding.current()
    assert error < 1e-3 * max(np.log(c), 1.0)  # and the bound is not vacuous


@pytest.mark.parametrize("c,dtype", [(7, np.float32), (10, np.float32), (10, np.float64)])
def test_entropy_first_pass_per_width_within_its_bound(c, dtype):
    # large arrays take the kernels compiled for their width (even widths add pairs
    # of terms first); called directly here, as a Select calls them once compiled
    rng = seeding.rng()
    p = np.concatenate([_rows(rng, 700, c, dtype, alpha=0.05), _near_ties(rng, 50, c, dtype)])
    p[9] *= 1.5  # a row summing to 1.5 widens the bound
    rows = rowwise.as_rows(p)
    n = rows.shape[0]
    blocks = -(-n // topscores.BLOCK_ROWS)
    approx = np.empty(n, dtype=np.float32)
    smax = np.zeros(blocks, dtype=np.float32)
    bmax = np.empty(blocks, dtype=np.float32)
    topscores.variants("_entropy_first", c)[0](rows, approx, smax, bmax, topscores.COEFFICIENTS)
    error = topscores.error_bound("entropy", rows, topscores._mass("entropy", rows, smax))
    exact = rowwise.run("entropy_rows", rows)
    assert np.abs(approx.astype(np.float64) - exact).max() <= error, seeding.current()
    padded = np.full(blocks * topscores.BLOCK_ROWS, -np.inf, dtype=np.float32)
    padded[:n] = approx
    np.testing.assert_array_equal(bmax, padded.reshape(blocks, -1).max(axis=1))


@pytest.mark.parametrize("s,c", [(1, 3), (7, 2), (10, 10), (3, 1000)])
def test_bald_first_pass_within_its_bound(dtype, s, c):
    rng = seeding.rng()
    n = 2000 if c < 1000 else 100
    samples = rng.dirichlet(np.full(c, 0.1), size=(s, n)).astype(dtype)
    samples[:, 1] = samples[0, 1]  # members agree: BALD 0
    samples[:, 2] = 0.0
    samples[:, 2, 0] = 1.0  # one-hot everywhere
    samples = rowwise.as_rows(samples)
    approx, error = topscores.bald_first(samples)
    exact = topscores.exact("bald", samples)
    assert np.abs(approx.astype(np.float64) - exact).max() <= error, seeding.current()
    assert error < 1e-3 * max(np.log(c), 1.0)


@pytest.mark.parametrize("name", PROBS)
@pytest.mark.parametrize("budget", [1, 7, 100])
def test_probs_strategies_equal_the_float64_answer(name, dtype, budget):
    rng = seeding.rng()
    p = _rows(rng, 2000, 10, dtype)
    reference = REFERENCE[name](p)
    _check(name, {"probs": p}, budget, reference=reference)
    _check(name, {"probs": p}, budget, seed=int(rng.integers(2**31)), reference=reference)
    exclude = rng.choice(p.shape[0], size=500, replace=False)
    _check(name, {"probs": p}, budget, exclude=exclude, reference=reference)
    _check(name, {"probs": p}, budget, seed=5, exclude=exclude, reference=reference)


@pytest.mark.parametrize("name", PROBS)
@pytest.mark.parametrize("c", [2, 1000])
def test_probs_strategies_at_the_class_extremes(name, dtype, c):
    rng = seeding.rng()
    p = _rows(rng, 300, c, dtype)
    reference = REFERENCE[name](p)
    for budget in (1, 10, 300):
        _check(name, {"probs": p}, budget, reference=reference)
        _check(name, {"probs": p}, budget, seed=budget, reference=reference)


@pytest.mark.parametrize("name", PROBS)
def test_near_ties_below_the_first_pass_error(name, dtype):
    rng = seeding.rng()
    p = _near_ties(rng, 400, 6, dtype)
    for budget in (1, 5, 50, 399):
        _check(name, {"probs": p}, budget)
        _check(name, {"probs": p}, budget, seed=budget)


@pytest.mark.parametrize("name", PROBS + SAMPLES)
def test_one_item_and_the_whole_pool(name, dtype):
    rng = seeding.rng()
    if name in PROBS:
        one = {"probs": _rows(rng, 1, 4, dtype)}
        many = {"probs": _rows(rng, 64, 4, dtype)}
    else:
        one = {"samples": rng.dirichlet(np.ones(4), size=(3, 1)).astype(dtype)}
        many = {"samples": rng.dirichlet(np.full(4, 0.5), size=(3, 64)).astype(dtype)}
    _check(name, one, 1)
    _check(name, one, 1, seed=1)
    _check(name, many, 64)
    _check(name, many, 64, seed=2)


@pytest.mark.parametrize("name", SAMPLES)
@pytest.mark.parametrize("s,c", [(1, 2), (5, 10), (10, 3), (4, 1000)])
def test_samples_strategies_equal_the_float64_answer(name, dtype, s, c):
    rng = seeding.rng()
    n = 600 if c < 1000 else 60
    samples = rng.dirichlet(np.full(c, 0.3), size=(s, n))
    samples[:, 5:9] = samples[:, 4:5]  # duplicate items
    samples[:, 10] = 0.0
    samples[:, 10, -1] = 1.0  # one-hot
    samples = samples.astype(dtype)
    reference = REFERENCE[name](samples)
    exclude = rng.choice(n, size=n // 4, replace=False)
    for budget in (1, 10, n // 2):
        _check(name, {"samples": samples}, budget, reference=reference)
        _check(name, {"samples": samples}, budget, seed=budget, reference=reference)
        _check(name, {"samples": samples}, budget, exclude=exclude, reference=reference)


def test_bald_near_ties(dtype):
    rng = seeding.rng()
    member = _near_ties(rng, 300, 5, dtype)
    samples = np.stack([member, np.roll(member, 1, axis=1), member])
    for budget in (1, 20, 299):
        _check("bald", {"samples": samples}, budget)
        _check("bald", {"samples": samples}, budget, seed=budget)


@pytest.mark.parametrize("name", PROBS)
def test_a_prefilter_by_shortlist_keeps_the_tie_stream(name):
    # the prefilter draws its tie permutation even where no score ties, so the
    # main strategy's ties are broken as they were with all scores
    rng = seeding.rng()
    p = _rows(rng, 500, 5, np.float32)
    p[100:140] = p[7]  # ties for the main strategy
    arrays = {"probs": p}
    got = select("least_confident", 20, arrays, params={"prefilter": name, "prefilter_k": 60},
                 seed=11, validated=True)
    ctx = Context(candidates=np.arange(500), rng=np.random.default_rng(0))
    tie = tiebreak_generator(11)
    pre = registry.get(name)
    kept = np.sort(argselect(pre.fn(arrays, registry.resolve_params(pre, {}), ctx), 60,
                             ctx.candidates, tie))
    main = registry.get("least_confident")
    scores = main.fn(arrays, registry.resolve_params(main, {}), ctx)
    np.testing.assert_array_equal(got.indices, argselect(scores, 20, kept, tie),
                                  err_msg=str(seeding.current()))


@pytest.mark.parametrize("dtype16", [np.float16, "bfloat16"])
def test_sixteen_bit_inputs_take_the_float64_path(dtype16):
    from assay.vocab.dtypes import BFLOAT16

    rng = seeding.rng()
    dt = BFLOAT16 if dtype16 == "bfloat16" else np.dtype(dtype16)
    p = _rows(rng, 200, 4, np.float32).astype(dt)
    for name in PROBS:
        _check(name, {"probs": p}, 10)
    samples = rng.dirichlet(np.ones(4), size=(3, 200)).astype(dt)
    for name in SAMPLES:
        _check(name, {"samples": samples}, 10)


def test_shortlist_holds_every_item_of_the_exact_top():
    rng = seeding.rng()
    exact = np.round(rng.random(5000), 3)  # many exact ties
    approx = (exact + rng.uniform(-1e-4, 1e-4, exact.size)).astype(np.float32)
    error = 1e-4 + 1e-6  # the float32 rounding of values below 1 included
    for budget in (1, 10, 400):
        cand = np.sort(rng.choice(exact.size, size=3000, replace=False))
        for c in (cand, np.arange(exact.size)):
            items = topscores.shortlist(approx, error, budget, c)
            t = np.sort(exact[c])[-budget]
            must = c[exact[c] >= t]
            assert np.isin(must, items).all(), seeding.current()
            assert np.isin(items, c).all() and np.all(np.diff(items) > 0)


def test_shortlist_by_blocks_equals_the_shortlist():
    # the blocks' maxima only skip blocks: the same items as the shortlist over all,
    # with ties across blocks, a cut reaching blocks below the b-th block maximum,
    # fewer blocks than the budget, and a NaN score (both fall back)
    rng = seeding.rng()
    br = topscores.BLOCK_ROWS
    n = 60 * br + 17
    approx = np.round(rng.random(n), 2).astype(np.float32)
    for error in (0.0, 1e-3, 0.02):
        for budget in (1, 3, 59, 61, 400):
            blocks = approx[:60 * br].reshape(60, br).max(axis=1)
            bmax = np.append(blocks, approx[60 * br:].max())
            got = topscores.shortlist_by_blocks(approx, bmax, error, budget)
            want = topscores.shortlist(approx, error, budget, np.arange(n))
            np.testing.assert_array_equal(got, want, err_msg=str(seeding.current()))
    bmax[5] = np.nan
    np.testing.assert_array_equal(topscores.shortlist_by_blocks(approx, bmax, 0.0, 3),
                                  topscores.shortlist(approx, 0.0, 3, np.arange(n)))


@pytest.mark.parametrize("name", PROBS)
def test_the_parallel_fused_pass_and_its_fallbacks(name):
    # 40,000 x 10 values take the parallel passes (several chunks); 20,000 copies of
    # the top row overflow the fused pass's buffers (least_confident, margin), which
    # must fall back to the unfused path; rows summing to 1.5 widen entropy's bound
    rng = seeding.rng()
    p = _rows(rng, 40_000, 10, np.float32)
    assert p.size >= topscores.PARALLEL_MIN_VALUES
    exclude = rng.choice(p.shape[0], size=4000, replace=False)
    for budget in (1, 100, 2000):
        _check(name, {"probs": p}, budget)
        _check(name, {"probs": p}, budget, seed=budget, exclude=exclude)
    tied = p.copy()
    tied[rng.choice(tied.shape[0], size=20_000, replace=False)] = np.float32(1.0 / 10)
    tied[::7, 0] = np.float32(0.5)  # for margin and least_confident: a common top score
    tied[::7, 1] = np.float32(0.5)
    tied[::7, 2:] = 0.0
    _check(name, {"probs": tied}, 50)
    _check(name, {"probs": tied}, 50, seed=3)
    heavy = p.copy()
    heavy[::3] *= np.float32(1.5)
    _check(name, {"probs": heavy}, 100)


def test_bald_parallel_fused_pass_and_its_fallbacks():
    rng = seeding.rng()
    samples = rng.dirichlet(np.full(10, 0.5), size=(3, 30_000)).astype(np.float32)
    assert samples.size >= topscores.PARALLEL_MIN_VALUES
    for budget in (1, 100):
        _check("bald", {"samples": samples}, budget)
        _check("bald", {"samples": samples}, budget, seed=7, exclude=np.arange(0, 30_000, 5))
    tied = samples.copy()
    tied[:, :20_000] = samples[:, :1]  # 20,000 copies of one item
    tied[0, :20_000] = np.float32(0.1)  # ... made the most uncertain
    _check("bald", {"samples": tied}, 20)
    heavy = samples * np.float32(1.5)
    _check("bald", {"samples": heavy}, 100)


def test_a_context_of_every_item_builds_its_indices_only_when_read():
    ctx = Context(7)
    assert ctx.selectable is None and ctx.count == 7
    np.testing.assert_array_equal(ctx.candidates, np.arange(7))
    ctx.candidates = np.array([2, 5])  # a prefilter's survivors
    np.testing.assert_array_equal(ctx.selectable, [2, 5])
    assert ctx.count == 2


@pytest.mark.parametrize("name", PROBS)
def test_a_seeded_select_over_a_large_pool_orders_ties_by_the_whole_permutation(name):
    # past permutation.MIN_N the Select reads the tie permutation at its kept items only
    rng = seeding.rng()
    n = permutation.MIN_N + 1000
    p = _rows(rng, n, 4, np.float32)
    p[rng.choice(n, size=300, replace=False)] = 0.25  # 300 exact ties at the top score
    seed = int(rng.integers(2**31))
    _check(name, {"probs": p}, 50, seed=seed)
    _check(name, {"probs": p}, 50, seed=seed, exclude=rng.choice(n, size=20, replace=False))
