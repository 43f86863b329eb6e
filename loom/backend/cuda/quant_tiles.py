"""Deterministic products with stored (block-quantized or 16/32-bit) weights for many rows of x at once, on
the float64 tensor cores: batched decode steps and prompt chunks in deterministic mode (`product` for
BlockQuantized.matmul_t), with the bits of the exact GEMM. quant_exact and quant_slices take a warp per
row of W and hold every row of x's sums in registers, so past a few rows they spill and read W once per
group of 16 rows (a 64-row step of SmolLM2's shapes took 36 ms); here a block of 128 threads takes a
tile of 64 x 64 (rows of x by rows of W), decodes each 32-value unit of its W rows once into shared
memory as float64 (quant.BLOCK_DECODE's exact values), stages x beside it, and accumulates with the DMMA
instruction (mma m16n8k4 on Hopper, m8n8k4 before it; float64).

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
from . import quant_exact, quant_rows, quant_slices
from .compile import OPTIONS
from .cublas import CuBLAS
from .launch import launch
from .quant import pointer
from .quant_exact import prelude
from .quant_finish import DMMA2, FINISH

THREADS = 128
MAX_K = 1 << 14         # the slice scheme's products over one chunk (exact_dispatch.CHUNK_BITS)
# Split K only into parts of at least this many 32-value units: each part's sums cost the finishing
# kernel a float64 read per entry
MIN_UNITS = 2
# Split K, where the tiles alone leave multiprocessors idle, into as many parts as fill this many blocks a
# multiprocessor: two against one, on an H100, 1.2-1.45x on Llama-3.2-1B's qkv and down products of 16 and 64
# rows, SmolLM2's within 10% either way, its 16-stream decode steps 5% faster (benchmarks/exact_tiles.py
# --split-waves, benchmarks/serve.py)
SPLIT_WAVES = 2
# Products of up to this many rows of x outside a decode graph take the one-row kernels (quant_exact,
# quant_slices: W read once per row group; the rounded scheme's need no row norms); more take the tiles
ONE_ROW_KERNELS = 4
# Products of at least DGEMM_ROWS rows of x (prompt chunks) with a weight of DGEMM_VALUES to
# DGEMM_MAX_VALUES values take cuBLAS's float64 GEMM of the decoded weight (decoded for each product: its
# float64 copy is 4x a bf16 weight, about 14x a 4-bit one, and at most 1 GiB) and the tiles' finishing
# kernel: the rounded scheme's bound holds for the sum in any order and the slices' integer sums are exact
# in any order, so the bits are the tiles'. On an H200 (benchmarks/exact_tiles.py --dgemm) Llama-3.2-1B's
# qkv and down products take 0.55-0.9x the tiles' time from 256 rows; SmolLM2-135M's layer products (at
# most 1.8M values) 0.8-1.3x: the decoding, the float64 copy of x and the finishing kernel cost about what
# the GEMM saves. (A tied output layer of 2^22 values or more, where a prompt's every logit is wanted,
# takes the path too; it was not timed.)
DGEMM_ROWS = 256
DGEMM_VALUES = 1 << 22
DGEMM_MAX_VALUES = 1 << 27

_SOURCE = r"""
#define XR (SLICED ? 32 : 64)          // rows of x a block takes
#define NR (EPI ? 32 : 64)             // output columns a block takes
#define KP 36                          // doubles a staged row takes: 32 and 4 of padding (the fragments'
                                       // loads then hit each bank once a half-warp)
#define COMP (SLICED ? 2 : 1)          // sums an entry has (the slices: hi and lo)

// Tile column cb (0..63: warp column cb / 32, fragment (cb / 8) % 4, column cb % 8): its output column,
// counted from the block's first, and its half (1: SwiGLU's up rows, fragments 2-3).
__device__ __forceinline__ int loom_tile_out(int cb) { return EPI ? 16 * (cb >> 5) + 8 * ((cb >> 3) & 1) + (cb & 7) : cb; }
__device__ __forceinline__ int loom_tile_half(int cb) { return EPI ? (cb >> 4) & 1 : 0; }

