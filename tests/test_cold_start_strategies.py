"""The cold-start strategies (typiclust, probcover, lightweight_coreset): float64 twins,
the δ-ball graph against brute force, pick-for-pick agreement with the peers
(scikit-activeml's TypiClust and ProbCover, small-text's LightweightCoreset), the
edge cases, bad input, and a stored pool through a real server.

The peers break ties at random (scikit-activeml's ``rand_argmax``); for the
comparisons their tie rule is set to ours, the lower index, so that any tie in
cluster size, typicality or coverage falls the same way on both sides.
"""

from __future__ import annotations

import numpy as np
import pytest
import seeding

from assay.kernels.radius import radius_graph
from assay.server.acquisition import selection
from assay.server.strategies import cold_start
from assay.server.strategies.registry import Context
from assay.vocab.errors import InvalidInput, ResourceExhausted

NAMES = ("typiclust", "probcover", "lightweight_coreset")


# --- float64 twins ------------------------------------------------------------------

def dense_distances(x):
    x = np.asarray(x, dtype=np.float64)
    diff = x[:, None, :] - x[None, :, :]
    return np.sqrt((diff * diff).sum(axis=2))


def typiclust_twin(x, clusters, labeled, selectable, budget, k):
    """Visit clusters by (labeled count, -size, first row); the most typical free member."""
    ids = sorted(set(clusters.tolist()))
    key = {c: ((labeled & (clusters == c)).sum(), -(clusters == c).sum(),
               np.flatnonzero(clusters == c)[0]) for c in ids}
    order = sorted(ids, key=lambda c: key[c])
    free = np.zeros(len(x), dtype=bool)
    free[selectable] = True
    picks, taus = [], []
    while len(picks) < budget:
        for c in order:
            members = np.flatnonzero(clusters == c)
            if len(picks) == budget or not free[members].any():
                continue
            if members.size == 1:
                tau = np.ones(1)
            else:
                kk = min(k, members.size - 1)
                dist = np.sort(dense_distances(x[members]), axis=1)[:, :kk + 1]
                tau = 1.0 / ((1.0 / kk) * (dist.sum(axis=1) + 1e-7))
            best = max((i for i in range(members.size) if free[members[i]]),
                       key=lambda i: (tau[i], -members[i]))
            picks.append(int(members[best]))
            taus.append(tau[best])
            free[members[best]] = False
    return np.array(picks), np.array(taus)


def probcover_twin(x, delta, labeled, selectable, budget):
    """The peer's algorithm on a dense float64 graph: drop edges into covered items,
    pick the largest out-degree (lower row on ties)."""
    edges = dense_distances(x) <= delta
    source = labeled.copy()
    can = np.zeros(len(x), dtype=bool)
    can[selectable] = True
    picks, gains = [], []
    for _ in range(budget):
        edges[:, edges[source].any(axis=0)] = False
        degree = np.where(can, edges.sum(axis=1), -1)
        row = int(np.argmax(degree))
        picks.append(row)
        gains.append(float(degree[row]))
        can[row] = False
        source[row] = True
    return np.array(picks), np.array(gains)


def lightweight_twin(x, rows, distance, budget, rng):
    x = np.asarray(x, dtype=np.float64)[rows]
    mu = x.mean(axis=0)
    if distance == "euclidean":
        d2 = ((x - mu) ** 2).sum(axis=1)
    else:
        n = np.linalg.norm(x, axis=1)
        cos = (x @ mu) / np.where(n > 0, n, 1) / (np.linalg.norm(mu) or 1.0)
        d2 = (np.arccos(np.clip(cos, -1, 1)) / np.pi) ** 2
    q = 0.5 / len(rows) + 0.5 * d2 / d2.sum() if d2.sum() > 0 else np.full(len(rows), 1 / len(rows))
    q = q / q.sum()
    pos = rng.choice(len(rows), size=budget, replace=False, p=q)
    return rows[pos], q[pos]


def blobs(rng, n, d=8, centres=6, spread=0.35):
    c = rng.normal(size=(centres, d))
    return c[rng.integers(0, centres, size=n)] + spread * rng.normal(size=(n, d))


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def ctx_for(candidates, seed=0, rng=None):
    return Context(candidates=np.asarray(candidates, dtype=np.int64),
                   rng=rng if rng is not None else np.random.default_rng(seed))


# --- the δ-ball graph ---------------------------------------------------------------

