"""CAL, Suggestive Annotation, diverse mini-batch and CEAL against float64 references.

Every reference is written here from the definitions in docs/strategies.md, with plain
loops where the strategy vectorizes, and shares no code with the strategy.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from assay.kernels.facility import facility_location_greedy
from assay.server.acquisition import selection
from assay.server.strategies import registry
from assay.vocab.errors import FailedPrecondition, InvalidInput

NEW = ("batchbald", "cal", "ceal", "diverse_minibatch", "forgetting_events",
       "suggestive_annotation")


def _dirichlet(rng, shape, c, alpha=1.0):
    return rng.dirichlet(np.full(c, alpha), size=shape)


def _top(scores: np.ndarray, k: int, allowed=None) -> list[int]:
    """Indices of the k highest scores among ``allowed``, ties by lower index."""
    idx = range(scores.size) if allowed is None else allowed
    return sorted(idx, key=lambda i: (-scores[i], i))[:k]


def _kl(p, q) -> float:
    total = 0.0
    for a, b in zip(p, q, strict=True):
        if a > 0:
            total += math.inf if b == 0 else a * math.log(a / b)
    return total


# -- CAL ------------------------------------------------------------------------------


def _cal_reference(h, p, hl, pl, k, cand):
    from sklearn.neighbors import NearestNeighbors

    k = min(k, hl.shape[0])
    nn = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(hl)
    _, idx = nn.kneighbors(h[cand])
    scores = np.full(h.shape[0], -np.inf)
    for row, x in enumerate(cand):
        scores[x] = sum(_kl(pl[j], p[x]) for j in idx[row]) / k
    return scores


@pytest.mark.parametrize("n,n_lab,k,budget", [(60, 25, 10, 5), (30, 3, 10, 4), (12, 8, 1, 12),
                                          (1, 4, 2, 1)])
def test_cal_matches_sklearn_reference(n, n_lab, k, budget):
    rng = np.random.default_rng([n, n_lab, k])
    h = rng.normal(size=(n, 5))
    hl = rng.normal(size=(n_lab, 5))
    p = _dirichlet(rng, n, 4)
    pl = _dirichlet(rng, n_lab, 4)
    inputs = {"embeddings": h, "probs": p, "labeled_embeddings": hl, "labeled_probs": pl}
    r = selection.select("cal", budget, inputs, {"k": k})
    ref = _cal_reference(h, p, hl, pl, k, np.arange(n))
    assert r.indices.tolist() == _top(ref, budget)
    np.testing.assert_allclose(r.scores, ref[r.indices], rtol=1e-9)
    assert r.backend == "faiss-cpu"


def test_cal_honours_exclusions_duplicates_and_infinite_divergence():
    rng = np.random.default_rng(3)
    h = rng.normal(size=(20, 3))
    hl = np.repeat(rng.normal(size=(4, 3)), 2, axis=0)  # duplicated labeled points
    pl = np.repeat(_dirichlet(rng, 4, 3), 2, axis=0)
    p = _dirichlet(rng, 20, 3)
    p[7] = [1.0, 0.0, 0.0]  # rules out what every neighbour predicts: KL = +inf
    h[11] = h[10]  # duplicated unlabeled items: equal scores, lower index first
    p[11] = p[10]
    exclude = np.array([0, 2, 5])
    inputs = {"embeddings": h, "probs": p, "labeled_embeddings": hl, "labeled_probs": pl}
    r = selection.select("cal", 17, inputs, {"k": 3}, exclude=exclude)
    ref = _cal_reference(h, p, hl, pl, 3, np.setdiff1d(np.arange(20), exclude))
    assert r.indices.tolist() == _top(ref, 17, np.setdiff1d(np.arange(20), exclude))
    assert r.indices[0] == 7 and np.isinf(r.scores[0])
    assert r.indices.tolist().index(10) < r.indices.tolist().index(11)


def test_cal_errors():
    rng = np.random.default_rng(0)
    base = {"embeddings": rng.normal(size=(5, 2)), "probs": _dirichlet(rng, 5, 3)}
    with pytest.raises(FailedPrecondition, match="cal needs labeled items"):
        selection.select("cal", 1, {**base, "labeled_embeddings": np.zeros((0, 2)),
                                      "labeled_probs": np.zeros((0, 3))})
    with pytest.raises(InvalidInput, match=r"needs input 'labeled_probs' \[L, C\]"):
        selection.select("cal", 1, {**base, "labeled_embeddings": np.zeros((2, 2))})
    with pytest.raises(InvalidInput, match="same labeled items"):
        selection.select("cal", 1, {**base, "labeled_embeddings": np.zeros((2, 2)),
                                      "labeled_probs": _dirichlet(rng, 3, 3)})
    with pytest.raises(InvalidInput, match="same class count"):
        selection.select("cal", 1, {**base, "labeled_embeddings": np.zeros((2, 2)),
                                      "labeled_probs": _dirichlet(rng, 2, 4)})
    with pytest.raises(InvalidInput, match="labeled_probs row 0 sums to"):
        selection.select("cal", 1, {**base, "labeled_embeddings": np.zeros((1, 2)),
                                      "labeled_probs": np.full((1, 3), 0.5)})
    with pytest.raises(InvalidInput, match=r"params.k must be >= 1"):
        selection.select("cal", 1, {**base, "labeled_embeddings": np.zeros((1, 2)),
                                      "labeled_probs": _dirichlet(rng, 1, 3)}, {"k": 0})


# -- Suggestive Annotation --------------------------------------------------------------


def _facility_reference(h, shortlist, universe, budget):
    """Plain greedy max-cover on cosine similarity, float64, ties to the lower candidate."""
    unit = [v / np.linalg.norm(v) if np.linalg.norm(v) > 0 else v * 0 for v in h]
    cover = {u: -1.0 for u in universe}
    picks = []
    for _ in range(budget):
        best, arg = -np.inf, -1
        for s in shortlist:
            if s in picks:
                continue
            gain = sum(max(float(unit[s] @ unit[u]) - cover[u], 0.0) for u in universe)
            if gain > best + 1e-12:
                best, arg = gain, s
        picks.append(arg)
        for u in universe:
            cover[u] = max(cover[u], float(unit[arg] @ unit[u]))
    return picks, sum(cover.values())


@pytest.mark.parametrize("n,budget,top_k", [(50, 4, 0), (30, 6, 12), (8, 8, 8), (1, 1, 0)])
def test_suggestive_annotation_matches_plain_greedy_reference(n, budget, top_k):
    rng = np.random.default_rng([n, budget])
    samples = _dirichlet(rng, (5, n), 3, alpha=0.5)
    h = rng.normal(size=(n, 4))
    h[n // 2] = h[0]  # a duplicate: equal gains, the lower index wins
    samples[:, n // 2] = samples[:, 0]
    exclude = np.array([1]) if n > budget + 1 else None
    cand = np.setdiff1d(np.arange(n), [] if exclude is None else exclude)
    variance = samples.var(axis=0).mean(axis=1)
    k = min(top_k or 10 * budget, cand.size)
    shortlist = sorted(_top(variance, k, cand))
    want, objective = _facility_reference(h, shortlist, cand.tolist(), budget)
    inputs = {"samples": samples, "embeddings": h}
    lazy = selection.select("suggestive_annotation", budget, inputs, {"top_k": top_k},
                              exclude=exclude)
    plain = selection.select("suggestive_annotation", budget, inputs,
                               {"top_k": top_k, "lazy": False}, exclude=exclude)
    assert lazy.indices.tolist() == want
    assert plain.indices.tolist() == want
    np.testing.assert_allclose(lazy.scores, plain.scores, rtol=1e-12)
    assert lazy.metrics["representativeness"] == pytest.approx(objective, rel=1e-9, abs=1e-9)
    assert lazy.metrics["shortlist_size"] == k
    assert lazy.metrics["facility_evaluations"] <= plain.metrics["facility_evaluations"]


def test_lazy_greedy_saves_evaluations_and_is_identical_on_a_larger_pool():
    rng = np.random.default_rng(9)
    h = rng.normal(size=(400, 8))
    cand = np.sort(rng.choice(400, size=80, replace=False))
    lazy = facility_location_greedy(h, 15, candidates=cand, lazy=True)
    plain = facility_location_greedy(h, 15, candidates=cand, lazy=False)
    assert lazy.indices.tolist() == plain.indices.tolist()
    assert lazy.evaluations < plain.evaluations


def test_suggestive_annotation_with_a_named_score_and_errors():
    rng = np.random.default_rng(2)
    p = _dirichlet(rng, 40, 4)
    h = rng.normal(size=(40, 3))
    r = selection.select("suggestive_annotation", 3, {"probs": p, "embeddings": h},
                           {"uncertainty": "margin", "top_k": 9})
    margin = -np.sort(p, axis=1)[:, -1] + np.sort(p, axis=1)[:, -2]
    want, _ = _facility_reference(h, sorted(_top(margin, 9)), list(range(40)), 3)
    assert r.indices.tolist() == want
    with pytest.raises(InvalidInput, match="'variance' needs input 'samples'"):
        selection.select("suggestive_annotation", 3, {"probs": p, "embeddings": h})
    with pytest.raises(InvalidInput, match="must name a score strategy; 'kmeans' is a batch"):
        selection.select("suggestive_annotation", 3, {"probs": p, "embeddings": h},
                           {"uncertainty": "kmeans"})
    with pytest.raises(InvalidInput, match=r"params.top_k 2 is smaller than the budget 3"):
        selection.select("suggestive_annotation", 3, {"probs": p, "embeddings": h},
                           {"uncertainty": "entropy", "top_k": 2})
    with pytest.raises(InvalidInput, match="'loss_prediction' needs input 'loss'"):
        selection.select("suggestive_annotation", 3, {"probs": p, "embeddings": h},
                           {"uncertainty": "loss_prediction"})


# -- diverse mini-batch -------------------------------------------------------------------


def _margin(p):
    out = []
    for row in p:
        a, b = sorted(row, reverse=True)[:2]
        out.append(-(a - b))
    return np.array(out)


def test_diverse_minibatch_single_cluster_is_the_member_nearest_the_weighted_mean():
    rng = np.random.default_rng(4)
    n = 80
    p = _dirichlet(rng, n, 3)
    h = rng.normal(size=(n, 2)) * np.array([3.0, 0.5])
    r = selection.select("diverse_minibatch", 1, {"probs": p, "embeddings": h},
                           {"beta": 20}, seed=1)
    phi = _margin(p)
    short = _top(phi, 20)
    w = np.array([1.0 - (sorted(p[i])[-1] - sorted(p[i])[-2]) for i in short])
    centre = (w[:, None] * h[short]).sum(axis=0) / w.sum()
    d = [float(((h[i] - centre) ** 2).sum()) for i in short]
    assert r.indices.tolist() == [short[int(np.argmin(d))]]
    assert r.scores.tolist() == [phi[r.indices[0]]]


def test_diverse_minibatch_picks_one_per_separated_group_from_the_shortlist():
    rng = np.random.default_rng(6)
    centres = np.array([[0.0, 0.0], [50.0, 0.0]])
    h = np.concatenate([c + rng.normal(size=(30, 2)) for c in centres])
    p = _dirichlet(rng, 60, 3)
    for seed in range(3):
        r = selection.select("diverse_minibatch", 2, {"probs": p, "embeddings": h},
                               {"beta": 10}, seed=seed)
        shortlist = _top(_margin(p), 20)
        assert set(r.indices.tolist()) <= set(shortlist)
        assert sorted(int(i) // 30 for i in r.indices) == [0, 1]
        assert list(r.scores) == sorted(r.scores, reverse=True)
        assert r.backend == "faiss-cpu"
        again = selection.select("diverse_minibatch", 2, {"probs": p, "embeddings": h},
                                   {"beta": 10}, seed=seed)
        assert again.indices.tolist() == r.indices.tolist()


def test_diverse_minibatch_edges_and_errors():
    rng = np.random.default_rng(7)
    p = _dirichlet(rng, 12, 3)
    h = rng.normal(size=(12, 3))
    h[5] = h[4]
    p[5] = p[4]
    # beta * b covers every candidate and b = n: the whole shortlist, most informative first
    r = selection.select("diverse_minibatch", 12, {"probs": p, "embeddings": h}, {"beta": 1})
    assert r.indices.tolist() == _top(_margin(p), 12)
    r = selection.select("diverse_minibatch", 4, {"probs": p, "embeddings": h}, seed=3)
    assert len(set(r.indices.tolist())) == 4
    one = selection.select("diverse_minibatch", 1, {"probs": p[:1], "embeddings": h[:1]})
    assert one.indices.tolist() == [0]
    with pytest.raises(InvalidInput, match=r"margin.*needs at least 2 classes|needs input"):
        selection.select("diverse_minibatch", 2, {"embeddings": h})
    with pytest.raises(InvalidInput, match=r"params.beta must be >= 1"):
        selection.select("diverse_minibatch", 2, {"probs": p, "embeddings": h}, {"beta": 0})
    s = selection.select("diverse_minibatch", 2, {"probs": p, "embeddings": h},
                           {"informativeness": "entropy", "beta": 3}, seed=1)
    ent = -(p * np.log(p)).sum(axis=1)
    assert set(s.indices.tolist()) <= set(_top(ent, 6))


# -- CEAL ------------------------------------------------------------------------------------


def _entropy(row) -> float:
    return -sum(float(v) * math.log(float(v)) for v in row if v > 0)


@pytest.mark.parametrize("round_,budget", [(0, 3), (5, 1), (40, 10)])
def test_ceal_reference(round_, budget):
    rng = np.random.default_rng([round_, budget])
    n, c = 60, 3
    p = _dirichlet(rng, n, c, alpha=0.15)
    p[10] = p[11] = [1.0, 0.0, 0.0]  # ties in entropy (0) and in the argmax
    p[12] = [0.5, 0.5, 0.0]  # argmax tie: the lower class
    exclude = np.array([3, 4])
    delta0, decay = 0.3, 0.005
    r = selection.select("ceal", budget, {"probs": p},
                           {"delta0": delta0, "decay": decay, "round": round_}, exclude=exclude)
    cand = [i for i in range(n) if i not in exclude]
    h = np.array([_entropy(row) for row in p])
    picks = _top(h, budget, cand)
    assert r.indices.tolist() == picks
    threshold = delta0 - decay * round_
    confident = sorted((i for i in cand if i not in picks and h[i] < threshold),
                       key=lambda i: (h[i], i))
    assert r.pseudo_label_indices.tolist() == confident
    want_labels = [max(range(c), key=lambda k: (p[i][k], -k)) for i in confident]
    assert r.pseudo_labels.tolist() == want_labels
    assert not set(r.indices.tolist()) & set(r.pseudo_label_indices.tolist())
    assert r.metrics["ceal_threshold"] == pytest.approx(threshold)


def test_ceal_threshold_decays_to_nothing_and_caps():
    rng = np.random.default_rng(1)
    p = _dirichlet(rng, 50, 4, alpha=0.1)
    counts = [selection.select("ceal", 2, {"probs": p}, {"delta0": 0.5, "decay": 0.1,
                                                         "round": t}).pseudo_label_indices.size
              for t in range(7)]
    assert counts == sorted(counts, reverse=True) and counts[-1] == 0 and counts[0] > 0
    capped = selection.select("ceal", 2, {"probs": p}, {"delta0": 0.5, "max_pseudo_labels": 3})
    assert capped.pseudo_label_indices.size == 3
    m = selection.select("ceal", 4, {"probs": p}, {"uncertainty": "margin"})
    assert m.indices.tolist() == _top(_margin(p), 4)
    with pytest.raises(InvalidInput, match=r"params.round must be >= 0"):
        selection.select("ceal", 1, {"probs": p}, {"round": -1})


# -- discoverable and usable through the service ---------------------------------------------


def test_new_strategies_are_listed_with_their_inputs(client):
    infos = {s.name: s for s in client.list_strategies()}
    for name in NEW:
        assert name in infos, name
        strategy = registry.get(name)
        assert infos[name].kind == "batch"
        assert list(infos[name].required_inputs) == list(strategy.required)
    assert "labeled_probs" in infos["cal"].required_inputs
    assert set(infos["batchbald"].params) >= {"num_samples", "max_exact_configs", "precision",
                                              "backend"}


def test_inline_and_pool_selects_through_the_client(client):
    rng = np.random.default_rng(12)
    n, c = 50, 3
    samples = _dirichlet(rng, (4, n), c, alpha=0.5).astype(np.float32)
    probs = samples.mean(axis=0)
    h = rng.normal(size=(n, 4)).astype(np.float32)
    labeled = np.array([0, 7, 21, 33])
    client.create_pool("mix")
    client.append("mix", samples=samples, probs=probs, embeddings=h)
    client.label("mix", labeled, [0, 1, 2, 0])
    unlabeled = np.setdiff1d(np.arange(n), labeled)
    # CAL on the pool: labeled_probs are the pool's probs at the labeled items
    pooled = client.select("cal", 4, pool="mix", params={"k": 2}, seed=1)
    inline = client.select("cal", 4, probs=probs, embeddings=h,
                           labeled_embeddings=h[labeled], labeled_probs=probs[labeled],
                           exclude=labeled, params={"k": 2}, seed=1)
    assert pooled.indices.tolist() == inline.indices.tolist()
    assert set(pooled.indices.tolist()) <= set(unlabeled.tolist())
    ceal = client.select("ceal", 3, pool="mix", params={"delta0": 0.6})
    assert ceal.pseudo_label_indices.size == ceal.pseudo_labels.size
    assert not set(ceal.pseudo_label_indices.tolist()) & set(labeled.tolist())
    sa = client.select("suggestive_annotation", 3, pool="mix", seed=2)
    assert "representativeness" in sa.metrics
    bb = client.select("batchbald", 3, pool="mix", seed=2, params={"num_samples": 300})
    assert len(set(bb.indices.tolist())) == 3 and bb.backend == "numba-cpu"
    dm = client.select("diverse_minibatch", 3, samples=samples, embeddings=h, seed=2)
    assert len(set(dm.indices.tolist())) == 3
    fe = client.select("forgetting_events", 2, predictions=rng.integers(0, c, size=(3, n)),
                       labels=np.where(np.arange(n) < 10, 1, -1))
    assert set(fe.indices.tolist()) <= set(range(10))
