"""Exact reductions on the GPU for deterministic mode: the largest magnitude along an axis (the scale of
a GEMM operand's rows or columns, or of a sum) and exact float32 sums, one pass over the data each.

Each reduction is split over as many warps as keep the device busy, and the parts are combined with
atomics whose order cannot change a bit:
- a maximum of magnitudes is an integer maximum of bit patterns with the sign cleared (IEEE orders
  non-negative floats as their patterns, and every NaN's pattern lies above infinity's, so a NaN
  anywhere gives a NaN, as the NumPy path's maximum does);
- a sum adds integers below 2^53 in float64 (exact.sum's slices), so every partial sum, in any order,
  is exact; infinities and NaNs are summed apart and win in the end, as in exact._sum_general.
CuPy's reductions give each output one block and read a column reduction with a stride: slower
than these kernels for the encoder benchmark's 408 GEMM maxima per step. The exponent
arithmetic between the passes was five more launches (frexp, subtraction, int32 copies) per operand.

Capturable: no synchronization; buffers are zeroed with memsets.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from functools import cache, lru_cache

import cupy
import numpy as np

from .. import Array
from .compile import OPTIONS, translating
from .fused import BASICS, C_TYPES, MAX_GRID, ROW_HELPERS, row_threads

# The exponent of a scale: m < 2^e as NumPy's frexp gives it (0 for zero, and for inf and NaN, whose
# rows are overwritten with their special values later anyway).
TOP_EXPONENT = r"""
__device__ __forceinline__ int loom_top_exponent(float m) {
    int e = 0;
    if (isfinite(m) && m != 0.0f) frexpf(m, &e);
    return e;
}
"""

# exact.sum of one row by one block (after fused' ROW_HELPERS): the finite maximum, then
# the integers and the specials, each combined over the block; no atomics, no zeroed buffers.
# A row of at most LOOM_HELD values per thread is read once into registers and combined with two
# barriers (one for the maximum and whether any value is inf or NaN, one for the integers); a longer
# one is read twice, with a barrier per block_reduce. Both give the same bits: the integers' sum is
# exact in any order.
EXACT_ROW_SUM = TOP_EXPONENT + r"""
struct Scratch { unsigned patterns[32]; unsigned flags[32]; double sums[32]; };
#define LOOM_HELD 8

// exact.sum of the values v[i] held by every thread of the block (ACROSS; entry threadIdx.x + i blockDim.x of
// the row, 0 past its end) or by the 32 lanes of one warp alone (no barrier, no shared memory: s unused),
// rounded once to float (bits = 53 - ceil(log2 n)). Each barrier separates a write of an array of `s` from the
// previous call's reads of it.
template <bool ACROSS, int R> __device__ __forceinline__ float exact_sum_regs(const float (&v)[R], int bits, Scratch* s) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = ACROSS ? blockDim.x >> 5 : 1;
    unsigned top = 0, special = 0;    // the finite maximum of |v| as a pattern: they order alike
    #pragma unroll
    for (int i = 0; i < R; ++i) {
        const unsigned k = __float_as_uint(v[i]) & 0x7fffffffu;
        if (k < 0x7f800000u) top = max(top, k);
        else special = 1u;
    }
    // (a block's: by redux.sync, x's own launch at many rows; a warp's alone, the one-row products' staging: shuffles)
    top = ACROSS ? warp_max_redux(top) : warp_reduce(top, MaxOp());
    special = ACROSS ? warp_max_redux(special) : warp_reduce(special, MaxOp());
    if (nwarps > 1) {
        if (lane == 0) { s->patterns[warp] = top; s->flags[warp] = special; }
        __syncthreads();
        top = warp_max_redux(lane < nwarps ? s->patterns[lane] : 0u);
        special = warp_max_redux(lane < nwarps ? s->flags[lane] : 0u);
    }
    if (special) {                    // inf and NaN only: any order, same sum
        double specials = 0.0;
        #pragma unroll
        for (int i = 0; i < R; ++i) if (!isfinite(v[i])) specials += (double)v[i];
        return (float)(ACROSS ? block_reduce(specials, s->sums, 0.0, AddOp()) : warp_reduce(specials, AddOp()));
    }
    const int shift = bits - loom_top_exponent(__uint_as_float(top));
    // 2^shift: |shift| < 300, so v 2^shift is exact, ldexp's value
    const double scale = __longlong_as_double((long long)(1023 + shift) << 52);
    // integers below 2^53: exact in any order, so summed as a tree (a chain of R dependent additions before)
    double part[R];
    #pragma unroll
    for (int i = 0; i < R; ++i) part[i] = rint(__dmul_rn((double)v[i], scale));
    // (through int64: a zero sum is +0.0, as the float64 sum from +0.0 was)
    double total = (double)warp_sum_i64((long long)tree_reduce(part, AddOp()));
    if (nwarps > 1) {
        if (lane == 0) s->sums[warp] = total;
        __syncthreads();
        total = (double)warp_sum_i64(lane < nwarps ? (long long)s->sums[lane] : 0LL);
    }
    return __double2float_rn(__dmul_rn(total, __longlong_as_double((long long)(1023 - shift) << 52)));   // (ldexp's)
}
template <int R> __device__ float exact_sum_held(const float (&v)[R], int bits, Scratch& s) {
    return exact_sum_regs<true>(v, bits, &s);
}
template <int R> __device__ __forceinline__ float exact_sum_warp(const float (&v)[R], int bits) {
    return exact_sum_regs<false>(v, bits, (Scratch*)0);
}

