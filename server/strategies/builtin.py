"""Imports every built-in strategy module so each registers itself once."""

from . import (  # noqa: F401
    batchbald,
    cold_start,
    committee,
    contrastive,
    dynamics,
    geometry,
    hybrid,
    large_batch,
    pseudolabel,
    sampling,
    scores,
    stochastic,
    target_aware,
    uncertainty,
)
