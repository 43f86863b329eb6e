"""The attention of a decode step (one new token per sequence) in deterministic mode: one kernel with
the bits of loom/llm/decoder.py's array code, for the recorded deterministic decode step.

Per (sequence, query head), one block of THREADS threads (FEW_THREADS where such blocks are fewer than the
multiprocessors, MANY_THREADS where they are more than twice as many) does what the array code does with
the step's Q/K/V product, each operation with its bits:
1. the head's q and its key/value head's new k (qwen3: the per-head RMSNorm first, with exact.sum's sum
   of squares) through HF's rotate-half RoPE, x * cos + rotated * sin rounded per operation; the first
   query head of each key/value head writes k and v into the KV cache at the position, and every block
   uses its own copy of them (no block waits for another);
2. scores = q . k_j for the keys j = lo .. pos (lo from a sliding window), a thread per key, each the
   exact dot product rounded once (the rounded scheme: K = head_dim), times the float32 scale;
3. ops.softmax: the largest score (NaN wins), mathlib's exp of each score minus it, their exact sum
   (exact.sum's scheme over the n keys), each divided by it;
4. ctx_d = sum_j p_j v_jd, a block's threads / head_dim threads per d sharing the keys, with the scheme the dispatch
   table gives K = n keys: up to ROUNDED_KEYS, each rounded once (the rounded scheme: quant_exact's
   certification and settling, a thread's float64 sum and sum of magnitudes, then a compensated and an
   exact sum where those leave the rounding open); past it, up to MAX_KEYS, the slice scheme 2x1
   (exact._matmul_narrow's reference arithmetic: p's row in two integer slices of bits_a bits below its
   largest value, each d's values over the keys as integers of bits_b bits below their largest, the
   two integer sums exact in float64 whatever their order, combined and rounded once as the reference
   does). Rows or columns holding inf or NaN take IEEE's special value in both (exact's guard).
The probabilities stay in shared memory, sized by the graph for its cache (at most MAX_KEYS floats).
Where a batch's heads are too few blocks to fill the device, the paged kernel's split form cuts a long
window over several blocks with the same bits (see split_softmax_values): a head's parts wait for each
other at two barriers, so its grid (one block a multiprocessor at most: split_work) must be resident at
once, which holds for one launch at a time on the device (not beside another such launch on a
concurrent stream, which could hold the multiprocessors its parts need).
Where a batch has many sequences, paged_attention gives each (sequence, key/value head) one block for its
group of query heads instead (decode_exact_group.py: each cached key and value read once for the group;
the same bits; see _grouped for where).
`CUDABackend.decode.attention_exact` is this module. Capturable: sizes as arguments, no sync.
"""
from __future__ import annotations

from functools import cache
from typing import NamedTuple

import cupy
import numpy as np

from .. import Array
from .compile import OPTIONS
from .decode_exact_group import GROUP_MAX, GROUP_SOURCE, group_shared
from .decode_exact_split import SPLIT_SOURCE
from .exact_reduce import EXACT_ROW_SUM
from .exact_rounded import ROUNDED_DEVICE, _multiprocessors
from .fused import ROW_HELPERS
from .fused_exact import helpers
from .launch import OVERLAP_PROLOGUE, launch
from .quant import pointer
from .quant_exact import _MARK, SETTLE

