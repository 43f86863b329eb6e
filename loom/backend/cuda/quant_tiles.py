"""Deterministic products with stored (block-quantized or 16/32-bit) weights for many rows of x at once,
on the float64 tensor cores: batched decode steps in deterministic mode, with the bits of the exact
GEMM. quant_exact and quant_slices take a warp per row of W and hold every row of x's sums in registers,
so past a few rows they spill and read W once per group of 16 rows (a 64-row step of SmolLM2's shapes
took 36 ms); here a block of 128 threads takes a tile of 64 x 64 (rows of x by rows of W), decodes each
32-value unit of its W rows once into shared memory as float64 (quant.BLOCK_DECODE's exact values),
stages x beside it, and accumulates with the DMMA instruction (mma m8n8k4, float64).

Both of the dispatch table's schemes for float32 products:
- **rounded** (K <= ROUNDED_MAX_K): r = the float64 dot product, in the tensor cores' order. Any order
  errs by at most gamma_K ||x|| ||w|| (exact_rounded.error_factor: Cauchy-Schwarz, the norms' rounding
  allowed for), so where float32(r - e) and float32(r + e) agree the exact value rounds to them
  (exact_rounded's loom_certified): nearly every entry. The rest (about 0.1% on random data) are settled
  by the block's warp at once with quant_exact's later stages (a compensated sum, then integer limbs)
  over the stored row; a row of x or W holding inf or NaN (its norm is not finite) gets IEEE's special
  value. ||w|| per row of W is `row_norms`, made once per weight by the caller; ||x|| the block sums
  while it stages x.
- **slices 2 x 1** (ROUNDED_MAX_K < K <= 2^14): the A operand is x's two integer slices from
  quant_slices.slice_rows (hi and lo as rows of their own), the B operand each W value rounded to its
  row's integer (quant_slices.row_maxima), so every partial sum is an integer below 2^53: exact in any
  order. Then quant_slices' recombination, one rounding, and its special values.

Epilogues as quant_exact's: + bias, a residual (out = res + (x W^T + b)), or SwiGLU (silu(g) * u of the
products with rows r and r + rows). Tiles: a warp holds 32 x 32 (four by four 8 x 8 fragments); with
the slices, fragments 0-1 and 2-3 of a warp's rows are the hi and lo slices of the same 16 rows of x, and
with SwiGLU its columns' fragments 0-1 and 2-3 the gate and up rows of the same 16 outputs, so each lane
holds both halves of every entry it finishes. Capturable: sizes as arguments, no sync, no host read.
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
from .quant_exact import prelude

THREADS = 128
MAX_K = 1 << 14         # the slice scheme's products over one chunk (exact_dispatch.CHUNK_BITS)

_SOURCE = r"""
#define XR (SLICED ? 32 : 64)          // rows of x a block takes
#define NR (EPI ? 32 : 64)             // output columns a block takes
#define KP 36                          // doubles a staged row takes: 32 and 4 of padding (the fragments'
                                       // loads then hit each bank once a half-warp)
#define COLS (NB * 32)
#define ROW_BYTES ((long long)(NB / SUBS) * BLOCK)

__device__ __forceinline__ void loom_dmma(double* d, double a, double b) {
    asm volatile("mma.sync.aligned.m8n8k4.row.col.f64.f64.f64.f64 {%0,%1}, {%2}, {%3}, {%0,%1};"
                 : "+d"(d[0]), "+d"(d[1]) : "d"(a), "d"(b));
}

// Tile column cb (0..63: warp column cb / 32, fragment (cb / 8) % 4, column cb % 8): its output column,
// counted from the block's first, and its half (1: SwiGLU's up rows, fragments 2-3).
__device__ __forceinline__ int loom_tile_out(int cb) { return EPI ? 16 * (cb >> 5) + 8 * ((cb >> 3) & 1) + (cb & 7) : cb; }
__device__ __forceinline__ int loom_tile_half(int cb) { return EPI ? (cb >> 4) & 1 : 0; }

