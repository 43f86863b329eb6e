"""The planes' products of decode batches in one pipelined kernel: quant_fixed_planes' int8 planes on the int8
tensor cores (mma.sync m16n8k32), staged through shared memory by cp.async, K split over the blocks of a
thread-block cluster, finished in the same launch, in place of cuBLAS's GEMM and the finishing kernel, whose int32
blocks [2 M, 2 N] went out to memory and back (`takes` says where: up to four fragments of x over rows of up to
1,536, one over rows of up to 2,048, four there against a SwiGLU's wide W; where the products run on wgmma, also
a wide SwiGLU's over K <= 4,096 and an lm_head's up to 16 rows, at any rows over K <= 1,536). The same bits: the
sums are exact integers, so neither the order of k nor the split of K over blocks can change them.

A block (4 warps along W's rows, times X_WARPS along x's fragments from two of them) takes TILE_ROWS stored
rows of W (SwiGLU: TILE_ROWS / 2 of the gate's and the matching up rows) against every row of x, over its
share of K's 64-value chunks (a contiguous range; the cluster's SPLITS blocks share a tile's K). Each
chunk's planes (W's h and l' rows, x's) come into one of STAGES shared-memory stages by cp.async, STAGES - 1
chunks ahead of the products (W's first chunks before the programmatic wait: the previous kernel does not
write them). Each warp takes two fragments of 8 rows of W (SwiGLU: gate and up) against its fragments of 16
rows of x; a lane reads 16 bytes of each plane of its rows (k's order is free: the products are exact), two
m16n8k32 products a plane pair and chunk, HH into one int32 accumulator, HL' and L'H into a second (exact:
|h l'| <= 2^14 and a block sums K < 2^16), L'L' into a third, in an order that puts other products between
HL' and L'H (they share an accumulator). After the chunks each entry's int64 sum
(65536 HH + 256 (HL' + L'H) + L'L') goes to shared memory; the cluster's blocks meet at a barrier, and each
finishes a share of the tile's entries, adding the SPLITS blocks' sums through distributed shared memory
(integer additions: any order) as quant_fixed_planes' finishing kernel does: + 128 (sum q_x + sum q_w) -
16384 K, scaled by 2^(ex + ew - 30), rounded once, inf and NaN rows by one thread, then the epilogue
(loom_fixed_store's). A second barrier keeps every block's sums until the others have read them.

A thread finishes entries of one column, and every load the finishing needs is in flight before it waits: W's
tables for the column are prefetched into L1 at the start, x's tables and the residuals are loaded before the
barrier, and all the blocks' shares of the thread's entries before any is added. (Before, each entry loaded them in
turn, a round trip to L2 or memory each: H200, benchmarks/planes_products.py at 64 rows, SmolLM2-135M's products
9.2-11.0 -> 8.0-10.4 us, its lm_head 57.0 -> 49.1; decode_graph_parts.py --whole --deterministic, SmolLM2-135M's
step at 64 / 16 rows 1,537 / 1,012 -> 1,379 / 871 us, Llama-3.2-1B's at 16 rows 1,643 -> 1,582.)

That is the mma.sync form. On compute capability 9.0 the products of wide SwiGLU W and of an lm_head's at few rows
run on wgmma instead (quant_fixed_planes_wgmma: one warpgroup a block, stages of 128 values a row in the 128-byte
swizzle; wgmma_takes says where); the prologue and the finishing are this module's, and the stage layout
(LOOM_ROW, LOOM_KC, LOOM_DEST) and the stages' declaration are each form's own.

Clusters need compute capability 9.0 (Hopper); below it the products keep cuBLAS's GEMM. Capturable: sizes
as arguments, no sync, no host read, no memory of its own.
"""
from __future__ import annotations

from functools import cache
from typing import NamedTuple

import cupy
import numpy as np

from ... import fallback
from ...errors import ShapeError
from .. import Array
from . import quant_fixed_planes_wgmma
from .compile import OPTIONS, arch_module
from .launch import launch
from .quant import BLOCK_DECODE, type_defines
from .quant_exact import _multiprocessors
from .quant_fixed import _head
from .quant_fixed_source import SOURCE as FIXED_SOURCE


class WeightPlanes(NamedTuple):
    """A weight's planes for the int8 products (quant_fixed_planes.w_planes makes them): planes int8 [2 padded,
    K] (h rows, then l' rows), the rows' integer sums int64 [rows], its exponents and inf/NaN flags
    (quant_fixed.w_exponents), and the padded row count (a multiple of 16)."""
    planes: Array
    sums: Array
    exponents: Array
    bad: Array
    padded: int