@pytest.mark.parametrize("grid", [False, True])
def test_radius_graph_is_the_exact_inclusive_graph(grid):
    rng = seeding.rng()
    if grid:  # integer points: many pairs exactly at distance 1 and sqrt(2)
        x, delta = rng.integers(0, 6, size=(150, 2)).astype(np.float64), 1.0
    else:
        x, delta = blobs(rng, 300), 1.1
    g = radius_graph(x, delta)
    want = dense_distances(x) <= delta
    got = np.zeros_like(want)
    rows = np.repeat(np.arange(len(x)), np.diff(g.indptr))
    got[rows, g.indices] = True
    assert (got == want).all() and g.indices.size == want.sum()
    assert all((np.diff(g.indices[g.indptr[i]:g.indptr[i + 1]]) > 0).all() for i in range(len(x)))


def test_radius_graph_refuses_a_graph_over_the_edge_cap():
    x = seeding.rng().normal(size=(200, 4))
    with pytest.raises(ResourceExhausted) as err:
        radius_graph(x, 100.0, max_edges=1000)
    assert err.value.field == "delta"


# --- twins ----------------------------------------------------------------------------

def test_typiclust_picks_match_the_twin_with_ties_and_duplicates():
    rng = seeding.rng()
    x = blobs(rng, 240)
    x[100:110] = x[5]  # duplicates: typicality ties, lower row wins
    for trial in range(4):
        clusters = rng.integers(0, 12, size=len(x))
        labeled = np.zeros(len(x), dtype=bool)
        labeled[rng.choice(len(x), size=trial * 3, replace=False)] = True
        selectable = np.flatnonzero(~labeled)
        budget = [5, 12, 20, 40][trial]  # 20, 40: more picks than uncovered clusters
        got, tau = cold_start.typiclust_picks(x, clusters, labeled, selectable, budget, 5)
        want, want_tau = typiclust_twin(x, clusters, labeled, selectable, budget, 5)
        np.testing.assert_array_equal(got, want, err_msg=f"trial {trial}")
        np.testing.assert_allclose(tau, want_tau, rtol=1e-9)


def test_probcover_picks_match_the_twin_with_ties():
    rng = seeding.rng()
    for trial, (x, delta) in enumerate([
            (blobs(rng, 250), 1.2),
            (rng.integers(0, 5, size=(120, 2)).astype(np.float64), 1.0)]):  # integer ties
        labeled = np.zeros(len(x), dtype=bool)
        labeled[rng.choice(len(x), size=7, replace=False)] = True
        selectable = np.flatnonzero(~labeled)
        g = radius_graph(x, delta)
        budget = 30
        got, gains, covered = cold_start.probcover_picks(g.indptr, g.indices, labeled,
                                                         selectable, budget)
        want, want_gains = probcover_twin(x, delta, labeled, selectable, budget)
        np.testing.assert_array_equal(got, want, err_msg=f"trial {trial}")
        np.testing.assert_array_equal(gains, want_gains)
        near = dense_distances(x)[labeled | np.isin(np.arange(len(x)), got)] <= delta
        np.testing.assert_array_equal(covered, near.any(axis=0))


@pytest.mark.parametrize("distance", ["euclidean", "angular"])
def test_lightweight_coreset_matches_the_twin(distance):
    rng = seeding.rng()
    x = blobs(rng, 300) + 0.5
    rows = np.sort(rng.choice(300, size=250, replace=False))
    got = cold_start.lightweight_coreset({"embeddings": x}, 40, {"distance": distance},
                                         ctx_for(rows, seed=9))
    want, q = lightweight_twin(x, rows, distance, 40, np.random.default_rng(9))
    np.testing.assert_array_equal(got.indices, want)
    np.testing.assert_allclose(got.scores, q, rtol=1e-12)


# --- peers ----------------------------------------------------------------------------

def lower_index_argmax(a, random_state=None, **kwargs):
    """scikit-activeml's ``rand_argmax`` with our tie rule: the lowest index of the max."""
    a = np.asarray(a, dtype=float)
    return np.array([int(np.flatnonzero(a == np.nanmax(a))[0])])


@pytest.fixture
def peer_ties(monkeypatch):
    from skactiveml.pool import _prob_cover, _typi_clust
    monkeypatch.setattr(_typi_clust, "rand_argmax", lower_index_argmax)
    monkeypatch.setattr(_prob_cover, "rand_argmax", lower_index_argmax)


def given_clustering(clusters):
    """A scikit-learn-like cluster class that answers with a fixed clustering."""
    class Given:
        def __init__(self, n_clusters, random_state=None):
            self.n_clusters = n_clusters

        def fit_predict(self, X):
            return clusters.copy()
    return Given