// out [M, rows] (+)= x [M, COLS] W^T ..., the block's tile of XR rows of x by NR output columns.
// Rounded (SLICED 0): x the float32 rows, wnorm ||W[r]||, factor exact_rounded.error_factor(COLS).
// Sliced: x slice_rows' (hi, lo) pairs, xmax their rows' maxima, xf the float rows (for special values),
// wmax row_maxima of W, abits / bbits the scheme's bits.
extern "C" __global__ void __launch_bounds__(128) loom_exact_tiles(
        const unsigned char* __restrict__ w, const float* __restrict__ x, const float* __restrict__ xf,
        const float* __restrict__ xmax, const double* __restrict__ wnorm, const float* __restrict__ wmax,
        float* out, int m_rows, int rows, const float* __restrict__ bias, const float* res, double factor,
        int abits, int bbits) {
    __shared__ __align__(16) double a_s[64 * KP];
    __shared__ __align__(16) double b_s[64 * KP];
    __shared__ double xnorm_s[64];
    __shared__ int shift_s[64];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wm = warp >> 1, wn = warp & 1;
    const int g = lane >> 2, c = lane & 3;
    const int tiles_m = (m_rows + XR - 1) / XR;
    const int m0 = (blockIdx.x % tiles_m) * XR, n0 = (blockIdx.x / tiles_m) * NR;
    // this thread's four W staging tasks: tile column task / 8, lane-of-eight task % 8 (block_values')
    const unsigned char* wrow[4];
    bool wvalid[4];
    #pragma unroll
    for (int q = 0; q < 4; ++q) {
        const int cb = (tid + THREADS * q) >> 3, n = n0 + loom_tile_out(cb);
        wvalid[q] = n < rows;
        wrow[q] = w + (long long)(wvalid[q] ? n + loom_tile_half(cb) * rows : 0) * ROW_BYTES;
    }
    wait_for_previous_kernel();
    if (SLICED && tid < 64) {
        const int n = n0 + loom_tile_out(tid);
        shift_s[tid] = n < rows ? bbits - loom_top_exponent(wmax[n + loom_tile_half(tid) * rows]) : 0;
    }
    __syncthreads();
    double acc[4][4][2];
    #pragma unroll
    for (int i = 0; i < 4; ++i)
        #pragma unroll
        for (int j = 0; j < 4; ++j) { acc[i][j][0] = 0.0; acc[i][j][1] = 0.0; }
    double sq = 0.0;            // rounded: this thread's share of its row of x's sum of squares
    for (int b = 0; b < NB; ++b) {
        #pragma unroll
        for (int q = 0; q < 4; ++q) {
            const int task = tid + THREADS * q, cb = task >> 3, i = task & 7;
            float v[4]; int at[4];
            if (wvalid[q]) block_values(wrow[q], b, i, v, at);
            else {
                #pragma unroll
                for (int j = 0; j < 4; ++j) { v[j] = 0.0f; at[j] = 4 * i + j; }
            }
            #pragma unroll
            for (int j = 0; j < 4; ++j)
                b_s[cb * KP + at[j]] = SLICED ? (double)rintf(ldexpf(v[j], shift_s[cb])) : (double)v[j];
        }
        if (SLICED) {           // row r of the block's x, values 8 part .. 8 part + 7, both slices
            const int r = tid >> 2, part = tid & 3;
            const bool ok = m0 + r < m_rows;
            const float4* src = (const float4*)(x + 2 * ((long long)(m0 + r) * COLS + b * 32 + 8 * part));
            const int hi = 32 * (r >> 4) + 8 * ((r >> 3) & 1) + (r & 7), lo = hi + 16;
            #pragma unroll
            for (int q = 0; q < 4; ++q) {
                const float4 p = ok ? src[q] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
                const int k = 8 * part + 2 * q;
                a_s[hi * KP + k] = p.x; a_s[lo * KP + k] = p.y;
                a_s[hi * KP + k + 1] = p.z; a_s[lo * KP + k + 1] = p.w;
            }
        } else {                // row r of the block's x, values 16 part .. 16 part + 15
            const int r = tid >> 1, part = tid & 1;
            const bool ok = m0 + r < m_rows;
            const float4* src = (const float4*)(x + (long long)(m0 + r) * COLS + b * 32 + 16 * part);
            #pragma unroll
            for (int q = 0; q < 4; ++q) {
                const float4 p = ok ? src[q] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
                const double e[4] = {p.x, p.y, p.z, p.w};
                #pragma unroll
                for (int j = 0; j < 4; ++j) {
                    a_s[r * KP + 16 * part + 4 * q + j] = e[j];
                    sq = __dadd_rn(sq, __dmul_rn(e[j], e[j]));        // exact squares, rounded sums
                }
            }
        }
        __syncthreads();
        #pragma unroll
        for (int kk = 0; kk < 8; ++kk) {
            double af[4], bf[4];
            #pragma unroll
            for (int t = 0; t < 4; ++t) {
                af[t] = a_s[(32 * wm + 8 * t + g) * KP + 4 * kk + c];
                bf[t] = b_s[(32 * wn + 8 * t + g) * KP + 4 * kk + c];
            }
            #pragma unroll
            for (int i = 0; i < 4; ++i)
                #pragma unroll
                for (int j = 0; j < 4; ++j) loom_dmma(acc[i][j], af[i], bf[j]);
        }
        __syncthreads();
    }
    if (!SLICED) {
        sq = __dadd_rn(sq, __shfl_xor_sync(LOOM_FULL, sq, 1));
        if ((tid & 1) == 0) xnorm_s[tid >> 1] = __dsqrt_rn(sq);
        __syncthreads();
    }
    // Each lane's entries: rows g (+ 8 per fragment) of x, columns 2c, 2c + 1 (+ 8 per fragment).
    #define MT (SLICED ? 2 : 4)
    #define NT (EPI ? 2 : 4)
    float val[MT][NT][2][EPI + 1];
    #pragma unroll
    for (int mt = 0; mt < MT; ++mt)
        #pragma unroll
        for (int nt = 0; nt < NT; ++nt)
            #pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int lm = SLICED ? 16 * wm + 8 * mt + g : 32 * wm + 8 * mt + g;
                const int m = m0 + lm;
                const int n = n0 + (EPI ? 16 * wn : 32 * wn) + 8 * nt + 2 * c + h;
                const bool valid = m < m_rows && n < rows;
                #pragma unroll
                for (int e = 0; e <= EPI; ++e) {
                    const int wr = valid ? n + e * rows : 0;
                    float v = 0.0f;
                    bool doubt = false, special = false;
                    if (valid && SLICED) {
                        const float am = xmax[m], bm = wmax[wr];
                        const double hi = acc[mt][nt + 2 * e][h], lo = acc[mt + 2][nt + 2 * e][h];
                        double r = __dadd_rn(__dmul_rn(lo, ldexp(1.0, -abits)), hi);      // the one rounding
                        r = __dmul_rn(r, ldexp(1.0, loom_top_exponent(am) - abits));
                        v = (float)__dmul_rn(r, ldexp(1.0, loom_top_exponent(bm) - bbits));
                        special = doubt = !isfinite(am) || !isfinite(bm);
                    } else if (valid) {
                        const double s = acc[mt][nt + 2 * e][h];
                        const double norms = __dmul_rn(xnorm_s[lm], wnorm[wr]);
                        special = !isfinite(norms);
                        doubt = !loom_certified(s, __dadd_rn(__dmul_rn(norms, factor), __dmul_rn(fabs(s), 0x1p-52)), &v)
                                || special;
                    }
                    // the warp settles its doubtful entries together, one at a time
                    for (unsigned left = __ballot_sync(LOOM_FULL, doubt); left; left &= left - 1) {
                        const int src = __ffs(left) - 1;
                        const int sm = __shfl_sync(LOOM_FULL, m, src), sw = __shfl_sync(LOOM_FULL, wr, src);
                        const bool sp = __shfl_sync(LOOM_FULL, special, src);
                        const float* xr = (SLICED ? xf : x) + (long long)sm * COLS;
                        const unsigned char* row = w + (long long)sw * ROW_BYTES;
                        auto walk = [=](auto f) {
                            for (int b = lane >> 3; b < NB; b += 4) {
                                float wv[4]; int at[4];
                                block_values(row, b, lane & 7, wv, at);
                                #pragma unroll
                                for (int j = 0; j < 4; ++j) f(xr[b * 32 + at[j]], wv[j]);
                            }
                        };
                        // (the slice scheme keeps its value where IEEE's is finite: quant_slices' rule)
                        const float settled = sp ? loom_special_walk(walk) : loom_settle_walk(walk, COLS);
                        if (lane == src && (!SLICED || !isfinite(settled))) v = settled;
                    }
                    val[mt][nt][h][e] = valid && bias != 0 ? v + bias[wr] : v;
                }
                if (valid) {
                    const float y0 = val[mt][nt][h][0];
                    const float r = EPI == 1 ? (y0 * loom_sigmoid(y0)) * val[mt][nt][h][EPI] : y0;
                    const long long at = (long long)m * rows + n;
                    out[at] = res != 0 ? res[at] + r : r;
                }
            }
}

