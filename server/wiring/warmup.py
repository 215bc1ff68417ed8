"""Compile every kernel the server dispatches before health reports SERVING.

Numba compiles a kernel on its first call, per argument types: without this, the
first Select of each strategy and dtype on a fresh server took 20-60 s (the
client's deadline) while health already said SERVING. The warm-up runs every
registered strategy through the same acquisition path a Select takes, on tiny
read-only inputs (as decoded from the wire or memory-mapped from a pool) in every
storage dtype, once with its required inputs and once with its optional ones too,
and once per value of each choice or boolean parameter (``prune``, ``precision``,
``lazy``...), so that every branch that picks a different kernel runs. With the
on-disk kernel cache filled (``assay warmup``, run when the image is built) this
loads machine code instead of compiling it and takes seconds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from assay.kernels import dispatch, jit, permutation, rowwise
from assay.vocab.dtypes import BFLOAT16
from assay.vocab.errors import AssayError

from ..acquisition import selection
from ..strategies import registry

log = logging.getLogger("assay.server.wiring.warmup")

#: Storage dtypes of float inputs, as the wire and the pools hold them.
DTYPES: tuple[np.dtype, ...] = (np.dtype(np.float32), np.dtype(np.float16), BFLOAT16,
                                np.dtype(np.float64))

# Tiny shapes: items, classes, width, MC samples, committee members, labeled items (96
# items: FAISS k-means warns below 39 points per centroid).
_N, _C, _D, _S, _T, _L = 96, 3, 4, 3, 3, 2
_BUDGET = 2


@dataclass
class WarmupReport:
    """What a warm-up did: how long, how many kernels came from the cache or compiled."""

    seconds: float
    cache_dir: str
    cache_hits: int
    compiles: int
    selects: int
    #: Runs the strategy refused (an input or parameter it does not take on this host).
    refused: int = 0
    #: ``strategy[dtype] params: error`` for runs that failed unexpectedly.
    failures: list[str] = field(default_factory=list)
    #: The strategies warmed up, and whether they are every registered one.
    strategies: tuple[str, ...] = ()
    every: bool = False

    def summary(self) -> str:
        cache = self.cache_dir or "off"
        warmed = (f"every strategy ({len(self.strategies)})" if self.every
                  else ", ".join(self.strategies))
        return (f"kernel warm-up {self.seconds:.1f} s: {self.selects} selects, "
                f"{self.cache_hits} kernels from cache, {self.compiles} compiled "
                f"(cache {cache}); {self.refused} refused; warmed {warmed}")


def warm_up(cache_dir: str | None = None, strategies: Sequence[str] = ()) -> WarmupReport:
    """Run every strategy x dtype x kernel-choosing parameter once on tiny inputs.

    Parameters
    ----------
    cache_dir : the on-disk kernel cache to use ("" for none); None keeps the
        current setting (``$ASSAY_KERNEL_CACHE_DIR`` or the user cache directory).
    strategies : names to warm up; empty for every registered strategy. An unknown
        name raises ``NotFound``.

    A run that the strategy refuses (an input it does not take, a backend this host
    lacks) compiles nothing and is skipped; any other failure is logged and listed
    in the report, and the server still starts: the Select that needs that kernel
    would fail the same way.
    """
    if cache_dir is not None:
        jit.configure(cache_dir)
    registry.load_builtin()
    hits0, compiles0 = jit.stats()
    started = time.perf_counter()
    rng = np.random.default_rng(0)
    selects = refused = 0
    failures: list[str] = []
    chosen = ([registry.get(name) for name in strategies] if strategies
              else registry.all_strategies())
    for strategy in chosen:
        if "model_inputs" in strategy.required:
            continue  # needs a registered model; its strategies run on the model's outputs
        for dtype in DTYPES:
            for roles in _role_sets(strategy):
                arrays = {role: _array(role, dtype, rng) for role in roles}
                for params in _param_variants(strategy):
                    selects += 1
                    try:
                        selection.select(strategy.name, _BUDGET, arrays, params, seed=0)
                    except AssayError:
                        refused += 1
                    except Exception as error:  # reported, never fatal
                        failures.append(f"{strategy.name}[{dtype}] {params}: {error!r}")
                        log.warning("warm-up of %s (%s, %s) failed: %r", strategy.name, dtype,
                                    params, error)
    _warm_parallel_rowwise()
    # a seeded Select over many items reads its tie order by ``permutation_at``, whose
    # kernels (and its check against NumPy) would otherwise wait for the first such call
    permutation.permutation_at(np.random.default_rng([0, 1]), permutation.MIN_N,
                               np.arange(2))
    hits, compiles = jit.stats()
    return WarmupReport(time.perf_counter() - started, jit.directory(), hits - hits0,
                        compiles - compiles0, selects, refused, failures,
                        tuple(s.name for s in chosen), not strategies)


def _role_sets(strategy: registry.Strategy) -> Iterator[tuple[str, ...]]:
    yield strategy.required
    optional = tuple(r for r in strategy.optional if r != "model_inputs")
    if optional:
        yield strategy.required + optional


def _param_variants(strategy: registry.Strategy) -> Iterator[dict[str, Any]]:
    """Defaults, then each other value of every choice or boolean parameter.

    Of the ``backend`` choices only the accelerators this host has: ``auto`` already
    runs the CPU kernels on tiny inputs, and an absent backend compiles nothing (its
    refusal would only cost imports, such as PyTorch's).
    """
    yield {}
    present = set(dispatch.available()) - {dispatch.NUMBA_CPU, dispatch.FAISS_CPU}
    for p in strategy.params:
        if p.type is bool:
            yield {p.name: not p.default}
        for choice in p.choices:
            if choice == p.default or (p.name == "backend" and choice not in present):
                continue
            yield {p.name: choice}


def _array(role: str, dtype: np.dtype, rng: np.random.Generator) -> np.ndarray:
    """A small valid ``role`` array, read-only like a decoded or memory-mapped one."""
    if role in ("probs", "labeled_probs", "samples", "target_samples"):
        shape = {"probs": (_N, _C), "labeled_probs": (_L, _C), "samples": (_S, _N, _C),
                 "target_samples": (_S, _L, _C)}[role]
        z = rng.random(shape) + 0.1
        a = z / z.sum(axis=-1, keepdims=True)
    elif role == "embeddings":
        a = rng.standard_normal((_N, _D))
    elif role == "labeled_embeddings":
        a = rng.standard_normal((_L, _D))
    elif role == "predictions":
        a = rng.integers(0, _C, size=(_T, _N), dtype=np.int64)
    elif role == "labels":
        a = np.where(np.arange(_N) % 2 == 0, -1, np.arange(_N) % _C).astype(np.int64)
    elif role == "discriminator":
        a = rng.random(_N)
    else:  # scores, loss
        a = rng.standard_normal(_N)
    if a.dtype.kind == "f":
        a = a.astype(dtype)
    a.flags.writeable = False
    return a


#: Classes of the arrays that warm the parallel score kernels: wider than the widths
#: compiled per C (``rowwise.SPECIALIZE_MAX_C``), so the generic twins are the ones compiled.
_WIDE = rowwise.SPECIALIZE_MAX_C + 1


def _warm_parallel_rowwise() -> None:
    """The parallel row and score kernels run only on large inputs: a tiny Select never
    reaches them, so compile them here, the row kernels directly and the per-item score
    strategies' shortlists through a Select on just enough values."""
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        p = np.full((2, _C), 1.0 / _C, dtype=dtype)
        p.flags.writeable = False
        for name in ("entropy_rows", "least_confident_rows", "margin_rows"):
            rowwise.variants(name)[1](p)
        rowwise.variants("probability_rows_check")[1](p, -1e-6, 1 + 1e-6, 1e-3)
        rows = -(-rowwise.SPECIALIZE_MIN_VALUES // _WIDE)
        probs = rng.dirichlet(np.ones(_WIDE), size=rows).astype(dtype)
        samples = rng.dirichlet(np.ones(_WIDE), size=(4, -(-rows // 4))).astype(dtype)
        for name, arrays in (("least_confident", {"probs": probs}),
                             ("margin", {"probs": probs}), ("entropy", {"probs": probs}),
                             ("bald", {"samples": samples}),
                             ("variation_ratio", {"samples": samples})):
            selection.select(name, 5, arrays, seed=0, validated=True)


_once_lock = threading.Lock()
_done: WarmupReport | None = None


def prepare(cache_dir: str, strategies: str = "") -> list[str]:
    """Set the kernel cache directory, load the strategy registry, and check the names
    to warm up; ``app.start`` calls this before binding, so a mistake stops the start.

    Parameters
    ----------
    cache_dir : the kernel cache directory ("" for none).
    strategies : comma-separated names to warm up, empty for all.

    Raises
    ------
    ValueError
        When ``strategies`` names an unknown strategy.
    """
    jit.configure(cache_dir)
    registry.load_builtin()
    names = [n.strip() for n in strategies.split(",") if n.strip()]
    for name in names:
        try:
            registry.get(name)
        except AssayError as error:
            raise ValueError(f"warmup_strategies: {error}") from None
    return names


def once(strategies: Sequence[str] = ()) -> WarmupReport | None:
    """Warm up once per process (a second server in the same process, as in the tests,
    finds every kernel compiled already); the report, or None if it ran before."""
    global _done
    with _once_lock:
        if _done is not None:
            return None
        _done = warm_up(strategies=strategies)
        return _done