// exact.sum of value(j) for j < n, rounded once to float (bits = 53 - ceil(log2 n)), in two passes (the finite
// maximum's exponent, then the integers), this thread taking j = first, first + step, ...: by the whole block
// (ACROSS) or by the 32 lanes of one warp alone (no barrier, no shared memory: s unused)
template <bool ACROSS, class F> __device__ float exact_row_sum_passes(F value, long long n, int bits, Scratch* s) {
    const unsigned first = ACROSS ? threadIdx.x : threadIdx.x & 31, step = ACROSS ? blockDim.x : 32;
    unsigned top = 0;
    double specials = 0.0;
    for (long long j = first; j < n; j += step) {
        const float v = value(j);
        const unsigned k = __float_as_uint(v) & 0x7fffffffu;
        if (k < 0x7f800000u) top = max(top, k);
        else specials += (double)v;
    }
    if (ACROSS) {
        top = block_reduce(top, s->patterns, 0u, MaxOp());
        specials = block_reduce(specials, s->sums, 0.0, AddOp());
    } else {
        top = warp_reduce(top, MaxOp());
        specials = warp_reduce(specials, AddOp());
    }
    const int shift = bits - loom_top_exponent(__uint_as_float(top));
    double total = 0.0;
    for (long long j = first; j < n; j += step) {
        const float v = value(j);
        if (isfinite(v)) total += rint(ldexp((double)v, shift));
    }
    total = ACROSS ? block_reduce(total, s->sums, 0.0, AddOp()) : warp_reduce(total, AddOp());
    return specials == 0.0 ? __double2float_rn(ldexp(total, -shift)) : (float)specials;
}

// exact.sum of value(j) for j < n by the block, rounded once to float (bits = 53 - ceil(log2 n)).
template <class F> __device__ float exact_row_sum(F value, long long n, int bits, Scratch& s) {
    if (n <= LOOM_HELD * (long long)blockDim.x) {
        float v[LOOM_HELD];
        #pragma unroll
        for (int i = 0; i < LOOM_HELD; ++i) {
            const long long j = threadIdx.x + (long long)i * blockDim.x;
            v[i] = j < n ? value(j) : 0.0f;
        }
        return exact_sum_held(v, bits, s);
    }
    return exact_row_sum_passes<true>(value, n, bits, &s);
}

// The same by the 32 lanes of one warp (every lane calls; the same bits: the integers' sum is exact in any order).
template <class F> __device__ float exact_warp_row_sum(F value, long long n, int bits) {
    return exact_row_sum_passes<false>(value, n, bits, (Scratch*)0);
}

