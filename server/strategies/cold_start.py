"""Cold-start batch strategies on embeddings: TypiClust, ProbCover, lightweight coreset.

TypiClust and ProbCover suit tiny budgets, when the model is too weak for its
uncertainty to mean anything: they read only the geometry of the embeddings and
the labeled set. The lightweight coreset is a one-pass importance sample, a cheap
stand-in for k-center on huge pools. None of them forms an N x N matrix: k-means,
the k nearest neighbours and the δ-ball graph go through ``assay.kernels`` (FAISS),
in memory O(N·k) (O(E) for the δ-ball graph, E its edges).

The labeled set. ``labels`` (one per pool row, -1 where unlabeled; a stored pool
derives it) marks labeled rows of the pool itself, which are then never picked.
Without ``labels``, ``labeled_embeddings`` are labeled items outside the pool,
appended to it for the clustering and the coverage. When both are given (as a
stored pool gives them) ``labels`` decides and ``labeled_embeddings`` must hold one
row per labeled row. Greedy steps take the lower row on exact ties, seed or not,
like the other greedy geometric kernels (``assay.vocab.ties``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from assay.kernels import dispatch
from assay.kernels.bits import compute_dtype
from assay.kernels.knn import knn
from assay.kernels.partition import INITS, kmeans_partition
from assay.kernels.radius import radius_graph
from assay.vocab.errors import InvalidInput

from .registry import Context, Inputs, Param, Selection, Strategy, register

#: TypiClust's floor on the mean neighbour distance (scikit-activeml's ``eps``).
TYPICALITY_EPS = 1e-7
#: Rows whose neighbours are measured in float64 at a time.
_ROW_BLOCK = 8192


def _faiss_backend_param() -> Param:
    return Param(
        "backend", str, dispatch.AUTO,
        "Kernel backend of the k-means and the neighbour search: auto picks by what is "
        "installed and by size; naming a GPU backend without a GPU fails with "
        "FAILED_PRECONDITION.",
        choices=(dispatch.AUTO, dispatch.FAISS_CPU, dispatch.FAISS_GPU),
    )


def labeled_universe(inputs: Inputs, candidates: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The rows to cluster or cover, which of them are labeled, and which may be picked.

    Returns
    -------
    x : float [U, d]
        The pool's embeddings, followed by ``labeled_embeddings`` when they are
        labeled items outside the pool (no ``labels`` given).
    labeled : bool [U]
    selectable : int64 [M]
        The candidates that are not labeled, sorted.
    """
    x = inputs["embeddings"]
    n, d = x.shape
    labels = inputs["labels"] if "labels" in inputs else None
    outside = inputs["labeled_embeddings"] if "labeled_embeddings" in inputs else None
    if outside is not None and outside.shape[1] != d:
        raise InvalidInput(f"labeled_embeddings have width {outside.shape[1]}, the "
                           f"embeddings {d}", field="inputs.labeled_embeddings")
    labeled = np.zeros(n, dtype=bool)
    if labels is not None:
        labeled = np.asarray(labels) >= 0
        if outside is not None and outside.shape[0] != int(labeled.sum()):
            raise InvalidInput(
                f"labeled_embeddings hold {outside.shape[0]} rows but labels mark "
                f"{int(labeled.sum())} labeled items; with labels, labeled_embeddings are "
                f"the embeddings of the labeled rows", field="inputs.labeled_embeddings")
    elif outside is not None and outside.shape[0]:
        x = np.concatenate([np.asarray(x), np.asarray(outside)]).astype(
            np.result_type(x.dtype, outside.dtype, np.float32), copy=False)
        labeled = np.concatenate([labeled, np.ones(outside.shape[0], dtype=bool)])
    selectable = candidates[~labeled[candidates]]
    return x, labeled, selectable


def _check_budget(budget: int, selectable: np.ndarray) -> None:
    if budget > selectable.size:
        raise InvalidInput(f"budget {budget} exceeds the {selectable.size} selectable "
                           f"unlabeled candidates", field="budget")


# --- TypiClust -----------------------------------------------------------------------

