"""Imports every built-in strategy module so each registers itself once."""

from assay.server.strategies import (  # noqa: F401
    batchbald,
    committee,
    geometry,
    sampling,
    scores,
    uncertainty,
)
