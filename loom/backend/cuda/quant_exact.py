"""Deterministic products with stored (block-quantized or 16/32-bit) weights for a few rows of x: the
decode step's products in deterministic mode, with the bits of the exact GEMM.

The dispatch table (loom/kernels/exact/dispatch.py) gives a float32 product with K <= ROUNDED_MAX_K
the rounded scheme: each entry is the exact dot product of its row of x and its row of the decoded W,
rounded once. That value is unique, so a kernel may find it in any order. `gemv` finds it as quant
does in fast mode, one warp per row of W reading the stored bytes once (quant.BLOCK_DECODE decodes
each value exactly as loom.kernels.quant.gguf does), with float64 sums instead of float32:

- each product of two float32 numbers is exact in float64; every lane adds its products (s) and their
  magnitudes (t), the warp combines them in any order;
- |s - exact| <= gamma_K sum |products| <= exact_rounded.error_factor(K) t (the factor's 2^-20 covers
  t's own rounding), so where float32(s - e) and float32(s + e) agree, e that bound plus 2^-52 |s|,
  the exact value rounds to them (exact's loom_certified): nearly every entry;
- the rest (about 0.1% on random data) are settled by the same warp at once: a compensated sum
  certified the same way, then an exact sum in integer limbs (exact's later stages); a row of
  x or W holding inf or NaN gives IEEE's special value, as exact.matmul's patch does.

Around the product, the operations of loom/llm/decoder.py's array code, each with its bits: epilogues
+ bias, a residual (h + (x W^T + b)), or SwiGLU (silu(g) * u with mathlib's sigmoid, as
fused.activation in deterministic mode); and `rms_norm`, fused.rms_norm's output (the exact sum of
squares, exact.sum's scheme), either in the prologue of the product that reads it (`gemv`'s `norm`:
every block computes it while staging x; the layer's products, one wave of blocks) or as a kernel of
its own (`rms_norm`: before the lm_head, whose 6,144 blocks would repeat it). In a recorded step the
prologue is cheaper than the extra kernel, and the last block of the product before computing it for
all (a ticket counted with atomics) was dearer than either.
`CUDABackend.decode.products_exact` is this module; loom/llm/paged_graph.py records it in deterministic
mode. Capturable: sizes as arguments, no sync, no host read.
"""
from __future__ import annotations

from functools import cache

import cupy
import numpy as np

from .. import Array
from .compile import OPTIONS
from .exact_reduce import EXACT_ROW_SUM
from .exact_rounded import ROUNDED_DEVICE
from .fused import ROW_HELPERS
from .fused_exact import helpers
from .launch import OVERLAP_PROLOGUE, launch
from .launch import multiprocessors as _multiprocessors
from .quant import BLOCK_DECODE, MAX_ROWS, TYPES, embed, pointer, type_defines  # noqa: F401 - embed: exact

STAGE_FLOATS = 9216     # x staged in shared memory up to this many floats (36 KiB)
# Blocks of 256 resident per multiprocessor the products' registers must allow: unbounded, the float64
# sums and the settling paths took 106-128 registers, two blocks, and the layer's products two waves.
MIN_BLOCKS = 4

