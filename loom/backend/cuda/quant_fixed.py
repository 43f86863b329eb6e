"""Products of a few rows of x with stored weights in the integer scheme proposed for spec 4
(loom/kernels/exact/fixed.py; branch work, not yet dispatched): the decode step's products with int
multiply-adds in place of spec 3's float64 sums, certification and settling.

Four kernels:
- `loom_fixed_w_exponents`, once per weight: a warp a row of W decodes it (quant.BLOCK_DECODE's values,
  exactly gguf's dequantization) and finds fixed.row_exponents' e from the largest finite magnitude
  (frexpf, then the spill past 32767), and whether the row holds inf or NaN;
- `loom_fixed_x`, once per product: a block a row of x writes the same exponent and the row's integers
  q = rint(x 2^(15 - e)) as int16 (every |q| <= 32767), computed in float64, where they are exact;
- `loom_fixed_gemv`: a warp a row of W; lane l takes value group l & 7 of units l >> 3, l >> 3 + 4, ...
  (block_values' layout), rounds each decoded value to its integer in float64 and adds its products with
  each row of x's integers into an int64 (each product below 2^30: exact); the warp adds its lanes'
  int64 sums, exact in any order, and lane 0 scales the sum by 2^(ex + ew - 30) in float64 (exact: the sum
  is below 2^53) and rounds once to float32. A row of x or W holding inf or NaN gives IEEE's value of the
  sum of sign products with the infinities and NaNs kept (exact._special_values), which is not finite.
- `loom_fixed_rows`, for up to ROWS_MAX rows of x (decode batches): quant_rows' layout with the int8
  tensor cores in place of the float64 ones. Each integer splits into planes, q = 256 hi + lo (hi = q >> 8
  signed, lo = q & 255 unsigned), and a warp's fragment of 16 rows of x by 8 rows of W takes four
  m16n8k32 products a 32-value unit (hi.hi, hi.lo, lo.hi, lo.lo, each exact in int32 up to K = 2^15),
  combined in int64 as 65536 HH + 256 (HL + LH) + LL. As in quant_rows, lane c of a quad takes
  block_values' eight values for lanes 2c and 2c + 1 as its k (x the same positions): the sums are
  exact, so the order of k is free. The block's warps split K and add their int64 sums in shared memory
  (atomics: integer additions, any order), and the block rounds its entries once.
Capturable: sizes as arguments, no sync, no host read.
"""
from __future__ import annotations

from collections.abc import Callable
from functools import cache

import cupy
import numpy as np

from ...errors import BackendError, ShapeError
from .. import Array
from .compile import OPTIONS
from .exact_reduce import EXACT_ROW_SUM
from .fused import ROW_HELPERS
from .fused_exact import helpers
from .launch import OVERLAP_PROLOGUE, launch
from .quant import BLOCK_DECODE, K_LAYOUTS, LAYOUTS, TYPES, pointer, type_defines
from .quant_exact import NORM_ROW, _multiprocessors, sum_bits
from .quant_rows import PLAIN

MAX_ROWS = 4                # rows of x the one-row kernel takes (decode steps)
STAGED = 16384              # M K up to which it makes x's integers itself, in shared memory (32 KB)
STAGE_WAVES = 4             # ... where its grid is at most this many blocks a multiprocessor
ROWS_MAX = 64               # rows of x loom_fixed_rows takes (decode batches)
RW = 8                      # warps a block of loom_fixed_rows, each over every RW-th unit of K
MAX_K = 1 << 23             # (loom.kernels.exact.fixed.MAX_K: past it the float64 sums could round)
WARPS = 8                   # warps a block of the product and of the exponents' kernel
X_THREADS = 256

