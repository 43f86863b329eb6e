"""Fused kernels for deterministic mode on the GPU: loom.kernels.fused's reference compositions (layer
and RMS norm, softmax, GELU, bias + activation, and their gradients) as one launch each, with the
reference's bits.

`CUDABackend.fused_exact` is this module; loom/kernels/fused.py calls it in deterministic mode as it
calls cuda_kernels in fast mode, after the same checks (C-contiguous, non-empty, one dtype).
The reference composition is ten to twenty CuPy launches per call (each exact sum alone is five);
in the encoder benchmark's deterministic step they were about 20 ms of 79 (docs/performance.md).

Same bits as the reference, by construction:
- the transcendentals are mathlib's (the kernel IR lowered to CUDA C, as ops.canonical runs them);
- every other operation is the reference's, in its order, correctly rounded (no contraction, no
  flush to zero: cuda_kernels.OPTIONS);
- each row sum is exact.sum's: the row's finite maximum fixes a power-of-two scale, every value
  becomes the integer rint(v 2^(bits - e)), the integers are added in float64 (exact: every partial
  sum is an integer below 2^53, so the block's order cannot matter), infinities and NaNs are added
  apart and win, and the total is scaled back and rounded once to float32.
Row kernels take float32 (exact.sum's float64 scheme has two slices per element; float64 rows run the
reference); the element-wise kernels take float32 and float64.
"""
from __future__ import annotations

from functools import lru_cache

import cupy
import numpy as np

from . import cuda_kernels
from .cuda import translating
from .cuda_exact_reduce import EXACT_ROW_SUM
from .cuda_kernels import BASICS, BLOCK_REDUCTIONS, OPTIONS

ROW_DTYPES = (np.dtype(np.float32),)
_TRANSCENDENTALS = ("exp", "erf", "tanh", "sigmoid")