// out[r] = ||W[r, :]||_2 of the decoded row in float64 (exact squares, rounded sums: the rounded scheme's
// bound allows for it), a warp a row; not finite where the row holds inf or NaN.
extern "C" __global__ void loom_row_norms(const unsigned char* w, double* out, int rows) {
    const int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    if (warp >= rows) return;
    const unsigned char* row = w + warp * ROW_BYTES;
    double s = 0.0;
    for (int b = lane >> 3; b < NB; b += 4) {
        float v[4]; int at[4];
        block_values(row, b, lane & 7, v, at);
        #pragma unroll
        for (int j = 0; j < 4; ++j) s = __dadd_rn(s, __dmul_rn((double)v[j], (double)v[j]));
    }
    for (int o = 16; o; o >>= 1) s = __dadd_rn(s, __shfl_xor_sync(LOOM_FULL, s, o));
    if (lane == 0) out[warp] = __dsqrt_rn(s);
}
"""


@cache
def _module(qtype: str, epilogue: int, sliced: bool, blocks: int):
    source = f"#define SLICED {int(sliced)}\n#define THREADS {THREADS}\n" + prelude(qtype, epilogue, 1, 1, blocks) + _SOURCE
    return cupy.RawModule(code=source, options=OPTIONS + ("-std=c++17",))


def unsupported(qtype: str, cols: int, sliced: bool = False) -> str | None:
    """Why `gemm` / `sliced_gemm` cannot take a product over K = cols of weights stored as qtype (None
    where they can); the caller has checked the scheme exact_dispatch gives K. Any number of rows of x."""
    if not available():
        return "the device has no float64 tensor cores (DMMA: compute capability 8.0 and up)"
    if sliced and cols > MAX_K:
        return f"products over K = {cols} sum chunks of {MAX_K} (no tile kernel)"
    return quant_exact.unsupported(qtype, 1, cols)


@cache
def available() -> bool:
    major = int(cupy.cuda.Device().compute_capability[:-1])
    return major >= 8


def row_norms(data: Array, qtype: str, rows: int, cols: int) -> Array:
    """float64 [rows]: ||W[r, :]||_2 of each stored row decoded (not finite where a row holds inf or NaN)."""
    out = cupy.empty(rows, dtype=np.float64)
    if rows:
        kernel = _module(qtype, 0, False, cols // 32).get_function("loom_row_norms")
        kernel(((rows * 32 + 255) // 256,), (256,), (data, out, np.int32(rows)))
    return out


def gemm(data: Array, qtype: str, x: Array, wnorm: Array, out: Array, factor: float, bias: Array | None = None,
         residual: Array | None = None, swiglu: bool = False, overlap: bool = False) -> None:
    """out [M, rows] = (residual +) x @ W^T (+ bias), or SwiGLU of the two halves, with the rounded
    scheme's bits (quant_exact.gemv's), for x [M, K] float32 C-contiguous and 16-byte aligned, wnorm =
    row_norms(W), factor = exact_rounded.error_factor(K)."""
    rows = data.shape[0] // 2 if swiglu else data.shape[0]
    m, cols = x.shape
    if rows and m:
        _launch(data, qtype, False, swiglu, m, rows, cols,
                (x, x, None, wnorm, None, out, np.int32(m), np.int32(rows), pointer(bias), pointer(residual),
                 np.float64(factor), np.int32(0), np.int32(0)), overlap)


def sliced_gemm(data: Array, qtype: str, slices: Array, xmax: Array, xf: Array, wmax: Array, out: Array, bits: tuple,
                bias: Array | None = None, residual: Array | None = None, swiglu: bool = False,
                overlap: bool = False) -> None:
    """quant_slices.gemv's product and epilogues (the slice scheme's bits) for any number of rows, from
    quant_slices.slice_rows' slices and xmax of xf [M, K] and W's quant_slices.row_maxima `wmax`."""
    rows = data.shape[0] // 2 if swiglu else data.shape[0]
    m, cols = xf.shape
    if rows and m:
        _launch(data, qtype, True, swiglu, m, rows, cols,
                (slices, xf, xmax, None, wmax, out, np.int32(m), np.int32(rows), pointer(bias), pointer(residual),
                 np.float64(0.0), np.int32(bits[0]), np.int32(bits[1])), overlap)


def _launch(data, qtype, sliced, swiglu, m, rows, cols, args, overlap) -> None:
    x_rows, out_cols = (32 if sliced else 64), (32 if swiglu else 64)
    grid = -(-m // x_rows) * -(-rows // out_cols)
    kernel = _module(qtype, int(swiglu), sliced, cols // 32).get_function("loom_exact_tiles")
    args = (data,) + tuple(pointer(a) if a is None else a for a in args)
    launch(kernel, grid, THREADS, args, overlap)