_SOURCE = r"""
#define LOOM_FULL 0xffffffffu
#define LIMIT 32767.0f

// fixed.row_exponents' e for the largest finite magnitude m of a row
__device__ __forceinline__ int loom_fixed_exponent(float m) {
    if (m == 0.0f) return 0;
    int e;
    frexpf(m, &e);
    return rintf(ldexpf(m, 15 - e)) > LIMIT ? e + 1 : e;
}

// 0x4B400000 + q for q = rint(v 2^shift), |q| <= 32767 (shift = 15 - the row's exponent), s = 2^shift: one
// fma rounds v s + 1.5 2^23 (v s exact inside it) to the integers of [2^23, 2^24), ties to even as rint; its
// low 16 bits are q's as an int16 (0x4B400000's are zero). Past shift 127 s is not a float32 (rows below
// 2^-112): float64, exactly. v must be finite (a row holding inf or NaN takes the IEEE path).
__device__ __forceinline__ unsigned loom_fixed_bits(float v, float s, int shift) {
    return shift <= 127 ? __float_as_uint(__fmaf_rn(v, s, 12582912.0f))
                        : 0x4B400000u + (unsigned)__double2int_rn(ldexp((double)v, shift));
}

// 2^shift as a float32 for -126 <= shift <= 127 (else unused)
__device__ __forceinline__ float loom_fixed_scale(int shift) {
    return shift <= 127 && shift >= -126 ? __int_as_float((shift + 127) << 23) : 0.0f;
}

// the slot of a unit's position p in lane order: block_values' lane i takes its four values at slots 4i ..
// 4i + 3 (nibble types' lane i holds positions 2i, 2i + 1, 2i + 16, 2i + 17; the others' 4i .. 4i + 3)
__device__ __forceinline__ int loom_fixed_slot(int p, int nibble) {
    return nibble ? 4 * ((p & 15) >> 1) + 2 * (p >> 4) + (p & 1) : p;
}

__device__ __forceinline__ float loom_fixed_mark(float v) {
    return isfinite(v) ? (v > 0.0f ? 1.0f : (v < 0.0f ? -1.0f : 0.0f)) : v;
}

__device__ __forceinline__ const unsigned char* loom_fixed_row(const unsigned char* w, long long r, int nb) {
    return w + r * (long long)(nb / SUBS) * BLOCK;
}

// ew[r], bad[r] for each row r of W (rows, nb 32-value units a row): a warp a row
extern "C" __global__ void __launch_bounds__(WARPS * 32) loom_fixed_w_exponents(
        const unsigned char* __restrict__ w, int* __restrict__ ew, int* __restrict__ bad, long long rows, int nb) {
    const long long r = (long long)blockIdx.x * WARPS + (threadIdx.x >> 5);
    if (r >= rows) return;
    const int lane = threadIdx.x & 31;
    const unsigned char* row = loom_fixed_row(w, r, nb);
    float top = 0.0f;
    int nonfinite = 0;
    for (int b = lane >> 3; b < nb; b += 4) {
        float v[4]; int at[4];
        block_values(row, b, lane & 7, v, at);
        #pragma unroll
        for (int j = 0; j < 4; ++j) {
            if (isfinite(v[j])) top = fmaxf(top, fabsf(v[j]));
            else nonfinite = 1;
        }
    }
    for (int o = 16; o; o >>= 1) {
        top = fmaxf(top, __shfl_xor_sync(LOOM_FULL, top, o));
        nonfinite |= __shfl_xor_sync(LOOM_FULL, nonfinite, o);
    }
    if (lane == 0) { ew[r] = loom_fixed_exponent(top); bad[r] = nonfinite; }
}

// xq[m, :], ex[m], bad[m] for each row m of x [M, K]: a block a row. With norm_w, of rms_norm(x, norm_w)
// (quant_exact.rms_norm's bits), which it writes to normed [M, K] first.
extern "C" __global__ void __launch_bounds__(X_THREADS) loom_fixed_x(
        const float* __restrict__ x, short* __restrict__ xq, int* __restrict__ ex, int* __restrict__ bad, int K,
        int nibble, const float* __restrict__ norm_w, float* normed, float eps, int bits) {
    __shared__ float top_s[X_THREADS / 32];
    __shared__ int bad_s[X_THREADS / 32];
    __shared__ int e_s;
    __shared__ Scratch scratch;
    wait_for_previous_kernel();
    const float* row = x + (long long)blockIdx.x * K;
    if (norm_w != 0) {
        float* out = normed + (long long)blockIdx.x * K;
        loom_rms_norm_row([&](long long k) { return row[k]; }, norm_w, out, K, eps, bits, scratch);
        __syncthreads();                        // (the block's own writes: visible to it after the barrier)
        row = out;
    }
    float top = 0.0f;
    int nonfinite = 0;
    for (int k = threadIdx.x; k < K; k += X_THREADS) {
        const float v = row[k];
        if (isfinite(v)) top = fmaxf(top, fabsf(v));
        else nonfinite = 1;
    }
    for (int o = 16; o; o >>= 1) {
        top = fmaxf(top, __shfl_xor_sync(LOOM_FULL, top, o));
        nonfinite |= __shfl_xor_sync(LOOM_FULL, nonfinite, o);
    }
    if ((threadIdx.x & 31) == 0) { top_s[threadIdx.x >> 5] = top; bad_s[threadIdx.x >> 5] = nonfinite; }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int i = 1; i < X_THREADS / 32; ++i) { top = fmaxf(top, top_s[i]); nonfinite |= bad_s[i]; }
        e_s = loom_fixed_exponent(top);
        ex[blockIdx.x] = e_s;
        bad[blockIdx.x] = nonfinite;
    }
    __syncthreads();
    const int shift = 15 - e_s;
    const float s = loom_fixed_scale(shift);
    short* q = xq + (long long)blockIdx.x * K;
    for (int k = threadIdx.x; k < K; k += X_THREADS) {
        const float v = row[k];
        q[(k & ~31) + loom_fixed_slot(k & 31, nibble)] = isfinite(v) ? (short)loom_fixed_bits(v, s, shift) : (short)0;
    }
}

// The epilogue of an entry from its products y[0] (and SwiGLU's up half y[1]), each rounded once:
// quant_finish's loom_tile_finish's (bias +) value, silu(gate) * up, (residual +)
__device__ __forceinline__ void loom_fixed_store(float* y, const float* bias, const float* res, float* out,
                                                 long long at, long long wr, long long rows) {
    #pragma unroll
    for (int e = 0; e <= EPI; ++e) if (bias != 0) y[e] = y[e] + bias[wr + e * rows];
    const float r = EPI == 1 ? (y[0] * loom_sigmoid(y[0])) * y[EPI] : y[0];
    out[at] = res != 0 ? res[at] + r : r;
}

// L1 prefetches of this warp's share of its W row(s) (loom_fixed_gemv_rows' rows), before the kernel waits
// for the one before it (the weights are not written by it)
__device__ __forceinline__ void loom_fixed_prefetch(const unsigned char* w, long long rows, int nb) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const long long r = (long long)blockIdx.x * (WARPS / WPR) + warp / WPR;
    if (r >= rows) return;
    #pragma unroll
    for (int e = 0; e <= EPI; ++e)
        prefetch_row(loom_fixed_row(w, r + e * rows, nb), (long long)(nb / SUBS) * BLOCK, warp % WPR + WPR * lane,
                     32 * WPR);
}

// out[m, r] for the rows r of the output (SwiGLU: stored rows r and rows + r) and the M (<= MAX_ROWS)
// rows of x: a warp an output row; x's integers xq (lane order), exponents ex and flags xbad in global or
// shared memory
__device__ __forceinline__ void loom_fixed_gemv_rows(
        const unsigned char* __restrict__ w, const int* __restrict__ ew, const int* __restrict__ wbad,
        const short* xq, const int* ex, const int* xbad,
        const float* __restrict__ x, float* __restrict__ out, const float* __restrict__ bias,
        const float* __restrict__ res, long long rows, int nb, int M) {
    // WPR warps share a row, each taking every WPR-th group of four units; their int64 sums meet in shared
    // memory (exact: any order)
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, slice = warp % WPR;
    const long long r = (long long)blockIdx.x * (WARPS / WPR) + warp / WPR;
    const bool live = r < rows;
    if (WPR == 1 && !live) return;
    if (NB) nb = NB;                    // (compiled in: the unit loop's trip count is a constant)
    const int K = 32 * nb;
    long long acc[EPI + 1][MAX_ROWS];
    #pragma unroll
    for (int e = 0; e <= EPI; ++e) {
        const long long wr = live ? r + e * rows : 0;
        const unsigned char* row = loom_fixed_row(w, wr, nb);
        const int shift = 15 - ew[wr];
        const float sc = loom_fixed_scale(shift);
        #pragma unroll
        for (int m = 0; m < MAX_ROWS; ++m) acc[e][m] = 0;
        #pragma unroll 8
        for (int it = 0; it < (nb + 4 * WPR - 1) / (4 * WPR); ++it) {
            const int b = 4 * (WPR * it + slice) + (lane >> 3);
            if (!live || b >= nb) break;
            float v[4]; int at[4];
            block_values(row, b, lane & 7, v, at);
            int q[4];
            #pragma unroll
            for (int j = 0; j < 4; ++j) q[j] = (int)(loom_fixed_bits(v[j], sc, shift) - 0x4B400000u);
            #pragma unroll
            for (int m = 0; m < MAX_ROWS; ++m) {
                if (m >= M) break;
                // x's four integers in lane order, one 8-byte load; two products (each below 2^30) a 32-bit sum
                const uint2 t = *(const uint2*)(xq + (long long)m * K + 32 * b + 4 * (lane & 7));
                acc[e][m] += (long long)(q[0] * (int)(short)(t.x & 0xFFFFu) + q[1] * ((int)t.x >> 16));
                acc[e][m] += (long long)(q[2] * (int)(short)(t.y & 0xFFFFu) + q[3] * ((int)t.y >> 16));
            }
        }
    }
    #pragma unroll
    for (int e = 0; e <= EPI; ++e)
        #pragma unroll
        for (int m = 0; m < MAX_ROWS; ++m)
            for (int o = 16; o; o >>= 1) acc[e][m] += __shfl_xor_sync(LOOM_FULL, acc[e][m], o);
    if (WPR > 1) {
        __shared__ long long part_s[WARPS][EPI + 1][MAX_ROWS];
        if (lane == 0) {
            #pragma unroll
            for (int e = 0; e <= EPI; ++e)
                #pragma unroll
                for (int m = 0; m < MAX_ROWS; ++m) part_s[warp][e][m] = acc[e][m];
        }
        __syncthreads();
        if (slice != 0 || !live) return;
        #pragma unroll
        for (int e = 0; e <= EPI; ++e)
            #pragma unroll
            for (int m = 0; m < MAX_ROWS; ++m)
                for (int j = 1; j < WPR; ++j) acc[e][m] += part_s[warp + j][e][m];
    }
    #pragma unroll
    for (int m = 0; m < MAX_ROWS; ++m) {
        if (m >= M) break;
        float y[EPI + 1];
        #pragma unroll
        for (int e = 0; e <= EPI; ++e) {
            const long long wr = r + e * rows;
            const long long s = acc[e][m];
            if (xbad[m] || wbad[wr]) {          // IEEE's value: sign products, infinities and NaNs kept
                const unsigned char* row = loom_fixed_row(w, wr, nb);
                float t = 0.0f;
                for (int b = lane >> 3; b < nb; b += 4) {
                    float v[4]; int at[4];
                    block_values(row, b, lane & 7, v, at);
                    #pragma unroll
                    for (int j = 0; j < 4; ++j) {
                        const float xv = x[(long long)m * K + 32 * b + at[j]];
                        t = __fadd_rn(t, __fmul_rn(loom_fixed_mark(xv), loom_fixed_mark(v[j])));
                    }
                }
                for (int o = 16; o; o >>= 1) t = __fadd_rn(t, __shfl_xor_sync(LOOM_FULL, t, o));
                y[e] = t;
            } else {
                y[e] = __double2float_rn(ldexp((double)s, ex[m] + ew[wr] - 30));
            }
        }
        if (lane == 0) loom_fixed_store(y, bias, res, out, (long long)m * rows + r, r, rows);
    }
}

extern "C" __global__ void __launch_bounds__(WARPS * 32) loom_fixed_gemv(
        const unsigned char* __restrict__ w, const int* __restrict__ ew, const int* __restrict__ wbad,
        const short* __restrict__ xq, const int* __restrict__ ex, const int* __restrict__ xbad,
        const float* __restrict__ x, float* __restrict__ out, const float* __restrict__ bias,
        const float* __restrict__ res, long long rows, int nb, int M) {
    if (NB) nb = NB;
    loom_fixed_prefetch(w, rows, nb);
    wait_for_previous_kernel();
    loom_fixed_gemv_rows(w, ew, wbad, xq, ex, xbad, x, out, bias, res, rows, nb, M);
}

// the same where M K <= STAGED: each block makes x's integers itself in shared memory (loom_fixed_x's
// arithmetic; every block finds the same exponents), which saves a launch a product in decode steps; with
// norm_w, of rms_norm(x, norm_w) (quant_exact.rms_norm's bits), staged first: the norm's launch saved too.
// Dynamic shared memory: M K floats (the normed rows, with norm_w), then M K int16 integers.
extern "C" __global__ void __launch_bounds__(WARPS * 32) loom_fixed_gemv_staged(
        const unsigned char* __restrict__ w, const int* __restrict__ ew, const int* __restrict__ wbad,
        const float* __restrict__ x, float* __restrict__ out, const float* __restrict__ bias,
        const float* __restrict__ res, long long rows, int nb, int M, int nibble, const float* __restrict__ norm_w,
        float eps, int bits) {
    extern __shared__ __align__(16) unsigned char staged_s[];
    __shared__ float top_s[WARPS][MAX_ROWS];
    __shared__ int bad_s[WARPS][MAX_ROWS], ex_s[MAX_ROWS], xbad_s[MAX_ROWS];
    __shared__ Scratch scratch;
    if (NB) nb = NB;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, K = 32 * nb;
    loom_fixed_prefetch(w, rows, nb);
    wait_for_previous_kernel();
    const float* xs = x;
    if (norm_w != 0) {
        float* xf = (float*)staged_s;
        for (int m = 0; m < M; ++m)
            loom_rms_norm_row([&](long long k) { return x[(long long)m * K + k]; }, norm_w, xf + m * K, K, eps, bits,
                              scratch);
        __syncthreads();
        xs = xf;
    }
    short* xq_s = (short*)(staged_s + (norm_w != 0 ? 4 * M * K : 0));
    for (int m = 0; m < M; ++m) {
        float top = 0.0f;
        int nonfinite = 0;
        for (int k = threadIdx.x; k < K; k += WARPS * 32) {
            const float v = xs[m * K + k];
            if (isfinite(v)) top = fmaxf(top, fabsf(v));
            else nonfinite = 1;
        }
        for (int o = 16; o; o >>= 1) {
            top = fmaxf(top, __shfl_xor_sync(LOOM_FULL, top, o));
            nonfinite |= __shfl_xor_sync(LOOM_FULL, nonfinite, o);
        }
        if (lane == 0) { top_s[warp][m] = top; bad_s[warp][m] = nonfinite; }
    }
    __syncthreads();
    if (threadIdx.x < M) {
        float top = 0.0f;
        int nonfinite = 0;
        for (int i = 0; i < WARPS; ++i) { top = fmaxf(top, top_s[i][threadIdx.x]); nonfinite |= bad_s[i][threadIdx.x]; }
        ex_s[threadIdx.x] = loom_fixed_exponent(top);
        xbad_s[threadIdx.x] = nonfinite;
    }
    __syncthreads();
    for (int i = threadIdx.x; i < M * K; i += WARPS * 32) {
        const int m = i / K, k = i - m * K, shift = 15 - ex_s[m];
        const float v = xs[i];
        xq_s[m * K + (k & ~31) + loom_fixed_slot(k & 31, nibble)] =
            isfinite(v) ? (short)loom_fixed_bits(v, loom_fixed_scale(shift), shift) : (short)0;
    }
    __syncthreads();
    loom_fixed_gemv_rows(w, ew, wbad, xq_s, ex_s, xbad_s, xs, out, bias, res, rows, nb, M);
}
"""