THREADS = 256
# Where a step's (sequence, head) blocks are fewer than the multiprocessors (a few sequences), each block's
# serial share of the keys is what the step waits for: twice the threads halve it (SmolLM2-135M's shapes
# on an H100: decode after 1,000 tokens 1.5x, after 3,000 1.9x), where at 64 sequences they cost 9%.
FEW_THREADS = 512
# Where they are more than two a multiprocessor (many sequences), blocks of 256 threads (128 registers
# each) run in waves of two a multiprocessor; blocks of 64 threads (96 registers) ten, where the probabilities'
# shared memory allows (head_dim threads for larger heads), the same bits. H200, decode steps at 64 rows against
# blocks of 128 threads: Llama-3.2-1B 2,339 -> 2,277 us, SmolLM2-135M 1,554 -> 1,542, Qwen2-0.5B 2,167 -> 2,192.
MANY_THREADS = 64
ROUNDED_KEYS = 2048         # exact_dispatch.ROUNDED_MAX_K: p @ v over more keys takes the slice scheme
MAX_KEYS = 1 << 14          # 2^exact_dispatch.CHUNK_BITS: past it the slice scheme sums chunks of K in order
SPLIT_KEYS = 256            # keys a part of a split window takes (windows of more than twice this are split)
PHASES = 12                 # timestamps a block (benchmarks/attention_phases.py: LOOM_PHASE_CLOCK)
# A thread's value loads in flight at once in p v (a block at 300 keys spent ~7 of its ~13 us there, each thread
# waiting out a load round trip per VALUE_LOADS keys; the additions keep their order whatever this is)
VALUE_LOADS = 8
MAX_SPLITS = 16
# A block per (sequence, key/value head) for its group of query heads (decode_exact_group), reading each
# cached key and value once for the group, where those blocks are at least 1 / GROUP_FEWEST of the
# multiprocessors (below, a block a query head spreads the work wider). H200, the kernel alone, a block a
# query head -> grouped, us: 64 sequences x 1,000 keys, SmolLM2-135M's heads (9 over 3) 210 -> 117, Qwen2-0.5B's
# (14 over 2) 273 -> 100, Llama-3.2-1B's (32 over 8) 512 -> 258; at 24 keys 9.9 -> 10.2, 10.1 -> 11.0,
# 18.9 -> 10.8; one sequence (3 blocks) at 300 keys 14.5 -> 18.1. Blocks of GROUP_FEW_THREADS threads
# where they are fewer than the multiprocessors, GROUP_THREADS up to three a multiprocessor, then
# GROUP_MANY_THREADS.
GROUPED = True
GROUP_FEWEST = 3
GROUP_FEW_THREADS = 512
GROUP_THREADS = 256
GROUP_MANY_THREADS = 128
# Dynamic shared memory a grouped block may take with its probabilities; past it they go to device memory
# (group_work). H200, 64-row SmolLM2-135M steps over caches of 8,192 positions (111 KiB held): at position
# 16 1,749 us held against 1,564 in device memory, at position 1,000 5,709 against 4,957.
SHARED_MAX = 48 * 1024

