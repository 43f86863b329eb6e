"""The rounded scheme of deterministic mode's exact GEMM on the GPU (loom/kernels/exact/rounded.py):
the float64 product certified entry by entry and rounded once, the entries it cannot certify settled
by compensated or exact integer sums (matmul_rounded, its cached launch plans, and the CUDA C of
these stages). ROUNDED_DEVICE, the stages' value-level device functions, is compiled into the
deterministic decode kernels too (quant_exact.py, decode_exact.py).

The kernels include the special-value guard of exact_slices.py (`_GUARD`: a row or column holding
inf or NaN gets IEEE's special values) and launch with its stride helpers.
Capturable: no synchronization, scalars as arguments.
"""
from __future__ import annotations

import math
from functools import cache, lru_cache
from typing import TYPE_CHECKING, NamedTuple

import cupy
import numpy as np

from .. import Array
from .compile import OPTIONS, translating
from .exact_reduce import TOP_EXPONENT, squares_copy
from .exact_slices import _GUARD, _batched, _elements, _product_strides
from .launch import multiprocessors as _multiprocessors

if TYPE_CHECKING:
    from . import CUDABackend


# The rounded scheme's certification and the later stages (loom/backend/cpu/rounded.py's docstring),
# in CUDA C, as two kernels: a thread per entry certifies it or lists it; then a warp per listed entry
# (a block of 256 for sums longer than _TEAM_FROM) sums its products: a compensated sum (each lane a
# strided share, then a butterfly of TwoSums, which leaves every lane the same values), and where that
# cannot certify it either, an exact integer accumulator per lane (local memory), the lanes' limbs
# added exactly and rounded once.
# The value-level pieces of the rounded scheme (certification, compensated sums, integer limbs), also
# compiled into the deterministic decode kernels (quant_exact, decode_exact).
ROUNDED_DEVICE = r"""
#define LOOM_LIMBS 21
#define LOOM_FULL 0xffffffffu
__device__ float loom_round_limbs(long long* limb) {      // sum limb[t] 2^(32 t - 350), rounded once
    long long carry = 0;
    for (int t = 0; t < LOOM_LIMBS; ++t) { const long long v = limb[t] + carry; carry = v >> 32; limb[t] = v & 0xffffffffll; }
    const bool negative = carry < 0;
    if (negative) {
        carry = 0;
        for (int t = 0; t < LOOM_LIMBS; ++t) { const long long v = carry - limb[t]; carry = v >> 32; limb[t] = v & 0xffffffffll; }
    }
    int top = LOOM_LIMBS - 1;
    while (top >= 0 && limb[top] == 0) --top;
    if (top < 0) return 0.0f;                                   // an exact zero: +0
    const int high = 32 * top + (63 - __clzll(limb[top])) - 350;
    const int q = max(high - 23, -149), d = q + 350, w = d >> 5, s = d & 31;
    const long long above = w + 1 < LOOM_LIMBS ? (limb[w + 1] & 0x1ffffffll) : 0;
    long long mant = ((limb[w] >> s) | (above << (32 - s))) & 0x1ffffffll;
    const int rw = (d - 1) >> 5, rs = (d - 1) & 31;
    const long long half = (limb[rw] >> rs) & 1;
    bool sticky = (limb[rw] & ((1ll << rs) - 1)) != 0;
    for (int t = 0; t < rw; ++t) sticky = sticky || limb[t] != 0;
    if (half && (sticky || (mant & 1))) ++mant;
    unsigned bits = (unsigned)((q + 149) << 23) + (unsigned)mant;   // subnormal, normal and carry alike
    if (bits >= 0x7f800000u) bits = 0x7f800000u;
    return __uint_as_float(negative ? bits | 0x80000000u : bits);
}

// float32(x - e) if its bits are float32(x + e)'s (the exact value, within e of x, rounds to it),
// +0 where e == 0 (every product is 0); false where neither holds. An infinite or NaN bound (a row
// or column the caller patches) counts as certified.
__device__ bool loom_certified(double x, double e, float* v) {
    const float lo = __double2float_rn(__dsub_rn(x, e)), hi = __double2float_rn(__dadd_rn(x, e));
    *v = e == 0.0 ? 0.0f : hi;
    return e == 0.0 || __float_as_uint(lo) == __float_as_uint(hi) || !isfinite(e);
}

// Knuth's TwoSum: *s becomes *s + y rounded; returns that addition's exact error.
__device__ double loom_two_sum(double* s, double y) {
    const double x = *s, total = __dadd_rn(x, y), back = __dsub_rn(total, x);
    *s = total;
    return __dadd_rn(__dsub_rn(x, __dsub_rn(total, back)), __dsub_rn(y, back));
}

// One product x y added to a compensated sum (s, c) and to t, the sum of magnitudes.
__device__ __forceinline__ void loom_dot2_add(float x, float y, double* s, double* c, double* t) {
    const double p = __dmul_rn((double)x, (double)y);     // exact: 48 bits
    *c = __dadd_rn(*c, loom_two_sum(s, p));
    *t = __dadd_rn(*t, fabs(p));
}

// A thread's share of an entry's compensated sum: products first, first + step, ... of the k, four
// at a time so that their loads are in flight together (long strided sums are latency-bound).
__device__ void loom_dot2_share(const float* a, const float* b, long long sak, long long sbk, long long k,
                                long long first, long long step, double* s, double* c, double* t) {
    long long q = first;
    for (; q + 3 * step < k; q += 4 * step) {
        float x[4], y[4];
#pragma unroll
        for (int u = 0; u < 4; ++u) x[u] = a[(q + u * step) * sak];
#pragma unroll
        for (int u = 0; u < 4; ++u) y[u] = x[u] != 0.0f ? b[(q + u * step) * sbk] : 0.0f;  // b's load saved
#pragma unroll
        for (int u = 0; u < 4; ++u)
            if (x[u] != 0.0f) loom_dot2_add(x[u], y[u], s, c, t);     // adds nothing otherwise (finite b)
    }
    for (; q < k; q += step) {
        const float x = a[q * sak];
        if (x != 0.0f) loom_dot2_add(x, b[q * sbk], s, c, t);
    }
}

// The warp's shares combined; TwoSum is symmetric: lanes l and l ^ o end up equal, so every lane
// ends with the warp's values.
__device__ void loom_dot2_warp(double* s, double* c, double* t) {
    for (int o = 16; o; o >>= 1) {
        const double so = __shfl_xor_sync(LOOM_FULL, *s, o), co = __shfl_xor_sync(LOOM_FULL, *c, o);
        const double err = loom_two_sum(s, so);
        *c = __dadd_rn(__dadd_rn(*c, co), err);
        *t = __dadd_rn(*t, __shfl_xor_sync(LOOM_FULL, *t, o));
    }
}

// The compensated sum s + c certified: its n error terms (k products' and the combinations'), each
// below u t, leave at most kk^2 u^2 (1 + 2^-20) t, kk >= n + 32, in their rounded sum.
__device__ bool loom_dot2_certified(double s, double c, double t, double kk, float* v) {
    const double f = __dadd_rn(s, c);
    return loom_certified(f, __dadd_rn(__dmul_rn(__dmul_rn(__dmul_rn(kk, kk), 0x1.00001p-106), t),
                                       __dmul_rn(fabs(f), 0x1p-51)), v);
}

// p (a nonzero product of two finite float32 numbers, exact in float64: its exponent is at least
// -298) added into the limbs.
__device__ __forceinline__ void loom_limbs_add(double p, long long* limb) {
    const unsigned long long bits = (unsigned long long)__double_as_longlong(p);
    const long long sig = (long long)((bits & 0xfffffffffffffull) | (1ull << 52));
    const int pos = (int)((bits >> 52) & 0x7ff) - 725, w = pos >> 5, sh = pos & 31;
    const long long low = (sig & ((1ll << (32 - sh)) - 1)) << sh, rest = sig >> (32 - sh);
    if (bits >> 63) { limb[w] -= low; limb[w + 1] -= rest & 0xffffffffll; limb[w + 2] -= rest >> 32; }
    else { limb[w] += low; limb[w + 1] += rest & 0xffffffffll; limb[w + 2] += rest >> 32; }
}
"""