_ROWS_SOURCE = r"""
#define XROWS (16 * MF)
#define OUTS (EPI ? 4 * NF : 8 * NF)             // output rows a block takes (SwiGLU: fragment pairs)

#define LOOM_IMMA(AT, BT) asm volatile( \
    "mma.sync.aligned.m16n8k32.row.col.s32." AT "." BT ".s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};" \
    : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3]) \
    : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]))

// kind: 0 s8.s8, 1 s8.u8, 2 u8.s8, 3 u8.u8 (A's plane, B's plane)
__device__ __forceinline__ void loom_imma(int* c, const unsigned* a, const unsigned* b, int kind) {
    if (kind == 0) LOOM_IMMA("s8", "s8");
    else if (kind == 1) LOOM_IMMA("s8", "u8");
    else if (kind == 2) LOOM_IMMA("u8", "s8");
    else LOOM_IMMA("u8", "u8");
}

// the planes of four int16 integers packed two to a register (a, b): hi (q >> 8, signed bytes: each
// integer's high byte) and lo (q & 255, its low byte), four to a register
__device__ __forceinline__ void loom_planes16(unsigned a, unsigned b, unsigned* hi, unsigned* lo) {
    *hi = __byte_perm(a, b, 0x7531);
    *lo = __byte_perm(a, b, 0x6420);
}

// the same for four integers each in the low 16 bits of a word (loom_fixed_bits' values)
__device__ __forceinline__ void loom_planes(const unsigned* q, unsigned* hi, unsigned* lo) {
    loom_planes16(__byte_perm(q[0], q[1], 0x5410), __byte_perm(q[2], q[3], 0x5410), hi, lo);
}

// out[m, n] for the M (<= ROWS_MAX) rows of x and rows n of W; a block XROWS rows of x by OUTS rows of W
extern "C" __global__ void __launch_bounds__(RW * 32) loom_fixed_rows(
        const unsigned char* __restrict__ w, const int* __restrict__ ew, const int* __restrict__ wbad,
        const short* __restrict__ xq, const int* __restrict__ ex, const int* __restrict__ xbad,
        const float* __restrict__ x, float* __restrict__ out, const float* __restrict__ bias,
        const float* __restrict__ res, long long rows, int nb, int M) {
    __shared__ unsigned long long sums_s[XROWS * 8 * NF];       // a column a stored W row the block takes
    if (NB) nb = NB;                    // (compiled in: the unit loop's trip count is a constant)
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, c = lane & 3, K = 32 * nb;
    // warp w takes W fragment f = w % NF over every (RW / NF)-th unit: one fragment's decoding a warp
    const int f = warp % NF, slice = warp / NF;
    const long long out_blocks = (rows + OUTS - 1) / OUTS;
    const long long o0 = (blockIdx.x % out_blocks) * OUTS;
    const int m0 = (int)(blockIdx.x / out_blocks) * XROWS;
    for (int i = threadIdx.x; i < XROWS * 8 * NF; i += RW * 32) sums_s[i] = 0ull;
    // this lane's stored W row in the warp's fragment (SwiGLU: even fragments the gate rows, odd the up rows)
    const long long n = EPI ? o0 + 8 * (f >> 1) + g : o0 + 8 * f + g;
    const long long wr = EPI ? n + (f & 1) * rows : n;
    const bool wok = n < rows;
    const unsigned char* wrow = loom_fixed_row(w, wok ? wr : 0, nb);
    const int shift = wok ? 15 - ew[wr] : 0;
    const float sc = loom_fixed_scale(shift);
    // the planes' sums: hi.hi, hi.lo + lo.hi (one accumulator: both weigh 256), lo.lo
    int acc[MF][3][4];
    #pragma unroll
    for (int i = 0; i < MF; ++i)
        #pragma unroll
        for (int p = 0; p < 3; ++p)
            #pragma unroll
            for (int v = 0; v < 4; ++v) acc[i][p][v] = 0;
    wait_for_previous_kernel();
    #pragma unroll 4
    for (int it = 0; it < (nb + RW / NF - 1) / (RW / NF); ++it) {
        const int b = (RW / NF) * it + slice;
        if (b >= nb) break;
        int at[8];
        unsigned bh[2], bl[2];
        {
            float v[8];
            block_values(wrow, b, 2 * c, v, at);
            block_values(wrow, b, 2 * c + 1, v + 4, at + 4);
            // (a row past the output's end or holding inf or NaN: its column's sums are not used)
            unsigned q[8];
            #pragma unroll
            for (int j = 0; j < 8; ++j) q[j] = loom_fixed_bits(v[j], sc, shift);
            loom_planes(q, &bh[0], &bl[0]);
            loom_planes(q + 4, &bh[1], &bl[1]);
        }
        #pragma unroll
        for (int i = 0; i < MF; ++i) {
            // a0/a2: row g's values at this lane's positions 0-3 / 4-7; a1/a3: row g + 8's
            // x's integers in lane order: this lane's eight (block_values' lanes 2c, 2c + 1), one 16-byte load
            unsigned ah[4], al[4];
            #pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int m = m0 + 16 * i + 8 * h + g;
                const uint4 t = m < M ? *(const uint4*)(xq + (long long)m * K + 32 * b + 8 * c) : make_uint4(0, 0, 0, 0);
                loom_planes16(t.x, t.y, &ah[h], &al[h]);
                loom_planes16(t.z, t.w, &ah[h + 2], &al[h + 2]);
            }
            loom_imma(acc[i][0], ah, bh, 0);
            loom_imma(acc[i][1], ah, bl, 1);
            loom_imma(acc[i][1], al, bh, 2);
            loom_imma(acc[i][2], al, bl, 3);
        }
    }
    __syncthreads();                            // (sums_s zeroed)
    #pragma unroll
    for (int i = 0; i < MF; ++i)
        #pragma unroll
        for (int v = 0; v < 4; ++v) {
            const long long s = 65536LL * acc[i][0][v] + 256LL * acc[i][1][v] + acc[i][2][v];
            const int lm = 16 * i + 8 * (v >> 1) + g, ln = 8 * f + 2 * c + (v & 1);
            atomicAdd(&sums_s[lm * 8 * NF + ln], (unsigned long long)s);   // two's complement: exact
        }
    __syncthreads();
    for (int e = threadIdx.x; e < XROWS * OUTS; e += RW * 32) {
        const int lm = e / OUTS, o = e % OUTS, m = m0 + lm;
        const long long n = o0 + o;
        if (m >= M || n >= rows) continue;
        float y[EPI + 1];
        #pragma unroll
        for (int h = 0; h <= EPI; ++h) {
            // the sums' column: SwiGLU's output o is column within its fragment pair's gate (h 0) or up (h 1)
            const int col = EPI ? 8 * (2 * (o >> 3) + h) + (o & 7) : o;
            const long long wr = n + h * rows;
            if (xbad[m] || wbad[wr]) {          // IEEE's value, by one thread (rare)
                const unsigned char* row = loom_fixed_row(w, wr, nb);
                float t = 0.0f;
                for (int u = 0; u < nb; ++u)
                    for (int l = 0; l < 8; ++l) {
                        float v[4]; int pos[4];
                        block_values(row, u, l, v, pos);
                        for (int j = 0; j < 4; ++j) {
                            const float xv = x[(long long)m * K + 32 * u + pos[j]];
                            t = __fadd_rn(t, __fmul_rn(loom_fixed_mark(xv), loom_fixed_mark(v[j])));
                        }
                    }
                y[h] = t;
            } else {
                y[h] = __double2float_rn(ldexp((double)(long long)sums_s[lm * 8 * NF + col], ex[m] + ew[wr] - 30));
            }
        }
        loom_fixed_store(y, bias, res, out, (long long)m * rows + n, n, rows);
    }
}
"""