# Settling an entry the certification left open, by a warp (`walk(f)` calls f(x_k, w_k) for this lane's
# share of the k products) or by one thread (`pair(q, &x, &w)` gives product q): a compensated sum,
# certified with n + 64 error terms (k products' and at most 31 combinations'), then the exact sum.
SETTLE = r"""
__device__ __forceinline__ bool loom_finish_certified(double s, double t, double factor, float* v) {
    return loom_certified(s, __dadd_rn(__dmul_rn(t, factor), __dmul_rn(fabs(s), 0x1p-52)), v);
}

// A warp's walk for loom_settle_walk / loom_special_walk: f(a_j, b_j) for this lane's keys j = begin + lane,
// + 32, ... below end, in that order, with pair(j, &a_j, &b_j) loading FLIGHT of them before the first of their
// calls (a loop that loaded as it went waited a memory latency a key: tens of microseconds for one entry of a
// long row, which the whole launch then waited for). The order of f's calls is the loop's: the same sums.
template <int FLIGHT, class Pair, class F>
__device__ __forceinline__ void loom_lanes_walk(long long begin, long long end, Pair pair, F f) {
    long long j = begin + (threadIdx.x & 31);
    for (; j + 32 * (FLIGHT - 1) < end; j += 32 * FLIGHT) {
        float a[FLIGHT], b[FLIGHT];
        #pragma unroll
        for (int u = 0; u < FLIGHT; ++u) pair(j + 32 * u, &a[u], &b[u]);
        #pragma unroll
        for (int u = 0; u < FLIGHT; ++u) f(a[u], b[u]);
    }
    for (; j < end; j += 32) {
        float a, b;
        pair(j, &a, &b);
        f(a, b);
    }
}

template <class Walk> __device__ __noinline__ float loom_settle_walk(Walk walk, long long k) {
    double s = 0.0, c = 0.0, t = 0.0;
    walk([&](float a, float b) { if (a != 0.0f) loom_dot2_add(a, b, &s, &c, &t); });
    loom_dot2_warp(&s, &c, &t);
    float v;
    if (loom_dot2_certified(s, c, t, (double)k + 64.0, &v)) return v;
    long long limb[LOOM_LIMBS];
    for (int i = 0; i < LOOM_LIMBS; ++i) limb[i] = 0;
    walk([&](float a, float b) {
        const double p = __dmul_rn((double)a, (double)b);
        if (p != 0.0) loom_limbs_add(p, limb);
    });
    for (int i = 0; i < LOOM_LIMBS; ++i)    // each below 2^32 k: the lanes' sums stay exact
        for (int o = 16; o; o >>= 1) limb[i] += __shfl_xor_sync(LOOM_FULL, limb[i], o);
    return loom_round_limbs(limb);
}

// IEEE's value of a sum of products some of which are inf or NaN (only a non-finite outcome is used:
// it does not depend on the order), by a warp.
template <class Walk> __device__ __noinline__ float loom_special_walk(Walk walk) {
    float s = 0.0f;
    walk([&](float a, float b) { s = __fadd_rn(s, __fmul_rn(loom_mark(a), loom_mark(b))); });
    for (int o = 16; o; o >>= 1) s = __fadd_rn(s, __shfl_xor_sync(LOOM_FULL, s, o));
    return s;
}

template <class Pair> __device__ __noinline__ float loom_settle_pairs(Pair pair, long long k) {
    double s = 0.0, c = 0.0, t = 0.0;
    for (long long q = 0; q < k; ++q) {
        float a, b;
        pair(q, &a, &b);
        if (a != 0.0f) loom_dot2_add(a, b, &s, &c, &t);
    }
    float v;
    if (loom_dot2_certified(s, c, t, (double)k + 64.0, &v)) return v;
    long long limb[LOOM_LIMBS];
    for (int i = 0; i < LOOM_LIMBS; ++i) limb[i] = 0;
    for (long long q = 0; q < k; ++q) {
        float a, b;
        pair(q, &a, &b);
        const double p = __dmul_rn((double)a, (double)b);
        if (p != 0.0) loom_limbs_add(p, limb);
    }
    return loom_round_limbs(limb);
}

template <class Pair> __device__ __noinline__ float loom_special_pairs(Pair pair, long long k) {
    float s = 0.0f;
    for (long long q = 0; q < k; ++q) {
        float a, b;
        pair(q, &a, &b);
        s = __fadd_rn(s, __fmul_rn(loom_mark(a), loom_mark(b)));
    }
    return s;
}
"""

# loom_mark (exact's guard) without the rest of the guard kernels
_MARK = r"""
__device__ __forceinline__ float loom_mark(float x) { return isfinite(x) ? (x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : 0.0f)) : x; }
"""

