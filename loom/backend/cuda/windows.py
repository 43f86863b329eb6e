"""CUDA kernels for the sliding-window data movement of convolutions and pooling.

The array-module versions in loom/nn/layers/conv.py and pool.py pad, take a strided window view and
copy it (im2col), and scatter gradients back with one strided add per kernel offset (col2im). On the
GPU that is a dozen kernels over the whole activation per layer; each function here is one kernel.
They compute the same bits as the references in both modes: im2col and the max-pool forward only
move values; the gather form of col2im and of the max-pool backward add each position's
contributions starting from 0 in the references' order (kernel offsets in row-major order), with no
contraction (OPTIONS compiles with --fmad=false).

Geometry (conv.Geometry, or a pooling layer's) is N-d with N <= 3; 1-d and 2-d problems run as 3-d ones
with leading spatial dimensions of size 1. `CUDABackend.windows` is this module; the callers use it
for C-contiguous float32/float64 arrays. Capturable: no synchronization, sizes as arguments.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any

import cupy
import numpy as np

from .. import Array
from .compile import OPTIONS, translating
from .fused import C_TYPES

_SOURCE = r"""
struct Geo { int k[3], s[3], d[3], lo[3], big[3], small[3]; };
// the geometry is compiled in (GEO is #defined per module): every division and modulo below is by a
// constant and every kernel-offset loop has a fixed trip count, several times faster than runtime values
#define GEO_INIT const Geo g = GEO;

// the 3-d coordinates of flat index p in a [dims0, dims1, dims2] box (row-major)
__device__ __forceinline__ void unravel(I p, const int* dims, int* out) {
    out[2] = (int)(p % dims[2]);
    out[1] = (int)((p / dims[2]) % dims[1]);
    out[0] = (int)(p / ((I)dims[1] * dims[2]));
}

// offset of big-side position pos (3-d) in a [.., big0, big1, big2] plane, or -1 when padding
__device__ __forceinline__ I big_at(const Geo& g, const int* pos) {
    for (int i = 0; i < 3; ++i) if (pos[i] < 0 || pos[i] >= g.big[i]) return -1;
    return ((I)pos[0] * g.big[1] + pos[1]) * g.big[2] + pos[2];
}

// cols [G, B*P, Cg*K] <- x [B, G*Cg, *big] read through the padded windows
extern "C" __global__ void loom_im2col(const T* x, T* cols, I B, int G, int Cg) {
    GEO_INIT
    const I K = (I)g.k[0] * g.k[1] * g.k[2];
    const I P = (I)g.small[0] * g.small[1] * g.small[2];
    const I plane = (I)g.big[0] * g.big[1] * g.big[2];
    const I total = (I)G * B * P * Cg * K;
    for (I idx = blockIdx.x * (I)blockDim.x + threadIdx.x; idx < total;
         idx += (I)gridDim.x * blockDim.x) {
        const I j = idx % K;
        I r = idx / K;
        const I cg = r % Cg; r /= Cg;
        const I p = r % P; r /= P;
        const I b = r % B, grp = r / B;
        int o[3], jj[3], pos[3];
        unravel(p, g.small, o);
        unravel(j, g.k, jj);
        for (int i = 0; i < 3; ++i) pos[i] = o[i] * g.s[i] + jj[i] * g.d[i] - g.lo[i];
        const I at = big_at(g, pos);
        cols[idx] = at < 0 ? (T)0 : x[(b * G * Cg + grp * Cg + cg) * plane + at];
    }
}

