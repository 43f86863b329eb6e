"""Prefix sums of float32 rows in one pass over the data: a decoupled look-back scan (Merrill and
Garland, "Single-pass Parallel Prefix Scan with Decoupled Look-back", 2016).

Each block takes the next tile of 4,096 elements from a counter (so every tile it waits on has
started and will finish), scans it, publishes its total, then adds the totals its predecessors
publish, a warp reading 32 of them at a time, until it meets one that has published its inclusive
prefix. Reads and writes go through shared memory so that both stay coalesced.

Two sums share the kernel:
- exact (deterministic mode; exact.cumsum's bits): each value is the integer rint(x 2^shift), shift
  from the finite maximum of its row (one earlier pass, exact_reduce's absmax), added in float64, so
  every partial sum is exact (below 2^53) whatever the order the look-back meets it in; the
  infinities and NaNs are three flags (+inf, -inf, NaN) ORed along, as exact.cumsum's float64 sum of
  them would combine;
- plain float32 additions (fast mode): which predecessors' totals a tile adds depends on timing, so
  the last bits may differ from run to run, as with CUB's scan.

A tile's status is one 64-bit word (value, then the flag in its low two bits: 0 not yet, 1 the
tile's own total, 2 its inclusive prefix), written and read whole, so no fence orders anything.
"""
from __future__ import annotations

from functools import cache

import cupy
import numpy as np

from .. import Array
from .compile import OPTIONS, translating
from .exact_reduce import TOP_EXPONENT, _absmax

THREADS, ITEMS = 256, 16
TILE = THREADS * ITEMS

_SOURCE = TOP_EXPONENT + r"""
#define THREADS 256
#define ITEMS 16
#define TILE (THREADS * ITEMS)
typedef unsigned long long u64;

// exact.cumsum's sum: integers below 2^53 added in float64 (exact in any order, and -0 only while
// every term is -0, as exact.cumsum's float64 sums), and the specials seen (1 +inf, 2 -inf, 4 NaN)
struct ExactSum {
    struct V { double s; unsigned sp; };
    double scale, unscale;
    __device__ ExactSum(unsigned top, int bits) {
        const int shift = bits - loom_top_exponent(__uint_as_float(top));
        // 2^shift and 2^-shift: |shift| < 300 for float32 values, so both products are exact
        scale = __longlong_as_double((long long)(1023 + shift) << 52);
        unscale = __longlong_as_double((long long)(1023 - shift) << 52);
    }
    __device__ static V zero() { return {-0.0, 0u}; }       // -0: the identity of IEEE addition
    __device__ V take(float x) const {
        if (isfinite(x)) return {rint(__dmul_rn((double)x, scale)), 0u};
        return {0.0, isnan(x) ? 4u : (__float_as_uint(x) >> 31) ? 2u : 1u};
    }
    __device__ static V add(V a, V b) { return {__dadd_rn(a.s, b.s), a.sp | b.sp}; }
    __device__ float value(V a) const {
        if (a.sp) return (a.sp & 4u) || a.sp == 3u ? __int_as_float(0x7fc00000)
                       : a.sp == 1u ? __int_as_float(0x7f800000) : __int_as_float(0xff800000);
        return __double2float_rn(__dmul_rn(a.s, unscale));   // exact in float64, rounded once
    }
    // the integer (|s| <= 2^53) shifted by 6 keeps its sign in 64 bits; bit 5: s is -0
    __device__ static u64 pack(V a, unsigned flag) {
        const bool negative_zero = a.s == 0.0 && signbit(a.s);
        return ((u64)(long long)a.s << 6) | ((u64)negative_zero << 5) | ((u64)a.sp << 2) | flag;
    }
    __device__ static V unpack(u64 w) {
        return {(w >> 5) & 1u ? -0.0 : (double)((long long)w >> 6), (unsigned)(w >> 2) & 7u};
    }
    __device__ static V up(V a, int d) {
        return {__shfl_up_sync(0xffffffffu, a.s, d), __shfl_up_sync(0xffffffffu, a.sp, d)};
    }
    __device__ static V across(V a, int d) {
        return {__shfl_xor_sync(0xffffffffu, a.s, d), __shfl_xor_sync(0xffffffffu, a.sp, d)};
    }
};

struct FloatSum {
    typedef float V;
    __device__ FloatSum(unsigned, int) {}
    __device__ static V zero() { return 0.0f; }
    __device__ V take(float x) const { return x; }
    __device__ static V add(V a, V b) { return a + b; }
    __device__ float value(V a) const { return a; }
    __device__ static u64 pack(V a, unsigned flag) { return ((u64)__float_as_uint(a) << 32) | flag; }
    __device__ static V unpack(u64 w) { return __uint_as_float((unsigned)(w >> 32)); }
    __device__ static V up(V a, int d) { return __shfl_up_sync(0xffffffffu, a, d); }
    __device__ static V across(V a, int d) { return __shfl_xor_sync(0xffffffffu, a, d); }
};

__device__ __forceinline__ int padded(int i) { return i + (i >> 5); }     // no bank conflicts either way

// rows of n elements, tiles_per_row tiles each; status[rows * tiles_per_row] is the tile counter;
// top[row]: the row's finite maximum as a pattern (ExactSum only)
template <class S> __device__ void loom_scan(const float* x, float* out, const unsigned* top, u64* status,
                                             long long n, long long tiles_per_row, int bits) {
    typedef typename S::V V;
    __shared__ float buf[TILE + TILE / 32];
    __shared__ V warp_totals[THREADS / 32];
    __shared__ V tile_prefix;
    __shared__ long long tile_of_block;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (threadIdx.x == 0) tile_of_block = (long long)atomicAdd(status + gridDim.x, 1ull);
    __syncthreads();
    const long long tile = tile_of_block, row = tile / tiles_per_row, j = tile % tiles_per_row;
    const long long base = row * n + j * TILE;
    const int count = (int)min((long long)TILE, n - j * TILE);
    for (int i = threadIdx.x; i < TILE; i += THREADS) buf[padded(i)] = i < count ? x[base + i] : 0.0f;
    __syncthreads();
    const S sum(top == nullptr ? 0u : top[row], bits);
    float v[ITEMS];
    V mine = S::zero();
    #pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
        v[i] = buf[padded(threadIdx.x * ITEMS + i)];
        mine = S::add(mine, sum.take(v[i]));
    }
    V scanned = mine;                           // the warp's inclusive scan of the threads' totals
    #pragma unroll
    for (int d = 1; d < 32; d <<= 1) {
        const V other = S::up(scanned, d);
        if (lane >= d) scanned = S::add(other, scanned);
    }
    if (lane == 31) warp_totals[warp] = scanned;
    __syncthreads();
    if (warp == 0) {
        V w = lane < THREADS / 32 ? warp_totals[lane] : S::zero();
        #pragma unroll
        for (int d = 1; d < THREADS / 32; d <<= 1) {
            const V other = S::up(w, d);
            if (lane >= d) w = S::add(other, w);
        }
        if (lane < THREADS / 32) warp_totals[lane] = w;     // now inclusive over warps
    }
    __syncthreads();
    if (warp == 0) {
        const V tile_total = warp_totals[THREADS / 32 - 1];
        volatile u64* flags = status;
        V before = S::zero();
        if (j == 0) {
            if (lane == 0) flags[tile] = S::pack(tile_total, 2u);
        } else {
            if (lane == 0) flags[tile] = S::pack(tile_total, 1u);
            const long long first = tile - j;               // the row's first tile
            for (long long k = tile - 1;; k -= 32) {
                const long long at = k - lane;
                u64 word = at >= first ? flags[at] : S::pack(S::zero(), 2u);
                while (__any_sync(0xffffffffu, (word & 3u) == 0)) {
                    if ((word & 3u) == 0) word = flags[at];
                }
                const unsigned done = __ballot_sync(0xffffffffu, (word & 3u) == 2u);
                const int last = done ? __ffs(done) - 1 : 31;  // the nearest inclusive prefix
                V part = lane <= last ? S::unpack(word) : S::zero();
                #pragma unroll
                for (int d = 16; d; d >>= 1) part = S::add(part, S::across(part, d));
                before = S::add(before, part);
                if (done) break;
            }
            if (lane == 0) flags[tile] = S::pack(S::add(before, tile_total), 2u);
        }
        if (lane == 0) tile_prefix = before;
    }
    __syncthreads();
    V run = S::add(tile_prefix, warp > 0 ? warp_totals[warp - 1] : S::zero());
    V in_warp = S::up(scanned, 1);
    run = S::add(run, lane > 0 ? in_warp : S::zero());
    #pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
        run = S::add(run, sum.take(v[i]));
        buf[padded(threadIdx.x * ITEMS + i)] = sum.value(run);
    }
    __syncthreads();
    for (int i = threadIdx.x; i < count; i += THREADS) out[base + i] = buf[padded(i)];
}

extern "C" __global__ void loom_scan_exact(const float* x, float* out, const unsigned* top, u64* status,
                                           long long n, long long tiles_per_row, int bits) {
    loom_scan<ExactSum>(x, out, top, status, n, tiles_per_row, bits);
}
extern "C" __global__ void loom_scan_float(const float* x, float* out, u64* status, long long n,
                                           long long tiles_per_row) {
    loom_scan<FloatSum>(x, out, nullptr, status, n, tiles_per_row, 0);
}
"""