# fused.rms_norm of one row by a whole block (also the prologue of quant_slices' slicing kernel).
NORM_ROW = r"""
// fused.rms_norm's y = (x * rstd) * w, rstd = 1 / sqrt(exact sum(x^2) / cols + eps), for one row xr of
// x, by a whole block. `at(k)` reads xr[k]; a row of at most LOOM_HELD entries per thread is read once.
template <class At> __device__ void loom_rms_norm_row(At at, const float* w, float* out, int cols, float eps,
                                                      int bits, Scratch& scratch) {
    if (cols <= LOOM_HELD * (int)blockDim.x) {
        float x[LOOM_HELD], sq[LOOM_HELD];
        #pragma unroll
        for (int i = 0; i < LOOM_HELD; ++i) {
            const int k = threadIdx.x + i * blockDim.x;
            x[i] = k < cols ? at(k) : 0.0f;
            sq[i] = x[i] * x[i];
        }
        const float inv = 1.0f / loom_sqrt(exact_sum_held(sq, bits, scratch) / (float)cols + eps);
        #pragma unroll
        for (int i = 0; i < LOOM_HELD; ++i) {
            const int k = threadIdx.x + i * blockDim.x;
            if (k < cols) out[k] = (x[i] * inv) * w[k];
        }
        return;
    }
    const float ms = exact_row_sum([&](long long k) { const float v = at(k); return v * v; }, cols, bits, scratch)
                     / (float)cols;
    const float inv = 1.0f / loom_sqrt(ms + eps);
    for (int k = threadIdx.x; k < cols; k += blockDim.x) out[k] = (at(k) * inv) * w[k];
}
"""