// The block's tile of XR rows of x by NR output columns over units [split per, split per + per) of K.
// splits 1: out (+)= x W^T ... finished here; else the tile's sums go to part (float64 [splits, COMP,
// m_rows, stored rows]; the rounded scheme's row sums of squares of x after them, [splits, m_rows], from
// the blocks of the first output columns) for loom_exact_tiles_finish.
extern "C" __global__ void __launch_bounds__(128) loom_exact_tiles(LOOM_TILES_ARGS, double* part, int splits,
                                                                  int per) {
    const LoomTiles p = LOOM_TILES;
    __shared__ __align__(16) double a_s[64 * KP];
    __shared__ __align__(16) double b_s[64 * KP];
    __shared__ double xnorm_s[64];
    __shared__ int shift_s[64];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wm = warp >> 1, wn = warp & 1;
    const int g = lane >> 2, c = lane & 3;
    const int tiles_m = (m_rows + XR - 1) / XR, rest = blockIdx.x / tiles_m;
    const int m0 = (blockIdx.x % tiles_m) * XR, split = rest % splits, n0 = (rest / splits) * NR;
    const int first = split * per, last = min(NB, first + per);
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
    for (int b = first; b < last; ++b) {
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
            const int r = tid >> 2, part4 = tid & 3;
            const bool ok = m0 + r < m_rows;
            const float4* src = (const float4*)(x + 2 * ((long long)(m0 + r) * COLS + b * 32 + 8 * part4));
            const int hi = 32 * (r >> 4) + 8 * ((r >> 3) & 1) + (r & 7), lo = hi + 16;
            #pragma unroll
            for (int q = 0; q < 4; ++q) {
                const float4 v = ok ? src[q] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
                const int k = 8 * part4 + 2 * q;
                a_s[hi * KP + k] = v.x; a_s[lo * KP + k] = v.y;
                a_s[hi * KP + k + 1] = v.z; a_s[lo * KP + k + 1] = v.w;
            }
        } else {                // row r of the block's x, values 16 half .. 16 half + 15
            const int r = tid >> 1, half = tid & 1;
            const bool ok = m0 + r < m_rows;
            const float4* src = (const float4*)(x + (long long)(m0 + r) * COLS + b * 32 + 16 * half);
            #pragma unroll
            for (int q = 0; q < 4; ++q) {
                const float4 v = ok ? src[q] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
                const double e[4] = {v.x, v.y, v.z, v.w};
                #pragma unroll
                for (int j = 0; j < 4; ++j) {
                    a_s[r * KP + 16 * half + 4 * q + j] = e[j];
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
            for (int i = 0; i < 4; i += 2)
                #pragma unroll
                for (int j = 0; j < 4; ++j) loom_dmma2(acc[i][j], acc[i + 1][j], af[i], af[i + 1], bf[j]);
        }
        __syncthreads();
    }
    if (!SLICED) sq = __dadd_rn(sq, __shfl_xor_sync(LOOM_FULL, sq, 1));
    // Each lane's entries: rows g (+ 8 a fragment) of the warp's, columns 2c, 2c + 1 (+ 8 a fragment).
    #define MT (SLICED ? 2 : 4)
    #define NT (EPI ? 2 : 4)
    if (splits > 1) {
        const long long stored = (long long)(EPI + 1) * rows;
        #pragma unroll
        for (int mt = 0; mt < MT; ++mt)
            #pragma unroll
            for (int nt = 0; nt < NT; ++nt)
                #pragma unroll
                for (int h = 0; h < 2; ++h) {
                    const int m = m0 + (SLICED ? 16 * wm : 32 * wm) + 8 * mt + g;
                    const int n = n0 + (EPI ? 16 * wn : 32 * wn) + 8 * nt + 2 * c + h;
                    if (m >= m_rows || n >= rows) continue;
                    #pragma unroll
                    for (int e = 0; e <= EPI; ++e)
                        #pragma unroll
                        for (int k = 0; k < COMP; ++k)
                            part[((long long)(split * COMP + k) * m_rows + m) * stored + n + e * rows] =
                                acc[mt + 2 * k][nt + 2 * e][h];
                }
        if (!SLICED && n0 == 0 && (tid & 1) == 0 && m0 + (tid >> 1) < m_rows)
            part[(long long)splits * m_rows * stored + (long long)split * m_rows + m0 + (tid >> 1)] = sq;
        return;
    }
    if (!SLICED) {
        if ((tid & 1) == 0) xnorm_s[tid >> 1] = __dsqrt_rn(sq);
        __syncthreads();
    }
    #pragma unroll
    for (int mt = 0; mt < MT; ++mt)
        #pragma unroll
        for (int nt = 0; nt < NT; ++nt)
            #pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int lm = (SLICED ? 16 * wm : 32 * wm) + 8 * mt + g, m = m0 + lm;
                const int n = n0 + (EPI ? 16 * wn : 32 * wn) + 8 * nt + 2 * c + h;
                double hi[EPI + 1], lo[EPI + 1];
                #pragma unroll
                for (int e = 0; e <= EPI; ++e) {
                    hi[e] = acc[mt][nt + 2 * e][h];
                    lo[e] = SLICED ? acc[mt + 2][nt + 2 * e][h] : 0.0;
                }
                loom_tile_finish(p, m < m_rows && n < rows, m, n, hi, lo, SLICED ? 0.0 : xnorm_s[lm], lane);
            }
}

