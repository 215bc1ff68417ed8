"""Assay: a gRPC active-learning acquisition service.

This package root holds the generated contract (``assay.v1``); the service lives
in ``assay.server``, the compiled kernels in ``assay.kernels`` and the Python
client in ``assay.client``.
"""

__version__ = "0.1.0"
