"""EPIG: a float64 twin written from docs/strategies.md, and baal's ``EPIG`` on the same target."""

from __future__ import annotations

import math

import numpy as np
import pytest
import seeding

from assay.client import AssayError
from assay.kernels.epig import epig_scores
from assay.server.acquisition.selection import select
from assay.vocab.errors import InvalidInput


def _h(p):
    return -sum(v * math.log(v) for v in p if v > 0)


def ref_epig(samples, target):
    """φ(x) = H(P̄[x]) + mean_j H(Q̄[j]) − mean_j H(p_xj), one pair at a time in float64."""
    s, n, c = samples.shape
    m = target.shape[1]
    t_mean = sum(_h([sum(target[k, j, b] for k in range(s)) / s for b in range(c)])
                 for j in range(m)) / m
    out = np.empty(n)
    for x in range(n):
        joint = 0.0
        for j in range(m):
            joint += _h([sum(samples[k, x, a] * target[k, j, b] for k in range(s)) / s
                         for a in range(c) for b in range(c)])
        out[x] = _h([sum(samples[k, x, a] for k in range(s)) / s for a in range(c)]) + t_mean \
            - joint / m
    return out


def _samples(rng, s, n, c, alpha=1.0):
    return rng.dirichlet(np.full(c, alpha), size=(s, n))


def _target_rows(candidates, size, seed):
    if candidates.size <= size:
        return candidates
    return np.sort(np.random.default_rng(seed).choice(candidates, size=size, replace=False))


def test_scores_match_the_float64_twin(rng):
    samples = _samples(rng, 5, 30, 3, alpha=0.5)
    seed = int(rng.integers(2**31))
    exclude = np.array([4, 17])
    got = select("epig", 28, {"samples": samples}, {"target_size": 9}, seed=seed,
                 exclude=exclude)
    rows = _target_rows(np.setdiff1d(np.arange(30), exclude), 9, seed)
    want = ref_epig(samples, samples[:, rows])
    np.testing.assert_allclose(got.scores, want[got.indices], rtol=1e-11, atol=1e-14,
                               err_msg=f"seed={seed}")
    assert np.all(np.diff(got.scores) <= 0)
    assert got.metrics["epig_target_size"] == 9.0
    assert (want > -1e-12).all()  # a mean of mutual informations


def test_blocks_do_not_change_the_scores(rng):
    samples = _samples(rng, 4, 50, 5).astype(np.float32)
    target = _samples(rng, 4, 23, 5)
    rows = np.arange(3, 50, 2)
    whole = epig_scores(samples, target, rows)
    blocked = epig_scores(samples, target, rows, pool_block_values=7 * 20,
                          target_block_values=3 * 20)
    np.testing.assert_allclose(blocked, whole, rtol=1e-12, atol=1e-15)
    want = ref_epig(samples.astype(np.float64)[:, rows], target)
    np.testing.assert_allclose(whole, want, rtol=1e-11, atol=1e-14)


def test_ties_duplicates_one_item_and_budget_n(rng):
    samples = _samples(rng, 4, 12, 3)
    samples[:, 7] = samples[:, 2]  # a duplicate: the same score, the lower index first
    got = select("epig", 12, {"samples": samples}, {"target_size": 12})
    np.testing.assert_array_equal(np.sort(got.indices), np.arange(12))
    pos = {int(i): k for k, i in enumerate(got.indices)}
    assert got.scores[pos[2]] == got.scores[pos[7]] and pos[2] < pos[7]
    one = select("epig", 1, {"samples": samples[:, :1]})  # its own target
    assert one.indices.tolist() == [0]
    np.testing.assert_allclose(one.scores, ref_epig(samples[:, :1], samples[:, :1]), rtol=1e-11)


def test_the_target_follows_the_seed(rng):
    samples = _samples(rng, 4, 60, 3)
    a = select("epig", 5, {"samples": samples}, {"target_size": 10}, seed=1)
    b = select("epig", 5, {"samples": samples}, {"target_size": 10}, seed=1)
    c = select("epig", 5, {"samples": samples}, {"target_size": 10}, seed=2)
    np.testing.assert_array_equal(a.scores, b.scores)
    assert not np.array_equal(a.scores, c.scores)


