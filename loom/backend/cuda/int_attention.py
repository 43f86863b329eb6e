"""Spec 5's integer attention on the GPU (branch wip/spec5-attention): the scheme of loom/kernels/exact/attention.py,
its bits, on the int8 tensor cores, for a decoder's causal rows (a prompt's chunk or decode steps), as
kernels.exact.attention.causal takes them.

Three kernels:
- `loom_int_rows`: a warp a row of q, k or v (D <= 128 values) makes the row's exponent e, its inf/NaN flag and
  its integers as int16 (fixed.row_exponents and to_integers' arithmetic, quant_fixed_source.SCALARS).
- `loom_int_attend`: a block is 4 warps over 64 query rows of one key/value head's group (each warp 16 rows; one
  warp where there are 16 rows or fewer: a decode step's), walking the rows' keys twice in tiles of 64 (k and v
  int16 in shared memory, padded rows, copied by cp.async one tile ahead):
  1. the exact scores S (int8 planes of q and k, four m16n8k32 products, 65536 HH + 256 (HL + LH) + LL); each
     row's largest allowed S 2^(ek - 30) (a float64, exact), its values' largest exponent E and its inf/NaN flag;
  2. the scores again, then per score d = (max - S 2^(ek - 30)) 2^eq scale (float64, rounded as the CPU's two
     operations: scaling by 2^eq is exact), p = exp_fixed(d) by integer operations (a table in shared memory),
     its row sum in int64, and w (v's scale folded in, P_BITS bits) straight from the scores' accumulator layout
     into the A operand of w v: the keys of a 32-key step are ordered as a thread holds them (the sum over keys
     does not care), and v's tile is read by ldmatrix.trans in that same order. The scores' k dimension (d of q
     and k) is permuted the same way, to read k by ldmatrix.
  Then each entry's float64 quotient num / den scaled by 2^(E - P_BITS - 15 + 31), rounded to float32.
  Where blocks would leave multiprocessors idle (short prompts, decode steps), `splits` blocks share a block's
  keys: one launch writes each split's pass-1 partials (largest score, E, inf/NaN), a second combines them and
  writes each split's exact sums, and `loom_int_finish` adds those (exact integers: any split, the same bits).

In a whole prompt (H200, 2026-11-28, prefill_kernels.py --deterministic, one chunk): 630 us a layer of Llama-3.2-1B's
2,048-token prompt (fast mode's flash kernel 187), 110 us a launch of SmolLM2-135M's (two a layer, split). Measured
earlier (H200, Llama-3.2-1B's attention, 8 key/value heads of 4, D 64, a layer): 2,048-token prompt 186-195 us
(spec 4's four float64 kernels 465; the first version of this one 527: ldexp a score, the exp table in global
memory, w and the planes staged a byte at a time), 512 tokens 84 us (165; 214). Nsight Compute at 2,048 tokens:
latency-bound (issue slots 37% busy; stalls mostly fixed-latency waits on the mma chains, 15% instruction fetch;
12 warps an SM at 168 registers and 40 KB of shared memory).
"""
from __future__ import annotations

from functools import cache

import cupy
import numpy as np

from ...errors import ShapeError
from .. import Array
from .compile import OPTIONS
from .quant import pointer
from .quant_fixed_source import SCALARS

BKEYS = 64                      # keys a tile
WARPS = 0                       # warps a block (16 query rows each): 0 chooses 4, or 1 for 16 rows or fewer
SPLITS = 0                      # blocks sharing a block's keys (0: _splits chooses)
# blocks a multiprocessor the splits aim for (_splits). No one value wins: H200, 2026-11-28, prefill_kernels.py
# --deterministic, ms of the attention and its finish, 3 / 8 (the splits each chose): SmolLM2-135M 2,048 tokens 6.98
# (2) / 6.31 (4), 1,024 tokens 2.38 (3) / 2.66 (8); Llama-3.2-1B 2,048 tokens 10.08 (1) / 9.73 (2), 1,024 3.41 (1) /
# 3.31 (3), 512 1.29 (2) / 1.35 (4). A rule by the keys a split walks as well (SPLIT_TILES 8 with SPLIT_BLOCKS 8 would
# choose 4, 2, 2, 2, 1 there) is untried
SPLIT_BLOCKS = 3
SPLIT_TILES = 2                 # 64-key tiles a split walks at least
SPLIT_MID = 0                   # 1: HL and LH in separate accumulators (the same bits; H200, 2,048-token prompts: no gain)

