"""Fused kernels for deterministic mode on the GPU: loom.kernels.fused's reference compositions (layer
and RMS norm, softmax, GELU, bias + activation, and their gradients) as one launch each, with the
reference's bits.

`CUDABackend.fused_exact` is this module; loom/kernels/fused.py calls it in deterministic mode as it
calls fused in fast mode, after the same checks (C-contiguous, non-empty, one dtype).
The reference composition is ten to twenty CuPy launches per call (each exact sum alone is five),
a large share of a deterministic transformer step before these kernels (docs/performance.md).

Same bits as the reference, by construction:
- the transcendentals are mathlib's (the kernel IR lowered to CUDA C, as ops.canonical runs them);
- every other operation is the reference's, in its order, correctly rounded (no contraction, no
  flush to zero: fused.OPTIONS);
- each row sum is exact.sum's: the row's finite maximum fixes a power-of-two scale, every value
  becomes the integer rint(v 2^(bits - e)), the integers are added in float64 (exact: every partial
  sum is an integer below 2^53, so the block's order cannot matter), infinities and NaNs are added
  apart and win, and the total is scaled back and rounded once to float32.
Row kernels take float32 (exact.sum's float64 scheme has two slices per element; float64 rows run the
reference); the element-wise kernels take float32 and float64.
"""
from __future__ import annotations

from functools import cache

import cupy
import numpy as np

from .. import Array, device_functions
from . import fused
from .compile import OPTIONS
from .exact_reduce import EXACT_ROW_SUM
from .fused import BASICS, ROW_HELPERS

ROW_DTYPES = (np.dtype(np.float32),)

