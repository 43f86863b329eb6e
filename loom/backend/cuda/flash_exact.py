"""Deterministic prompt attention over a paged cache in three kernels around the reference's softmax (issue
60): each query row's context with the bits of the composition it replaces (decoder.attend in
deterministic mode: the exact GEMM q k^T, fused_exact's softmax of the scaled, masked scores, the exact
GEMM p v), reading the keys and values in place through the item's key slots, with no float64 copies
of the scores and no separate norm, certification and settling passes.

1. loom_exact_scores: a block takes 64 query rows of one key-value head (rows r T + t of its group's R
   heads) by SCORES_SPAN keys in tiles of 64, on the float64 tensor cores (quant_tiles' DMMA2), and certifies each
   score against error_factor(D) ||q|| ||k|| (the rounded scheme, D <= 2048); the warp settles the rest
   over the staged rows, and IEEE's value where a norm is not finite: s is the exact dot product rounded
   once, as the reference's GEMM gives it. Only tiles some row keeps are computed (causal); keys
   before a row's sliding window get -inf.
2. fused_exact.scaled_masked_softmax, the reference's own kernel, causal with offset pos - lo: a
   window's -inf keys become exp(-inf) = 0, the masked reference's value, and leave the peak alone.
3. loom_exact_context_parts: p . v of the same row tiles over parts of SPAN keys on the tensor cores,
   float64 sums per part, and the rounded sums of p^2 and of v[:, d]^2 from the fragments it loads.
4. loom_exact_context_finish, a warp a row: the parts added in order, certified against
   error_factor(SPAN + parts) ||p|| ||v[:, d]|| (the float64 sums' own bound; the certified value is the
   exact sum rounded once, the reference's rounded scheme's value up to ROUNDED_MAX_K keys), the rest
   settled by the warp over the keys the row keeps (loom_settle_walk, or loom_special_walk over all of
   them where a norm is not finite).
A certified entry is the exact value rounded once whatever the order of the float64 sums, so the parts
and tiles are free. Capturable: sizes as arguments, no host read, no sync.
"""
from __future__ import annotations

from collections.abc import Callable
from functools import cache

import cupy
import numpy as np

from .. import Array
from . import fused_exact
from .compile import OPTIONS, translating
from .exact_reduce import EXACT_ROW_SUM
from .exact_rounded import ROUNDED_DEVICE
from .fused import ROW_HELPERS
from .quant_exact import _MARK, SETTLE
from .quant_finish import DMMA2

HEAD_DIMS = (64, 128)
MAX_KEYS = 2048             # exact_dispatch.ROUNDED_MAX_K: p @ v over more keys takes the slice scheme
ROWS = 64                   # query rows a block takes
KEYS = 64                   # keys a tile holds
SPAN = 256                  # keys a part of the context sums takes (the parts are added in order)
SCORES_SPAN = 128           # keys a block of the scores takes (more blocks than SPAN's: the scores' grid is the
                            # chunk's row tiles x its keys / this x the key-value heads, a few hundred blocks)

