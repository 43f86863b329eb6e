"""A batch of rows sampled in one launch: loom/llm/sample_rows.py's tokens (generate.choose's, row for row,
in deterministic mode) from a kernel with a block a row, where the array version takes ~120 launches and
two whole-vocabulary sorts (about 1.8 ms a step at 64 rows of 49,152 logits on an H200).

Each stage is the array version's, in its float32 and float64 operations and order:
- the repetition penalty (x * p below zero, x / p above, on the row's seen tokens);
- the greedy token: the first maximum, a NaN first (np.argmax), token 0 where every logit is -inf;
- the logits over the temperature (float32 division; a row at temperature 0 takes its greedy token);
- top-k: the k-th largest scaled logit (the value at ascending position V - k, NaN sorting last) found
  by a radix select over the values' order-preserving bit patterns, where 0 < k < V;
- the masked softmaxes as ops.softmax computes them in deterministic mode (loom_exp, exact.sum's
  integer sum rounded once, a float32 division), in both modes;
- top-p: the masses rint(p 2^B) (a non-finite p none), and the smallest mass v whose masses at most v
  add to more than floor((1 - top_p) 2^B), the largest where none does: the ascending running sum's
  cut without a sort (a radix select whose buckets hold exact int64 sums);
- min-p: the kept probabilities at least min_p times the largest;
- the draw: the first token whose cumulative mass exceeds min(floor(u total), total - 1), by a block
  scan of exact int64 sums; the greedy token where a kept probability is not finite or nothing has mass.
Entries of a row live in global scratch (scaled logits, exponentials, kept flags): 9 bytes a logit.
"""
from __future__ import annotations

from functools import cache

import cupy
import numpy as np

from ...errors import ShapeError
from .. import Array
from .compile import OPTIONS
from .exact_reduce import EXACT_ROW_SUM
from .fused import ROW_HELPERS
from .fused_exact import helpers
from .launch import launch

THREADS = 1024
# skip's bits: the stages no row uses (sample_rows.unused_stages)
FLAGS = {"penalty": 1, "top_k": 2, "top_p": 4, "min_p": 8, "draw": 16}

