"""BatchBALD (Kirsch et al. 2019): greedy batch acquisition by joint mutual information.

a(A) = H(y_A) - sum_{i in A} E_s H(y_i | w_s). The conditional term is additive, so
it is computed once per item; each greedy step only needs, for every candidate x,

    H(y_{A+x}) = H(y_A) + E_{m ~ p(y_A)} H(y_x | y_A = m),

where p(y_x = c | y_A = m) = sum_s p(w_s | m) p(c | x, w_s) and
p(w_s | m) = J[m, s] / sum_s' J[m, s'], J[m, s] = prod_{i in A} p(y_i = m_i | w_s).
Writing the joint this way (normalized per configuration) keeps every quantity in
[0, 1]: no product of b small probabilities is ever exponentiated on its own, so
float32 is safe however large the batch.

The configurations m are

* **exact** while C^|A| <= ``max_exact_configs``: all of them, weighted by p(m);
* **sampled** beyond: ``num_samples`` configurations drawn from p(y_A) (the
  mixture over the S members, stratified: member s draws its share of them from
  its own joint), each weighted by its stratum's share. The sample is drawn once
  when the exact enumeration would overflow the cap and then extended by one
  label per configuration at each pick, from the member that generated it.

Memory cap: the joint state holds configurations x S float64 values (plus a float32
copy for the kernel), so both ``max_exact_configs`` and ``num_samples`` times S must
stay within ``MAX_STATE_BYTES`` / 8 (1 GiB of float64).

The per-candidate work is an [M x S] . [S x C] product plus M * C logs; the Numba CPU
kernel (``_batchbald_cpu``) fuses both in L1-sized tiles, and the ``torch`` backend
runs the same product as batched matrix multiplications on a CUDA device when one
is present (or on the CPU).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.special import entr, logsumexp

from assay.vocab.errors import FailedPrecondition, InvalidInput
from assay.vocab.ties import argselect

from . import _batchbald_cpu, config, dispatch

TORCH = "torch"
#: Backends of the conditional-entropy step.
BACKENDS = (dispatch.NUMBA_CPU, TORCH)
#: Largest joint state (configurations x members x 8 bytes) a request may ask for.
MAX_STATE_BYTES = 1 << 30
PRECISIONS = ("float32", "float64")
#: Values (candidates x configurations x classes) per torch block.
_TORCH_BLOCK_VALUES = 1 << 25


@dataclass
class BatchBaldResult:
    """Picks of BatchBALD.

    Attributes
    ----------
    indices : int64[b]
        Pool rows in pick order.
    scores : float64[b]
        a(A_k) = H(y_{A_k}) - sum_{i in A_k} E_s H(y_i | w_s) for the batch A_k made of
        the first k picks (batchbald-redux's score): the joint mutual information.
    exact_steps : int
        Picks scored with the exact joint entropy (the rest used sampled configurations).
    configurations : int
        Configurations behind the last pick's scores.
    backend : str
    """

    indices: np.ndarray
    scores: np.ndarray
    exact_steps: int
    configurations: int
    backend: str


class JointState:
    """The configurations of y_A: the normalized joint p(w_s | m) and the weights of m.

    Parameters
    ----------
    probs : float64[N, S, C]
        Member probabilities per item (item-major).
    num_samples, max_exact_configs : see ``batchbald_greedy``.
    rng : Generator drawing the sampled configurations.
    """

    def __init__(self, probs: np.ndarray, num_samples: int, max_exact_configs: int,
                 rng: np.random.Generator):
        self.probs = probs
        _, self.s, self.c = probs.shape
        self.num_samples = num_samples
        self.max_exact = max_exact_configs
        self.rng = rng
        self.items: list[int] = []
        self.joint = np.ones((1, self.s))  # exact: J[m, s]
        self.log_joint: np.ndarray | None = None  # sampled: log J[m, s]
        self.member: np.ndarray | None = None  # sampled: the member that drew m
        self.stratum_weight: np.ndarray | None = None

    @property
    def exact(self) -> bool:
        return self.log_joint is None

    def add(self, item: int) -> None:
        """Extend A by one item: enumerate while the cap allows, else sample."""
        self.items.append(item)
        p = self.probs[item]  # [S, C]
        if self.exact and self.joint.shape[0] * self.c <= self.max_exact:
            self.joint = (self.joint[:, None, :] * p.T[None, :, :]).reshape(-1, self.s)
            return
        if self.exact:
            self._draw()
            return
        labels = self._draw_labels(p, self.member)
        with np.errstate(divide="ignore"):
            self.log_joint += np.log(p[:, labels]).T

    def _draw(self) -> None:
        """Draw ``num_samples`` configurations of all of A, stratified over the members."""
        m, s = self.num_samples, self.s
        counts = np.full(s, m // s)
        counts[: m % s] += 1
        self.member = np.repeat(np.arange(s), counts)
        self.stratum_weight = 1.0 / (s * counts[self.member])
        self.log_joint = np.zeros((m, s))
        for item in self.items:
            p = self.probs[item]
            labels = self._draw_labels(p, self.member)
            with np.errstate(divide="ignore"):
                self.log_joint += np.log(p[:, labels]).T
        self.joint = np.empty((0, s))

    def _draw_labels(self, p: np.ndarray, member: np.ndarray) -> np.ndarray:
        """One label per configuration from its member's distribution p[member] (inverse CDF)."""
        cdf = np.cumsum(p, axis=1)
        u = self.rng.random(member.size) * cdf[member, -1]
        labels = np.empty(member.size, dtype=np.int64)
        for s in range(self.s):
            rows = member == s
            labels[rows] = np.searchsorted(cdf[s], u[rows], side="right")
        return np.minimum(labels, self.c - 1)

    def tables(self) -> tuple[np.ndarray, np.ndarray, float]:
        """(posterior[M, S] = p(w_s | m), weight[M], H(y_A) or its estimate)."""
        if self.exact:
            total = self.joint.sum(axis=1)
            q = total / self.s
            post = np.divide(self.joint, total[:, None], out=np.zeros_like(self.joint),
                             where=total[:, None] > 0)
            return post, q, float(entr(q).sum())
        lse = logsumexp(self.log_joint, axis=1)
        post = np.exp(self.log_joint - lse[:, None])
        log_q = lse - np.log(self.s)
        return post, self.stratum_weight, float(-(self.stratum_weight * log_q).sum())


def _prepare(samples: np.ndarray, candidates: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(samples)
    if p.ndim != 3:
        raise InvalidInput(f"samples must have shape [S, N, C], got {list(p.shape)}",
                           field="samples")
    s, n, c = p.shape
    if s < 1 or c < 1:
        raise InvalidInput(f"samples needs S >= 1 members and C >= 1 classes, got S = {s}, "
                           f"C = {c}", field="samples")
    if candidates is None:
        cand = np.arange(n, dtype=np.int64)
    else:
        cand = np.asarray(candidates, dtype=np.int64)
        if cand.ndim != 1 or (cand.size and (cand.min() < 0 or cand.max() >= n)):
            raise InvalidInput(f"candidates must be a 1-D array of rows in [0, {n})",
                               field="candidates")
        if cand.size > 1 and not (np.diff(cand) > 0).all():
            raise InvalidInput("candidates must be sorted and unique", field="candidates")
    probs = np.clip(np.asarray(p[:, cand, :], dtype=np.float64), 0.0, 1.0).transpose(1, 0, 2)
    return np.ascontiguousarray(probs), cand


def _check_caps(s: int, num_samples: int, max_exact_configs: int, precision: str) -> None:
    if precision not in PRECISIONS:
        raise InvalidInput(f"precision must be one of {', '.join(PRECISIONS)}, got "
                           f"{precision!r}", field="precision")
    if num_samples < 1:
        raise InvalidInput(f"num_samples must be >= 1, got {num_samples}",
                           field="num_samples")
    if max_exact_configs < 1:
        raise InvalidInput(f"max_exact_configs must be >= 1, got {max_exact_configs}",
                           field="max_exact_configs")
    for name, count in (("num_samples", num_samples), ("max_exact_configs", max_exact_configs)):
        if count * s * 8 > MAX_STATE_BYTES:
            raise InvalidInput(
                f"{name} = {count} with S = {s} members needs {count * s * 8} bytes of "
                f"joint state, over the cap of {MAX_STATE_BYTES}; lower it to at most "
                f"{MAX_STATE_BYTES // (8 * s)}", field=name)


def _choose(backend: str, values: int) -> str:
    """``auto``: torch on a CUDA device for large problems, else Numba on the CPU."""
    if backend == dispatch.AUTO:
        if values >= config.GPU_MIN_VALUES and _torch_cuda():
            return TORCH
        return dispatch.NUMBA_CPU
    if backend not in BACKENDS:
        raise InvalidInput(f"backend {backend!r} does not run this strategy; choose one "
                           f"of {', '.join((dispatch.AUTO, *BACKENDS))}", field="backend")
    if backend == TORCH:
        try:
            import torch  # noqa: F401
        except ImportError:
            raise FailedPrecondition(
                "backend 'torch' needs PyTorch: pip install 'assay[torch]' (CPU) or a "
                "CUDA build of torch, or use backend 'auto'", field="backend",
                reason="BACKEND_UNAVAILABLE") from None
    return backend


def _torch_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


class _CpuConditional:
    name = dispatch.NUMBA_CPU

    def __init__(self, probs: np.ndarray, dtype: np.dtype):
        self.dtype = dtype
        self.probs = np.ascontiguousarray(probs, dtype=dtype)
        self.k = _batchbald_cpu.kernels(dtype)

    def __call__(self, post: np.ndarray, weight: np.ndarray) -> np.ndarray:
        m, s = post.shape
        padded = -(-m // _batchbald_cpu.TILE) * _batchbald_cpu.TILE
        jt = np.zeros((s, padded), dtype=self.dtype)
        jt[:, :m] = post.T
        w = np.zeros(padded, dtype=self.dtype)
        w[:m] = weight
        out = np.empty(self.probs.shape[0])
        with config.parallel_section():
            self.k.conditional_entropy(self.probs, jt, w, out)
        return out


class _TorchConditional:
    def __init__(self, probs: np.ndarray, dtype: np.dtype):
        import torch

        self.torch = torch
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.name = f"torch-{self.device.type}"
        self.tdtype = torch.float32 if dtype == np.float32 else torch.float64
        self.probs = torch.as_tensor(probs, dtype=self.tdtype, device=self.device)

    def __call__(self, post: np.ndarray, weight: np.ndarray) -> np.ndarray:
        torch = self.torch
        jt = torch.as_tensor(post, dtype=self.tdtype, device=self.device)  # [M, S]
        w = torch.as_tensor(weight, dtype=torch.float64, device=self.device)
        n, _, c = self.probs.shape
        block = max(1, _TORCH_BLOCK_VALUES // (jt.shape[0] * c))
        out = torch.empty(n, dtype=torch.float64, device=self.device)
        for lo in range(0, n, block):
            p = torch.matmul(jt, self.probs[lo:lo + block])  # [b, M, C]
            h = torch.special.entr(p).sum(dim=2, dtype=torch.float64)  # [b, M]
            out[lo:lo + block] = h @ w
        return out.cpu().numpy()


def conditional_entropies(probs: np.ndarray) -> np.ndarray:
    """E_s H(y_x | w_s) per item of ``probs[N, S, C]``, float64 (computed once per request)."""
    return entr(probs).sum(axis=2).mean(axis=1)


def joint_entropies(
    samples: np.ndarray,
    selected: np.ndarray,
    *,
    candidates: np.ndarray | None = None,
    num_samples: int = 10_000,
    max_exact_configs: int = 10_000,
    rng: np.random.Generator | None = None,
    precision: str = "float64",
    backend: str = dispatch.AUTO,
) -> tuple[np.ndarray, bool]:
    """H(y_{A + x}) for the fixed batch A = ``selected`` and every candidate x.

    Exposes one BatchBALD step so the exact and sampled estimators can be compared
    on the same batch. Returns (entropies float64[len(candidates)], exact).
    """
    probs, _ = _prepare(samples, candidates)
    _check_caps(probs.shape[1], num_samples, max_exact_configs, precision)
    full, _ = _prepare(samples, None)
    state = JointState(full, num_samples, max_exact_configs,
                       rng if rng is not None else np.random.default_rng())
    for item in np.asarray(selected, dtype=np.int64):
        state.add(int(item))
    chosen = _choose(backend, probs.size)
    step = (_TorchConditional if chosen == TORCH else _CpuConditional)(probs, np.dtype(precision))
    post, weight, h_a = state.tables()
    return h_a + step(post, weight), state.exact


def batchbald_greedy(
    samples: np.ndarray,
    budget: int,
    *,
    candidates: np.ndarray | None = None,
    num_samples: int = 10_000,
    max_exact_configs: int = 10_000,
    rng: np.random.Generator | None = None,
    tiebreak_rng: np.random.Generator | None = None,
    precision: str = "float32",
    check_cancelled: Callable[[], None] | None = None,
    backend: str = dispatch.AUTO,
) -> BatchBaldResult:
    """Greedy BatchBALD selection of ``budget`` candidate rows.

    Parameters
    ----------
    samples : float [S, N, C]
        S stochastic passes (MC dropout, ensemble members) of class probabilities.
    budget : int
        Picks, 1 <= budget <= number of candidates.
    candidates : int64[K], optional
        Sorted unique rows that may be picked.
    num_samples : int
        M, sampled configurations once the exact enumeration exceeds its cap.
    max_exact_configs : int
        Largest C^|A| scored exactly (batchbald-redux uses M for both).
    rng : Generator, optional
        Draws the sampled configurations.
    tiebreak_rng : Generator, optional
        Orders exactly tied scores randomly instead of by lower row.
    precision : ``float32`` (default, the vectorized kernel) or ``float64``.
    check_cancelled : callable, optional
        Called between picks.
    backend : ``auto``, ``numba-cpu`` or ``torch``.
    """
    probs, cand = _prepare(samples, candidates)
    n = cand.size
    if not 1 <= int(budget) <= n:
        raise InvalidInput(f"budget {budget} must be between 1 and {n} (selectable items)",
                           field="budget")
    _check_caps(probs.shape[1], num_samples, max_exact_configs, precision)
    check = check_cancelled or (lambda: None)
    chosen = _choose(backend, probs.size)
    step = (_TorchConditional if chosen == TORCH else _CpuConditional)(probs, np.dtype(precision))
    cond = conditional_entropies(probs)
    state = JointState(probs, num_samples, max_exact_configs,
                       rng if rng is not None else np.random.default_rng())
    picks = np.empty(int(budget), dtype=np.int64)
    scores = np.empty(int(budget))
    taken = np.zeros(n, dtype=bool)
    shared = 0.0
    exact_steps = 0
    configurations = 1
    for k in range(int(budget)):
        check()
        post, weight, h_a = state.tables()
        configurations = post.shape[0]
        exact_steps += state.exact
        value = h_a + step(post, weight) - cond - shared
        value[taken] = -np.inf
        pos = int(argselect(value, 1, None, tiebreak_rng)[0])
        picks[k], scores[k] = cand[pos], value[pos]
        taken[pos] = True
        shared += cond[pos]
        if k + 1 < budget:
            state.add(pos)
    return BatchBaldResult(indices=picks, scores=scores, exact_steps=exact_steps,
                           configurations=configurations,
                           backend=dispatch.report_name(step.name))