# One block per row (grid-stride over rows), blockDim a multiple of 32; after fused' ROW_HELPERS
# and exact_reduce's EXACT_ROW_SUM.
_ROWS = r"""
// ops.softmax of s = x * scale (fused.scaled_masked_softmax): e = exp(s - max) / sum. Entries j >= kept
// (softmax_kept) are masked: e = 0, left out of the max; a row with nothing kept divides by 1 (all 0).
extern "C" __global__ void loom_exact_softmax_rows(const T* __restrict__ x, T* __restrict__ y, long long rows,
                                                   long long n, T scale, int causal, long long tq,
                                                   long long offset, int bits) {
    __shared__ Scratch s;
    __shared__ T red[32];
    for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
        const T* xr = x + r * n;
        T* yr = y + r * n;
        const long long kept = softmax_kept(r, n, causal, tq, offset);
        const T peak = softmax_peak(xr, kept, scale, red);
        for (long long j = threadIdx.x; j < n; j += blockDim.x) yr[j] = j < kept ? loom_exp(xr[j] * scale - peak) : (T)0;
        const T total = exact_row_sum([&](long long j) { return yr[j]; }, n, bits, s);   // this thread's own writes
        const T denom = kept > 0 ? total : (T)1;
        for (long long j = threadIdx.x; j < n; j += blockDim.x) yr[j] = yr[j] / denom;
    }
}

// loom_exact_softmax_rows for rows of n <= 32 SOFTMAX_HELD entries, a warp a row (eight rows a block of 256
// threads): the same operations on the same values, each lane holding its entries in registers, so the row is read
// once and written once, with no barrier (the block kernel writes the exponentials out and reads them back twice,
// behind four barriers)
#ifdef SOFTMAX_HELD
extern "C" __global__ void __launch_bounds__(256) loom_exact_softmax_rows_warp(
        const T* __restrict__ x, T* __restrict__ y, long long rows, long long n, T scale, int causal, long long tq,
        long long offset, int bits) {
    const int lane = threadIdx.x & 31;
    const long long warps = (long long)gridDim.x * (blockDim.x >> 5);
    for (long long r = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); r < rows; r += warps) {
        const T* xr = x + r * n;
        T* yr = y + r * n;
        const long long kept = softmax_kept(r, n, causal, tq, offset);
        T v[SOFTMAX_HELD];
        T peak = loom_neg_inf((T)0);
        #pragma unroll
        for (int i = 0; i < SOFTMAX_HELD; ++i) {
            const long long j = lane + 32 * i;
            v[i] = j < kept ? xr[j] * scale : (T)0;
            if (j < kept) peak = max_nan(peak, v[i]);
        }
        peak = warp_reduce(peak, MaxNanOp());
        #pragma unroll
        for (int i = 0; i < SOFTMAX_HELD; ++i) v[i] = lane + 32 * i < kept ? loom_exp(v[i] - peak) : (T)0;
        const T total = exact_sum_warp(v, bits);
        const T denom = kept > 0 ? total : (T)1;
        #pragma unroll
        for (int i = 0; i < SOFTMAX_HELD; ++i) {
            const long long j = lane + 32 * i;
            if (j < n) yr[j] = v[i] / denom;
        }
    }
}

// loom_exact_softmax_grad_rows for rows of n <= 32 SOFTMAX_HELD entries, a warp a row, y held in registers (dy
// read again for dx: holding it too took 128 registers at 32 entries a lane)
extern "C" __global__ void __launch_bounds__(256) loom_exact_softmax_grad_rows_warp(
        const T* __restrict__ y, const T* __restrict__ dy, T* __restrict__ dx, long long rows, long long n, int bits) {
    const int lane = threadIdx.x & 31;
    const long long warps = (long long)gridDim.x * (blockDim.x >> 5);
    for (long long r = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); r < rows; r += warps) {
        T yv[SOFTMAX_HELD], prod[SOFTMAX_HELD];
        #pragma unroll
        for (int i = 0; i < SOFTMAX_HELD; ++i) {
            const long long j = lane + 32 * i;
            yv[i] = j < n ? y[r * n + j] : (T)0;
            prod[i] = j < n ? dy[r * n + j] * yv[i] : (T)0;
        }
        const T dot = exact_sum_warp(prod, bits);
        #pragma unroll
        for (int i = 0; i < SOFTMAX_HELD; ++i) {
            const long long j = lane + 32 * i;
            if (j < n) dx[r * n + j] = yv[i] * (dy[r * n + j] - dot);
        }
    }
}
// loom_exact_softmax_rows for rows of n <= 256 SOFTMAX_HELD entries, a block of 256 threads a row, each thread
// holding its entries in registers: the row is read once and written once, behind three barriers (the block
// kernel reads it twice and writes the exponentials out, reads them back twice and writes them again). The warp
// kernel's body with a block's reductions; one template for both compiled to 8-16 more registers a thread
// (ptxas, nvcc 13), so they stay apart.
extern "C" __global__ void __launch_bounds__(256) loom_exact_softmax_rows_held(
        const T* __restrict__ x, T* __restrict__ y, long long rows, long long n, T scale, int causal, long long tq,
        long long offset, int bits) {
    __shared__ Scratch s;
    __shared__ T red[32];
    for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
        const T* xr = x + r * n;
        T* yr = y + r * n;
        const long long kept = softmax_kept(r, n, causal, tq, offset);
        T v[SOFTMAX_HELD];
        T peak = loom_neg_inf((T)0);
        #pragma unroll
        for (int i = 0; i < SOFTMAX_HELD; ++i) {
            const long long j = threadIdx.x + 256 * i;
            v[i] = j < kept ? xr[j] * scale : (T)0;
            if (j < kept) peak = max_nan(peak, v[i]);
        }
        peak = block_max(peak, red);
        #pragma unroll
        for (int i = 0; i < SOFTMAX_HELD; ++i) v[i] = threadIdx.x + 256 * i < kept ? loom_exp(v[i] - peak) : (T)0;
        const T total = exact_sum_held(v, bits, s);
        const T denom = kept > 0 ? total : (T)1;
        #pragma unroll
        for (int i = 0; i < SOFTMAX_HELD; ++i) {
            const long long j = threadIdx.x + 256 * i;
            if (j < n) yr[j] = v[i] / denom;
        }
    }
}

// loom_exact_softmax_grad_rows for rows of n <= 256 SOFTMAX_HELD entries, a block of 256 threads a row, y and
// dy read once and held in registers
extern "C" __global__ void __launch_bounds__(256) loom_exact_softmax_grad_rows_held(
        const T* __restrict__ y, const T* __restrict__ dy, T* __restrict__ dx, long long rows, long long n, int bits) {
    __shared__ Scratch s;
    for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
        T yv[SOFTMAX_HELD], dv[SOFTMAX_HELD], prod[SOFTMAX_HELD];
        #pragma unroll
        for (int i = 0; i < SOFTMAX_HELD; ++i) {
            const long long j = threadIdx.x + 256 * i;
            yv[i] = j < n ? y[r * n + j] : (T)0;
            dv[i] = j < n ? dy[r * n + j] : (T)0;
            prod[i] = dv[i] * yv[i];
        }
        const T dot = exact_sum_held(prod, bits, s);
        #pragma unroll
        for (int i = 0; i < SOFTMAX_HELD; ++i) {
            const long long j = threadIdx.x + 256 * i;
            if (j < n) dx[r * n + j] = yv[i] * (dv[i] - dot);
        }
    }
}
#endif

// fused.softmax_grad: dx = y * (dy - sum(dy * y)).
extern "C" __global__ void loom_exact_softmax_grad_rows(const T* __restrict__ y, const T* __restrict__ dy,
                                                        T* __restrict__ dx, long long rows, long long n, int bits) {
    __shared__ Scratch s;
    for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
        const T* yr = y + r * n;
        const T* dyr = dy + r * n;
        const T dot = exact_row_sum([&](long long j) { return dyr[j] * yr[j]; }, n, bits, s);
        for (long long j = threadIdx.x; j < n; j += blockDim.x) dx[r * n + j] = yr[j] * (dyr[j] - dot);
    }
}

// fused.layer_norm: mu = sum(x) / n; xc = x - mu; var = sum(xc * xc) / n; rstd = 1 / sqrt(var + eps);
// xhat = xc * rstd; y = xhat (* w) (+ b), w and b read only when has_w / has_b.
extern "C" __global__ void loom_exact_layer_norm_rows(const T* __restrict__ x, const T* __restrict__ w,
                                                      const T* __restrict__ b, T* __restrict__ y,
                                                      T* __restrict__ xhat, T* __restrict__ rstd, long long rows,
                                                      long long n, T eps, int has_w, int has_b, int bits) {
    __shared__ Scratch s;
    for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
        const T* xr = x + r * n;
        const T mu = exact_row_sum([&](long long j) { return xr[j]; }, n, bits, s) / (T)n;
        const T var = exact_row_sum([&](long long j) { const T c = xr[j] - mu; return c * c; }, n, bits, s) / (T)n;
        const T inv = (T)1 / loom_sqrt(var + eps);
        layer_norm_outputs(xr, mu, inv, w, b, y, xhat, rstd, r, n, has_w, has_b);
    }
}

// fused.layer_norm_grad: g = dy (* w); dx = rstd * (g - mean(g) - xhat * mean(g * xhat)).
extern "C" __global__ void loom_exact_layer_norm_grad_rows(const T* __restrict__ dy, const T* __restrict__ xhat,
                                                           const T* __restrict__ rstd, const T* __restrict__ w,
                                                           T* __restrict__ dx, long long rows, long long n,
                                                           int has_w, int bits) {
    __shared__ Scratch s;
    for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
        const T* dyr = dy + r * n;
        const T* hr = xhat + r * n;
        auto g = [&](long long j) { return has_w ? dyr[j] * w[j] : dyr[j]; };
        const T mean_g = exact_row_sum(g, n, bits, s) / (T)n;
        const T mean_gh = exact_row_sum([&](long long j) { return g(j) * hr[j]; }, n, bits, s) / (T)n;
        const T inv = rstd[r];
        for (long long j = threadIdx.x; j < n; j += blockDim.x) dx[r * n + j] = inv * (g(j) - mean_g - hr[j] * mean_gh);
    }
}

// fused.rms_norm: rstd = 1 / sqrt(sum(x * x) / n + eps); xhat = x * rstd; y = xhat (* w).
extern "C" __global__ void loom_exact_rms_norm_rows(const T* __restrict__ x, const T* __restrict__ w,
                                                    T* __restrict__ y, T* __restrict__ xhat, T* __restrict__ rstd,
                                                    long long rows, long long n, T eps, int has_w, int bits) {
    __shared__ Scratch s;
    for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
        const T* xr = x + r * n;
        const T ms = exact_row_sum([&](long long j) { return xr[j] * xr[j]; }, n, bits, s) / (T)n;
        const T inv = (T)1 / loom_sqrt(ms + eps);
        for (long long j = threadIdx.x; j < n; j += blockDim.x) {
            const T h = xr[j] * inv;
            xhat[r * n + j] = h;
            if (has_w) y[r * n + j] = h * w[j];      // else y is xhat: not written
        }
        if (threadIdx.x == 0) rstd[r] = inv;
    }
}

// fused.rms_norm_grad: g = dy (* w); dx = rstd * (g - xhat * mean(g * xhat)).
extern "C" __global__ void loom_exact_rms_norm_grad_rows(const T* __restrict__ dy, const T* __restrict__ xhat,
                                                         const T* __restrict__ rstd, const T* __restrict__ w,
                                                         T* __restrict__ dx, long long rows, long long n, int has_w,
                                                         int bits) {
    __shared__ Scratch s;
    for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
        const T* dyr = dy + r * n;
        const T* hr = xhat + r * n;
        auto g = [&](long long j) { return has_w ? dyr[j] * w[j] : dyr[j]; };
        const T mean_gh = exact_row_sum([&](long long j) { return g(j) * hr[j]; }, n, bits, s) / (T)n;
        const T inv = rstd[r];
        for (long long j = threadIdx.x; j < n; j += blockDim.x) dx[r * n + j] = inv * (g(j) - hr[j] * mean_gh);
    }
}
"""

