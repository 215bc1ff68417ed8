"""Expected answers of the vector cases from the independent float64 references.

``expected(...)`` answers a Select from ``tests/reference.py`` (score strategies) and
``tests/kernels/naive.py`` (k-center, BADGE), plus a float64 Lloyd twin for
k-means, never from the server under test. Each answer carries the tolerance of
its scores (see ``tolerance.py``) and is only returned when every decision it
contains -- the top-b order, each greedy argmax, each BADGE inverse-CDF draw, each
cluster membership and medoid -- wins by more than twice that tolerance.
Otherwise ``TooClose`` is raised and the generator draws other inputs, so a pick
can never depend on the rounding of the host.

Strategies without an independent twin here return ``None``; the generator then
stores the server's answer after cross-checking it against the protocol-free
acquisition layer (see ``generate.py``).
"""

from __future__ import annotations

import importlib.util
import itertools
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tolerance as tol

_TESTS = Path(__file__).resolve().parents[1]


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ref = _load("assay_vectors_reference", _TESTS / "reference.py")
naive = _load("assay_vectors_naive", _TESTS / "kernels" / "naive.py")


class TooClose(Exception):
    """Two alternatives of a decision are within the rounding bound: draw other inputs."""


class _SeededTie(Exception):
    """An exact tie decides a pick and the request is seeded: the server orders such
    ties by a seeded permutation, which has no twin here."""


@dataclass
class Answer:
    """What a conforming server must answer, and how closely its scores must match."""

    indices: list[int]
    scores: list[float]
    rtol: float
    atol: float
    basis: str
    #: (indices, labels) of pseudo-labeled items, for strategies that return them.
    pseudo: tuple[list[int], list[int]] | None = None


def _f64(a) -> np.ndarray:
    return np.asarray(a).astype(np.float64)


def _probs(inputs: dict) -> np.ndarray:
    if "probs" in inputs:
        return _f64(inputs["probs"])
    return _f64(inputs["samples"]).mean(axis=0)


def _vote_entropy(samples) -> np.ndarray:
    """``ref.vote_entropy`` made tie-exact: items with the same vote histogram (in any
    class order) are equal in exact arithmetic, so they get the very same float."""
    s = np.asarray(samples)
    votes = np.argmax(s, axis=2)  # [S, N]
    raw = ref.vote_entropy(s)
    first: dict[tuple[int, ...], float] = {}
    out = np.empty_like(raw)
    for i in range(s.shape[1]):
        key = tuple(sorted(Counter(votes[:, i].tolist()).values()))
        out[i] = first.setdefault(key, float(raw[i]))
    return out


class _NoTwin(Exception):
    """The case needs a part that has no twin here."""


def _information_density(inputs: dict, params: dict, candidates) -> np.ndarray:
    """``ref.information_density`` over a base score twin. The base enters through its
    rank among the candidates, which jumps by 1/M when two base scores swap: they must
    be equal in exact arithmetic or apart by more than twice the float64 tolerance."""
    base = params.get("base", "entropy")
    if base not in SCORES:
        raise _NoTwin
    phi = SCORES[base](inputs, {}, candidates)
    values = np.sort(phi[candidates])
    gaps = np.diff(values)
    close = (gaps > 0) & (gaps <= 2 * (2 * tol.FLOAT64_ATOL
                                       + tol.FLOAT64_RTOL * np.abs(values[1:])))
    if close.any():
        raise TooClose("information density: two base scores a rounding apart")
    return ref.information_density(phi, inputs["embeddings"], list(candidates),
                                   float(params.get("beta", 1.0)))


#: Score strategies with a float64 twin: (inputs, params, candidates) -> float64[N].
SCORES = {
    "least_confident": lambda x, p, c: ref.least_confident(_probs(x)),
    "margin": lambda x, p, c: ref.margin(_probs(x)),
    "entropy": lambda x, p, c: ref.entropy(_probs(x)),
    "vote_entropy": lambda x, p, c: _vote_entropy(x["samples"]),
    "consensus_entropy": lambda x, p, c: ref.consensus_entropy(x["samples"]),
    "kl_disagreement": lambda x, p, c: ref.kl_disagreement(x["samples"]),
    "bald": lambda x, p, c: ref.bald(x["samples"]),
    "variation_ratio": lambda x, p, c: ref.variation_ratio(x["samples"]),
    "mean_std": lambda x, p, c: ref.mean_std(x["samples"]),
    "egl": lambda x, p, c: ref.egl(_probs(x), x["embeddings"]),
    "label_dispersion": lambda x, p, c: ref.label_dispersion(x["predictions"]),
    "loss_prediction": lambda x, p, c: _f64(x["loss"]),
    "discriminator": lambda x, p, c: -_f64(x["discriminator"]),
    "precomputed": lambda x, p, c: _f64(x["scores"]),
    "mal": lambda x, p, c: ref.mal(_f64(x["discriminator"]), _probs(x), list(c),
                                   p.get("alpha", 0.5)),
    "information_density": _information_density,
}