def _head(epilogue: int, units: int = 0, wpr: int = 1) -> str:
    """The kernels' #defines; units (NB): the 32-value units of a row, compiled into the products (0: an
    argument); wpr: the warps sharing a row in the one-row kernel."""
    return (f"typedef float T;\n#define MAX_ROWS {MAX_ROWS}\n#define WARPS {WARPS}\n#define X_THREADS {X_THREADS}\n"
            f"#define NB {units}\n#define WPR {wpr}\n"
            f"#define RW {RW}\n#define EPI {epilogue}\n#define STAGED {STAGED}\n"
            + helpers() + ROW_HELPERS + EXACT_ROW_SUM + OVERLAP_PROLOGUE + NORM_ROW)


@cache
def _module(qtype: str, epilogue: int = 0, units: int = 0, wpr: int = 1):
    return cupy.RawModule(code=_head(epilogue, units, wpr) + type_defines(qtype) + BLOCK_DECODE + _SOURCE,
                          options=OPTIONS + ("-std=c++17",))


@cache
def _rows_module(qtype: str, epilogue: int, x_frags: int, w_frags: int, units: int):
    return cupy.RawModule(code=_head(epilogue, units) + f"#define MF {x_frags}\n#define NF {w_frags}\n" + type_defines(qtype)
                          + BLOCK_DECODE + _SOURCE + _ROWS_SOURCE, options=OPTIONS + ("-std=c++17",))


