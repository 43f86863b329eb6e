"""An LSTM step's element-wise work as one launch each way (loom/nn/layers/recurrent.py's fused loop).

The composed cell is about 35 CuPy launches a step forward (four gate activations, each sigmoid nine
element-wise passes in fast mode, the cell and hidden updates, the copies into the sequences) and about
25 backward, so a recorded LSTM train step of 64 steps was some 4,000 launches around 128 small GEMMs
(issue 61: 8.7 ms against PyTorch's 1.9). Here a step is its GEMM and one kernel.

Both kernels compute the composition's expressions in its order, each operation correctly rounded (no
contraction: OPTIONS' --fmad=false; sums with zero through __fadd_rn, so +0 + -0 stays +0 as NumPy
gives it), with `helpers`' transcendentals: fused.py's CUDA ones in fast mode, mathlib's in
deterministic mode (fused_exact.helpers), where the result then has the composition's bits.
"""
from __future__ import annotations

from functools import cache

import cupy
import numpy as np

from .. import Array
from .compile import OPTIONS, translating
from .quant import pointer as _ptr

THREADS = 256

_SOURCE = r"""
__device__ __forceinline__ float loom_add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double loom_add_rn(double a, double b) { return __dadd_rn(a, b); }

// LSTM.cell for batch row b, unit j: a = ax_t + (h W_hh^T + b_hh) per gate; i, f, o = sigmoid, g = tanh;
// c = f c_prev + i g; h = o tanh(c). Writes c, the gates and tanh(c) (cell_back's cache, [5, B, H]),
// h into the output sequence's step t and, when given, into the next step's h_prev.
extern "C" __global__ void loom_lstm_step(const T* __restrict__ ax, long long ax_row, const T* __restrict__ mm,
                                          const T* __restrict__ bias_hh, const T* __restrict__ c_prev,
                                          T* __restrict__ c_out, T* __restrict__ gates, T* __restrict__ h_out,
                                          long long h_row, T* __restrict__ h_next, long long next_row,
                                          long long B, long long H) {
    const long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= B * H) return;
    const long long b = e / H, j = e % H;
    T a[4];
    #pragma unroll
    for (int q = 0; q < 4; ++q) {
        T ah = mm[b * 4 * H + q * H + j];
        if (bias_hh != 0) ah = ah + bias_hh[q * H + j];
        a[q] = ax[b * ax_row + q * H + j] + ah;
    }
    const T i = loom_sigmoid(a[0]), f = loom_sigmoid(a[1]), g = loom_tanh(a[2]), o = loom_sigmoid(a[3]);
    const T c = f * c_prev[e] + i * g;
    const T tc = loom_tanh(c);
    const T h = o * tc;
    c_out[e] = c;
    const long long n = B * H;
    gates[e] = i; gates[n + e] = f; gates[2 * n + e] = g; gates[3 * n + e] = o; gates[4 * n + e] = tc;
    h_out[b * h_row + j] = h;
    if (h_next != 0) h_next[b * next_row + j] = h;
}

// The backward loop's step t: d_h = (0 + mm) (the next step's da W_hh; at the last step d0, or 0),
// + dy_t with return_sequences; d_c = d1 (0 at the last step). Then LSTM.cell_back: dc = d_c + d_h o
// (1 - tc^2); da = [dc g i (1 - i), dc c_prev f (1 - f), dc i (1 - g^2), d_h tc o (1 - o)] into the
// sequence of da at step t; d1_out = 0 + dc f, the cell state's gradient for step t - 1.
extern "C" __global__ void loom_lstm_step_back(const T* __restrict__ mm, const T* __restrict__ d0,
                                               const T* __restrict__ dy, long long dy_row,
                                               const T* __restrict__ gates, const T* __restrict__ c_prev,
                                               const T* __restrict__ d1, T* __restrict__ da, long long da_row,
                                               T* __restrict__ d1_out, long long B, long long H) {
    const long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= B * H) return;
    const long long b = e / H, j = e % H, n = B * H;
    T dh = mm != 0 ? loom_add_rn((T)0, mm[e]) : (d0 != 0 ? d0[e] : (T)0);
    if (dy != 0) dh = loom_add_rn(dh, dy[b * dy_row + j]);
    const T i = gates[e], f = gates[n + e], g = gates[2 * n + e], o = gates[3 * n + e], tc = gates[4 * n + e];
    const T dc = loom_add_rn(d1 != 0 ? d1[e] : (T)0, dh * o * ((T)1 - tc * tc));
    T* row = da + b * da_row;
    row[j] = dc * g * i * ((T)1 - i);
    row[H + j] = dc * c_prev[e] * f * ((T)1 - f);
    row[2 * H + j] = dc * i * ((T)1 - g * g);
    row[3 * H + j] = dh * tc * o * ((T)1 - o);
    d1_out[e] = loom_add_rn((T)0, dc * f);
}
"""