// The split tiles' entries finished, a thread each: each sum's parts added in split order (exact for
// the slices; for the rounded scheme the bound holds for any order).
extern "C" __global__ void loom_exact_tiles_finish(LOOM_TILES_ARGS, const double* part, int splits) {
    const LoomTiles p = LOOM_TILES;
    const int lane = threadIdx.x & 31;
    const long long total = (long long)m_rows * rows, stride = (long long)gridDim.x * blockDim.x;
    const long long stored = (long long)(EPI + 1) * rows;
    const double* squares = part + (long long)splits * COMP * m_rows * stored;
    wait_for_previous_kernel();
    for (long long base = (long long)blockIdx.x * blockDim.x + threadIdx.x - lane; base < total; base += stride) {
        const long long idx = base + lane;
        const bool valid = idx < total;
        const int m = valid ? (int)(idx / rows) : 0, n = valid ? (int)(idx - (long long)m * rows) : 0;
        double hi[EPI + 1], lo[EPI + 1], sq = 0.0;
        #pragma unroll
        for (int e = 0; e <= EPI; ++e) { hi[e] = 0.0; lo[e] = 0.0; }
        if (valid) {
            for (int s = 0; s < splits; ++s) {
                #pragma unroll
                for (int e = 0; e <= EPI; ++e) {
                    hi[e] = __dadd_rn(hi[e], part[((long long)(s * COMP) * m_rows + m) * stored + n + e * rows]);
                    if (SLICED) lo[e] = __dadd_rn(lo[e], part[((long long)(s * COMP + 1) * m_rows + m) * stored + n + e * rows]);
                }
                if (!SLICED) sq = __dadd_rn(sq, squares[(long long)s * m_rows + m]);
            }
        }
        loom_tile_finish(p, valid, m, n, hi, lo, __dsqrt_rn(sq), lane);
    }
}

// W's stored rows decoded to float64 for cuBLAS's float64 GEMM (product's DGEMM_ROWS path): out [rows, COLS]
// the values as the tiles stage them, block_values' (rounded), or each rounded to its row's integer
// (sliced: bbits below the top exponent of wmax[r], quant_slices.row_maxima's); a thread four values.
extern "C" __global__ void loom_decode_f64(const unsigned char* w, const float* wmax, double* out, int rows,
                                           int bbits) {
    const long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x, unit = t >> 3;
    if (unit >= (long long)rows * NB) return;
    const int r = (int)(unit / NB), b = (int)(unit % NB), i = (int)(t & 7);
    float v[4]; int at[4];
    block_values(w + (long long)r * ROW_BYTES, b, i, v, at);
    const int shift = SLICED ? bbits - loom_top_exponent(wmax[r]) : 0;
    #pragma unroll
    for (int j = 0; j < 4; ++j)
        out[(long long)r * COLS + b * 32 + at[j]] = SLICED ? (double)rintf(ldexpf(v[j], shift)) : (double)v[j];
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
    source = (f"#define SLICED {int(sliced)}\n#define THREADS {THREADS}\n" + prelude(qtype, epilogue, 1, 1, blocks)
              + DMMA2 + FINISH + _SOURCE)
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
         residual: Array | None = None, swiglu: bool = False, overlap: bool = False, splits: int | None = None) -> None:
    """out [M, rows] = (residual +) x @ W^T (+ bias), or SwiGLU of the two halves, with the rounded
    scheme's bits (quant_exact.gemv's), for x [M, K] float32 C-contiguous and 16-byte aligned, wnorm =
    row_norms(W), factor = exact_rounded.error_factor(K). splits: parts of K the tiles sum apart (None:
    quant_rows' kernel where quant_rows.takes the product, else tile_splits; the bits are the same for any)."""
    rows = data.shape[0] // 2 if swiglu else data.shape[0]
    m, cols = x.shape
    if rows and m:
        _launch(data, qtype, False, swiglu, m, rows, cols,
                (x, x, None, wnorm, None, out, np.int32(m), np.int32(rows), pointer(bias), pointer(residual),
                 np.float64(factor), np.int32(0), np.int32(0)), overlap, splits)