def unsupported(qtype: str, cols: int) -> str | None:
    """Why the integer kernels cannot take products with a weight stored as qtype over K = cols, or None."""
    try:
        _check(qtype, cols)
    except ShapeError as e:
        return str(e)
    return None


def weight_tables(tables: dict, name: str, make: Callable[[], object]) -> object:
    """tables[name], made by make() the first time and kept (a weight's BlockQuantized.tables, shared by the
    decode graphs and the prompt products), never inside a recording (its kernels would run only at the
    replays): there it raises RuntimeError, which makes a GraphCache run that step eagerly."""
    if name not in tables:
        if cupy.cuda.get_current_stream().is_capturing():
            raise RuntimeError(f"a weight's {name.replace('_', ' ')} are made by its first product, not inside a "
                               "CUDA graph's recording")
        tables[name] = make()
    return tables[name]


def _check(qtype: str, cols: int, x: Array | None = None) -> None:
    if x is not None and (x.dtype != np.float32 or x.ndim != 2 or not x.flags.c_contiguous):
        raise ShapeError(f"x must be float32 [M, K], C-contiguous, got {x.dtype} {x.shape}")
    if cols >= MAX_K:
        raise ShapeError(f"the integer scheme sums at most {MAX_K - 1} products exactly, got K = {cols}")
    if qtype not in TYPES:
        raise ShapeError(f"no integer product kernel for weights stored as {qtype} (it takes {', '.join(TYPES)})")
    unit = 256 if qtype in K_LAYOUTS else 32
    if cols % unit or cols <= 0:
        raise ShapeError(f"a width of {cols} is not a positive multiple of {unit} (whole {qtype} blocks)")