def test_bad_parameters_name_the_field(rng):
    samples = _samples(rng, 4, 20, 3)
    with pytest.raises(InvalidInput) as caught:
        select("epig", 2, {"samples": samples}, {"target_size": 0})
    assert caught.value.field == "params.target_size"
    with pytest.raises(InvalidInput) as caught:
        select("epig", 2, {"probs": samples[0]})
    assert caught.value.field == "inputs.samples"


# -- baal ----------------------------------------------------------------------------------

baal_heuristics = pytest.importorskip("baal.active.heuristics.heuristics")


class _Float64Torch:
    """baal's ``torch`` with ``torch.Tensor(x)`` building float64 tensors."""

    def __init__(self, torch):
        self._torch = torch

    def Tensor(self, x):  # the name baal calls
        return self._torch.as_tensor(np.asarray(x, dtype=np.float64))

    def __getattr__(self, name):
        return getattr(self._torch, name)


@pytest.mark.parametrize("target_size", [40, 500])
def test_scores_and_picks_match_baal(monkeypatch, target_size):
    rng = seeding.rng()
    samples = _samples(rng, 8, 300, 4, alpha=0.7)
    seed = int(rng.integers(2**31))
    ours = select("epig", 300, {"samples": samples}, {"target_size": target_size}, seed=seed)
    rows = _target_rows(np.arange(300), target_size, seed)
    pool = np.transpose(samples, (1, 2, 0))
    target = np.transpose(samples[:, rows], (1, 2, 0))
    # As baal ships it (float32): the scores to float32 rounding.
    peer32 = baal_heuristics.EPIG().compute_score(pool, target)
    np.testing.assert_allclose(ours.scores, peer32[ours.indices], atol=2e-5,
                               err_msg=f"seed={seed}")
    # Configured alike (float64 tensors): the scores to 1e-12, the picks pick for pick.
    monkeypatch.setattr(baal_heuristics, "torch", _Float64Torch(baal_heuristics.torch))
    peer = baal_heuristics.EPIG().compute_score(pool, target)
    np.testing.assert_allclose(ours.scores, peer[ours.indices], rtol=1e-10, atol=1e-13,
                               err_msg=f"seed={seed}")
    top = select("epig", 25, {"samples": samples}, {"target_size": target_size}, seed=seed)
    np.testing.assert_array_equal(top.indices, np.argsort(-peer, kind="stable")[:25],
                                  err_msg=f"seed={seed}")


# -- a given target ------------------------------------------------------------------------

def test_a_given_target_is_used_as_it_is(rng):
    samples = _samples(rng, 5, 25, 3)
    target = _samples(rng, 5, 11, 3)  # its own M
    got = select("epig", 25, {"samples": samples, "target_samples": target},
                 {"target_size": 2})
    want = ref_epig(samples, target)
    np.testing.assert_allclose(got.scores, want[got.indices], rtol=1e-11, atol=1e-14,
                               err_msg=f"seed={seeding.current()}")
    assert got.metrics["epig_target_size"] == 11.0


@pytest.mark.parametrize("shape", [(4, 9, 3), (5, 9, 4)])
def test_a_target_of_other_s_or_c_is_refused(shape, rng):
    samples = _samples(rng, 5, 20, 3)
    target = _samples(rng, shape[0], shape[1], shape[2])
    with pytest.raises(InvalidInput) as caught:
        select("epig", 2, {"samples": samples, "target_samples": target})
    assert caught.value.field == "inputs.target_samples"
    assert caught.value.reason == "SHAPE_MISMATCH"


def test_the_client_sends_a_target_and_a_pool_refuses_one(client, rng):
    samples = _samples(rng, 4, 30, 3).astype(np.float32)
    target = _samples(rng, 4, 7, 3).astype(np.float32)
    got = client.select("epig", 4, samples=samples, target_samples=target)
    want = ref_epig(samples.astype(np.float64), target.astype(np.float64))
    np.testing.assert_array_equal(got.indices, np.argsort(-want, kind="stable")[:4])
    np.testing.assert_allclose(got.scores, want[got.indices], rtol=1e-11)
    client.create_pool("t")
    with pytest.raises(AssayError) as caught:
        client.append("t", samples=samples, target_samples=target)
    assert "target_samples" in str(caught.value)
    assert caught.value.code.name == "INVALID_ARGUMENT", caught.value