_SOURCE = r"""
#define SLICES (THREADS / D)

// Phase timestamps for benchmarks/attention_phases.py, compiled in only where it defines LOOM_PHASE_CLOCK
// (that many slots): thread 0 of block b writes the global timer into slot b PHASES + k.
#ifdef LOOM_PHASE_CLOCK
__device__ unsigned long long loom_phase_clock[LOOM_PHASE_CLOCK];
__device__ __forceinline__ void phase(int k) {
    if (threadIdx.x == 0 && blockIdx.x * PHASES + k < LOOM_PHASE_CLOCK) {
        unsigned long long t;
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
        loom_phase_clock[blockIdx.x * PHASES + k] = t;
    }
}
#else
__device__ __forceinline__ void phase(int) {}
#endif

// Entry d of a head vector v after RoPE with the position's cos and sin rows
__device__ __forceinline__ float rope_at(const float* v, int d, const float* cs, const float* sn) {
    const float partner = d < D / 2 ? -v[d + D / 2] : v[d - D / 2];
    return v[d] * cs[d] + partner * sn[d];
}

// One head vector of the Q/K/V product into dst: (rms_norm with weight norm, then) RoPE; every thread calls.
__device__ void head_vector(const float* x, float* dst, float* tmp, const float* norm, const float* cs,
                            const float* sn, float eps, int dbits, Scratch& scratch) {
    float inv = 1.0f;
    if (norm != 0) {
        const float ms = exact_row_sum([&](long long d) { return x[d] * x[d]; }, D, dbits, scratch) / (float)D;
        inv = 1.0f / loom_sqrt(ms + eps);
    }
    for (int d = threadIdx.x; d < D; d += blockDim.x) tmp[d] = norm != 0 ? (x[d] * inv) * norm[d] : x[d];
    __syncthreads();
    for (int d = threadIdx.x; d < D; d += blockDim.x) dst[d] = rope_at(tmp, d, cs, sn);
    __syncthreads();
}

// Where key (or value) position t of the block's sequence and key/value head lives: a contiguous
// cache (Flat) or a paged one through the sequence's block table (Paged); as decode.py's.
struct Flat {
    float* base;
    __device__ float* at(long long t) const { return base + t * D; }
};
struct Paged {
    float* base; const long long* table; long long col; int block_size, KV, kv;   // entry j at table[j * col]
    __device__ float* at(long long t) const {       // (positions below 2^31: 32-bit division, a fraction of 64-bit's)
        const unsigned u = (unsigned)t, bs = (unsigned)block_size;
        return base + ((table[(long long)(u / bs) * col] * block_size + u % bs) * KV + kv) * D;
    }
};

// exact_rounded.error_factor(n), as the host computes it: (n + 2) 2^-53 (1 + 2^-20)
__device__ __forceinline__ double rounded_factor(long long n) {
    return __dmul_rn(__dmul_rn((double)(n + 2), 0x1p-53), 1.0 + 0x1p-20);
}

// The slice scheme's column maxima: this thread's largest |v| and whether one is not finite over its keys
// (each_value(f) calls f(j, v_jd) for them), left in top_s / bad_s [slice][d] for every slice to combine
template <class E>
__device__ __forceinline__ void value_column_top(E each_value, int d, int slice, float (*top_s)[D], bool (*bad_s)[D],
                                                 float& top, bool& bad) {
    top = 0.0f;
    bad = false;
    each_value([&](long long, float vj) {
        bad |= !isfinite(vj);
        top = fmaxf(top, fabsf(vj));
    });
    top_s[slice][d] = top;
    bad_s[slice][d] = bad;
    __syncthreads();
}

// The slice scheme's products: s = p 2^(bits_a - ea) (exact, or below 2^-126 where rint makes it 0 either
// way), hi = rint(s), lo = rint((s - hi) 2^bits_a) (lo_up = 2^bits_a); v as rint(v up_b); hi v and lo v added to
// g_hi and g_lo, integers whose sums stay below 2^53
__device__ __forceinline__ void slice_add(float pj, float vj, double up_a, double up_b, float lo_up, double& g_hi,
                                          double& g_lo) {
    const float s = (float)((double)pj * up_a);
    const float hi = rintf(s), lo = rintf((s - hi) * lo_up);
    const double vq = rint((double)vj * up_b);
    g_hi = __dadd_rn(g_hi, __dmul_rn((double)hi, vq));
    g_lo = __dadd_rn(g_lo, __dmul_rn((double)lo, vq));
}

// ((g_lo 2^-bits_a + g_hi) row_scale) col_scale in float64, the sum its one rounding, then to float32
__device__ __forceinline__ float slice_result(double g_hi, double g_lo, int bits_a, int ea, int bits_b, int eb) {
    return __double2float_rn(__dmul_rn(__dmul_rn(__dadd_rn(__dmul_rn(g_lo, ldexp(1.0, -bits_a)), g_hi),
                                                 ldexp(1.0, ea - bits_a)), ldexp(1.0, eb - bits_b)));
}

// ctx_d for n > ROUNDED_KEYS keys: exact._matmul_narrow's slice scheme 2x1 over K = n (narrow_bits(n)), a =
// the block's row p (p_s), b = column d of the values (v_at: the cache's keys lo .. lo + n - 2, then v_s, the
// new key's); every thread calls, slice 0 of each d writes.
template <class Addr, class At>
__device__ void slice_weighted_values(const float* p_s, const Addr values, long long lo, const float* v_s, At v_at,
                                      long long n, int d, int slice,
                                      float (*top_s)[D], bool (*bad_s)[D], double (*part_s)[D], double (*part_t)[D],
                                      float* red, float* out) {
    float top = 0.0f;                           // the row's largest |p| (non-finite ones flagged instead)
    bool bad = false;
    for (long long j = threadIdx.x; j < n; j += blockDim.x) {
        const float pj = p_s[j];
        bad |= !isfinite(pj);
        top = fmaxf(top, fabsf(pj));
    }
    const bool row_bad = __syncthreads_or(bad);
    const float a_top = block_max(top, red);
    // this thread's keys j = slice, slice + SLICES, ... with f(j, v_j) (the sums below are exact, or maxima:
    // any order gives their values): the cached ones FLIGHT loads at a time with no branch between them, so
    // that they are in flight together (a load behind a branch waits for the one before it), then the new one
    constexpr int FLIGHT = 8;
    auto each_value = [&](auto f) {
        long long j = slice;
        for (; j + (FLIGHT - 1) * SLICES < n - 1; j += FLIGHT * SLICES) {
            float vv[FLIGHT];
            #pragma unroll
            for (int u = 0; u < FLIGHT; ++u) vv[u] = __ldg(values.at(lo + j + u * SLICES) + d);
            #pragma unroll
            for (int u = 0; u < FLIGHT; ++u) f(j + u * SLICES, vv[u]);
        }
        for (; j < n - 1; j += SLICES) f(j, __ldg(values.at(lo + j) + d));
        if (j == n - 1) f(j, v_s[d]);
    };
    value_column_top(each_value, d, slice, top_s, bad_s, top, bad);      // column d's largest |v|
    for (int k = 0; k < SLICES; ++k) { top = fmaxf(top, top_s[k][d]); bad |= bad_s[k][d]; }
    const int log2k = 64 - __clzll(n - 1);
    const int bits_b = min(24, 53 - log2k - 12), bits_a = 53 - log2k - bits_b;
    int ea, eb;                                 // top < 2^e (0 for zero)
    frexpf(a_top, &ea);
    frexpf(top, &eb);
    const double up_a = ldexp(1.0, bits_a - ea), up_b = ldexp(1.0, bits_b - eb);
    const float lo_up = ldexpf(1.0f, bits_a);
    double g_hi = 0.0, g_lo = 0.0;
    if (!row_bad && !bad)
        each_value([&](long long j, float vj) { slice_add(p_s[j], vj, up_a, up_b, lo_up, g_hi, g_lo); });
    part_s[slice][d] = g_hi;
    part_t[slice][d] = g_lo;
    __syncthreads();
    if (slice != 0) return;
    for (int k = 1; k < SLICES; ++k) { g_hi = __dadd_rn(g_hi, part_s[k][d]); g_lo = __dadd_rn(g_lo, part_t[k][d]); }
    if (row_bad || bad) {
        *out = loom_special_pairs([&](long long j, float* a, float* c) { *a = p_s[j]; *c = v_at(j); }, n);
        return;
    }
    *out = slice_result(g_hi, g_lo, bits_a, ea, bits_b, eb);
}

"""

