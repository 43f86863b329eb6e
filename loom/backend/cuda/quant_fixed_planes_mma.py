"""The planes' products of up to MMA_ROWS rows of x (decode batches) in one kernel: quant_fixed_planes' int8
planes, multiplied on the int8 tensor cores (mma.sync m16n8k32) and finished in the same launch, in place of
cuBLAS's GEMM and the finishing kernel, whose int32 blocks [2 M, 2 N] went out to memory and back (the same
bits: the sums are exact integers, so neither the order of k nor the split over warps can change them).

Each warp takes W_FRAGS (2) fragments of 8 stored rows of W (SwiGLU: the gate's rows and the matching up
rows) against every fragment of 16 rows of x, over every SLICES-th 64-value chunk of K. A lane loads 16 bytes
of each plane of its row of W and of x's rows g and g + 8 (k order is free: the products are exact); each
chunk takes two m16n8k32 products a plane pair, HH into one int32 accumulator, HL' and L'H into a second
(both weigh 256; |h l'| <= 2^14, so exact below K = 2^16), L'L' into a third. The block's warps add their
int64 sums (65536 HH + 256 (HL' + L'H) + L'L') in shared memory (integer atomics: any order), and its
threads finish each entry as loom_planes_entry does: + 128 (sum q_x + sum q_w) - 16384 K, scaled by
2^(ex + ew - 30), rounded once, inf and NaN rows by one thread, then the epilogue (loom_fixed_store).
"""
from __future__ import annotations

from functools import cache
from typing import NamedTuple

import cupy
import numpy as np

from .. import Array
from .compile import OPTIONS
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



# Where the kernel takes a product: up to MMA_ROWS rows of x (one fragment) over K <= MMA_K. Measured on an
# H200 (benchmarks/decode_graph_parts.py BF16 --whole --deterministic --batch 16) against cuBLAS's GEMM and
# the finishing kernel: SmolLM2-135M's step (K = 576 and 1,536) 1,436 -> 1,298 us with every product here
# (1,355 with its output layer on cuBLAS); Llama-3.2-1B's (K = 2,048 and 8,192) 1,622 -> 1,773 us, slower,
# and at 32 and 64 rows (two and four x fragments) both models' steps were 1.6-2.0x slower. A warp's
# chunks of K are a chain of dependent loads and products, bound by latency where cuBLAS's pipelined tiles
# are not: short rows gain from the one launch, long ones lose.
MMA_ROWS = 16
MMA_K = 1536
MAX_K = 1 << 16         # past it HL' + L'H could leave int32
W_FRAGS = 2             # W fragments a warp
THREADS = 256           # a block: WN warps along W's rows times SLICES along K (WN * SLICES = 8)
DEPTH = 2               # 64-value chunks of W a warp loads together (H200, SmolLM2 at 16 rows: 1,298 us a step;
                        # 1,356 loading one ahead, 1,483 with 4 (registers: fewer warps resident))
WN = 0                  # (a fixed WN for measurements; 0: warps_along_rows)

