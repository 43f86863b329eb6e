"""Fused CUDA kernels for deterministic mode's exact GEMM (loom/kernels/exact.py, `_matmul_narrow`).

The NumPy path slices the operands and recombines the product in about fifteen separate passes; on
the GPU each is a kernel over the whole operand, and together they cost ten times the float64 GEMM
itself. These three kernels do the same arithmetic in one pass each. Every step is exact (scaling by
a power of two, rint, the subtraction of a number's own integer part) except the one rounding in the
recombination and the final conversion, which are written with explicitly rounded intrinsics in the
reference's order: the bits are the NumPy path's (tests/gpu/test_deterministic_bits.py).

`CUDABackend.exact_kernels` is this module. Capturable: no synchronization, scalars as arguments.
"""
from __future__ import annotations

from functools import lru_cache

import cupy
import numpy as np

from .cuda import translating
from .cuda_kernels import OPTIONS


@lru_cache(maxsize=None)
def _kernels():
    left = cupy.ElementwiseKernel(
        "float32 a, int32 shift, float64 up", "float64 hi, float64 lo",
        """const float s = ldexpf(a, shift);          // |s| < 2^bits, exact
           const float h = rintf(s);
           hi = (double)h;
           lo = rint(__dmul_rn(__dsub_rn((double)s, (double)h), up));   // remainder, scaled: exact""",
        "loom_exact_slice_left", options=OPTIONS)
    right = cupy.ElementwiseKernel(
        "float32 b, int32 shift", "float64 q", "q = (double)rintf(ldexpf(b, shift));",
        "loom_exact_slice_right", options=OPTIONS)
    combine = cupy.ElementwiseKernel(
        "float64 ghi, float64 glo, float64 down, float64 row, float64 col", "T out",
        """double acc = __dadd_rn(__dmul_rn(glo, down), ghi);   // the one rounding, as the reference
           acc = __dmul_rn(acc, row);
           out = (T)__dmul_rn(acc, col);""",
        "loom_exact_combine", options=OPTIONS)
    return left, right, combine


def slice_left(a, shift, bits: int, hi, lo) -> None:
    """hi, lo <- the two integer slices of a * 2^shift (shift broadcasts per row)."""
    with translating("exact GEMM slicing", a):
        _kernels()[0](a, shift, np.float64(2.0 ** bits), hi, lo)


def slice_right(b, shift):
    """rint(b * 2^shift) as float64, in b's layout."""
    with translating("exact GEMM slicing", b):
        q = cupy.empty_like(b, dtype=np.float64)
        _kernels()[1](b, shift, q)
        return q


def combine(g, m: int, bits_a: int, row_scale, col_scale, dtype):
    """(g_hi + g_lo 2^-bits_a) * row_scale * col_scale rounded to dtype, g = [.., 2m, N] stacked."""
    with translating("exact GEMM recombination", g):
        out = cupy.empty(g.shape[:-2] + (m, g.shape[-1]), dtype=dtype)
        _kernels()[2](g[..., :m, :], g[..., m:, :], np.float64(2.0 ** -bits_a), row_scale, col_scale, out)
        return out