_SOURCE = r"""
struct Select { long long hist[256]; long long below; int digit; };

// The smallest key v of keys(j) (j < n; keys below 2^key_bits, key_bits a multiple of 8) such that the
// weights of the keys at most v add to more than target (weights >= 0, their sums exact in int64), or
// found = false where none does. Radix select from the top digit: each pass adds the weights of the
// keys in the current range by their next digit; a thread's run of equal digits is one atomic.
template <class K, class W>
__device__ unsigned long long select_key(K key, W weight, long long n, long long target, int key_bits, Select& s,
                                         bool* found) {
    unsigned long long prefix = 0;
    long long below = 0;
    for (int shift = key_bits - 8; shift >= 0; shift -= 8) {
        for (int d = threadIdx.x; d < 256; d += blockDim.x) s.hist[d] = 0;
        __syncthreads();
        int run = -1;
        long long acc = 0;
        for (long long j = threadIdx.x; j < n; j += blockDim.x) {
            const unsigned long long k = key(j);
            if ((k >> (shift + 8)) != (prefix >> (shift + 8))) continue;
            const int d = (int)((k >> shift) & 255u);
            if (d != run) {
                if (run >= 0 && acc) atomicAdd((unsigned long long*)&s.hist[run], (unsigned long long)acc);
                run = d;
                acc = 0;
            }
            acc += weight(j);
        }
        if (run >= 0 && acc) atomicAdd((unsigned long long*)&s.hist[run], (unsigned long long)acc);
        __syncthreads();
        if (threadIdx.x == 0) {
            long long cum = below;
            int digit = -1;
            for (int d = 0; d < 256; ++d) {
                if (cum + s.hist[d] > target) { digit = d; break; }
                cum += s.hist[d];
            }
            s.digit = digit;
            s.below = cum;
        }
        __syncthreads();
        const int digit = s.digit;
        below = s.below;
        __syncthreads();
        if (digit < 0) { *found = false; return 0; }
        prefix |= (unsigned long long)digit << shift;
    }
    *found = true;
    return prefix;
}

// Whether (v1, j1) comes before (v2, j2) in np.argmax's choice: an index < 0 is none; a NaN before a number;
// a larger number first; among equals (or NaNs) the smaller index
__device__ __forceinline__ bool first(float v1, long long j1, float v2, long long j2) {
    if (j1 < 0) return false;
    if (j2 < 0) return true;
    const bool n1 = v1 != v1, n2 = v2 != v2;
    if (n1 != n2) return n1;
    if (!n1 && v1 != v2) return v1 > v2;
    return j1 < j2;
}

// float32 x as a key that orders as np.sort orders: -inf .. -0, +0 .. +inf, then every NaN
__device__ __forceinline__ unsigned long long order_key(float x) {
    const unsigned u = __float_as_uint(x);
    if (x != x) return 0xFFFFFFFFull;
    return (u & 0x80000000u) ? (unsigned long long)(~u) : (unsigned long long)(u | 0x80000000u);
}
__device__ __forceinline__ float key_value(unsigned long long k) {
    if (k == 0xFFFFFFFFull) return __uint_as_float(0x7FC00000u);
    const unsigned u = (unsigned)k;
    return (u & 0x80000000u) ? __uint_as_float(u & 0x7FFFFFFFu) : __uint_as_float(~u);
}

// ops.softmax(scaled, mask=keep)'s exponentials into e and its divisor (deterministic mode's bits)
__device__ float masked_exponentials(const float* x, const unsigned char* keep, float* e, long long n, int bits,
                                     Scratch& s, float* red) {
    float peak = loom_neg_inf(0.0f);
    int any = 0;
    for (long long j = threadIdx.x; j < n; j += blockDim.x)
        if (keep[j]) { peak = max_nan(peak, x[j]); any = 1; }
    peak = block_max(peak, red);
    any = __syncthreads_or(any);
    if (!any) peak = 0.0f;
    for (long long j = threadIdx.x; j < n; j += blockDim.x) e[j] = keep[j] ? loom_exp(x[j] - peak) : 0.0f;
    const float total = exact_row_sum([&](long long j) { return e[j]; }, n, bits, s);   // this thread's writes
    return any ? total : 1.0f;
}

__device__ __forceinline__ long long mass_of(float p, double up) {
    return isfinite(p) ? (long long)rint((double)p * up) : 0ll;
}

extern "C" __global__ void __launch_bounds__(1024) loom_sample_rows(
        const float* logits, unsigned char* seen, const float* temperature, const long long* top_k,
        const double* top_p, const float* min_p, const float* penalty, const double* u, long long* tokens,
        float* scaled_buf, float* e_buf, unsigned char* keep_buf, long long n, int skip, int bits, int mark_seen) {
    __shared__ Scratch s;
    __shared__ float red[32];
    __shared__ Select sel;
    __shared__ long long scan[1024];
    __shared__ long long best_at;
    __shared__ float best_value;
    const long long r = blockIdx.x;
    const float* x = logits + r * n;
    float* scaled = scaled_buf + r * n;
    float* e = e_buf + r * n;
    unsigned char* keep = keep_buf + r * n;
    unsigned char* seen_r = seen + r * n;
    const float t = temperature[r], pen = penalty[r];
    const bool penalize = !(skip & 1);
    auto logit = [&](long long j) {
        const float v = x[j];
        return penalize && seen_r[j] ? (v < 0.0f ? v * pen : v / pen) : v;
    };
    // the greedy token: the first NaN, else the first maximum (np.argmax), 0 where all are -inf
    float bv = loom_neg_inf(0.0f);
    long long bj = -1;
    for (long long j = threadIdx.x; j < n; j += blockDim.x) {
        const float v = logit(j);
        if (bj < 0 || (v != v && bv == bv) || v > bv) { bv = v; bj = j; }
    }
    // the block's first among equals: (value, index) pairs combined by `first`, an associative choice
    for (int o = 16; o; o >>= 1) {
        const float ov = __shfl_xor_sync(0xFFFFFFFFu, bv, o);
        const long long oj = __shfl_xor_sync(0xFFFFFFFFu, bj, o);
        if (first(ov, oj, bv, bj)) { bv = ov; bj = oj; }
    }
    __shared__ float warp_v[32];
    __shared__ long long warp_j[32];
    if ((threadIdx.x & 31) == 0) { warp_v[threadIdx.x >> 5] = bv; warp_j[threadIdx.x >> 5] = bj; }
    __syncthreads();
    if (threadIdx.x < 32) {
        const bool has = threadIdx.x < (blockDim.x >> 5);
        bv = has ? warp_v[threadIdx.x] : 0.0f;
        bj = has ? warp_j[threadIdx.x] : -1;
        for (int o = 16; o; o >>= 1) {
            const float ov = __shfl_xor_sync(0xFFFFFFFFu, bv, o);
            const long long oj = __shfl_xor_sync(0xFFFFFFFFu, bj, o);
            if (first(ov, oj, bv, bj)) { bv = ov; bj = oj; }
        }
        if (threadIdx.x == 0) { best_at = bj; best_value = bv; }
    }
    __syncthreads();
    long long greedy = best_at;
    if (best_value == loom_neg_inf(0.0f)) greedy = 0;
    long long token = greedy;
    if (!(skip & 16) && t != 0.0f) {
        const float tt = t;
        for (long long j = threadIdx.x; j < n; j += blockDim.x) { scaled[j] = logit(j) / tt; keep[j] = 1; }
        __syncthreads();
        bool found;
        const long long k = top_k[r];
        if (!(skip & 2) && k > 0 && k < n) {        // the k-th largest: ascending position n - k
            const unsigned long long kk = select_key([&](long long j) { return order_key(scaled[j]); },
                                                     [&](long long) { return 1ll; }, n, n - k, 32, sel, &found);
            const float kth = key_value(kk);
            for (long long j = threadIdx.x; j < n; j += blockDim.x) keep[j] &= (unsigned char)(scaled[j] >= kth);
            __syncthreads();
        }
        const double up = ldexp(1.0, bits);
        if (!(skip & 4) && top_p[r] < 1.0) {
            const float denom = masked_exponentials(scaled, keep, e, n, bits, s, red);
            auto mass = [&](long long j) { return mass_of(e[j] / denom, up); };
            const long long cut = (long long)floor((1.0 - top_p[r]) * up);
            unsigned long long floor_mass = select_key([&](long long j) { return (unsigned long long)mass(j); },
                                                       mass, n, cut, 56, sel, &found);
            if (!found) {                           // nothing past the cut: the largest mass
                long long top = 0;
                for (long long j = threadIdx.x; j < n; j += blockDim.x) top = max(top, mass(j));
                top = block_reduce(top, scan, 0ll, MaxOp());
                floor_mass = (unsigned long long)top;
            }
            __syncthreads();
            for (long long j = threadIdx.x; j < n; j += blockDim.x)
                keep[j] &= (unsigned char)(mass(j) >= (long long)floor_mass);
            __syncthreads();
        }
        if (!(skip & 8) && min_p[r] > 0.0f) {
            const float denom = masked_exponentials(scaled, keep, e, n, bits, s, red);
            float top = loom_neg_inf(0.0f);
            for (long long j = threadIdx.x; j < n; j += blockDim.x) top = max_nan(top, e[j] / denom);
            top = block_max(top, red);
            const float bar = min_p[r] * top;
            for (long long j = threadIdx.x; j < n; j += blockDim.x) keep[j] &= (unsigned char)(e[j] / denom >= bar);
            __syncthreads();
        }
        // the draw over contiguous stretches of the row, a thread each
        const float denom = masked_exponentials(scaled, keep, e, n, bits, s, red);
        __syncthreads();                            // (the stretches below are other threads' writes)
        const long long per = (n + blockDim.x - 1) / blockDim.x, j0 = min(n, per * threadIdx.x), j1 = min(n, j0 + per);
        long long own = 0;
        int finite = 1;
        for (long long j = j0; j < j1; ++j) {
            const float p = e[j] / denom;
            finite &= isfinite(p);
            own += mass_of(p, up);
        }
        finite = __syncthreads_and(finite);
        scan[threadIdx.x] = own;
        __syncthreads();
        for (int off = 1; off < (int)blockDim.x; off <<= 1) {      // inclusive scan (exact integers)
            const long long add = threadIdx.x >= (unsigned)off ? scan[threadIdx.x - off] : 0ll;
            __syncthreads();
            scan[threadIdx.x] += add;
            __syncthreads();
        }
        const long long total = scan[blockDim.x - 1], before = scan[threadIdx.x] - own;
        if (finite && total > 0) {
            const long long target = min((long long)floor(u[r] * (double)total), total - 1);
            if (threadIdx.x == 0) best_at = -1;
            __syncthreads();
            if (before <= target && target < before + own) {
                long long c = before;
                for (long long j = j0; j < j1; ++j) {
                    c += mass_of(e[j] / denom, up);
                    if (c > target) { best_at = j; break; }
                }
            }
            __syncthreads();
            token = best_at;
        }
    }
    if (threadIdx.x == 0) {
        tokens[r] = token;
        if (mark_seen) seen_r[token] = 1;
    }
}
"""