# Where the kernel takes a product (else cuBLAS's GEMM and the finishing kernel): up to ROWS rows of x over K <=
# SHORT_K, up to LONG_ROWS over SHORT_K < K <= LONG_K (K a whole number of 64-value chunks; W's stored rows decide
# there too, below), on compute capability 9.0 (clusters). Measured on an H200 (benchmarks/planes_products.py, x's
# kernel included), us a product against cuBLAS's GEMM and the finishing kernel: at 16 rows Llama-3.2-1B's qkv 9.4 /
# 10.8, o 8.3 / 9.7, gate_up 33.0 / 34.0, down (K = 8,192) 15.5 / 14.8, Llama-3.1-8B's gate_up (K = 4,096) 104.9 /
# 80.3; SmolLM2-135M's gate_up and down at 32 rows 8.9 / 10.2 and 7.5 / 9.4, at 64 rows 11.4 / 11.8 and 9.3 / 9.6;
# Llama-3.2-1B's at 32 and 64 rows 1.04-1.95x slower. Past one fragment of x the int8 products of the four plane
# pairs (mma.sync) take longer than W's bytes: the kernel is bound by the tensor cores' issue, not by memory.
# (Decode steps, benchmarks/decode_graph_parts.py: SmolLM2-135M at 8 / 16 / 32 / 64 rows 1,276 / 1,302 /
# 1,503 / 1,744 -> 1,054 / 1,105 / 1,205 / 1,702 us, where 8 and 16 rows took the one-launch kernel it
# replaces, quant_fixed_planes_mma, with no split of K and no shared-memory stages.)
# Over SHORT_K < K <= LONG_K, W's stored (padded) rows decide too: past LONG_MAX_STORED (an lm_head's) cuBLAS's int8
# GEMM (wgmma) takes even 16 rows (where wgmma_takes does not send them to this kernel's wgmma form), and a SwiGLU
# product of LONG_WIDE_STORED stored rows or more (a gate_up's) takes the kernel up to ROWS rows (only that was
# measured faster there). H200, 2026-11-29, us, the mma.sync form / cuBLAS and finish:
# Llama-3.2-1B's lm_head (128,256 rows) at 16 rows 213 / 165, at 64 315 / 212; its gate_up (16,384 stored rows) at
# 64 rows 46.8 / 52.2, its qkv and o at 64 rows 20.7 / 12.3 and 17.7 / 11.3.
# TILED: whether it takes any (False: cuBLAS's GEMM, as before it).
TILED = True
# WGMMA: whether products may run on wgmma (quant_fixed_planes_wgmma) where compute capability is 9.0 (wgmma_takes
# says which; the SwiGLU rule measured at K = 896, 2,048 and 4,096); WG_ALL: the kernel takes every product it
# compiles for, and on wgmma (tests, benchmarks). H200, us a product (x's kernel included; splits before the one-wave
# rule, `splits`), wgmma / mma.sync / cuBLAS and finish: Llama-3.2-1B's gate_up at 1 / 16 / 64 rows 24.1 / 30.2 / 33.6,
# 26.5 / 31.5 / 34.4, 35.8 / 47.0 / 52.3; its lm_head 131 / 204 / 150, 142 / 213 / 164, 216 / 309 / 212; SmolLM2-135M's
# gate_up 6.0 / 6.4 / 7.9, 6.4 / 6.9 / 8.2, 10.4 / 10.6 / 11.7; but Llama-3.2-1B's qkv 10.5 / 8.6 / 10.2 at 1 row,
# 18.4 / 20.3 / 12.3 at 64, its down (K = 8,192) 15.5 / 14.5 / 14.0 and 27.6 / 37.8 / 19.5; Llama-3.1-8B's gate_up
# (K = 4,096) 64.1 / 93.4 / 77.6 at 1 row, 88.4 / 143.5 / 95.8 at 64, its down (K = 14,336) 42.3 / 53.8 / 45.6 at 1
# row, 64.3 / 91.8 / 49.2 at 64. Qwen2-0.5B's gate_up (9,728 stored rows, K = 896) at 16 / 64 rows 8.8 / 10.9 / 13.4 and
# 17.3 / 22.9 / 19.1 (one-wave splits).
WGMMA = True
WG_ALL = False
_WGMMA_FAILED: list[str] = []   # (the compile error where the wgmma form did not compile: mma.sync from then on)
WG_MAX_K = 4096
WG_WIDE_ROWS = 16
WG_SWIGLU_STORED = 8192
ROWS = 64
SHORT_K = 1536
LONG_ROWS = 16
LONG_K = 2048
LONG_MAX_STORED = 65536
LONG_WIDE_STORED = 16384
MAX_ROWS = 64           # (what the kernel compiles for: four fragments of x)
MAX_K = 1 << 16         # past it a block's HL' + L'H could leave int32
TILE_ROWS = 64          # stored rows of W a block takes
X_WARPS = 2             # warps along x's fragments from two fragments (4 along W's rows, two W fragments each)
MAX_SPLITS = 8          # blocks of a cluster (the portable cluster size)
MIN_CHUNKS = 2          # chunks a block takes at least where K is split (4 and 8: as fast or slower, H200)
STATIC_SHARED = 48 * 1024
MIN_BLOCKS = 2          # blocks a multiprocessor holds at least (__launch_bounds__: registers)
# (timing only: the kernel returns after a phase, its output meaningless: 1 the wait for the previous kernel, 2 the
# products summed, 3 the cluster's barrier; 0 runs it whole. planes_products.py --set ...quant_fixed_planes_tiled.PHASE_STOP=N;
# compiled as TILED_PHASE, since the source defines quant_fixed's PHASE_STOP too)
PHASE_STOP = 0