def _top(scores: np.ndarray, k: int, candidates: np.ndarray, rtol: float,
         atol: float, seeded: bool) -> np.ndarray:
    """``ref.top_b`` (best first, ties to the lower index), checking that every
    neighbouring pair up to position k (the first one left out included) is either
    exactly equal (a tie in exact arithmetic, resolved by index) or apart by more
    than twice the tolerance."""
    order = ref.top_b(scores, len(candidates), candidates)
    for a, b in itertools.pairwise(order[: k + 1]):
        sa, sb = float(scores[a]), float(scores[b])
        if sa == sb and seeded:
            raise _SeededTie
        if sa != sb and abs(sa - sb) <= 2 * (2 * atol + rtol * (abs(sa) + abs(sb))):
            raise TooClose(f"scores of items {a} and {b} are {sa!r} and {sb!r}")
    return np.asarray(order[:k], dtype=np.int64)


def _score_answer(strategy: str, budget: int, inputs: dict, params: dict,
                  candidates: np.ndarray, seeded: bool) -> Answer | None:
    if strategy not in SCORES:
        return None
    rtol, atol = tol.FLOAT64_RTOL, tol.FLOAT64_ATOL
    pre = params.get("prefilter")
    if pre:
        if pre not in SCORES:
            return None
        k = int(params.get("prefilter_k") or 10 * budget)
        pre_scores = SCORES[pre](inputs, {}, candidates)
        candidates = np.sort(_top(pre_scores, min(k, candidates.size), candidates, rtol, atol,
                                  seeded))
    scores = SCORES[strategy](inputs, params, candidates)
    picks = _top(scores, budget, candidates, rtol, atol, seeded)
    return Answer(picks.tolist(), [float(scores[i]) for i in picks], rtol, atol,
                  f"tests/reference.py {strategy}" + (f" after {pre}" if pre else ""))


def _kcenter_answer(budget: int, inputs: dict, seed: int | None,
                    candidates: np.ndarray) -> Answer | None:
    x = np.asarray(inputs["embeddings"])
    labeled = inputs.get("labeled_embeddings")
    if labeled is not None and len(labeled) == 0:
        labeled = None
    if labeled is None and seed is None:
        return None  # an unseeded random first centre has no expected answer
    first = None
    if labeled is None:
        # The documented protocol: the first centre is the candidate at position
        # default_rng(seed).integers(number of candidates).
        first = int(np.random.default_rng(seed).integers(candidates.size))
    picks, dists, _ = naive.kcenter(x, budget, labeled=labeled, candidates=candidates,
                                    first=first)
    d = x.shape[1]
    # The kernel's error plus the float64 twin's own.
    u = tol.U32  # distances are kept in float32 buffers, whatever the storage
    sq_rel = tol.kcenter_sq_rel(d, u) + tol.kcenter_sq_rel(d, tol.U64)
    for step, (delta, picked) in enumerate(naive.kcenter_deltas(x, picks, labeled, candidates)):
        if step == 0 and first is not None:
            continue  # drawn, not compared
        live = np.sort(delta[~picked])[::-1]
        if live.size > 1 and live[0] - live[1] <= 2 * sq_rel * (live[0] + live[1]):
            raise TooClose(f"k-center step {step}: top distances^2 {live[0]!r}, {live[1]!r}")
    score_rel = tol.kcenter_score_rel(d, u) + tol.kcenter_score_rel(d, tol.U64)
    return Answer(picks.tolist(), dists.tolist(), max(tol.round_up(score_rel), tol.FLOOR_RTOL),
                  0.0, "tests/kernels/naive.py kcenter (float64)")