_SOURCE = r"""
#define QM 64                          // query rows a block takes
#define KN 64                          // keys a tile holds
// The scores' staged rows of q and k are floats (converted to float64 as the fragments load them: half the
// shared memory of doubles, so more blocks a multiprocessor), padded so that a warp's fragment loads hit 32
// banks (rows g, columns c: a row stride of 4 mod 32 floats). The context parts stage p and v as doubles: their
// grid is under one wave, so the conversions cost time that more resident blocks would not win back (6.1 ms
// with doubles, 7.4 with floats, for SmolLM2's 2,048-token prompt on an H200).
#define DQ (D + 4)                     // floats a staged row of q or k takes
#define DP (D + 4)                     // doubles a staged row of v takes (the fragments' loads hit each bank
#define PP (KN + 4)                    // once a half-warp); PP: a row of p
#define THREADS (WARPS * 32)
#define WN (WARPS / 2)                 // warp columns (two warp rows of 32 query rows)
#define SF (KN / WN / 8)               // 8-wide fragments of scores a warp takes
#define CF (D / WN / 8)                // 8-wide fragments of context a warp takes
#define TPR (THREADS / 64)             // threads staging one row
static_assert(SPAN % KN == 0 && SCORES_SPAN % KN == 0, "a block's keys are whole tiles (a part's sums would "
              "take the next part's keys)");
static_assert(8 * SF <= 32, "a thread's open scores are bits of one 32-bit mask");
// (the scores: __launch_bounds__(THREADS, 512 / THREADS), at most 128 registers a thread: four blocks of 128
// threads or two of 256 a multiprocessor, which their shared memory allows)

struct LoomFlash {
    const float* q; long long q_row; const float* kc; const float* vc; const long long* slots; int T, H, KV, n, pos,
    lo, window; double factor_d, factor_n;
};
#define LOOM_FLASH_ARGS const float* q, long long q_row, const float* kc, const float* vc, const long long* slots, \
        int T, int H, int KV, int n, int pos, int lo, int window, double factor_d, double factor_n
#define LOOM_FLASH {q, q_row, kc, vc, slots, T, H, KV, n, pos, lo, window, factor_d, factor_n}

// Row rho of a key-value head's group (rho = r T + t): its query's t, r and the keys it keeps, [first, kept).
__device__ __forceinline__ void loom_flash_row(const LoomFlash& p, int rho, int* t, int* r, int* first, int* kept) {
    *r = rho / p.T;
    *t = rho - *r * p.T;
    const int qpos = p.pos + *t;
    *kept = min(p.n, qpos - p.lo + 1);
    *first = p.window > 0 ? max(0, qpos - p.window + 1 - p.lo) : 0;
}

__device__ __forceinline__ const float* loom_flash_key(const LoomFlash& p, const float* cache, int kv, int j) {
    return cache + (p.slots[j] * p.KV + kv) * D;
}

// The block's rows: their keys (first_s, kept_s); returns the largest kept and sets *low to the least first.
__device__ int loom_flash_rows(const LoomFlash& p, int rho0, int rows, int* first_s, int* kept_s, int* low) {
    if (threadIdx.x < QM) {
        int t, r, first = 0, kept = 0;
        if (rho0 + threadIdx.x < rows) loom_flash_row(p, rho0 + threadIdx.x, &t, &r, &first, &kept);
        first_s[threadIdx.x] = first;
        kept_s[threadIdx.x] = kept;
    }
    __syncthreads();
    int lo = p.n, hi = 0;
    for (int i = 0; i < QM; ++i)
        if (kept_s[i] > first_s[i]) { lo = min(lo, first_s[i]); hi = max(hi, kept_s[i]); }
    *low = lo;
    return hi;
}

// Stage 64 rows of D floats into dst (`stride` apart) and their norms into norm (the square root of the
// rounded sum of the exact squares); row i's floats at src(i) (nullptr: zeros), 16-byte aligned.
template <class Src, class S> __device__ __forceinline__ void loom_flash_stage(Src src, S* dst, int stride, double* norm) {
    const int row = threadIdx.x / TPR, part = threadIdx.x % TPR;
    const float* from = src(row);
    double sq = 0.0;
    #pragma unroll
    for (int u = 0; u < D / TPR; u += 4) {
        const int d = part * (D / TPR) + u;
        const float4 v = from != nullptr ? *(const float4*)(from + d) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        const double e[4] = {v.x, v.y, v.z, v.w};
        #pragma unroll
        for (int j = 0; j < 4; ++j) {
            dst[row * stride + d + j] = (S)e[j];
            sq = __dadd_rn(sq, __dmul_rn(e[j], e[j]));
        }
    }
    #pragma unroll
    for (int o = 1; o < TPR; o <<= 1) sq = __dadd_rn(sq, __shfl_xor_sync(LOOM_FULL, sq, o));
    if (part == 0 && norm != nullptr) norm[row] = __dsqrt_rn(sq);
}

// The scores s[kv, rho, j] = q . k (the rounded scheme: exact, rounded once; IEEE's value where a row
// holds inf or NaN) of the block's 64 rows and the keys of span blockIdx.y (SCORES_SPAN keys, tiles of 64)
// that some row keeps; -inf where j is before a row's window (its softmax then takes exp(-inf) = 0:
// the masked reference's 0); keys at or past a row's kept are left unwritten (the softmax reads none).
extern "C" __global__ void __launch_bounds__(THREADS, 512 / THREADS) loom_exact_scores(LOOM_FLASH_ARGS, float* scores) {
    const LoomFlash p = LOOM_FLASH;
    extern __shared__ __align__(16) double smem[];
    float* q_s = (float*)smem;                  // [QM][DQ]
    float* k_s = q_s + QM * DQ;                 // [KN][DQ]
    double* qn_s = (double*)(k_s + KN * DQ);    // [QM] ((QM + KN) DQ floats: a multiple of two)
    double* kn_s = qn_s + QM;                   // [KN]
    int* first_s = (int*)(kn_s + KN);           // [QM]
    int* kept_s = first_s + QM;                 // [QM]
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wm = warp / WN, wn = warp % WN;
    const int g = lane >> 2, c = lane & 3;
    const int kv = blockIdx.z, R = p.H / p.KV, rows = R * p.T, rho0 = blockIdx.x * QM;
    int low;
    const int high = loom_flash_rows(p, rho0, rows, first_s, kept_s, &low);
    const int start = blockIdx.y * SCORES_SPAN, stop = min(high, start + SCORES_SPAN);
    if (start >= high) return;
    float* out = scores + (long long)kv * rows * p.n;
    bool staged = false;
    for (int k0 = start; k0 < stop; k0 += KN) {
        if (k0 + KN <= low) {                   // before every row's window
            for (int e = tid; e < QM * KN; e += THREADS) {
                const int i = e / KN, j = k0 + e % KN;
                if (rho0 + i < rows && j < kept_s[i]) out[(long long)(rho0 + i) * p.n + j] = __int_as_float(0xff800000);
            }
            continue;
        }
        if (!staged) {
            loom_flash_stage([&](int i) -> const float* {
                const int rho = rho0 + i;
                if (rho >= rows) return nullptr;
                const int r = rho / p.T, t = rho - r * p.T;
                return p.q + (long long)t * p.q_row + (kv * R + r) * D;
            }, q_s, DQ, qn_s);
            staged = true;
        }
        loom_flash_stage([&](int i) -> const float* {
            return k0 + i < p.n ? loom_flash_key(p, p.kc, kv, k0 + i) : nullptr;
        }, k_s, DQ, kn_s);
        __syncthreads();
        double acc[4][SF][2];
        #pragma unroll
        for (int i = 0; i < 4; ++i)
            #pragma unroll
            for (int j = 0; j < SF; ++j) { acc[i][j][0] = 0.0; acc[i][j][1] = 0.0; }
        #pragma unroll 4
        for (int kk = 0; kk < D / 4; ++kk) {
            double af[4], bf[SF];
            #pragma unroll
            for (int i = 0; i < 4; ++i) af[i] = q_s[(32 * wm + 8 * i + g) * DQ + 4 * kk + c];
            #pragma unroll
            for (int j = 0; j < SF; ++j) bf[j] = k_s[(8 * (SF * wn + j) + g) * DQ + 4 * kk + c];
            #pragma unroll
            for (int i = 0; i < 4; i += 2)
                #pragma unroll
                for (int j = 0; j < SF; ++j) loom_dmma2(acc[i][j], acc[i + 1][j], af[i], af[i + 1], bf[j]);
        }
        // each certified score written at once, the open ones marked in `doubts` (bit (i SF + j) 2 + hh) and
        // settled after, by the warp, one at a time (one settling call site, not one an entry)
        unsigned doubts = 0u;
        #pragma unroll
        for (int i = 0; i < 4; ++i)
            #pragma unroll
            for (int j = 0; j < SF; ++j)
                #pragma unroll
                for (int hh = 0; hh < 2; ++hh) {
                    const int lm = 32 * wm + 8 * i + g, lc = 8 * (SF * wn + j) + 2 * c + hh, key = k0 + lc;
                    const bool valid = rho0 + lm < rows && key < kept_s[lm];
                    const bool windowed = key < first_s[lm];
                    const double sc = acc[i][j][hh], norms = __dmul_rn(qn_s[lm], kn_s[lc]);
                    float v = 0.0f;
                    const bool doubt = valid && !windowed && (!isfinite(norms) ||
                        !loom_certified(sc, __dadd_rn(__dmul_rn(norms, p.factor_d), __dmul_rn(fabs(sc), 0x1p-52)), &v));
                    if (doubt) doubts |= 1u << ((i * SF + j) * 2 + hh);
                    else if (valid) out[(long long)(rho0 + lm) * p.n + key] = windowed ? __int_as_float(0xff800000) : v;
                }
        for (unsigned left = __ballot_sync(LOOM_FULL, doubts != 0u); left; left = __ballot_sync(LOOM_FULL, doubts != 0u)) {
            const int src = __ffs(left) - 1;
            const int b = __ffs(__shfl_sync(LOOM_FULL, doubts, src)) - 1;      // src's first open score
            const int i = b / (2 * SF), j = (b >> 1) % SF, hh = b & 1;
            const int sm = 32 * wm + 8 * i + (src >> 2), sk = 8 * (SF * wn + j) + 2 * (src & 3) + hh;
            auto walk = [=](auto f) {
                for (int d = lane; d < D; d += 32) f(q_s[sm * DQ + d], k_s[sk * DQ + d]);
            };
            const float settled = isfinite(__dmul_rn(qn_s[sm], kn_s[sk])) ? loom_settle_walk(walk, D)
                                                                          : loom_special_walk(walk);
            if (lane == src) {
                out[(long long)(rho0 + sm) * p.n + k0 + sk] = settled;
                doubts &= doubts - 1u;
            }
        }
        __syncthreads();                        // k_s is read by the settling warps until here
    }
}

// Part blockIdx.y of the context sums p . v (keys [y SPAN, (y + 1) SPAN)) of the block's rows, in float64
// on the tensor cores: sums [y][kv][rho][d], the rounded sums of p^2 [y][kv][rho], and (the last row
// tile, whose last row keeps every key) those of v[:, d]^2 [y][kv][d].
extern "C" __global__ void __launch_bounds__(THREADS) loom_exact_context_parts(LOOM_FLASH_ARGS, const float* probs,
                                                                               double* sums, double* squares,
                                                                               double* vsquares) {
    const LoomFlash p = LOOM_FLASH;
    extern __shared__ __align__(16) double smem[];
    double* p_s = smem;                         // [QM][PP]
    double* v_s = p_s + QM * PP;                // [KN][DP]
    int* first_s = (int*)(v_s + KN * DP);       // [QM]
    int* kept_s = first_s + QM;                 // [QM]
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wm = warp / WN, wn = warp % WN;
    const int g = lane >> 2, c = lane & 3;
    const int kv = blockIdx.z, R = p.H / p.KV, rows = R * p.T, rho0 = blockIdx.x * QM, part = blockIdx.y;
    const bool last_tile = blockIdx.x == gridDim.x - 1;
    int low;
    const int high = loom_flash_rows(p, rho0, rows, first_s, kept_s, &low);
    const int start = part * SPAN, stop = min(high, start + SPAN);
    if (start >= high) return;
    const float* pr = probs + (long long)kv * rows * p.n;
    double ctx[4][CF][2];
    #pragma unroll
    for (int i = 0; i < 4; ++i)
        #pragma unroll
        for (int j = 0; j < CF; ++j) { ctx[i][j][0] = 0.0; ctx[i][j][1] = 0.0; }
    double psq[4] = {0.0, 0.0, 0.0, 0.0}, vsq[CF] = {};   // from this lane's fragments (rows g, columns g)
    for (int k0 = start; k0 < stop; k0 += KN) {
        #pragma unroll 4
        for (int e = tid; e < QM * KN; e += THREADS) {      // consecutive threads, consecutive keys
            const int i = e / KN, j = k0 + e % KN;
            p_s[i * PP + e % KN] = rho0 + i < rows && j < p.n ? (double)pr[(long long)(rho0 + i) * p.n + j] : 0.0;
        }
        loom_flash_stage([&](int i) -> const float* {
            return k0 + i < p.n ? loom_flash_key(p, p.vc, kv, k0 + i) : nullptr;
        }, v_s, DP, nullptr);
        __syncthreads();
        #pragma unroll 4
        for (int kk = 0; kk < KN / 4; ++kk) {
            double af[4], bf[CF];
            #pragma unroll
            for (int i = 0; i < 4; ++i) af[i] = p_s[(32 * wm + 8 * i + g) * PP + 4 * kk + c];
            #pragma unroll
            for (int j = 0; j < CF; ++j) bf[j] = v_s[(4 * kk + c) * DP + 8 * (CF * wn + j) + g];
            #pragma unroll
            for (int i = 0; i < 4; i += 2)
                #pragma unroll
                for (int j = 0; j < CF; ++j) loom_dmma2(ctx[i][j], ctx[i + 1][j], af[i], af[i + 1], bf[j]);
            if (wn == 0) {
                #pragma unroll
                for (int i = 0; i < 4; ++i) psq[i] = __dadd_rn(psq[i], __dmul_rn(af[i], af[i]));
            }
            if (wm == 0 && last_tile) {
                #pragma unroll
                for (int j = 0; j < CF; ++j) vsq[j] = __dadd_rn(vsq[j], __dmul_rn(bf[j], bf[j]));
            }
        }
        __syncthreads();
    }
    const long long base = ((long long)part * p.KV + kv) * rows;
    // the four lanes (c) of a row or column hold its shares
    #pragma unroll
    for (int i = 0; i < 4; ++i) {
        psq[i] = __dadd_rn(psq[i], __shfl_xor_sync(LOOM_FULL, psq[i], 1));
        psq[i] = __dadd_rn(psq[i], __shfl_xor_sync(LOOM_FULL, psq[i], 2));
        const int lm = 32 * wm + 8 * i + g;
        if (wn == 0 && c == 0 && rho0 + lm < rows) squares[base + rho0 + lm] = psq[i];
    }
    if (last_tile && wm == 0) {
        #pragma unroll
        for (int j = 0; j < CF; ++j) {
            vsq[j] = __dadd_rn(vsq[j], __shfl_xor_sync(LOOM_FULL, vsq[j], 1));
            vsq[j] = __dadd_rn(vsq[j], __shfl_xor_sync(LOOM_FULL, vsq[j], 2));
            if (c == 0) vsquares[((long long)part * p.KV + kv) * D + 8 * (CF * wn + j) + g] = vsq[j];
        }
    }
    #pragma unroll
    for (int i = 0; i < 4; ++i)
        #pragma unroll
        for (int j = 0; j < CF; ++j)
            #pragma unroll
            for (int hh = 0; hh < 2; ++hh) {
                const int lm = 32 * wm + 8 * i + g, d = 8 * (CF * wn + j) + 2 * c + hh;
                if (rho0 + lm < rows) sums[(base + rho0 + lm) * D + d] = ctx[i][j][hh];
            }
}

// The context out[t, h D + d], a warp a row: the parts that hold its kept keys added in order, certified
// against factor_n ||p|| ||v[:, d]|| (attend's error_factor(SPAN + parts)); the rest settled by the warp over
// the keys the row keeps (IEEE's value over all n where a norm is not finite). At D = 64 bounded to 128
// registers, two blocks a multiprocessor (a latency-bound kernel; the settling walk took it to 137, one block);
// at D = 128 that bound spills (ptxas), and the heads of 128 were not measured, so it stays unbounded there.
extern "C" __global__ void __launch_bounds__(256, D <= 64 ? 2 : 1)
loom_exact_context_finish(LOOM_FLASH_ARGS, const float* probs, const double* sums, const double* squares,
                          const double* vsquares, float* out) {
    const LoomFlash p = LOOM_FLASH;
    const int lane = threadIdx.x & 31, R = p.H / p.KV, rows = R * p.T;
    const long long at = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    if (at >= (long long)p.KV * rows) return;
    const int kv = (int)(at / rows), rho = (int)(at - (long long)kv * rows);
    int t, r, first, kept;
    loom_flash_row(p, rho, &t, &r, &first, &kept);
    const int parts = (kept + SPAN - 1) / SPAN, all_parts = (p.n + SPAN - 1) / SPAN;
    // every part's value loaded before the first addition (MAX_PARTS unrolled: one memory latency where a
    // loop over the parts waited for each load in turn), then added in order
    double held[MAX_PARTS];
    #pragma unroll
    for (int s = 0; s < MAX_PARTS; ++s) held[s] = s < parts ? squares[((long long)s * p.KV + kv) * rows + rho] : 0.0;
    double psq = 0.0;
    #pragma unroll
    for (int s = 0; s < MAX_PARTS; ++s) if (s < parts) psq = __dadd_rn(psq, held[s]);
    const double pnorm = __dsqrt_rn(psq);
    const float* pr = probs + ((long long)kv * rows + rho) * p.n;
    float* o = out + (long long)t * p.H * D + (kv * R + r) * D;
    #pragma unroll
    for (int u = 0; u < D / 32; ++u) {
        const int d = lane + 32 * u;
        #pragma unroll
        for (int s = 0; s < MAX_PARTS; ++s)
            held[s] = s < parts ? sums[(((long long)s * p.KV + kv) * rows + rho) * D + d] : 0.0;
        double sum = 0.0;
        #pragma unroll
        for (int s = 0; s < MAX_PARTS; ++s) if (s < parts) sum = __dadd_rn(sum, held[s]);
        // ||v[:, d]|| over the row's parts' keys (all it keeps, and more) bounds its sums; the reference's
        // special values look at the whole column (an inf at a key p gives 0 still makes 0 inf = NaN).
        // (The same for every row of the key-value head: mostly L1 hits)
        double vsq = 0.0, whole = 0.0;
        for (int s = 0; s < all_parts; ++s) {
            const double part = vsquares[((long long)s * p.KV + kv) * D + d];
            whole = __dadd_rn(whole, part);
            if (s < parts) vsq = __dadd_rn(vsq, part);
        }
        const double norms = __dmul_rn(pnorm, __dsqrt_rn(vsq));
        float v = 0.0f;
        const bool special = !isfinite(norms) || !isfinite(whole);
        const bool doubt = special ||
            !loom_certified(sum, __dadd_rn(__dmul_rn(norms, p.factor_n), __dmul_rn(fabs(sum), 0x1p-52)), &v);
        for (unsigned left = __ballot_sync(LOOM_FULL, doubt); left; left &= left - 1) {
            const int src = __ffs(left) - 1;
            const int sd = src + 32 * u;
            const bool sp = __shfl_sync(LOOM_FULL, special, src);
            auto pair = [=](long long j, float* a, float* b) { *a = pr[j]; *b = loom_flash_key(p, p.vc, kv, (int)j)[sd]; };
            // the settled sum over the keys the row keeps (the rest have p = +0, which adds nothing); IEEE's
            // special value over all n (0 inf is NaN)
            const float settled = sp ? loom_special_walk([=](auto f) { loom_lanes_walk<8>(0, p.n, pair, f); })
                                     : loom_settle_walk([=](auto f) { loom_lanes_walk<8>(first, kept, pair, f); },
                                                        kept - first);
            if (lane == src) v = settled;
        }
        o[d] = v;
    }
}
"""