# the kernels, after the split form's device code (decode_exact_split.SPLIT_SOURCE)
_KERNELS = r"""
// (parts: split_work's workspace at this block's group, splits its parts a window may take, index this
// block's; splits 1: one block a head)
template <class Addr>
__device__ void exact_decode_attention(const float* qkv, Addr keys, Addr values, float* out, const float* cos_t,
                                       const float* sin_t, const float* norm, long long pos, int b, int h, int H,
                                       int KV, int window, float scale, float eps, int dbits, double dfactor,
                                       Parts parts = Parts{}, int splits = 1, int index = 0) {
    __shared__ __align__(16) float q_s[D], k_s[D], v_s[D], tmp[D];
    extern __shared__ float p_s[];              // the probabilities of the block's keys (the launch sizes it)
    __shared__ double part_s[SLICES][D], part_t[SLICES][D];
    __shared__ float top_s[SLICES][D];
    __shared__ bool bad_s[SLICES][D];
    __shared__ Scratch scratch;
    __shared__ float red[32];
    const int R = H / KV, kv = h / R;
    const long long lo = window > 0 && pos - window + 1 > 0 ? pos - window + 1 : 0, n = pos + 1 - lo;
    // a window of more than 2 SPLIT_KEYS keys, where splits allow, in parts of about SPLIT_KEYS or more
    long long count = 1, j0 = 0, j1 = n;
    if (splits > 1) {
        count = n > 2 * SPLIT_KEYS ? min((long long)splits, (n + SPLIT_KEYS - 1) / SPLIT_KEYS) : 1;
        const long long chunk = (n + count - 1) / count;
        count = (n + chunk - 1) / chunk;        // every part non-empty
        if (index >= count) return;
        j0 = index * chunk;
        j1 = min(n, j0 + chunk);
    }
    // Before the wait (launch): the keys and values earlier steps cached are requested into L1
    // (the position is this step's input, written before the graph starts)
    const long long cached = min(j1, n - 1) - j0;
    for (long long line = threadIdx.x; line < cached * D / 32; line += blockDim.x) {
        prefetch_l1(keys.at(lo + j0 + line / (D / 32)) + 32 * (line % (D / 32)));
        prefetch_l1(values.at(lo + j0 + line / (D / 32)) + 32 * (line % (D / 32)));
    }
    phase(0);
    wait_for_previous_kernel();
    phase(1);
    const float* x = qkv + (long long)b * (H + 2 * KV) * D;
    const float* cs = cos_t + pos * D;
    const float* sn = sin_t + pos * D;
    const bool writes = h % R == 0 && index == 0;      // (one block a key/value head writes the cache)
    if (norm == 0) {
        // without head norms q and k are RoPE'd straight from qkv, in the pass that copies v: one barrier where
        // head_vector's two passes take four (the same operations on the same values)
        for (int d = threadIdx.x; d < D; d += blockDim.x) {
            const float kd = rope_at(x + (H + kv) * D, d, cs, sn), vd = x[(H + KV + kv) * D + d];
            q_s[d] = rope_at(x + h * D, d, cs, sn);
            k_s[d] = kd;
            v_s[d] = vd;
            if (writes) { keys.at(pos)[d] = kd; values.at(pos)[d] = vd; }
        }
    } else {
        head_vector(x + h * D, q_s, tmp, norm + h * D, cs, sn, eps, dbits, scratch);
        head_vector(x + (H + kv) * D, k_s, tmp, norm + (H + kv) * D, cs, sn, eps, dbits, scratch);
        for (int d = threadIdx.x; d < D; d += blockDim.x) {
            v_s[d] = x[(H + KV + kv) * D + d];
            if (writes) { keys.at(pos)[d] = k_s[d]; values.at(pos)[d] = x[(H + KV + kv) * D + d]; }
        }
    }
    __syncthreads();
    phase(2);
    // scores, a thread per key (the new key from this block's copy), its row read as float4 all at once
    for (long long j = j0 + threadIdx.x; j < j1; j += blockDim.x) {
        const float* key = lo + j < pos ? keys.at(lo + j) : k_s;
        double s = 0.0, t = 0.0;
        #pragma unroll
        for (int d4 = 0; d4 < D / 4; ++d4) {
            const float4 k4 = ((const float4*)key)[d4];
            const float kv[4] = {k4.x, k4.y, k4.z, k4.w};
            #pragma unroll
            for (int u = 0; u < 4; ++u) {
                const double p = __dmul_rn((double)q_s[4 * d4 + u], (double)kv[u]);
                s = __dadd_rn(s, p);
                t = __dadd_rn(t, fabs(p));
            }
        }
        auto pair = [&](long long d, float* a, float* c) { *a = q_s[d]; *c = key[d]; };
        float v;
        if (!isfinite(t)) v = loom_special_pairs(pair, D);
        else if (!loom_finish_certified(s, t, dfactor, &v)) v = loom_settle_pairs(pair, D);
        p_s[j - j0] = v * scale;
    }
    __syncthreads();
    const int d = threadIdx.x % D, slice = threadIdx.x / D;
    auto v_at = [&](long long j) { return lo + j < pos ? values.at(lo + j)[d] : v_s[d]; };
    phase(3);
    if (count > 1) {
        split_softmax_values(p_s, values, lo, v_s, n, j0, j1, (int)count, (int)index, parts,
                             out + ((long long)b * H + h) * D + d, top_s, bad_s, part_s, part_t, red, scratch);
        return;
    }
    // ops.softmax over the n scores
    T peak = loom_neg_inf(0.0f);
    for (long long j = threadIdx.x; j < n; j += blockDim.x) peak = max_nan(peak, p_s[j]);
    peak = block_max(peak, red);
    for (long long j = threadIdx.x; j < n; j += blockDim.x) p_s[j] = loom_exp(p_s[j] - peak);
    __syncthreads();
    const int nbits = 53 - (n > 1 ? 64 - __clzll(n - 1) : 0);
    phase(4);
    const float total = exact_row_sum([&](long long j) { return p_s[j]; }, n, nbits, scratch);
    __syncthreads();
    for (long long j = threadIdx.x; j < n; j += blockDim.x) p_s[j] = p_s[j] / total;
    __syncthreads();
    phase(5);
    // ctx_d = sum_j p_j v_jd: SLICES threads per d, keys j = slice, slice + SLICES, ...
    if (n > ROUNDED_KEYS) {
        slice_weighted_values(p_s, values, lo, v_s, v_at, n, d, slice, top_s, bad_s, part_s, part_t, red,
                              out + ((long long)b * H + h) * D + d);
        phase(6);
        return;
    }
    double s = 0.0, t = 0.0;
    auto add = [&](float pj, float vj) {
        const double p = __dmul_rn((double)pj, (double)vj);
        s = __dadd_rn(s, p);
        t = __dadd_rn(t, fabs(p));
    };
    long long j = slice;                        // the cached keys, VALUE_LOADS loads in flight, then the new one
    for (; j + (VALUE_LOADS - 1) * SLICES < n - 1; j += VALUE_LOADS * SLICES) {
        float vv[VALUE_LOADS];
        #pragma unroll
        for (int u = 0; u < VALUE_LOADS; ++u) vv[u] = __ldg(values.at(lo + j + u * SLICES) + d);
        #pragma unroll
        for (int u = 0; u < VALUE_LOADS; ++u) add(p_s[j + u * SLICES], vv[u]);
    }
    for (; j < n - 1; j += SLICES) add(p_s[j], __ldg(values.at(lo + j) + d));
    if (slice == 0) add(p_s[n - 1], v_s[d]);
    part_s[slice][d] = s;
    part_t[slice][d] = t;
    __shared__ short open[D];
    __shared__ int opened;
    if (threadIdx.x == 0) opened = 0;
    __syncthreads();
    float* row = out + ((long long)b * H + h) * D;
    if (slice == 0) {
        for (int k = 1; k < SLICES; ++k) { s = __dadd_rn(s, part_s[k][d]); t = __dadd_rn(t, part_t[k][d]); }
        const double factor = rounded_factor(n);
        float v;
        if (!isfinite(t)) open[atomicAdd(&opened, 1)] = (short)(d | 0x8000);
        else if (loom_finish_certified(s, t, factor, &v)) row[d] = v;
        else open[atomicAdd(&opened, 1)] = (short)d;
    }
    __syncthreads();
    settle_open(open, opened, n, [&](long long j, int dd, float* a, float* c) {
        *a = p_s[j];
        *c = lo + j < pos ? values.at(lo + j)[dd] : v_s[dd];
    }, row);
    phase(6);
}

// qkv [B, (H + 2 KV) D]; out [B, H * D]; cache_k/v: layer views, element (b, kv, t, d) at
// b * batch_stride + (kv * max_len + t) * D + d; cos, sin [positions, D]; norm [H + KV, D] or null;
// every sequence at position *pos_p
extern "C" __global__ void __launch_bounds__(THREADS) loom_exact_decode_attention(
        const float* qkv, float* cache_k, float* cache_v, float* out, const float* cos_t, const float* sin_t,
        const float* norm, const long long* pos_p, int H, int KV, int max_len, long long batch_stride, int window,
        float scale, float eps, int dbits, double dfactor) {
    const int b = blockIdx.x / H, h = blockIdx.x % H, kv = h / (H / KV);
    const long long base = b * batch_stride + (long long)kv * max_len * D;
    exact_decode_attention(qkv, Flat{cache_k + base}, Flat{cache_v + base}, out, cos_t, sin_t, norm, *pos_p, b, h,
                           H, KV, window, scale, eps, dbits, dfactor);
}

// The same over a paged cache [slots, KV, D]: sequence b at position pos[b], its block table entry j at
// tables[b * row + j * col]
extern "C" __global__ void __launch_bounds__(THREADS) loom_exact_paged_decode_attention(
        const float* qkv, float* cache_k, float* cache_v, float* out, const float* cos_t, const float* sin_t,
        const float* norm, const long long* pos, const long long* tables, long long row, long long col, int block_size,
        int H, int KV, int window, float scale, float eps, int dbits, double dfactor) {
    const int b = blockIdx.x / H, h = blockIdx.x % H, kv = h / (H / KV);
    const long long* table = tables + (long long)b * row;
    exact_decode_attention(qkv, Paged{cache_k, table, col, block_size, KV, kv},
                           Paged{cache_v, table, col, block_size, KV, kv},
                           out, cos_t, sin_t, norm, pos[b], b, h, H, KV, window, scale, eps, dbits, dfactor);
}

// ... with windows of more than 2 SPLIT_KEYS keys in up to `splits` parts, a block each: block
// index * B H + g is part `index` of (sequence, head) g = b H + h; split_work's workspace p [B H, cap],
// stats [B H, splits, 3], vtop [B H, splits, D], sums [B H, splits, 2, D], counters [B H]
extern "C" __global__ void __launch_bounds__(THREADS) loom_exact_paged_decode_attention_split(
        const float* qkv, float* cache_k, float* cache_v, float* out, const float* cos_t, const float* sin_t,
        const float* norm, const long long* pos, const long long* tables, long long row, long long col, int block_size,
        int H, int KV, int window, float scale, float eps, int dbits, double dfactor, float* p, double* stats,
        float* vtop, double* sums, unsigned* counters, int splits, long long cap) {
    const int groups = gridDim.x / splits, g = blockIdx.x % groups, index = blockIdx.x / groups;
    const int b = g / H, h = g % H, kv = h / (H / KV);
    const long long* table = tables + (long long)b * row;
    const Parts parts{p + g * cap, stats + (long long)g * splits * 3, vtop + (long long)g * splits * D,
                      sums + (long long)g * splits * 2 * D, counters + g};
    exact_decode_attention(qkv, Paged{cache_k, table, col, block_size, KV, kv},
                           Paged{cache_v, table, col, block_size, KV, kv},
                           out, cos_t, sin_t, norm, pos[b], b, h, H, KV, window, scale, eps, dbits, dfactor,
                           parts, splits, index);
}
"""