_HEAD = r"""
#define OUTS (EPI ? TILE_ROWS / 2 : TILE_ROWS)          // output rows a block finishes
#define X_ROWS (32 * MF)                                // x's plane rows a stage holds (h, then l')
#define STAGE_BYTES (CHUNK * (2 * TILE_ROWS + X_ROWS))  // W's h and l' rows, then x's, CHUNK bytes each
#define PPR (CHUNK / 16)                                 // 16-byte pieces of a row's chunk
#define FM ((MF + WM - 1) / WM)                         // x fragments a warp takes (of WM warps along x)
#define W_PIECES (PPR * 2 * TILE_ROWS / THREADS)        // 16-byte pieces of a stage's W a thread copies
#define X_PIECES ((PPR * X_ROWS + THREADS - 1) / THREADS) // ... and of x's (at most)
#define SUMS_ROW (TILE_ROWS + 1)                         // a row of the sums in shared memory (+ 1: fewer bank conflicts)
#define STEP (SPLITS * THREADS / OUTS)                  // rows of x between a thread's entries when finishing
#define ITER ((16 * MF + STEP - 1) / STEP)              // ... and their count
// A thread's piece P of a stage region's chunk is row LOOM_ROW(P)'s 16-byte piece LOOM_KC(P) (consecutive threads
// read a row's consecutive bytes), at byte LOOM_DEST(P) of the region
#ifndef LOOM_ROW                                         // (mma.sync: row after row, static shared memory; wgmma defines its own)
#define LOOM_STAGES_DECLARED __shared__ __align__(128) signed char stage_s[STAGES * STAGE_BYTES]
#define LOOM_DEST(P) (16 * (P))
#define LOOM_ROW(P) ((P) / PPR)
#define LOOM_IN_K(k) (CHUNK == 64 || (k) < K)
#define LOOM_KC(P) ((P) % PPR)
#endif
static_assert((SPLITS * THREADS) % OUTS == 0, "a thread finishes entries of one column");
static_assert(8 * 16 * MF * (SUMS_ROW + 2) <= STAGES * STAGE_BYTES, "the sums and x's tables fit in the stages");
// (not volatile: the compiler interleaves the products of independent accumulators)
#define LOOM_MMA(C, A, B) asm( \
    "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};" \
    : "+r"(C[0]), "+r"(C[1]), "+r"(C[2]), "+r"(C[3]) : "r"(A[0]), "r"(A[1]), "r"(A[2]), "r"(A[3]), "r"(B[0]), "r"(B[1]))

__device__ __forceinline__ void loom_cp16(void* dst, const void* src, bool ok) {
    const unsigned d = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" :: "r"(d), "l"(src), "r"(ok ? 16 : 0) : "memory");
}
__device__ __forceinline__ void loom_cp_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N> __device__ __forceinline__ void loom_cp_wait() {
    asm volatile("cp.async.wait_group %0;" :: "n"(N) : "memory");
}
// every thread of the cluster's blocks: shared-memory writes before it are visible to the others' reads after it
__device__ __forceinline__ void loom_cluster_sync() {
    asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;" ::: "memory");
}
// a 64-bit value of block `rank`'s shared memory at the address p has in this block's
__device__ __forceinline__ long long loom_cluster_ld(const long long* p, unsigned rank) {
    const unsigned a = (unsigned)__cvta_generic_to_shared(p);
    unsigned r;
    long long v;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(rank));
    asm volatile("ld.shared::cluster.s64 %0, [%1];" : "=l"(v) : "r"(r) : "memory");
    return v;
}

#if SPLITS > 1
#define LOOM_CLUSTER __cluster_dims__(SPLITS, 1, 1)
#else
#define LOOM_CLUSTER
#endif

extern "C" __global__ void __launch_bounds__(THREADS, MIN_BLOCKS) LOOM_CLUSTER loom_fixed_planes_tiled(
        const signed char* __restrict__ xp, const long long* __restrict__ sx, const int* __restrict__ ex,
        const int* __restrict__ xbad, const float* __restrict__ x,
        const signed char* __restrict__ wp, const long long* __restrict__ sw, const int* __restrict__ ew,
        const int* __restrict__ wbad, const unsigned char* __restrict__ w,
        float* __restrict__ out, const float* __restrict__ bias, const float* __restrict__ res,
        long long M, long long rows, long long padded, int nb) {
    LOOM_STAGES_DECLARED;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, c = lane & 3;
    const long long K = 32LL * nb, o0 = (long long)(blockIdx.x / SPLITS) * OUTS;
    const int rank = blockIdx.x % SPLITS;
    // The entries this thread finishes at the end: one column o (SPLITS * THREADS is a multiple of OUTS) of rows
    // lm0, lm0 + STEP, ... W's tables for the column come into L1 now, off the end's critical path.
    const int t0 = rank * THREADS + threadIdx.x, o = t0 % OUTS, lm0 = t0 / OUTS;
    const long long n = o0 + o;
    const bool column = n < rows;
    #pragma unroll
    for (int h = 0; h <= EPI; ++h) {
        const long long wr = column ? n + h * rows : 0;
        prefetch_l1(sw + wr); prefetch_l1(ew + wr); prefetch_l1(wbad + wr);
    }
    // this block's chunks: a contiguous share of K's
    const int chunks = (int)((K + CHUNK - 1) / CHUNK), per = (chunks + SPLITS - 1) / SPLITS;
    const int first = min(chunks, rank * per), count = min(chunks, first + per) - first;
    // the 16-byte pieces this thread copies a chunk: W's (W_PIECES) and x's (X_PIECES), each from a fixed row
    // (a chunk past K's end, the last where CHUNK does not divide K: its pieces there zeros, read from the row's start;
    // CHUNK 64 divides K, takes says)
    const signed char* wsrc[W_PIECES];
    bool wok[W_PIECES];
    int wk[W_PIECES], xk[X_PIECES];                       // (the piece's first value within its chunk)
    #pragma unroll
    for (int i = 0; i < W_PIECES; ++i) {
        const int p = threadIdx.x + THREADS * i, srow = LOOM_ROW(p), j = srow & (TILE_ROWS - 1);
        // (SwiGLU: the tile's rows j < TILE_ROWS / 2 the gate's, the rest the matching up rows)
        const long long r = EPI ? (j < TILE_ROWS / 2 ? o0 + j : rows + o0 + j - TILE_ROWS / 2) : o0 + j;
        wok[i] = r < padded;                                  // (past the planes: zeros)
        wk[i] = 16 * LOOM_KC(p);
        wsrc[i] = wp + ((srow >= TILE_ROWS ? padded : 0) + (wok[i] ? r : 0)) * K + wk[i];
    }
    const signed char* xsrc[X_PIECES];
    #pragma unroll
    for (int i = 0; i < X_PIECES; ++i) {
        const int p = threadIdx.x + THREADS * i, xrow = min(LOOM_ROW(p), X_ROWS - 1);
        xk[i] = 16 * LOOM_KC(p);
        xsrc[i] = xp + (long long)xrow * K + xk[i];      // (x's planes: h rows 0 .. 16 MF, then l')
    }
    auto load_w = [&](int stage, int chunk) {
        signed char* st = stage_s + stage * STAGE_BYTES;
        #pragma unroll
        for (int i = 0; i < W_PIECES; ++i) {
            const bool in = LOOM_IN_K((long long)CHUNK * chunk + wk[i]);
            loom_cp16(st + LOOM_DEST(threadIdx.x + THREADS * i), wsrc[i] + (in ? (long long)CHUNK * chunk : 0), wok[i] && in);
        }
    };
    auto load_x = [&](int stage, int chunk) {
        signed char* st = stage_s + stage * STAGE_BYTES + CHUNK * 2 * TILE_ROWS;
        #pragma unroll
        for (int i = 0; i < X_PIECES; ++i)
            if (threadIdx.x + THREADS * i < PPR * X_ROWS) {
                const bool in = LOOM_IN_K((long long)CHUNK * chunk + xk[i]);
                loom_cp16(st + LOOM_DEST(threadIdx.x + THREADS * i), xsrc[i] + (in ? (long long)CHUNK * chunk : 0), in);
            }
    };
    // the first STAGES - 1 chunks: W's before the wait (the previous kernel does not write the planes), x's after;
    // a commit group each (W's all in the first)
    #pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) if (s < count) load_w(s, first + s);
    wait_for_previous_kernel();
#if TILED_PHASE == 1
    if (wok[0] && threadIdx.x == 12345) out[blockIdx.x] = 1.0f;
    return;
#endif
    #pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < count) load_x(s, first + s);
        loom_cp_commit();
    }
"""

