"""information_density as Settles & Craven mean it, whatever the base score.

Properties, not a copy of the formula: for every score strategy the registry
accepts as ``params.base``, an item denser than another with the same base score
ranks first, and an item more informative than another with the same embedding
ranks first, in both cases even when it has the higher index (which alone would
lose a tie). With beta = 0 the ranking is the base's own.
"""

from __future__ import annotations

import numpy as np
import pytest
import reference as ref
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from strategy_cases import CASES

from assay.server.acquisition.selection import select
from assay.server.strategies import registry

BASES = sorted(s.name for s in registry.all_strategies()
               if s.kind == "score" and s.name != "information_density")
PROPERTY = settings(max_examples=15, derandomize=True, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
D = 4


def test_every_allowed_base_has_inputs_to_test_with():
    assert set(BASES) <= set(CASES), set(BASES) - set(CASES)
    assert {"margin", "discriminator", "loss_prediction", "precomputed"} <= set(BASES)


def _inputs(name: str, seed: int, n: int, c: int) -> dict[str, np.ndarray]:
    """The base's inputs and embeddings clustered around the first axis (so +e0 is dense).

    The embeddings replace any the base's generator made (egl reads them too).
    """
    rng = np.random.default_rng(seed)
    inputs = dict(CASES[name].make(rng, n, c))
    inputs["embeddings"] = 2.0 * np.eye(D)[0] + 0.6 * rng.normal(size=(n, D))
    return inputs


def _copy_item(inputs: dict, src: int, dst: int, *, embeddings: bool) -> None:
    """Give item ``dst`` the rows of item ``src`` in every input (embeddings optionally)."""
    for role, array in inputs.items():
        if role == "embeddings" and not embeddings:
            continue
        axis = registry.INPUT_ROLES[role][1]
        index = [slice(None)] * array.ndim
        source = list(index)
        index[axis], source[axis] = dst, src
        array[tuple(index)] = array[tuple(source)]


def _swap_items(inputs: dict, a: int, b: int) -> None:
    """Exchange items ``a`` and ``b`` in every input but the embeddings."""
    for role, array in inputs.items():
        if role == "embeddings":
            continue
        axis = registry.INPUT_ROLES[role][1]
        order = np.arange(array.shape[axis])
        order[[a, b]] = b, a
        array[...] = np.take(array, order, axis=axis)


def _base_reference(base: str, inputs: dict, candidates: np.ndarray) -> np.ndarray:
    """The float64 twin of the base with its default parameters (as information_density
    runs it), not the parameters its own test case uses."""
    if base == "mal":
        alpha = {p.name: p.default for p in registry.get("mal").params}["alpha"]
        return ref.mal(inputs["discriminator"], inputs["probs"], candidates, alpha)
    assert not CASES[base].params, f"{base}: add its default-parameter reference here"
    return CASES[base].reference(inputs, candidates)


def _rank_of(indices: np.ndarray, item: int) -> int:
    return int(np.flatnonzero(indices == item)[0])


def _select_all(inputs: dict, base: str, beta: float):
    n = inputs["embeddings"].shape[0]
    return select("information_density", n, inputs, {"base": base, "beta": beta})


@pytest.mark.parametrize("base", BASES)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(6, 30), c=st.integers(2, 5),
       beta=st.sampled_from([1.0, 2.0, 0.5, 3.0]), sparse=st.sampled_from([1, 2, -1, -2, -3]))
@PROPERTY
def test_equal_base_score_the_denser_item_wins(base, seed, n, c, beta, sparse):
    inputs = _inputs(base, seed, n, c)
    rng = np.random.default_rng(seed)
    lo, hi = sorted(rng.choice(n, size=2, replace=False).tolist())
    _copy_item(inputs, lo, hi, embeddings=False)
    # Same norm (egl reads it), so equal base scores; +e0 is the pool's dense direction,
    # another signed axis is sparser (-e0 points away from every neighbour).
    axis = np.eye(D)[abs(sparse) % D] * np.sign(sparse)
    inputs["embeddings"][hi] = 2.0 * np.eye(D)[0]
    inputs["embeddings"][lo] = 2.0 * axis
    got = _select_all(inputs, base, beta)
    scores = dict(zip(got.indices.tolist(), got.scores.tolist(), strict=True))
    msg = f"seed={seed} base={base} n={n} c={c} beta={beta} items {lo}<{hi}"
    assert scores[hi] > scores[lo] > 0, msg
    assert _rank_of(got.indices, hi) < _rank_of(got.indices, lo), msg