def _badge_answer(budget: int, inputs: dict, seed: int | None,
                  candidates: np.ndarray) -> Answer | None:
    """naive.badge's picks, with the distance at pick time as the score and every
    argmax and inverse-CDF draw checked against the rounding bound of the kernel."""
    if seed is None:
        return None
    p, h = np.asarray(inputs["probs"]), np.asarray(inputs["embeddings"])
    g = naive.gradient_embeddings(p, h)[candidates]
    norms = np.sqrt((g * g).sum(axis=1))
    u = tol.U32  # see tolerance.py: float32 arithmetic or float32 buffers
    coeff = (tol.badge_sq_coeff(h.shape[1], p.shape[1], u)
             + tol.badge_sq_coeff(h.shape[1], p.shape[1], tol.U64))
    # Squared norms are within coeff |g|^2: the first pick (their argmax) must win by more.
    sq = np.sort(norms**2)[::-1]
    if sq.size > 1 and sq[0] - sq[1] <= 2 * coeff * (sq[0] + sq[1]):
        raise TooClose("BADGE first pick: two gradient norms too close")
    rng = np.random.default_rng(seed)
    pos = int(np.argmax(norms))
    picks, dists = [pos], [float(norms[pos])]
    errs = [coeff * float(norms[pos]) + 2 * u * float(norms[pos])]
    d2 = np.full(len(candidates), np.inf)
    bound = np.zeros(len(candidates))
    for _ in range(budget - 1):
        z = picks[-1]
        d2 = np.minimum(d2, naive.sqdist(g, g[z]))
        # The error of a minimum is at most the larger of its arguments' errors.
        bound = np.maximum(bound, coeff * (norms + norms[z]) ** 2)
        d2[picks] = 0.0
        live = np.setdiff1d(np.arange(len(candidates)), picks)
        # The kernel zeroes a distance^2 below BADGE_ZERO_REL (|g_x|^2 + |g_z|^2) = 1e-5 (...):
        # keep every live one clear of ten times that threshold.
        if (d2[live] <= 1e-4 * (norms[live] ** 2 + norms.max() ** 2) + bound[live]).any():
            raise TooClose("BADGE: a candidate almost coincides with a pick")
        weights = np.where(np.isin(np.arange(len(candidates)), picks), 0.0, bound)
        total = d2.sum()
        draw = rng.random()
        cdf = np.cumsum(d2 / total)
        pos = int(np.searchsorted(cdf, draw, side="left"))
        # Each cumulative share S_k / S moves by at most 2 sum(bound) / S under rounding.
        slack = 2 * weights.sum() / total + 1e-12
        near = [cdf[k] for k in (pos - 1, pos) if 0 <= k < cdf.size]
        if any(abs(draw - c) <= 2 * slack for c in near):
            raise TooClose(f"BADGE draw {draw!r} within {2 * slack:.2g} of a CDF step")
        picks.append(pos)
        dists.append(float(math.sqrt(d2[pos])))
        errs.append(tol.sqrt_err(float(bound[pos]), dists[-1]) + 2 * u * dists[-1])
    twin = naive.badge(p, h, budget, np.random.default_rng(seed), candidates)
    rows = candidates[np.asarray(picks)]
    if twin.tolist() != rows.tolist():
        raise AssertionError(f"BADGE twin {twin.tolist()} vs {rows.tolist()}")
    rel = max(e / d for e, d in zip(errs, dists, strict=True) if d > 0)
    return Answer(rows.tolist(), dists, max(tol.round_up(rel), tol.FLOOR_RTOL), 0.0,
                  "tests/kernels/naive.py badge (float64 gradient embeddings)")