# the products on mma.sync (where wgmma_takes declines a product, and on compute capabilities other than 9.0)
_MMA_PRODUCTS = r"""
    const int wn = warp & 3, wm = warp >> 2;          // (the warp's W fragments; its x fragments wm, wm + WM, ...)
    int acc[FM][2][3][4];
    #pragma unroll
    for (int i = 0; i < FM; ++i)
        #pragma unroll
        for (int f = 0; f < 2; ++f)
            #pragma unroll
            for (int p = 0; p < 3; ++p)
                #pragma unroll
                for (int v = 0; v < 4; ++v) acc[i][f][p][v] = 0;
    // this warp's rows of a stage: W fragment f's row (SwiGLU: f 0 the gate's, f 1 the up's)
    const int wr0 = EPI ? 8 * wn + g : 16 * wn + g, wr1 = EPI ? TILE_ROWS / 2 + 8 * wn + g : 16 * wn + 8 + g;
    for (int it = 0; it < count; ++it) {
        loom_cp_wait<STAGES - 2>();
        __syncthreads();                    // (chunk it is in; every warp is done with the stage refilled below)
        const int next = it + STAGES - 1;
        if (next < count) { load_w(next % STAGES, first + next); load_x(next % STAGES, first + next); }
        loom_cp_commit();
        const signed char* st = stage_s + (it % STAGES) * STAGE_BYTES;
        const signed char* xs = st + 64 * 2 * TILE_ROWS;
        uint4 wh[2], wl[2];
        wh[0] = *(const uint4*)(st + 64 * wr0 + 16 * c);
        wl[0] = *(const uint4*)(st + 64 * (TILE_ROWS + wr0) + 16 * c);
        wh[1] = *(const uint4*)(st + 64 * wr1 + 16 * c);
        wl[1] = *(const uint4*)(st + 64 * (TILE_ROWS + wr1) + 16 * c);
        #pragma unroll
        for (int j = 0; j < FM; ++j) {
            const int i = wm + WM * j;
            if (i >= MF) break;
            // x's rows g and g + 8 of fragment i, 16 bytes of each plane; two k steps of 32 (the loads' halves)
            const uint4 h0 = *(const uint4*)(xs + 64 * (16 * i + g) + 16 * c);
            const uint4 h1 = *(const uint4*)(xs + 64 * (16 * i + 8 + g) + 16 * c);
            const uint4 l0 = *(const uint4*)(xs + 64 * (16 * MF + 16 * i + g) + 16 * c);
            const uint4 l1 = *(const uint4*)(xs + 64 * (16 * MF + 16 * i + 8 + g) + 16 * c);
            #pragma unroll
            for (int p = 0; p < 2; ++p) {
                // a0 / a2: row g's bytes 0-3 / 4-7 of this half, a1 / a3 row g + 8's; b0 / b1 W's row, the same bytes
                const unsigned a_h[4] = {p ? h0.z : h0.x, p ? h1.z : h1.x, p ? h0.w : h0.y, p ? h1.w : h1.y};
                const unsigned a_l[4] = {p ? l0.z : l0.x, p ? l1.z : l1.x, p ? l0.w : l0.y, p ? l1.w : l1.y};
                unsigned b_h[2][2], b_l[2][2];
                #pragma unroll
                for (int f = 0; f < 2; ++f) {
                    b_h[f][0] = p ? wh[f].z : wh[f].x; b_h[f][1] = p ? wh[f].w : wh[f].y;
                    b_l[f][0] = p ? wl[f].z : wl[f].x; b_l[f][1] = p ? wl[f].w : wl[f].y;
                }
                // (HL' and L'H share an accumulator: other products between them)
                #pragma unroll
                for (int f = 0; f < 2; ++f) LOOM_MMA(acc[j][f][0], a_h, b_h[f]);
                #pragma unroll
                for (int f = 0; f < 2; ++f) LOOM_MMA(acc[j][f][1], a_h, b_l[f]);
                #pragma unroll
                for (int f = 0; f < 2; ++f) LOOM_MMA(acc[j][f][2], a_l, b_l[f]);
                #pragma unroll
                for (int f = 0; f < 2; ++f) LOOM_MMA(acc[j][f][1], a_l, b_h[f]);
            }
        }
    }
    loom_cp_wait<0>();
    __syncthreads();                        // (the stages are free: the sums take their place)
#if TILED_PHASE == 2
    int live = 0;                           // (every accumulator kept live: else the compiler drops their products)
    #pragma unroll
    for (int j = 0; j < FM; ++j)
        #pragma unroll
        for (int f = 0; f < 2; ++f)
            #pragma unroll
            for (int p = 0; p < 3; ++p)
                #pragma unroll
                for (int v = 0; v < 4; ++v) live ^= acc[j][f][p][v];
    if (live == 12345) out[blockIdx.x] = 1.0f;
    return;
#endif
    long long* sums_s = (long long*)stage_s;                    // [16 MF][SUMS_ROW]: each entry one lane's
    #pragma unroll
    for (int j = 0; j < FM; ++j) {
        const int i = wm + WM * j;
        if (i >= MF) break;
        #pragma unroll
        for (int f = 0; f < 2; ++f)
            #pragma unroll
            for (int v = 0; v < 4; ++v) {
                const int lm = 16 * i + 8 * (v >> 1) + g, col = (f ? wr1 : wr0) - g + 2 * c + (v & 1);
                sums_s[lm * SUMS_ROW + col] = loom_planes_combine(acc[j][f][0][v], acc[j][f][1][v], acc[j][f][2][v]);
            }
    }
"""