@pytest.mark.parametrize("base", BASES)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(6, 30), c=st.integers(2, 5),
       beta=st.sampled_from([1.0, 2.0, 0.5, 3.0]), direction=st.sampled_from([0, 1, -1]))
@PROPERTY
def test_equal_density_the_more_informative_item_wins(base, seed, n, c, beta, direction):
    inputs = _inputs(base, seed, n, c)
    rng = np.random.default_rng(seed)
    lo, hi = sorted(rng.choice(n, size=2, replace=False).tolist())
    # Identical embeddings: identical densities, however dense (-e0 is the least dense).
    inputs["embeddings"][[lo, hi]] = 2.0 * np.eye(D)[abs(direction)] * (direction or 1)
    candidates = np.arange(n)
    base_ref = _base_reference(base, inputs, candidates)
    gap = 1e-9 * max(1.0, float(np.abs(base_ref[np.isfinite(base_ref)]).max()))
    donors = [k for k in range(n) if k not in (lo, hi) and abs(base_ref[k] - base_ref[lo]) > gap]
    if abs(base_ref[hi] - base_ref[lo]) <= gap:
        assume(donors)  # else every item scores alike: nothing to order
        _copy_item(inputs, donors[0], hi, embeddings=False)
        base_ref = _base_reference(base, inputs, candidates)
    if base_ref[hi] < base_ref[lo]:
        _swap_items(inputs, lo, hi)  # the more informative item takes the higher index
        base_ref = _base_reference(base, inputs, candidates)
    msg = f"seed={seed} base={base} n={n} c={c} beta={beta} items {lo}<{hi}"
    assert base_ref[hi] - base_ref[lo] > gap, msg
    got = _select_all(inputs, base, beta)
    assert _rank_of(got.indices, hi) < _rank_of(got.indices, lo), msg


@pytest.mark.parametrize("base", BASES)
def test_beta_zero_ranks_by_the_base_alone(base):
    seed = 20080601
    inputs = _inputs(base, seed, 25, 3)
    base_ref = _base_reference(base, inputs, np.arange(25))
    got = select("information_density", 25, inputs, {"base": base, "beta": 0.0})
    np.testing.assert_array_equal(got.indices, ref.top_b(base_ref, 25), err_msg=f"seed={seed}")


def test_a_signed_base_no_longer_prefers_the_outlier():
    """The reported case: margin is -(p1 - p2) <= 0, and the product made outliers win.

    Items 0 and 1 have the same probabilities; item 0 points away from the pool,
    item 1 into it. The denser item 1 must come first.
    """
    probs = np.array([[0.6, 0.4], [0.6, 0.4], [0.9, 0.1], [0.8, 0.2], [0.7, 0.3]])
    embeddings = np.array([[-1.0, 0.0], [1.0, 0.0], [1.0, 0.2], [1.0, -0.2], [0.9, 0.1]])
    got = select("information_density", 5, {"probs": probs, "embeddings": embeddings},
                 {"base": "margin", "beta": 1.0})
    assert got.indices[0] == 1
    assert _rank_of(got.indices, 1) < _rank_of(got.indices, 0)


def test_scores_match_the_documented_rule_with_exclusions():
    seed = 1998
    rng = np.random.default_rng(seed)
    n = 40
    inputs = {"probs": rng.dirichlet(np.ones(4), size=n), "embeddings": rng.normal(size=(n, 3))}
    exclude = rng.choice(n, size=12, replace=False)
    candidates = np.setdiff1d(np.arange(n), exclude)
    want = ref.information_density(ref.margin(inputs["probs"]), inputs["embeddings"],
                                   candidates, 1.5)
    got = select("information_density", 10, inputs, {"base": "margin", "beta": 1.5},
                 exclude=exclude)
    np.testing.assert_array_equal(got.indices, ref.top_b(want, 10, candidates),
                                  err_msg=f"seed={seed}")
    # Ranks are exact; the cosines differ from the loop twin by summation order only.
    np.testing.assert_allclose(got.scores, want[got.indices], rtol=1e-12, err_msg=f"seed={seed}")