def by_first_row(clusters):
    """Cluster ids renumbered in order of their first row (the peer's size ties go to
    the lower id, ours to the cluster with the lower first row)."""
    _, first, inverse = np.unique(clusters, return_index=True, return_inverse=True)
    rank = np.empty(first.size, dtype=np.int64)
    rank[np.argsort(first)] = np.arange(first.size)
    return rank[inverse]


def test_typiclust_matches_scikit_activeml_given_the_same_clustering(peer_ties):
    from skactiveml.pool import TypiClust

    rng = seeding.rng()
    for trial in range(3):
        n, n_lab, budget, k = 300, [0, 6, 15][trial], [8, 10, 5][trial], [5, 3, 20][trial]
        x = blobs(rng, n, centres=10)
        y = np.full(n, np.nan)
        lab = rng.choice(n, size=n_lab, replace=False)
        y[lab] = rng.integers(0, 3, size=n_lab)
        labels = np.where(np.isnan(y), -1, y).astype(np.int64)
        seed = int(rng.integers(2**31))
        got = selection.select("typiclust", budget, {"embeddings": x, "labels": labels},
                               {"k": k}, seed=seed)
        # The clustering select ran: the same kernels from the same seed.
        clusters = cold_start.kmeans_labels(x, n_lab + budget, ctx_for(np.arange(n), seed),
                                            20, "auto")
        clusters = by_first_row(clusters)
        uncovered = set(clusters.tolist()) - set(clusters[lab].tolist())
        assert len(uncovered) >= budget
        peer = TypiClust(k=k, cluster_algo=given_clustering(clusters), random_state=0)
        want = peer.query(x, y, batch_size=budget)
        np.testing.assert_array_equal(got.indices, want, err_msg=f"trial {trial}, seed {seed}")


@pytest.mark.filterwarnings("ignore:The maximum purity")  # one delta: nothing to choose
def test_probcover_matches_scikit_activeml_at_a_fixed_delta(peer_ties):
    from skactiveml.pool import ProbCover

    rng = seeding.rng()
    for trial in range(3):
        n, n_lab, budget = 300, [0, 5, 20][trial], 25
        x = unit(blobs(rng, n, d=6, centres=8, spread=0.3))
        delta = [0.4, 0.6, 0.25][trial]
        y = np.full(n, np.nan)
        y[rng.choice(n, size=n_lab, replace=False)] = rng.integers(0, 3, size=n_lab)
        labels = np.where(np.isnan(y), -1, y).astype(np.int64)
        got = selection.select("probcover", budget, {"embeddings": x, "labels": labels},
                               {"delta": delta}, seed=1)
        want = ProbCover(deltas=[delta], random_state=0).query(x, y, batch_size=budget)
        np.testing.assert_array_equal(got.indices, want, err_msg=f"trial {trial}")


def test_probcover_matches_scikit_activeml_at_the_delta_it_chooses_by_purity(peer_ties):
    from skactiveml.pool import ProbCover

    rng = seeding.rng()
    x = unit(blobs(rng, 300, d=6, centres=5, spread=0.15))
    y = np.full(300, np.nan)
    y[:4] = [0, 1, 2, 3]
    peer = ProbCover(random_state=0)
    want = peer.query(x, y, batch_size=20)
    labels = np.where(np.isnan(y), -1, y).astype(np.int64)
    got = selection.select("probcover", 20, {"embeddings": x, "labels": labels},
                           {"delta": float(peer.delta_max_)}, seed=1)
    np.testing.assert_array_equal(got.indices, want, err_msg=f"delta {peer.delta_max_}")


def test_lightweight_coreset_matches_small_text_on_the_same_bit_stream(monkeypatch):
    """small-text draws from the global ``np.random`` (MT19937, ``RandomState(seed)``)
    with ``choice(replace=False, p=q)``; ours draws the same way from ``ctx.rng``, so on
    that bit generator the picks are the same, in the same order."""
    from small_text.query_strategies import LightweightCoreset

    rng = seeding.rng()
    for trial in range(3):
        x = blobs(rng, 500, d=16) + 0.3
        labeled = np.sort(rng.choice(500, size=[0, 20, 100][trial], replace=False))
        unlabeled = np.setdiff1d(np.arange(500), labeled)
        seed = int(rng.integers(2**31))
        with monkeypatch.context() as m:  # the peer's global draws, from our seed
            m.setattr(np.random, "choice", np.random.RandomState(seed).choice)
            want = LightweightCoreset().sample(None, None, unlabeled, labeled, None, 30, x)
        ours = np.random.Generator(np.random.RandomState(seed)._bit_generator)
        got = cold_start.lightweight_coreset({"embeddings": x}, 30, {"distance": "angular"},
                                             ctx_for(unlabeled, rng=ours))
        np.testing.assert_array_equal(got.indices, unlabeled[want], err_msg=f"seed {seed}")