_FINISH = r"""
    // The entries' tables and residuals are loaded before the barrier, so that their latency passes with it: W's
    // for the column and the residuals in registers, x's for the tile's rows in the stages' bytes past the sums.
    long long swv[EPI + 1];
    int ewv[EPI + 1], wbadv[EPI + 1];
    #pragma unroll
    for (int h = 0; h <= EPI; ++h) {
        const long long wr = column ? n + h * rows : 0;
        swv[h] = sw[wr]; ewv[h] = ew[wr]; wbadv[h] = wbad[wr];
    }
    long long* sx_s = sums_s + 16 * MF * SUMS_ROW;
    int* ex_s = (int*)(sx_s + 16 * MF);
    int* xbad_s = ex_s + 16 * MF;
    if (threadIdx.x < 16 * MF) {
        const int lm = threadIdx.x < M ? threadIdx.x : 0;
        sx_s[threadIdx.x] = sx[lm]; ex_s[threadIdx.x] = ex[lm]; xbad_s[threadIdx.x] = xbad[lm];
    }
    float resv[ITER];
    #pragma unroll
    for (int i = 0; i < ITER; ++i) {
        const int lm = lm0 + STEP * i;
        resv[i] = res != 0 && column && lm < M ? res[(long long)lm * rows + n] : 0.0f;
    }
#if SPLITS > 1
    loom_cluster_sync();
#else
    __syncthreads();
#endif
#if TILED_PHASE == 3
    long long live = 0;                     // (every table and residual loaded kept live)
    #pragma unroll
    for (int h = 0; h <= EPI; ++h) live ^= swv[h] ^ ewv[h] ^ wbadv[h];
    #pragma unroll
    for (int i = 0; i < ITER; ++i) live ^= __float_as_int(resv[i]);
    if (live == 12345) out[blockIdx.x] = 1.0f;
    return;
#endif
    // every block's share of each entry, all loads issued before any is added (integer additions: any order)
    long long part[ITER][EPI + 1][SPLITS];
    #pragma unroll
    for (int i = 0; i < ITER; ++i)
        #pragma unroll
        for (int h = 0; h <= EPI; ++h) {
            // (SwiGLU's up: the tile's second half)
            const long long* at = sums_s + min(lm0 + STEP * i, 16 * MF - 1) * SUMS_ROW + h * (TILE_ROWS / 2) + o;
            #pragma unroll
            for (int q = 0; q < SPLITS; ++q) part[i][h][q] = SPLITS > 1 ? loom_cluster_ld(at, q) : *at;
        }
    bool rare = false;
    #pragma unroll
    for (int i = 0; i < ITER; ++i) {
        const int lm = lm0 + STEP * i;
        if (!column || lm >= M) continue;
        bool bad = false;
        float y[EPI + 1];
        #pragma unroll
        for (int h = 0; h <= EPI; ++h) {
            long long s = 0;
            #pragma unroll
            for (int q = 0; q < SPLITS; ++q) s += part[i][h][q];
            bad |= xbad_s[lm] || wbadv[h];
            y[h] = loom_planes_round(s, sx_s[lm], swv[h], K, ex_s[lm] + ewv[h]);
        }
        if (bad) {
            rare = true;
        } else {
            const float r = loom_fixed_value(y, bias, n, rows);     // (loom_fixed_store's, with the residual loaded)
            out[(long long)lm * rows + n] = res != 0 ? resv[i] + r : r;
        }
    }
    // an entry whose row of x or of W holds inf or NaN (rare): IEEE's value where its row does, by one thread
    for (int i = 0; rare && i < ITER; ++i) {
        const int lm = lm0 + STEP * i;
        if (!column || lm >= M) continue;
        bool bad = false;
        float y[EPI + 1];
        for (int h = 0; h <= EPI; ++h) {
            const long long wr = n + h * rows;
            if (xbad_s[lm] || wbadv[h]) {
                bad = true;
                y[h] = loom_fixed_ieee(loom_fixed_row(w, wr, nb), x + (long long)lm * K, nb);
            } else {
                const long long* at = sums_s + lm * SUMS_ROW + h * (TILE_ROWS / 2) + o;
                long long s = 0;
                for (int q = 0; q < SPLITS; ++q) s += SPLITS > 1 ? loom_cluster_ld(at, q) : *at;
                y[h] = loom_planes_round(s, sx_s[lm], swv[h], K, ex_s[lm] + ewv[h]);
            }
        }
        if (bad) loom_fixed_store(y, bias, res, out, (long long)lm * rows + n, n, rows);
    }
#if SPLITS > 1
    loom_cluster_sync();                    // (no block leaves while another reads its sums)
#endif
}
"""