@cache
def _module(head_dim: int):
    warps = 4 if head_dim == 64 else 8
    head = (f"typedef float T;\n#define D {head_dim}\n#define WARPS {warps}\n#define SPAN {SPAN}\n"
            f"#define SCORES_SPAN {SCORES_SPAN}\n"
            f"#define MAX_PARTS {-(-MAX_KEYS // SPAN)}\n")
    source = head + fused_exact.helpers() + ROW_HELPERS + EXACT_ROW_SUM + ROUNDED_DEVICE + _MARK + SETTLE + DMMA2 + _SOURCE
    return cupy.RawModule(code=source, options=OPTIONS + ("-std=c++17",)), warps


def _launch(kernel, grid: tuple, threads: int, args: tuple, shared: int) -> None:
    """kernel<<<grid, threads, shared>>>: the kernel's limit of dynamic shared memory raised first, on the
    current device (each device's loaded function has its own)."""
    if kernel.max_dynamic_shared_size_bytes < shared:
        kernel.max_dynamic_shared_size_bytes = shared
    kernel(grid, (threads,), args, shared_mem=shared)


def _shared_bytes(head_dim: int) -> tuple[int, int]:
    """Dynamic shared memory of loom_exact_scores (q and k tiles, their norms, the rows' key ranges) and
    of loom_exact_context_parts (p and v tiles, the key ranges)."""
    dq, pp = head_dim + 4, KEYS + 4          # (DQ: floats a staged row of q or k takes; DP = DQ and PP: doubles)
    return 4 * (ROWS + KEYS) * dq + 8 * (ROWS + KEYS) + 8 * ROWS, 8 * (ROWS * pp + KEYS * dq) + 8 * ROWS