_SOURCE = r"""
#define MMA_S8(C, A, B) asm volatile( \
    "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};" \
    : "+r"(C[0]), "+r"(C[1]), "+r"(C[2]), "+r"(C[3]) : "r"(A[0]), "r"(A[1]), "r"(A[2]), "r"(A[3]), "r"(B[0]), "r"(B[1]))
#define SLICES (8 / WN)
#define COLS (16 * WN)                       // stored rows of W a block takes (columns of its sums)
#define OUTS (EPI ? 8 * WN : 16 * WN)        // output rows a block finishes

// x's planes for chunk k0 (64 values, or the last 32 where `half`): lane (g, c) takes bytes 16 c .. 16 c + 15
// (half: 8 c .. 8 c + 7) of rows g and g + 8 of each fragment
__device__ __forceinline__ void loom_mma_x(uint4 (&ah)[MF][2], uint4 (&al)[MF][2], const signed char* __restrict__ xp,
                                           long long pm, long long K, long long k0, int g, int c, bool half) {
    #pragma unroll
    for (int i = 0; i < MF; ++i)
        #pragma unroll
        for (int r = 0; r < 2; ++r) {
            const long long row = 16 * i + 8 * r + g;
            if (half) {
                const uint2 h = *(const uint2*)(xp + row * K + k0 + 8 * c);
                const uint2 l = *(const uint2*)(xp + (pm + row) * K + k0 + 8 * c);
                ah[i][r] = make_uint4(h.x, h.y, 0, 0); al[i][r] = make_uint4(l.x, l.y, 0, 0);
            } else {
                ah[i][r] = *(const uint4*)(xp + row * K + k0 + 16 * c);
                al[i][r] = *(const uint4*)(xp + (pm + row) * K + k0 + 16 * c);
            }
        }
}

// the chunk's int8 products into acc: two (half: one) m16n8k32 products a plane pair
__device__ __forceinline__ void loom_mma_chunk(int (&acc)[MF][W_FRAGS][3][4], const uint4 (&wh)[W_FRAGS],
                                               const uint4 (&wl)[W_FRAGS], const uint4 (&ah)[MF][2],
                                               const uint4 (&al)[MF][2], bool half) {
    #pragma unroll
    for (int i = 0; i < MF; ++i)
        #pragma unroll
        for (int p = 0; p < 2; ++p) {
            if (half && p) break;
            // a0 / a2: row g's bytes 0-3 / 4-7 of this half, a1 / a3 row g + 8's; b0 / b1 W's row, the same bytes
            const unsigned a_h[4] = {p ? ah[i][0].z : ah[i][0].x, p ? ah[i][1].z : ah[i][1].x,
                                     p ? ah[i][0].w : ah[i][0].y, p ? ah[i][1].w : ah[i][1].y};
            const unsigned a_l[4] = {p ? al[i][0].z : al[i][0].x, p ? al[i][1].z : al[i][1].x,
                                     p ? al[i][0].w : al[i][0].y, p ? al[i][1].w : al[i][1].y};
            #pragma unroll
            for (int f = 0; f < W_FRAGS; ++f) {
                const unsigned b_h[2] = {p ? wh[f].z : wh[f].x, p ? wh[f].w : wh[f].y};
                const unsigned b_l[2] = {p ? wl[f].z : wl[f].x, p ? wl[f].w : wl[f].y};
                MMA_S8(acc[i][f][0], a_h, b_h);
                MMA_S8(acc[i][f][1], a_h, b_l);
                MMA_S8(acc[i][f][1], a_l, b_h);
                MMA_S8(acc[i][f][2], a_l, b_l);
            }
        }
}

__device__ __forceinline__ void loom_mma_w(uint4 (&wh)[W_FRAGS], uint4 (&wl)[W_FRAGS], const signed char* const (&wrow)[W_FRAGS],
                                           long long padded, long long K, long long k0, int c, bool half) {
    #pragma unroll
    for (int f = 0; f < W_FRAGS; ++f) {
        if (half) {
            const uint2 h = *(const uint2*)(wrow[f] + k0 + 8 * c), l = *(const uint2*)(wrow[f] + padded * K + k0 + 8 * c);
            wh[f] = make_uint4(h.x, h.y, 0, 0); wl[f] = make_uint4(l.x, l.y, 0, 0);
        } else {
            wh[f] = __ldcs((const uint4*)(wrow[f] + k0 + 16 * c));
            wl[f] = __ldcs((const uint4*)(wrow[f] + padded * K + k0 + 16 * c));
        }
    }
}

extern "C" __global__ void __launch_bounds__(256) loom_fixed_planes_mma(
        const signed char* __restrict__ xp, const long long* __restrict__ sx, const int* __restrict__ ex,
        const int* __restrict__ xbad, const float* __restrict__ x,
        const signed char* __restrict__ wp, const long long* __restrict__ sw, const int* __restrict__ ew,
        const int* __restrict__ wbad, const unsigned char* __restrict__ w,
        float* __restrict__ out, const float* __restrict__ bias, const float* __restrict__ res,
        long long M, long long rows, long long pm, long long padded, int nb) {
    __shared__ unsigned long long sums_s[MF * 16 * COLS];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, c = lane & 3;
    const int wn = warp % WN, slice = warp / WN;
    const long long K = 32LL * nb, o0 = (long long)blockIdx.x * OUTS;
    // this lane's stored rows of W, fragment f (SwiGLU: f 0 the gate's rows, f 1 the up's)
    const signed char* wrow[W_FRAGS];
    #pragma unroll
    for (int f = 0; f < W_FRAGS; ++f) {
        long long r = EPI ? o0 + 8 * wn + g + f * rows : o0 + 16 * wn + 8 * f + g;
        if (r >= padded) r = 0;               // (past the planes: a product never stored)
        wrow[f] = wp + r * K;
    }
    for (int i = threadIdx.x; i < MF * 16 * COLS; i += blockDim.x) sums_s[i] = 0ull;
    int acc[MF][W_FRAGS][3][4];
    #pragma unroll
    for (int i = 0; i < MF; ++i)
        #pragma unroll
        for (int f = 0; f < W_FRAGS; ++f)
            #pragma unroll
            for (int p = 0; p < 3; ++p)
                #pragma unroll
                for (int v = 0; v < 4; ++v) acc[i][f][p][v] = 0;
    const long long chunks = (K + 63) / 64;
    const bool tail = K % 64 != 0;
    // DEPTH chunks' W loads in flight together, then their products (x's loads beside each): a warp waits for
    // memory once a group, not once a chunk
    uint4 wh[DEPTH][W_FRAGS], wl[DEPTH][W_FRAGS], ah[MF][2], al[MF][2];
    auto load_group = [&](long long base) {
        #pragma unroll
        for (int d = 0; d < DEPTH; ++d) {
            const long long j = base + d * SLICES;
            if (j < chunks) loom_mma_w(wh[d], wl[d], wrow, padded, K, 64 * j, c, tail && j == chunks - 1);
        }
    };
    // (the wait after the first group's loads, inside the loop: W's planes are not written by the kernel before;
    // waiting before the loop, after its own first loads, took 102 registers where this takes 128 and made
    // SmolLM2's step at 8 / 16 rows 1,272 / 1,301 -> 1,303 / 1,324 us, H200)
    bool waited = false;
    for (long long base = slice; base < chunks; base += DEPTH * SLICES) {
        load_group(base);
        if (!waited) { wait_for_previous_kernel(); waited = true; }
        #pragma unroll
        for (int d = 0; d < DEPTH; ++d) {
            const long long j = base + d * SLICES;
            if (j >= chunks) break;
            const bool half = tail && j == chunks - 1;
            loom_mma_x(ah, al, xp, pm, K, 64 * j, g, c, half);
            loom_mma_chunk(acc, wh[d], wl[d], ah, al, half);
        }
    }
    if (!waited) wait_for_previous_kernel();
    __syncthreads();                        // (sums_s zeroed)
    #pragma unroll
    for (int i = 0; i < MF; ++i)
        #pragma unroll
        for (int f = 0; f < W_FRAGS; ++f)
            #pragma unroll
            for (int v = 0; v < 4; ++v) {
                const long long s = loom_planes_combine(acc[i][f][0][v], acc[i][f][1][v], acc[i][f][2][v]);
                const int lm = 16 * i + 8 * (v >> 1) + g, col = 16 * wn + 8 * f + 2 * c + (v & 1);
                atomicAdd(&sums_s[lm * COLS + col], (unsigned long long)s);      // two's complement: exact
            }
    __syncthreads();
    for (int e = threadIdx.x; e < MF * 16 * OUTS; e += blockDim.x) {
        const int lm = e / OUTS, o = e % OUTS;
        const long long n = o0 + o;
        if (lm >= M || n >= rows) continue;
        float y[EPI + 1];
        #pragma unroll
        for (int h = 0; h <= EPI; ++h) {
            // the sums' column: SwiGLU's output o is row o % 8 of warp o / 8's gate (h 0) or up (h 1) fragment
            const int col = EPI ? 16 * (o >> 3) + 8 * h + (o & 7) : o;
            const long long wr = n + h * rows;
            if (xbad[lm] || wbad[wr]) {
                y[h] = loom_fixed_ieee(loom_fixed_row(w, wr, nb), x + (long long)lm * K, nb);
            } else {
                y[h] = loom_planes_round((long long)sums_s[lm * COLS + col], sx[lm], sw[wr], K, ex[lm] + ew[wr]);
            }
        }
        loom_fixed_store(y, bias, res, out, (long long)lm * rows + n, n, rows);
    }
}
"""