// dx [B, G*Cg, *big] <- the sum of the cols entries that read each position, kernel offsets in order
extern "C" __global__ void loom_col2im(const T* cols, T* dx, I B, int G, int Cg) {
    GEO_INIT
    const I K = (I)g.k[0] * g.k[1] * g.k[2];
    const I P = (I)g.small[0] * g.small[1] * g.small[2];
    const I plane = (I)g.big[0] * g.big[1] * g.big[2];
    const I total = B * G * Cg * plane;
    for (I idx = blockIdx.x * (I)blockDim.x + threadIdx.x; idx < total;
         idx += (I)gridDim.x * blockDim.x) {
        const I q = idx % plane, bc = idx / plane;
        const I c = bc % (G * Cg), b = bc / (G * Cg);
        const I grp = c / Cg, cg = c % Cg;
        int pos[3];
        unravel(q, g.big, pos);
        const T* rows = cols + (grp * B + b) * P * Cg * K + cg * K;
        T acc = (T)0;
        for (int j0 = 0; j0 < g.k[0]; ++j0) {
            const int t0 = pos[0] + g.lo[0] - j0 * g.d[0];
            if (t0 < 0 || t0 % g.s[0] || t0 / g.s[0] >= g.small[0]) continue;
            for (int j1 = 0; j1 < g.k[1]; ++j1) {
                const int t1 = pos[1] + g.lo[1] - j1 * g.d[1];
                if (t1 < 0 || t1 % g.s[1] || t1 / g.s[1] >= g.small[1]) continue;
                for (int j2 = 0; j2 < g.k[2]; ++j2) {
                    const int t2 = pos[2] + g.lo[2] - j2 * g.d[2];
                    if (t2 < 0 || t2 % g.s[2] || t2 / g.s[2] >= g.small[2]) continue;
                    const I o = ((I)(t0 / g.s[0]) * g.small[1] + t1 / g.s[1]) * g.small[2] + t2 / g.s[2];
                    const I j = ((I)j0 * g.k[1] + j1) * g.k[2] + j2;
                    acc += rows[o * Cg * K + j];
                }
            }
        }
        dx[idx] = acc;
    }
}

// y, arg [B*C, *small] <- the first maximal element of each window (NaN counts as the maximum,
// padding as -inf: numpy.argmax over the padded window, row-major)
extern "C" __global__ void loom_max_pool(const T* x, T* y, int* arg, I BC) {
    GEO_INIT
    const I P = (I)g.small[0] * g.small[1] * g.small[2];
    const I plane = (I)g.big[0] * g.big[1] * g.big[2];
    for (I idx = blockIdx.x * (I)blockDim.x + threadIdx.x; idx < BC * P;
         idx += (I)gridDim.x * blockDim.x) {
        const I p = idx % P, bc = idx / P;
        int o[3];
        unravel(p, g.small, o);
        T best = (T)0;
        int at = -1, j = 0;
        for (int j0 = 0; j0 < g.k[0]; ++j0) for (int j1 = 0; j1 < g.k[1]; ++j1) for (int j2 = 0; j2 < g.k[2]; ++j2, ++j) {
            const int pos[3] = {o[0] * g.s[0] + j0 - g.lo[0], o[1] * g.s[1] + j1 - g.lo[1], o[2] * g.s[2] + j2 - g.lo[2]};
            const I q = big_at(g, pos);
            const T v = q < 0 ? (T)__int_as_float(0xff800000u) : x[bc * plane + q];   // padding: -inf
            if (at < 0 || (!isnan(best) && (isnan(v) || v > best))) { best = v; at = j; }
        }
        y[idx] = best;
        arg[idx] = at;
    }
}

// dx [B*C, *big] <- for each position, dy of every window whose maximum it was, offsets in order
extern "C" __global__ void loom_max_pool_grad(const T* dy, const int* arg, T* dx, I BC) {
    GEO_INIT
    const I P = (I)g.small[0] * g.small[1] * g.small[2];
    const I plane = (I)g.big[0] * g.big[1] * g.big[2];
    for (I idx = blockIdx.x * (I)blockDim.x + threadIdx.x; idx < BC * plane;
         idx += (I)gridDim.x * blockDim.x) {
        const I q = idx % plane, bc = idx / plane;
        int pos[3];
        unravel(q, g.big, pos);
        T acc = (T)0;
        int j = 0;
        for (int j0 = 0; j0 < g.k[0]; ++j0) for (int j1 = 0; j1 < g.k[1]; ++j1) for (int j2 = 0; j2 < g.k[2]; ++j2, ++j) {
            const int t[3] = {pos[0] + g.lo[0] - j0, pos[1] + g.lo[1] - j1, pos[2] + g.lo[2] - j2};
            bool inside = true;
            for (int i = 0; i < 3; ++i)
                inside = inside && t[i] >= 0 && t[i] % g.s[i] == 0 && t[i] / g.s[i] < g.small[i];
            if (!inside) continue;
            const I o = bc * P + ((I)(t[0] / g.s[0]) * g.small[1] + t[1] / g.s[1]) * g.small[2] + t[2] / g.s[2];
            if (arg[o] == j) acc += dy[o];
        }
        dx[idx] = acc;
    }
}