def _kmeans_answer(budget: int, inputs: dict, candidates: np.ndarray) -> Answer:
    """k-means on well-separated clusters, where the k-means fixed point is the
    partition into clusters: a float64 Lloyd from a farthest-point start finds it;
    each centroid is its members' mean, the pick the member nearest it (ties: lower
    row), ordered best first (score = -distance). The generator only keeps inputs on
    which the server's FAISS k-means reaches the same partition (its random start can
    stop in a local minimum; FAISS's start is integer arithmetic, the same on any host).
    """
    x = np.asarray(inputs["embeddings"])
    pts = _f64(x)[candidates]
    m, d = pts.shape
    if budget == m:
        return Answer(candidates.tolist(), [0.0] * m, tol.FLOOR_RTOL, 0.0, "every item")
    centres = [int(np.argmax((pts * pts).sum(axis=1)))]
    gap = np.full(m, np.inf)
    for _ in range(budget - 1):
        gap = np.minimum(gap, naive.sqdist(pts, pts[centres[-1]]))
        centres.append(int(np.argmax(gap)))
    cent = pts[centres].copy()
    for _ in range(100):
        dist = np.stack([naive.sqdist(pts, c) for c in cent], axis=1)
        label = np.argmin(dist, axis=1)
        if np.bincount(label, minlength=budget).min() == 0:
            raise TooClose("k-means: an empty cluster")
        new = np.stack([pts[label == j].mean(axis=0) for j in range(budget)])
        if np.array_equal(new, cent):
            break
        cent = new
    dist = np.stack([naive.sqdist(pts, c) for c in cent], axis=1)
    u = tol.U32  # FAISS works in float32 whatever the storage
    sq_norm = float((pts * pts).sum(axis=1).max())
    # Distances come from |x|^2 + |c|^2 - 2 x.c (BLAS) against a centroid that is the
    # float32 mean of its members, off by c_err in norm.
    sq_err = tol.l2_expansion_sq_abs(d, u, sq_norm, sq_norm)
    c_err = math.sqrt(d) * tol.mean_abs(m, u, float(np.abs(pts).max()))
    own = np.sqrt(dist[np.arange(m), label])
    err = np.array([tol.sqrt_err(sq_err, v) for v in own]) + c_err + 2 * u * own
    other = np.sqrt(np.where(np.eye(budget, dtype=bool)[label], np.inf, dist).min(axis=1))
    if (other - own <= 4 * err + 2 * math.sqrt(sq_err)).any():
        raise TooClose("k-means: a point is nearly as close to another cluster")
    picks = []
    for j in range(budget):
        members = np.flatnonzero(label == j)
        near = members[np.lexsort((members, own[members]))]
        if near.size > 1 and own[near[1]] - own[near[0]] <= 2 * (err[near[0]] + err[near[1]]):
            raise TooClose(f"k-means: two members nearly as close to centroid {j}")
        picks.append(int(near[0]))
    picks.sort(key=lambda i: (own[i], candidates[i]))
    for a, b in itertools.pairwise(picks):
        if own[b] - own[a] <= 2 * (err[a] + err[b]):
            raise TooClose("k-means: two picks' distances too close to order them")
    atol = tol.round_up(float(err[picks].max()))
    return Answer([int(candidates[i]) for i in picks], [-float(own[i]) for i in picks],
                  0.0, atol, "float64 Lloyd twin (tests/vectors/references.py)")


def _kl(p_from: np.ndarray, p_to: np.ndarray) -> float:
    """KL(p_from || p_to) in nats: 0 log 0 = 0, +inf where p_to rules out a class."""
    total = 0.0
    for a, b in zip(p_from, p_to, strict=True):
        if a > 0:
            total += math.inf if b == 0 else a * math.log(a / b)
    return total


def _cal_answer(budget: int, inputs: dict, params: dict, seed: int | None,
                candidates: np.ndarray) -> Answer | None:
    """CAL (Margatina et al. 2021): mean KL(P_L[l] || P[x]) over the k nearest labeled
    neighbours by exact float64 search; the k-th neighbour must beat the next one by
    more than the float32 (FAISS) distance bound."""
    h, hl = _f64(inputs["embeddings"]), _f64(inputs["labeled_embeddings"])
    p = np.clip(_probs(inputs), 0.0, 1.0)
    pl = np.clip(_f64(inputs["labeled_probs"]), 0.0, 1.0)
    n_lab, d = hl.shape
    k = min(int(params.get("k", 10)), n_lab)
    sq_lab = float((hl * hl).sum(axis=1).max())
    scores = np.full(h.shape[0], -np.inf)
    for x in candidates:
        dist = naive.sqdist(hl, h[x])
        order = np.lexsort((np.arange(n_lab), dist))
        if k < n_lab:
            bound = tol.l2_expansion_sq_abs(d, tol.U32, float(h[x] @ h[x]), sq_lab)
            if dist[order[k]] - dist[order[k - 1]] <= 2 * bound:
                raise TooClose(f"CAL: item {x}'s k-th and next neighbours nearly equidistant")
        scores[x] = sum(_kl(pl[j], p[x]) for j in order[:k]) / k
    rtol, atol = tol.FLOAT64_RTOL, tol.FLOAT64_ATOL
    picks = _top(scores, budget, candidates, rtol, atol, seed is not None)
    return Answer(picks.tolist(), [float(scores[i]) for i in picks], rtol, atol,
                  "CAL twin: exact float64 neighbours, KL in math (tests/vectors/references.py)")


