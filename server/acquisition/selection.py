"""The protocol-free acquisition layer: validated arrays in, a selection out.

It resolves the strategy and its parameters, derives inputs that can be derived
(``probs`` as the mean of ``samples``), builds the candidate set (all items minus
labeled and excluded ones), applies the optional two-stage prefilter, and runs
the strategy. No gRPC and no I/O here, so the same path serves inline arrays,
stored pools and in-process use.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from assay.kernels.permutation import permutation_at
from assay.vocab.errors import AssayError, InvalidInput
from assay.vocab.roles import is_role, labeled_roles
from assay.vocab.ties import argselect

from ..strategies import registry
from ..strategies.named import score_strategy
from ..strategies.registry import Context, Strategy
from ..strategies.validation import check_consistency, shape_doc, validate_array


@dataclass
class SelectResult:
    """Everything a Select answers, in domain types."""

    indices: np.ndarray
    scores: np.ndarray | None
    strategy: str
    seed: int
    backend: str
    compute_seconds: float
    metrics: dict[str, float] = field(default_factory=dict)
    pseudo_label_indices: np.ndarray | None = None
    pseudo_labels: np.ndarray | None = None


def _require(strategy: Strategy, arrays: Mapping[str, np.ndarray], why: str = "") -> None:
    for role in strategy.required:
        if role not in arrays:
            raise InvalidInput(
                f"strategy {strategy.name!r}{why} needs input {role!r} {shape_doc(role)}",
                field=f"inputs.{role}", reason="MISSING_INPUT",
            )
    if strategy.min_classes > 1 and "probs" in arrays:
        c = arrays["probs"].shape[1]
        if c < strategy.min_classes:
            raise InvalidInput(
                f"strategy {strategy.name!r} needs at least {strategy.min_classes} classes, "
                f"got C = {c}", field="inputs.probs",
            )


def qualify(error: AssayError, strategy: Strategy) -> AssayError:
    """Name, in the request's terms, the field of an error raised below this layer.

    Kernels and the tie rule name their own arguments (``backend``,
    ``embeddings``); here, once, a field that is a parameter of ``strategy``
    becomes ``params.<name>`` and one that is an input role ``inputs.<role>``.
    Fields already qualified (with a dot), and other names, are left as they are.
    Returns ``error`` itself, changed in place.
    """
    name = error.field
    if not name or "." in name:
        return error
    if name in {p.name for p in registry.all_params(strategy)}:
        error.field = f"params.{name}"
    elif is_role(name):
        error.field = f"inputs.{name}"
    return error


class _Inputs(Mapping[str, np.ndarray]):
    """The request's arrays, with ``probs`` derived from ``samples`` (their mean)
    when only samples were given, computed on first use: the samples strategies
    never read it, and for S x N x C samples it is a float64 copy of them all."""

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self._arrays = arrays
        self._derivable = "probs" not in arrays and "samples" in arrays

    def __getitem__(self, role: str) -> np.ndarray:
        if role == "probs" and self._derivable:
            self._arrays["probs"] = np.asarray(self._arrays["samples"],
                                               dtype=np.float64).mean(axis=0)
            self._derivable = False
        return self._arrays[role]

    def __contains__(self, role: object) -> bool:
        return role in self._arrays or (role == "probs" and self._derivable)

    def __iter__(self):
        yield from self._arrays
        if self._derivable:
            yield "probs"

    def __len__(self) -> int:
        return len(self._arrays) + self._derivable


def candidate_indices(n: int, exclude: np.ndarray | None) -> np.ndarray:
    """Sorted indices in [0, n) minus ``exclude`` (checked to be in range)."""
    if exclude is None or exclude.size == 0:
        return np.arange(n, dtype=np.int64)
    exclude = np.asarray(exclude, dtype=np.int64)
    if exclude.min() < 0 or exclude.max() >= n:
        bad = int(exclude[(exclude < 0) | (exclude >= n)][0])
        raise InvalidInput(f"exclude_indices holds {bad}, outside [0, {n})",
                           field="exclude_indices")
    keep = np.ones(n, dtype=bool)
    keep[exclude] = False
    return np.flatnonzero(keep).astype(np.int64)


def select(
    strategy_name: str,
    budget: int,
    arrays: Mapping[str, np.ndarray],
    params: Mapping[str, Any] | None = None,
    *,
    seed: int | None = None,
    exclude: np.ndarray | None = None,
    validated: bool = False,
    check_cancelled: Callable[[], None] = lambda: None,
) -> SelectResult:
    """Run one acquisition.

    Parameters
    ----------
    strategy_name : registered strategy name.
    budget : items to select, 1 <= budget <= selectable items.
    arrays : role name -> array (see ``assay.vocab.roles``).
    params : strategy parameters; validated against the declarations.
    seed : seeds all randomness; drawn (and reported) when None. Ties are broken
        by a seeded permutation only when a seed was given, else by lower index
        (``assay.vocab.ties``).
    exclude : item indices that may not be selected (labeled items of a pool).
    validated : skip per-array checks (pool arrays were checked at upload).
    check_cancelled : raises when the caller went away; strategies call it
        between greedy steps.
    """
    strategy = registry.get(strategy_name)
    resolved = registry.resolve_params(strategy, params or {})
    arrays = dict(arrays)
    if not validated:
        for role, array in arrays.items():
            validate_array(role, array)
    n = check_consistency(arrays)
    arrays = _Inputs(arrays)
    _require(strategy, arrays)
    if not arrays or set(arrays) <= set(labeled_roles()):
        raise InvalidInput("no item arrays given: send at least one input with an item axis",
                           field="inputs", reason="MISSING_INPUT")
    if budget <= 0:
        raise InvalidInput(f"budget must be >= 1, got {budget}", field="budget")
    # every item selectable: the item count, so no index array is built (Context)
    every = exclude is None or len(exclude) == 0
    seed_given = seed is not None
    seed = int(seed) if seed_given else secrets.randbits(63)
    ctx = Context(n if every else candidate_indices(n, exclude),
                  check_cancelled=check_cancelled, seed=seed, seeded_ties=seed_given)
    if budget > ctx.count:
        raise InvalidInput(
            f"budget {budget} exceeds the {ctx.count} selectable items "
            f"({n} items, {n - ctx.count} labeled or excluded)",
            field="budget",
        )
    started = time.perf_counter()
    try:
        indices, scores, extra = _run(strategy, budget, arrays, resolved, ctx)
    except AssayError as error:
        qualify(error, strategy)
        raise
    check_cancelled()
    return SelectResult(
        indices=indices,
        scores=None if scores is None else np.asarray(scores, dtype=np.float64),
        strategy=strategy.name,
        seed=seed,
        backend=ctx.backend,
        compute_seconds=time.perf_counter() - started,
        metrics=dict(ctx.metrics),
        pseudo_label_indices=None if extra is None else extra.pseudo_label_indices,
        pseudo_labels=None if extra is None else extra.pseudo_labels,
    )


def _run(strategy: Strategy, budget: int, arrays: Mapping[str, np.ndarray],
         resolved: dict[str, Any], ctx: Context
         ) -> tuple[np.ndarray, np.ndarray | None, registry.Selection | None]:
    """The prefilter, then the strategy: (indices best first, their scores, a batch
    strategy's whole answer)."""
    if resolved["prefilter"]:
        ctx.candidates = _prefilter(resolved, budget, arrays, ctx)
    ctx.check_cancelled()
    if strategy.kind == "score":
        indices, scores = top_scores(strategy, budget, arrays, resolved, ctx, last=True)
        return indices, scores, None
    extra = strategy.fn(arrays, budget, resolved, ctx)
    return np.asarray(extra.indices, dtype=np.int64), extra.scores, extra


def top_scores(strategy: Strategy, budget: int, arrays: Mapping[str, np.ndarray],
               params: dict[str, Any], ctx: Context, *, last: bool = False
               ) -> tuple[np.ndarray, np.ndarray]:
    """The ``budget`` best of score strategy ``strategy`` among ``ctx.candidates``:
    (indices best first, their float64 scores), by the tie rule of ``argselect``.

    A strategy with a ``shortlist`` hands over only the candidates that can be in
    that top (its other items were scored approximately, or not kept); the answer
    is the one ``argselect`` gives on all of ``fn``'s scores. With a seed, the
    tie-break permutation of the candidates is drawn as ``argselect`` draws it,
    except that the request's ``last`` draw is skipped when no two kept scores are
    equal (it could not change the order, and drawing a permutation of millions of
    positions costs more than the scores).
    """
    short = strategy.shortlist(arrays, params, ctx, budget) if strategy.shortlist else None
    if short is None:
        all_scores = strategy.fn(arrays, params, ctx)
        indices = argselect(all_scores, budget, ctx.candidates, ctx.tiebreak_rng)
        return indices, all_scores[indices]
    items, values = short
    picked = _order(items, values, budget, ctx, last)
    return items[picked], values[picked]


def _order(items: np.ndarray, values: np.ndarray, budget: int, ctx: Context,
           last: bool) -> np.ndarray:
    """Positions in ``items`` (sorted candidate indices) of the ``budget`` best
    ``values``, best first: ``argselect``'s rule, with the priority of each item
    taken at its position among all ``ctx.candidates``.

    A stable sort of the values, best first, orders equal values by position, that
    is by item index (``items`` is sorted): the rule without a seed. With one, the
    tie-break permutation is drawn only when it can matter, as ``top_scores`` says.
    """
    if np.isnan(values).any():
        raise InvalidInput("strategy produced NaN scores; check the inputs", field="inputs")
    if not ctx.seeded_ties:
        return np.argsort(-values, kind="stable")[:budget]
    if last:
        best = np.argsort(-values, kind="stable")
        ranked = values[best]
        kept = budget + int(np.count_nonzero(ranked[budget:] == ranked[budget - 1]))
        if not (ranked[1:kept] == ranked[:kept - 1]).any():
            return best[:budget]  # no equal scores among the kept: the priority is never read
    candidates = ctx.selectable  # None: every item, an item's position is its index
    positions = items if candidates is None else np.searchsorted(candidates, items)
    rank = permutation_at(ctx.tiebreak_rng, ctx.count, positions)
    return np.lexsort((rank, -values))[:budget]


def _prefilter(resolved: dict, budget: int, arrays: Mapping[str, np.ndarray],
               ctx: Context) -> np.ndarray:
    """Two-stage composition: keep the top ``prefilter_k`` candidates by a score strategy."""
    pre = score_strategy(resolved["prefilter"], "params.prefilter")
    _require(pre, arrays, " (the prefilter)")
    k = resolved["prefilter_k"] or 10 * budget
    k = min(k, ctx.count)
    if k < budget:
        raise InvalidInput(f"params.prefilter_k {k} is smaller than the budget {budget}",
                           field="params.prefilter_k")
    kept, _ = top_scores(pre, k, arrays, registry.resolve_params(pre, {}), ctx)
    ctx.metrics["prefilter_k"] = float(k)
    return np.sort(kept)