"""

_LAYOUT_SOURCE = r"""
// y [B, G*Cg, P] <- act(rows[g, b*P + p, cg] + bias[c]): a convolution's GEMM rows as channels-first
// output, with the bias and relu (numpy.maximum(z, 0): NaN passes, -0.0 becomes +0.0) or no activation
extern "C" __global__ void loom_rows_to_channels(const T* rows, const T* bias, T* y, I B, I P, int G, int Cg,
                                                 int has_bias, int relu) {
    const I C = (I)G * Cg, total = B * C * P;
    for (I idx = blockIdx.x * (I)blockDim.x + threadIdx.x; idx < total; idx += (I)gridDim.x * blockDim.x) {
        const I p = idx % P, c = (idx / P) % C, b = idx / (P * C);
        T z = rows[(((c / Cg) * B + b) * P + p) * Cg + c % Cg];
        if (has_bias) z = z + bias[c];
        y[idx] = (!relu || z > (T)0 || isnan(z)) ? z : (T)0;
    }
}

// rows[g, b*P + p, cg] <- dy[b, c, p] * (y[b, c, p] > 0) (relu) or dy: the upstream gradient as GEMM rows
extern "C" __global__ void loom_channels_to_rows(const T* dy, const T* y, T* rows, I B, I P, int G, int Cg,
                                                 int relu) {
    const I C = (I)G * Cg, total = B * C * P;
    for (I idx = blockIdx.x * (I)blockDim.x + threadIdx.x; idx < total; idx += (I)gridDim.x * blockDim.x) {
        const I cg = idx % Cg, r = idx / Cg, p = r % P, b = (r / P) % B, g = r / (P * B);
        const I at = (b * C + g * Cg + cg) * P + p;
        rows[idx] = relu ? dy[at] * (T)(y[at] > (T)0) : dy[at];
    }
}
"""

_THREADS = 256
ARG_DTYPE = np.dtype(np.int32)    # max_pool's window offsets


@lru_cache(maxsize=256)
def _module(dtype: np.dtype, wide: bool, geo: tuple):
    """The kernels for one dtype and geometry (geo: 18 ints, or () for the layout kernels), indexing
    with 32-bit ints unless some array has 2^30 elements or more (64-bit division costs several times
    more, and these kernels divide for every element)."""
    head = f"typedef {C_TYPES[dtype]} T;\ntypedef {'long long' if wide else 'int'} I;\n"
    if not geo:
        return cupy.RawModule(code=head + _LAYOUT_SOURCE, options=OPTIONS)
    rows = ", ".join("{" + ", ".join(map(str, geo[i:i + 3])) + "}" for i in range(0, 18, 3))
    return cupy.RawModule(code=head + f"#define GEO {{{rows}}}\n" + _SOURCE, options=OPTIONS)


def _geo(k, s, d, lo, big, small) -> tuple:
    """The kernels' GEO: each N-d tuple (N <= 3) as 3-d with leading 1s (0 for lo), 18 ints."""
    out = []
    for value, fill in ((k, 1), (s, 1), (d, 1), (lo, 0), (big, 1), (small, 1)):
        out += [int(v) for v in (fill,) * (3 - len(value)) + tuple(value)]
    return tuple(out)