_ROUNDED = ROUNDED_DEVICE + r"""
// A thread's share of an entry's exact sum, added into its limbs (zeroed here).
__device__ void loom_exact_share(const float* a, const float* b, long long sak, long long sbk, long long k,
                                 long long first, long long step, long long* limb) {
    for (int i = 0; i < LOOM_LIMBS; ++i) limb[i] = 0;
    for (long long q = first; q < k; q += step) {
        const float x = a[q * sak];
        if (x == 0.0f) continue;
        const double p = __dmul_rn((double)x, (double)b[q * sbk]);
        if (p != 0.0) loom_limbs_add(p, limb);
    }
}

// The least exponent of a set bit among a lane's share of an entry's products (2^20: all are 0);
// each product of two finite float32 numbers is exact in float64, and normal there.
__device__ int loom_low_share(const float* a, const float* b, long long sak, long long sbk, long long k,
                              long long first, long long step) {
    int low = 1 << 20;
    for (long long q = first; q < k; q += step) {
        const float x = a[q * sak];
        if (x == 0.0f) continue;
        const double p = __dmul_rn((double)x, (double)b[q * sbk]);
        if (p == 0.0) continue;
        const long long bits = __double_as_longlong(p);
        low = min(low, (int)((bits >> 52) & 0x7ff) - 1075 + __ffsll((bits & 0xfffffffffffffll) | (1ll << 52)) - 1);
    }
    return low;
}

// The compensated sum s + c of kk error terms (each below u t) where every product is a multiple of
// 2^low: every TwoSum error is such a multiple too (s stays one), so where their magnitudes' total,
// below kk 2^-53 t, stays under 2^53 2^low (t kk < 2^(105 + low), a factor 2 for t's own rounding), c
// holds their sum exactly and s + c is the exact value. Then *v = it rounded once to float32: float32 of
// f = s + c rounded, except where f falls exactly halfway between two float32 values and the part of
// s + c below f (TwoSum's error) decides. Products of bfloat16 operands land exactly halfway often,
// where no error bound can certify them; this spares them the integer limbs.
__device__ bool loom_dot2_exact(double s, double c, double t, double kk, int low, float* v) {
    if (low >= (1 << 20)) { *v = 0.0f; return true; }              // every product 0: the scheme's +0
    if (!(__dmul_rn(t, kk) < __longlong_as_double((long long)(1023 + 105 + low) << 52))) return false;
    double f = s;
    const double g = loom_two_sum(&f, c);
    *v = __double2float_rn(f);
    if (g != 0.0) {
        const float lo = __double2float_rd(f), hi = __double2float_ru(f);
        // halfway between lo and hi; past float32's largest, halfway to 2^128 (float32 rounds there to inf)
        const double mid = isinf(hi) ? 0x1.ffffffp+127 : isinf(lo) ? -0x1.ffffffp+127 : 0.5 * ((double)lo + (double)hi);
        if (lo != hi && f == mid) *v = g > 0.0 ? hi : lo;
    }
    return true;
}

// The warp's two later stages for one entry (row a, column b, k products), every lane calling.
__device__ float loom_settle(const float* a, const float* b, long long sak, long long sbk, long long k, int lane) {
    double s = 0.0, c = 0.0, t = 0.0;
    loom_dot2_share(a, b, sak, sbk, k, lane, 32, &s, &c, &t);
    loom_dot2_warp(&s, &c, &t);
    float v;
    if (loom_dot2_certified(s, c, t, (double)k + 64.0, &v))     // K + 31 error terms
        return v;
    int low = loom_low_share(a, b, sak, sbk, k, lane, 32);
    for (int o = 16; o; o >>= 1) low = min(low, __shfl_xor_sync(LOOM_FULL, low, o));
    if (loom_dot2_exact(s, c, t, (double)k + 64.0, low, &v))
        return v;
    long long limb[LOOM_LIMBS];
    loom_exact_share(a, b, sak, sbk, k, lane, 32, limb);
    for (int i = 0; i < LOOM_LIMBS; ++i)    // each below 2^32 k: the lanes' sums stay exact (k < 2^31)
        for (int o = 16; o; o >>= 1) limb[i] += __shfl_xor_sync(LOOM_FULL, limb[i], o);
    return loom_round_limbs(limb);
}

// loom_special_sum for long sums by a block (LOOM_TEAM threads, every one calling): the terms'
// shares added in any order, as only a non-finite outcome is used and that does not depend on the
// order. The value is thread 0's.
__device__ float loom_special_team(const float* a, const float* b, long long sak, long long sbk, long long k) {
    __shared__ float shared_f[32];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    float sp = 0.0f;
    for (long long q = tid; q < k; q += blockDim.x)
        sp = __fadd_rn(sp, __fmul_rn(loom_mark(a[q * sak]), loom_mark(b[q * sbk])));
    for (int o = 16; o; o >>= 1) sp = __fadd_rn(sp, __shfl_xor_sync(LOOM_FULL, sp, o));
    if (lane == 0) shared_f[warp] = sp;
    __syncthreads();
    float total = 0.0f;
    if (tid == 0)
        for (int w = 0; w < (int)(blockDim.x >> 5); ++w) total = __fadd_rn(total, shared_f[w]);
    __syncthreads();                        // shared_f free for the next entry
    return total;
}

// The same for long sums, a block of LOOM_TEAM threads sharing one entry's products (a warp alone
// would walk K / 32 strided loads one after another: milliseconds at K = 200704). The warps'
// values are combined by warp 0 in a fixed order, the limbs by exact integer sums. The value is
// thread 0's; every thread of the block calls.
#define LOOM_TEAM 256
__device__ float loom_settle_team(const float* a, const float* b, long long sak, long long sbk, long long k) {
    __shared__ double shared_d[3][LOOM_TEAM / 32];
    __shared__ long long shared_limb[LOOM_TEAM / 32][LOOM_LIMBS];
    __shared__ int decided;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    double s = 0.0, c = 0.0, t = 0.0;
    loom_dot2_share(a, b, sak, sbk, k, tid, LOOM_TEAM, &s, &c, &t);
    loom_dot2_warp(&s, &c, &t);
    if (lane == 0) { shared_d[0][warp] = s; shared_d[1][warp] = c; shared_d[2][warp] = t; }
    __syncthreads();
    float v = 0.0f;
    if (warp == 0) {
        const bool mine = lane < LOOM_TEAM / 32;
        s = mine ? shared_d[0][lane] : 0.0; c = mine ? shared_d[1][lane] : 0.0; t = mine ? shared_d[2][lane] : 0.0;
        loom_dot2_warp(&s, &c, &t);
        // K error terms from the products, 31 per warp and 31 more from combining: K + 279 < K + 512 - 32
        const bool certain = loom_dot2_certified(s, c, t, (double)k + 512.0, &v);
        if (tid == 0) decided = certain;
    }
    __syncthreads();
    if (decided) {
        __syncthreads();                    // every thread has read `decided` before the next entry's write
        return v;
    }
    long long limb[LOOM_LIMBS];
    loom_exact_share(a, b, sak, sbk, k, tid, LOOM_TEAM, limb);
    for (int i = 0; i < LOOM_LIMBS; ++i) {  // each below 2^32 k: every sum here stays exact (k < 2^31)
        for (int o = 16; o; o >>= 1) limb[i] += __shfl_xor_sync(LOOM_FULL, limb[i], o);
        if (lane == 0) shared_limb[warp][i] = limb[i];
    }
    __syncthreads();
    if (tid == 0) {
        for (int i = 0; i < LOOM_LIMBS; ++i) {
            limb[i] = 0;
            for (int w = 0; w < LOOM_TEAM / 32; ++w) limb[i] += shared_limb[w][i];
        }
        v = loom_round_limbs(limb);
    }
    __syncthreads();                        // shared memory free for the next entry
    return v;
}

// An entry's place: row i, column j and batch indices z1, z2 of entry idx (C order over
// [outer, inner, m, n]). I: the index type, 32-bit where the product's entries allow (64-bit
// divisions are slow).
template <typename I> struct LoomEntry { I i, j, z1, z2; };
template <typename I> __device__ LoomEntry<I> loom_entry(I idx, I inner, I m, I n, bool batched) {
    LoomEntry<I> e;
    const I line = idx / n;
    e.j = idx - line * n;
    e.i = line;
    e.z1 = e.z2 = 0;
    if (batched) {
        const I z = line / m;
        e.i = line - z * m;
        e.z1 = z / inner;
        e.z2 = z - e.z1 * inner;
    }
    return e;
}

// A product's operands, norms and output, and their element strides (z1, z2: batch axes; m/n:
// rows of a / columns of b; k: the summed axis).
struct LoomProduct {
    const double *sa, *sb;          // the rows' and columns' 2-norms (or their squares, `rooted` 0)
    const float *a, *b;
    float* out;
    long long k, sa1, sa2, sam, sak, sb1, sb2, sbk, sbn, sr1, sr2, srm, sc1, sc2, scn;
};

// Entry e's row of a and column of b; false where either holds inf or NaN (its norm is not finite).
template <typename I> __device__ bool loom_entry_lines(const LoomProduct& p, LoomEntry<I> e, const float** ar,
                                                       const float** bc) {
    *ar = p.a + e.z1 * p.sa1 + e.z2 * p.sa2 + e.i * p.sam;
    *bc = p.b + e.z1 * p.sb1 + e.z2 * p.sb2 + e.j * p.sbn;
    return isfinite(p.sa[e.z1 * p.sr1 + e.z2 * p.sr2 + e.i * p.srm]) &&
           isfinite(p.sb[e.z1 * p.sc1 + e.z2 * p.sc2 + e.j * p.scn]);
}

// The later stages for entry idx at e, every lane of the warp calling; lane 0 writes the value:
// loom_settle's, or IEEE's special value where the entry's row or column holds inf or NaN.
template <typename I> __device__ void loom_settle_entry(const LoomProduct& p, I idx, LoomEntry<I> e, int lane) {
    const float *ar, *bc;
    if (loom_entry_lines(p, e, &ar, &bc)) {
        const float v = loom_settle(ar, bc, p.sak, p.sbk, p.k, lane);
        if (lane == 0) p.out[idx] = v;
    } else if (lane == 0) {
        const float special = loom_special_sum(ar, bc, p.sak, p.sbk, p.k);
        if (!isfinite(special)) p.out[idx] = special;
    }
}

// The first stage, a thread per entry: each entry is written certified (or provisionally), and
// those it cannot certify (or whose row or column holds inf or NaN) are settled by the warp at once
// (LIST false: small products, where a second launch costs more) or listed for loom_rounded_settle
// in any order (each entry's value depends on that entry alone). The listing form is kept lean:
// the later stages' registers and local memory in it cost three quarters of its bandwidth.
// Where every product of an entry is a multiple of 2^q (q: the least set bits of its row and column, from
// their quanta la and lb, squares_copy's marks) and ||row|| ||column|| (>= the sum of the products'
// magnitudes) stays below 2^(51 + q), every partial sum is such a multiple below 2^53 2^q: the float64
// product x is the exact value in any order, and float32(x) its rounding (an exact 0 the scheme's +0).
// Products of bfloat16 operands land there often, and often exactly between two float32 values, where
// the bound below can never certify them.
__device__ __forceinline__ bool loom_exact_in_float64(double norms, unsigned long long qa, unsigned long long qb) {
    if (qa == 0 || qb == 0 || !isfinite(norms)) return false;
    const int q = 4000 - (int)qa - (int)qb;                     // in [-298, 254]: 2^(51 + q) is a normal double
    return norms < __longlong_as_double((long long)(1023 + 51 + q) << 52);
}

template <typename I, bool LIST> __device__ void loom_rounded_certify_body(
        const LoomProduct& p, const double* r, I* doubtful, unsigned long long* count, double factor, int rooted,
        I total, I inner, I m, I n, const unsigned long long* la, const unsigned long long* lb) {
    const int lane = threadIdx.x & 31;
    const I stride = (I)gridDim.x * blockDim.x;
    const bool batched = total != m * n;
    for (I base = ((I)blockIdx.x * blockDim.x + threadIdx.x) - lane; base < total; base += stride) {
        const I idx = base + lane;
        bool settle = false;
        LoomEntry<I> e = {0, 0, 0, 0};
        if (idx < total) {
            e = loom_entry(idx, inner, m, n, batched);
            const double x = r[idx];
            const long long ri = e.z1 * p.sr1 + e.z2 * p.sr2 + e.i * p.srm, ci = e.z1 * p.sc1 + e.z2 * p.sc2 + e.j * p.scn;
            const double ra = p.sa[ri], cb = p.sb[ci];
            const double norms = rooted ? __dmul_rn(ra, cb) : __dsqrt_rn(__dmul_rn(ra, cb));
            float v;
            if (la != nullptr && loom_exact_in_float64(norms, la[ri], lb[ci])) {
                v = x == 0.0 ? 0.0f : __double2float_rn(x);
            } else {
                settle = !loom_certified(x, __dadd_rn(__dmul_rn(norms, factor), __dmul_rn(fabs(x), 0x1p-52)), &v)
                         || !isfinite(norms);
            }
            p.out[idx] = v;
        }
        const unsigned pending = __ballot_sync(LOOM_FULL, settle);
        if (!pending) continue;
        if (LIST) {                         // one atomic per warp
            unsigned long long at = 0;
            if (lane == __ffs(pending) - 1) at = atomicAdd(count, (unsigned long long)__popc(pending));
            at = __shfl_sync(LOOM_FULL, at, __ffs(pending) - 1);
            if (settle) doubtful[at + __popc(pending & ((1u << lane) - 1))] = idx;
        } else {
            __syncwarp();                   // the provisional writes land before lane 0's
            for (unsigned left = pending; left; left &= left - 1) {
                const int src = __ffs(left) - 1;
                const LoomEntry<I> se = {__shfl_sync(LOOM_FULL, e.i, src), __shfl_sync(LOOM_FULL, e.j, src),
                                         __shfl_sync(LOOM_FULL, e.z1, src), __shfl_sync(LOOM_FULL, e.z2, src)};
                loom_settle_entry(p, __shfl_sync(LOOM_FULL, idx, src), se, lane);
            }
        }
    }
}

// The listed entries, a warp each, the grid's warps taking turns.
template <typename I> __device__ void loom_rounded_settle_body(
        const LoomProduct& p, const I* doubtful, const unsigned long long* count, I total, I inner, I m, I n) {
    const int lane = threadIdx.x & 31;
    const unsigned long long listed = *count, warps = (unsigned long long)gridDim.x * (blockDim.x >> 5);
    const bool batched = total != m * n;
    for (unsigned long long w = (blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x) >> 5; w < listed;
         w += warps) {
        const I idx = doubtful[w];
        loom_settle_entry(p, idx, loom_entry(idx, inner, m, n, batched), lane);
    }
}

// The listed entries of a long product (K > _TEAM_FROM), a block each, the grid's blocks taking turns.
template <typename I> __device__ void loom_rounded_settle_team_body(
        const LoomProduct& p, const I* doubtful, const unsigned long long* count, I total, I inner, I m, I n) {
    const unsigned long long listed = *count;
    const bool batched = total != m * n;
    for (unsigned long long w = blockIdx.x; w < listed; w += gridDim.x) {
        const I idx = doubtful[w];
        const float *ar, *bc;
        if (loom_entry_lines(p, loom_entry(idx, inner, m, n, batched), &ar, &bc)) {
            const float v = loom_settle_team(ar, bc, p.sak, p.sbk, p.k);
            if (threadIdx.x == 0) p.out[idx] = v;
        } else {
            const float special = loom_special_team(ar, bc, p.sak, p.sbk, p.k);
            if (threadIdx.x == 0 && !isfinite(special)) p.out[idx] = special;
        }
    }
}

#define LOOM_PRODUCT_ARGS const double* sa, const double* sb, const float* a, const float* b, float* out, \
        long long k, long long sa1, long long sa2, long long sam, long long sak, long long sb1, long long sb2, \
        long long sbk, long long sbn, long long sr1, long long sr2, long long srm, long long sc1, long long sc2, \
        long long scn
#define LOOM_PRODUCT {sa, sb, a, b, out, k, sa1, sa2, sam, sak, sb1, sb2, sbk, sbn, sr1, sr2, srm, sc1, sc2, scn}
#define LOOM_ROUNDED(CERTIFY, SETTLE, TEAM, I) \
extern "C" __global__ void CERTIFY(LOOM_PRODUCT_ARGS, const double* r, I* doubtful, unsigned long long* count, \
        double factor, int rooted, long long total, long long inner, long long m, long long n, \
        const unsigned long long* la, const unsigned long long* lb) { \
    const LoomProduct p = LOOM_PRODUCT; \
    loom_rounded_certify_body<I, true>(p, r, doubtful, count, factor, rooted, (I)total, (I)inner, (I)m, (I)n, la, lb); } \
extern "C" __global__ void SETTLE(LOOM_PRODUCT_ARGS, const I* doubtful, const unsigned long long* count, \
        long long total, long long inner, long long m, long long n) { \
    const LoomProduct p = LOOM_PRODUCT; \
    loom_rounded_settle_body<I>(p, doubtful, count, (I)total, (I)inner, (I)m, (I)n); } \
extern "C" __global__ void __launch_bounds__(LOOM_TEAM) TEAM(LOOM_PRODUCT_ARGS, const I* doubtful, \
        const unsigned long long* count, long long total, long long inner, long long m, long long n) { \
    const LoomProduct p = LOOM_PRODUCT; \
    loom_rounded_settle_team_body<I>(p, doubtful, count, (I)total, (I)inner, (I)m, (I)n); }
LOOM_ROUNDED(loom_rounded_certify32, loom_rounded_settle32, loom_rounded_settle_team32, unsigned)
LOOM_ROUNDED(loom_rounded_certify64, loom_rounded_settle64, loom_rounded_settle_team64, unsigned long long)
extern "C" __global__ void loom_rounded_certify_settle(LOOM_PRODUCT_ARGS, const double* r, double factor, int rooted,
        long long total, long long inner, long long m, long long n, const unsigned long long* la,
        const unsigned long long* lb) {
    const LoomProduct p = LOOM_PRODUCT;
    loom_rounded_certify_body<unsigned, false>(p, r, nullptr, nullptr, factor, rooted, (unsigned)total,
                                               (unsigned)inner, (unsigned)m, (unsigned)n, la, lb);
}
"""