@cache
def helpers() -> str:
    """fused' device helpers with mathlib's transcendentals (float and double overloads, from
    loom.kernels through device_functions): what ops.exp, ops.erf, ops.tanh and ops.sigmoid run in
    deterministic mode."""
    return BASICS + "\n" + device_functions.source("mathlib")


@cache
def _row_kernel(name: str, held: int = 0):
    """Kernel `name` of _ROWS; held: the entries a lane (the _warp kernels) or a thread (the _held ones) holds
    (SOFTMAX_HELD)."""
    define = f"#define SOFTMAX_HELD {held}\n" if held else ""
    source = "typedef float T;\n" + define + helpers() + ROW_HELPERS + EXACT_ROW_SUM + _ROWS
    return cupy.RawModule(code=source, options=OPTIONS).get_function(name)


def _bits(n: int) -> np.int32:
    return np.int32(53 - max(0, (n - 1).bit_length()))      # exact.sum's bits for rows of n


# Softmax rows (and their gradients' rows) of up to this many entries take a warp a row
# (loom_exact_softmax_rows_warp, loom_exact_softmax_grad_rows_warp; 0: a block a row).
# ptxas: 42 / 64 / 80 registers at 8 / 16 / 32 entries a lane, 167 at 64 (one block a multiprocessor): not past 512
# (benchmarks/softmax_rows.py, H200, 2^24 float32 entries: rows of 64 / 256 205 -> 116 / 160 -> 85 us against the
# block kernel; rows of 640 / 768 / 1,000 159 / 148 / 155 us at 32 entries a lane, 145 / 128 / 110 held by a
# block; gradients' rows of 64 / 256 / 512 163 -> 63 / 93 -> 60 / 94 -> 88 us, held by a block 300 / 400: 133 / 101)
WARP_ROWS_MAX = 512
WARP_GRAD_ROWS_MAX = 512        # (the gradient's kernel: 73 / 115 registers at 16 / 32 entries a lane)
# Longer rows up to this many entries take a block of 256 threads a row holding them in registers
# (loom_exact_softmax_rows_held, loom_exact_softmax_grad_rows_held: 4, 8 or 16 entries a thread); past it the block
# kernel, which reads the row again for each pass (0: the block kernel past the warp's rows)
HELD_ROWS_MAX = 4096