def threads(x_frags: int, wgmma: bool) -> int:
    """A block's threads: one warpgroup on wgmma; on mma.sync 4 warps along W's rows, times X_WARPS along x's
    fragments where there are two or more."""
    return 128 * (X_WARPS if x_frags > 1 and not wgmma else 1)


def _stage_bytes(x_frags: int, wgmma: bool) -> int:
    """A stage's bytes (the source's STAGE_BYTES): a chunk of W's h and l' rows, then of x's planes' rows."""
    return _chunk(wgmma) * (2 * TILE_ROWS + 32 * x_frags)


def stages(x_frags: int, wgmma: bool) -> int:
    """Shared-memory stages a block pipelines: mma.sync's in static shared memory (48 KiB), at most 4; wgmma's in
    WG_SHARED bytes of dynamic shared memory, at most WG_MAX_STAGES."""
    stage = _stage_bytes(x_frags, wgmma)
    if wgmma:
        return min(quant_fixed_planes_wgmma.WG_MAX_STAGES, quant_fixed_planes_wgmma.WG_SHARED // stage)
    return min(4, STATIC_SHARED // stage)


@cache
def _module(qtype: str, epilogue: int, x_frags: int, splits: int, phase: int, wgmma: bool):
    block = threads(x_frags, wgmma)
    code = (_head(epilogue) + f"#define MF {x_frags}\n#define SPLITS {splits}\n#define STAGES {stages(x_frags, wgmma)}\n"
            f"#define CHUNK {_chunk(wgmma)}\n"
            f"#define TILE_ROWS {TILE_ROWS}\n#define THREADS {block}\n#define WM {block // 128}\n"
            f"#define MIN_BLOCKS {MIN_BLOCKS}\n#define TILED_PHASE {phase}\n"
            + (quant_fixed_planes_wgmma.helpers(32 * x_frags) if wgmma else "")
            + type_defines(qtype) + BLOCK_DECODE + FIXED_SOURCE + _HEAD
            + (quant_fixed_planes_wgmma.PRODUCTS if wgmma else _MMA_PRODUCTS) + _FINISH)
    options = OPTIONS + ("-std=c++17",)
    return arch_module(code, options, "90a") if wgmma else cupy.RawModule(code=code, options=options)


@cache
def _clusters() -> bool:
    return int(cupy.cuda.Device().compute_capability) >= 90


def _chunk(wgmma: bool) -> int:
    """K's values a stage holds of each row (mma.sync's loop takes 64, wgmma's 128-byte swizzle 128)."""
    return 128 if wgmma else 64


@cache
def _hopper() -> bool:
    """sm_90a code (wgmma) runs on compute capability 9.0 alone."""
    return int(cupy.cuda.Device().compute_capability) == 90


def wgmma_takes(m: int, k: int, stored: int, swiglu: bool = False) -> bool:
    """Whether a product the kernel takes runs on wgmma (else mma.sync), where compute capability is 9.0: SwiGLU
    products of WG_SWIGLU_STORED stored rows or more over K <= WG_MAX_K (Qwen2-0.5B's gate_up, 9,728, and wider:
    its decode step at 16 / 64 rows took 1,122 / 2,128 -> 1,076 / 1,999 us, H200; SmolLM2-135M's at 64 rows, whose
    gate_up has 3,072, 1,379 -> 1,479 us with it on wgmma, though the product alone measured 10.6 -> 10.4), and up to
    WG_WIDE_ROWS rows over K <= LONG_K against W's of more than LONG_MAX_STORED stored rows (an lm_head's; at 64 rows
    Llama-3.2-1B's step took 1,947 -> 1,960 us with it on wgmma), at any rows over K <= SHORT_K (where the other form
    is mma.sync, not cuBLAS, and wgmma beat mma.sync on every lm_head measured: Qwen2-0.5B's 151,936 rows over
    K = 896, the only one measured in a step, at 32 / 48 / 64 rows 1,390 / 1,527 / 1,727 -> 1,370 / 1,500 / 1,672 us,
    H200, one call); the kernel takes these there, not cuBLAS."""
    if not (WGMMA and not _WGMMA_FAILED and _hopper() and 0 < m <= MAX_ROWS and 0 < k < MAX_K and k % 64 == 0):
        return False
    wide_swiglu = swiglu and stored >= WG_SWIGLU_STORED and k <= WG_MAX_K
    return WG_ALL or wide_swiglu or (k <= LONG_K and stored > LONG_MAX_STORED and (m <= WG_WIDE_ROWS or k <= SHORT_K))


def takes(m: int, k: int, stored: int, swiglu: bool = False) -> bool:
    """Whether a planes' product of m rows of x over K = k against W's `stored` rows (padded; SwiGLU: both halves)
    takes this kernel (else cuBLAS's GEMM)."""
    wide_swiglu = swiglu and stored >= LONG_WIDE_STORED
    longer_k = k <= LONG_K and stored <= LONG_MAX_STORED and (m <= LONG_ROWS or (m <= ROWS and wide_swiglu))
    return (TILED and m > 0 and k > 0 and k % 64 == 0 and k < MAX_K and m <= MAX_ROWS
            and ((m <= ROWS and k <= SHORT_K) or longer_k or wgmma_takes(m, k, stored, swiglu)) and _clusters())


def splits(tiles: int, chunks: int) -> int:
    """The blocks a tile's K is split over (a cluster): doubled, up to MAX_SPLITS, while the doubled grid still fits
    in one wave of two blocks a multiprocessor and each block keeps MIN_CHUNKS chunks. (Doubling while the grid was
    under one wave left grids of 1.5-2 waves, the second waiting for the first's finishing: H200, planes_products.py,
    wgmma form, Llama-3.2-1B's qkv at 16 / 64 rows 11.3 / 18.4 -> 8.1 / 12.6 us, gate_up 25.8 / 35.8 -> 23.8 / 31.0;
    its decode step at 16 rows 1,407 -> 1,383 us.)"""
    s = 1
    while s < MAX_SPLITS and tiles * 2 * s <= 2 * _multiprocessors() and chunks >= 2 * s * MIN_CHUNKS:
        s *= 2
    return s


def product(xp: Array, sx: Array, ex: Array, xbad: Array, x: Array, weight: WeightPlanes, data: Array, qtype: str,
            out: Array, epilogue: tuple, m: int, rows: int, swiglu: bool, overlap: bool) -> None:
    """out [m, rows] from x's planes (quant_fixed.x_integers' `planes`: xp [2 pm, K], pm = xp.shape[0] // 2, a
    multiple of 16, and sx) and the weight's (WeightPlanes), with quant_fixed's epilogue pointers; x: the float
    rows the products take (an inf or NaN entry's IEEE value reads them)."""
    k = xp.shape[1]
    x_frags = xp.shape[0] // 32
    if not (0 < m <= 16 * x_frags <= MAX_ROWS and xp.shape[0] == 32 * x_frags and k % 64 == 0 and 0 < k < MAX_K):
        raise ShapeError(f"the tiled kernel takes x's planes [2 pm, K] for m <= pm <= {MAX_ROWS} rows (pm a multiple of "
                         f"16) over K < {MAX_K} whole 64-value chunks, got planes {xp.shape} for {m} rows")
    tiles = -(-rows // (TILE_ROWS // 2 if swiglu else TILE_ROWS))
    wgmma = wgmma_takes(m, k, weight.padded, swiglu)

    def kernel_for(wgmma: bool) -> tuple[int, cupy.RawKernel]:
        s = splits(tiles, -(-k // _chunk(wgmma)))
        return s, _module(qtype, int(swiglu), x_frags, s, PHASE_STOP, wgmma).get_function("loom_fixed_planes_tiled")
    try:
        s, kernel = kernel_for(wgmma)
    except cupy.cuda.compiler.CompileException as exc:
        if not wgmma:
            raise
        # (sm_90a through CuPy rests on NVRTC behaviour no documentation promises: compile.arch_module)
        _WGMMA_FAILED.append(str(exc))
        fallback.notice_once("deterministic products: the tiled kernel's wgmma form (sm_90a) did not compile, so its "
                             f"products run on mma.sync, the same bits, slower: {str(exc).strip()[:200]}")
        wgmma = False
        s, kernel = kernel_for(wgmma)
    # (wgmma: + 1 KiB, the stages' start aligned to 1,024 bytes, the swizzle's)
    shared = stages(x_frags, True) * _stage_bytes(x_frags, True) + 1024 if wgmma else 0
    launch(kernel, tiles * s, threads(x_frags, wgmma),
           (xp, sx, ex, xbad, x, weight.planes, weight.sums, weight.exponents, weight.bad, data, out, *epilogue,
            np.int64(m), np.int64(rows), np.int64(weight.padded), np.int32(k // 32)), overlap, shared)