@cache
def _module():
    return cupy.RawModule(code=_SOURCE, options=OPTIONS)


def takes(x: Array, axis: int) -> bool:
    """Whether these kernels scan x along axis: float32, along its last axis, C-contiguous."""
    return (x.dtype == np.float32 and x.size > 0 and axis % x.ndim == x.ndim - 1
            and x.flags.c_contiguous and x.size // x.shape[-1] * -(-x.shape[-1] // TILE) < 2**31)


def _run(name: str, x: Array, top: Array | None = None, bits: int = 0) -> Array:
    n = x.shape[-1]
    rows = x.size // n
    tiles_per_row = -(-n // TILE)
    tiles = rows * tiles_per_row
    out = cupy.empty_like(x)
    status = cupy.zeros(tiles + 1, dtype=np.uint64)      # the tiles' words, then the tile counter
    geometry = (np.int64(n), np.int64(tiles_per_row))
    if top is None:
        args = (x, out, status, *geometry)
    else:
        args = (x, out, top, status, *geometry, np.int32(bits))
    _module().get_function(name)((tiles,), (THREADS,), args)
    return out


def cumsum_exact(x: Array, bits: int) -> Array:
    """exact.cumsum of float32 x along its last axis (takes(x, -1)), its bits: every prefix sum of the
    values rounded to the grid 2^(e - bits) of its row's finite maximum (below 2^e), exact, then
    rounded once; inf, -inf and NaN as exact.cumsum's specials."""
    with translating("exact scan", x):
        top = _absmax(x, (x.ndim - 1,), True).view(np.uint32)
        return _run("loom_scan_exact", x, top, bits)


def cumsum(x: Array) -> Array:
    """Prefix sums of float32 x along its last axis (takes(x, -1)) in float32 additions."""
    with translating("scan", x):
        return _run("loom_scan_float", x)