# --- contract, edge cases, errors -------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_contract(name):
    rng = seeding.rng()
    x = blobs(rng, 120).astype(np.float32)
    params = {"delta": 1.0} if name == "probcover" else {}
    exclude = rng.choice(120, size=5, replace=False)
    a = selection.select(name, 10, {"embeddings": x}, params, seed=11, exclude=exclude)
    b = selection.select(name, 10, {"embeddings": x}, params, seed=11, exclude=exclude)
    np.testing.assert_array_equal(a.indices, b.indices)
    assert len(set(a.indices.tolist())) == 10 and not set(a.indices.tolist()) & set(exclude)
    assert a.scores.shape == (10,) and np.isfinite(a.scores).all()
    one = selection.select(name, 1, {"embeddings": x[:1]}, params, seed=1)
    assert one.indices.tolist() == [0]
    everything = selection.select(name, 115, {"embeddings": x}, params, seed=2, exclude=exclude)
    assert sorted(everything.indices.tolist()) == sorted(set(range(120)) - set(exclude.tolist()))
    with pytest.raises(InvalidInput, match="exceeds"):
        selection.select(name, 116, {"embeddings": x}, params, exclude=exclude)


@pytest.mark.parametrize("name", ["typiclust", "probcover"])
def test_labeled_rows_are_never_picked_and_an_empty_labeled_set_is_none(name):
    rng = seeding.rng()
    x = blobs(rng, 150)
    params = {"delta": 1.0} if name == "probcover" else {}
    labels = np.full(150, -1)
    plain = selection.select(name, 8, {"embeddings": x}, params, seed=3)
    empty = selection.select(name, 8, {"embeddings": x, "labels": labels}, params, seed=3)
    np.testing.assert_array_equal(plain.indices, empty.indices)
    labels[rng.choice(150, size=140, replace=False)] = 0
    rest = selection.select(name, 10, {"embeddings": x, "labels": labels}, params, seed=3)
    assert sorted(rest.indices.tolist()) == np.flatnonzero(labels < 0).tolist()
    with pytest.raises(InvalidInput) as err:
        selection.select(name, 11, {"embeddings": x, "labels": labels}, params)
    assert err.value.field == "budget"


def test_labeled_items_outside_the_pool_count_like_labeled_rows_of_it():
    rng = seeding.rng()
    x = blobs(rng, 200)
    pool, outside = x[:180], x[180:]
    labels = np.r_[np.full(180, -1), np.zeros(20, dtype=np.int64)]
    inside = selection.select("probcover", 12, {"embeddings": x, "labels": labels},
                              {"delta": 1.1}, seed=1)
    apart = selection.select("probcover", 12, {"embeddings": pool,
                                               "labeled_embeddings": outside},
                             {"delta": 1.1}, seed=1)
    np.testing.assert_array_equal(inside.indices, apart.indices)
    both = selection.select("probcover", 12, {"embeddings": x, "labels": labels,
                                              "labeled_embeddings": outside},
                            {"delta": 1.1}, seed=1)
    np.testing.assert_array_equal(inside.indices, both.indices)
    with pytest.raises(InvalidInput) as err:
        selection.select("probcover", 3, {"embeddings": x, "labels": labels,
                                          "labeled_embeddings": outside[:5]})
    assert err.value.field == "inputs.labeled_embeddings"
    got = selection.select("typiclust", 4, {"embeddings": pool, "labeled_embeddings": outside},
                           seed=2)
    assert got.indices.max() < 180 and got.metrics["typiclust_clusters"] == 24


@pytest.mark.parametrize("params,field", [
    ({"delta": 0.0}, "params.delta"), ({"delta": -1.0}, "params.delta"),
    ({"delta": float("inf")}, "params.delta")])
def test_probcover_refuses_a_bad_delta(params, field):
    x = seeding.rng().normal(size=(20, 3))
    with pytest.raises(InvalidInput) as err:
        selection.select("probcover", 2, {"embeddings": x}, params)
    assert err.value.field == field


@pytest.mark.parametrize("name,params,field", [
    ("typiclust", {"k": 0}, "params.k"), ("typiclust", {"max_clusters": -1},
                                          "params.max_clusters"),
    ("typiclust", {"backend": "numba-cpu"}, "params.backend"),
    ("lightweight_coreset", {"distance": "cosine"}, "params.distance")])
def test_bad_parameters_name_their_field(name, params, field):
    x = seeding.rng().normal(size=(20, 3))
    with pytest.raises(InvalidInput) as err:
        selection.select(name, 2, {"embeddings": x}, params)
    assert err.value.field == field


