"""The slice scheme of deterministic mode's exact GEMM on the GPU (loom/kernels/exact/__init__.py,
`_matmul_narrow` and its chunks along K), with the special-value guard its products share.

The NumPy path slices the operands and recombines the product in about fifteen separate passes; on
the GPU each is a kernel over the whole operand, and together they cost far more than the float64
GEMM itself. These three kernels do the same arithmetic in one pass each, working the power-of-two scales
out from the row and column maxima themselves (the NumPy path's frexp, subtractions and int32 casts
were five launches per operand). Every step is exact (scaling by a power of two, rint, the
subtraction of a number's own integer part) except the one rounding in the recombination and the final
conversion, which are written with explicitly rounded intrinsics in the reference's order: the bits
are the NumPy path's (tests/gpu/test_deterministic_bits.py).

Large products (exact_int8.takes) find the same integers on int8 tensor cores instead. Chunked
products (K > 2^14) slice the whole K at once and multiply it in pieces (matmul_narrow_chunks).

The guard (`_GUARD`: patch_specials, and loom_exact_combine_guarded for small products) writes IEEE's
special values where a row or column holds inf or NaN; exact_rounded.py compiles its device
functions into the rounded scheme's kernels too, and takes `_batched`, `_elements` and
`_product_strides` from here for its own launches.
Capturable: no synchronization, scalars as arguments.
"""
from __future__ import annotations

import math
from functools import cache
from typing import TYPE_CHECKING

import cupy
import numpy as np
from numpy.typing import DTypeLike

from .. import Array
from . import exact_int8
from .compile import OPTIONS, translating
from .exact_reduce import TOP_EXPONENT
from .fused import C_TYPES

if TYPE_CHECKING:
    from . import CUDABackend


# Products up to this many entries recombine and guard in one launch (they are launch-bound: the MLP
# at batch 32 went from 67 to 62 launches per step, 0.112 to 0.107 ms); larger ones use two kernels,
# since the guard's loop costs the fused kernel registers: 6.8 ms against 5.1 + 0.3 ms over the
# encoder benchmark's products on the H200.
_GUARD_INSIDE_MAX = 1 << 18


@cache
def _kernels():
    # each scale is 2^(e - bits) for its row's or column's maximum below 2^e
    left = cupy.ElementwiseKernel(
        "float32 a, float32 top, int32 bits, float64 up", "float64 hi, float64 lo",
        """const float s = ldexpf(a, bits - loom_top_exponent(top));   // |s| < 2^bits, exact
           const float h = rintf(s);
           hi = (double)h;
           lo = rint(__dmul_rn(__dsub_rn((double)s, (double)h), up));   // remainder, scaled: exact""",
        "loom_exact_slice_left", preamble=TOP_EXPONENT, options=OPTIONS)
    right = cupy.ElementwiseKernel(
        "float32 b, float32 top, int32 bits", "float64 q",
        "q = (double)rintf(ldexpf(b, bits - loom_top_exponent(top)));",
        "loom_exact_slice_right", preamble=TOP_EXPONENT, options=OPTIONS)
    combine = cupy.ElementwiseKernel(
        "float64 ghi, float64 glo, float64 down, float32 atop, float32 btop, int32 abits, int32 bbits",
        "T out",
        """double acc = __dadd_rn(__dmul_rn(glo, down), ghi);   // the one rounding, as the reference
           acc = __dmul_rn(acc, ldexp(1.0, loom_top_exponent(atop) - abits));
           out = (T)__dmul_rn(acc, ldexp(1.0, loom_top_exponent(btop) - bbits));""",
        "loom_exact_combine", preamble=TOP_EXPONENT, options=OPTIONS)
    return left, right, combine


@cache
def _combine_chunks():
    # g C-ordered [batches, pieces, 2m, n] (hi rows, then lo rows): each chunk's exact integer
    # product is the sum of its `per` pieces' (the last chunk's may be fewer), exact in float64 as
    # every partial sum of the chunk's terms is an integer below 2^53; then loom_exact_combine for
    # each chunk, the chunks' float64 values added in chunk order, and one conversion to T
    return cupy.ElementwiseKernel(
        "raw float64 g, float64 down, float32 atop, float32 btop, int32 abits, int32 bbits, int64 pieces, "
        "int64 per, int64 m, int64 n", "T out",
        """const long long mn = m * n, z = i / mn;
           const double* gz = &g[0] + z * pieces * 2 * mn + (i - z * mn);
           const double rs = ldexp(1.0, loom_top_exponent(atop) - abits);
           const double cs = ldexp(1.0, loom_top_exponent(btop) - bbits);
           double total = 0.0;
           for (long long first = 0; first < pieces; first += per) {
               double hi = 0.0, lo = 0.0;
               for (long long p = first; p < min(first + per, pieces); ++p) {
                   hi = __dadd_rn(hi, gz[p * 2 * mn]);
                   lo = __dadd_rn(lo, gz[p * 2 * mn + mn]);
               }
               const double part = __dmul_rn(__dmul_rn(__dadd_rn(__dmul_rn(lo, down), hi), rs), cs);
               total = first == 0 ? part : __dadd_rn(total, part);
           }
           out = (T)total;""",
        "loom_exact_combine_chunks", preamble=TOP_EXPONENT, options=OPTIONS)