def sliced_gemm(data: Array, qtype: str, slices: Array, xmax: Array, xf: Array, wmax: Array, out: Array, bits: tuple,
                bias: Array | None = None, residual: Array | None = None, swiglu: bool = False,
                overlap: bool = False, splits: int | None = None) -> None:
    """quant_slices.gemv's product and epilogues (the slice scheme's bits) for any number of rows, from
    quant_slices.slice_rows' slices and xmax of xf [M, K] and W's quant_slices.row_maxima `wmax`; splits
    as gemm's."""
    rows = data.shape[0] // 2 if swiglu else data.shape[0]
    m, cols = xf.shape
    if rows and m:
        _launch(data, qtype, True, swiglu, m, rows, cols,
                (slices, xf, xmax, None, wmax, out, np.int32(m), np.int32(rows), pointer(bias), pointer(residual),
                 np.float64(0.0), np.int32(bits[0]), np.int32(bits[1])), overlap, splits)


def product(data: Array, qtype: str, x: Array, out: Array, tables: dict, factor: float | None = None,
            bits: tuple | None = None, blas: CuBLAS | None = None) -> bool:
    """out [M, rows] = x @ W^T for x float32 [M, K] with the rounded scheme's bits (factor =
    exact_rounded.error_factor(K)) or the slice scheme's (bits = exact.narrow_bits(K)), W read once for
    all M rows: the one-row kernels up to ONE_ROW_KERNELS rows, the tiles past, and from DGEMM_ROWS rows
    of x and DGEMM_VALUES to DGEMM_MAX_VALUES values of W cuBLAS's float64 GEMM where `blas` (the
    backend's CuBLAS handle) is given; `tables` is the
    weight's memo (BlockQuantized.tables), where its row norms or row maxima are made once. False
    where no kernel takes the product (the caller decodes W for the exact GEMM)."""
    m, cols = x.shape
    rows = data.shape[0]
    sliced = bits is not None
    tiles = m > ONE_ROW_KERNELS
    one_row = quant_slices if sliced else quant_exact
    if (unsupported(qtype, cols, sliced) if tiles else one_row.unsupported(qtype, m, cols)) is not None:
        return False
    if not x.flags.c_contiguous or x.data.ptr % 16:
        x = cupy.array(x, order="C")                # (a fresh allocation: aligned)
    dgemm = tiles and blas is not None and m >= DGEMM_ROWS and DGEMM_VALUES <= rows * cols <= DGEMM_MAX_VALUES
    if not sliced:
        wnorm = weight_table(tables, "row_norms", data, qtype, rows, cols) if tiles else None
        if dgemm:
            _dgemm(data, qtype, x, None, None, x, wnorm, None, out, (0, 0), factor, blas)
        elif tiles:
            gemm(data, qtype, x, wnorm, out, factor)
        else:
            quant_exact.gemv(data, qtype, x, out, factor)
        return True
    slices, xmax = cupy.empty((m, 2 * cols), dtype=np.float32), cupy.empty(m, dtype=np.float32)
    quant_slices.slice_rows(x, slices, xmax, bits)
    wmax = weight_table(tables, "row_maxima", data, qtype, rows, cols)
    if dgemm:
        _dgemm(data, qtype, None, slices, xmax, x, None, wmax, out, bits, 0.0, blas)
    else:
        (sliced_gemm if tiles else quant_slices.gemv)(data, qtype, slices, xmax, x, wmax, out, bits)
    return True