def _launch(name: str, dtype, rows: int, n: int, args: tuple) -> None:
    """fused' row launcher for this module: its float32 kernel loom_exact_<name>, with exact.sum's
    bits for rows of n as the last argument (softmax rows of n <= WARP_ROWS_MAX: a warp a row, holding
    the next power of two of n / 32 entries a lane; longer ones up to HELD_ROWS_MAX: a block of 256 threads a
    row, holding the next power of two of n / 256 entries a thread; the gradients' likewise from
    WARP_GRAD_ROWS_MAX)."""
    exact = name.replace("loom_", "loom_exact_", 1)
    most = WARP_ROWS_MAX if name == "loom_softmax_rows" else WARP_GRAD_ROWS_MAX if name == "loom_softmax_grad_rows" else 0
    # (rows of up to 32 entries keep the block kernel; other kernels than the softmax's take it at every length)
    suffix, held, grid, threads = fused.row_plan(rows, n, most, HELD_ROWS_MAX, 32) if most else \
        fused.row_plan(rows, n, 0, 0)
    _row_kernel(exact + suffix, held)((grid,), (threads,), args + (_bits(n),))


# The row operations: fused' (same arguments, same outputs) with this module's kernels.
def softmax(x: Array) -> Array:
    return fused.softmax(x, _launch)