def typicality(x: np.ndarray, members: np.ndarray, k: int, backend: str = dispatch.AUTO
               ) -> np.ndarray:
    """Typicality of each member of one cluster, float64 [m].

    τ(x) = 1 / ((1/k') (Σ_{j ∈ kNN(x)} ‖x − x_j‖ + eps)), k' = min(k, m − 1): the
    inverse mean Euclidean distance to the k' nearest other members (the member
    itself is searched too, at distance 0, as scikit-activeml does); τ = 1 for a
    cluster of one. Neighbours are found by FAISS in float32 and measured again
    in float64.
    """
    m = members.size
    if m == 1:
        return np.ones(1)
    kk = min(int(k), m - 1)
    rows = np.asarray(x[members])
    _, nbr, _ = knn(rows, rows, kk + 1, backend=backend)
    total = np.empty(m)
    for lo in range(0, m, _ROW_BLOCK):
        hi = min(m, lo + _ROW_BLOCK)
        diff = (np.asarray(rows[nbr[lo:hi]], dtype=np.float64)
                - np.asarray(rows[lo:hi], dtype=np.float64)[:, None, :])
        total[lo:hi] = np.sqrt(np.einsum("ijk,ijk->ij", diff, diff)).sum(axis=1)
    return 1.0 / ((1.0 / kk) * (total + TYPICALITY_EPS))


def typiclust_picks(
    x: np.ndarray,
    clusters: np.ndarray,
    labeled: np.ndarray,
    selectable: np.ndarray,
    budget: int,
    k: int,
    *,
    check_cancelled: Callable[[], None] = lambda: None,
    backend: str = dispatch.AUTO,
) -> tuple[np.ndarray, np.ndarray]:
    """TypiClust's picks given a clustering: (rows best first, their typicality).

    Clusters are visited by (labeled members ascending, size descending, smallest
    member row ascending), so the clusters with no labeled member come first, the
    largest first; each visit picks the most typical selectable member of the
    cluster (ties: lower row). Clusters with nothing left to pick are skipped; when
    the budget outlasts the uncovered clusters the visits go round again over every
    cluster in the same order (the authors' round-robin).

    Parameters
    ----------
    x : float [U, d]
    clusters : int [U]
        Cluster id per row, in [0, K).
    labeled : bool [U]
    selectable : int64 [M]
        Sorted rows that may be picked.
    budget : int
        1 <= budget <= M.
    k : int
        Neighbours of the typicality.
    """
    u = clusters.size
    n_clusters = int(clusters.max()) + 1
    sizes = np.bincount(clusters, minlength=n_clusters)
    covered = np.bincount(clusters[labeled], minlength=n_clusters)
    first_row = np.full(n_clusters, u, dtype=np.int64)
    np.minimum.at(first_row, clusters, np.arange(u, dtype=np.int64))
    order = np.lexsort((first_row, -sizes, covered))
    by_cluster = np.argsort(clusters, kind="stable")
    starts = np.concatenate([[0], np.cumsum(sizes)])
    available = np.zeros(u, dtype=bool)
    available[selectable] = True
    cache: dict[int, np.ndarray] = {}
    picks: list[int] = []
    scores: list[float] = []
    while len(picks) < budget:
        before = len(picks)
        for c in order:
            if len(picks) == budget:
                break
            members = by_cluster[starts[c]:starts[c + 1]]
            free = available[members]
            if not free.any():
                continue
            if c not in cache:
                cache[c] = typicality(x, members, k, backend)
            tau = np.where(free, cache[c], -np.inf)
            best = int(np.argmax(tau))
            row = int(members[best])
            picks.append(row)
            scores.append(float(cache[c][best]))
            available[row] = False
            check_cancelled()
        if len(picks) == before:  # pragma: no cover - budget <= selectable rules it out
            break
    return np.asarray(picks, dtype=np.int64), np.asarray(scores)


def kmeans_labels(x: np.ndarray, n_clusters: int, ctx: Context, iterations: int,
                  backend: str, init: str = "k-means++") -> np.ndarray:
    """k-means of every row of ``x`` into ``n_clusters`` (``assay.kernels.partition``);
    the cluster of each row."""
    labels, objective, chosen = kmeans_partition(
        x, min(n_clusters, x.shape[0]), rng=ctx.rng, iterations=iterations, init=init,
        check_cancelled=ctx.check_cancelled, backend=backend)
    ctx.backend = chosen
    ctx.metrics["kmeans_objective"] = objective
    return labels


