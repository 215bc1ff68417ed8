"""16-bit storage for the compiled kernels: bit-exact widening to float32.

Numba's CPU target has no float16 arithmetic, so 16-bit pools reach the kernels
as ``uint16`` bit patterns and each value is widened in registers: bfloat16 is
the top half of a float32 (a 16-bit shift), float16 is converted by LLVM's
``fpext half -> float``, which compiles to the F16C ``vcvtph2ps`` instruction
where the CPU has it. Both are exact and vectorize, so a distance pass over a
16-bit pool streams half the bytes of a float32 pool with no row buffer.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

#: Storage kinds a kernel can read.
FLOAT = "float"  # float32 or float64 read as is
FP16 = "fp16"  # IEEE half, as uint16 bits
BF16 = "bf16"  # bfloat16, as uint16 bits

_BFLOAT16 = np.dtype(ml_dtypes.bfloat16)


def target_has(context, feature: str) -> bool:
    """Whether the code being generated may use the instructions of ``feature``
    ("f16c", "fma"): none for ``NUMBA_CPU_NAME=generic``."""
    return f"+{feature}" in str(getattr(context.codegen(), "_tm_features", ""))


def _fp16_widen_ir(builder, bits):
    """IEEE half bits -> float32, exact, in integer operations that vectorize.

    For a target without F16C (``NUMBA_CPU_NAME=generic``: baseline x86-64), where
    LLVM lowers ``fpext half`` to a call of ``__extendhfsf2``, a runtime function
    Numba's JIT does not link (the process aborts). Exponent rebias with fix-ups for
    Inf/NaN and for subnormals (renormalized by one exact float subtraction), after
    F. Giesen's ``half_to_float``.
    """
    i32, f32 = ir.IntType(32), ir.FloatType()

    def c(v):
        return ir.Constant(i32, v)

    h = builder.zext(bits, i32)
    o = builder.shl(builder.and_(h, c(0x7FFF)), c(13))  # exponent and mantissa, in place
    exp = builder.and_(o, c(0x7C00 << 13))
    o = builder.add(o, c((127 - 15) << 23))  # rebias the exponent
    special = builder.add(o, c((128 - 16) << 23))  # Inf/NaN: exponent to 255
    small = builder.fsub(builder.bitcast(builder.add(o, c(1 << 23)), f32),
                         builder.bitcast(c(113 << 23), f32))  # zero/subnormal
    o = builder.select(builder.icmp_unsigned("==", exp, c(0)), builder.bitcast(small, i32), o)
    o = builder.select(builder.icmp_unsigned("==", exp, c(0x7C00 << 13)), special, o)
    sign = builder.shl(builder.and_(h, c(0x8000)), c(16))
    return builder.bitcast(builder.or_(o, sign), f32)


@intrinsic
def _fp16_bits_to_f32(typingctx, bits):
    sig = types.float32(types.uint16)

    def codegen(context, builder, signature, args):
        if target_has(context, "f16c"):
            return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())
        return _fp16_widen_ir(builder, args[0])

    return sig, codegen


@intrinsic
def _bf16_bits_to_f32(typingctx, bits):
    sig = types.float32(types.uint16)

    def codegen(context, builder, signature, args):
        wide = builder.zext(args[0], ir.IntType(32))
        return builder.bitcast(builder.shl(wide, ir.Constant(ir.IntType(32), 16)),
                               ir.FloatType())

    return sig, codegen


@njit(inline="always")
def load_float(x):
    """Identity loader for float32/float64 storage."""
    return x


@njit(inline="always")
def load_fp16(x):
    """Widen IEEE-half bits to float32."""
    return _fp16_bits_to_f32(x)


@njit(inline="always")
def load_bf16(x):
    """Widen bfloat16 bits to float32."""
    return _bf16_bits_to_f32(x)


LOADERS = {FLOAT: load_float, FP16: load_fp16, BF16: load_bf16}


def storage(array: np.ndarray) -> tuple[np.ndarray, str]:
    """A read-only, C-contiguous view a kernel can read, and its storage kind.

    float16 and bfloat16 become ``uint16`` views of the same memory (no copy);
    float32 and float64 are passed as they are. Every view is marked read-only so
    that writable arrays and read-only memmaps share one compiled specialization.
    A non-contiguous input is copied once (it cannot be streamed otherwise).
    """
    a = np.asarray(array)
    if not a.flags.c_contiguous:
        a = np.ascontiguousarray(a)
    if a.dtype == np.float16:
        view, kind = a.view(np.uint16), FP16
    elif a.dtype == _BFLOAT16:
        view, kind = a.view(np.uint16), BF16
    elif a.dtype in (np.float32, np.float64):
        view, kind = a.view(), FLOAT
    else:
        raise TypeError(f"kernels read float16, bfloat16, float32 or float64, got {a.dtype}")
    view.flags.writeable = False
    return view, kind


def rows_float32(array: np.ndarray, rows: np.ndarray | slice | int) -> np.ndarray:
    """Selected rows widened to a new contiguous float32 array (small gathers only)."""
    return np.ascontiguousarray(np.asarray(array)[rows], dtype=np.float32)


def compute_dtype(array: np.ndarray) -> np.dtype:
    """Arithmetic precision of a kernel over ``array``: float64 stays float64, all
    other storage (float32, float16, bfloat16) is computed in float32."""
    return np.dtype(np.float64 if np.asarray(array).dtype == np.float64 else np.float32)


def rows_compute(array: np.ndarray, rows: np.ndarray | slice | int) -> np.ndarray:
    """Selected rows (centres) as a contiguous array of the compute precision."""
    return np.ascontiguousarray(np.asarray(array)[rows], dtype=compute_dtype(array))
