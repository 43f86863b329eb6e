"""Deterministic products with stored (block-quantized or 16/32-bit) weights for a few rows of x and
K > ROUNDED_MAX_K: the decode step's longer products (Llama-3.2-1B's down projection, every product of
Llama-3.1-8B) in deterministic mode, with the bits of the exact GEMM.

The dispatch table (loom/kernels/exact/dispatch.py) gives those products the 2 x 1 slice scheme
(loom/kernels/exact/__init__.py, `_matmul_narrow`; exact_slices.py runs it on the GPU for decoded
weights): each row of x becomes two integer slices at its maximum's scale, each row of W one integer
at its maximum's scale, the slices' dot products are exact integer sums, and one recombination rounds.
Every partial sum of those products is an integer below 2^53, so a float64 sum of them is exact in
any order: the kernels here need no certification and no settling, only the same slicing arithmetic.

- `row_maxima`: max |W[r, :]| of each decoded row (the scheme's column maxima of W^T), once per
  weight: the caller keeps it (a recorded step reads it at every replay).
- `slice_rows`: per row of x, blocks of SLICE_CHUNK values (fused.rms_norm first where the product has
  a norm, with quant_exact's bits), its maximum, and both slices as float32 pairs (exact: below 2^17).
- `gemv`: a warp per one to four rows of W (`rows_per_warp`), as quant_exact's kernel reads the stored
  bytes (quant.BLOCK_DECODE), each value rounded to the row's integer in float64, two float64 sums per
  row of x (exact); then the recombination in exact_slices' order and the epilogues (+ bias, a
  residual, or SwiGLU) as quant_exact's. A row of x or W whose maximum is not finite gets IEEE's special value, as
  exact_slices.patch_specials writes it.

loom/llm/paged_graph.py records these in deterministic mode. Capturable: sizes as arguments, no sync,
no host read.
"""
from __future__ import annotations

from functools import cache

import cupy
import numpy as np

from .. import Array
from . import quant_exact
from .compile import OPTIONS
from .launch import launch
from .quant import pointer
from .quant_exact import prelude, sum_bits, warps_per_row

MAX_K = 1 << 14     # exact_dispatch.CHUNK_BITS: longer products sum chunks in order (not here)
# Values of a row of x each slicing block writes: a row of 8,192 by one block took 20 us (its loads and
# stores one after another), as long as the product after it
SLICE_CHUNK = 512
# Rows of W a warp of gemv takes at once (rows_per_warp): None chooses by shape; the benchmark sets it.
# H100, 2026-11-25 (benchmarks/exact_gemv.py, one row of x): Llama-3.2-1B's down product (K = 8192) 34.1 us
# with one row a warp, 30.2 with two; Llama-3.1-8B's 106.8 / 88.5 / 84.5 with one, two, four. Four rows of W
# with two of x spilled registers (1.8x slower than one), as did four rows with four of x (5x).
ROWS_PER_WARP: int | None = None
MAX_REGISTERS = 12      # rows of W a warp takes times (rows of x + 2): see rows_per_warp

