"""The input roles: the one table of what each array a strategy reads is.

A role is a named array of a Select (inline in ``assay.v1.Inputs``, or stored in
a pool): its rank, the axis that runs over the items, its shape as the
documentation writes it, what its values must be, and where it comes from.
Strategies declare the roles they need, validation checks arrays by role, the
pool store keeps the stored roles and derives the others from its labels, and
the client's keyword arguments are the role names; all of them read this table,
and ``tests/test_vocab.py`` checks it against the ``Inputs`` message of the
proto (names and documented shapes).

This module imports nothing, not even NumPy, so any layer can use it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from typing import Literal

#: What a role's values must be.
#: ``probabilities``: floats in [0, 1] whose rows (the last axis) sum to 1;
#: ``unit``: floats in [0, 1]; ``real``: finite floats;
#: ``class_labels``: integers >= 0; ``labels``: integers >= -1 (-1: unlabeled);
#: ``model``: whatever a registered model takes (finite if floats).
Values = Literal["probabilities", "unit", "real", "class_labels", "labels", "model"]


@dataclass(frozen=True)
class Role:
    """One input role.

    Attributes
    ----------
    name : str
        The role name: the ``Inputs`` field, the pool array name, the client keyword.
    rank : int or None
        The array's rank; None for any rank >= 1 (raw model inputs).
    item_axis : int
        The axis that runs over the items (N; L for the labeled set, M for a target set).
    shape : str
        The documented shape, one letter per axis (``"[S, N, C]"``; ``"..."`` for
        axes of any size and number).
    values : Values
        What the elements must be.
    number : int
        The field number in ``assay.v1.Inputs``.
    derived : bool
        Derived from a pool's labels when a Select reads a pool; never stored as a
        pool array, only sent inline.
    labeled : bool
        Describes the labeled set: its item count is L, not the pool's N.
    target : bool
        Describes a target set of its own (EPIG's target inputs): its item count is
        M, not the pool's N; sent inline only, never stored in a pool.
    row_local : bool
        Its checks look at one last-axis row (or one element) at a time, so an
        upload can be validated chunk by chunk; other roles are validated whole.
    geometric : bool
        The geometric kernels measure distances on it, so its values are bounded
        for squared distances to fit float32.
    """

    name: str
    rank: int | None
    item_axis: int
    shape: str
    values: Values
    number: int
    derived: bool = False
    labeled: bool = False
    target: bool = False
    row_local: bool = True
    geometric: bool = False

    def axis_names(self) -> tuple[str, ...]:
        """The letters of the documented shape, one per axis (``("S", "N", "C")``)."""
        return tuple(self.shape.strip("[]").split(", "))


#: Every role, in the order the service lists them.
ROLES: tuple[Role, ...] = (
    Role("probs", 2, 0, "[N, C]", "probabilities", 1),
    Role("samples", 3, 1, "[S, N, C]", "probabilities", 2),
    Role("embeddings", 2, 0, "[N, d]", "real", 3, geometric=True),
    # Validated whole: its width is checked against the pool's embeddings.
    Role("labeled_embeddings", 2, 0, "[L, d]", "real", 4, derived=True, labeled=True,
         row_local=False, geometric=True),
    Role("scores", 1, 0, "[N]", "real", 5),
    Role("loss", 1, 0, "[N]", "real", 6),
    Role("discriminator", 1, 0, "[N]", "unit", 7),
    Role("predictions", 2, 1, "[T, N]", "class_labels", 8),
    # Raw inputs of a registered ONNX model, whatever shape its graph input takes.
    Role("model_inputs", None, 0, "[N, ...]", "model", 16),
    # The model's class probabilities on the labeled items (CAL).
    Role("labeled_probs", 2, 0, "[L, C]", "probabilities", 9, derived=True, labeled=True),
    # True class label per item, -1 where unlabeled (forgetting events).
    Role("labels", 1, 0, "[N]", "labels", 10, derived=True),
    # The parameter samples' probabilities on target inputs (EPIG), M of them.
    Role("target_samples", 3, 1, "[S, M, C]", "probabilities", 11, target=True),
)

_BY_NAME: dict[str, Role] = {r.name: r for r in ROLES}

#: A model with several graph inputs (a transformer's ``input_ids`` and
#: ``attention_mask``) reads several raw-input arrays: ``model_inputs.<name>``,
#: each of the ``model_inputs`` role. The name is a file name on the server, so
#: it is kept to a safe alphabet.
NAMED_MODEL_INPUTS = "model_inputs."
_NAMED = re.compile(r"^model_inputs\.[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$")


def is_named_model_input(name: str) -> bool:
    """Whether ``name`` is a well-formed ``model_inputs.<name>`` array name."""
    return bool(_NAMED.match(name))


def base(name: str) -> str:
    """The role an array name belongs to: ``model_inputs`` for ``model_inputs.<name>``,
    the name itself otherwise."""
    if name in _BY_NAME:  # the common case, asked several times per request
        return name
    return "model_inputs" if is_named_model_input(name) else name


def role(name: str) -> Role:
    """The role of array ``name``; ``KeyError`` if there is none."""
    return _BY_NAME[base(name)]


def is_role(name: str) -> bool:
    """Whether ``name`` is an array name: a role, or ``model_inputs.<name>``."""
    return base(name) in _BY_NAME


def is_stored(name: str) -> bool:
    """Whether a pool can store an array called ``name``."""
    return is_role(name) and not role(name).derived and not role(name).target


@cache
def names() -> tuple[str, ...]:
    """Every role name, in table order: what a Select may send inline."""
    return tuple(r.name for r in ROLES)


def item_axis(name: str) -> int:
    """The item axis of array ``name``."""
    return role(name).item_axis


@cache
def stored_roles() -> tuple[str, ...]:
    """The roles a pool stores: what ``AppendPoolItems`` accepts."""
    return tuple(r.name for r in ROLES if not r.derived and not r.target)


@cache
def derived_roles() -> tuple[str, ...]:
    """The roles derived from a pool's labels, never stored."""
    return tuple(r.name for r in ROLES if r.derived)


@cache
def labeled_roles() -> tuple[str, ...]:
    """The roles describing the labeled set, with their own item count L."""
    return tuple(r.name for r in ROLES if r.labeled)


@cache
def target_roles() -> tuple[str, ...]:
    """The roles describing a target set, with their own item count M (inline only)."""
    return tuple(r.name for r in ROLES if r.target)


@cache
def own_count_roles() -> tuple[str, ...]:
    """The roles whose item count is their own (L or M), not the pool's N."""
    return tuple(r.name for r in ROLES if r.labeled or r.target)


@cache
def row_local_roles() -> frozenset[str]:
    """The roles an upload can validate chunk by chunk."""
    return frozenset(r.name for r in ROLES if r.row_local)


@cache
def geometric_roles() -> tuple[str, ...]:
    """The roles the geometric kernels measure distances on."""
    return tuple(r.name for r in ROLES if r.geometric)


def roles_with(values: Values) -> tuple[str, ...]:
    """The roles whose elements must be ``values``."""
    return tuple(r.name for r in ROLES if r.values == values)
