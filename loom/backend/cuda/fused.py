"""Fused CUDA kernels behind loom.kernels.fused (fast mode): one launch where the CuPy composition takes
several, and no temporaries beyond the outputs.

`CUDABackend.fused` is this module. Callers (loom/kernels/fused.py) have already checked that every array
is C-contiguous, non-empty, float32 or float64 and of one dtype; these functions only launch.

Determinism of the arithmetic: everything is compiled by NVRTC with `--fmad=false` (no multiply-add
contraction), IEEE division and square root and no flush-to-zero, and each formula keeps the operation
order of the NumPy reference. So elementwise code built from + - * / sqrt (the optimizer updates) gives the
reference's bits; transcendentals (CUDA's exp, tanh, erf) and the order of row sums differ from NumPy by
rounding only. float32 computes in float, except erf, which the reference widens to float64 too.

Capturable into a CUDA graph: no function synchronizes or copies between host and device. Python scalars
travel as kernel arguments; optimizer scalars may instead be 0-d device arrays (a recorded graph passes
those), read inside the same kernel as the same type T, so both forms give the same bits. Kernels compile
on first use (per dtype and variant) and are cached; run each once before capturing a graph.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from functools import cache

import cupy
import numpy as np

from .. import Array
from . import recurrent
from .compile import OPTIONS, translating
from .fused_rows_source import ROWS_SOURCE

MAX_GRID = 2 ** 31 - 1

# Constants spelled exactly as loom/nn/layers/activation.py computes them; repr() round-trips the double,
# and (T) then rounds it once, as NumPy rounds a Python float against a float32 array.
_INV_SQRT2 = repr(1 / math.sqrt(2))
_INV_SQRT_2PI = repr(1 / math.sqrt(2 * math.pi))
_TANH_C = repr(math.sqrt(2 / math.pi))
_TANH_K = repr(0.044715)

# Device helpers shared by the elementwise and the row kernels. Overloads (not T) so that they compile
# before or after CuPy's `typedef ... T`. BASICS are correctly rounded (or exact) everywhere; the
# transcendentals are CUDA's, and deterministic mode swaps them for mathlib's (fused_exact.py).
BASICS = r"""
__device__ __forceinline__ float loom_sqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double loom_sqrt(double x) { return sqrt(x); }
__device__ __forceinline__ float loom_abs(float x) { return fabsf(x); }
__device__ __forceinline__ double loom_abs(double x) { return fabs(x); }
__device__ __forceinline__ float loom_neg_inf(float) { return __int_as_float((int)0xff800000u); }
__device__ __forceinline__ double loom_neg_inf(double) {
    return __longlong_as_double((long long)0xfff0000000000000ull);
}
"""
_HELPERS = BASICS + r"""
__device__ __forceinline__ float loom_exp(float x) { return expf(x); }
__device__ __forceinline__ double loom_exp(double x) { return exp(x); }
__device__ __forceinline__ float loom_tanh(float x) { return tanhf(x); }
__device__ __forceinline__ double loom_tanh(double x) { return tanh(x); }
// float32 erf in float32 (gelu v2): widening to float64 as ops.erf does (v3) measured 22-40% slower on
// the H200 for a difference within float32 rounding (benchmarks/kernels/README.md).
__device__ __forceinline__ float loom_erf(float x) { return erff(x); }
__device__ __forceinline__ double loom_erf(double x) { return erf(x); }
// ops.sigmoid: e = exp(-|x|); x >= 0 ? 1 / (1 + e) : e / (1 + e), so that neither branch overflows.
template <typename F> __device__ __forceinline__ F loom_sigmoid(F x) {
    F e = loom_exp(-loom_abs(x));
    return x >= (F)0 ? (F)1 / ((F)1 + e) : e / ((F)1 + e);
}
"""

# Row kernels: one block per row of n contiguous entries (grid-stride over rows), blockDim a multiple
# of 32. Every reduction leaves the same value in every thread: each warp reduces the per-warp partials
# itself, in the same order, so no broadcast through shared memory is needed. fused_exact.py's row
# kernels use these reductions and the softmax and layer-norm pieces below too.
ROW_HELPERS = r"""
__device__ __forceinline__ T max_nan(T a, T b) { return (a > b || a != a) ? a : b; }  // NaN wins, as np.max
struct AddOp { template <class V> __device__ V operator()(V a, V b) const { return a + b; } };
struct MaxOp { template <class V> __device__ V operator()(V a, V b) const { return max(a, b); } };
struct MaxNanOp { __device__ T operator()(T a, T b) const { return max_nan(a, b); } };

