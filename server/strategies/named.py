"""Strategies named inside another strategy's parameters (``prefilter``, ``base``, ...).

A wrong name there is a bad parameter value, not a missing resource: it is answered
INVALID_ARGUMENT on ``params.<name>`` with the valid choices, where a plain registry
lookup would say NOT_FOUND on ``strategy`` and point the caller at the wrong field.
"""

from __future__ import annotations

from assay.vocab.errors import InvalidInput

from . import registry
from .registry import Strategy


def score_strategy(name: str, field: str, *, exclude: tuple[str, ...] = (),
                   also: tuple[str, ...] = ()) -> Strategy:
    """The score strategy ``name`` that parameter ``field`` names.

    Parameters
    ----------
    name : the parameter's value.
    field : where it came from, e.g. ``params.prefilter``.
    exclude : score strategies the parameter may not name (e.g. the strategy itself).
    also : other values the parameter accepts, listed first among the choices (the
        caller handles them before asking here).
    """
    valid = [s.name for s in registry.all_strategies()
             if s.kind == "score" and s.name not in exclude]
    if name not in valid:
        known = {s.name for s in registry.all_strategies()}
        what = ("not allowed here" if name in exclude
                else "a batch strategy" if name in known else "not a strategy")
        raise InvalidInput(f"{field} must name a score strategy; {name!r} is {what}. Use one "
                           f"of: {', '.join((*also, *valid))}", field=field)
    return registry.get(name)