"""

# Small sums (a bias gradient at batch 32, a loss): one block per output, one launch in all.
_BLOCKS = r"""
extern "C" __global__ void loom_exact_sum_blocks(const float* x, float* out, int bits, long long outputs,
                                                 long long length, long long kept, long long sb, long long sk,
                                                 long long sr) {
    __shared__ Scratch s;
    for (long long o = blockIdx.x; o < outputs; o += gridDim.x) {
        const float* p = x + (o / kept) * sb + (o % kept) * sk;
        const float total = exact_row_sum([&](long long r) { return p[r * sr]; }, length, bits, s);
        if (threadIdx.x == 0) out[o] = total;
    }
}
"""

_REDUCE = TOP_EXPONENT + r"""
// A reduction as outputs x length: output o = z * kept + i reads x[z * sb + i * sk + r * sr] for r < length.
// "along": one warp per (output, chunk of r), lanes on consecutive r (sr == 1 reads coalesced);
// "across": 32 consecutive outputs per block (sk == 1 reads coalesced), 8 rows of r at a time.
// The reduction R says what is accumulated: R::Acc, R::zero(), begin(o) (per-output set-up),
// take(acc, x, at) (at: x's element offset), R::merge(a, b), R::shuffle(acc, offset), and publish(o,
// acc), which adds a part to the output with an atomic.
#define LOOM_GEOMETRY long long outputs, long long length, long long kept, long long sb, long long sk, long long sr

