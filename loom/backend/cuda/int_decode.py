"""Spec 5's integer attention for the recorded decode step (branch wip/spec5-attention): the scheme of
loom/kernels/exact/attention.py, its bits, for one new token per sequence over a paged KV cache, with the
interface of decode_exact (paged_graph takes this module as its attention where decoder.INTEGER_ATTENTION is on).

A block per (sequence, GROUP query heads): a key/value head's group where the batch's (sequence, key/value head)
blocks fill the device (each cached row read once for the group), else one query head (heads_a_block: more
blocks, each a shorter chain). KT threads (256 for head_dim up to 64, else 64):
1. the heads' q and the new k (qwen3: each after its RMSNorm) through RoPE, and v, as decode_exact's head_vector
   makes them (spec 4's bits, which spec 5 keeps); the key/value head's first block writes k and v into the cache;
2. each q row's exponent and integers (a warp a row: fixed.row_exponents, to_integers), held as byte pairs for
   dp2a;
3. pass 1, tiles of KT keys, TPK lanes a key (about 16 values each, lanes_per_key), rounds of KT / TPK keys, each
   lane's part of the key and value rows read into registers (the first round's before the wait for the previous
   kernel, the later rounds' prefetched into L1 then): the row's exponent from an
   integer maximum of its bits (the CPU's _row_exponent), its integers (one fma each for a finite row), the GROUP
   exact integer scores (dp2a: the key's int16 pairs against q's low and high bytes, exact in int32 for
   head_dim <= 128; the lanes' partial sums joined by shuffles) as S 2^(ek - 30); each head's largest, the
   values' largest exponent E and the inf/NaN flag, reduced over the block;
4. pass 2, the tiles again (a share of one tile is not read again: its scores, values' integers and exponents
   were kept in shared memory in pass 1): per key and head
   d = (max - S 2^(ek - 30)) 2^eq scale (float64: the CPU's two operations, scaling by 2^eq exact),
   p = exp_fixed(d) (the table in shared memory), its int64 sum, w = p with v's scale folded in at P_BITS bits;
   the value's integers into shared memory; then each (head, d) entry adds its tile's w v in int64 (small
   blocks: over WV_SLICES slices of the keys, added after);
5. each entry's quotient num / den scaled by 2^(E - P_BITS - 15 + 31), rounded to float32 (NaN where the row
   or an allowed key or value holds inf or NaN).
Where a batch's blocks are too few to fill the device (split_work), steps past 2 SPLIT_KEYS positions replay a
second recording whose windows are cut over `splits` blocks each, in the same launch: each split writes its
pass-1 maxima, the splits meet at a barrier (decode_exact's group_barrier: the grid is kept resident, a block a
multiprocessor at most) and take the window's, each writes its exact sums, and the last to finish adds them and
divides.
Every sum is an exact integer sum and every maximum order-free, so neither the threads' order of the keys nor
the split changes a bit: the CPU's decode rows (backend/cpu/attend_integer._step_rows, _rows with a window) give
the same. Capturable: sizes as arguments, each sequence's position and block table read on the device, no sync.
"""
from __future__ import annotations

from functools import cache
from typing import NamedTuple

import cupy
import numpy as np

from ...errors import ShapeError
from .. import Array
from . import decode_exact
from .int_attention import EXP_FIXED, device_table
from .launch import launch
from .quant_fixed_source import SCALARS

# a block's threads, keys a tile (None: 256 for head_dim up to 64, else 64). H200, SmolLM2-135M Q4_1 recorded steps
# (decode_graph_parts.py --whole --deterministic), us, 128 / 256 threads: position 16 765-773 / 775, 100 892-906 / 826,
# 200 926-944 (split form, SPLIT_KEYS 32-64) / 928 (one block a head); spec 4's 776, 851, 950
THREADS = None
GROUP_MAX = 16                  # query heads a key/value head may have
MAX_HEAD = 128                  # head_dim at most this (the int32 dp2a sums' bound), a multiple of 4
HEADS_A_BLOCK = None            # a block's query heads (None: heads_a_block; it must divide the group)
LANES = None                    # a key's lanes in the passes (None: lanes_per_key)
LANES_MAX = 8
PHASE_STOP = 0                  # (timing, unsplit launches only: 1-4 return after that phase; 0 runs them all)
# windows past twice this take the split form where split_work gives one (H200, as above, 256 threads: position 300
# split 1,044 us, spec 4 1,061; position 1,000 at 128 threads 1,071 against 1,607)
SPLIT_KEYS = 128
MAX_SPLITS = 16
CHUNK_KEYS = decode_exact.CHUNK_KEYS