@cache
def _module(dtype: np.dtype, helpers: str):
    c_type = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}[dtype]
    return cupy.RawModule(code=f"typedef {c_type} T;\n" + helpers + _SOURCE, options=OPTIONS)


def _row(a: Array | None) -> np.int64:
    """The row stride, in elements, of a [B, n] view whose entries within a row are contiguous."""
    return np.int64(0 if a is None else a.strides[0] // a.itemsize)


def _check_rows(*arrays: Array | None) -> None:
    for a in arrays:
        if a is not None and a.ndim == 2 and a.shape[1] > 1 and a.strides[1] != a.itemsize:
            raise ValueError(f"an LSTM step's [B, n] operand must have contiguous rows, got strides {a.strides}")


def lstm_step(ax_t: Array, mm: Array, bias_hh: Array | None, c_prev: Array, c_out: Array, gates: Array,
              h_out: Array, h_next: Array | None, helpers: str) -> None:
    """One forward step: ax_t [B, 4H] (rows may be strided: the step's slice of the input projection),
    mm = h W_hh^T [B, 4H] and c_prev, c_out [B, H] contiguous, gates [5, B, H]; h into h_out and h_next
    ([B, H] views with contiguous rows)."""
    B, H = c_prev.shape
    _check_rows(ax_t, h_out, h_next)
    kernel = _module(np.dtype(c_prev.dtype), helpers).get_function("loom_lstm_step")
    with translating("fused lstm step", mm, c_prev):
        if B * H:
            kernel((-(-B * H // THREADS),), (THREADS,),
                   (ax_t, _row(ax_t), cupy.ascontiguousarray(mm), _ptr(bias_hh), c_prev, c_out, gates, h_out,
                    _row(h_out), _ptr(h_next), _row(h_next), np.int64(B), np.int64(H)))


def lstm_step_back(mm: Array | None, d0: Array | None, dy_t: Array | None, gates: Array, c_prev: Array,
                   d1: Array | None, da_t: Array, d1_out: Array, helpers: str) -> None:
    """One backward step (see loom_lstm_step_back): mm [B, H] or None (the last step), d0 [B, H] the
    last step's incoming gradient (no return_sequences) or None, dy_t [B, H] (rows may be strided) or
    None, d1 [B, H] or None (0); writes da_t [B, 4H] (rows may be strided) and d1_out [B, H]."""
    B, H = c_prev.shape
    _check_rows(dy_t, da_t)
    kernel = _module(np.dtype(c_prev.dtype), helpers).get_function("loom_lstm_step_back")
    with translating("fused lstm step backward", gates, c_prev):
        if B * H:
            kernel((-(-B * H // THREADS),), (THREADS,),
                   (_ptr(None if mm is None else cupy.ascontiguousarray(mm)), _ptr(d0), _ptr(dy_t), _row(dy_t),
                    gates, c_prev, _ptr(d1), da_t, _row(da_t), d1_out, np.int64(B), np.int64(H)))