def typiclust(inputs: Inputs, budget: int, params: dict, ctx: Context) -> Selection:
    """TypiClust (Hacohen et al. 2022): k-means into L + b clusters, then the most
    typical item of each of the largest clusters holding no labeled item.

    Scores are the typicality of each pick.
    """
    x, labeled, selectable = labeled_universe(inputs, ctx.candidates)
    _check_budget(budget, selectable)
    n_clusters = int(labeled.sum()) + budget
    if params["max_clusters"]:
        n_clusters = min(n_clusters, params["max_clusters"])
    clusters = kmeans_labels(x, n_clusters, ctx, params["iterations"], params["backend"],
                             params["init"])
    ctx.check_cancelled()
    picks, tau = typiclust_picks(x, clusters, labeled, selectable, budget, params["k"],
                                 check_cancelled=ctx.check_cancelled,
                                 backend=params["backend"])
    ctx.metrics["typiclust_clusters"] = float(n_clusters)
    return Selection(indices=picks, scores=tau)


# --- ProbCover -----------------------------------------------------------------------

def _neighbours(indptr: np.ndarray, indices: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The neighbour lists of ``rows``, concatenated."""
    starts = indptr[rows]
    lengths = indptr[rows + 1] - starts
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=indices.dtype)
    offsets = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    return indices[offsets + np.arange(total)]


def probcover_picks(
    indptr: np.ndarray,
    indices: np.ndarray,
    labeled: np.ndarray,
    selectable: np.ndarray,
    budget: int,
    *,
    check_cancelled: Callable[[], None] = lambda: None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Greedy max coverage on a symmetric δ-ball graph (CSR, self-loops included).

    The items within δ of a labeled item are covered first; then each step picks
    the selectable item with the most uncovered items within δ (itself included;
    ties: lower row), covers them, and removes the edges into them.

    Returns
    -------
    picks : int64 [b]
    gains : float64 [b]
        Items newly covered by each pick (its out-degree at pick time).
    covered : bool [U]
        Covered items after the last pick.
    """
    u = indptr.size - 1
    degree = np.diff(indptr)
    covered = np.zeros(u, dtype=bool)

    def cover(rows: np.ndarray) -> None:
        reached = np.unique(_neighbours(indptr, indices, rows))
        new = reached[~covered[reached]]
        covered[new] = True
        np.subtract.at(degree, _neighbours(indptr, indices, new), 1)

    cover(np.flatnonzero(labeled))
    taken = np.zeros(selectable.size, dtype=bool)
    picks = np.empty(budget, dtype=np.int64)
    gains = np.empty(budget)
    for step in range(budget):
        gain = np.where(taken, -1, degree[selectable])
        pos = int(np.argmax(gain))
        row = int(selectable[pos])
        picks[step], gains[step] = row, float(gain[pos])
        taken[pos] = True
        cover(np.array([row]))
        check_cancelled()
    return picks, gains, covered


def probcover(inputs: Inputs, budget: int, params: dict, ctx: Context) -> Selection:
    """ProbCover (Yehuda et al. 2022): greedy coverage of δ-balls.

    Scores are the items each pick newly covers.
    """
    delta = params["delta"]
    if not delta > 0:
        raise InvalidInput(f"params.delta must be > 0, got {delta}", field="params.delta")
    x, labeled, selectable = labeled_universe(inputs, ctx.candidates)
    _check_budget(budget, selectable)
    graph = radius_graph(x, delta, check_cancelled=ctx.check_cancelled)
    ctx.backend = graph.backend
    picks, gains, covered = probcover_picks(graph.indptr, graph.indices, labeled, selectable,
                                            budget, check_cancelled=ctx.check_cancelled)
    ctx.metrics["probcover_edges"] = float(graph.indices.size)
    ctx.metrics["probcover_coverage"] = float(covered.mean())
    return Selection(indices=picks, scores=gains)


# --- Lightweight coreset -------------------------------------------------------------

def lightweight_distances(x: np.ndarray, rows: np.ndarray, distance: str) -> np.ndarray:
    """d(x, μ)² for each of ``rows``, float64 [M]; μ is the mean of those rows.

    ``euclidean``: ‖x − μ‖² (Bachem et al.). ``angular``: (arccos(cos(x, μ)) / π)²,
    small-text's, where a zero row or a zero mean has cosine 0. Two passes over the
    rows, block by block (slices, not gathers, when every row is a candidate); the mean
    is summed in float64, the rest computed in float64 for float64 rows and in float32
    otherwise, like the kernels (``assay.kernels.bits.compute_dtype``).
    """
    m = rows.size
    every = m == x.shape[0]

    def part(lo: int) -> np.ndarray:
        return np.asarray(x[lo:lo + _ROW_BLOCK] if every else x[rows[lo:lo + _ROW_BLOCK]])

    dtype = compute_dtype(x)

    def block(lo: int) -> np.ndarray:
        return np.asarray(part(lo), dtype=dtype)

    mean = np.zeros(x.shape[1])
    for lo in range(0, m, _ROW_BLOCK):
        mean += part(lo).sum(axis=0, dtype=np.float64)
    mean = (mean / m).astype(dtype)
    out = np.empty(m)
    norm = np.sqrt(mean @ mean)
    for lo in range(0, m, _ROW_BLOCK):
        b = block(lo)
        if distance == "euclidean":
            b = b - mean  # not in place: the block may be the caller's read-only array
            out[lo:lo + b.shape[0]] = np.einsum("ij,ij->i", b, b)
        else:
            norms = np.sqrt(np.einsum("ij,ij->i", b, b)) * norm
            cosine = np.clip((b @ mean) / np.where(norms > 0, norms, 1.0), -1.0, 1.0)
            out[lo:lo + b.shape[0]] = np.square(np.arccos(cosine) / np.pi)
    return out


def lightweight_probabilities(dist2: np.ndarray) -> np.ndarray:
    """q(x) = 1/2 · 1/M + 1/2 · d(x, μ)² / Σ d², normalized to sum 1 (uniform when
    every distance is 0)."""
    m = dist2.size
    total = dist2.sum()
    if total > 0:
        q = 0.5 / m + 0.5 * dist2 / total
    else:
        q = np.full(m, 1.0 / m)
    return q / np.sum(np.abs(q))


def lightweight_coreset(inputs: Inputs, budget: int, params: dict, ctx: Context) -> Selection:
    """Lightweight coreset (Bachem, Lucic, Krause 2018): b candidates sampled without
    replacement with probability q(x), in the order drawn.

    Scores are q of each pick.
    """
    rows = ctx.candidates
    q = lightweight_probabilities(lightweight_distances(inputs["embeddings"], rows,
                                                        params["distance"]))
    pos = ctx.rng.choice(rows.size, size=budget, replace=False, p=q)
    return Selection(indices=rows[pos], scores=q[pos])


register(Strategy(
    name="typiclust",
    kind="batch",
    fn=typiclust,
    required=("embeddings",),
    optional=("labels", "labeled_embeddings"),
    description="TypiClust (Hacohen et al. 2022): k-means into labeled + budget clusters, "
                "then the most typical item (inverse mean distance to its k nearest "
                "neighbours in its cluster) of each of the largest clusters without a "
                "labeled item.",
    params=(
        Param("k", int, 5, "Neighbours of the typicality (within the cluster).",
              minimum=1, maximum=1000),
        Param("max_clusters", int, 0,
              "Cap on the number of clusters (the authors use 500); 0 for labeled + budget.",
              minimum=0),
        Param("iterations", int, 20, "Lloyd iterations of the k-means.", minimum=1,
              maximum=1000),
        Param("init", str, "k-means++",
              "Start of the k-means: k-means++ seeding (O(K x sample x d)) or random "
              "(FAISS's: K sampled rows, cheaper for very many clusters).", choices=INITS),
        _faiss_backend_param(),
    ),
))

register(Strategy(
    name="probcover",
    kind="batch",
    fn=probcover,
    required=("embeddings",),
    optional=("labels", "labeled_embeddings"),
    description="ProbCover (Yehuda et al. 2022): greedy maximum coverage of the balls of "
                "radius delta around the picks, the labeled items' balls covered first.",
    params=(
        Param("delta", float, 0.75,
              "Ball radius (Euclidean, in the embeddings' units), > 0.", minimum=0.0),
    ),
))

register(Strategy(
    name="lightweight_coreset",
    kind="batch",
    fn=lightweight_coreset,
    required=("embeddings",),
    description="Lightweight coreset (Bachem, Lucic, Krause 2018): sample the batch without "
                "replacement with probability 1/(2M) + d(x, mean)^2 / (2 sum d^2).",
    params=(
        Param("distance", str, "euclidean",
              "d(x, mean): euclidean (the paper's) or angular, arccos(cos) / pi "
              "(small-text's).", choices=("euclidean", "angular")),
    ),
))