_SOURCE = r"""
#define ITERS ((NB + 4 * WPR - 1) / (4 * WPR))
#define COLS (NB * 32)
#define ROW_BYTES ((long long)(NB / SUBS) * BLOCK)

// out[r] = max |W[r, k]| over the decoded row (as bit patterns: a NaN's pattern is above inf's), a warp a row.
extern "C" __global__ void loom_row_maxima(const unsigned char* w, float* out, int rows) {
    const int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    if (warp >= rows) return;
    const unsigned char* row = w + warp * ROW_BYTES;
    unsigned top = 0;
    for (int b = lane >> 3; b < NB; b += 4) {
        float v[4]; int at[4];
        block_values(row, b, lane & 7, v, at);
        #pragma unroll
        for (int j = 0; j < 4; ++j) top = max(top, __float_as_uint(v[j]) & 0x7fffffffu);
    }
    for (int o = 16; o; o >>= 1) top = max(top, __shfl_xor_sync(LOOM_FULL, top, o));
    if (lane == 0) out[warp] = __uint_as_float(top);
}

// Row m of x, by `chunks` blocks (block m * chunks + c slices values [c chunk, (c + 1) chunk)): with norm_w,
// y = rms_norm(x) (quant_exact's bits, each block the whole row into shared memory, its own chunk into
// normed), else y = x; then ymax[m] = max |y| (each block the whole row's) and slices[m, k] = (hi, lo) as
// exact_slices' loom_exact_slice_left makes them, stored as float32 pairs (exact: below 2^17).
extern "C" __global__ void loom_slice_rows(const float* __restrict__ x, const float* __restrict__ norm_w,
                                           float* __restrict__ normed, float2* __restrict__ slices,
                                           float* __restrict__ ymax, int cols, float eps, int sumbits, int abits,
                                           int chunks, int chunk) {
    extern __shared__ float y_s[];
    __shared__ Scratch scratch;
    __shared__ unsigned tops[32];
    wait_for_previous_kernel();
    const long long m = blockIdx.x / chunks;
    const int first = (blockIdx.x % chunks) * chunk, last = min(cols, first + chunk);
    const float* xr = x + m * cols;
    const float* y = xr;
    if (norm_w != 0) {
        loom_rms_norm_row([&](long long k) { return xr[k]; }, norm_w, y_s, cols, eps, sumbits, scratch);
        __syncthreads();
        y = y_s;
    }
    unsigned top = 0;
    #pragma unroll 8
    for (int k = threadIdx.x; k < cols; k += blockDim.x) top = max(top, __float_as_uint(y[k]) & 0x7fffffffu);
    for (int o = 16; o; o >>= 1) top = max(top, __shfl_xor_sync(LOOM_FULL, top, o));
    if ((threadIdx.x & 31) == 0) tops[threadIdx.x >> 5] = top;
    __syncthreads();
    top = 0;
    for (int i = 0; i < (int)(blockDim.x >> 5); ++i) top = max(top, tops[i]);
    const float amax = __uint_as_float(top);
    if (threadIdx.x == 0 && first == 0) ymax[m] = amax;
    const int shift = abits - loom_top_exponent(amax);
    const double up = ldexp(1.0, abits);
    #pragma unroll 4
    for (int k = first + threadIdx.x; k < last; k += blockDim.x) {
        const float v = y[k];
        if (norm_w != 0) normed[m * cols + k] = v;
        const float s = ldexpf(v, shift);                                   // |s| < 2^abits, exact
        const float h = rintf(s);
        const double lo = rint(__dmul_rn(__dsub_rn((double)s, (double)h), up));   // |lo| <= 2^(abits - 1)
        slices[m * cols + k] = make_float2(h, (float)lo);
    }
}

// EPI 0: out[m, r] = (res[m, r] +) (x W[r]^T (+ bias[r])); EPI 1 (SwiGLU): out[m, r] = silu(g) * u, g and u
// the products with rows r and r + rows (+ bias). A warp (WPR warps, their sums met in shared memory) takes
// RB output rows of W at once (NR rows of W: slots as quant_exact's kernel), lanes as quant_exact's kernel.
// xs: slice_rows' slices of x [MR, COLS], xmax its row maxima, xf the float rows they were made from (for
// special values); wmax: row_maxima of W.
#define NR (RB * (EPI + 1))
extern "C" __global__ void __launch_bounds__(256, MIN_BLOCKS) loom_sliced_gemv(
        const unsigned char* w, const float2* xs, const float* xmax, const float* xf, const float* wmax, float* out,
        int rows, const float* bias, const float* res, int abits, int bbits) {
    __shared__ double partial[8][2][NR][MR];
    const int global_warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    const int first = (global_warp / WPR) * RB, slice = global_warp % WPR, local = threadIdx.x >> 5;
    const bool valid = first < rows;
    const int part = lane >> 3, i = lane & 7;
    int at_row[NR];                 // slot u's row of W (rows past the last: the last, read and never written)
    const unsigned char* row[NR];
    #pragma unroll
    for (int u = 0; u < NR; ++u) {
        at_row[u] = min(first + u / (EPI + 1), rows - 1) + (u % (EPI + 1)) * rows;
        row[u] = w + at_row[u] * ROW_BYTES;
    }
    if (valid) {
        #pragma unroll
        for (int u = 0; u < NR; ++u) prefetch_row(row[u], ROW_BYTES, slice + WPR * lane, 32 * WPR);
    }
    wait_for_previous_kernel();
    // W's integers: rint(ldexpf(v, shift)) as the reference makes them, here rint(v 2^shift) in float64 (v 2^shift
    // is exact there; where float32 would have rounded it, below 2^-126, both give a zero) by adding and taking
    // away 1.5 2^52, which rounds to the nearest integer, ties to even, as rint does (|v 2^shift| <= 2^bbits)
    const double magic = 0x1.8p52;
    double scale[NR];
    #pragma unroll
    for (int u = 0; u < NR; ++u) scale[u] = valid ? ldexp(1.0, bbits - loom_top_exponent(wmax[at_row[u]])) : 0.0;
    double hi[NR][MR], lo[NR][MR];
    #pragma unroll
    for (int u = 0; u < NR; ++u)
        #pragma unroll
        for (int m = 0; m < MR; ++m) { hi[u][m] = 0.0; lo[u][m] = 0.0; }
    #pragma unroll 4
    for (int it = 0; it < ITERS; ++it) {
        const int b = part + 4 * slice + it * 4 * WPR;
        if (!valid || b >= NB) continue;
        float v[NR][4]; int at[4];
        #pragma unroll
        for (int u = 0; u < NR; ++u) block_values(row[u], b, i, v[u], at);
        double q[NR][4];
        #pragma unroll
        for (int u = 0; u < NR; ++u)
            #pragma unroll
            for (int j = 0; j < 4; ++j) q[u][j] = __dsub_rn(__fma_rn((double)v[u][j], scale[u], magic), magic);
        #pragma unroll
        for (int m = 0; m < MR; ++m)
            #pragma unroll
            for (int j = 0; j < 4; ++j) {
                const float2 a = xs[m * COLS + b * 32 + at[j]];
                const double ah = (double)a.x, al = (double)a.y;
                #pragma unroll
                for (int u = 0; u < NR; ++u) {      // integers: every partial sum below 2^53, exact
                    hi[u][m] = __fma_rn(ah, q[u][j], hi[u][m]);
                    lo[u][m] = __fma_rn(al, q[u][j], lo[u][m]);
                }
            }
    }
    #pragma unroll
    for (int u = 0; u < NR; ++u)
        #pragma unroll
        for (int m = 0; m < MR; ++m) {
            for (int o = 16; o; o >>= 1) {
                hi[u][m] = __dadd_rn(hi[u][m], __shfl_xor_sync(LOOM_FULL, hi[u][m], o));
                lo[u][m] = __dadd_rn(lo[u][m], __shfl_xor_sync(LOOM_FULL, lo[u][m], o));
            }
            if (WPR > 1 && lane == 0) { partial[local][0][u][m] = hi[u][m]; partial[local][1][u][m] = lo[u][m]; }
        }
    if (WPR > 1) {
        __syncthreads();
        if (slice != 0) return;
        #pragma unroll
        for (int u = 0; u < NR; ++u)
            #pragma unroll
            for (int m = 0; m < MR; ++m)
                for (int j = 1; j < WPR; ++j) {
                    hi[u][m] = __dadd_rn(hi[u][m], partial[local + j][0][u][m]);
                    lo[u][m] = __dadd_rn(lo[u][m], partial[local + j][1][u][m]);
                }
    }
    if (!valid) return;
    const double down = ldexp(1.0, -abits);
    #pragma unroll
    for (int jr = 0; jr < RB; ++jr) {
        const int r = first + jr;
        if (r >= rows) break;                                                   // warp-uniform
        #pragma unroll
        for (int m = 0; m < MR; ++m) {
            const float am = xmax[m];
            float y[EPI + 1];
            #pragma unroll
            for (int e = 0; e <= EPI; ++e) {
                const int u = jr * (EPI + 1) + e;
                const float bm = wmax[at_row[u]];
                double acc = __dadd_rn(__dmul_rn(lo[u][m], down), hi[u][m]);      // the one rounding
                acc = __dmul_rn(acc, ldexp(1.0, loom_top_exponent(am) - abits));
                float v = (float)__dmul_rn(acc, ldexp(1.0, loom_top_exponent(bm) - bbits));
                if (!isfinite(am) || !isfinite(bm)) {                               // warp-uniform
                    const unsigned char* wr = row[u];
                    const float s = loom_special_walk([&](auto f) {
                        for (int b = part; b < NB; b += 4) {
                            float wv[4]; int at[4];
                            block_values(wr, b, i, wv, at);
                            #pragma unroll
                            for (int j = 0; j < 4; ++j) f(xf[m * COLS + b * 32 + at[j]], wv[j]);
                        }
                    });
                    if (!isfinite(s)) v = s;
                }
                y[e] = bias != 0 ? v + bias[r + e * rows] : v;
            }
            if (lane == 0) {
                const float o = EPI == 1 ? (y[0] * loom_sigmoid(y[0])) * y[EPI] : y[0];
                out[(long long)m * rows + r] = res != 0 ? res[(long long)m * rows + r] + o : o;
            }
        }
    }
}
"""