def _forgetting_answer(budget: int, inputs: dict, params: dict,
                       seed: int | None) -> Answer | None:
    """Forgetting events (Toneva et al. 2019) over the labeled items, counted in Python:
    correct -> incorrect transitions, +inf when never correct; or, in 'unforgettable'
    mode, the never-forgotten learned items by epochs correct."""
    preds = np.asarray(inputs["predictions"])
    labels = np.asarray(inputs["labels"])
    labeled = np.flatnonzero(labels >= 0)
    scores = np.full(labels.size, -np.inf)
    for i in labeled:
        correct = [int(preds[t, i]) == int(labels[i]) for t in range(preds.shape[0])]
        events = (math.inf if not any(correct)
                  else float(sum(a and not b for a, b in itertools.pairwise(correct))))
        if params.get("mode", "forgettable") == "forgettable":
            scores[i] = events
        elif events == 0:
            scores[i] = float(sum(correct))
    ranked = np.asarray([i for i in labeled if scores[i] > -np.inf], dtype=np.int64)
    if ranked.size == 0:
        return Answer([], [], tol.FLOAT64_RTOL, tol.FLOAT64_ATOL, "no item qualifies")
    picks = _top(scores, min(budget, ranked.size), ranked, tol.FLOAT64_RTOL, tol.FLOAT64_ATOL,
                 seed is not None)
    return Answer(picks.tolist(), [float(scores[i]) for i in picks], tol.FLOAT64_RTOL,
                  tol.FLOAT64_ATOL, "forgetting-events twin (tests/vectors/references.py)")


def _suggestive_answer(budget: int, inputs: dict, params: dict, seed: int | None,
                       candidates: np.ndarray) -> Answer | None:
    """Suggestive Annotation (Yang et al. 2017) with its own uncertainty: the top K
    candidates by class-averaged committee variance, then plain greedy max-cover of the
    candidates on cosine similarity (``naive.facility_location``). The kernel computes
    in float64, so the float64 tolerance applies; every greedy step must still win by
    more than twice it."""
    if params.get("uncertainty", "variance") != "variance" or "samples" not in inputs:
        return None
    samples = np.clip(_f64(inputs["samples"]), 0.0, 1.0)
    mean = samples.mean(axis=0)
    phi = ((samples - mean) ** 2).mean(axis=0).mean(axis=1)
    rtol, atol = tol.FLOAT64_RTOL, tol.FLOAT64_ATOL
    k = min(int(params.get("top_k", 0)) or 10 * budget, candidates.size)
    shortlist = np.sort(_top(phi, k, candidates, rtol, atol, seed is not None))
    picks, gains = naive.facility_location(inputs["embeddings"], budget, candidates=shortlist,
                                           universe=candidates)
    h = _f64(inputs["embeddings"])
    h = h / np.maximum(np.linalg.norm(h, axis=1, keepdims=True), 1e-300)
    sims = h[shortlist] @ h[candidates].T
    cover = np.full(candidates.size, -1.0)
    taken = np.zeros(shortlist.size, dtype=bool)
    for step, row in enumerate(picks):
        g = np.maximum(sims - cover, 0.0).sum(axis=1)
        g[taken] = -np.inf
        top2 = np.sort(g)[::-1][:2]
        if top2.size > 1 and top2[0] - top2[1] <= 2 * (2 * atol + rtol * (top2[0] + top2[1])):
            raise TooClose(f"facility location step {step}: gains {top2[0]!r}, {top2[1]!r}")
        j = int(np.flatnonzero(shortlist == row)[0])
        taken[j] = True
        cover = np.maximum(cover, sims[j])
    return Answer(picks.tolist(), gains.tolist(), rtol, atol,
                  "tests/kernels/naive.py facility_location after a committee-variance top K")