def matmul_narrow(be: CUDABackend, a: Array, b: Array, amax: Array, bmax: Array, bits: tuple, dtype: DTypeLike,
                  guard: bool = False) -> Array:
    """exact._matmul_narrow for float32 a and b given their row and column maxima (bits = (bits_a,
    bits_b)): both slices of a in one pass (stacked along M, so one float64 GEMM takes them), b's
    in one, the product's recombination in one. With `guard` (operands `guardable`), the
    recombination also writes IEEE's special values where a row or column holds inf or NaN, as
    patch_specials would in a launch of its own."""
    bits_a, bits_b = bits
    amax, bmax = amax.astype(np.float32, copy=False), bmax.astype(np.float32, copy=False)
    if exact_int8.takes(a, b, bits):      # large products: the same bits on int8 tensor cores
        out = exact_int8.matmul_narrow(be, a, b, amax, bmax, bits, dtype)
        if guard:
            patch_specials(a, b, amax, bmax, out)
        return out
    left, right, combine = _kernels()
    m = a.shape[-2]
    with translating("exact GEMM slicing", a, b):
        stacked = cupy.empty(a.shape[:-2] + (2 * m, a.shape[-1]), dtype=np.float64)
        left(a, amax, np.int32(bits_a), np.float64(2.0 ** bits_a), stacked[..., :m, :], stacked[..., m:, :])
        # a matrix keeps b's layout (cuBLAS takes a transposed one as it is); a stack of them is made
        # C-ordered, which CuPy's batched GEMM would otherwise copy to
        q = cupy.empty_like(b, dtype=np.float64, order="K" if b.ndim == 2 else "C")
        right(b, bmax, np.int32(bits_b), q)
    g = be.matmul(stacked, q)
    with translating("exact GEMM recombination", g):
        out = cupy.empty(g.shape[:-2] + (m, g.shape[-1]), dtype=dtype)
        if guard and out.size <= _GUARD_INSIDE_MAX and g.flags.c_contiguous and \
                _combine_guarded(g, a, b, amax, bmax, bits, out):
            return out
        combine(g[..., :m, :], g[..., m:, :], np.float64(2.0 ** -bits_a), amax, bmax,
                np.int32(bits_a), np.int32(bits_b), out)
        if guard:
            patch_specials(a, b, amax, bmax, out)
        return out


def slice_parts(be: CUDABackend, a: Array, b: Array, amax: Array, bmax: Array, bits: tuple) -> Array:
    """The slice scheme's integers, int64 [..., 2M, N] (g_hi's rows, then g_lo's), for a split
    reduction (loom/kernels/exact/over_batch.py): matmul_narrow's slicing kernels, a float64 GEMM
    per piece of at most 2^14 along K (exact), the pieces added in int64."""
    bits_a, bits_b = bits
    amax, bmax = amax.astype(np.float32, copy=False), bmax.astype(np.float32, copy=False)
    left, right, _ = _kernels()
    m, k = a.shape[-2], a.shape[-1]
    with translating("exact GEMM slicing", a, b):
        stacked = cupy.empty(a.shape[:-2] + (2 * m, k), dtype=np.float64)
        left(a, amax, np.int32(bits_a), np.float64(2.0 ** bits_a), stacked[..., :m, :], stacked[..., m:, :])
        q = cupy.empty_like(b, dtype=np.float64, order="K" if b.ndim == 2 else "C")
        right(b, bmax, np.int32(bits_b), q)
    step = 1 << 14
    if k <= step:
        return be.matmul(stacked, q).astype(np.int64)
    parts = None
    for first in range(0, k, step):
        g = be.matmul(cupy.ascontiguousarray(stacked[..., first:first + step]), q[..., first:first + step, :])
        parts = g.astype(np.int64) if parts is None else parts + g.astype(np.int64)
    return parts


