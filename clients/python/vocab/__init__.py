"""Assay's shared vocabulary: the words every layer and the client speak.

Errors without gRPC (``errors``), the element types (``dtypes``), the input roles
(``roles``) and the tie-breaking rule (``ties``). This package is a leaf: it
imports NumPy and ``ml_dtypes`` and nothing of Assay, so kernels, strategies,
pools, the gRPC edge and the client can all import it without importing each
other.
"""