_ROOTS_FROM = 1 << 18      # entries: larger products take the norms' square roots in a launch of their own
# Products up to this many entries certify and settle in one kernel (launch-bound ones: a second
# launch cost the MLP at batch 32 about 5%); larger ones list the entries left for a second kernel.
_SETTLE_INSIDE_MAX = 1 << 18
# the certification's grid: 32 blocks of 256 per multiprocessor, each thread then taking several
# entries (H100: convnet step 1.680 -> 1.671 ms, encoder 54.9 -> 54.4 ms against a block per 256)
_CERTIFY_BLOCKS_PER_SM = 32
# sums longer than this (the dispatch table gives them the slices; benchmarks/exact_schemes.py forces
# this scheme on them to compare) are settled by a block of 256 per listed entry, and never inside
# the first kernel: a warp walks K / 32 strided loads in turn (milliseconds at K = 200704)
_TEAM_FROM = 2048


@cache
def _rounded_module():
    return cupy.RawModule(code="typedef float T;\n" + TOP_EXPONENT + _GUARD + _ROUNDED, options=OPTIONS)


def matmul_rounded(be: CUDABackend, a: Array, b: Array, factor: float) -> Array:
    """loom/kernels/exact/rounded.py's matmul for float32 a [..., M, K] and b [..., K, N] on the GPU:
    float64 copies of the operands with their rows' and columns' sums of squares (one pass each), their
    float64 product (cuBLAS's GEMM, whose error `factor` bounds), then a kernel that certifies and
    rounds each entry or lists it, and one that settles the listed entries, or writes IEEE's special
    value where a row or column holds inf or NaN (its sum of squares is then not finite)."""
    with translating("exact GEMM (rounded) operands", a, b):
        a, b = _dense(a), _dense(b)
        plan = _rounded_plan(a.shape, a.strides, b.shape, b.strides, cupy.cuda.runtime.getDevice())
        # one memset for both sums of squares, the count of entries to settle and the lines' quanta
        lines = plan.size_a + plan.size_b
        zeroed = cupy.zeros(2 * lines + 1, dtype=np.float64)
        squares, lows = zeroed[:lines + 1], zeroed[lines + 1:].view(np.uint64)
        sa = squares[:plan.size_a].reshape(plan.shape_a)
        sb = squares[plan.size_a:-1].reshape(plan.shape_b)
        a64 = squares_copy(a, -1, sa, lows[:plan.size_a].reshape(plan.shape_a))
        b64 = squares_copy(b, -2, sb, lows[plan.size_a:].reshape(plan.shape_b))
    r = cupy.ascontiguousarray(be.matmul(a64, b64))
    out = cupy.empty(r.shape, dtype=np.float32)
    total = r.size
    if total:
        with translating("exact GEMM (rounded) certification", r):
            norms = cupy.sqrt(squares) if plan.rooted else squares
            r4, c4 = norms, norms[plan.size_a:]         # (their strides are in the plan)
            la, lb = lows, lows[plan.size_a:]          # (indexed as the norms are)
            if plan.strides is None:                    # more than two batch axes that do not merge
                a, b = _batched(a, plan.batch), _batched(b, plan.batch)
                r4, c4 = (_batched(norms[:plan.size_a].reshape(plan.shape_a), plan.batch),
                          _batched(norms[plan.size_a:-1].reshape(plan.shape_b), plan.batch))
                strides = _product_strides(_elements(a), _elements(b), _elements(r4), _elements(c4))
                la = lb = np.uint64(0)                  # (null: the norms are copies, with no quanta beside them)
            else:
                strides = plan.strides
            args = (r4, c4, a, b, out, plan.k, *strides)
            sizes = plan.sizes
            if plan.kernels[1] is None:
                plan.kernels[0](plan.blocks, (256,), (*args, r, np.float64(factor), np.int32(plan.rooted), *sizes,
                                                      la, lb))
                return out
            doubtful = cupy.empty(total, dtype=np.uint64 if plan.wide else np.uint32)   # the entries to settle
            count = squares[-1:].view(np.uint64)                                        # zeroed with the squares
            plan.kernels[0](plan.blocks, (256,), (*args, r, doubtful, count, np.float64(factor),
                                                  np.int32(plan.rooted), *sizes, la, lb))
            plan.kernels[1](plan.settle_blocks, (256,), (*args, doubtful, count, *sizes))
    return out