template <class V, class Op> __device__ __forceinline__ V warp_reduce(V v, Op op) {
    for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
// op over a thread's v[0 .. R - 1] as a tree (pairs, then pairs of pairs; v is overwritten), for operations whose
// value does not depend on the order (integers' sums, maxima): log2 R dependent steps, not R - 1
template <int R, class V, class Op> __device__ __forceinline__ V tree_reduce(V (&v)[R], Op op) {
    #pragma unroll
    for (int w = 1; w < R; w *= 2)
        #pragma unroll
        for (int i = 0; i + w < R; i += 2 * w) v[i] = op(v[i], v[i + w]);
    return v[0];
}
// The warp's maximum of 32-bit integers (int or unsigned) by one redux.sync where the device has it (compute
// capability 8.0 on), else by shuffles: the same value. Not warp_reduce's own form for integers: on an H200 the redux
// in the one-row products' staging made SmolLM2-135M's batch-1 step slower (663 -> 699 us, 2026-11-29), so callers
// take it where measured.
template <class V> __device__ __forceinline__ V warp_max_redux(V v) {
#if __CUDA_ARCH__ >= 800
    return __reduce_max_sync(0xffffffffu, v);
#else
    return warp_reduce(v, MaxOp());
#endif
}
// The warp's sum of int64 values (exact integers: the exact sums' and the products' accumulators) where the sum lies
// within +-(2^63 - 2^48), the shuffles' value: three 21-bit chunks v = 2^42 hi + 2^21 mid + lo (hi signed), each
// summed by one redux.sync (32 of them stay within 32 bits), in place of five dependent 64-bit shuffle steps
__device__ __forceinline__ long long warp_sum_i64(long long v) {
#if __CUDA_ARCH__ >= 800
    const long long lo = __reduce_add_sync(0xffffffffu, (unsigned)(v & 0x1FFFFF));
    const long long mid = __reduce_add_sync(0xffffffffu, (unsigned)((v >> 21) & 0x1FFFFF));
    const long long hi = __reduce_add_sync(0xffffffffu, (int)(v >> 42));
    return hi * (1LL << 42) + mid * (1LL << 21) + lo;
#else
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
#endif
}

// red: 32 entries of shared memory; `identity` fills the lanes past the last warp.
template <class V, class Op> __device__ V block_reduce(V v, V* red, V identity, Op op) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = warp_reduce(v, op);
    if (nwarps == 1) return v;
    __syncthreads();                  // the previous reduction's readers are done with red
    if (lane == 0) red[warp] = v;
    __syncthreads();
    return warp_reduce(lane < nwarps ? red[lane] : identity, op);
}

__device__ T block_sum(T v, T* red) { return block_reduce(v, red, (T)0, AddOp()); }
__device__ T block_max(T v, T* red) { return block_reduce(v, red, loom_neg_inf((T)0), MaxNanOp()); }

// Softmax rows: entries j >= kept are masked. kept = n, or when causal: row r is query i = r % tq, which
// keeps keys j <= i + offset (none when i + offset < 0). The peak is the largest kept x * scale (NaN wins).
__device__ __forceinline__ long long softmax_kept(long long r, long long n, int causal, long long tq,
                                                  long long offset) {
    if (!causal) return n;
    const long long last = r % tq + offset;
    return last < 0 ? 0 : (last < n ? last + 1 : n);
}

__device__ T softmax_peak(const T* xr, long long kept, T scale, T* red) {
    T peak = loom_neg_inf((T)0);
    for (long long j = threadIdx.x; j < kept; j += blockDim.x) peak = max_nan(peak, xr[j] * scale);
    return block_max(peak, red);
}

