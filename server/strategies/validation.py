"""Checks of input arrays by role, done once at the edge.

Tolerances (documented in the README): class probabilities must lie in
[-PROB_TOL, 1 + PROB_TOL] and each row must sum to 1 within ``SUM_TOL`` for
32/64-bit floats, ``SUM_TOL_16`` for 16-bit floats (whose rounding alone moves a
10-class row sum by ~5e-3).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

import assay.kernels as kernels
from assay.kernels import rowwise
from assay.vocab.dtypes import BFLOAT16
from assay.vocab.errors import InvalidInput
from assay.vocab.roles import is_role, names, roles_with
from assay.vocab.roles import role as _role

PROB_TOL = 1e-6
SUM_TOL = 1e-3
SUM_TOL_16 = 1e-2
#: Rows checked per block, so validation of a large pool never doubles its memory.
_BLOCK = 1 << 20
#: Roles whose rows are class probabilities (in [0, 1], summing to 1), and those whose
#: values are in [0, 1] (the probabilities and the discriminator's output).
_PROBABILITY_ROLES = roles_with("probabilities")
_UNIT_ROLES = (*_PROBABILITY_ROLES, *roles_with("unit"))
#: Element types a model input may have (what onnxruntime takes for ONNX float/int inputs).
_MODEL_INPUT_DTYPES = ("float16", "float32", "float64", "int32", "int64")


def shape_doc(name: str) -> str:
    """The documented shape of a role, for error messages."""
    return _role(name).shape


def rank_fits(name: str, ndim: int) -> bool:
    """Whether an array of rank ``ndim`` can be a ``name`` array (roles of any rank need one
    axis at least: their item axis)."""
    rank = _role(name).rank
    return ndim >= 1 if rank is None else ndim == rank


def _is_float(dtype: np.dtype) -> bool:
    return dtype.kind == "f" or dtype == BFLOAT16


def validate_array(role: str, array: np.ndarray, field: str | None = None) -> None:
    """Raise ``InvalidInput`` unless ``array`` is a valid ``role`` array."""
    field = field or f"inputs.{role}"
    if not is_role(role):
        raise InvalidInput(f"unknown input {role!r}; known: {', '.join(names())}", field=field)
    spec = _role(role)
    if spec.values == "model":
        _validate_model_inputs(array, field)
        return
    if array.ndim != spec.rank:
        raise InvalidInput(
            f"{field} must have shape {spec.shape} (rank {spec.rank}), got {list(array.shape)}",
            field=field,
        )
    _check_axes(role, array, field)
    if spec.values == "labels":
        if array.dtype.kind not in "iu":
            raise InvalidInput(f"{field} must be INT32 or INT64 class labels (-1: unlabeled), "
                               f"got {array.dtype}", field=field)
        if array.size and array.min() < -1:
            raise InvalidInput(f"{field} holds labels below -1; use -1 for unlabeled items",
                               field=field)
        return
    if spec.values == "class_labels":
        if array.dtype.kind not in "iu":
            raise InvalidInput(f"{field} must be INT32 or INT64 class labels, got {array.dtype}",
                               field=field)
        if array.size and array.min() < 0:
            raise InvalidInput(f"{field} holds negative class labels", field=field)
        return
    if not _is_float(array.dtype):
        raise InvalidInput(f"{field} must be FP32, FP16, BF16 or FP64, got {array.dtype}",
                           field=field)
    flat = array.reshape(-1, array.shape[-1]) if array.ndim > 1 else array.reshape(-1, 1)
    sum_tol = SUM_TOL_16 if array.dtype.itemsize == 2 else SUM_TOL
    if role in _PROBABILITY_ROLES and rowwise.compiled(flat):
        _check_probability_rows(field, rowwise.as_rows(flat), sum_tol)
        return
    for start in range(0, flat.shape[0], _BLOCK):
        block = np.asarray(flat[start:start + _BLOCK], dtype=np.float64)
        bad = ~np.isfinite(block)
        if bad.any():
            row = start + int(np.flatnonzero(bad.any(axis=1))[0])
            raise InvalidInput(f"{field} contains NaN or Inf (first at flat row {row})",
                               field=field, reason="NON_FINITE")
        if role in _UNIT_ROLES:
            if block.min() < -PROB_TOL or block.max() > 1 + PROB_TOL:
                raise InvalidInput(f"{field} has values outside [0, 1]", field=field,
                                   reason="NOT_PROBABILITIES")
        if role in _PROBABILITY_ROLES:
            err = np.abs(block.sum(axis=1) - 1.0)
            if (err > sum_tol).any():
                row = start + int(np.argmax(err > sum_tol))
                raise InvalidInput(
                    f"{field} row {row} sums to {block[row - start].sum():.6g}; class "
                    f"probabilities must sum to 1 within {sum_tol:g} (apply softmax first)",
                    field=field, reason="NOT_PROBABILITIES",
                )
    if spec.geometric:
        kernels.bounded(array, field)


def _check_axes(role: str, array: np.ndarray, field: str) -> None:
    """Every axis but the item axis must be >= 1: an empty class, width, member or epoch
    axis leaves nothing to compute on (and ``[10, 0]`` used to crash a reshape)."""
    spec = _role(role)
    for axis, size in enumerate(array.shape):
        if axis == spec.item_axis or size >= 1:
            continue
        name = spec.axis_names()[axis]
        if role == "predictions":
            raise InvalidInput(
                f"{field} holds no epochs (T = 0): send at least one epoch of predictions "
                "[T, N]; for a pool, call RecordEpoch first", field=field, reason="NO_EPOCHS")
        raise InvalidInput(f"{field} has shape {list(array.shape)}: axis {name} is empty; "
                           f"{spec.shape} needs {name} >= 1", field=field,
                           reason="EMPTY_DIMENSION")


def _check_probability_rows(field: str, rows: np.ndarray, sum_tol: float) -> None:
    """The same checks as the NumPy path, in one fused pass (float32/float64 rows)."""
    non_finite, out_of_range, bad_sum = rowwise.run(
        "probability_rows_check", rows, -PROB_TOL, 1 + PROB_TOL, sum_tol)
    if non_finite != rowwise.NO_ROW:
        raise InvalidInput(f"{field} contains NaN or Inf (first at flat row {non_finite})",
                           field=field, reason="NON_FINITE")
    if out_of_range != rowwise.NO_ROW:
        raise InvalidInput(f"{field} has values outside [0, 1]", field=field,
                           reason="NOT_PROBABILITIES")
    if bad_sum != rowwise.NO_ROW:
        raise InvalidInput(
            f"{field} row {bad_sum} sums to {rows[bad_sum].astype(np.float64).sum():.6g}; class "
            f"probabilities must sum to 1 within {sum_tol:g} (apply softmax first)",
            field=field, reason="NOT_PROBABILITIES",
        )


def _validate_model_inputs(array: np.ndarray, field: str) -> None:
    """Raw model inputs: any rank with an item axis, a type a model takes, finite floats.

    Their meaning is the model's business; what is checked here is only what
    would make every model fail or silently compute garbage (NaN, Inf).
    """
    if array.ndim < 1:
        raise InvalidInput(f"{field} must have shape [N, ...] (rank >= 1), got a scalar",
                           field=field)
    if array.dtype.name not in _MODEL_INPUT_DTYPES:
        raise InvalidInput(f"{field} must be FP32, FP16, FP64, INT32 or INT64, got "
                           f"{array.dtype}", field=field)
    if array.dtype.kind != "f" or array.size == 0:
        return
    flat = array.reshape(-1)
    for start in range(0, flat.size, _BLOCK):
        block = flat[start:start + _BLOCK]
        if not np.isfinite(block).all():
            at = start + int(np.flatnonzero(~np.isfinite(block))[0])
            raise InvalidInput(f"{field} contains NaN or Inf (first at flat element {at})",
                               field=field, reason="NON_FINITE")


def check_not_transposed(role: str, shape: tuple[int, ...] | list[int], n: int,
                         field: str) -> None:
    """Reject a ``role`` array whose item axis is not first (``samples`` ``[S, N, C]``,
    ``predictions`` ``[T, N]``) sent items first (``[N, S, C]``, ``[N, T]``), where the
    item count ``n`` is known from elsewhere and the shape says so unambiguously:
    ``shape[0] == n != shape[item_axis]``. Such an array would otherwise be read with its
    axes swapped whenever the sizes happen to allow it, and answer nonsense."""
    if not is_role(role):
        return
    spec = _role(role)
    axis = spec.item_axis
    if axis == 0 or spec.rank is None or len(shape) != spec.rank:
        return
    if shape[0] == n and shape[axis] != n:
        names = spec.axis_names()
        order = list(range(len(shape)))
        order[0], order[axis] = axis, 0
        raise InvalidInput(
            f"{field} has shape {list(shape)}: its first axis is the {n} items, but {role} is "
            f"{spec.shape} ({names[0]} first, the items on axis {axis}); it looks transposed: "
            f"send it as {spec.shape} (NumPy: .transpose({', '.join(map(str, order))}))",
            field=field, reason="SHAPE_MISMATCH")


def item_count(arrays: Mapping[str, np.ndarray]) -> int:
    """The common item count N of ``arrays``, or raise if they disagree.

    The labeled-set and target-set roles (``Role.labeled``, ``Role.target``) have their
    own count and are skipped.
    """
    counts = {
        name: a.shape[_role(name).item_axis]
        for name, a in arrays.items()
        if not (_role(name).labeled or _role(name).target)
    }
    if len(set(counts.values())) > 1:
        # Arrays with the items first agree on N: one with its items later is transposed?
        first = {n for name, n in counts.items() if _role(name).item_axis == 0}
        if len(first) == 1:
            n = next(iter(first))
            for name, a in arrays.items():
                if name in counts:
                    check_not_transposed(name, a.shape, n, f"inputs.{name}")
        detail = ", ".join(f"{r}: {n}" for r, n in counts.items())
        raise InvalidInput(f"inputs disagree on the number of items N ({detail})",
                           field="inputs", reason="SHAPE_MISMATCH")
    return next(iter(counts.values()), 0)


def check_consistency(arrays: Mapping[str, np.ndarray]) -> int:
    """Cross-array checks (N, C, d); returns N."""
    n = item_count(arrays)
    if "probs" in arrays and "samples" in arrays:
        if arrays["probs"].shape[1] != arrays["samples"].shape[2]:
            raise InvalidInput("inputs.probs and inputs.samples disagree on the class count C",
                               field="inputs.samples", reason="SHAPE_MISMATCH")
    if "embeddings" in arrays and "labeled_embeddings" in arrays:
        if arrays["embeddings"].shape[1] != arrays["labeled_embeddings"].shape[1]:
            raise InvalidInput(
                "inputs.labeled_embeddings must have the same width d as inputs.embeddings",
                field="inputs.labeled_embeddings", reason="SHAPE_MISMATCH",
            )
    if "labeled_probs" in arrays and "labeled_embeddings" in arrays:
        if arrays["labeled_probs"].shape[0] != arrays["labeled_embeddings"].shape[0]:
            raise InvalidInput(
                "inputs.labeled_probs and inputs.labeled_embeddings must describe the same "
                "labeled items (same L)", field="inputs.labeled_probs", reason="SHAPE_MISMATCH")
    classes = [arrays[r].shape[-1] for r in ("probs", "labeled_probs") if r in arrays]
    if len(set(classes)) > 1:
        raise InvalidInput("inputs.labeled_probs must have the same class count C as "
                           "inputs.probs", field="inputs.labeled_probs", reason="SHAPE_MISMATCH")
    return n
