"""One registry of acquisition strategies, declared as data.

A strategy declares its required inputs and its parameters (type, range,
default) the way scikit-learn's ``_parameter_constraints`` does; one validator
turns them into one error-message form, and ``ListStrategies`` is generated from
the same declarations, so what a client discovers is what the server checks.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from assay.vocab.errors import InvalidInput, NotFound
from assay.vocab.roles import ROLES, is_role, labeled_roles
from assay.vocab.ties import tiebreak_generator

Inputs = Mapping[str, np.ndarray]

#: Every input role the service knows, with its rank (None: any rank >= 1) and the axis
#: of its items: a view of ``assay.vocab.roles``, the one role table.
INPUT_ROLES: dict[str, tuple[int | None, int]] = {r.name: (r.rank, r.item_axis) for r in ROLES}

#: Roles that describe the labeled set, with their own item count L.
LABELED_ROLES: tuple[str, ...] = labeled_roles()


@dataclass(frozen=True)
class Param:
    """Declaration of one strategy parameter."""

    name: str
    type: type  # float, int, str or bool
    default: Any
    description: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()


def _never_cancelled() -> None:
    return None


class Context:
    """What a strategy may use besides its inputs.

    ``candidates`` are the selectable item indices (sorted), or the item count
    when every item is selectable: the index array is then made on first use of
    ``candidates``, since a Select over millions of items would otherwise build
    an N-sized array (16 MB at 2M items, 2 ms) that the score passes never read
    (``selectable`` tells them). ``rng`` is the
    request's seeded generator; ``tiebreak_rng`` is set only when the caller gave
    a seed, so ties fall to the lower index unless randomness was asked for;
    ``check_cancelled`` must be called between greedy steps so a cancelled or
    past-deadline request stops within one step.

    Given a ``seed`` instead of generators, each generator is made on first use:
    seeding one costs about as much as a small Select's whole strategy, and most
    strategies never draw from them.
    """

    def __init__(self, candidates: np.ndarray | int, rng: np.random.Generator | None = None,
                 tiebreak_rng: np.random.Generator | None = None,
                 check_cancelled: Callable[[], None] = _never_cancelled,
                 metrics: dict[str, float] | None = None, backend: str = "numpy", *,
                 seed: int | None = None, seeded_ties: bool = False):
        self._every = int(candidates) if isinstance(candidates, int | np.integer) else None
        self._candidates = None if self._every is not None else candidates
        self.check_cancelled = check_cancelled
        self.metrics = {} if metrics is None else metrics
        self.backend = backend
        self._rng = rng
        self._tiebreak_rng = tiebreak_rng
        self._seed = seed
        #: Whether ties are ordered by a seeded permutation (the caller gave a seed).
        self.seeded_ties = seeded_ties or tiebreak_rng is not None

    @property
    def candidates(self) -> np.ndarray:
        if self._candidates is None:
            self._candidates = np.arange(self._every, dtype=np.int64)
        return self._candidates

    @candidates.setter
    def candidates(self, indices: np.ndarray) -> None:
        self._candidates, self._every = indices, None

    @property
    def count(self) -> int:
        """How many items are selectable."""
        return self._every if self._every is not None else self._candidates.size

    @property
    def selectable(self) -> np.ndarray | None:
        """``candidates``, or None when every item is selectable (nothing built)."""
        return None if self._every is not None else self._candidates

    @property
    def rng(self) -> np.random.Generator:
        if self._rng is None:
            self._rng = np.random.default_rng(self._seed)
        return self._rng

    @property
    def tiebreak_rng(self) -> np.random.Generator | None:
        if self._tiebreak_rng is None and self.seeded_ties:
            self._tiebreak_rng = tiebreak_generator(self._seed)
        return self._tiebreak_rng


@dataclass
class Selection:
    """A strategy's answer: indices best first, optional per-item scores."""

    indices: np.ndarray
    scores: np.ndarray | None = None
    pseudo_label_indices: np.ndarray | None = None
    pseudo_labels: np.ndarray | None = None


ScoreFn = Callable[[Inputs, dict[str, Any], Context], np.ndarray]
BatchFn = Callable[[Inputs, int, dict[str, Any], Context], Selection]


@dataclass(frozen=True)
class Strategy:
    """A registered strategy.

    ``kind == "score"``: ``fn(inputs, params, ctx) -> float64[N]``, higher first,
    selected by the shared tie-breaking top-b. ``kind == "batch"``:
    ``fn(inputs, budget, params, ctx) -> Selection`` builds the batch jointly
    among ``ctx.candidates``.

    ``shortlist`` (score strategies, optional): ``shortlist(inputs, params, ctx,
    budget) -> (items, scores) | None``, sorted candidate indices and their float64
    scores, equal to ``fn``'s, holding every candidate that the top ``budget`` of
    ``fn``'s scores among ``ctx.candidates`` could hold, ties included; None where
    it does not apply. The selection then orders the shortlist instead of all N
    scores, so a strategy may score the rest approximately (``assay.kernels.topscores``).
    """

    name: str
    kind: Literal["score", "batch"]
    fn: Callable[..., Any]
    required: tuple[str, ...]
    description: str
    params: tuple[Param, ...] = ()
    optional: tuple[str, ...] = ()
    min_classes: int = 1
    shortlist: Callable[..., tuple[np.ndarray, np.ndarray] | None] | None = None


