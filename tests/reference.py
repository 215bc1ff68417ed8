"""Slow, obviously correct float64 twins of every score strategy.

Written from the formulas in docs/strategies.md with plain Python loops over items,
independently of the vectorized code under test.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np


def _h(p) -> float:
    """Shannon entropy with a correctly rounded sum (math.fsum): the same terms in any
    order give the same float, so items equal in exact arithmetic tie exactly here."""
    return -math.fsum(float(x) * math.log(float(x)) for x in p if x > 0)


def least_confident(probs):
    return np.array([1.0 - max(row) for row in np.asarray(probs, np.float64)])


def margin(probs):
    out = []
    for row in np.asarray(probs, np.float64):
        top = sorted(row, reverse=True)
        out.append(-(top[0] - top[1]))
    return np.array(out)


def entropy(probs):
    return np.array([_h(row) for row in np.asarray(probs, np.float64)])


def _columns(samples):
    s = np.asarray(samples, np.float64)
    return [s[:, i, :] for i in range(s.shape[1])]  # each [S, C]


def vote_entropy(samples):
    out = []
    for member_probs in _columns(samples):
        votes = Counter(int(np.argmax(p)) for p in member_probs)
        out.append(_h([v / len(member_probs) for v in votes.values()]))
    return np.array(out)


def consensus_entropy(samples):
    return np.array([_h(m.mean(axis=0)) for m in _columns(samples)])


def kl_disagreement(samples):
    out = []
    for m in _columns(samples):
        mean = m.mean(axis=0)
        kls = [sum(p[c] * math.log(p[c] / mean[c]) for c in range(len(p)) if p[c] > 0) for p in m]
        out.append(sum(kls) / len(kls))
    return np.array(out)


def bald(samples):
    return np.array([_h(m.mean(axis=0)) - sum(_h(p) for p in m) / len(m)
                     for m in _columns(samples)])


def variation_ratio(samples):
    out = []
    for m in _columns(samples):
        votes = Counter(int(np.argmax(p)) for p in m)
        out.append(1.0 - max(votes.values()) / len(m))
    return np.array(out)


def mean_std(samples):
    out = []
    for m in _columns(samples):
        c = m.shape[1]
        stds = []
        for k in range(c):
            col = m[:, k]
            e1 = sum(col) / len(col)
            e2 = sum(x * x for x in col) / len(col)
            stds.append(math.sqrt(max(e2 - e1 * e1, 0.0)))
        out.append(sum(stds) / c)
    return np.array(out)


def egl(probs, embeddings):
    out = []
    for p, h in zip(np.asarray(probs, np.float64), np.asarray(embeddings, np.float64), strict=True):
        total = 0.0
        for y in range(len(p)):
            e = np.zeros(len(p))
            e[y] = 1.0
            grad = np.outer(p - e, h)  # the last layer's gradient for label y
            total += p[y] * math.sqrt(float((grad * grad).sum()))
        out.append(total)
    return np.array(out)


def label_dispersion(predictions):
    pred = np.asarray(predictions)
    t = pred.shape[0]
    return np.array([1.0 - max(Counter(pred[:, i].tolist()).values()) / t
                     for i in range(pred.shape[1])])


def information_density(base_scores, embeddings, candidates, beta):
    """Percentile rank of the base among the candidates times ((1 + mean cosine) / 2)^beta.

    Average rank by counting: rank(v) = #{w < v} + (#{w == v} + 1) / 2, over M candidates.
    """
    h = np.asarray(embeddings, np.float64)
    base = [float(base_scores[u]) for u in candidates]
    m = len(candidates)
    out = np.full(h.shape[0], -np.inf)
    for i, v in zip(candidates, base, strict=True):
        rank = sum(w < v for w in base) + (sum(w == v for w in base) + 1) / 2
        sims = []
        for u in candidates:
            nx, nu = math.sqrt(float(h[i] @ h[i])), math.sqrt(float(h[u] @ h[u]))
            sims.append(0.0 if nx == 0 or nu == 0 else float(h[i] @ h[u]) / (nx * nu))
        density = (1.0 + sum(sims) / m) / 2.0
        out[i] = rank / m * density**beta
    return out


def mal(discriminator, probs, candidates, alpha):
    """Ranks by counting: rank(v) = #{w < v} + (#{w == v} - 1) / 2, scaled by 1/(n - 1)."""
    d = [-float(discriminator[i]) for i in candidates]
    h = list(entropy(np.asarray(probs)[candidates]))

    def ranks(values):
        n = len(values)
        if n < 2:
            return [1.0] * n
        return [(sum(w < v for w in values) + (sum(w == v for w in values) - 1) / 2) / (n - 1)
                for v in values]

    out = np.full(len(discriminator), -np.inf)
    for j, (rd, rh) in enumerate(zip(ranks(d), ranks(h), strict=True)):
        out[candidates[j]] = alpha * rd + (1 - alpha) * rh
    return out


def epig(samples, target):
    """H(P̄[x]) + mean_j H(Q̄[j]) − mean_j H(p_xj), p_xj(a, b) = mean_s P[s, x, a] Q[s, j, b]:
    one item at a time, the C x C joints of all M targets at once."""
    p = np.asarray(samples, dtype=np.float64)
    q = np.asarray(target, dtype=np.float64)

    def h(rows):
        rows = rows.reshape(rows.shape[0], -1)
        return -np.where(rows > 0, rows * np.log(np.where(rows > 0, rows, 1.0)), 0.0).sum(axis=1)

    target_mean = h(q.mean(axis=0)).mean()
    out = np.empty(p.shape[1])
    for x in range(p.shape[1]):
        joints = np.einsum("sa,sjb->jab", p[:, x], q) / p.shape[0]
        out[x] = h(p[:, x].mean(axis=0)[None])[0] + target_mean - h(joints).mean()
    return out


def epig_pool_target(samples, candidates):
    """EPIG with the candidates themselves as the target (epig's default, |U| <= target_size)."""
    out = np.full(np.asarray(samples).shape[1], -np.inf)
    out[candidates] = epig(samples, np.asarray(samples)[:, candidates])[candidates]
    return out


def top_b(scores, budget, candidates=None):
    """Best first; equal scores by lower index (a full stable sort)."""
    idx = list(range(len(scores))) if candidates is None else list(candidates)
    idx.sort(key=lambda i: (-scores[i], i))
    return np.array(idx[:budget], dtype=np.int64)