def _dgemm(data, qtype, x, slices, xmax, xf, wnorm, wmax, out, bits, factor, blas: CuBLAS) -> None:
    """product's path from DGEMM_ROWS rows: W decoded to float64 (loom_decode_f64), the A operand x in
    float64 (rounded) or its hi and lo slices as rows of their own (sliced), their product by cuBLAS's
    float64 GEMM written where the tiles' split parts go (one part), and the tiles' finishing kernel:
    certification and settling, or the slices' recombination, as the tiles do it."""
    sliced = slices is not None
    m, cols = xf.shape
    rows, units, comp = data.shape[0], cols // 32, 2 if sliced else 1
    module = _module(qtype, 0, sliced, units)
    w64 = cupy.empty((rows, cols), dtype=np.float64)
    launch(module.get_function("loom_decode_f64"), -(-rows * units * 8 // 256), 256,
           (data, pointer(wmax), w64, np.int32(rows), np.int32(bits[1])), False)
    part = cupy.empty(comp * m * rows + m, dtype=np.float64)
    if sliced:                  # slice_rows' (hi, lo) pairs -> the hi rows, then the lo rows
        a64 = slices.reshape(m, cols, 2).transpose(2, 0, 1).astype(np.float64, order="C")
    else:
        a64 = x.astype(np.float64)
        cupy.sum(a64 * a64, axis=1, out=part[m * rows:])     # ||x[m]||^2: the bound holds for any order
    blas.gemm(a64.reshape(comp * m, cols), w64.T, out=part[:comp * m * rows].reshape(comp * m, rows))
    args = (data, slices if sliced else x, xf, pointer(xmax), pointer(wnorm), pointer(wmax), out, np.int32(m),
            np.int32(rows), pointer(None), pointer(None), np.float64(factor), np.int32(bits[0]), np.int32(bits[1]))
    launch(module.get_function("loom_exact_tiles_finish"), min(-(-m * rows // 256), 8 * quant_exact._multiprocessors()),
           256, args + (part, np.int32(1)), False)


def weight_table(tables: dict, name: str, data: Array, qtype: str, rows: int, cols: int) -> Array:
    """tables[name] for the stored rows `data`: "row_norms" (row_norms, the rounded scheme's) or
    "row_maxima" (quant_slices.row_maxima, the slice scheme's), made the first time it is asked for and
    kept in `tables` (a weight's BlockQuantized.tables: the decode graphs and the prompt products share
    them), never inside a recording (its kernel would run only at the replays, and an eager product before them would read
    the table unmade): there it raises RuntimeError, which makes a GraphCache run that step eagerly."""
    if name not in tables:
        if cupy.cuda.get_current_stream().is_capturing():
            raise RuntimeError(f"a weight's {name.replace('_', ' ')} are made by its first product, not inside a "
                               "CUDA graph's recording")
        make = {"row_norms": row_norms, "row_maxima": quant_slices.row_maxima}[name]
        tables[name] = make(data, qtype, rows, cols)
    return tables[name]


def tile_splits(m: int, rows: int, cols: int, sliced: bool, swiglu: bool) -> int:
    """The parts of K the tiles split a product into by default: as many as fill SPLIT_WAVES blocks a
    multiprocessor where the tiles alone would leave multiprocessors idle, each of at least MIN_UNITS
    32-value units."""
    tiles = -(-m // (32 if sliced else 64)) * -(-rows // (32 if swiglu else 64))
    units = cols // 32
    sms = quant_exact._multiprocessors()
    if tiles >= sms:
        return 1
    return -(-units // max(MIN_UNITS, -(-units * tiles // (SPLIT_WAVES * sms))))


def _launch(data, qtype, sliced, swiglu, m, rows, cols, args, overlap, splits) -> None:
    """Products quant_rows.takes (splits None): quant_rows' kernel. Others (or splits given): the
    tiles over K in `splits` parts where the tiles alone would leave multiprocessors idle (their sums then
    finished by a second kernel), else finished in place."""
    args = (data,) + tuple(pointer(a) if a is None else a for a in args)
    if splits is None and quant_rows.takes(m, rows, qtype):
        quant_rows.launch(qtype, sliced, swiglu, m, rows, cols, args, overlap)
        return
    x_rows, out_cols = (32 if sliced else 64), (32 if swiglu else 64)
    tiles = -(-m // x_rows) * -(-rows // out_cols)
    units = cols // 32
    if splits is None:
        splits = tile_splits(m, rows, cols, sliced, swiglu)
    per = -(-units // min(max(1, splits), units))
    splits = -(-units // per)
    module = _module(qtype, int(swiglu), sliced, units)
    if splits == 1:
        launch(module.get_function("loom_exact_tiles"), tiles, THREADS, args + (pointer(None), np.int32(1),
                                                                                np.int32(per)), overlap)
        return
    stored = rows * (2 if swiglu else 1)
    part = cupy.empty(splits * (2 if sliced else 1) * m * stored + splits * m, dtype=np.float64)
    launch(module.get_function("loom_exact_tiles"), tiles * splits, THREADS,
           args + (part, np.int32(splits), np.int32(per)), overlap)
    finish_blocks = min(-(-m * rows // 256), 8 * quant_exact._multiprocessors())
    launch(module.get_function("loom_exact_tiles_finish"), finish_blocks, 256, args + (part, np.int32(splits)),
           overlap)