def test_duplicates_and_identical_rows():
    x = np.zeros((12, 4))
    x[6:] = 1.0
    got = selection.select("probcover", 3, {"embeddings": x}, {"delta": 0.5}, seed=0)
    assert got.indices.tolist() == [0, 6, 1] and got.scores.tolist() == [6, 6, 0]
    same = selection.select("lightweight_coreset", 12, {"embeddings": np.ones((12, 3))}, seed=4)
    np.testing.assert_allclose(same.scores, 1 / 12)
    got = selection.select("typiclust", 2, {"embeddings": x}, seed=0)
    assert sorted(got.indices.tolist()) == [0, 6]


def test_max_clusters_goes_round_robin():
    rng = seeding.rng()
    x = blobs(rng, 200)
    got = selection.select("typiclust", 9, {"embeddings": x}, {"max_clusters": 3}, seed=5)
    clusters = cold_start.kmeans_labels(x, 3, ctx_for(np.arange(200), 5), 20, "auto")
    assert [len(set(clusters[got.indices[i:i + 3]].tolist())) for i in (0, 3, 6)] == [3, 3, 3]


@pytest.mark.parametrize("name", NAMES[:2])
def test_cancellation_stops_between_steps(name):
    x = seeding.rng().normal(size=(100, 4))
    calls = []

    def check():
        calls.append(1)
        if len(calls) > 3:
            raise RuntimeError("cancelled")

    params = {"delta": 1.0} if name == "probcover" else {}
    with pytest.raises(RuntimeError):
        selection.select(name, 50, {"embeddings": x}, params, check_cancelled=check)


def test_pool_with_labeled_items_through_the_server(client):
    rng = seeding.rng()
    x = unit(blobs(rng, 300, d=8)).astype(np.float32)
    client.create_pool("cold")
    client.append("cold", embeddings=x)
    labeled = np.sort(rng.choice(300, size=12, replace=False))
    client.label("cold", labeled, rng.integers(0, 3, size=12))
    labels = np.full(300, -1)
    labels[labeled] = 0
    for name, params in (("probcover", {"delta": 0.5}), ("typiclust", {}),
                         ("lightweight_coreset", {})):
        got = client.select(name, 7, pool="cold", seed=4, params=params)
        want = selection.select(name, 7, {"embeddings": x, "labels": labels}, params, seed=4,
                                exclude=labeled)
        np.testing.assert_array_equal(got.indices, want.indices, err_msg=name)
        assert not set(got.indices.tolist()) & set(labeled.tolist())


def three_blobs():
    """15 points in three blobs 100 apart, of 6, 5 and 4 items (the conformance case)."""
    r = np.random.default_rng(0)
    centres = np.array([[0, 0], [100, 0], [0, 100]], float)
    x = np.concatenate([centres[i] + np.round(r.normal(size=(s, 2)), 2)
                        for i, s in enumerate([6, 5, 4])])
    return x, np.repeat([0, 1, 2], [6, 5, 4])


@pytest.mark.parametrize("labeled_rows,budget", [([], 3), ([2], 2)])
def test_typiclust_end_to_end_on_separated_blobs(labeled_rows, budget):
    """k-means++ finds the three blobs from any seed (a random start often merges two)."""
    x, blob = three_blobs()
    labeled = np.isin(np.arange(15), labeled_rows)
    want, tau = typiclust_twin(x, blob, labeled, np.flatnonzero(~labeled), budget, 2)
    labels = np.where(labeled, 0, -1)
    for seed in range(5):
        got = selection.select("typiclust", budget, {"embeddings": x, "labels": labels},
                               {"k": 2}, seed=seed)
        np.testing.assert_array_equal(got.indices, want, err_msg=f"seed {seed}")
        np.testing.assert_allclose(got.scores, tau, rtol=1e-12)


def test_kmeans_partition_labels_every_row():
    from assay.kernels.partition import kmeans_partition, kmeans_plusplus

    x, _ = three_blobs()
    for init in ("k-means++", "random"):
        labels, objective, backend = kmeans_partition(x, 3, rng=np.random.default_rng(1),
                                                      init=init)
        assert labels.shape == (15,) and set(labels.tolist()) <= {0, 1, 2}
        assert backend == "faiss-cpu" and objective >= 0
    labels, _, _ = kmeans_partition(x, 15, rng=np.random.default_rng(1))
    assert labels.tolist() == list(range(15))
    same = np.zeros((6, 2))
    picks = kmeans_plusplus(same, 4, np.random.default_rng(3))  # every D = 0: distinct rows
    assert len(set(picks.tolist())) == 4
