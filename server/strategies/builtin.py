"""Imports every built-in strategy module so each registers itself once."""

from assay.server.strategies import committee, sampling, scores, uncertainty  # noqa: F401
from assay.server.strategies import geometry  # noqa: F401