@cache
def _module(qtype: str, epilogue: int, x_frags: int, wn: int, depth: int):
    return cupy.RawModule(code=_head(epilogue) + f"#define MF {x_frags}\n#define WN {wn}\n#define W_FRAGS {W_FRAGS}\n"
                          f"#define DEPTH {depth}\n"
                          + type_defines(qtype) + BLOCK_DECODE + FIXED_SOURCE + _SOURCE,
                          options=OPTIONS + ("-std=c++17",))


def warps_along_rows(outs: int, x_frags: int, swiglu: bool) -> int:
    """WN, the warps of a block along W's rows (the other 8 / WN split K): the most (of 8, 4, 2, 1) that still
    give every multiprocessor two blocks, at most 16 / x_frags (the block's int64 sums in shared memory)."""
    per_warp = 8 if swiglu else 16
    for wn in (8, 4, 2):
        if wn * x_frags <= 16 and -(-outs // (per_warp * wn)) >= 2 * _multiprocessors():
            return wn
    return 1


def takes(m: int, k: int) -> bool:
    """Whether a planes' product of m rows of x over K = k takes this kernel (else cuBLAS's GEMM): a decode
    batch's products over short rows."""
    return 0 < m <= MMA_ROWS and k <= min(MMA_K, MAX_K - 1)


def _launch(qtype: str, m: int, k: int, rows: int, swiglu: bool, pm: int, weight: WeightPlanes,
            data: Array, out: Array, epilogue: tuple, made: tuple, overlap: bool) -> None:
    x_frags = pm // 16
    wn = WN or warps_along_rows(rows, x_frags, swiglu)
    outs = 8 * wn if swiglu else 16 * wn
    launch(_module(qtype, int(swiglu), x_frags, wn, DEPTH).get_function("loom_fixed_planes_mma"),
           -(-rows // outs), THREADS,
           (*made, weight.planes, weight.sums, weight.exponents, weight.bad, data, out, *epilogue, np.int64(m),
            np.int64(rows), np.int64(pm), np.int64(weight.padded), np.int32(k // 32)), overlap)


def product(xp: Array, sx: Array, ex: Array, xbad: Array, x: Array, weight: WeightPlanes, data: Array, qtype: str,
            out: Array, epilogue: tuple, m: int, rows: int, swiglu: bool, overlap: bool) -> None:
    """out [m, rows] from x's planes (quant_fixed.x_integers' `planes`: xp [2 pm, K], pm = xp.shape[0] // 2, a
    multiple of 16, and sx) and the weight's (quant_fixed_planes.WeightPlanes), with quant_fixed's epilogue
    pointers; x: the float rows the products take (an inf or NaN entry's IEEE value reads them)."""
    _launch(qtype, m, xp.shape[1], rows, swiglu, xp.shape[0] // 2, weight, data, out, epilogue,
            (xp, sx, ex, xbad, x), overlap)

