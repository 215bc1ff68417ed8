"""Cluster-Margin and SEALS at N = 100k and 1M, d = 128, with their references.

Run one part at a time (each fits in about three minutes on two cores):

    python bench/cluster_margin_seals.py seals --n 100000      # SEALS vs small-text SEALS
    python bench/cluster_margin_seals.py cluster --n 100000    # Cluster-Margin (+ scipy at --ref-n)
    python bench/cluster_margin_seals.py seals --n 1000000 --no-peer
    python bench/cluster_margin_seals.py cluster --n 1000000 --ref-n 0

Data: a mixture of N / 100 Gaussian blobs in R^128 (float32), probabilities from a
Dirichlet(0.3) over 10 classes; L labeled items drawn uniformly. Times are wall
seconds, best and median of ``--repeats`` runs, with the load average before the
part; memory is the process's peak RSS (ru_maxrss) after the part.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time

import numpy as np

from assay.kernels.hac import average_linkage_clusters
from assay.server.acquisition import selection
from assay.server.strategies import large_batch


def data(n: int, d: int = 128, c: int = 10, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=1.0, size=(max(1, n // 100), d)).astype(np.float32)
    h = centres[rng.integers(0, centres.shape[0], n)]
    h += rng.normal(scale=0.25, size=(n, d)).astype(np.float32)
    probs = rng.dirichlet(np.full(c, 0.3), size=n).astype(np.float32)
    return h, probs


def timed(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), statistics.median(times), out


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def line(what: str, best: float, median: float, extra: str = "") -> None:
    print(f"| {what} | {best:.2f} | {median:.2f} | {extra} |", flush=True)


def seals_part(args) -> None:
    h, probs = data(args.n)
    rng = np.random.default_rng(1)
    labeled = np.sort(rng.choice(args.n, args.labeled, replace=False))
    unlabeled = np.setdiff1d(np.arange(args.n), labeled)
    arrays = {"embeddings": h, "probs": probs, "labeled_embeddings": h[labeled]}
    params = {"k": args.k, "score": "margin"}
    selection.select("seals", 10, {**arrays}, params, seed=0, exclude=labeled)  # warm
    best, med, ours = timed(lambda: selection.select("seals", args.budget, arrays, params,
                                                     seed=0, exclude=labeled), args.repeats)
    line(f"assay seals, N={args.n}, L={args.labeled}, k={args.k}, b={args.budget}", best, med,
         f"{int(ours.metrics['seals_candidates'])} candidates; peak RSS {peak_rss_mb():.0f} MB")
    if args.no_peer:
        return
    from small_text.query_strategies import SEALS, BreakingTies

    class Model:
        def predict_proba(self, dataset):
            return probs

        def embed(self, dataset, pbar=None):
            return h

    peer = SEALS(BreakingTies(), k=args.k)
    t = time.perf_counter()
    peer_picks = peer.query(Model(), probs, unlabeled, labeled, np.zeros(labeled.size, int),
                            n=args.budget)
    first = time.perf_counter() - t
    best_p, med_p, _ = timed(lambda: peer.query(Model(), probs, unlabeled, labeled,
                                                np.zeros(labeled.size, int), n=args.budget),
                             args.repeats)
    subset_peer = peer.get_subset_indices(Model(), probs, unlabeled, labeled)
    ours_subset = large_batch.neighbourhood(h[labeled], h, unlabeled, args.k, "cosine")
    recall = np.isin(ours_subset, subset_peer).mean()
    overlap = np.isin(ours.indices, peer_picks).mean()
    line("small-text SEALS (hnswlib M=64, ef=200), first query incl. index build",
         first, first, "n = 1")
    line("small-text SEALS, later queries (index reused)", best_p, med_p,
         f"its neighbourhood holds {recall:.4f} of the exact one; picks overlap {overlap:.4f}; "
         f"peak RSS {peak_rss_mb():.0f} MB")


def cluster_part(args) -> None:
    h, probs = data(args.n)
    rng = np.random.default_rng(2)
    labeled = np.sort(rng.choice(args.n, args.labeled, replace=False))
    arrays = {"embeddings": h, "probs": probs}
    h.flags.writeable = False  # as a stored pool's rows: the clustering is kept
    params = {"neighbors": args.neighbors, "graph": args.graph}
    t = time.perf_counter()
    first = selection.select("cluster_margin", args.budget, arrays, params, seed=0,
                             exclude=labeled)
    cold = time.perf_counter() - t
    m = first.metrics
    line(f"assay cluster_margin first request (clustering), N={args.n}, graph {args.graph}, "
         f"neighbors {args.neighbors}", cold, cold,
         f"n = 1; {int(m['clusters'])} clusters at eps {m['epsilon']:.3f}, "
         f"{int(m['graph_edges'])} edges; peak RSS {peak_rss_mb():.0f} MB")
    best, med, again = timed(lambda: selection.select("cluster_margin", args.budget, arrays,
                                                      params, seed=0, exclude=labeled),
                             args.repeats)
    line(f"assay cluster_margin later requests (clustering kept), b={args.budget}", best, med,
         f"{int(again.metrics['clusters_in_batch'])} clusters in the batch")
    if args.ref_n:
        reference(h[:args.ref_n], args)


def reference(h: np.ndarray, args) -> None:
    """scipy's exact average linkage on the first ref_n rows against ours."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from sklearn.metrics import adjusted_rand_score

    n = h.shape[0]
    x = np.asarray(h, np.float64)
    t = time.perf_counter()
    z = linkage(x, "average")
    scipy_s = time.perf_counter() - t
    eps = float(np.median(z[:, 2]))
    want = fcluster(z, eps, "distance")
    best, med, sparse = timed(lambda: average_linkage_clusters(h, eps, args.neighbors,
                                                               graph="exact"), args.repeats)
    line(f"scipy linkage(average) exact, N={n}", scipy_s, scipy_s,
         f"n = 1; {np.unique(want).size} clusters at eps {eps:.3f}")
    line(f"assay, neighbors {args.neighbors}, same eps", best, med,
         f"{sparse.clusters} clusters; ARI vs exact {adjusted_rand_score(want, sparse.labels):.4f}")
    small = min(n, args.complete_n)
    z2 = linkage(x[:small], "average")
    eps2 = float(np.median(z2[:, 2]))
    best, med, full = timed(lambda: average_linkage_clusters(h[:small], eps2, small - 1,
                                                             graph="exact"), 1)
    same = adjusted_rand_score(fcluster(z2, eps2, "distance"), full.labels)
    line(f"assay, complete graph (neighbors N-1), N={small}", best, med,
         f"ARI vs scipy {same:.4f} (1 = the same partition)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("part", choices=("seals", "cluster"))
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--labeled", type=int, default=1000)
    ap.add_argument("--budget", type=int, default=1000)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--neighbors", type=int, default=10)
    ap.add_argument("--graph", default="auto")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ref-n", type=int, default=10_000)
    ap.add_argument("--complete-n", type=int, default=2_000)
    ap.add_argument("--no-peer", action="store_true")
    args = ap.parse_args()
    print(f"load average before: {os.getloadavg()}", flush=True)
    print("| what | best s | median s | notes |\n|---|---|---|---|", flush=True)
    (seals_part if args.part == "seals" else cluster_part)(args)


if __name__ == "__main__":
    main()