@cache
def _module(qtype: str, epilogue: int, x_rows: int, warps_per_row: int, blocks: int, rows_per_warp: int = 1):
    source = prelude(qtype, epilogue, x_rows, warps_per_row, blocks) + f"#define RB {rows_per_warp}\n" + _SOURCE
    return cupy.RawModule(code=source, options=OPTIONS + ("-std=c++17",))


def unsupported(qtype: str, rows_of_x: int, cols: int) -> str | None:
    """Why `gemv` cannot take a product over K = cols, or None where it can. (The kernels compute the
    slice scheme over one chunk: the caller checks that exact_dispatch gives it to K = cols.)"""
    if cols > MAX_K:
        return f"products over K = {cols} sum chunks of {MAX_K} (no decode kernel)"
    return quant_exact.unsupported(qtype, rows_of_x, cols)       # (the same types, rows and widths)


def row_maxima(data: Array, qtype: str, rows: int, cols: int) -> Array:
    """float32 [rows]: max |W[r, :]| of each row of the stored weight decoded (NaN where a row holds one)."""
    out = cupy.empty(rows, dtype=np.float32)
    if rows:
        kernel = _module(qtype, 0, 1, 1, cols // 32).get_function("loom_row_maxima")
        kernel(((rows * 32 + 255) // 256,), (256,), (data, out, np.int32(rows)))
    return out


def slice_rows(x: Array, slices: Array, xmax: Array, bits: tuple, norm: Array | None = None,
               normed: Array | None = None, eps: float = 0.0, overlap: bool = False) -> None:
    """slices (float32 [M, 2 cols]: (hi, lo) pairs) and xmax [M] of x [M, cols] for the slice scheme
    with `bits` (exact.narrow_bits(cols)); with `norm`, of rms_norm(x, norm, eps), which is written to
    `normed` [M, cols]. All C-contiguous."""
    rows, cols = x.shape
    if rows:
        kernel = _module("F32", 0, 1, 1, 1).get_function("loom_slice_rows")
        chunks = -(-cols // SLICE_CHUNK)
        launch(kernel, rows * chunks, 256, (x, pointer(norm), pointer(normed), slices, xmax, np.int32(cols),
                                            np.float32(eps), sum_bits(cols), np.int32(bits[0]), np.int32(chunks),
                                            np.int32(SLICE_CHUNK)), overlap, shared=4 * cols if norm is not None else 0)


def gemv(data: Array, qtype: str, slices: Array, xmax: Array, xf: Array, wmax: Array, out: Array, bits: tuple,
         bias: Array | None = None, residual: Array | None = None, swiglu: bool = False, overlap: bool = False) -> None:
    """out (+)= x @ W^T ... with the slice scheme's bits, from slice_rows' slices and xmax of x (xf: the
    rows they were made from) and W's row_maxima `wmax`; epilogues as quant_exact.gemv's. The caller
    has checked `unsupported`."""
    rows = data.shape[0] // 2 if swiglu else data.shape[0]
    m, cols = xf.shape
    if rows and m:
        rb = rows_per_warp(rows, cols, m, swiglu)
        groups = -(-rows // rb)
        wpr = warps_per_row(groups, cols)
        blocks = (groups * wpr * 32 + 255) // 256
        kernel = _module(qtype, int(swiglu), m, wpr, cols // 32, rb).get_function("loom_sliced_gemv")
        launch(kernel, blocks, 256, (data, slices, xmax, xf, wmax, out, np.int32(rows), pointer(bias),
                                     pointer(residual), np.int32(bits[0]), np.int32(bits[1])), overlap)


def rows_per_warp(rows: int, cols: int, x_rows: int, swiglu: bool) -> int:
    """Output rows of W a warp of `gemv` takes at once (1, 2 or 4): each slice of x it reads and converts
    to float64 then serves them all. ROWS_PER_WARP where set; else the most whose rows of W (NR) keep
    NR (x_rows + 2) <= MAX_REGISTERS (a row's float64 integers, and its two sums for each row of x, in a
    lane's registers) and the warps in flight (groups of rows times warps_per_row) at half a wave or half
    what one row a warp has (fewer, longer warps measured faster: each reads more of W a step)."""
    if ROWS_PER_WARP is not None:
        return ROWS_PER_WARP
    def warps(rb: int) -> int:
        groups = -(-rows // rb)
        return groups * warps_per_row(groups, cols)
    floor = min(warps(1), quant_exact._multiprocessors() * quant_exact.MIN_BLOCKS * 8) // 2
    rb, halves = 1, 2 if swiglu else 1
    while rb < 4 and 2 * rb * halves * (x_rows + 2) <= MAX_REGISTERS and warps(2 * rb) >= floor:
        rb *= 2
    return rb