def _launch(name: str, dtype, arrays, counts: tuple, args: tuple, geo: tuple) -> None:
    """Run kernel `name` over `arrays[-1]`'s elements with arguments arrays, then `counts` (sizes, in
    the kernel's index type I), then `args` (ints); `geo` picks the compiled geometry."""
    total = arrays[-1].size
    if total:
        wide = max(a.size for a in arrays) >= 2 ** 30   # margin for the grid-stride step
        index = np.int64 if wide else np.int32
        blocks = min((total + _THREADS - 1) // _THREADS, 65536)
        _module(np.dtype(dtype), wide, geo).get_function(name)((blocks,), (_THREADS,),
                                                              tuple(arrays) + tuple(map(index, counts)) + args)


def supports(*arrays: Array) -> bool:
    """Whether these kernels take the arrays: C-contiguous float32/float64 of one dtype, N <= 3."""
    dtype = arrays[0].dtype
    return (dtype in C_TYPES and all(a.dtype == dtype and a.flags.c_contiguous for a in arrays)
            and arrays[0].ndim <= 5)


def im2col(x: Array, geom: Any) -> Array:
    """x [B, C, *big] -> cols [G, B*P, C/G*prod(k)] (conv._im2col of the padded input); geom is a
    loom.nn.layers.conv.Geometry."""
    with translating("im2col", x):
        b, c = x.shape[:2]
        G = geom.groups
        P, K = int(np.prod(geom.small)), int(np.prod(geom.k))
        cols = cupy.empty((G, b * P, c // G * K), dtype=x.dtype)
        g = _geo(geom.k, geom.s, geom.d, geom.lo, geom.big, geom.small)
        _launch("loom_im2col", x.dtype, (x, cols), (b,), (np.int32(G), np.int32(c // G)), g)
        return cols


def col2im(cols: Array, b: int, c: int, geom: Any) -> Array:
    """cols [G, B*P, C/G*prod(k)] -> [B, C, *big] (conv._col2im: the adjoint of im2col); geom is a
    loom.nn.layers.conv.Geometry."""
    with translating("col2im", cols):
        dx = cupy.empty((b, c) + tuple(geom.big), dtype=cols.dtype)
        g = _geo(geom.k, geom.s, geom.d, geom.lo, geom.big, geom.small)
        _launch("loom_col2im", cols.dtype, (cols, dx), (b,), (np.int32(geom.groups), np.int32(c // geom.groups)), g)
        return dx


ROW_ACTIVATIONS = ("linear", "relu")   # what rows_to_channels / channels_to_rows fuse


def rows_to_channels(rows: Array, bias: Array | None, fn: str, b: int, small: tuple[int, ...]) -> Array:
    """rows [G, B*P, C/G] (+ bias [C]) -> fn(...) as [B, C, *small], fn in ROW_ACTIVATIONS."""
    with translating("convolution output", rows):
        G, _, cg = rows.shape
        y = cupy.empty((b, G * cg) + tuple(small), dtype=rows.dtype)
        P = y.size // (b * G * cg)
        _launch("loom_rows_to_channels", rows.dtype, (rows, rows if bias is None else bias, y), (b, P),
                (np.int32(G), np.int32(cg), np.int32(bias is not None), np.int32(fn == "relu")), ())
        return y


def channels_to_rows(dy: Array, y: Array, fn: str, groups: int) -> Array:
    """dy [B, C, *sp] -> fn's gradient (given the output y) as GEMM rows [G, B*P, C/G]."""
    with translating("convolution gradient", dy):
        b, c = dy.shape[:2]
        P = dy.size // (b * c)
        rows = cupy.empty((groups, b * P, c // groups), dtype=dy.dtype)
        _launch("loom_channels_to_rows", dy.dtype, (dy, y, rows), (b, P),
                (np.int32(groups), np.int32(c // groups), np.int32(fn == "relu")), ())
        return rows


def max_pool(x: Array, k: tuple[int, ...], s: tuple[int, ...], p: tuple[int, ...],
             out: tuple[int, ...]) -> tuple[Array, Array]:
    """x [B, C, *size] -> (y [B, C, *out], arg int32 [B, C, *out]: the window offset of each maximum)."""
    with translating("max pool", x):
        y = cupy.empty(x.shape[:2] + tuple(out), dtype=x.dtype)
        arg = cupy.empty(y.shape, dtype=ARG_DTYPE)
        g = _geo(k, s, (1,) * len(k), p, x.shape[2:], out)
        _launch("loom_max_pool", x.dtype, (x, y, arg), (x.shape[0] * x.shape[1],), (), g)
        return y, arg


def max_pool_grad(dy: Array, arg: Array, k: tuple[int, ...], s: tuple[int, ...], p: tuple[int, ...],
                  size: tuple[int, ...]) -> Array:
    """dy, arg [B, C, *out] -> dx [B, C, *size]: each window's gradient to its maximum."""
    with translating("max pool gradient", dy):
        dx = cupy.empty(dy.shape[:2] + tuple(size), dtype=dy.dtype)
        g = _geo(k, s, (1,) * len(k), p, size, dy.shape[2:])
        _launch("loom_max_pool_grad", dy.dtype, (dy, arg, dx), (dy.shape[0] * dy.shape[1],), (), g)
        return dx