template <class R> __device__ __forceinline__ void loom_along(
        R red, const T* x, LOOM_GEOMETRY, long long splits, long long chunk) {
    long long task = (blockIdx.x * (long long)blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (task >= outputs * splits) return;           // whole warps leave together
    long long o = task / splits, start = (task % splits) * chunk;
    long long end = min(start + chunk, length);
    const long long at = (o / kept) * sb + (o % kept) * sk;
    red.begin(o);
    typename R::Acc acc = R::zero();
    for (long long r = start + lane; r < end; r += 32) acc = red.take(acc, x[at + r * sr], at + r * sr);
    for (int off = 16; off; off >>= 1) acc = R::merge(acc, R::shuffle(acc, off));
    if (lane == 0) red.publish(o, acc);
}

template <class R> __device__ __forceinline__ void loom_across(R red, const T* x, LOOM_GEOMETRY, long long chunk) {
    __shared__ typename R::Acc parts[8][32];
    long long o = blockIdx.x * 32LL + threadIdx.x;
    long long start = blockIdx.y * chunk, end = min(start + chunk, length);
    typename R::Acc acc = R::zero();
    if (o < outputs) {
        const long long at = (o / kept) * sb + (o % kept) * sk;
        red.begin(o);
        #pragma unroll 4
        for (long long r = start + threadIdx.y; r < end; r += 8) acc = red.take(acc, x[at + r * sr], at + r * sr);
    }
    parts[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && o < outputs) {
        for (int j = 1; j < 8; ++j) acc = R::merge(acc, parts[j][threadIdx.x]);
        red.publish(o, acc);
    }
}

// max |x| as a pattern (0 for inf and NaN when finite_only) into zeroed patterns out[outputs]
struct LoomMax {
    typedef U Acc;
    U* out;
    int finite_only;
    __device__ void begin(long long) {}
    __device__ static U zero() { return 0; }
    __device__ U take(U acc, T x, long long) const {
        U k = loom_bits(x) & MAGNITUDE;
        return max(acc, (finite_only && k >= INFINITY_BITS) ? (U)0 : k);
    }
    __device__ static U merge(U a, U b) { return max(a, b); }
    __device__ static U shuffle(U a, int off) { return __shfl_xor_sync(0xffffffffu, a, off); }
    __device__ void publish(long long o, U acc) const { if (acc) atomicMax(out + o, acc); }
};

// exact.sum's integers rint(x 2^(bits - e)), e the exponent of the output's finite maximum top[o],
// and apart the sum of its infinities and NaNs, into zeroed float64 total[outputs], specials[outputs]
struct LoomSumAcc { double integers, specials; };
struct LoomSum {
    typedef LoomSumAcc Acc;
    const float* top;
    double* total;
    double* specials;
    int bits, shift;
    __device__ void begin(long long o) { shift = bits - loom_top_exponent(top[o]); }
    __device__ static Acc zero() { return {0.0, 0.0}; }
    __device__ Acc take(Acc acc, T x, long long) const {
        if (isfinite(x)) acc.integers += rint(ldexp((double)x, shift));
        else acc.specials += (double)x;
        return acc;
    }
    __device__ static Acc merge(Acc a, Acc b) { return {a.integers + b.integers, a.specials + b.specials}; }
    __device__ static Acc shuffle(Acc a, int off) {
        return {__shfl_xor_sync(0xffffffffu, a.integers, off), __shfl_xor_sync(0xffffffffu, a.specials, off)};
    }
    __device__ void publish(long long o, Acc acc) const {
        if (acc.integers != 0.0) atomicAdd(total + o, acc.integers);
        if (acc.specials != 0.0) atomicAdd(specials + o, acc.specials);      // NaN != 0 too
    }
};

// exact_rounded's sums of squares (its norms, squared) into zeroed float64 out[outputs], writing
// the float64 copy of each element as it goes (copy: x's element strides), and each line's quantum
// into zeroed low[outputs]: 2000 - the least exponent of a set bit among its nonzero finite values
// (0: none), which lets exact_rounded see where its float64 product is exact
__device__ __forceinline__ int loom_low_mark(float x) {
    const unsigned bits = __float_as_uint(x), e = (bits >> 23) & 0xff, m = bits & 0x7fffff;
    if ((bits & 0x7fffffffu) == 0 || e == 0xff) return 0;
    return 2000 - ((e ? (int)e - 150 : -149) + __ffs(e ? m | 0x800000u : m) - 1);
}
__device__ __forceinline__ int loom_low_mark(double x) {
    const unsigned long long bits = (unsigned long long)__double_as_longlong(x), m = bits & 0xfffffffffffffull;
    const int e = (int)((bits >> 52) & 0x7ff);
    if ((bits & 0x7fffffffffffffffull) == 0 || e == 0x7ff) return 0;
    return 2000 - ((e ? e - 1075 : -1074) + __ffsll((long long)(e ? m | (1ull << 52) : m)) - 1);
}
struct LoomSquaresAcc { double sq; int low; };
struct LoomSquares {
    typedef LoomSquaresAcc Acc;
    double* out;
    double* copy;
    unsigned long long* low;
    __device__ void begin(long long) {}
    __device__ static Acc zero() { return {0.0, 0}; }
    __device__ Acc take(Acc acc, T x, long long at) const {
        const double v = (double)x;
        copy[at] = v;
        return {__dadd_rn(acc.sq, __dmul_rn(v, v)), max(acc.low, loom_low_mark(x))};
    }
    __device__ static Acc merge(Acc a, Acc b) { return {__dadd_rn(a.sq, b.sq), max(a.low, b.low)}; }
    __device__ static Acc shuffle(Acc a, int off) {
        return {__shfl_xor_sync(0xffffffffu, a.sq, off), __shfl_xor_sync(0xffffffffu, a.low, off)};
    }
    __device__ void publish(long long o, Acc acc) const {
        if (acc.sq != 0.0) atomicAdd(out + o, acc.sq);
        if (acc.low != 0) atomicMax(low + o, (unsigned long long)acc.low);
    }
};

extern "C" __global__ void loom_squares_along(const T* x, double* out, double* copy, unsigned long long* low,
                                              LOOM_GEOMETRY, long long splits, long long chunk) {
    loom_along(LoomSquares{out, copy, low}, x, outputs, length, kept, sb, sk, sr, splits, chunk);
}
extern "C" __global__ void loom_squares_across(const T* x, double* out, double* copy, unsigned long long* low,
                                               LOOM_GEOMETRY, long long chunk) {
    loom_across(LoomSquares{out, copy, low}, x, outputs, length, kept, sb, sk, sr, chunk);
}
extern "C" __global__ void loom_absmax_along(
        const T* x, U* out, int finite_only, LOOM_GEOMETRY, long long splits, long long chunk) {
    loom_along(LoomMax{out, finite_only}, x, outputs, length, kept, sb, sk, sr, splits, chunk);
}
extern "C" __global__ void loom_absmax_across(const T* x, U* out, int finite_only, LOOM_GEOMETRY, long long chunk) {
    loom_across(LoomMax{out, finite_only}, x, outputs, length, kept, sb, sk, sr, chunk);
}
extern "C" __global__ void loom_exact_sum_along(
        const T* x, const float* top, double* total, double* specials, int bits, LOOM_GEOMETRY,
        long long splits, long long chunk) {
    loom_along(LoomSum{top, total, specials, bits, 0}, x, outputs, length, kept, sb, sk, sr, splits, chunk);
}
extern "C" __global__ void loom_exact_sum_across(
        const T* x, const float* top, double* total, double* specials, int bits, LOOM_GEOMETRY, long long chunk) {
    loom_across(LoomSum{top, total, specials, bits, 0}, x, outputs, length, kept, sb, sk, sr, chunk);
}
"""

_TYPES = {  # dtype -> (pattern type, pattern of x, |x| mask, infinity's pattern)
    np.dtype(np.float32): ("unsigned int", "__float_as_uint(x)", "0x7fffffffu", "0x7f800000u"),
    np.dtype(np.float64): ("unsigned long long", "(unsigned long long)__double_as_longlong(x)",
                           "0x7fffffffffffffffull", "0x7ff0000000000000ull"),
}
_PATTERN = {np.dtype(np.float32): np.uint32, np.dtype(np.float64): np.uint64}
_BUSY_WARPS = 8192          # 132 SMs x 64 resident warps: enough tasks to keep the device busy
_BUSY_BLOCKS = 1024
_SHORT = 32                 # rows this short leave most of an "along" warp's lanes idle (im2col's 9)
_SMALL_SUM = 1 << 16        # elements up to which a sum takes one launch (_BLOCKS) instead of four


@cache
def _module(dtype: np.dtype):
    pattern, bits_of, magnitude, infinity = _TYPES[dtype]
    head = (f"typedef {C_TYPES[dtype]} T;\ntypedef {pattern} U;\n"
            f"__device__ __forceinline__ U loom_bits(T x) {{ return {bits_of}; }}\n"
            f"#define MAGNITUDE {magnitude}\n#define INFINITY_BITS {infinity}\n")
    return cupy.RawModule(code=head + _REDUCE, options=OPTIONS)


def _layout(x, axes: tuple):
    """(x, outputs, length, kept, sb, sk, sr): x read as outputs x length, output o = z * kept + i at
    element offset z * sb + i * sk, its values r * sr further. The reduced axes must merge into one
    and the kept ones into at most two; otherwise x is copied with the reduced axes last."""
    geometry = _geometry(x.shape, x.strides, x.itemsize, axes)
    if geometry is None:
        keep = [i for i in range(x.ndim) if i not in axes]
        length = math.prod(x.shape[a] for a in axes)
        flat = cupy.ascontiguousarray(x.transpose(keep + list(axes))).reshape(-1, length)
        return _layout(flat, (1,))
    return (x, *geometry)


@lru_cache(maxsize=4096)
def _geometry(shape: tuple, strides: tuple, itemsize: int, axes: tuple) -> tuple | None:
    """_layout's (outputs, length, kept, sb, sk, sr) for an array of this shape and these strides, or
    None where the axes do not merge (cached: a prefill asks for the same few shapes hundreds of
    times)."""
    dims = [(d, s // itemsize, i in axes) for i, (d, s) in enumerate(zip(shape, strides)) if d != 1]
    groups = []                                     # merge neighbours of one kind that merge in memory
    for d, s, reduced in dims:
        if groups and groups[-1][2] == reduced and groups[-1][1] == d * s:
            groups[-1] = (groups[-1][0] * d, s, reduced)
        else:
            groups.append((d, s, reduced))
    red = [g for g in groups if g[2]]
    kept = [g for g in groups if not g[2]]
    if len(red) > 1 or len(kept) > 2:
        return None
    length, sr = (red[0][0], red[0][1]) if red else (1, 0)
    (nb, sb), (nk, sk) = ([(1, 0)] * (2 - len(kept)) + [(g[0], g[1]) for g in kept])
    return nb * nk, length, nk, sb, sk, sr


@cache
def _blocks_kernel():
    source = "typedef float T;\n" + BASICS + ROW_HELPERS + EXACT_ROW_SUM + _BLOCKS
    return cupy.RawModule(code=source, options=OPTIONS).get_function("loom_exact_sum_blocks")


def _launch(name: str, dtype, x, axes: tuple, args: tuple) -> None:
    """Launch the "along" or "across" form of reduction `name` over x's axes, with the reduction's
    own `args` (after x, before the layout)."""
    x, *geometry = _layout(x, axes)
    function, grid, block, tail = _launch_plan(name, np.dtype(dtype), *geometry)
    function(grid, block, (x, *args, *tail))


@lru_cache(maxsize=4096)
def _launch_plan(name: str, dtype, outputs: int, length: int, kept: int, sb: int, sk: int, sr: int) -> tuple:
    """(kernel, grid, block, the arguments after the reduction's own) of `_launch`."""
    geometry = tuple(np.int64(v) for v in (outputs, length, kept, sb, sk, sr))
    module = _module(dtype)
    if (sr == 1 and length > _SHORT) or (sk != 1 and sr != 1):       # along: one warp per (output, part)
        splits = max(1, min(-(-length // 256), -(-_BUSY_WARPS // outputs)))
        chunk = -(-length // splits)
        chunk = -(-chunk // 32) * 32
        splits = -(-length // chunk)
        blocks = -(-outputs * splits // 8)
        return module.get_function(name + "_along"), (blocks,), (256,), (*geometry, np.int64(splits), np.int64(chunk))
    # across: 32 outputs per block, rows in parts (short rows too: the block reads one stretch)
    columns = -(-outputs // 32)
    splits = max(1, min(-(-length // 64), -(-_BUSY_BLOCKS // columns), 65535))
    chunk = -(-length // splits)
    splits = -(-length // chunk)
    return module.get_function(name + "_across"), (columns, splits), (32, 8), (*geometry, np.int64(chunk))


def squares_copy(x: Array, axis: int, out: Array, low: Array) -> Array:
    """The float64 copy of float32 x (x's element strides where x is dense, as a C- or F-ordered array
    or a transposed view of one is, and its axes merge for the reduction; else C-ordered) and the sums
    of the squares of x along `axis` added into `out` (zeroed float64 of x's kept shape): exact_rounded's
    norms, squared, in the copy's one pass. NaN where a NaN is, inf where an inf is; the order of the
    additions is free (atomics). low (zeroed uint64, out's shape): each line's quantum, 2000 - the least
    exponent of a set bit among its nonzero finite values (0 where there is none)."""
    if _geometry(x.shape, x.strides, x.itemsize, (axis % x.ndim,)) is None:   # (a copy to reduce)
        x = cupy.ascontiguousarray(x)
    base = cupy.empty(x.size, dtype=np.float64)
    copy = cupy.ndarray(x.shape, np.float64, base.data, strides=tuple(2 * s for s in x.strides))
    if x.size:
        _launch("loom_squares", x.dtype, x, (axis % x.ndim,), (out, copy, low))
    return copy


def _kept_shape(x, axes: tuple) -> tuple:
    return tuple(1 if i in axes else d for i, d in enumerate(x.shape))


def _absmax(x, axes: tuple, finite_only: bool, out=None):
    """The maxima into `out` (zeroed patterns of x's width, x's kept shape), or a new array."""
    dtype = np.dtype(x.dtype)
    if out is None:
        out = cupy.zeros(_kept_shape(x, axes), dtype=_PATTERN[dtype])
    if x.size:
        _launch("loom_absmax", dtype, x, axes, (out, np.int32(finite_only)))
    return out.view(dtype)


def absmax(x: Array, axis: int) -> Array:
    """max |x| along `axis`, kept as size 1; NaN where a NaN is (a NaN of its own pattern: only
    whether it is one is used): exact._absmax's result, for float32 and float64 x."""
    with translating("exact GEMM scaling", x):
        return _absmax(x, (axis % x.ndim,), False)


@cache
def _finish():
    return cupy.ElementwiseKernel(
        "float64 total, float64 special, float32 top, int32 bits", "float32 out",
        "out = special == 0.0 ? __double2float_rn(ldexp(total, loom_top_exponent(top) - bits)) : (float)special;",
        "loom_exact_sum_finish", preamble=TOP_EXPONENT, options=OPTIONS)


def sum_float32(x: Array, axes: tuple, bits: int) -> Array:
    """exact.sum for float32 x over `axes` (kept as size-1 axes), exact._sum_general's bits: the
    finite maximum, then the integer and special sums, then the scaling back; one block per output
    for small sums, else split over warps in three passes and a finish."""
    with translating("exact sum", x):
        shape = _kept_shape(x, axes)
        outputs = math.prod(shape)
        if x.size <= _SMALL_SUM:
            x, outputs, length, kept, sb, sk, sr = _layout(x, axes)
            out = cupy.empty(shape, dtype=np.float32)
            _blocks_kernel()((min(outputs, MAX_GRID),), (row_threads(length),),
                             (x, out, np.int32(bits), *(np.int64(v) for v in (outputs, length, kept, sb, sk, sr))))
            return out
        zeros = cupy.zeros((3, outputs), dtype=np.float64)         # one memset: both sums and the maxima
        top = _absmax(x, axes, True, zeros[2].view(np.uint32)[:outputs].reshape(shape))
        sums = zeros[:2].reshape((2,) + shape)
        _launch("loom_exact_sum", np.float32, x, axes, (top, sums[0], sums[1], np.int32(bits)))
        return _finish()(sums[0], sums[1], top, np.int32(bits))


def sum_float32_across(x: Array, axes: tuple, bits: int, all_reduce: Callable[[Array, str], None]) -> Array:
    """sum_float32 over the ranks of a split batch (loom/kernels/exact/over_batch.py): the finite
    maxima all-reduced ("max"), the integer and special sums at that scale all-reduced ("sum": exact
    integers below 2^53, infinities), then the scaling back: one process's bits for the whole batch."""
    with translating("exact sum", x):
        shape = _kept_shape(x, axes)
        outputs = math.prod(shape)
        zeros = cupy.zeros((3, outputs), dtype=np.float64)
        top = _absmax(x, axes, True, zeros[2].view(np.uint32)[:outputs].reshape(shape))
        top = cupy.ascontiguousarray(top)
        all_reduce(top.reshape(-1), "max")
        sums = zeros[:2].reshape((2,) + shape)
        if x.size:
            _launch("loom_exact_sum", np.float32, x, axes, (top, sums[0], sums[1], np.int32(bits)))
        all_reduce(zeros[:2].reshape(-1), "sum")
        return _finish()(sums[0], sums[1], top, np.int32(bits))


def gemm_maxima(a: Array, b: Array) -> tuple[Array, Array]:
    """(absmax(a, -1), absmax(b, -2)) for a GEMM's operands of one dtype, zeroed by one memset."""
    with translating("exact GEMM scaling", a, b):
        dtype = np.dtype(a.dtype)
        shape_a, shape_b = _kept_shape(a, (a.ndim - 1,)), _kept_shape(b, (b.ndim - 2,))
        size_a = math.prod(shape_a)
        patterns = cupy.zeros(size_a + math.prod(shape_b), dtype=_PATTERN[dtype])
        return (_absmax(a, (a.ndim - 1,), False, patterns[:size_a].reshape(shape_a)),
                _absmax(b, (b.ndim - 2,), False, patterns[size_a:].reshape(shape_b)))