@cache
def _kernel():
    source = "typedef float T;\n" + helpers() + ROW_HELPERS + EXACT_ROW_SUM + _SOURCE
    return cupy.RawModule(code=source, options=OPTIONS + ("-std=c++17",)).get_function("loom_sample_rows")


def sample_rows(logits: Array, seen: Array, temperature: Array, top_k: Array, top_p: Array, min_p: Array,
                penalty: Array, u: Array, skip: frozenset = frozenset(), mark_seen: bool = False) -> Array:
    """int64 [R] tokens for float32 logits [R, V] (C-contiguous), as loom.llm.sample_rows.sample_rows gives
    them in deterministic mode (no `allowed` mask): seen bool [R, V] (C-contiguous; with mark_seen each
    row's token is marked there), temperature, min_p, penalty float32 [R], top_k int64 [R], top_p and u
    float64 [R] (sample_rows' dtypes); skip: the stages no row uses (sample_rows.unused_stages)."""
    rows, n = logits.shape
    tokens = cupy.empty(rows, dtype=np.int64)
    if rows == 0:
        return tokens
    scaled, e = cupy.empty((rows, n), dtype=np.float32), cupy.empty((rows, n), dtype=np.float32)
    keep = cupy.empty((rows, n), dtype=np.uint8)
    flags = sum(bit for name, bit in FLAGS.items() if name in skip)
    bits = 53 - max(0, (n - 1).bit_length())            # exact.sum's and generate.masses' B for rows of n
    if seen.dtype != np.bool_ or seen.shape != logits.shape or not seen.flags.c_contiguous:
        raise ShapeError(f"sampling: seen must be C-contiguous bool {list(logits.shape)}, got {seen.dtype} "
                         f"{list(seen.shape)}")
    f32, f64 = np.float32, np.float64
    settings = [cupy.ascontiguousarray(a, dtype=d) for a, d in ((logits, f32), (temperature, f32), (top_k, np.int64),
                                                              (top_p, f64), (min_p, f32), (penalty, f32), (u, f64))]
    x, temperature, top_k, top_p, min_p, penalty, u = settings
    args = (x, seen.view(np.uint8), temperature, top_k, top_p, min_p, penalty, u, tokens, scaled, e, keep,
            np.int64(n), np.int32(flags), np.int32(bits), np.int32(mark_seen))
    launch(_kernel(), rows, THREADS, args, False)
    return tokens