# exp_fixed in 32-bit operations, shared with int_decode.py's kernel
EXP_FIXED = r"""
// exp_fixed(d) (kernels.exact.attention: 2^-31 units, at most 2^31) of d = x 2^16 for x >= 0, in 32-bit operations:
// dq = rint(min(d, 2^22)) (the conversion saturates: the same), u = dq log2(e) 2^30 >> 30 (below 2^23), a table entry
// times the linear step >> 31 (below 2^32), shifted by u's integer part (0 past 31)
__device__ __forceinline__ unsigned loom_exp_fixed(double x, const unsigned* tab, unsigned log2e, unsigned ln2) {
    const unsigned dq = min(__double2uint_rn(x), 4194304u);
    const unsigned u = __funnelshift_r(dq * log2e, __umulhi(dq, log2e), 30);
    const unsigned step = (1u << 31) - (u & 255) * ln2, t = tab[(u >> 8) & 255];
    return __funnelshift_rc(__funnelshift_r(t * step, __umulhi(t, step), 31), 0u, u >> 16);
}
"""

_SOURCE = r"""
#define BQ (16 * WARPS)
#define THREADS (32 * WARPS)
#define MIN_BLOCKS ((D <= 64 ? 12 : 8) / WARPS)   // (12 warps an SM: 168 registers; D 128's sums need 8: 255)
#define BKEYS 64
#define STRIDE (D + 8)          // a tile row's int16s in shared memory: 16 bytes of padding, ldmatrix without conflicts
#define TILE (BKEYS * STRIDE)

// a row's exponent, inf/NaN flag and int16 integers (fixed.row_exponents, to_integers): a warp a row of D values.
// Row r = (g A + a) B + b of the output reads row g sg + a sa + (idx ? idx[b] : b) sb of x (the decoder's layouts
// read in place: a layer's q [T, H, D], a paged cache's rows [slots, KV, D] at a sequence's key slots)
extern "C" __global__ void __launch_bounds__(128) loom_int_rows(const float* __restrict__ x, short* __restrict__ xi,
                                                                int* __restrict__ ex, int* __restrict__ bad, long long rows,
                                                                const long long* __restrict__ idx, long long A, long long B,
                                                                long long sg, long long sa, long long sb) {
    const long long r = (long long)blockIdx.x * 4 + (threadIdx.x >> 5);
    if (r >= rows) return;
    const int lane = threadIdx.x & 31;
    const long long b = r % B, src = r / B / A * sg + r / B % A * sa + (idx ? idx[b] : b) * sb;
    float v[D / 32];
    float top = 0.0f;
    int nonfinite = 0;
    #pragma unroll
    for (int j = 0; j < D / 32; ++j) {
        v[j] = x[src * D + lane + 32 * j];
        if (isfinite(v[j])) top = fmaxf(top, fabsf(v[j]));
        else nonfinite = 1;
    }
    for (int o = 16; o; o >>= 1) {
        top = fmaxf(top, __shfl_xor_sync(LOOM_FULL, top, o));
        nonfinite |= __shfl_xor_sync(LOOM_FULL, nonfinite, o);
    }
    const int e = loom_fixed_exponent(top), shift = 15 - e;
    const float s = loom_fixed_scale(shift);
    #pragma unroll
    for (int j = 0; j < D / 32; ++j)
        xi[r * D + lane + 32 * j] = isfinite(v[j]) ? (short)(loom_fixed_bits(v[j], s, shift) & 0xFFFFu) : (short)0;
    if (lane == 0) { ex[r] = e; bad[r] = nonfinite; }
}

#define LOOM_IMMA(AT, BT, C, A, B) asm( \
    "mma.sync.aligned.m16n8k32.row.col.s32." AT "." BT ".s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};" \
    : "+r"(C[0]), "+r"(C[1]), "+r"(C[2]), "+r"(C[3]) : "r"(A[0]), "r"(A[1]), "r"(A[2]), "r"(A[3]), "r"(B[0]), "r"(B[1]))
// the four plane products of a fragment: hh, hl into mid, lh into lh (SPLIT_MID: its own accumulator, so that
// the two chains run side by side) or into mid, ll; A's hi plane unsigned where UA (w's, 0 .. 64)
#if SPLIT_MID
#define LOOM_LH_DECL , lh[4] = {0, 0, 0, 0}
#define LOOM_LH lh
#define LOOM_MID(e) (mid[e] + lh[e])
#else
#define LOOM_LH_DECL
#define LOOM_LH mid
#define LOOM_MID(e) mid[e]
#endif
template <bool UA> __device__ __forceinline__ void loom_four(int* hh, int* mid, int* lh, int* ll, const unsigned* ah,
                                                             const unsigned* al, const unsigned* bh, const unsigned* bl) {
    if (UA) { LOOM_IMMA("u8", "s8", hh, ah, bh); LOOM_IMMA("u8", "u8", mid, ah, bl); }
    else { LOOM_IMMA("s8", "s8", hh, ah, bh); LOOM_IMMA("s8", "u8", mid, ah, bl); }
    LOOM_IMMA("u8", "s8", lh, al, bh);
    LOOM_IMMA("u8", "u8", ll, al, bl);
}
// int16 pairs a, b (values 0 1, 2 3) as their planes: hi bytes (signed), lo bytes (unsigned), value order 0 1 2 3
__device__ __forceinline__ void loom_split(unsigned a, unsigned b, unsigned* hi, unsigned* lo) {
    *hi = __byte_perm(a, b, 0x7531);
    *lo = __byte_perm(a, b, 0x6420);
}
__device__ __forceinline__ void loom_ldsm4(unsigned* r, const short* p) {
    const unsigned a = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
}
__device__ __forceinline__ void loom_ldsm4t(unsigned* r, const short* p) {
    const unsigned a = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
}
__device__ __forceinline__ void loom_cp16(void* dst, const void* src, bool ok) {
    const unsigned d = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" :: "r"(d), "l"(src), "r"(ok ? 16 : 0) : "memory");
}
__device__ __forceinline__ long long loom_combine(const int hh, const int mid, const int ll) {
    return 65536LL * hh + 256LL * mid + ll;
}

// out [G, rows, D] from the integers qi [G, rows, D], ki, vi [G, n, D] (int16), their exponents and bad flags;
// row r of a group at position first + r % T, key j at lo + j; window 0: none
extern "C" __global__ void __launch_bounds__(THREADS, MIN_BLOCKS) loom_int_attend(
        const short* __restrict__ qi, const int* __restrict__ eq, const int* __restrict__ qbad,
        const short* __restrict__ ki, const int* __restrict__ ek, const int* __restrict__ kbad,
        const short* __restrict__ vi, const int* __restrict__ ev, const int* __restrict__ vbad,
        const long long* __restrict__ table, float* __restrict__ out, int osg, int osa, int osb,
        int rows, int n, int T, int first, int lo, int window, double scale, long long log2e, long long ln2, int mode, int splits,
        double* __restrict__ wtop, int2* __restrict__ wflags, unsigned long long* __restrict__ wden,
        long long* __restrict__ wnum) {
    extern __shared__ __align__(16) unsigned char smem[];
    short* ks = (short*)smem;                           // [2][BKEYS][STRIDE]
    short* vs = ks + 2 * TILE;                          // [2][BKEYS][STRIDE]
    double* kmul = (double*)(vs + 2 * TILE);            // [2][BKEYS]: 2^(ek - 30)
    int2* kev = (int2*)(kmul + 2 * BKEYS);              // [2][BKEYS]: ev, bad (k's or v's)
    unsigned* tab = (unsigned*)(kev + 2 * BKEYS);       // [256]: the exp table (2^-31 units, <= 2^31)
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, gq = lane >> 2, tq = lane & 3;
    const long long g = blockIdx.y;
    const int r0 = (gridDim.x - 1 - blockIdx.x) * BQ;   // (the longest rows first)
    for (int i = tid; i < 256; i += THREADS) tab[i] = (unsigned)table[i];
    int row[2], qpos[2];
    double qscale[2];
    bool bad[2];
    for (int h = 0; h < 2; ++h) {
        row[h] = r0 + 16 * warp + gq + 8 * h;
        const int rr = min(row[h], rows - 1);
        qpos[h] = first + rr % T;
        const int e = eq[g * rows + rr];
        qscale[h] = scale * __longlong_as_double((long long)(1023 + e + 16) << 52);   // scale 2^(eq + 16), exact
        bad[h] = qbad[g * rows + rr] != 0;
    }
    // the block's keys: those any of its rows may see; tiles every row sees whole need no mask
    const int last = min(r0 + BQ, rows) - 1;
    const bool one = r0 / T == last / T;
    const int pmin = first + (one ? r0 % T : 0), pmax = first + (one ? last % T : T - 1);
    const int kfirst = window ? max(0, pmin - window + 1 - lo) : 0;
    const int kend = min(n, pmax - lo + 1);
    // mode 0: every tile, then out; with splits (blockIdx.z of them), each block takes its share of the tiles:
    // mode 1 writes its rows' pass-1 partials, mode 2 combines every split's and writes its share of the sums
    const int all = kend > kfirst ? (kend - kfirst + BKEYS - 1) / BKEYS : 0, per = (all + splits - 1) / splits;
    const int t0 = blockIdx.z * per, tiles = max(0, min(all, t0 + per) - t0);
    // q's fragments: planes of the int16 integers, d permuted as ldmatrix hands k's out (k-slot 4 tq + j of a
    // 32-step holds d = 8 (j >> 1) + 2 tq + (j & 1), slot 16 + 4 tq + j holds 16 + that)
    unsigned qh[D / 32][4], ql[D / 32][4];
    #pragma unroll
    for (int s = 0; s < D / 32; ++s)
        #pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int rr = min(r0 + 16 * warp + gq + 8 * (e & 1), rows - 1);
            const short* src = qi + (g * rows + rr) * D + 32 * s + 16 * (e >> 1) + 2 * tq;
            loom_split(*(const unsigned*)src, *(const unsigned*)(src + 8), &qh[s][e], &ql[s][e]);
        }
    auto allowed = [&](int h, int j) -> bool {
        const int kpos = lo + j;
        return j < n && kpos <= qpos[h] && (window == 0 || kpos > qpos[h] - window);
    };
    auto full = [&](int j0) -> bool {
        return j0 + BKEYS <= n && lo + j0 + BKEYS - 1 <= pmin && (window == 0 || lo + j0 > pmax - window);
    };
    // tile i's k (and v) into buffer i & 1, with each key's 2^(ek - 30), ev and bad
    auto load = [&](int i, bool values) {
        const int j0 = kfirst + (t0 + i) * BKEYS, b = i & 1;
        for (int c = tid; c < BKEYS * D / 8; c += THREADS) {
            const int key = c / (D / 8), col = 8 * (c % (D / 8)), j = j0 + key;
            const bool ok = j < n;
            const long long at = (g * n + (ok ? j : 0)) * D + col;
            loom_cp16(ks + b * TILE + key * STRIDE + col, ki + at, ok);
            if (values) loom_cp16(vs + b * TILE + key * STRIDE + col, vi + at, ok);
        }
        asm volatile("cp.async.commit_group;" ::: "memory");
        for (int key = tid; key < BKEYS; key += THREADS) {
            const int j = j0 + key;
            const bool ok = j < n;
            kmul[b * BKEYS + key] = __longlong_as_double((long long)(1023 + (ok ? ek[g * n + j] : 0) - 30) << 52);
            kev[b * BKEYS + key] = make_int2(ok ? ev[g * n + j] : 0, ok ? (kbad[g * n + j] | vbad[g * n + j]) : 0);
        }
    };
    // the exact scores of n-tile t of buffer b for this thread's entries, (row gq, key 8t + 2tq), (gq, +1),
    // (gq + 8, 8t + 2tq), (gq + 8, +1), as S 2^(ek - 30) (float64, exact); kv: the two keys' ev and bad
    auto scores = [&](int b, int t, double* x, int4& kv) {
        int hh[4] = {0, 0, 0, 0}, mid[4] = {0, 0, 0, 0} LOOM_LH_DECL, ll[4] = {0, 0, 0, 0};
        #pragma unroll
        for (int s = 0; s < D / 32; ++s) {
            unsigned r[4], bh[2], bl[2];
            loom_ldsm4(r, ks + b * TILE + (8 * t + (lane & 7)) * STRIDE + 32 * s + 8 * (lane >> 3));
            loom_split(r[0], r[1], &bh[0], &bl[0]);
            loom_split(r[2], r[3], &bh[1], &bl[1]);
            loom_four<false>(hh, mid, LOOM_LH, ll, qh[s], ql[s], bh, bl);
        }
        const int key = 8 * t + 2 * tq;
        const double2 km = *(const double2*)&kmul[b * BKEYS + key];
        kv = *(const int4*)&kev[b * BKEYS + key];
        #pragma unroll
        for (int e = 0; e < 4; ++e) x[e] = (double)loom_combine(hh[e], LOOM_MID(e), ll[e]) * (e & 1 ? km.y : km.x);
    };
    // pass 1: each row's largest allowed S 2^(ek - 30), its values' largest exponent, inf or NaN seen
    double top[2] = {__longlong_as_double(0xfff0000000000000LL), __longlong_as_double(0xfff0000000000000LL)};
    int etop[2] = {-2147483647 - 1, -2147483647 - 1};
    // tile i of a walk of `count` in its buffer, visible to the block, the next one's copies issued
    auto arrive = [&](int i, int count, bool values) {
        if (i + 1 < count) { load(i + 1, values); asm volatile("cp.async.wait_group 1;" ::: "memory"); }
        else asm volatile("cp.async.wait_group 0;" ::: "memory");
        __syncthreads();
    };
    const int pass1 = mode == 2 ? 0 : tiles;
    if (pass1) load(0, false);
    for (int i = 0; i < pass1; ++i) {
        arrive(i, pass1, false);
        const int b = i & 1, j0 = kfirst + (t0 + i) * BKEYS;
        const bool masked = !full(j0);
        #pragma unroll 2
        for (int t = 0; t < BKEYS / 8; ++t) {
            double x[4];
            int4 kv;
            scores(b, t, x, kv);
            const int key = 8 * t + 2 * tq;
            #pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int h = e >> 1;
                if (masked && !allowed(h, j0 + key + (e & 1))) continue;
                top[h] = fmax(top[h], x[e]);
                etop[h] = max(etop[h], e & 1 ? kv.z : kv.x);
                bad[h] = bad[h] || (e & 1 ? kv.w : kv.y);
            }
        }
        __syncthreads();
    }
    for (int h = 0; h < 2; ++h)
        for (int m = 1; m < 4; m <<= 1) {
            top[h] = fmax(top[h], __shfl_xor_sync(0xffffffff, top[h], m));
            etop[h] = max(etop[h], __shfl_xor_sync(0xffffffff, etop[h], m));
            const int other = __shfl_xor_sync(0xffffffff, (int)bad[h], m);    // (every lane: not behind ||)
            bad[h] = bad[h] || other;
        }
    if (mode == 1) {                                    // this split's partials, for mode 2's blocks
        for (int h = 0; h < 2; ++h)
            if (tq == 0 && row[h] < rows) {
                const long long at = (g * rows + row[h]) * splits + blockIdx.z;
                wtop[at] = top[h];
                wflags[at] = make_int2(etop[h], bad[h]);
            }
        return;
    }
    if (mode == 2)                                      // every split's partials: the rows' own values
        for (int h = 0; h < 2; ++h)
            for (int z = 0; z < splits; ++z) {
                const long long at = (g * rows + min(row[h], rows - 1)) * splits + z;
                top[h] = fmax(top[h], wtop[at]);
                const int2 f = wflags[at];
                etop[h] = max(etop[h], f.x);
                bad[h] = bad[h] || f.y;
            }
    // pass 2: p, its sum, w in registers, w v
    const int wshift[2] = {30 - P_BITS + etop[0], 30 - P_BITS + etop[1]};
    unsigned long long den[2] = {0, 0};
    long long num[D / 8][4];
    #pragma unroll
    for (int d = 0; d < D / 8; ++d)
        #pragma unroll
        for (int e = 0; e < 4; ++e) num[d][e] = 0;
    if (tiles) load(0, true);
    for (int i = 0; i < tiles; ++i) {
        arrive(i, tiles, true);
        const int b = i & 1, j0 = kfirst + (t0 + i) * BKEYS;
        const bool masked = !full(j0);
        unsigned pr[BKEYS / 8][2];                      // w of each n-tile: rows gq, gq + 8, as int16 pairs
        #pragma unroll
        for (int t = 0; t < BKEYS / 8; ++t) {
            double x[4];
            int4 kv;
            scores(b, t, x, kv);
            const int key = 8 * t + 2 * tq;
            unsigned w[4];
            #pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int h = e >> 1;
                w[e] = 0;
                if (masked && !allowed(h, j0 + key + (e & 1))) continue;
                const unsigned p = loom_exp_fixed((top[h] - x[e]) * qscale[h], tab,
                                                  (unsigned)log2e, (unsigned)ln2);
                den[h] += p;
                // w = round(p 2^-sh), half up, sh = 31 - P_BITS + E - ev >= 17: ((p >> (sh - 1)) + 1) >> 1, 0 past 32
                w[e] = (__funnelshift_rc(p, 0u, wshift[h] - (e & 1 ? kv.z : kv.x)) + 1) >> 1;
            }
            pr[t][0] = w[0] | (w[1] << 16);
            pr[t][1] = w[2] | (w[3] << 16);
        }
        // A fragments of w for each 32-key step sg (k-slot 4 tq + j: key 8 (j >> 1) + 2 tq + (j & 1) of the step;
        // 16 + those for a2, a3), as the scores' accumulators hold them
        unsigned ah[BKEYS / 32][4], al[BKEYS / 32][4];
        #pragma unroll
        for (int sg = 0; sg < BKEYS / 32; ++sg) {
            loom_split(pr[4 * sg][0], pr[4 * sg + 1][0], &ah[sg][0], &al[sg][0]);
            loom_split(pr[4 * sg][1], pr[4 * sg + 1][1], &ah[sg][1], &al[sg][1]);
            loom_split(pr[4 * sg + 2][0], pr[4 * sg + 3][0], &ah[sg][2], &al[sg][2]);
            loom_split(pr[4 * sg + 2][1], pr[4 * sg + 3][1], &ah[sg][3], &al[sg][3]);
        }
        #pragma unroll
        for (int dt = 0; dt < D / 8; ++dt) {
            int hh[4] = {0, 0, 0, 0}, mid[4] = {0, 0, 0, 0} LOOM_LH_DECL, ll[4] = {0, 0, 0, 0};
            #pragma unroll
            for (int sg = 0; sg < BKEYS / 32; ++sg) {
                unsigned r[4], bh[2], bl[2];
                loom_ldsm4t(r, vs + b * TILE + (32 * sg + lane) * STRIDE + 8 * dt);
                loom_split(r[0], r[1], &bh[0], &bl[0]);
                loom_split(r[2], r[3], &bh[1], &bl[1]);
                loom_four<true>(hh, mid, LOOM_LH, ll, ah[sg], al[sg], bh, bl);
            }
            #pragma unroll
            for (int e = 0; e < 4; ++e) num[dt][e] += loom_combine(hh[e], LOOM_MID(e), ll[e]);
        }
        __syncthreads();
    }
    for (int h = 0; h < 2; ++h)
        for (int m = 1; m < 4; m <<= 1) den[h] += __shfl_xor_sync(0xffffffff, den[h], m);
    if (mode == 2) {                                    // this split's exact sums, for loom_int_finish
        #pragma unroll
        for (int dt = 0; dt < D / 8; ++dt)
            #pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int h = e >> 1;
                if (row[h] < rows)
                    wnum[((g * rows + row[h]) * splits + blockIdx.z) * D + 8 * dt + 2 * tq + (e & 1)] = num[dt][e];
            }
        for (int h = 0; h < 2; ++h)
            if (tq == 0 && row[h] < rows) wden[(g * rows + row[h]) * splits + blockIdx.z] = den[h];
        return;
    }
    float* dst[2];                                      // (the rows' places in out: out_map's)
    for (int h = 0; h < 2; ++h) dst[h] = out + (long long)((int)g * osg + row[h] / T * osa + row[h] % T * osb) * D;
    #pragma unroll
    for (int dt = 0; dt < D / 8; ++dt)
        #pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int h = e >> 1;
            if (row[h] >= rows) continue;
            const int col = 8 * dt + 2 * tq + (e & 1);
            dst[h][col] = bad[h] || den[h] == 0 ? __int_as_float(0x7fc00000)
                : (float)ldexp((double)num[dt][e] / (double)den[h], etop[h] - P_BITS - BITS + 31);
        }
}

// out's entries (G rows of D; row g rows + a T + t at g osg + a osa + t osb) from mode 2's partials of `splits`
// splits: the exact sums added, one quotient
extern "C" __global__ void __launch_bounds__(256) loom_int_finish(
        const int2* __restrict__ wflags, const unsigned long long* __restrict__ wden,
        const long long* __restrict__ wnum, float* __restrict__ out, long long osg, long long osa, long long osb,
        long long rows, long long T, long long entries, int splits) {
    const long long i = (long long)blockIdx.x * 256 + threadIdx.x;
    if (i >= entries) return;
    const long long r = i / D, at = (r / rows * osg + r % rows / T * osa + r % rows % T * osb) * D + i % D;
    unsigned long long den = 0;
    long long num = 0;
    int etop = -2147483647 - 1, bad = 0;
    for (int z = 0; z < splits; ++z) {
        den += wden[r * splits + z];
        num += wnum[(r * splits + z) * D + i % D];
        etop = max(etop, wflags[r * splits + z].x);
        bad |= wflags[r * splits + z].y;
    }
    out[at] = bad || den == 0 ? __int_as_float(0x7fc00000) : (float)ldexp((double)num / (double)den, etop - P_BITS - BITS + 31);
}
"""