_SOURCE = r"""
#define ENTRIES (GROUP * D)                            // a block's (head, d) entries
#define WV_SLICES (ENTRIES >= KT ? 1 : KT / ENTRIES)      // threads an entry (each a share of the keys)
#define OUTS ((ENTRIES + KT - 1) / KT)                 // entries a thread sums
#define VROW (D + 2)                                   // a value's int16s in shared memory (odd words: no conflicts)

// A row's scale (fixed.row_exponents' e of its largest finite magnitude, shift = 15 - e, s = 2^shift) and whether
// it holds inf or NaN; `plain`: finite with shift <= 127, its integers by one fma each (loom_fixed_bits' first form)
struct LoomRow { int e, shift, bad; float s; bool plain; };

// the exponent of a row whose largest finite magnitude has these bits: from the bits, as the CPU's _row_exponent (one
// more where 1.m 2^(BITS - 1) rounds to 2^BITS); zero and subnormal maxima the general way
__device__ __forceinline__ int loom_exponent_of_bits(unsigned top) {
    const int biased = top >> 23, mantissa = top & 0x7FFFFF;
    if (biased > 0) return biased - 126 + (mantissa >= (1 << 23) - (1 << (23 - BITS)));
    return loom_fixed_exponent(__uint_as_float(top));
}

// a row's LoomRow from its exponent and inf/NaN flag
__device__ __forceinline__ LoomRow loom_row_scale(int e, int bad) {
    LoomRow r;
    r.e = e;
    r.bad = bad;
    r.shift = 15 - e;
    r.s = loom_fixed_scale(r.shift);
    r.plain = !bad && r.shift <= 127;
    return r;
}

// a lane's part of a key's TPK lanes (consecutive lanes of one warp): float4s part, part + TPK, ... of each row
#define GPL ((D / 4 + TPK - 1) / TPK)                  // float4s a lane takes at most
#define HPL ((GROUP + TPK - 1) / TPK)                  // heads a lane takes in pass 2 (part, part + TPK, ...)

// the largest of x over a key's lanes (mask: theirs)
__device__ __forceinline__ unsigned loom_lanes_max(unsigned x, unsigned mask) {
    #pragma unroll
    for (int o = TPK / 2; o; o >>= 1) x = max(x, __shfl_xor_sync(mask, x, o));
    return x;
}

// the sum of x over a key's lanes (int32 sums: each a part of an exact dot product that fits in int32)
__device__ __forceinline__ int loom_lanes_sum(int x, unsigned mask) {
    #pragma unroll
    for (int o = TPK / 2; o; o >>= 1) x += __shfl_xor_sync(mask, x, o);
    return x;
}

// whether float4 i of a lane's part lies inside the row (always where TPK lanes divide the row's float4s evenly)
#define LOOM_IN_ROW(i) (D % (4 * TPK) == 0 || part + TPK * (i) < D / 4)

// a lane's part of a row in registers: float4s part, part + TPK, ... (zeros past the row)
struct LoomPart { float4 x[GPL]; };

// this lane's part of `row` (global or shared memory), or zeros where row is null (a key past the window's share)
__device__ __forceinline__ void loom_load_part(const float* row, int part, LoomPart& p) {
    #pragma unroll
    for (int i = 0; i < GPL; ++i)
        p.x[i] = row != nullptr && LOOM_IN_ROW(i) ? ((const float4*)row)[part + TPK * i] : make_float4(0.f, 0.f, 0.f, 0.f);
}

// a row's LoomRow from its lanes' parts, on each of its TPK lanes: the largest magnitude as an integer maximum of
// the bits, the finite one again only where inf or NaN is there (a branch the row's lanes take together)
__device__ __forceinline__ LoomRow loom_row_top(const LoomPart& p, int part, unsigned mask) {
    unsigned worst[4] = {0u, 0u, 0u, 0u};
    #pragma unroll
    for (int i = 0; i < GPL; ++i) {
        worst[0] = max(worst[0], __float_as_uint(p.x[i].x) & 0x7FFFFFFFu);
        worst[1] = max(worst[1], __float_as_uint(p.x[i].y) & 0x7FFFFFFFu);
        worst[2] = max(worst[2], __float_as_uint(p.x[i].z) & 0x7FFFFFFFu);
        worst[3] = max(worst[3], __float_as_uint(p.x[i].w) & 0x7FFFFFFFu);
    }
    unsigned top = loom_lanes_max(max(max(worst[0], worst[1]), max(worst[2], worst[3])), mask);
    const int bad = top >= 0x7F800000u;
    if (bad) {                                      // (rare) the finite maximum
        top = 0u;
        #pragma unroll
        for (int i = 0; i < GPL; ++i) {
            const float xs[4] = {p.x[i].x, p.x[i].y, p.x[i].z, p.x[i].w};
            #pragma unroll
            for (int u = 0; u < 4; ++u) {
                const unsigned a = __float_as_uint(xs[u]) & 0x7FFFFFFFu;
                if (a < 0x7F800000u) top = max(top, a);
            }
        }
        top = loom_lanes_max(top, mask);
    }
    return loom_row_scale(loom_exponent_of_bits(top), bad);
}

// the integers of four values of a row as two int16 pairs (value 2i in the low half); PLAIN: row.plain
template <bool PLAIN>
__device__ __forceinline__ void loom_row_pairs(const float4& x4, const LoomRow& rw, unsigned* pr) {
    const float xs[4] = {x4.x, x4.y, x4.z, x4.w};
    unsigned q[4];
    #pragma unroll
    for (int u = 0; u < 4; ++u)
        q[u] = PLAIN ? __float_as_uint(__fmaf_rn(xs[u], rw.s, 12582912.0f))
                     : isfinite(xs[u]) ? loom_fixed_bits(xs[u], rw.s, rw.shift) : 0x4B400000u;
    pr[0] = __byte_perm(q[0], q[1], 0x5410);
    pr[1] = __byte_perm(q[2], q[3], 0x5410);
}

// this lane's part of a row's integers as int16 pairs into out [D / 2]
__device__ __forceinline__ void loom_row_integers(const LoomPart& p, const LoomRow& rw, unsigned* out, int part) {
    if (rw.plain) {
        #pragma unroll
        for (int i = 0; i < GPL; ++i)
            if (LOOM_IN_ROW(i)) loom_row_pairs<true>(p.x[i], rw, out + 2 * (part + TPK * i));
    } else {
        #pragma unroll
        for (int i = 0; i < GPL; ++i)
            if (LOOM_IN_ROW(i)) loom_row_pairs<false>(p.x[i], rw, out + 2 * (part + TPK * i));
    }
}

// 2^e as a double (-1022 <= e <= 1023)
__device__ __forceinline__ double loom_pow2(int e) { return __longlong_as_double((long long)(e + 1023) << 52); }

// this lane's part of the GROUP dot products of a key row's integers with q's (byte pairs qb [GROUP][D / 2]: low
// bytes, then high, of a pair) by dp2a, into hi and lo (exact in int32 for D <= 128)
template <bool PLAIN>
__device__ __forceinline__ void loom_dots(const LoomPart& key, const LoomRow& rw, const unsigned* qb, int* hi, int* lo,
                                          int part) {
    #pragma unroll
    for (int i = 0; i < GPL; ++i) {
        const int g = part + TPK * i;
        if (!LOOM_IN_ROW(i)) break;
        unsigned kp[2];
        loom_row_pairs<PLAIN>(key.x[i], rw, kp);
        #pragma unroll
        for (int r = 0; r < GROUP; ++r) {
            #pragma unroll
            for (int c = 0; c < 2; ++c) {
                const unsigned xb = qb[r * (D / 2) + 2 * g + c];
                asm("dp2a.lo.s32.u32 %0, %1, %2, %0;" : "+r"(lo[r]) : "r"(kp[c]), "r"(xb));
                asm("dp2a.hi.s32.s32 %0, %1, %2, %0;" : "+r"(hi[r]) : "r"(kp[c]), "r"(xb));
            }
        }
    }
}

// the GROUP scores S 2^(ek - 30) of a key row, on each of its TPK lanes, and whether it holds inf or NaN
__device__ __forceinline__ void loom_scores(const LoomPart& key, const unsigned* qb, double* sc, int& kbad, int part,
                                            unsigned mask) {
    const LoomRow rw = loom_row_top(key, part, mask);
    kbad = rw.bad;
    int hi[GROUP], lo[GROUP];
    #pragma unroll
    for (int r = 0; r < GROUP; ++r) { hi[r] = 0; lo[r] = 0; }
    if (rw.plain) loom_dots<true>(key, rw, qb, hi, lo, part);
    else loom_dots<false>(key, rw, qb, hi, lo, part);
    const double k2 = loom_pow2(rw.e - 2 * BITS);
    #pragma unroll
    for (int r = 0; r < GROUP; ++r)
        sc[r] = (double)(256LL * loom_lanes_sum(hi[r], mask) + loom_lanes_sum(lo[r], mask)) * k2;
}

// key j of the window's share (lo + j the cache position) for this lane's rows: the cache's rows, the new
// position's from shared memory (k_s, v_s), or null past the share
__device__ __forceinline__ void loom_rows_of(const Paged& keys, const Paged& values, const float* k_s, const float* v_s,
                                             long long lo, long long pos, long long j, long long last, const float*& kr,
                                             const float*& vr) {
    kr = vr = nullptr;
    if (j < last) {
        kr = lo + j == pos ? k_s : keys.at(lo + j);
        vr = lo + j == pos ? v_s : values.at(lo + j);
    }
}

// loom_int_paged_decode: block b KV + kv; decode_exact's arguments (qkv [B, (H + 2 KV) D], the paged caches, out
// [B, H D], cos/sin tables, the qk norm or null, positions and block tables on the device), then the exp table
extern "C" __global__ void __launch_bounds__(KT) loom_int_paged_decode(
        const float* qkv, float* cache_k, float* cache_v, float* out, const float* cos_t, const float* sin_t,
        const float* norm, const long long* pos_g, const long long* tables, long long row, long long col,
        int block_size, int H, int KV, int ratio, int window, float scale, float eps, int dbits, const long long* tab_g,
        int log2e_i, int ln2_i, int mode, int splits, double* wtop, int* wflags, long long* wnum,
        unsigned long long* wden, unsigned* counters) {
    const unsigned log2e = (unsigned)log2e_i, ln2 = (unsigned)ln2_i;
    extern __shared__ __align__(16) unsigned char dyn[];
    int* w_s = (int*)dyn;                                  // [GROUP][KT]: a tile's w
    short* v_s16 = (short*)(w_s + GROUP * KT);             // [KT][VROW]: its values' integers
    double* kept_s = (double*)(v_s16 + KT * VROW + (KT * VROW) % 4);   // [GROUP][KT]: a kept tile's scores
    int* kept_e = (int*)(kept_s + GROUP * KT);             // [KT]: its values' exponents
    int* kept_bad = kept_e + KT;                           // [KT]: and inf/NaN flags
    __shared__ __align__(16) float q_s[GROUP * D];
    __shared__ __align__(16) float k_s[D], v_s[D], tmp[D];
    __shared__ Scratch scratch;
    __shared__ unsigned qb_s[GROUP * (D / 2)];
    __shared__ int eq_s[GROUP], qbad_s[GROUP];
    __shared__ unsigned tab_s[256];
    __shared__ double top_w[KT / 32][GROUP];
    __shared__ int etop_w[KT / 32], bad_w[KT / 32];
    __shared__ unsigned long long den_w[KT / 32][GROUP];
    __shared__ long long acc_s[WV_SLICES > 1 ? KT : 1];

    // block (b KV + kv) splits + s; split s of `splits` takes the window's keys first .. last - 1 (mode 0: one split)
    const int blk = blockIdx.x / splits, s = blockIdx.x % splits;
    const int b = blk / (H / GROUP), h0 = blk % (H / GROUP) * GROUP, kv = h0 / ratio;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const long long* table = tables + (long long)b * row;
    const Paged keys{cache_k, table, col, block_size, KV, kv}, values{cache_v, table, col, block_size, KV, kv};
    const long long pos = pos_g[b];
    const long long lo = window > 0 && pos - window + 1 > 0 ? pos - window + 1 : 0, n = pos + 1 - lo;
    const long long share = (n + splits - 1) / splits, first = min(n, s * share), last = min(n, first + share);
    const bool writes = s == 0 && h0 % ratio == 0;    // (the block that writes k and v into the cache)
    for (int i = tid; i < 256; i += KT) tab_s[i] = (unsigned)tab_g[i];
    constexpr int LINES = (D + 31) / 32;            // (128-byte lines a row, the last one partial)
    constexpr int ROUND = KT / TPK;                 // (keys a round of the passes)
    // (before the wait: this lane's part of the first round's cached rows into registers, the new position's after
    // the prologue; the later rounds' rows into L1)
    const int part = tid % TPK;
    const unsigned mask = TPK == 32 ? LOOM_FULL : ((1u << TPK) - 1u) << (lane & ~(TPK - 1));
    LoomPart kp, vp;
    {
        const long long j = first + tid / TPK;
        const bool cached = j < last && lo + j != pos;
        loom_load_part(cached ? keys.at(lo + j) : nullptr, part, kp);
        loom_load_part(cached ? values.at(lo + j) : nullptr, part, vp);
    }
    for (long long line = (first + ROUND) * LINES + tid; line < min(last, n - 1) * LINES; line += KT) {
        prefetch_l1(keys.at(lo + line / LINES) + 32 * (line % LINES));
        prefetch_l1(values.at(lo + line / LINES) + 32 * (line % LINES));
    }
    wait_for_previous_kernel();
    // 1: q, the new k (RoPE; qwen3's norm first) and v; k and v into the cache
    const float* x = qkv + (long long)b * (H + 2 * KV) * D;
    const float* cs = cos_t + pos * D;
    const float* sn = sin_t + pos * D;
    if (norm == 0) {
        for (int i = tid; i < (GROUP + 2) * D; i += KT) {
            const int r = i / D, d = i % D;
            if (r < GROUP) {
                q_s[i] = rope_at(x + (h0 + r) * D, d, cs, sn);
            } else if (r == GROUP) {
                const float kd = rope_at(x + (H + kv) * D, d, cs, sn);
                k_s[d] = kd;
                if (writes) keys.at(pos)[d] = kd;
            } else {
                const float vd = x[(H + KV + kv) * D + d];
                v_s[d] = vd;
                if (writes) values.at(pos)[d] = vd;
            }
        }
    } else {
        for (int r = 0; r < GROUP; ++r)
            head_vector(x + (h0 + r) * D, q_s + r * D, tmp, norm + (h0 + r) * D, cs, sn, eps, dbits, scratch);
        head_vector(x + (H + kv) * D, k_s, tmp, norm + (H + kv) * D, cs, sn, eps, dbits, scratch);
        for (int d = tid; d < D; d += KT) {
            const float vd = x[(H + KV + kv) * D + d];
            v_s[d] = vd;
            if (writes) {
                keys.at(pos)[d] = k_s[d];
                values.at(pos)[d] = vd;
            }
        }
    }
    __syncthreads();
#if PHASE_STOP == 1
    if (tid == 0) out[b] = k_s[0] + kp.x[0].x + vp.x[0].x;
    return;
#endif
    // 2: q's integers, a warp a row, as byte pairs: low bytes (unsigned), then high (signed), of values 2i, 2i + 1
    for (int r = warp; r < GROUP; r += KT / 32) {
        float top = 0.0f;
        int nonfinite = 0;
        for (int d = lane; d < D; d += 32) {
            const float v = q_s[r * D + d];
            if (isfinite(v)) top = fmaxf(top, fabsf(v));
            else nonfinite = 1;
        }
        for (int o = 16; o; o >>= 1) {
            top = fmaxf(top, __shfl_xor_sync(LOOM_FULL, top, o));
            nonfinite |= __shfl_xor_sync(LOOM_FULL, nonfinite, o);
        }
        const int e = loom_fixed_exponent(top), shift = 15 - e;
        const float s = loom_fixed_scale(shift);
        for (int i = lane; i < D / 2; i += 32) {
            const float v0 = q_s[r * D + 2 * i], v1 = q_s[r * D + 2 * i + 1];
            const unsigned a = isfinite(v0) ? loom_fixed_bits(v0, s, shift) : 0x4B400000u;
            const unsigned c = isfinite(v1) ? loom_fixed_bits(v1, s, shift) : 0x4B400000u;
            qb_s[r * (D / 2) + i] = __byte_perm(__byte_perm(a, c, 0x5410), 0, 0x3120);
        }
        if (lane == 0) { eq_s[r] = e; qbad_s[r] = nonfinite; }
    }
    __syncthreads();
#if PHASE_STOP == 2
    if (tid == 0) out[b] = (float)qb_s[0] + kp.x[0].x + vp.x[0].x;
    return;
#endif
    // 3: pass 1, tiles of KT keys, TPK lanes a key (rounds of ROUND keys, each lane's part of the rows in registers):
    // the scores' largest a head, the values' largest exponent, inf/NaN (a share of one tile is kept for pass 2:
    // its scores, its values' integers and exponents in shared memory)
    if (first + tid / TPK == pos - lo && pos - lo < last) {     // (the new position's in the first round: made)
        loom_load_part(k_s, part, kp);
        loom_load_part(v_s, part, vp);
    }
    double top[GROUP];
    #pragma unroll
    for (int r = 0; r < GROUP; ++r) top[r] = __longlong_as_double((long long)0xfff0000000000000ull);     // (-inf)
    int etop = -2147483647 - 1, bad = 0;
    const bool keep = last - first <= KT;
    for (long long t0 = first; t0 < last; t0 += KT) {
        #pragma unroll 1
        for (int u = 0; u < TPK; ++u) {     // (not unrolled: the loop's code stays in the instruction cache)
            if (t0 + u * ROUND >= last) break;                 // (the block together)
            const int jj = u * ROUND + tid / TPK;
            if (t0 != first || u != 0) {                        // (the first round's rows: loaded before the wait)
                const float *kr, *vr;
                loom_rows_of(keys, values, k_s, v_s, lo, pos, t0 + jj, last, kr, vr);
                loom_load_part(kr, part, kp);
                loom_load_part(vr, part, vp);
            }
            double sc[GROUP];
            int kbad;
            loom_scores(kp, qb_s, sc, kbad, part, mask);
            const LoomRow vr = loom_row_top(vp, part, mask);
            if (keep) {     // (a kept tile's values' integers now: they depend on the row's own exponent only)
                loom_row_integers(vp, vr, (unsigned*)(v_s16 + jj * VROW), part);
                if (part == 0) {
                    #pragma unroll
                    for (int r = 0; r < GROUP; ++r) kept_s[r * KT + jj] = sc[r];
                    kept_e[jj] = vr.e;
                    kept_bad[jj] = vr.bad;
                }
            }
            if (t0 + jj < last) {
                #pragma unroll
                for (int r = 0; r < GROUP; ++r) top[r] = fmax(top[r], sc[r]);
                etop = max(etop, vr.e);
                bad |= kbad | vr.bad;
            }
        }
    }
    #pragma unroll
    for (int r = 0; r < GROUP; ++r)
        for (int o = 16; o; o >>= 1) top[r] = fmax(top[r], __shfl_xor_sync(LOOM_FULL, top[r], o));
    for (int o = 16; o; o >>= 1) {
        etop = max(etop, __shfl_xor_sync(LOOM_FULL, etop, o));
        bad |= __shfl_xor_sync(LOOM_FULL, bad, o);
    }
    if (lane == 0) {
        #pragma unroll
        for (int r = 0; r < GROUP; ++r) top_w[warp][r] = top[r];
        etop_w[warp] = etop;
        bad_w[warp] = bad;
    }
    __syncthreads();
    for (int w = 0; w < KT / 32; ++w) {
        #pragma unroll
        for (int r = 0; r < GROUP; ++r) top[r] = fmax(top[r], top_w[w][r]);
        etop = max(etop, etop_w[w]);
        bad |= bad_w[w];
    }
    if (mode == 1) {                                // this split's largest scores, exponent and flag; then the window's
        if (tid == 0) {
            #pragma unroll
            for (int r = 0; r < GROUP; ++r) wtop[(long long)blockIdx.x * GROUP + r] = top[r];
            wflags[2 * (long long)blockIdx.x] = etop;
            wflags[2 * (long long)blockIdx.x + 1] = bad;
        }
        group_barrier(counters + blk, splits);
        for (int z = 0; z < splits; ++z) {
            const long long at = (long long)blk * splits + z;
            #pragma unroll
            for (int r = 0; r < GROUP; ++r) top[r] = fmax(top[r], __ldcg(wtop + at * GROUP + r));
            etop = max(etop, __ldcg(wflags + 2 * at));
            bad |= __ldcg(wflags + 2 * at + 1);
        }
    }
#if PHASE_STOP == 3
    if (tid == 0) out[b] = (float)top[0] + etop;
    return;
#endif
    double qscale[HPL], toph[HPL];                  // (this lane's heads' q scales and largest scores)
    unsigned long long den[HPL];
    #pragma unroll
    for (int h = 0; h < HPL; ++h) {
        const int r = part + h * TPK;
        qscale[h] = loom_pow2(r < GROUP ? eq_s[r] : 0);
        toph[h] = 0.0;
        #pragma unroll
        for (int q = h * TPK; q < min(GROUP, (h + 1) * TPK); ++q)
            if (q == r) toph[h] = top[q];
        den[h] = 0;
    }
    long long acc[OUTS];
    #pragma unroll
    for (int o = 0; o < OUTS; ++o) acc[o] = 0;
    // 4: pass 2, the tiles again (a share of one tile: its scores, values' integers and exponents kept), TPK lanes
    // a key: lane part makes the p and w of heads part, part + TPK, ...
    for (long long t0 = first; t0 < last; t0 += KT) {
        if (t0 != first) __syncthreads();       // (the last tile's w v sums read w_s and v_s16)
        #pragma unroll 1
        for (int u = 0; u < TPK; ++u) {
            if (t0 + u * ROUND >= last) break;                 // (the block together)
            const int jj = u * ROUND + tid / TPK;
            double sc[HPL];
            LoomRow vr;
            if (keep) {
                #pragma unroll
                for (int h = 0; h < HPL; ++h) sc[h] = part + h * TPK < GROUP ? kept_s[(part + h * TPK) * KT + jj] : 0.0;
                vr = loom_row_scale(kept_e[jj], kept_bad[jj]);
            } else {
                const float *kr, *vrow;
                loom_rows_of(keys, values, k_s, v_s, lo, pos, t0 + jj, last, kr, vrow);
                loom_load_part(kr, part, kp);
                loom_load_part(vrow, part, vp);
                double all[GROUP];
                int kbad;
                loom_scores(kp, qb_s, all, kbad, part, mask);
                #pragma unroll
                for (int h = 0; h < HPL; ++h) {
                    sc[h] = 0.0;
                    #pragma unroll
                    for (int r = h * TPK; r < min(GROUP, (h + 1) * TPK); ++r)
                        if (r - h * TPK == part) sc[h] = all[r];
                }
                vr = loom_row_top(vp, part, mask);
                loom_row_integers(vp, vr, (unsigned*)(v_s16 + jj * VROW), part);
            }
            const int sh = 31 - P_BITS + etop - vr.e;
            #pragma unroll
            for (int h = 0; h < HPL; ++h) {
                const int r = part + h * TPK;
                if (r >= GROUP || t0 + jj >= last) continue;
                const double d = __dmul_rn(__dmul_rn(__dsub_rn(toph[h], sc[h]), qscale[h]), (double)scale);
                const unsigned p = loom_exp_fixed(__dmul_rn(d, 65536.0), tab_s, log2e, ln2);
                den[h] += p;
                w_s[r * KT + jj] = sh < 62 ? (int)(((unsigned long long)p + (1ull << (sh - 1))) >> sh) : 0;
            }
        }
        __syncthreads();
        const int count = (int)min((long long)KT, last - t0);
        #pragma unroll
        for (int o = 0; o < OUTS; ++o) {
            const int e = (tid + o * KT) % ENTRIES, slice = (tid + o * KT) / ENTRIES;
            if (slice < WV_SLICES) {                   // (entry e's keys slice, slice + WV_SLICES, ...)
                const int r = e / D, d = e % D;
                const int* w = w_s + r * KT;
                const short* v = v_s16 + d;
                long long a0 = 0, a1 = 0;
                int jj = slice;
                for (; jj + 3 * WV_SLICES < count; jj += 4 * WV_SLICES) {   // (two products below 2^30 each: an int32)
                    a0 += w[jj] * (int)v[jj * VROW] + w[jj + WV_SLICES] * (int)v[(jj + WV_SLICES) * VROW];
                    a1 += w[jj + 2 * WV_SLICES] * (int)v[(jj + 2 * WV_SLICES) * VROW]
                        + w[jj + 3 * WV_SLICES] * (int)v[(jj + 3 * WV_SLICES) * VROW];
                }
                for (; jj < count; jj += WV_SLICES) a0 += w[jj] * (int)v[jj * VROW];
                acc[o] += a0 + a1;
            }
        }
    }
#if PHASE_STOP == 4
    if (tid < GROUP * D) out[b * H * D + tid] = (float)acc[0] + (float)den[0];
    return;
#endif
    // 5: the heads' sums of p, then one quotient an entry
    #pragma unroll
    for (int r = 0; r < GROUP; ++r) {               // (head r's p sums are on lanes r % TPK)
        unsigned long long sum = r % TPK == part ? den[r / TPK] : 0ull;
        for (int o = 16; o; o >>= 1) sum += __shfl_xor_sync(LOOM_FULL, sum, o);
        if (lane == 0) den_w[warp][r] = sum;
    }
    if (WV_SLICES > 1) acc_s[tid] = acc[0];
    __syncthreads();
    if (WV_SLICES > 1) {                               // (the slices' exact sums added: the same bits in any order)
        for (int z = 1; z < WV_SLICES && tid < ENTRIES; ++z) acc[0] += acc_s[tid + z * ENTRIES];
    }
    #pragma unroll
    for (int o = 0; o < OUTS; ++o) {
        const int e = tid + o * KT;
        if (e >= GROUP * D) continue;
        const int r = e / D, d = e % D;
        unsigned long long total = 0;
        for (int w = 0; w < KT / 32; ++w) total += den_w[w][r];
        if (mode == 1) {                            // this split's exact sums, for the group's last block
            wnum[(long long)blockIdx.x * GROUP * D + e] = acc[o];
            if (d == 0) wden[(long long)blockIdx.x * GROUP + r] = total;
            continue;
        }
        out[((long long)b * H + h0 + r) * D + d] = bad || qbad_s[r] || total == 0 ? __int_as_float(0x7fc00000)
            : (float)ldexp((double)acc[o] / (double)total, etop - P_BITS - BITS + 31);
    }
    if (mode == 0) return;
    // (split form) the group's last block to arrive adds every split's exact sums (integers: any order) and
    // divides; it leaves the counter at zero for the next launch (every block of the group is past the barrier)
    __shared__ int finisher;
    __threadfence();
    __syncthreads();
    if (tid == 0) finisher = atomicAdd(counters + blk, 1u) == 2u * splits - 1u;
    __syncthreads();
    if (!finisher) return;
    __threadfence();
    for (int e = tid; e < GROUP * D; e += KT) {
        const int r = e / D, d = e % D;
        long long num = 0;
        unsigned long long total = 0;
        for (int z = 0; z < splits; ++z) {
            const long long at = (long long)blk * splits + z;
            num += __ldcg(wnum + at * GROUP * D + e);
            total += __ldcg(wden + at * GROUP + r);
        }
        out[((long long)b * H + h0 + r) * D + d] = bad || qbad_s[r] || total == 0 ? __int_as_float(0x7fc00000)
            : (float)ldexp((double)num / (double)total, etop - P_BITS - BITS + 31);
    }
    if (tid == 0) counters[blk] = 0u;
}
"""