def scaled_masked_softmax(scores: Array, scale: float, causal: bool, offset: int = 0) -> Array:
    return fused.scaled_masked_softmax(scores, scale, causal, offset, _launch)


def softmax_grad(y: Array, dy: Array) -> Array:
    return fused.softmax_grad(y, dy, _launch)


def layer_norm(x: Array, weight: Array | None, bias: Array | None, eps: float) -> tuple[Array, Array, Array]:
    return fused.layer_norm(x, weight, bias, eps, _launch)


def layer_norm_grad(dy: Array, xhat: Array, rstd: Array, weight: Array | None) -> Array:
    return fused.layer_norm_grad(dy, xhat, rstd, weight, _launch)


def rms_norm(x: Array, weight: Array | None, eps: float) -> tuple[Array, Array, Array]:
    return fused.rms_norm(x, weight, eps, _launch)


def rms_norm_grad(dy: Array, xhat: Array, rstd: Array, weight: Array | None) -> Array:
    return fused.rms_norm_grad(dy, xhat, rstd, weight, _launch)


# The element-wise ones: fused' formulas with mathlib's transcendentals.
def bias_act(z: Array, bias: Array | None, fn: str) -> tuple[Array, Array]:
    return fused.bias_act(z, bias, fn, helpers())


def gelu(x: Array) -> Array:
    return fused.gelu(x, helpers())


def gelu_grad(x: Array, dy: Array) -> Array:
    return fused.gelu_grad(x, dy, helpers())


# An LSTM step's element-wise work with mathlib's transcendentals: the composition's bits.
def lstm_step(ax_t: Array, mm: Array, bias_hh: Array | None, c_prev: Array, c_out: Array, gates: Array,
              h_out: Array, h_next: Array | None) -> None:
    fused.lstm_step(ax_t, mm, bias_hh, c_prev, c_out, gates, h_out, h_next, helpers=helpers())


def lstm_step_back(mm: Array | None, d0: Array | None, dy_t: Array | None, gates: Array, c_prev: Array,
                   d1: Array | None, da_t: Array, d1_out: Array) -> None:
    fused.lstm_step_back(mm, d0, dy_t, gates, c_prev, d1, da_t, d1_out, helpers=helpers())
