"""Imports every built-in strategy module so each registers itself once."""

from . import (  # noqa: F401
    batchbald,
    committee,
    contrastive,
    dynamics,
    geometry,
    hybrid,
    pseudolabel,
    sampling,
    scores,
    uncertainty,
)
