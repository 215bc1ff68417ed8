"""Error bounds of the compiled kernels, from which each vector case takes its tolerance.

A client compares a score ``got`` with the stored ``want`` as
``|got - want| <= atol + rtol * |want|``. The stored ``want`` is the float64
reference (``tests/reference.py``, ``tests/kernels/naive.py``), so the tolerance
must cover the rounding error of the kernel that the server runs; it does not
depend on the host, only on the arithmetic. The bounds are the classical ones
(Higham, *Accuracy and Stability of Numerical Algorithms*, ch. 3): a sum or dot
product of ``n`` terms in precision ``u`` has relative error at most
``gamma(n) = n u / (1 - n u)`` of the sum of the absolute terms, whatever the order
of the additions. That is why they hold under fastmath's reassociation, for any
SIMD width and any thread count; fused multiply-adds only make an error smaller.

The geometric kernels (k-center, BADGE) compute 16-bit and float32 storage in float32
(widening is exact) and keep their running distances in float32 buffers whatever the
storage, so their bounds use ``u = 2**-24`` for every dtype: for float64 storage that
is an upper bound of the float64 arithmetic plus the one float32 rounding of the
stored distance. FAISS (k-means) always works in float32. Indices are
compared exactly: the generator only keeps inputs whose every decision (argmax,
inverse-CDF draw, cluster membership, top-b order) wins by more than twice these
bounds, so rounding cannot change a pick on any host.

Score strategies compute in float64 from the widened inputs, with a few dozen
operations per item; their scores agree with the reference to ~1e-15 relative, and
the stored tolerance ``FLOAT64_RTOL`` = 1e-9 leaves room for cancellation (``bald``,
``mean_std``) without letting a wrong formula pass.
"""

from __future__ import annotations

import math

#: Unit roundoff of float32 and float64.
U32 = 2.0**-24
U64 = 2.0**-53

#: Tolerance of the scores of strategies computed in float64 (see the module docstring).
FLOAT64_RTOL = 1e-9
FLOAT64_ATOL = 1e-12

#: Floor of any derived tolerance: a float64 reference printed with repr is exact, but a
#: client parses it and may add one rounding.
FLOOR_RTOL = 4 * U64


def gamma(n: int, u: float) -> float:
    """Higham's gamma_n: the relative error bound of an n-term sum or dot product."""
    nu = n * u
    if nu >= 1.0:
        raise ValueError(f"gamma({n}) undefined at u = {u}")
    return nu / (1.0 - nu)


def kcenter_sq_rel(d: int, u: float) -> float:
    """Relative bound on a k-center squared distance sum_j (x_j - c_j)^2 of width d.

    Each difference is rounded once (u), squared (u) and d non-negative terms are
    summed (gamma(d - 1)); no cancellation, so the bound is relative to the distance
    itself: (1 + u)^2 (1 + u)(1 + gamma(d - 1)) - 1 <= gamma(d + 2).
    """
    return gamma(d + 2, u)


def kcenter_score_rel(d: int, u: float) -> float:
    """Relative bound on a k-center score sqrt(D^2): half the squared bound plus the
    rounding of the square root and of the float32 -> float64 widening."""
    return 0.5 * kcenter_sq_rel(d, u) + 2 * u


def badge_sq_coeff(d: int, c: int, u: float) -> float:
    """Coefficient k of the bound k (|g_x| + |g_z|)^2 on a BADGE squared distance.

    The kernel computes |g_x|^2 + |g_z|^2 - 2 <q_x, q_z> <h_x, h_z> (factorized,
    never materialized): a width-d dot product (gamma(d)), a width-C dot product of
    q = p - e_argmax rounded to float32 (gamma(C) + 2u), the squared norms likewise,
    and the float64 combination. By Cauchy-Schwarz every term is at most
    |g_x| |g_z|, |g_x|^2 or |g_z|^2, so the absolute error is at most
    (gamma(d) + gamma(C) + 4u) (|g_x| + |g_z|)^2 -- absolute, not relative, because
    of the cancellation in the subtraction.
    """
    return gamma(d, u) + gamma(c, u) + 4 * u


def sqrt_err(sq_err: float, value: float) -> float:
    """Bound on |sqrt(a) - sqrt(b)| given |a - b| <= sq_err and sqrt(b) = value:
    |a - b| / (sqrt(a) + sqrt(b)) <= sq_err / value, and always <= sqrt(sq_err)."""
    root = math.sqrt(sq_err)
    return root if value <= 0.0 else min(root, sq_err / value)


def l2_expansion_sq_abs(d: int, u: float, sq_norm_x: float, sq_norm_c: float) -> float:
    """Absolute bound on |x|^2 + |c|^2 - 2 x.c computed in precision u (FAISS's BLAS
    path): each of the three width-d sums is within gamma(d) of its absolute terms,
    whose total is at most 2 (|x|^2 + |c|^2), and two more roundings combine them."""
    return (gamma(d, u) + 3 * u) * 2.0 * (sq_norm_x + sq_norm_c)


def mean_abs(m: int, u: float, max_abs: float) -> float:
    """Bound on one coordinate of a mean of m values of magnitude <= max_abs, summed in
    precision u and scaled once: gamma(m) max_abs."""
    return gamma(m + 1, u) * max_abs


def round_up(x: float, digits: int = 2) -> float:
    """``x`` rounded up to ``digits`` significant digits, so the stored figure is readable
    and never below the derived bound."""
    if x <= 0.0:
        return 0.0
    e = math.floor(math.log10(x)) - digits + 1
    r = float(f"{math.ceil(x / 10.0**e)}e{e}")  # parsed from decimal: a short repr
    return r if r >= x else math.nextafter(r, math.inf)