def combine_parts(parts: Array, amax: Array, bmax: Array, bits: tuple, dtype: DTypeLike) -> Array:
    """matmul_narrow's recombination of int64 parts (each converted to float64 first: exact below
    2^53), rounded to dtype."""
    bits_a, bits_b = bits
    _, _, combine = _kernels()
    m = parts.shape[-2] // 2
    with translating("exact GEMM recombination", parts):
        out = cupy.empty(parts.shape[:-2] + (m, parts.shape[-1]), dtype=dtype)
        combine(parts[..., :m, :].astype(np.float64), parts[..., m:, :].astype(np.float64), np.float64(2.0 ** -bits_a),
                amax.astype(np.float32, copy=False), bmax.astype(np.float32, copy=False), np.int32(bits_a),
                np.int32(bits_b), out)
    return out


# Chunked slice products are multiplied in pieces of at least this many products, as many as keep
# the pieces' float64 results within _CHUNK_PIECE_ENTRIES (256 MiB). The convnet's step on the H100
# with pieces of 512 / 1024 / 2048 / 4096 / 16384 (a whole chunk): 1.57 / 1.52 / 1.49 / 1.50 /
# 1.73 ms. Whole chunks give a small weight gradient one or two thread blocks per chunk; small
# pieces lengthen the combining kernel's loop, a thread per entry.
_CHUNK_PIECE = 2048
_CHUNK_PIECE_ENTRIES = 1 << 25
# Slices of the whole K, and the pieces' results, for all chunks at once take up to this much memory
# (with room for cuBLAS's copies of stacked operands); larger products loop over the chunks.
_CHUNKS_AT_ONCE_BYTES = 1 << 30


