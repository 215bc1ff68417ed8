"""Imports every built-in strategy module so each registers itself once."""

from assay.server.strategies import committee, sampling, scores, uncertainty  # noqa: F401