@cache
def _module(head_dim: int, warps: int = 4, split_mid: int = 0, bits: int = 15, p_bits: int = 14) -> cupy.RawModule:
    """(bits, p_bits: the scheme's, kernels.exact.attention.SCHEME's)"""
    head = (f"#define D {head_dim}\n#define WARPS {warps}\n#define SPLIT_MID {split_mid}\n#define BITS {bits}\n"
            f"#define P_BITS {p_bits}\n")
    return cupy.RawModule(code=head + SCALARS + EXP_FIXED + _SOURCE, options=OPTIONS + ("-std=c++17",))


def _shared_bytes(head_dim: int) -> int:
    return 4 * BKEYS * (head_dim + 8) * 2 + 2 * BKEYS * (8 + 8) + 256 * 4


def _integers(a: Array, module: cupy.RawModule, rows: int | None = None, idx: Array | None = None,
              mapping: tuple = ()) -> tuple:
    """(int16 integers [rows, D], int32 exponents [rows], int32 inf/NaN flags [rows]) of float32 rows of a [..., D]:
    every row in order (rows None), or row (g A + a) B + b from a's row g sg + a sa + (idx[b] or b) sb (mapping
    (A, B, sg, sa, sb); idx int64 on the device or None)."""
    D = a.shape[-1]
    if rows is None:
        rows = a.size // D
        mapping = (1, max(rows, 1), 0, 0, 1)
    xi = cupy.empty((rows, D), dtype=np.int16)
    ex = cupy.empty(rows, dtype=np.int32)
    bad = cupy.empty(rows, dtype=np.int32)
    if rows:
        module.get_function("loom_int_rows")(((rows + 3) // 4,), (128,),
                                             (a, xi, ex, bad, np.int64(rows), pointer(idx),
                                              *(np.int64(m) for m in mapping)))
    return xi, ex, bad


def causal(q: Array, k: Array, v: Array, per_group: int, first: int, lo: int, window: int | None, scale: float,
           table: np.ndarray, consts: np.ndarray) -> Array | None:
    """protocols.IntegerAttention's causal: attend()'s rows, or None for heads past 128 (the array code)."""
    return attend(q, k, v, per_group, first, lo, window, scale, table, consts) if q.shape[-1] <= 128 else None


def causal_paged(q: Array, cache_k: Array, cache_v: Array, key_slots: Array, per_group: int, first: int, lo: int,
                 window: int | None, scale: float, table: np.ndarray, consts: np.ndarray, out: Array) -> bool:
    """protocols.IntegerAttention's causal_paged: causal()'s bits read and written in the decoder's layouts, no
    copies (q float32 [T, H, D], the caches [slots, KV, D], key_slots int64 [n], out float32 [T, H D], each
    C-contiguous); False where D is not a multiple of 32 up to 128 (causal() pads those)."""
    T, H, D = q.shape
    KV = cache_k.shape[1]
    n = key_slots.shape[0]
    if (D > 128 or D % 32 or H % KV or H // KV != per_group or cache_k.shape[1:] != (KV, D)
            or cache_v.shape != cache_k.shape or out.shape != (T, H * D) or key_slots.dtype != np.int64
            or any(a.dtype != np.float32 or not a.flags.c_contiguous for a in (q, cache_k, cache_v, out))
            or not key_slots.flags.c_contiguous):
        return False
    _check_sizes(KV, T, first, lo, n)
    if T == 0:
        return True
    rows = per_group * T
    module = _module(D, _warps(rows), SPLIT_MID, *_bits(consts))
    parts = _integers(q, module, KV * rows, None, (per_group, T, per_group, 1, H))       # row (g R + r) T + t
    for pool in (cache_k, cache_v):                                                      # row g n + j
        parts += _integers(pool, module, KV * n, key_slots, (1, n, 1, 0, KV))
    _launch(module, parts, KV, rows, n, D, per_group, first, lo, window, scale, table, consts, out,
            (per_group, 1, H))
    return True


def attend(q: Array, k: Array, v: Array, per_group: int, first: int, lo: int, window: int | None, scale: float,
           table: np.ndarray, consts: np.ndarray) -> Array:
    """float32 [G, per_group T, D]: kernels.exact.attention.causal's bits for CuPy arrays (q [G, per_group T,
    D], k and v [G, n, D] float32; D up to 128, padded with zeros to a multiple of 32); table and consts: the
    scheme's (kernels.exact.attention.SCHEME: its exp table; LOG2E_30, LN2_15, P_BITS, BITS)."""
    G, rows, D = q.shape
    n = k.shape[1]
    if D > 128 or k.shape != (G, n, D) or v.shape != (G, n, D) or rows % per_group:
        raise ShapeError(f"the integer attention kernel takes q [G, R T, D] and k, v [G, n, D] with D up to 128, got "
                         f"{q.shape}, {k.shape}, {v.shape} (R = {per_group})")
    _check_sizes(G, rows // per_group, first, lo, n)
    if G == 0 or rows == 0:
        return cupy.empty((G, rows, D), dtype=np.float32)
    if D % 32:                  # zeros to a multiple of 32: the same exponents and integer sums, so the same bits
        wide = [cupy.pad(a.astype(np.float32, copy=False), ((0, 0), (0, 0), (0, 32 - D % 32))) for a in (q, k, v)]
        return cupy.ascontiguousarray(attend(*wide, per_group, first, lo, window, scale, table, consts)[:, :, :D])
    out = cupy.empty((G, rows, D), dtype=np.float32)
    module = _module(D, _warps(rows), SPLIT_MID, *_bits(consts))
    parts = []
    for a in (q, k, v):
        parts += _integers(cupy.ascontiguousarray(a, dtype=np.float32), module)
    _launch(module, parts, G, rows, n, D, per_group, first, lo, window, scale, table, consts, out,
            (rows, rows // per_group, 1))
    return out


def _check_sizes(G: int, T: int, first: int, lo: int, n: int) -> None:
    if G > 65535:
        raise ShapeError(f"the integer attention kernel takes at most 65535 key/value head groups a call, got {G}")
    if max(first + T, lo + n) >= 1 << 30:
        raise ShapeError(f"the integer attention kernel takes positions below 2^30, got rows from {first} and keys "
                         f"from {lo} ({n} keys)")


def _warps(rows: int) -> int:
    return WARPS or (1 if rows <= 16 else 4)


def _bits(consts: np.ndarray) -> tuple[int, int]:
    """(bits, p_bits) of the scheme's constants (LOG2E_30, LN2_15, P_BITS, BITS)."""
    return int(consts[3]), int(consts[2])


def _launch(module: cupy.RawModule, parts: list, G: int, rows: int, n: int, D: int, per_group: int, first: int,
            lo: int, window: int | None, scale: float, table: np.ndarray, consts: np.ndarray, out: Array,
            out_map: tuple[int, int, int]) -> None:
    """loom_int_attend over the integers `parts` (q's [G rows], k's and v's [G n]: integers, exponents, flags), its
    splits' partials and their finish where the grid would leave multiprocessors idle; row a T + t of group g into
    row g osg + a osa + t osb of out's rows of D (out_map (osg, osa, osb))."""
    warps = _warps(rows)
    log2e, ln2 = int(consts[0]), int(consts[1])
    T = rows // per_group
    blocks = -(-rows // (16 * warps))
    span = min(n, first + T - lo)                                       # (a block's most keys)
    if window:
        span = min(span, window + 16 * warps)
    tiles = -(-span // BKEYS) + (1 if window else 0)                   # (+ 1: a window's start mid-tile)
    splits = SPLITS or _splits(blocks * G, tiles, warps)
    kernel = module.get_function("loom_int_attend")
    shared = _shared_bytes(D)
    if kernel.max_dynamic_shared_size_bytes < shared:
        kernel.max_dynamic_shared_size_bytes = shared
    omap = tuple(np.int32(m) for m in out_map)
    args = (*parts, device_table(table), out, *omap, np.int32(rows), np.int32(n), np.int32(T), np.int32(first),
            np.int32(lo), np.int32(window or 0), np.float64(np.float32(scale)), np.int64(log2e), np.int64(ln2))
    if splits == 1:
        kernel((blocks, G, 1), (32 * warps,), args + (np.int32(0), np.int32(1)) + (np.uint64(0),) * 4, shared_mem=shared)
        return
    entries = G * rows * splits
    wtop, wflags = cupy.empty(entries, np.float64), cupy.empty(2 * entries, np.int32)
    wden, wnum = cupy.empty(entries, np.uint64), cupy.empty(entries * D, np.int64)
    for mode in (1, 2):
        kernel((blocks, G, splits), (32 * warps,), args + (np.int32(mode), np.int32(splits), wtop, wflags, wden, wnum),
               shared_mem=shared)
    module.get_function("loom_int_finish")((-(-(G * rows * D) // 256),), (256,),
                                           (wflags, wden, wnum, out, *(np.int64(m) for m in out_map), np.int64(rows), np.int64(T),
                                            np.int64(G * rows * D), np.int32(splits)))


def _splits(blocks: int, tiles: int, warps: int) -> int:
    """How many blocks share a block's keys: enough blocks for SPLIT_BLOCKS a multiprocessor (4 warps each), each
    split at least SPLIT_TILES tiles, at most 16."""
    want = -(-SPLIT_BLOCKS * _multiprocessors() * 4 // warps // blocks)
    return max(1, min(want, tiles // SPLIT_TILES, 16))


@cache
def _multiprocessors() -> int:
    return cupy.cuda.Device().attributes["MultiProcessorCount"]


_TABLES: dict = {}


def device_table(table: np.ndarray) -> Array:
    """The exp table on the device (int64), made once (recordings read it, so it is never made inside one)."""
    key = table.tobytes()
    if key not in _TABLES:
        _TABLES[key] = cupy.asarray(table, dtype=np.int64)
    return _TABLES[key]