def _chunk_plan(m: int, k: int, n: int, batch: int, step: int, stacked: bool):
    """(piece, pieces) for matmul_narrow_chunks, or None where it would need more than
    _CHUNKS_AT_ONCE_BYTES."""
    outputs = 2 * m * n * batch
    piece = step
    while piece > _CHUNK_PIECE and -(-k // (piece // 2)) * outputs <= _CHUNK_PIECE_ENTRIES:
        piece //= 2
    pieces = -(-k // piece)
    slices = (2 * m + n) * pieces * piece * batch * (2 if stacked else 1)
    return (piece, pieces) if 8 * (slices + pieces * outputs) <= _CHUNKS_AT_ONCE_BYTES else None


def matmul_narrow_chunks(be: CUDABackend, a: Array, b: Array, amax: Array, bmax: Array, bits: tuple, dtype: DTypeLike,
                         step: int) -> Array | None:
    """exact._matmul_float32's chunks of `step` along K (K > step) in one go, with the same bits: the
    slices of the whole operands (a slice depends on its element and its row's or column's maximum
    only, not on its chunk), padded with zeros to whole pieces (zero products add exact zeros), one
    batched float64 GEMM over the pieces, and one kernel that sums each chunk's pieces (exactly),
    recombines each chunk to float64, adds the chunks in order and converts once. The loop over
    chunks launched five to six kernels per chunk (the convnet's weight gradients at K = 200704
    have 13 chunks). a and b are both matrices or both stacks (exact.py folds a stack against a
    matrix). None where that needs too much memory (_chunk_plan): the caller loops."""
    m, k, n = a.shape[-2], a.shape[-1], b.shape[-1]
    plan = _chunk_plan(m, k, n, math.prod(np.broadcast_shapes(a.shape[:-2], b.shape[:-2])), step, a.ndim > 2)
    if plan is None:
        return None
    piece, pieces = plan
    bits_a, bits_b = bits
    amax, bmax = amax.astype(np.float32, copy=False), bmax.astype(np.float32, copy=False)
    left, right, _ = _kernels()
    padded = pieces * piece
    with translating("exact GEMM slicing", a, b):
        stacked = cupy.empty(a.shape[:-2] + (2 * m, padded), dtype=np.float64)
        left(a, amax, np.int32(bits_a), np.float64(2.0 ** bits_a), stacked[..., :m, :k], stacked[..., m:, :k])
        q = cupy.empty(b.shape[:-2] + (padded, n), dtype=np.float64)
        right(b, bmax, np.int32(bits_b), q[..., :k, :])
        if padded > k:
            stacked[..., k:].fill(0)
            q[..., k:, :].fill(0)
    g = be.matmul(cupy.moveaxis(stacked.reshape(stacked.shape[:-1] + (pieces, piece)), -2, -3),
                  q.reshape(q.shape[:-2] + (pieces, piece, n)))
    with translating("exact GEMM recombination", g):
        out = cupy.empty(g.shape[:-3] + (m, n), dtype=dtype)
        _combine_chunks()(g, np.float64(2.0 ** -bits_a), amax, bmax, np.int32(bits_a), np.int32(bits_b),
                          np.int64(pieces), np.int64(step // piece), np.int64(m), np.int64(n), out)
    return out


_GUARD = r"""
__device__ __forceinline__ float loom_mark(float x) {     // sign, 0, or the special value itself
    return isfinite(x) ? (x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : 0.0f)) : x;
}
// The sign-and-special product of a row of a and a column of b: finite terms are +-1 or 0, so only a
// non-finite outcome is used (and a row or column holding inf or NaN always has one).
__device__ __forceinline__ float loom_special_sum(const float* ar, const float* bc, long long sak, long long sbk,
                                                  long long k) {
    float s = 0.0f;
    for (long long q = 0; q < k; ++q)
        s = __fadd_rn(s, __fmul_rn(loom_mark(ar[q * sak]), loom_mark(bc[q * sbk])));
    return s;
}
__device__ __forceinline__ void loom_special_entry(
        const float* ar, const float* bc, long long sak, long long sbk, long long k, T* out) {
    const float s = loom_special_sum(ar, bc, sak, sbk, k);
    if (!isfinite(s)) *out = (T)s;
}

// loom_exact_combine over a C-ordered product g [batches, 2m, n] (hi rows, then lo rows), with the
// entries of rows and columns whose maximum is not finite replaced by their special values. Indices
// are 32-bit (the caller checks the sizes): 64-bit divisions per entry made it 1.3x slower still.
extern "C" __global__ void loom_exact_combine_guarded(
        const double* g, const float* a, const float* b, const float* rowmax, const float* colmax, T* out,
        double down, int abits, int bbits, unsigned inner, unsigned total, unsigned m, unsigned n,
        long long k, long long sa1, long long sa2, long long sam, long long sak,
        long long sb1, long long sb2, long long sbk, long long sbn,
        long long sr1, long long sr2, long long srm, long long sc1, long long sc2, long long scn) {
    const unsigned mn = m * n;
    for (unsigned idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += gridDim.x * blockDim.x) {
        const unsigned z = idx / mn, rest = idx - z * mn, i = rest / n, j = rest - i * n;
        const unsigned z1 = z / inner, z2 = z - z1 * inner;
        const float atop = rowmax[z1 * sr1 + z2 * sr2 + i * srm], btop = colmax[z1 * sc1 + z2 * sc2 + j * scn];
        const double* hi = g + (2ull * z * m + i) * n + j;
        double acc = __dadd_rn(__dmul_rn(hi[(unsigned long long)m * n], down), *hi);   // the one rounding
        acc = __dmul_rn(acc, ldexp(1.0, loom_top_exponent(atop) - abits));
        T v = (T)__dmul_rn(acc, ldexp(1.0, loom_top_exponent(btop) - bbits));
        if (!isfinite(atop) || !isfinite(btop)) {
            const float s = loom_special_sum(a + z1 * sa1 + z2 * sa2 + i * sam, b + z1 * sb1 + z2 * sb2 + j * sbn,
                                             sak, sbk, k);
            if (!isfinite(s)) v = (T)s;
        }
        out[idx] = v;
    }
}

extern "C" __global__ void loom_exact_specials(
        const float* a, const float* b, const float* rowmax, const float* colmax, T* out,
        long long inner, long long batches, long long m, long long n, long long k,
        long long sa1, long long sa2, long long sam, long long sak,
        long long sb1, long long sb2, long long sbk, long long sbn) {
    // One thread per row of a and per column of b (batch z = z1 * inner + z2 over two batch axes,
    // attention's [batch, heads]); only a row or column whose maximum is not finite computes its
    // line of out. An entry in a bad row and a bad column is written twice with the same bits.
    long long lines = batches * (m + n);
    for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < lines;
         idx += (long long)gridDim.x * blockDim.x) {
        long long z = idx / (m + n), line = idx % (m + n);
        const float* az = a + (z / inner) * sa1 + (z % inner) * sa2;
        const float* bz = b + (z / inner) * sb1 + (z % inner) * sb2;
        T* oz = out + z * m * n;
        if (line < m) {
            if (isfinite(rowmax[z * m + line])) continue;
            for (long long j = 0; j < n; ++j)
                loom_special_entry(az + line * sam, bz + j * sbn, sak, sbk, k, oz + line * n + j);
        } else {
            long long j = line - m;
            if (isfinite(colmax[z * n + j])) continue;
            for (long long i = 0; i < m; ++i)
                loom_special_entry(az + i * sam, bz + j * sbn, sak, sbk, k, oz + i * n + j);
        }
    }
}
"""


@cache
def _guard_module(dtype):
    return cupy.RawModule(code=f"typedef {C_TYPES[np.dtype(dtype)]} T;\n" + TOP_EXPONENT + _GUARD, options=OPTIONS)


def _guard(dtype):
    return _guard_module(np.dtype(dtype)).get_function("loom_exact_specials")


def _elements(x4) -> tuple:
    return tuple(np.int64(s // x4.itemsize) for s in x4.strides)


def _product_strides(a4: tuple, b4: tuple, rows4: tuple | None = None, cols4: tuple | None = None) -> tuple:
    """The element strides a product kernel takes, in its argument order, from the four-axis element
    strides ([outer, inner, rows, columns], as _batched's views have them) of a, of b and, where
    given, of the rows' and the columns' maxima or norms: all of a's and b's, the rows' first three
    (their last axis has length one) and the columns' all but the third (their row axis has length
    one). The values as given (_elements gives np.int64 already; no conversion on the launch path)."""
    return (*a4, *b4) if rows4 is None else (*a4, *b4, *rows4[:3], *cols4[:2], *cols4[3:])


def guardable(a: Array, b: Array) -> bool:
    """Whether patch_specials takes these operands: float32 matrices or stacks of them (batch axes
    broadcast, as a dense layer's [batch, tokens, features] input against its 2-D weight)."""
    return a.dtype == np.float32 and b.dtype == np.float32 and a.ndim >= 2 and b.ndim >= 2


def _batched(x, batch: tuple):
    """x broadcast over the product's batch axes, as exactly two of them (a copy only where more than
    two batch axes do not merge in memory)."""
    x = cupy.broadcast_to(x, batch + x.shape[-2:])
    if len(batch) > 2:
        x = x.reshape((-1, batch[-1]) + x.shape[-2:])
    return x if x.ndim == 4 else x[None]


def patch_specials(a: Array, b: Array, amax: Array, bmax: Array, out: Array) -> None:
    """Where a row of a or a column of b holds inf or NaN (its maximum is not finite), overwrite out
    with IEEE's special result (the sign-and-special product, as exact._special_values); every other
    line returns at once, so this costs one look at each maximum when everything is finite, and needs
    no host read. Operands as `guardable` says; out is the C-contiguous product."""
    if not guardable(a, b) or out.ndim != max(a.ndim, b.ndim) or not out.flags.c_contiguous:
        raise ValueError(f"patch_specials: operands {a.dtype}{a.shape} x {b.dtype}{b.shape} into "
                         f"{out.dtype}{out.shape} are not guardable")
    batch = out.shape[:-2] or (1,)
    a4, b4 = _batched(a, batch), _batched(b, batch)
    outer, inner, m, k = a4.shape
    n = b4.shape[3]
    rowmax = cupy.ascontiguousarray(cupy.broadcast_to(amax.astype(np.float32, copy=False), batch + (m, 1)))
    colmax = cupy.ascontiguousarray(cupy.broadcast_to(bmax.astype(np.float32, copy=False), batch + (1, n)))
    lines = outer * inner * (m + n)
    if lines and k:
        with translating("exact GEMM special values", a, b):
            _guard(out.dtype)((min((lines + 255) // 256, 65536),), (256,),
                              (a4, b4, rowmax, colmax, out, *(np.int64(v) for v in (inner, outer * inner, m, n, k)),
                               *_product_strides(_elements(a4), _elements(b4))))


def _combine_guarded(g, a, b, amax, bmax, bits: tuple, out) -> bool:
    """loom_exact_combine_guarded into out (C-ordered, g's batch shape) from the C-ordered product g;
    False (nothing done) where its 32-bit indices would overflow."""
    batch = out.shape[:-2] or (1,)
    a4, b4 = _batched(a, batch), _batched(b, batch)
    r4, c4 = _batched(amax, batch), _batched(bmax, batch)
    outer, inner, m, k = a4.shape
    n = b4.shape[3]
    total = outer * inner * m * n
    if total >= 1 << 31:
        return False
    if total:
        _guard_module(np.dtype(out.dtype)).get_function("loom_exact_combine_guarded")(
            (min(-(-total // 256), 1 << 16),), (256,),
            (g, a4, b4, r4, c4, out, np.float64(2.0 ** -bits[0]), np.int32(bits[0]), np.int32(bits[1]),
             np.uint32(inner), np.uint32(total), np.uint32(m), np.uint32(n), np.int64(k),
             *_product_strides(_elements(a4), _elements(b4), _elements(r4), _elements(c4))))
    return True