// Layer norm's outputs for row r once mu and inv = rstd are known: xhat = (x - mu) * inv, y = xhat (* w) (+ b)
// (w, b read only when has_w / has_b; without both y is xhat, not written), rstd[r] = inv.
__device__ __forceinline__ void layer_norm_outputs(const T* xr, T mu, T inv, const T* w, const T* b, T* y, T* xhat,
                                                   T* rstd, long long r, long long n, int has_w, int has_b) {
    for (long long j = threadIdx.x; j < n; j += blockDim.x) {
        const T h = (xr[j] - mu) * inv;
        xhat[r * n + j] = h;
        if (has_w || has_b) {
            T o = h;
            if (has_w) o = o * w[j];
            if (has_b) o = o + b[j];
            y[r * n + j] = o;
        }
    }
    if (threadIdx.x == 0) rstd[r] = inv;
}
"""
_ROWS = _HELPERS + ROW_HELPERS + ROWS_SOURCE

C_TYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}


@cache
def _row_kernel(dtype: np.dtype, name: str, held: int = 0):
    """The row kernel `name` for one dtype (one module per dtype, compiled on first use); held: the entries a
    thread of the softmax kernels holding their rows (the _warp and _held ones) holds (SOFTMAX_HELD)."""
    return _row_module(dtype, held).get_function(name)


@cache
def _row_module(dtype: np.dtype, held: int = 0):
    define = f"#define SOFTMAX_HELD {held}\n" if held else ""
    return cupy.RawModule(code=f"typedef {C_TYPES[dtype]} T;\n" + define + _ROWS, options=OPTIONS)


# float32 softmax rows (and their gradients' rows) of up to WARP_ROWS entries take a warp a row, longer ones up to
# HELD_ROWS a block of 256 threads a row, each holding the row in registers (HELD_ROWS 0: the block kernels past
# the warp's rows).
# Not the warp past 512 (benchmarks/softmax_rows.py, H200: rows of 640 / 768 / 1,000 87 / 87 / 78 us on a warp,
# 75 / 66 / 56 held by a block; the gradients' even)
WARP_ROWS = 512
HELD_ROWS = 4096
HELD_NAMES = ("loom_softmax_rows", "loom_softmax_grad_rows")
WARP_ROW_BLOCKS = 1 << 16       # blocks of eight rows a warp a row at most (each then takes every grid-th group)


def row_threads(n: int) -> int:
    """Threads per row: about 4 entries each, a power of two from one warp (short rows) up to 1024."""
    want = 1 << max(0, (n - 1).bit_length())          # next power of two >= n
    return min(1024, max(32, want // 4))


def row_plan(rows: int, n: int, warp_max: int, held_max: int, warp_min: int = 0) -> tuple[str, int, int, int]:
    """(kernel suffix, entries held, grid, threads) of a softmax row launch over rows of n, both modes' kernels:
    a warp a row for warp_min < n <= warp_max (eight rows a block of 256), holding the next power of two of
    n / 32 entries a lane; a block of 256 threads a row past warp_max up to held_max, holding the next power of
    two of n / 256 a thread; else the block kernel ("", 0) with row_threads(n)."""
    if warp_min < n <= warp_max:
        return "_warp", 1 << (-(-n // 32) - 1).bit_length(), min(-(-rows // 8), WARP_ROW_BLOCKS), 256
    if warp_max < n <= held_max:
        return "_held", 1 << (-(-n // 256) - 1).bit_length(), min(rows, MAX_GRID), 256
    return "", 0, min(rows, MAX_GRID), row_threads(n)


def _launch_rows(name: str, dtype, rows: int, n: int, args: tuple) -> None:
    """Launch row kernel `name` (e.g. "loom_softmax_rows") over rows of n. The functions below take
    another launcher as `launch`: fused_exact runs its own kernels through them."""
    dtype = np.dtype(dtype)
    held_rows = name in HELD_NAMES and dtype == np.float32
    suffix, held, grid, threads = row_plan(rows, n, WARP_ROWS, HELD_ROWS) if held_rows else row_plan(rows, n, 0, 0)
    _row_kernel(dtype, name + suffix, held)((grid,), (threads,), args)


def shape_rows(x: Array) -> tuple[int, int]:
    n = x.shape[-1]
    return x.size // n, n


def rstd_like(x: Array) -> Array:
    return cupy.empty(x.shape[:-1] + (1,), dtype=x.dtype)


# --- softmax ---------------------------------------------------------------------------------------

def softmax(x: Array, launch: Callable[..., None] = _launch_rows) -> Array:
    return scaled_masked_softmax(x, 1.0, False, 0, launch)   # x * 1 is exact: the plain softmax


def scaled_masked_softmax(scores: Array, scale: float, causal: bool, offset: int = 0,
                          launch: Callable[..., None] = _launch_rows) -> Array:
    rows, n = shape_rows(scores)
    tq = scores.shape[-2] if causal else 1
    y = cupy.empty_like(scores)
    with translating("fused softmax", scores):
        launch("loom_softmax_rows", scores.dtype, rows, n,
               (scores, y, np.int64(rows), np.int64(n), scores.dtype.type(scale), np.int32(bool(causal)),
                np.int64(tq), np.int64(offset)))
    return y


def softmax_grad(y: Array, dy: Array, launch: Callable[..., None] = _launch_rows) -> Array:
    rows, n = shape_rows(y)
    dx = cupy.empty_like(y)
    with translating("fused softmax_grad", y, dy):
        launch("loom_softmax_grad_rows", y.dtype, rows, n, (y, dy, dx, np.int64(rows), np.int64(n)))
    return dx


# --- norms -----------------------------------------------------------------------------------------

def layer_norm(x: Array, weight: Array | None, bias: Array | None, eps: float,
               launch: Callable[..., None] = _launch_rows) -> tuple[Array, Array, Array]:
    rows, n = shape_rows(x)
    xhat, rstd = cupy.empty_like(x), rstd_like(x)
    affine = weight is not None or bias is not None
    y = cupy.empty_like(x) if affine else xhat       # LayerNorm without parameters returns xhat itself
    # A missing weight or bias is never read (has_w / has_b = 0); x stands in for the pointer.
    w = x if weight is None else weight
    b = x if bias is None else bias
    with translating("fused layer_norm", x):
        launch("loom_layer_norm_rows", x.dtype, rows, n,
               (x, w, b, y, xhat, rstd, np.int64(rows), np.int64(n), x.dtype.type(eps),
                np.int32(weight is not None), np.int32(bias is not None)))
    return y, xhat, rstd


def layer_norm_grad(dy: Array, xhat: Array, rstd: Array, weight: Array | None,
                    launch: Callable[..., None] = _launch_rows) -> Array:
    rows, n = shape_rows(dy)
    dx = cupy.empty_like(dy)
    w = dy if weight is None else weight
    with translating("fused layer_norm_grad", dy, xhat):
        launch("loom_layer_norm_grad_rows", dy.dtype, rows, n,
               (dy, xhat, rstd, w, dx, np.int64(rows), np.int64(n), np.int32(weight is not None)))
    return dx


def rms_norm(x: Array, weight: Array | None, eps: float,
             launch: Callable[..., None] = _launch_rows) -> tuple[Array, Array, Array]:
    rows, n = shape_rows(x)
    xhat, rstd = cupy.empty_like(x), rstd_like(x)
    y = xhat if weight is None else cupy.empty_like(x)
    w = x if weight is None else weight
    with translating("fused rms_norm", x):
        launch("loom_rms_norm_rows", x.dtype, rows, n,
               (x, w, y, xhat, rstd, np.int64(rows), np.int64(n), x.dtype.type(eps),
                np.int32(weight is not None)))
    return y, xhat, rstd


def rms_norm_grad(dy: Array, xhat: Array, rstd: Array, weight: Array | None,
                  launch: Callable[..., None] = _launch_rows) -> Array:
    rows, n = shape_rows(dy)
    dx = cupy.empty_like(dy)
    w = dy if weight is None else weight
    with translating("fused rms_norm_grad", dy, xhat):
        launch("loom_rms_norm_grad_rows", dy.dtype, rows, n,
               (dy, xhat, rstd, w, dx, np.int64(rows), np.int64(n), np.int32(weight is not None)))
    return dx


# --- activations -----------------------------------------------------------------------------------

# fn(pre) as C, in activation.apply's operation order; the constants are cast to T as NumPy casts them.
_ACT = {
    "linear": "pre",
    "relu": "(pre > (T)0 || pre != pre) ? pre : (T)0",      # np.maximum(x, 0): NaN stays, -0 becomes +0
    "gelu": f"(T)0.5 * pre * ((T)1 + loom_erf(pre * (T){_INV_SQRT2}))",
    "gelu_tanh": f"(T)0.5 * pre * ((T)1 + loom_tanh((T){_TANH_C} * (pre + (T){_TANH_K} * pre * pre * pre)))",
    "silu": "pre * loom_sigmoid(pre)",
    "sigmoid": "loom_sigmoid(pre)",
    "tanh": "loom_tanh(pre)",
}
# activation.OUTPUT_GRAD: their gradient needs only y, so y overwrites the pre-activation in place.
_OUTPUT_GRAD = frozenset({"linear", "relu", "sigmoid", "tanh"})
ACTIVATIONS = frozenset(_ACT)


@cache
def _bias_act_kernel(fn: str, has_bias: bool, helpers: str):
    pre = "T pre = z + b;" if has_bias else "T pre = z;"
    ins = "T b" if has_bias else ""
    if fn in _OUTPUT_GRAD:
        return cupy.ElementwiseKernel(ins, "T z", f"{pre} z = {_ACT[fn]};", f"loom_bias_{fn}",
                                      preamble=helpers, options=OPTIONS)
    return cupy.ElementwiseKernel(ins, "T z, T y", f"{pre} z = pre; y = {_ACT[fn]};", f"loom_bias_{fn}",
                                  preamble=helpers, options=OPTIONS)


def bias_act(z: Array, bias: Array | None, fn: str, helpers: str = _HELPERS) -> tuple[Array, Array]:
    """(saved, y) as activation.forward(fn, z + bias); z is overwritten with the saved array.
    `helpers` defines the transcendentals (deterministic mode passes mathlib's)."""
    if fn == "linear" and bias is None:
        return z, z
    kernel = _bias_act_kernel(fn, bias is not None, helpers)
    args = (z,) if bias is None else (bias, z)
    with translating(f"fused bias + {fn}", z):
        if fn in _OUTPUT_GRAD:
            kernel(*args)
            return z, z
        y = cupy.empty_like(z)
        kernel(*args, y)
    return z, y


@cache
def _gelu_kernels(helpers: str):
    forward = cupy.ElementwiseKernel("T x", "T y", f"const T pre = x; y = {_ACT['gelu']};", "loom_gelu",
                                     preamble=helpers, options=OPTIONS)
    # activation.grad("gelu"): dy * (cdf + x * (1 / sqrt(2 pi)) * exp(-0.5 * x * x)), cdf = 0.5 (1 + erf(x / sqrt2))
    grad = cupy.ElementwiseKernel(
        "T x, T dy", "T dx",
        f"const T cdf = (T)0.5 * ((T)1 + loom_erf(x * (T){_INV_SQRT2}));"
        f"dx = dy * (cdf + x * (T){_INV_SQRT_2PI} * loom_exp((T)-0.5 * x * x));",
        "loom_gelu_grad", preamble=helpers, options=OPTIONS)
    return forward, grad


def gelu(x: Array, helpers: str = _HELPERS) -> Array:
    with translating("fused gelu", x):
        return _gelu_kernels(helpers)[0](x)


def gelu_grad(x: Array, dy: Array, helpers: str = _HELPERS) -> Array:
    with translating("fused gelu_grad", x, dy):
        return _gelu_kernels(helpers)[1](x, dy)


def lstm_step(ax_t: Array, mm: Array, bias_hh: Array | None, c_prev: Array, c_out: Array, gates: Array,
              h_out: Array, h_next: Array | None, helpers: str = _HELPERS) -> None:
    """recurrent.lstm_step (an LSTM step forward, one launch) with `helpers`' transcendentals."""
    recurrent.lstm_step(ax_t, mm, bias_hh, c_prev, c_out, gates, h_out, h_next, helpers)


def lstm_step_back(mm: Array | None, d0: Array | None, dy_t: Array | None, gates: Array, c_prev: Array,
                   d1: Array | None, da_t: Array, d1_out: Array, helpers: str = _HELPERS) -> None:
    """recurrent.lstm_step_back (an LSTM step backward, one launch) with `helpers`' transcendentals."""
    recurrent.lstm_step_back(mm, d0, dy_t, gates, c_prev, d1, da_t, d1_out, helpers)


# --- optimizers ------------------------------------------------------------------------------------

def _scalar(value, dtype):
    """An optimizer scalar as a kernel argument of `dtype`: a device array stays on the device (a cast,
    if any, is a kernel launch, not a copy); a Python number becomes a NumPy scalar, rounded once, as
    NumPy rounds a Python float against an array of `dtype`."""
    if isinstance(value, cupy.ndarray):
        return value if value.dtype == dtype else value.astype(dtype)
    return dtype.type(value)


@cache
def _adam_kernel(l2: bool, decay: bool, lerp_small: bool, amsgrad: bool):
    # optim.Adam.update, one statement per NumPy operation; `lerp_w` is w = 1 - b1 for torch.lerp's first
    # form (|w| < 0.5) and 1 - w for its second.
    body = ["T gg = g;"]
    if l2:
        body.append("gg = gg + l2 * p;")
    if decay:
        body.append("p = p * decay;")
    body.append("m = m + lerp_w * (gg - m);" if lerp_small else "m = gg - (gg - m) * lerp_w;")
    body += ["v = v * b2;", "v = v + one_minus_b2 * gg * gg;"]
    if amsgrad:   # np.maximum(vmax, v, out=vmax): NaN from either side, the second operand on ties
        body += ["vmax = (vmax > v || vmax != vmax) ? vmax : v;", "const T vv = vmax;"]
    else:
        body.append("const T vv = v;")
    body += ["const T denom = loom_sqrt(vv) / bc2_sqrt + eps;", "p = p + (-step_size * m) / denom;"]
    outs = "T p, T m, T v" + (", T vmax" if amsgrad else "")
    return cupy.ElementwiseKernel(
        "T g, T step_size, T bc2_sqrt, T decay, T l2, T lerp_w, T b2, T one_minus_b2, T eps", outs,
        "\n".join(body), "loom_adam", preamble=_HELPERS, options=OPTIONS)


def adam_update(p: Array, g: Array, m: Array, v: Array, vmax: Array | None, step_size: float | Array,
                bc2_sqrt: float | Array, b1: float, b2: float, eps: float, l2: float,
                decay: float | Array | None) -> None:
    dtype = p.dtype
    w = 1 - b1
    small = abs(w) < 0.5
    kernel = _adam_kernel(l2 != 0, decay is not None, small, vmax is not None)
    scalars = (_scalar(step_size, dtype), _scalar(bc2_sqrt, dtype), _scalar(1.0 if decay is None else decay, dtype),
               dtype.type(l2), dtype.type(w if small else 1 - w), dtype.type(b2), dtype.type(1 - b2),
               dtype.type(eps))
    outs = (p, m, v) if vmax is None else (p, m, v, vmax)
    with translating("fused adam update", p, g):
        kernel(g, *scalars, *outs)


@cache
def _sgd_kernel(wd: bool, momentum: bool, first: bool, nesterov: bool):
    # optim.SGD.update, one statement per NumPy operation.
    body = ["T gg = g;"]
    if wd:
        body.append("gg = gg + wd * p;")
    if momentum:
        body.append("buf = gg;" if first else "buf = buf * mom; buf = buf + one_minus_damp * gg;")
        body.append("gg = gg + mom * buf;" if nesterov else "gg = buf;")
    body.append("p = p - lr * gg;")
    outs = "T p, T buf" if momentum else "T p"
    return cupy.ElementwiseKernel("T g, T lr, T wd, T mom, T one_minus_damp", outs, "\n".join(body), "loom_sgd",
                                  preamble=_HELPERS, options=OPTIONS)


def sgd_update(p: Array, g: Array, buf: Array | None, lr: float | Array, momentum: float, dampening: float,
               nesterov: bool, wd: float, first: bool) -> None:
    dtype = p.dtype
    has_momentum = momentum != 0
    kernel = _sgd_kernel(wd != 0, has_momentum, bool(first), bool(nesterov) and has_momentum)
    outs = (p, buf) if has_momentum else (p,)
    with translating("fused sgd update", p, g):
        kernel(g, _scalar(lr, dtype), dtype.type(wd), dtype.type(momentum), dtype.type(1 - dampening), *outs)