_SOURCE = r"""
// EPI 0: out[m, r] = (res[m, r] +) (x W[r]^T (+ bias[r])); EPI 1 (SwiGLU): out[m, r] = silu(g) * u, g and u
// the products with rows r and r + rows (+ bias). One warp (WPR warps, their sums met in shared memory)
// per row of W; lanes as quant's kernel; x staged in shared memory when it fits.
#define ITERS ((NB + 4 * WPR - 1) / (4 * WPR))
#define STAGE (MR * NB * 32 <= STAGE_FLOATS)
#define COLS (NB * 32)
#define ROW_BYTES ((long long)(NB / SUBS) * BLOCK)
extern "C" __global__ void __launch_bounds__(256, MIN_BLOCKS) loom_exact_gemv(
        const unsigned char* w, const float* x, float* out, int rows, const float* bias, const float* res, double factor,
        const float* norm_w, float eps, int bits) {
    __shared__ double partial[8][2][EPI + 1][MR];
    __shared__ Scratch scratch;
    __shared__ __align__(16) float x_s[STAGE ? MR * COLS : 4];
    const int global_warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    const int warp = global_warp / WPR, slice = global_warp % WPR, local = threadIdx.x >> 5;
    const bool valid = warp < rows;
    const int part = lane >> 3, i = lane & 7;
    const unsigned char* row = w + warp * ROW_BYTES;
    const long long second = rows * ROW_BYTES;
    if (valid) {
        #pragma unroll
        for (int e = 0; e <= EPI; ++e) prefetch_row(row + e * second, ROW_BYTES, slice + WPR * lane, 32 * WPR);
    }
    wait_for_previous_kernel();
    if (STAGE) {
        if (norm_w != 0) {          // x_s = rms_norm(x, norm_w), each block on its own
            for (int m = 0; m < MR; ++m)
                loom_rms_norm_row([&](long long k) { return x[m * COLS + k]; }, norm_w, x_s + m * COLS, COLS, eps, bits,
                                  scratch);
        } else {
            for (int k = threadIdx.x; k < MR * COLS / 4; k += blockDim.x) ((float4*)x_s)[k] = ((const float4*)x)[k];
        }
        __syncthreads();
    }
    const float* xv = STAGE ? x_s : x;
    // this lane's share of row r's products (r = warp, or warp + rows for SwiGLU's up half), fed to
    // f(x_k, w_k) for row m of x
    auto walk = [&](int e, int m) {
        return [=](auto f) {
            for (int b = part; b < NB; b += 4) {
                float v[4]; int at[4];
                block_values(row + e * second, b, i, v, at);
                #pragma unroll
                for (int j = 0; j < 4; ++j) f(xv[m * COLS + b * 32 + at[j]], v[j]);
            }
        };
    };
    double s[EPI + 1][MR], t[EPI + 1][MR];
    #pragma unroll
    for (int e = 0; e <= EPI; ++e)
        #pragma unroll
        for (int m = 0; m < MR; ++m) { s[e][m] = 0.0; t[e][m] = 0.0; }
    #pragma unroll 8
    for (int it = 0; it < ITERS; ++it) {
        const int b = part + 4 * slice + it * 4 * WPR;
        if (!valid || b >= NB) continue;
        float v[EPI + 1][4]; int at[4];
        #pragma unroll
        for (int e = 0; e <= EPI; ++e) block_values(row + e * second, b, i, v[e], at);
        #pragma unroll
        for (int m = 0; m < MR; ++m)
            #pragma unroll
            for (int j = 0; j < 4; ++j) {
                const double xk = (double)xv[m * COLS + b * 32 + at[j]];
                #pragma unroll
                for (int e = 0; e <= EPI; ++e) {
                    const double p = __dmul_rn(xk, (double)v[e][j]);      // exact
                    s[e][m] = __dadd_rn(s[e][m], p);
                    t[e][m] = __dadd_rn(t[e][m], fabs(p));
                }
            }
    }
    #pragma unroll
    for (int e = 0; e <= EPI; ++e)
        #pragma unroll
        for (int m = 0; m < MR; ++m) {
            for (int o = 16; o; o >>= 1) {
                s[e][m] = __dadd_rn(s[e][m], __shfl_xor_sync(LOOM_FULL, s[e][m], o));
                t[e][m] = __dadd_rn(t[e][m], __shfl_xor_sync(LOOM_FULL, t[e][m], o));
            }
            if (WPR > 1 && lane == 0) { partial[local][0][e][m] = s[e][m]; partial[local][1][e][m] = t[e][m]; }
        }
    if (WPR > 1) {
        __syncthreads();
        if (slice != 0) return;
        #pragma unroll
        for (int e = 0; e <= EPI; ++e)
            #pragma unroll
            for (int m = 0; m < MR; ++m) {
                double a = partial[local][0][e][m], c = partial[local][1][e][m];
                for (int j = 1; j < WPR; ++j) {
                    a = __dadd_rn(a, partial[local + j][0][e][m]); c = __dadd_rn(c, partial[local + j][1][e][m]);
                }
                s[e][m] = a; t[e][m] = c;
            }
    }
    if (!valid) return;
    #pragma unroll
    for (int m = 0; m < MR; ++m) {
        float y[EPI + 1];
        #pragma unroll
        for (int e = 0; e <= EPI; ++e) {
            float v;
            if (!isfinite(t[e][m])) v = loom_special_walk(walk(e, m));              // warp-uniform
            else if (!loom_finish_certified(s[e][m], t[e][m], factor, &v)) v = loom_settle_walk(walk(e, m), COLS);
            y[e] = bias != 0 ? v + bias[warp + e * rows] : v;
        }
        if (lane == 0) {
            const float r = EPI == 1 ? (y[0] * loom_sigmoid(y[0])) * y[EPI] : y[0];
            out[(long long)m * rows + warp] = res != 0 ? res[(long long)m * rows + warp] + r : r;
        }
    }
}

// The same norm for each row of x [rows, cols], a block per row (the norm after the embedding).
extern "C" __global__ void loom_exact_rms_norm(const float* x, const float* w, float* out, int cols, float eps,
                                               int bits) {
    __shared__ Scratch scratch;
    wait_for_previous_kernel();
    const float* xr = x + (long long)blockIdx.x * cols;
    loom_rms_norm_row([&](long long k) { return xr[k]; }, w, out + (long long)blockIdx.x * cols, cols, eps, bits,
                      scratch);
}
"""


def prelude(qtype: str, epilogue: int, x_rows: int, warps_per_row: int, blocks: int) -> str:
    """The defines and device functions a deterministic product kernel for stored type `qtype` builds
    on (this module's, and quant_slices'): block decoding, the settling stages, the row norm."""
    head = (f"typedef float T;\n{type_defines(qtype)}#define EPI {epilogue}\n"
            f"#define MR {x_rows}\n#define WPR {warps_per_row}\n#define NB {blocks}\n#define STAGE_FLOATS {STAGE_FLOATS}\n"
            f"#define MIN_BLOCKS {MIN_BLOCKS}\n")
    return (head + helpers() + ROW_HELPERS + EXACT_ROW_SUM + ROUNDED_DEVICE + _MARK + SETTLE + OVERLAP_PROLOGUE
            + BLOCK_DECODE + NORM_ROW)


