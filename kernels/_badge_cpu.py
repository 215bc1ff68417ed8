"""Numba CPU kernels of BADGE's k-means++ seeding on factorized gradient embeddings.

With g_x = q_x (x) h_x, q_x = p_x - e_argmax, the squared distance of x to a centre z
is |g_x|^2 + |g_z|^2 - 2 <q_x, q_z> <h_x, h_z>: one dot product of width d and one of
width C per pair, so a step streams the embeddings once and never builds the
N x C*d gradient embeddings.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from numba import prange

from .bits import LOADERS
from .config import BADGE_ZERO_REL, FASTMATH
from .jit import kernel

_FLAGS = {"parallel": True, "nogil": True, "fastmath": set(FASTMATH)}


def _build(load):
    """Compile the BADGE kernels for one storage kind of the embeddings."""

    @kernel(**_FLAGS)
    def sqnorms(h, rows, identity, out):
        """out[i] = |h_rows[i]|^2, accumulated in float32 per row."""
        d = h.shape[1]
        for i in prange(out.shape[0]):
            r = np.int64(i) if identity else rows[i]
            acc = np.float32(0.0)
            for j in range(d):
                v = load(h[r, j])
                acc += v * v
            out[i] = acc

    @kernel(**_FLAGS)
    def step(h, rows, identity, q, gnorm, hz, qz, gz, d2):
        """d2 <- min(d2, |g_x - g_z|^2) for every candidate x (chosen ones stay 0)."""
        m = d2.shape[0]
        d = h.shape[1]
        c = q.shape[1]
        for i in prange(m):
            r = np.int64(i) if identity else rows[i]
            hh = np.float32(0.0)
            for j in range(d):
                hh += load(h[r, j]) * hz[j]
            qq = np.float32(0.0)
            for k in range(c):
                qq += q[i, k] * qz[k]
            v = gnorm[i] + gz - 2.0 * np.float64(qq) * np.float64(hh)
            if v <= BADGE_ZERO_REL * (gnorm[i] + gz):
                v = 0.0
            if v < d2[i]:
                d2[i] = v

    return SimpleNamespace(sqnorms=sqnorms, step=step)


_KERNELS: dict[str, SimpleNamespace] = {}


def kernels(kind: str) -> SimpleNamespace:
    """The compiled kernels for a storage kind, built on first use."""
    if kind not in _KERNELS:
        _KERNELS[kind] = _build(LOADERS[kind])
    return _KERNELS[kind]