def unsupported(head_dim: int, keys: int) -> str | None:
    """Why `attend` cannot take an item's attention (None where it can)."""
    from . import quant_tiles
    if not quant_tiles.available():
        return "the device has no float64 tensor cores"
    if head_dim not in HEAD_DIMS:
        return f"head size {head_dim} (the kernels take {', '.join(map(str, HEAD_DIMS))})"
    if not 0 < keys <= MAX_KEYS:
        return f"{keys} keys (p v over more than {MAX_KEYS} takes the slice scheme)"
    return None


def attend(q: Array, k_cache: Array, v_cache: Array, key_slots: Array, pos: int, lo: int, window: int | None,
           scale: float, error_factor: Callable[[int], float], out: Array | None = None) -> Array:
    """The context [T, H*D] of queries q [T, H, D] (float32, each row's heads contiguous; row t at
    position pos + t) over the keys at positions lo .. pos + T - 1, read from the paged cache k_cache,
    v_cache [slots, KV, D] (C-contiguous) at key_slots (int64 [n] on the device, n = pos + T - lo),
    causal within `window` (None: all), with deterministic mode's bits (the composed reference's);
    `unsupported` has said None; error_factor is exact_rounded.error_factor (the rounded scheme's bound
    for sums of K products). Writes `out` when given."""
    T, H, D = q.shape
    KV, n = k_cache.shape[1], pos + T - lo
    rows = (H // KV) * T
    if out is None:
        out = cupy.empty((T, H * D), dtype=np.float32)
    if T == 0:
        return out
    if n > MAX_KEYS:        # (the finishing kernel holds at most MAX_KEYS / SPAN parts)
        raise ValueError(f"flash_exact.attend takes at most {MAX_KEYS} keys, got {n}: check `unsupported` first")
    for name, a in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache), ("out", out)):
        if a.dtype != np.float32:
            raise ValueError(f"flash_exact.attend takes float32 arrays, {name} is {a.dtype}")
    if any(not c.flags.c_contiguous or c.data.ptr % 16 for c in (k_cache, v_cache)) or not out.flags.c_contiguous:
        raise ValueError("flash_exact.attend reads the caches as C-contiguous rows 16-byte aligned and writes out whole")
    if q.strides[1:] != (4 * D, 4) or q.strides[0] % 16 or q.data.ptr % 16:
        q = cupy.ascontiguousarray(q)
    module, warps = _module(D)
    row_tiles, parts = -(-rows // ROWS), -(-n // SPAN)
    # A context entry's float64 sum rounds SPAN exact products a part (any order: the tensor cores') and then
    # adds the parts in order, so its error is within gamma(SPAN + parts) sum |p v|: the bound of
    # error_factor(SPAN + parts), not of n keys, which leaves ~n / SPAN times fewer entries to settle.
    args = (q, np.int64(q.strides[0] // 4), k_cache, v_cache, key_slots, np.int32(T), np.int32(H), np.int32(KV),
            np.int32(n), np.int32(pos), np.int32(lo), np.int32(window or 0), np.float64(error_factor(D)),
            np.float64(error_factor(min(n, SPAN + parts))))
    scores_bytes, parts_bytes = _shared_bytes(D)
    with translating("deterministic prompt attention", q, k_cache):
        scores = cupy.empty((KV * (H // KV), T, n), dtype=np.float32)
        _launch(module.get_function("loom_exact_scores"), (row_tiles, -(-n // SCORES_SPAN), KV), 32 * warps,
                args + (scores,), scores_bytes)
        # the reference's own softmax kernel: keys j < first hold -inf, so exp gives the mask's 0
        probs = fused_exact.scaled_masked_softmax(scores, scale, True, pos - lo)
        sums = cupy.empty((parts, KV, rows, D), dtype=np.float64)
        squares = cupy.empty((parts, KV, rows), dtype=np.float64)
        vsquares = cupy.empty((parts, KV, D), dtype=np.float64)
        _launch(module.get_function("loom_exact_context_parts"), (row_tiles, parts, KV), 32 * warps,
                args + (probs, sums, squares, vsquares), parts_bytes)
        module.get_function("loom_exact_context_finish")((-(-KV * rows * 32 // 256),), (256,),
                                                         args + (probs, sums, squares, vsquares, out))
    return out