def source(head_dim: int, threads: int, group: int = 0) -> str:
    """The kernels' CUDA source for heads of head_dim and blocks of `threads`; with group, the grouped
    kernel for key/value heads of `group` query heads as well (decode_exact_group)."""
    head = (f"typedef float T;\n#define D {head_dim}\n#define THREADS {threads}\n#define ROUNDED_KEYS {ROUNDED_KEYS}\n"
            f"#define SPLIT_KEYS {SPLIT_KEYS}\n#define PHASES {PHASES}\n#define VALUE_LOADS {VALUE_LOADS}\n")
    grouped = f"#define GROUP {group}\n" + GROUP_SOURCE if group else ""
    return (head + helpers() + ROW_HELPERS + EXACT_ROW_SUM + ROUNDED_DEVICE + _MARK + SETTLE + OVERLAP_PROLOGUE
            + _SOURCE + SPLIT_SOURCE + _KERNELS + grouped)


COMPILE = OPTIONS + ("-std=c++17",)


@cache
def _module(head_dim: int, threads: int, group: int = 0):
    return cupy.RawModule(code=source(head_dim, threads, group), options=COMPILE)


STATIC_SHARED = 16 * 1024   # above the kernels' own shared arrays (12.4-13.4 KiB at 512 threads)


def unsupported(head_dim: int, max_len: int) -> str | None:
    """Why the kernels cannot take a model's heads, or caches of max_len positions (a step runs them below
    MAX_KEYS; their probabilities take 4 bytes of shared memory a key), or None where they can. (Their
    scores' products are the rounded scheme's: the caller checks that exact_dispatch gives it to K =
    head_dim.) A block's threads split evenly over head_dim (SLICES = threads / head_dim)."""
    if head_dim % 32 or THREADS % head_dim or FEW_THREADS % head_dim or max(MANY_THREADS, head_dim) % head_dim:
        return f"head_dim {head_dim} is not 32, 64, 128 or 256 (the attention kernel's blocks split over it)"
    need = _shared(max_len) + STATIC_SHARED
    limit = cupy.cuda.Device().attributes["MaxSharedMemoryPerBlockOptin"]
    if need > limit:
        return (f"a cache of {max_len} positions needs {need // 1024} KiB of shared memory a block in the "
                f"attention kernel, more than this GPU's {limit // 1024} KiB")
    return None