def w_exponents(data: Array, qtype: str, rows: int, cols: int) -> tuple[Array, Array]:
    """(ew int32 [rows], bad int32 [rows]): each row of the stored weight's exponent and whether it holds
    inf or NaN. Once per weight."""
    _check(qtype, cols)
    ew, bad = cupy.empty(rows, dtype=np.int32), cupy.empty(rows, dtype=np.int32)
    if rows:
        _module(qtype).get_function("loom_fixed_w_exponents")(
            (-(-rows // WARPS),), (WARPS * 32,), (data, ew, bad, np.int64(rows), np.int32(cols // 32)))
    return ew, bad


def _nibble(qtype: str | None) -> bool:
    """Whether block_values gives lanes of qtype's units positions 2i, 2i + 1, 2i + 16, 2i + 17 (the 4- and
    5-bit types without super-blocks), not 4i .. 4i + 3."""
    return qtype is not None and qtype in LAYOUTS and qtype not in PLAIN and LAYOUTS[qtype][0] != 34


def x_integers(x: Array, qtype: str | None = None, norm: Array | None = None, normed: Array | None = None,
               eps: float = 0.0, overlap: bool = False) -> tuple[Array, Array, Array]:
    """(xq int16 [M, K], ex int32 [M], bad int32 [M]) for float32 x [M, K], C-contiguous; each 32 values'
    integers in the lane order of qtype's block_values (the kernels' loads: slot 4i + j holds lane i's j-th
    value), in x's order where qtype is None or its lanes take four consecutive values. With `norm` (a
    weight [K]), those of rms_norm(x, norm, eps) (quant_exact.rms_norm's bits), which the same launch writes
    to `normed` [M, K] first. overlap: a programmatic dependent launch (launch.py)."""
    _check_x(x)
    m, k = x.shape
    if norm is not None:
        _check_norm(norm, normed, x.shape)
    xq = cupy.empty((m, k), dtype=np.int16)
    ex, bad = cupy.empty(m, dtype=np.int32), cupy.empty(m, dtype=np.int32)
    if m:
        # (any qtype's module holds it: the x kernel reads no weight)
        launch(_module("F32").get_function("loom_fixed_x"), m, X_THREADS,
               (x, xq, ex, bad, np.int32(k), np.int32(_nibble(qtype)), pointer(norm), pointer(normed),
                np.float32(eps), sum_bits(k)), overlap)
    return xq, ex, bad


def _check_x(x: Array) -> None:
    if x.dtype != np.float32 or x.ndim != 2 or not x.flags.c_contiguous:
        raise ShapeError(f"x must be float32 [M, K], C-contiguous, got {x.dtype} {x.shape}")


def _check_norm(norm: Array, normed: Array | None, shape: tuple) -> None:
    if norm.dtype != np.float32 or norm.shape != shape[1:]:
        raise ShapeError(f"norm must be float32 [{shape[1]}], got {norm.dtype} {norm.shape}")
    if normed is not None and (normed.dtype != np.float32 or normed.shape != shape or not normed.flags.c_contiguous):
        raise ShapeError(f"normed must be float32 {list(shape)}, C-contiguous, got {normed.dtype} {normed.shape}")


def stages(m: int, k: int, rows: int) -> bool:
    """Whether gemv makes the integers of x [m, k] (and its norm) in each block's shared memory: where they
    fit and the grid is at most STAGE_WAVES blocks a multiprocessor (past that, the blocks' repeated
    work costs more than the x kernel's launch: Llama-3.2-1B's output layer took twice as long staged)."""
    return m * k <= STAGED and -(-rows // (WARPS // gemv_warps(rows))) <= STAGE_WAVES * _multiprocessors()


def gemv_warps(rows: int) -> int:
    """Warps sharing an output row in loom_fixed_gemv: the fewest (of 1, 2, 4, 8) that still give each
    multiprocessor two blocks (a warp a row left most of them idle on SmolLM2's 576- and 960-row products)."""
    for wpr in (1, 2, 4):
        if -(-rows // (WARPS // wpr)) >= 2 * _multiprocessors():
            return wpr
    return 8


def rows_shape(m: int, rows: int, qtype: str, swiglu: bool = False) -> tuple[int, int]:
    """(x fragments, W fragments a warp) for loom_fixed_rows' product of m rows of x with `rows` output rows:
    one W fragment a warp (a SwiGLU pair), and two x fragments (32 rows of x) a block past 16 rows, except
    for SwiGLU. Measured (.scratch/fixed_grid.py, H100, SmolLM2's and Llama-3.2-1B's products, bf16 and
    Q4_1, 16 and 64 rows): unlike quant_rows' float64 sums, more W fragments a warp were slower in every
    case (the int8 products are cheap; the warps' decoding and loads are what a block waits on), and 2 x
    fragments beat 1 at 64 rows except in most SwiGLU products."""
    if swiglu:
        return 1, 2
    return (1 if m <= 16 else 2), 1


def _epilogue_args(data: Array, m: int, out: Array, bias: Array | None, residual: Array | None,
                   swiglu: bool) -> tuple[int, tuple]:
    """(output rows, the kernels' bias and residual pointers), checking the epilogue's arrays."""
    stored = data.shape[0]
    if swiglu and (stored % 2 or residual is not None):
        raise ShapeError("SwiGLU takes an even number of stored rows (gate, then up) and no residual")
    rows = stored // 2 if swiglu else stored
    if out.shape != (m, rows) or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ShapeError(f"out must be float32 [{m}, {rows}], C-contiguous, got {out.dtype} {out.shape}")
    if bias is not None and (bias.shape != (stored,) or bias.dtype != np.float32):
        raise ShapeError(f"bias must be float32 [{stored}], got {bias.dtype} {bias.shape}")
    if residual is not None and (residual.shape != (m, rows) or residual.dtype != np.float32
                                 or not residual.flags.c_contiguous):
        raise ShapeError(f"residual must be float32 [{m}, {rows}], C-contiguous, got {residual.dtype} {residual.shape}")
    return rows, (pointer(bias), pointer(residual))


def rows_product(data: Array, qtype: str, x: Array, out: Array, w_tables: tuple[Array, Array],
                 bias: Array | None = None, residual: Array | None = None, swiglu: bool = False,
                 norm: Array | None = None, normed: Array | None = None, eps: float = 0.0,
                 overlap: bool = False) -> None:
    """out [M, rows] = (residual +) x [M, K] @ W^T (+ bias), or SwiGLU of its two halves (W's stored rows
    the gate's, then the up's), in the integer scheme for up to ROWS_MAX rows of float32 x on the int8
    tensor cores (compute capability 8.0 and up), with gemv's arguments; with `norm`, the product of
    rms_norm(x, norm, eps), written to `normed` [M, K] on the way (x's integers' launch makes both)."""
    m, k = x.shape
    _check(qtype, k, x)
    if not 0 < m <= ROWS_MAX:
        raise ShapeError(f"rows_product takes 1 to {ROWS_MAX} rows of x, got {m}")
    if int(cupy.cuda.Device().compute_capability) < 80:
        raise BackendError("the integer scheme's batched products need int8 tensor cores (compute capability 8.0)")
    rows, epilogue = _epilogue_args(data, m, out, bias, residual, swiglu)
    if rows == 0:
        return
    x_frags, w_frags = rows_shape(m, rows, qtype, swiglu)
    # a warp's int32 plane sums take K w_frags / RW products, each below 2^16: exact up to 2^18 / w_frags
    if k * w_frags > 1 << 18:
        raise ShapeError(f"the int8 planes' sums are exact in int32 up to K = {(1 << 18) // w_frags} at "
                         f"{w_frags} W fragments a block, got {k}")
    if norm is not None and normed is None:
        raise ShapeError("rows_product with a norm writes the normed rows: pass `normed` [M, K]")
    xq, ex, xbad = x_integers(x, qtype, norm, normed, eps, overlap)
    ew, wbad = w_tables
    outs = 4 * w_frags if swiglu else 8 * w_frags
    blocks = -(-rows // outs) * -(-m // (16 * x_frags))
    launch(_rows_module(qtype, int(swiglu), x_frags, w_frags, k // 32).get_function("loom_fixed_rows"), blocks, RW * 32,
           (data, ew, wbad, xq, ex, xbad, x if norm is None else normed, out, *epilogue, np.int64(rows),
            np.int32(k // 32), np.int32(m)), overlap)


def gemv(data: Array, qtype: str, x: Array, out: Array, w_tables: tuple[Array, Array], bias: Array | None = None,
         residual: Array | None = None, swiglu: bool = False, norm: Array | None = None, normed: Array | None = None,
         eps: float = 0.0, overlap: bool = False) -> None:
    """out [M, rows] = (residual +) x [M, K] @ W^T (+ bias), or SwiGLU of its two halves, in the integer
    scheme (fixed.matmul_t's bits, then the epilogue's float32 operations: quant_tiles' epilogues) for M <=
    MAX_ROWS rows of float32 x, C-contiguous, and the stored weight `data` [stored rows, row bytes] with its
    w_exponents `w_tables`. With `norm` (a weight [K]), the product of rms_norm(x, norm, eps)
    (quant_exact.rms_norm's bits): made by each block where x `stages`, else by x's integers' launch, which
    writes it to `normed` [M, K]. overlap: programmatic dependent launches (launch.py)."""
    m, k = x.shape
    _check(qtype, k, x)
    if not 0 < m <= MAX_ROWS:
        raise ShapeError(f"gemv takes 1 to {MAX_ROWS} rows of x, got {m}")
    rows, epilogue = _epilogue_args(data, m, out, bias, residual, swiglu)
    if rows == 0:
        return
    if norm is not None:
        _check_norm(norm, normed, x.shape)
    ew, wbad = w_tables
    wpr = gemv_warps(rows)
    module, grid = _module(qtype, int(swiglu), k // 32, wpr), -(-rows // (WARPS // wpr))
    if stages(m, k, rows):
        launch(module.get_function("loom_fixed_gemv_staged"), grid, WARPS * 32,
               (data, ew, wbad, x, out, *epilogue, np.int64(rows), np.int32(k // 32), np.int32(m),
                np.int32(_nibble(qtype)), pointer(norm), np.float32(eps), sum_bits(k)), overlap,
               shared=m * k * (6 if norm is not None else 2))
        return
    if norm is not None and normed is None:
        raise ShapeError(f"gemv with a norm over x [{m}, {k}] (past STAGED) writes the normed rows: pass `normed`")
    xq, ex, xbad = x_integers(x, qtype, norm, normed, eps, overlap)
    launch(module.get_function("loom_fixed_gemv"), grid, WARPS * 32,
           (data, ew, wbad, xq, ex, xbad, x if norm is None else normed, out, *epilogue, np.int64(rows),
            np.int32(k // 32), np.int32(m)), overlap)