# One block per row (grid-stride over rows), blockDim a multiple of 32; after cuda_kernels' BLOCK_REDUCTIONS
# and cuda_exact_reduce's EXACT_ROW_SUM.
_ROWS = r"""
// ops.softmax of s = x * scale (fused.scaled_masked_softmax): e = exp(s - max) / sum. Entries j >= kept
// are masked: e = 0, left out of the max; a row with nothing kept divides by 1 (all 0).
extern "C" __global__ void loom_exact_softmax_rows(const T* __restrict__ x, T* __restrict__ y, long long rows,
                                                   long long n, T scale, int causal, long long tq,
                                                   long long offset, int bits) {
    __shared__ Scratch s;
    __shared__ T red[32];
    for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
        const T* xr = x + r * n;
        T* yr = y + r * n;
        long long kept = n;
        if (causal) {
            const long long last = r % tq + offset;
            kept = last < 0 ? 0 : (last < n ? last + 1 : n);
        }
        T peak = loom_neg_inf((T)0);
        for (long long j = threadIdx.x; j < kept; j += blockDim.x) peak = max_nan(peak, xr[j] * scale);
        peak = block_max(peak, red);
        for (long long j = threadIdx.x; j < n; j += blockDim.x) yr[j] = j < kept ? loom_exp(xr[j] * scale - peak) : (T)0;
        const T total = exact_row_sum([&](long long j) { return yr[j]; }, n, bits, s);   // this thread's own writes
        const T denom = kept > 0 ? total : (T)1;
        for (long long j = threadIdx.x; j < n; j += blockDim.x) yr[j] = yr[j] / denom;
    }
}

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
        for (long long j = threadIdx.x; j < n; j += blockDim.x) {
            const T h = (xr[j] - mu) * inv;
            xhat[r * n + j] = h;
            if (has_w || has_b) {       // else y is xhat (the caller passes the same array): not written
                T o = h;
                if (has_w) o = o * w[j];
                if (has_b) o = o + b[j];
                y[r * n + j] = o;
            }
        }
        if (threadIdx.x == 0) rstd[r] = inv;
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

@lru_cache(maxsize=None)
def helpers() -> str:
    """cuda_kernels' device helpers with mathlib's transcendentals (float and double overloads): what
    ops.exp, ops.erf, ops.tanh and ops.sigmoid run in deterministic mode."""
    from ..kernels import lower_cuda, mathlib       # text generation only; no cycle at import time
    parts = [BASICS]
    for name in _TRANSCENDENTALS:
        for dtype in (np.float32, np.float64):
            parts.append(lower_cuda.device_function(mathlib.function(name, dtype), f"loom_{name}"))
    return "\n".join(parts)


@lru_cache(maxsize=None)
def _row_kernel(name: str):
    source = "typedef float T;\n" + helpers() + BLOCK_REDUCTIONS + EXACT_ROW_SUM + _ROWS
    return cupy.RawModule(code=source, options=OPTIONS).get_function(name)


def _bits(n: int) -> np.int32:
    return np.int32(53 - max(0, (n - 1).bit_length()))      # exact.sum's bits for rows of n


def _launch(name: str, rows: int, n: int, args: tuple) -> None:
    _row_kernel(name)((min(rows, cuda_kernels.MAX_GRID),), (cuda_kernels.row_threads(n),), args + (_bits(n),))


def softmax(x):
    return scaled_masked_softmax(x, 1.0, False, 0)   # x * 1 is exact: the plain softmax


def scaled_masked_softmax(scores, scale, causal: bool, offset: int = 0):
    rows, n = cuda_kernels.shape_rows(scores)
    tq = scores.shape[-2] if causal else 1
    y = cupy.empty_like(scores)
    with translating("fused softmax (deterministic)", scores):
        _launch("loom_exact_softmax_rows", rows, n, (scores, y, np.int64(rows), np.int64(n), np.float32(scale),
                                                     np.int32(bool(causal)), np.int64(tq), np.int64(offset)))
    return y


def softmax_grad(y, dy):
    rows, n = cuda_kernels.shape_rows(y)
    dx = cupy.empty_like(y)
    with translating("fused softmax_grad (deterministic)", y, dy):
        _launch("loom_exact_softmax_grad_rows", rows, n, (y, dy, dx, np.int64(rows), np.int64(n)))
    return dx


def layer_norm(x, weight, bias, eps):
    rows, n = cuda_kernels.shape_rows(x)
    xhat, rstd = cupy.empty_like(x), cuda_kernels.rstd_like(x)
    y = cupy.empty_like(x) if weight is not None or bias is not None else xhat
    w = x if weight is None else weight               # stand-in pointers, never read
    b = x if bias is None else bias
    with translating("fused layer_norm (deterministic)", x):
        _launch("loom_exact_layer_norm_rows", rows, n,
                (x, w, b, y, xhat, rstd, np.int64(rows), np.int64(n), np.float32(eps),
                 np.int32(weight is not None), np.int32(bias is not None)))
    return y, xhat, rstd


def layer_norm_grad(dy, xhat, rstd, weight):
    rows, n = cuda_kernels.shape_rows(dy)
    dx = cupy.empty_like(dy)
    with translating("fused layer_norm_grad (deterministic)", dy, xhat):
        _launch("loom_exact_layer_norm_grad_rows", rows, n,
                (dy, xhat, rstd, dy if weight is None else weight, dx, np.int64(rows), np.int64(n),
                 np.int32(weight is not None)))
    return dx


def rms_norm(x, weight, eps):
    rows, n = cuda_kernels.shape_rows(x)
    xhat, rstd = cupy.empty_like(x), cuda_kernels.rstd_like(x)
    y = xhat if weight is None else cupy.empty_like(x)
    with translating("fused rms_norm (deterministic)", x):
        _launch("loom_exact_rms_norm_rows", rows, n,
                (x, x if weight is None else weight, y, xhat, rstd, np.int64(rows), np.int64(n), np.float32(eps),
                 np.int32(weight is not None)))
    return y, xhat, rstd


def rms_norm_grad(dy, xhat, rstd, weight):
    rows, n = cuda_kernels.shape_rows(dy)
    dx = cupy.empty_like(dy)
    with translating("fused rms_norm_grad (deterministic)", dy, xhat):
        _launch("loom_exact_rms_norm_grad_rows", rows, n,
                (dy, xhat, rstd, dy if weight is None else weight, dx, np.int64(rows), np.int64(n),
                 np.int32(weight is not None)))
    return dx


def bias_act(z, bias, fn: str):
    return cuda_kernels.bias_act(z, bias, fn, helpers())


def gelu(x):
    return cuda_kernels.gelu(x, helpers())


def gelu_grad(x, dy):
    return cuda_kernels.gelu_grad(x, dy, helpers())