def unsupported(head_dim: int, max_len: int) -> str | None:
    """Why the kernel cannot take a model's heads, or None where it can (caches of any length: the scheme's own
    bound on windows is the caller's, paged_graph.unsupported)."""
    if head_dim % 4 or head_dim > MAX_HEAD:
        return f"head_dim {head_dim} is not a multiple of 4 up to {MAX_HEAD} (spec 5's decode attention kernel)"
    return None


class SplitWork(NamedTuple):
    """The split form's workspace (split_work makes it): each split's largest scores [B heads splits] float64, its
    values' largest exponent and inf/NaN flag [B heads splits, 2] int32, its exact sums [B heads splits, D] int64
    and [B heads splits] uint64 (sized by query heads: at least a block's heads times its blocks), and each
    block group's arrival counter [B heads] (zero between launches)."""
    splits: int
    top: object
    flags: object
    num: object
    den: object
    counters: object


def split_work(batch: int, heads: int, head_dim: int, max_keys: int = 0, splits: int | None = None) -> SplitWork | None:
    """The workspace of steps whose windows past 2 SPLIT_KEYS keys are cut over `splits` blocks a block's heads
    (one launch: the splits of a window meet at a barrier, their largest scores exchanged, and the last to finish
    adds their exact sums), or None where the batch's blocks (at most batch x heads) leave no room for two splits
    each. The splits of a window wait for each other, so the whole grid must be resident: at most a block a
    multiprocessor (decode_exact.split_work's rule; a launch uses the workspace alone). The same bits for any
    split."""
    blocks, sms = batch * heads, _multiprocessors()
    if splits is None:
        splits = min(MAX_SPLITS, sms // max(1, blocks))
    if splits < 2:
        return None
    if blocks * splits > sms:
        raise ValueError(f"split_work: {blocks} blocks in {splits} splits exceed the {sms} multiprocessors (a "
                         "window's splits must all be resident)")
    n = blocks * splits
    return SplitWork(splits, cupy.empty(n, np.float64), cupy.empty(2 * n, np.int32), cupy.empty(n * head_dim, np.int64),
                     cupy.empty(n, np.uint64), cupy.zeros(blocks, np.uint32))


def split_max_keys(splits: int) -> int:
    """(decode_exact's interface) the longest window the split form takes: any."""
    return 1 << 62


@cache
def _multiprocessors() -> int:
    return cupy.cuda.Device().attributes["MultiProcessorCount"]


def probability_work(*args: object, **kwargs: object) -> None:
    """(decode_exact's interface) no workspace: the probabilities are made a tile at a time."""
    return None


def heads_a_block(batch: int, heads: int, kv_heads: int) -> int:
    """A block's query heads: a key/value head's group, its keys and values read once for them all, where the
    batch's (sequence, key/value head) blocks fill the device; else one (a block a query head: more blocks, each
    with a shorter chain of work; the same bits)."""
    if HEADS_A_BLOCK is not None:
        return HEADS_A_BLOCK
    return heads // kv_heads if batch * kv_heads >= _multiprocessors() else 1


def _threads(head_dim: int) -> int:
    return THREADS or (256 if head_dim <= 64 else 64)


def lanes_per_key(head_dim: int) -> int:
    """A key's lanes in the passes: about 16 values each (a power of two up to LANES_MAX; 1 below 32 values)."""
    return LANES or min(LANES_MAX, 1 << max(0, (head_dim // 16).bit_length() - 1))


def _module(head_dim: int, group: int, bits: int, p_bits: int) -> cupy.RawModule:
    return _built(head_dim, group, _threads(head_dim), lanes_per_key(head_dim), PHASE_STOP, bits, p_bits)


@cache
def _built(head_dim: int, group: int, threads: int, lanes: int, stop: int, bits: int, p_bits: int) -> cupy.RawModule:
    head = (f"#define GROUP {group}\n#define BITS {bits}\n#define P_BITS {p_bits}\n#define PHASE_STOP {stop}\n"
            f"#define KT {threads}\n#define TPK {lanes}\n")
    # (decode_exact's helpers, head_vector's among them, compiled for blocks of at least head_dim threads; they
    # read blockDim)
    return cupy.RawModule(code=decode_exact.source(head_dim, max(threads, head_dim)) + SCALARS + head + EXP_FIXED
                          + _SOURCE,
                          options=decode_exact.COMPILE)


def _check_knobs(threads: int, lanes: int, group: int, ratio: int, split: bool) -> None:
    """ShapeError where the knobs (THREADS, LANES, HEADS_A_BLOCK, PHASE_STOP) give a launch the kernel cannot
    run right: warps of whole keys, a block's heads inside one group, phases cut short only without the split
    form (whose counters would stay set)."""
    why = None
    if threads % 32 or lanes & (lanes - 1) or lanes > 32 or threads % lanes:
        why = f"{threads} threads a block with {lanes} lanes a key (warps of whole keys, lanes a power of two)"
    elif ratio % group:
        why = f"{group} query heads a block across key/value heads of {ratio}"
    elif split and PHASE_STOP:
        why = f"PHASE_STOP {PHASE_STOP} with the split form"
    if why:
        raise ShapeError(f"spec 5's decode attention kernel cannot take {why}")


@cache
def _shared_limit() -> int:
    """The shared memory (static and dynamic) a block may opt in to."""
    return cupy.cuda.Device().attributes["MaxSharedMemoryPerBlockOptin"]


def shared_bytes(group: int, head_dim: int, threads: int) -> int:
    """The kernel's dynamic shared memory: a tile's w [GROUP][threads] int32 and values' integers [threads][D + 2]
    int16 (padded to 8 bytes), a kept tile's scores [GROUP][threads] float64 and its values' exponents and flags
    [threads] int32. (The key and value rows themselves are read into registers, each lane its part: a block's
    shared memory stays near spec 4's, so that the multiprocessors keep their split of L1 and shared memory between
    it and the products around it.)"""
    ints = threads * (head_dim + 2)
    return 4 * group * threads + 2 * (ints + ints % 4) + 8 * group * threads + 8 * threads


def paged_attention(qkv: Array, cache_k: Array, cache_v: Array, out: Array, cos: Array, sin: Array, norm: Array | None,
                    pos: Array, tables: Array, block_size: int, heads: int, window: int | None, scale: float, eps: float,
                    factor: float | None = None, overlap: bool = False, *, scheme: tuple, max_keys: int = 0,
                    split: SplitWork | None = None, p_work: Array | None = None) -> None:
    """decode.paged_attention's operation in spec 5's integer scheme (out float32 [B, heads D]): decode_exact's
    arguments (factor, max_keys and p_work are its interface's, unused: any window), and the scheme's constants
    (kernels.exact.attention.SCHEME: its exp table; LOG2E_30, LN2_15, P_BITS, BITS). split: split_work's
    workspace for these sizes, to cut each window over its splits (the same bits), else one block a (sequence,
    key/value head)."""
    from .quant import pointer
    _, kv_heads, D = cache_k.shape
    B = tables.shape[0]
    if heads % kv_heads or heads // kv_heads > GROUP_MAX or unsupported(D, 0):
        raise ShapeError(f"spec 5's decode attention kernel takes head_dim a multiple of 4 up to {MAX_HEAD} and up "
                         f"to {GROUP_MAX} query heads a key/value head, got head_dim {D}, {heads} heads over "
                         f"{kv_heads}")
    if B == 0:
        return
    row, col = (s // tables.itemsize for s in tables.strides)
    group = heads_a_block(B, heads, kv_heads)
    _check_knobs(_threads(D), lanes_per_key(D), group, heads // kv_heads, split is not None)
    table, consts = scheme
    log2e, ln2, p_bits, bits = (int(c) for c in consts)
    module = _module(D, group, bits, p_bits)
    kernel = module.get_function("loom_int_paged_decode")
    args = (qkv, cache_k, cache_v, out, cos, sin, pointer(norm), pos, tables, np.int64(row), np.int64(col),
            np.int32(block_size), np.int32(heads), np.int32(kv_heads), np.int32(heads // kv_heads),
            np.int32(window or 0), np.float32(scale),
            np.float32(eps), np.int32(53 - max(0, (D - 1).bit_length())), device_table(table), np.int32(log2e),
            np.int32(ln2))
    threads = _threads(D)
    shared = shared_bytes(group, D, threads)
    if shared + kernel.shared_size_bytes > _shared_limit():
        raise ShapeError(f"spec 5's decode attention kernel cannot take {shared + kernel.shared_size_bytes} bytes "
                         f"of shared memory a block (head_dim {D}, {group} heads a block, {threads} threads), past "
                         f"the device's {_shared_limit()}")
    blocks = B * heads // group
    if split is None:
        launch(kernel, blocks, threads, args + (np.int32(0), np.int32(1)) + (np.uint64(0),) * 5, overlap,
               shared=shared)
        return
    S = split.splits
    if split.top.size < B * heads * S or split.num.size < B * heads * S * D or blocks * S > _multiprocessors():
        raise ShapeError(f"spec 5's decode attention: a split workspace of {S} splits for fewer than {B} sequences "
                         f"of {heads} heads of {D}, or {blocks} blocks in {S} splits past the multiprocessors")
    launch(kernel, blocks * S, threads, args + (np.int32(1), np.int32(S), split.top, split.flags, split.num, split.den,
                                                split.counters), overlap, shared=shared)