def _shared(max_keys: int) -> int:
    """The probabilities' dynamic shared memory for caches of max_keys positions (at most MAX_KEYS: a step past
    them does not run these kernels)."""
    return 4 * max(1, min(max_keys, MAX_KEYS))


def _kernel(name: str, head_dim: int, blocks: int) -> tuple:
    """(the kernel, its threads) for a launch of `blocks` (sequence, head) blocks."""
    sms = _multiprocessors(cupy.cuda.Device().id)
    threads = FEW_THREADS if blocks < sms else THREADS if blocks <= 2 * sms else max(MANY_THREADS, head_dim)
    return _module(head_dim, threads).get_function(name), threads


def _grouped(batch: int, heads: int, kv_heads: int, head_dim: int, max_keys: int) -> tuple | None:
    """(the grouped kernel, its threads, the probabilities' row stride, its dynamic shared memory, whether the
    probabilities are held in it) for a paged launch where a key/value head's query heads take one block
    (decode_exact_group), or None where they do not: GROUPED off, fewer than two or more than GROUP_MAX heads a
    group, or too few blocks (GROUP_FEWEST)."""
    group, blocks = heads // kv_heads, batch * kv_heads
    sms = _multiprocessors(cupy.cuda.Device().id)
    if not GROUPED or group < 2 or group > GROUP_MAX or blocks * GROUP_FEWEST < sms:
        return None
    threads = GROUP_FEW_THREADS if blocks < sms else GROUP_THREADS if blocks < 3 * sms else GROUP_MANY_THREADS
    threads = max(threads, head_dim)
    cap = max(1, min(max_keys, MAX_KEYS))
    held = group_shared(group, head_dim, threads, cap, True) <= SHARED_MAX
    kernel = _module(head_dim, threads, group).get_function("loom_exact_paged_decode_attention_group")
    return kernel, threads, cap, group_shared(group, head_dim, threads, cap, held), held