@cache
def _module(qtype: str, epilogue: int, x_rows: int, warps_per_row: int, blocks: int):
    source = prelude(qtype, epilogue, x_rows, warps_per_row, blocks) + _SOURCE
    return cupy.RawModule(code=source, options=OPTIONS + ("-std=c++17",))


def unsupported(qtype: str, rows_of_x: int, cols: int) -> str | None:
    """Why `gemv` cannot take a product, or None where it can. (The kernels compute the rounded
    scheme: the caller checks that exact_dispatch gives it to products over K = cols.)"""
    if qtype not in TYPES:
        return f"no deterministic block kernel for weights stored as {qtype} (it takes {', '.join(TYPES)})"
    if rows_of_x > MAX_ROWS:
        return f"{rows_of_x} rows of x are more than the kernel's {MAX_ROWS}"
    if cols % 32:
        return f"a width of {cols} is not a multiple of 32"
    return None


def gemv(data: Array, qtype: str, x: Array, out: Array, factor: float, bias: Array | None = None,
         residual: Array | None = None, swiglu: bool = False, overlap: bool = False, norm: Array | None = None,
         eps: float = 0.0) -> None:
    """quant.gemv's product and epilogues with deterministic mode's bits; x C-contiguous and 16-byte
    aligned; the caller has checked `unsupported`; `factor` is exact_rounded.error_factor(K). With
    `norm` (a weight [K]), the product is that of rms_norm(x, norm, eps) (`rms_norm`'s bits), each
    block computing it as it stages x, which needs x to fit in shared memory (`stages`)."""
    rows = data.shape[0] // 2 if swiglu else data.shape[0]
    cols = x.shape[1]
    if norm is not None and not stages(x.shape[0], cols):
        raise ValueError(f"x [{x.shape[0]}, {cols}] is too large for the norm in the product's prologue")
    if rows and x.shape[0]:
        wpr = warps_per_row(rows, cols)
        threads = 256
        blocks = (rows * wpr * 32 + threads - 1) // threads
        kernel = _module(qtype, int(swiglu), x.shape[0], wpr, cols // 32).get_function("loom_exact_gemv")
        launch(kernel, blocks, threads, (data, x, out, np.int32(rows), pointer(bias), pointer(residual),
                                         np.float64(factor), pointer(norm), np.float32(eps),
                                         sum_bits(cols)), overlap)


def warps_per_row(rows: int, cols: int) -> int:
    """Warps sharing a row of W (1, 2, 4 or 8) in this module's and quant_slices' products: the most that
    keep the grid within one wave of MIN_BLOCKS blocks a multiprocessor, while each warp keeps at least
    four blocks of the row a step. The products are latency-bound: with one warp a row, Llama-3.2-1B's
    2,048-row products left half the device idle (ncu: DRAM 15-23% busy)."""
    slots = _multiprocessors() * MIN_BLOCKS * 8
    wpr = 1
    while wpr < 8 and 2 * wpr * rows <= slots and cols // 32 >= 8 * wpr:
        wpr *= 2
    return wpr


def stages(x_rows: int, cols: int) -> bool:
    """Whether `gemv` stages x [x_rows, cols] in shared memory (and can take a norm)."""
    return x_rows * cols <= STAGE_FLOATS


def sum_bits(n: int) -> np.int32:
    return np.int32(53 - max(0, (n - 1).bit_length()))      # exact.sum's bits for rows of n


def rms_norm(x: Array, weight: Array, out: Array, eps: float, overlap: bool = False) -> None:
    """out [M, cols] = fused.rms_norm(x, weight, eps)[0] (its bits) for x [M, cols] C-contiguous."""
    rows, cols = x.shape
    if rows:
        kernel = _module("F32", 0, 1, 1, 1).get_function("loom_exact_rms_norm")
        launch(kernel, rows, 256, (x, weight, out, np.int32(cols), np.float32(eps), sum_bits(cols)), overlap)