class _RoundedPlan(NamedTuple):
    """What matmul_rounded computes from its operands' shapes and strides alone."""
    shape_a: tuple          # the sums of squares' shapes and sizes
    shape_b: tuple
    size_a: int
    size_b: int
    batch: tuple            # the product's batch axes ((1,) for none)
    k: np.int64
    strides: tuple | None   # the element strides of a, b, the row norms and the column norms as the
                            # kernels take them, or None where _batched must copy
    sizes: tuple            # total, inner, m, n
    rooted: bool
    wide: bool
    blocks: tuple
    settle_blocks: tuple
    kernels: tuple          # (certify, settle): (certify-and-settle, None) for small products


@lru_cache(maxsize=1024)
def _rounded_plan(shape_a: tuple, strides_a: tuple, shape_b: tuple, strides_b: tuple, device: int) -> _RoundedPlan:
    """matmul_rounded's plan for float32 operands of these shapes and strides (cached: a prefill runs
    the same few products hundreds of times, and working this out cost as much as the launches)."""
    sq_a, sq_b = shape_a[:-1] + (1,), shape_b[:-2] + (1, shape_b[-1])
    batch = np.broadcast_shapes(shape_a[:-2], shape_b[:-2]) or (1,)
    m, k, n = shape_a[-2], shape_a[-1], shape_b[-1]
    inner = batch[-1]                               # _batched's second axis
    total = math.prod(batch) * m * n
    strides = None
    if len(batch) <= 2:
        a4, b4 = _strides4(shape_a, strides_a, 4, batch), _strides4(shape_b, strides_b, 4, batch)
        r4, c4 = _strides4(sq_a, _c_strides(sq_a, 8), 8, batch), _strides4(sq_b, _c_strides(sq_b, 8), 8, batch)
        strides = tuple(np.int64(v) for v in _product_strides(a4, b4, r4, c4))
    sms = _multiprocessors(device)
    module = _rounded_module()
    team, wide = k > _TEAM_FROM, total >= 1 << 31
    if total <= _SETTLE_INSIDE_MAX and not team:
        kernels = (module.get_function("loom_rounded_certify_settle"), None)
    else:
        certify = "loom_rounded_certify64" if wide else "loom_rounded_certify32"
        settle = ("loom_rounded_settle_team" if team else "loom_rounded_settle") + ("64" if wide else "32")
        kernels = (module.get_function(certify), module.get_function(settle))
    # the settling's grid: a warp per listed entry (a block for long sums); the grid cannot know how
    # many (no host read), so it is one wave of the GPU (two blocks per multiprocessor: the kernel's
    # registers allow two) whose warps take turns; a larger grid costs a few microseconds when
    # nothing is listed
    settle_blocks = (min(total, 2 * sms),) if team else (min(-(-total // 8), 2 * sms),)
    return _RoundedPlan(sq_a, sq_b, math.prod(sq_a), math.prod(sq_b), batch, np.int64(k), strides,
                        tuple(np.int64(v) for v in (total, inner, m, n)), total > _ROOTS_FROM, wide,
                        (min(-(-total // 256), _CERTIFY_BLOCKS_PER_SM * sms),), settle_blocks, kernels)


def _c_strides(shape: tuple, itemsize: int) -> tuple:
    strides, step = [], itemsize
    for d in reversed(shape):
        strides.append(step)
        step *= d
    return tuple(reversed(strides))


def _strides4(shape: tuple, strides: tuple, itemsize: int, batch: tuple) -> tuple:
    """The element strides of _batched(x, batch) for x of this shape and strides (at most two batch
    axes: a view then, broadcast axes of stride 0)."""
    full = batch + shape[-2:]
    pad = len(full) - len(shape)
    out = [0 if i < pad or (shape[i - pad] == 1 and d != 1) else strides[i - pad] // itemsize
           for i, d in enumerate(full)]
    return tuple([0] * (4 - len(out)) + out)


def _dense(x):
    """x itself where its elements fill its memory exactly in some axis order (C- or F-ordered, or a
    transposed view of such), else a C-ordered copy: squares_copy's float64 copy takes its strides."""
    dims = sorted((s, d) for s, d in zip(x.strides, x.shape) if d != 1)
    expected = x.itemsize
    for stride, size in dims:
        if stride != expected:
            return cupy.ascontiguousarray(x)
        expected *= size
    return x