def _ceal_answer(budget: int, inputs: dict, params: dict, seed: int | None,
                 candidates: np.ndarray) -> Answer | None:
    """CEAL (Wang et al. 2016): the top b by a score twin, and the other candidates with
    entropy below delta0 - decay * round, most confident first (ties: lower index), with
    their argmax (lowest class on ties) as pseudo-labels. No entropy may sit within the
    tolerance of the threshold, and the confident order must be clear too."""
    name = params.get("uncertainty", "entropy")
    if name not in SCORES:
        return None
    rtol, atol = tol.FLOAT64_RTOL, tol.FLOAT64_ATOL
    phi = SCORES[name](inputs, {}, candidates)
    picks = _top(phi, budget, candidates, rtol, atol, seed is not None)
    p = np.clip(_probs(inputs), 0.0, 1.0)
    h = ref.entropy(p)
    threshold = (float(params.get("delta0", 0.05))
                 - float(params.get("decay", 0.0033)) * float(params.get("round", 0)))
    rest = np.setdiff1d(candidates, picks)
    if (np.abs(h[rest] - threshold) <= 2 * (atol + rtol * abs(threshold))).any():
        raise TooClose("CEAL: an entropy sits on the pseudo-label threshold")
    confident = np.asarray([i for i in rest if h[i] < threshold], dtype=np.int64)
    if confident.size:
        confident = _top(-h, confident.size, confident, rtol, atol, False)
    cap = int(params.get("max_pseudo_labels", 0))
    if cap:
        confident = confident[:cap]
    labels = [int(np.flatnonzero(p[i] == p[i].max())[0]) for i in confident]
    return Answer(picks.tolist(), [float(phi[i]) for i in picks], rtol, atol,
                  f"tests/reference.py {name}, entropy threshold (tests/vectors/references.py)",
                  pseudo=(confident.tolist(), labels))


def candidate_rows(n: int, exclude) -> np.ndarray:
    keep = np.ones(n, dtype=bool)
    if exclude is not None and len(exclude):
        keep[np.asarray(exclude, dtype=np.int64)] = False
    return np.flatnonzero(keep).astype(np.int64)


def item_count(inputs: dict) -> int:
    for role, a in inputs.items():
        if role in ("samples", "predictions"):
            return int(np.asarray(a).shape[1])
        if role not in ("labeled_embeddings", "labeled_probs"):
            return int(np.asarray(a).shape[0])
    raise ValueError("no per-item input")


def expected(strategy: str, budget: int, inputs: dict, params: dict | None,
             seed: int | None, exclude, clustered: bool = False) -> Answer | None:
    """The reference answer of an inline Select (pool cases pass their equivalent
    inline inputs: the appended arrays, labeled items excluded, their embeddings as
    ``labeled_embeddings``); None when no independent twin covers the case."""
    params = dict(params or {})
    candidates = candidate_rows(item_count(inputs), exclude)
    if params.get("prefilter") and strategy not in SCORES:
        return None
    if strategy == "coreset":
        return _kcenter_answer(budget, inputs, seed, candidates)
    if strategy == "badge":
        return _badge_answer(budget, inputs, seed, candidates)
    if strategy == "kmeans":
        return _kmeans_answer(budget, inputs, candidates) if clustered else None
    if strategy == "ceal":
        try:
            return _ceal_answer(budget, inputs, params, seed, candidates)
        except _SeededTie:
            return None
    if strategy == "suggestive_annotation":
        try:
            return _suggestive_answer(budget, inputs, params, seed, candidates)
        except _SeededTie:
            return None
    if strategy in ("cal", "forgetting_events"):
        try:
            if strategy == "cal":
                return _cal_answer(budget, inputs, params, seed, candidates)
            return _forgetting_answer(budget, inputs, params, seed)
        except _SeededTie:
            return None
    if strategy == "random":
        if seed is None:
            return None
        picks = np.random.default_rng(seed).choice(candidates, size=budget, replace=False)
        return Answer(picks.tolist(), [], tol.FLOAT64_RTOL, tol.FLOAT64_ATOL,
                      "numpy Generator.choice without replacement")
    try:
        return _score_answer(strategy, budget, inputs, params, candidates, seed is not None)
    except (_SeededTie, _NoTwin):
        return None
