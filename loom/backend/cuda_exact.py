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

import math
from functools import lru_cache

import cupy
import numpy as np

from .cuda import translating
from .cuda_kernels import C_TYPES, OPTIONS


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


_GUARD = r"""
__device__ __forceinline__ float loom_mark(float x) {     // sign, 0, or the special value itself
    return isfinite(x) ? (x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : 0.0f)) : x;
}
extern "C" __global__ void loom_exact_specials(
        const float* a, const float* b, const bool* rowbad, const bool* colbad, T* out,
        long long batches, long long m, long long n, long long k,
        long long sab, long long sam, long long sak, long long sbb, long long sbk, long long sbn) {
    long long total = batches * m * n;
    for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < total;
         idx += (long long)gridDim.x * blockDim.x) {
        long long j = idx % n, i = (idx / n) % m, z = idx / (m * n);
        if (!rowbad[z * m + i] && !colbad[z * n + j]) continue;
        float s = 0.0f;                 // finite terms are +-1 or 0: only the special outcome is used
        for (long long q = 0; q < k; ++q)
            s = __fadd_rn(s, __fmul_rn(loom_mark(a[z * sab + i * sam + q * sak]),
                                       loom_mark(b[z * sbb + q * sbk + j * sbn])));
        if (!isfinite(s)) out[idx] = (T)s;
    }
}
"""


@lru_cache(maxsize=None)
def _guard(dtype):
    module = cupy.RawModule(code=f"typedef {C_TYPES[np.dtype(dtype)]} T;\n" + _GUARD, options=OPTIONS)
    return module.get_function("loom_exact_specials")


def guardable(a, b) -> bool:
    """Whether patch_specials takes these operands."""
    return a.dtype == np.float32 and b.dtype == np.float32 and a.ndim == b.ndim and a.ndim in (2, 3)