#: Parameters every strategy accepts: the two-stage composition.
COMPOSITION_PARAMS: tuple[Param, ...] = (
    Param(
        "prefilter",
        str,
        "",
        "Score strategy whose top prefilter_k items are the only candidates (two-stage "
        "composition); empty for none.",
    ),
    Param(
        "prefilter_k",
        int,
        0,
        "Number of candidates kept by the prefilter; 0 means 10 x budget.",
        minimum=0,
    ),
)

_REGISTRY: dict[str, Strategy] = {}


def register(strategy: Strategy) -> Strategy:
    """Add a strategy; names are unique and parameters may not shadow the generic ones."""
    if strategy.name in _REGISTRY:
        raise ValueError(f"strategy {strategy.name!r} registered twice")
    generic = {p.name for p in COMPOSITION_PARAMS}
    if generic & {p.name for p in strategy.params}:
        raise ValueError(f"strategy {strategy.name!r} redeclares a composition parameter")
    unknown = {r for r in strategy.required + strategy.optional if not is_role(r)}
    if unknown:
        raise ValueError(f"strategy {strategy.name!r} names unknown inputs {sorted(unknown)}")
    _REGISTRY[strategy.name] = strategy
    return strategy


def get(name: str) -> Strategy:
    """Look a strategy up by name, or raise ``NotFound`` listing the known ones."""
    load_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise NotFound(f"unknown strategy {name!r}; known strategies: {known}",
                       field="strategy", reason="UNKNOWN_STRATEGY") from None


def all_strategies() -> list[Strategy]:
    """Every registered strategy, sorted by name."""
    load_builtin()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def all_params(strategy: Strategy) -> tuple[Param, ...]:
    """The strategy's own parameters followed by the generic composition ones."""
    return strategy.params + COMPOSITION_PARAMS


def resolve_params(strategy: Strategy, given: Mapping[str, Any]) -> dict[str, Any]:
    """Check ``given`` against the declarations and fill in defaults.

    Raises ``InvalidInput`` naming the parameter for unknown names, wrong types,
    out-of-range numbers and values outside ``choices``.
    """
    specs = {p.name: p for p in all_params(strategy)}
    unknown = sorted(set(given) - set(specs))
    if unknown:
        allowed = ", ".join(sorted(specs)) or "none"
        raise InvalidInput(
            f"strategy {strategy.name!r} has no parameter {unknown[0]!r}; allowed: {allowed}",
            field=f"params.{unknown[0]}",
        )
    resolved: dict[str, Any] = {}
    for name, spec in specs.items():
        value = given.get(name, spec.default)
        resolved[name] = _check_value(spec, value, f"params.{name}")
    return resolved


def _check_value(spec: Param, value: Any, where: str) -> Any:
    if spec.type is float and isinstance(value, int | float) and not isinstance(value, bool):
        value = float(value)
        if not np.isfinite(value):
            raise InvalidInput(f"{where} must be finite, got {value}", field=where)
    elif not (isinstance(value, spec.type) and not (spec.type is int and isinstance(value, bool))):
        raise InvalidInput(
            f"{where} must be {spec.type.__name__}, got {type(value).__name__} {value!r}",
            field=where,
        )
    if spec.minimum is not None and value < spec.minimum:
        raise InvalidInput(f"{where} must be >= {spec.minimum}, got {value}", field=where)
    if spec.maximum is not None and value > spec.maximum:
        raise InvalidInput(f"{where} must be <= {spec.maximum}, got {value}", field=where)
    if spec.choices and value not in spec.choices:
        raise InvalidInput(
            f"{where} must be one of {', '.join(spec.choices)}; got {value!r}", field=where
        )
    return value


_load_lock = threading.RLock()
_loaded = False


def load_builtin() -> None:
    """Import the built-in strategy modules once; each registers itself on import.

    The flag is set only after every module has registered, and callers that
    arrive while another thread is importing wait on the lock, so no caller ever
    sees a partially populated registry (concurrent first calls used to get
    ``unknown strategy`` with an empty list). The server calls this at start-up;
    lookups call it too, for library use. The lock is re-entrant so a strategy
    module may look another one up while it is being imported.
    """
    global _loaded
    if _loaded:
        return
    with _load_lock:
        if not _loaded:
            from . import builtin  # noqa: F401

            _loaded = True