def group_work(batch: int, heads: int, kv_heads: int, head_dim: int, max_keys: int) -> Array | None:
    """The grouped kernel's probabilities in device memory ([batch heads, max_keys] floats) where paged_attention
    takes it for these sizes and they do not fit its shared memory, else None. A launch uses it alone: one per
    recorded graph (or stream)."""
    grouped = _grouped(batch, heads, kv_heads, head_dim, max_keys)
    if grouped is None or grouped[4]:
        return None
    return cupy.empty(batch * heads * grouped[2], dtype=np.float32)


def attention(qkv: Array, cache_k: Array, cache_v: Array, out: Array, cos: Array, sin: Array, norm: Array | None,
              pos: Array, heads: int, window: int | None, scale: float, eps: float, factor: float,
              overlap: bool = False) -> None:
    """decode.attention's operation (same arguments) with deterministic mode's bits; the caller has
    checked `unsupported` (for cache_k's max_len); `factor` is exact_rounded.error_factor(head_dim)."""
    B, kv_heads, max_len, D = cache_k.shape
    kernel, threads = _kernel("loom_exact_decode_attention", D, B * heads)
    launch(kernel, B * heads, threads,
           (qkv, cache_k, cache_v, out, cos, sin, pointer(norm), pos, np.int32(heads), np.int32(kv_heads),
            np.int32(max_len), np.int64(cache_k.strides[0] // 4), np.int32(window or 0), np.float32(scale),
            np.float32(eps), np.int32(53 - max(0, (D - 1).bit_length())),
            np.float64(factor)), overlap, shared=_shared(max_len))


class SplitWork(NamedTuple):
    """The workspace of paged_attention's split windows (see loom_exact_paged_decode_attention_split):
    probabilities [blocks, cap], each part's statistics [blocks, splits, 3], largest |v| [blocks, splits, D]
    and sums [blocks, splits, 2, D], and a counter per (sequence, head) block, zero between launches."""
    splits: int
    p: Array
    stats: Array
    vtop: Array
    sums: Array
    counters: Array


def split_work(batch: int, heads: int, head_dim: int, max_keys: int, splits: int | None = None) -> SplitWork | None:
    """The workspace for paged_attention over `batch` sequences of `heads` query heads and windows of at most
    max_keys keys, None where the batch's heads are blocks enough to fill the device. splits: parts a long
    window is cut into, by default as many as take the blocks to one a multiprocessor (up to MAX_SPLITS):
    a group's parts wait for each other, so the whole grid must be resident at once. A launch uses it
    alone: one per recorded graph (or stream)."""
    blocks = batch * heads
    sms = _multiprocessors(cupy.cuda.Device().id)
    if splits is None:
        splits = min(MAX_SPLITS, sms // blocks)
    if splits <= 1:
        return None
    if blocks * splits > sms:
        raise ValueError(f"split_work: {blocks} blocks in {splits} parts exceed the {sms} multiprocessors "
                         "(a group's parts must all be resident)")
    cap = max(1, min(max_keys, MAX_KEYS))
    return SplitWork(splits, cupy.empty((blocks, cap), dtype=np.float32),
                     cupy.empty((blocks, splits, 3), dtype=np.float64),
                     cupy.empty((blocks, splits, head_dim), dtype=np.float32),
                     cupy.empty((blocks, splits, 2, head_dim), dtype=np.float64), cupy.zeros(blocks, dtype=np.uint32))


def paged_attention(qkv: Array, cache_k: Array, cache_v: Array, out: Array, cos: Array, sin: Array,
                    norm: Array | None, pos: Array, tables: Array, block_size: int, heads: int, window: int | None,
                    scale: float, eps: float, factor: float, overlap: bool = False, max_keys: int = MAX_KEYS,
                    split: SplitWork | None = None, group_p: Array | None = None) -> None:
    """decode.paged_attention's operation with deterministic mode's bits (out float32 only) for sequences
    at positions below max_keys (at most MAX_KEYS: the caller keeps longer ones off this kernel), which
    sizes the probabilities' shared memory. split: split_work's workspace for these sizes, to cut windows
    of more than 2 SPLIT_KEYS keys over several blocks, with the same bits (None: one block a head, or a block
    a key/value head where _grouped takes it). group_p: group_work's workspace for these sizes, where it gives one."""
    _, kv_heads, D = cache_k.shape
    B = tables.shape[0]
    row, col = (s // tables.itemsize for s in tables.strides)
    args = (qkv, cache_k, cache_v, out, cos, sin, pointer(norm), pos, tables, np.int64(row), np.int64(col),
            np.int32(block_size), np.int32(heads), np.int32(kv_heads), np.int32(window or 0), np.float32(scale),
            np.float32(eps), np.int32(53 - max(0, (D - 1).bit_length())), np.float64(factor))
    if split is None:
        grouped = _grouped(B, heads, kv_heads, D, max_keys)
        if grouped is not None:
            kernel, threads, cap, shared, held = grouped
            if not held and (group_p is None or group_p.size < B * heads * cap):
                raise ValueError(f"paged_attention: {B} sequences of {heads} heads over {cap} keys take group_work's "
                                 f"workspace of {B * heads * cap} floats; given "
                                 f"{'none' if group_p is None else group_p.size}")
            launch(kernel, B * kv_heads, threads, args + (np.int64(cap), pointer(None if held else group_p)), overlap,
                   shared=shared)
            return
        kernel, threads = _kernel("loom_exact_paged_decode_attention", D, B * heads)
        launch(kernel, B * heads, threads, args, overlap, shared=_shared(max_keys))
        return
    splits, cap = split.splits, split.p.shape[1]
    if split.p.shape[0] != B * heads or split.vtop.shape != (B * heads, splits, D) or cap < min(max_keys, MAX_KEYS):
        raise ValueError(f"paged_attention: a split workspace for {split.p.shape[0]} blocks of {split.vtop.shape[2]} "
                         f"and {cap} keys; these sizes take {B * heads}, {D} and {min(max_keys, MAX_KEYS)}")
    kernel, threads = _kernel("loom_exact_paged_decode_attention_split", D, B * heads * splits)
    # a block holds the probabilities of a part (or of a window too short to split)
    part = max(2 * SPLIT_KEYS, -(-min(max_keys, MAX_KEYS) // splits))
    launch(kernel, B * heads * splits, threads,
           args + (split.p, split.stats, split.vtop, split.sums, split.counters, np.int32(splits), np.int64(cap)),
           overlap, shared=_shared(part))