def patch_specials(a, b, amax, bmax, out) -> None:
    """Where a row of a or a column of b holds inf or NaN, overwrite out with IEEE's special result
    (the sign-and-special product, as exact._special_values); every other thread returns at once,
    so this costs one pass over out when everything is finite, and needs no host read. Operands
    as `guardable` says; out is the C-contiguous product."""
    if not guardable(a, b) or out.ndim != a.ndim or not out.flags.c_contiguous:
        raise ValueError(f"patch_specials: operands {a.dtype}{a.shape} x {b.dtype}{b.shape} into "
                         f"{out.dtype}{out.shape} are not guardable")
    a3, b3 = (a, b) if a.ndim == 3 else (a[None], b[None])
    batches = out.size // (out.shape[-2] * out.shape[-1]) if out.size else 0
    a3 = cupy.broadcast_to(a3, (batches,) + a3.shape[1:])
    b3 = cupy.broadcast_to(b3, (batches,) + b3.shape[1:])
    m, k, n = a3.shape[1], a3.shape[2], b3.shape[2]
    rowbad = cupy.ascontiguousarray(cupy.broadcast_to(~cupy.isfinite(amax), (batches, m, 1)))
    colbad = cupy.ascontiguousarray(cupy.broadcast_to(~cupy.isfinite(bmax), (batches, 1, n)))
    sa = [s // 4 for s in a3.strides]
    sb = [s // 4 for s in b3.strides]
    total = batches * m * n
    if total:
        with translating("exact GEMM special values", a, b):
            _guard(out.dtype)((min((total + 255) // 256, 65536),), (256,),
                              (a3, b3, rowbad, colbad, out, np.int64(batches), np.int64(m), np.int64(n),
                               np.int64(k), *(np.int64(s) for s in sa), *(np.int64(s) for s in sb)))


@lru_cache(maxsize=None)
def _sum_kernels():
    absmax = cupy.ReductionKernel(
        "float32 x", "float32 y", "isfinite(x) ? fabsf(x) : 0.0f", "max(a, b)", "y = a", "0.0f",
        "loom_exact_absmax", options=OPTIONS)
    integers = cupy.ReductionKernel(
        "float32 x, int32 shift", "float64 y", "isfinite(x) ? rint(ldexp((double)x, shift)) : 0.0",
        "a + b", "y = a", "0.0", "loom_exact_integer_sum", options=OPTIONS)
    specials = cupy.ReductionKernel(
        "float32 x", "float64 y", "isfinite(x) ? 0.0 : (double)x", "a + b", "y = a", "0.0",
        "loom_exact_special_sum", options=OPTIONS)
    finish = cupy.ElementwiseKernel(
        "float64 total, int32 e, float64 special", "float32 out",
        "out = special == 0.0 ? __double2float_rn(ldexp(total, e)) : (float)special;",
        "loom_exact_sum_finish", options=OPTIONS)
    return absmax, integers, specials, finish


def sum_float32(x, axes: tuple, bits: int):
    """exact.sum for float32 x over `axes` (kept as size-1 axes), in four launches: the finite
    maximum, the integer sum (every partial sum an integer below 2^53: exact in any order), the sum
    of infinities and NaNs (the same in any order), and the scaling back: the NumPy path's bits.
    Few long sums (a convolution's bias gradient: 32 sums of 200k) are split into parts first: CuPy
    gives each output one block, and exactness makes any grouping give the same bits."""
    absmax, integers, specials, finish = _sum_kernels()
    with translating("exact sum", x):
        n = math.prod(x.shape[a] for a in axes)
        m = x.size // n
        if m >= _SPREAD or n < 4096:
            top = absmax(x, axis=axes, keepdims=True)
            e = cupy.frexp(top)[1]
            total = integers(x, (bits - e).astype(np.int32), axis=axes, keepdims=True)
            special = specials(x, axis=axes, keepdims=True)
            return finish(total, (e - bits).astype(np.int32), special)
        parts = _split(x, axes, m, n)                                   # [m, c, L]
        top = absmax(absmax(parts, axis=2), axis=1, keepdims=True)      # [m, 1]
        e = cupy.frexp(top)[1]
        total = integers(parts, (bits - e).astype(np.int32)[:, :, None], axis=2).sum(axis=1, keepdims=True)
        special = specials(parts, axis=2).sum(axis=1, keepdims=True)
        out = finish(total, (e - bits).astype(np.int32), special)
        return out.reshape(tuple(1 if i in axes else d for i, d in enumerate(x.shape)))


_SPREAD = 1024      # outputs (or parts of them) that keep the device busy


def _parts(outputs: int, n: int) -> tuple[int, int | None]:
    """(c, d): each of `outputs` reductions of n values wants c parts (outputs * c >= _SPREAD), and d
    is a divisor of n in [c, 2c) to split by without padding (None when there is none)."""
    c = -(-_SPREAD // max(outputs, 1))
    return c, next((d for d in range(c, 2 * c) if n % d == 0), None)


@lru_cache(maxsize=None)
def _absmax_kernel():
    return cupy.ReductionKernel(
        "T x", "T y", "abs(x)", "(isnan(a) || a > b) ? a : b", "y = a", "0",
        "loom_exact_absmax_nan", options=OPTIONS)


def absmax(x, axis: int):
    """max |x| along `axis` (-1 or -2), kept as size 1; NaN where a NaN is: exact._absmax's result in
    one reduction (two there). Few outputs over a long axis are reduced in parts first (a maximum
    is the same in any grouping): CuPy gives each output one block."""
    with translating("exact GEMM scaling", x):
        ax = axis % x.ndim
        k = x.shape[ax]
        parts, split = _parts(x.size // k if k else 0, k)
        if parts == 1 or k < 4 * parts or split is None:
            return _absmax_kernel()(x, axis=ax, keepdims=True)
        view = x.reshape(x.shape[:ax] + (split, k // split) + x.shape[ax + 1:])
        return _absmax_kernel()(_absmax_kernel()(view, axis=ax + 1), axis=ax, keepdims=True)


def _split(x, axes, m: int, n: int):
    """x with the reduced axes last, as [m, c, L]: each output's n values in c parts of L (zero
    padded: zeros change neither the maximum nor the sums), m * c >= _SPREAD."""
    kept = [i for i in range(x.ndim) if i not in axes]
    flat = x.transpose(kept + list(axes)).reshape(m, n)                 # a copy unless already in order
    c, divisor = _parts(m, n)
    if divisor is not None:
        return flat.reshape(m, divisor, n // divisor)
    length = -(-n // c)
    padded = cupy.zeros((m, c * length), dtype=x.dtype)
    padded[:, :n] = flat
    return padded.reshape(m, c, length)
