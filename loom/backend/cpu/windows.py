"""The sliding-window data movement of convolutions and pooling as compiled loops (numba, the optional
`loom[cpu]` extra, loaded by loom.backend.cpu.jit): protocols.WindowKernels on the CPU.

Why: at the batch-1 sizes of online learning (benchmarks/online.py) a convnet's tick is mostly the
NumPy form's Python-level work and temporaries (pad, a strided view copied by reshape, the im2col
adjoint's strided add per kernel offset, the pool's argmax and take_along_axis, where and the tile
transpose), not arithmetic. One loop per operation does the same work in one pass.

The same bits as the references in loom/kernels/windows.py and loom/nn/layers/pool.py, in both modes:
im2col, the max-pool forward and rows_to_channels' layout only move values (with the reference's
bias add and relu: NaN passes, -0.0 becomes 0.0 as in numpy.maximum); col2im and the max-pool backward add each position's
contributions starting from 0 in the references' order (kernel offsets in row-major order: the
offset loop is the outer one, so a position's contributions arrive in offset order), strict IEEE
(no fastmath). They mirror loom/backend/cuda/windows.py. Geometry is N-d with N <= 3; 1-d and 2-d
problems run as 3-d ones with leading spatial dimensions of size 1. Single-threaded.
"""
from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

from .. import Array
from . import jit as cpu_jit

_LOOPS = ("_im2col", "_col2im", "_max_pool", "_max_pool_grad", "_rows_to_channels", "_channels_to_rows")
_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
ROW_ACTIVATIONS = ("linear", "relu")   # what rows_to_channels / channels_to_rows fuse
ARG_DTYPE = np.dtype(np.int32)         # max_pool's window offsets


def available() -> bool:
    return cpu_jit.compiled(globals()) or cpu_jit.compile_module(globals(), plain=_LOOPS)


def _three(value: tuple[int, ...], fill: int) -> tuple[int, int, int]:
    """An N-d tuple (N <= 3) as 3-d, with leading `fill`s."""
    return tuple(int(v) for v in (fill,) * (3 - len(value)) + tuple(value))


@functools.lru_cache(maxsize=512)
def _geometry(k: tuple, s: tuple, d: tuple, lo: tuple, small: tuple) -> tuple:
    """The loops' geometry arguments (each 3-d), computed once per layer shape: at batch 1 the
    conversion costs as much as a loop."""
    return _three(k, 1), _three(s, 1), _three(d, 1), _three(lo, 0), _three(small, 1)


def _box(a: np.ndarray, lead: int) -> np.ndarray:
    """a [*lead axes, *spatial (<= 3)] viewed as [*lead, s0, s1, s2] (a reshape of a contiguous array)."""
    n = a.ndim - lead
    return a if n == 3 else a.reshape(a.shape[:lead] + (1,) * (3 - n) + a.shape[lead:])


class CPUWindows:
    """protocols.WindowKernels for NumPy arrays (CPUBackend.windows where numba is installed)."""

    ROW_ACTIVATIONS = ROW_ACTIVATIONS
    ARG_DTYPE = ARG_DTYPE

    def supports(self, *arrays: Array) -> bool:
        """Whether the loops take the arrays: C-contiguous NumPy float32/float64 of one dtype, N <= 3
        spatial dimensions (and the loops compile here)."""
        first = arrays[0]
        return (type(first) is np.ndarray and first.dtype in _DTYPES and first.ndim <= 5
                and all(type(a) is np.ndarray and a.dtype == first.dtype and a.flags.c_contiguous for a in arrays)
                and available())

    def im2col(self, x: Array, geom: Any) -> Array:
        """x [B, C, *big] -> cols [G, B*P, C/G*prod(k)] (the padded input's patches); geom is a
        loom.kernels.windows.Geometry."""
        b, c = x.shape[:2]
        G = geom.groups
        cols = np.empty((G, b * math.prod(geom.small), c // G * math.prod(geom.k)), dtype=x.dtype)
        _im2col(_box(x, 2), cols, G, c // G, *_geometry(geom.k, geom.s, geom.d, geom.lo, geom.small))
        return cols

    def col2im(self, cols: Array, b: int, c: int, geom: Any) -> Array:
        """cols [G, B*P, C/G*prod(k)] -> [B, C, *big]: the adjoint of im2col (then the crop)."""
        dx = np.zeros((b, c) + tuple(geom.big), dtype=cols.dtype)
        G = geom.groups
        _col2im(cols, _box(dx, 2), G, c // G, *_geometry(geom.k, geom.s, geom.d, geom.lo, geom.small))
        return dx

    def rows_to_channels(self, rows: Array, bias: Array | None, fn: str, b: int, small: tuple[int, ...]) -> Array:
        """rows [G, B*P, C/G] (+ bias [C]) -> fn(...) as [B, C, *small], fn in ROW_ACTIVATIONS."""
        G, _, cg = rows.shape
        y = np.empty((b, G * cg) + tuple(small), dtype=rows.dtype)
        has_bias = bias is not None
        _rows_to_channels(rows, bias if has_bias else rows[0, 0], y.reshape(b, G * cg, -1), has_bias, fn == "relu")
        return y

    def channels_to_rows(self, dy: Array, y: Array, fn: str, groups: int) -> Array:
        """dy [B, C, *sp] -> fn's gradient (given the output y) as GEMM rows [G, B*P, C/G]."""
        b, c = dy.shape[:2]
        p = dy.size // (b * c) if dy.size else 0
        rows = np.empty((groups, b * p, c // groups), dtype=dy.dtype)
        _channels_to_rows(dy.reshape(b, c, p), y.reshape(b, c, p), rows, fn == "relu", dy.dtype.type(0))
        return rows

    def max_pool(self, x: Array, k: tuple[int, ...], s: tuple[int, ...], p: tuple[int, ...],
                 out: tuple[int, ...]) -> tuple[Array, Array]:
        """x [B, C, *size] -> (y [B, C, *out], arg int32 [B, C, *out]: the window offset of each maximum)."""
        y = np.empty(x.shape[:2] + tuple(out), dtype=x.dtype)
        arg = np.empty(y.shape, dtype=ARG_DTYPE)
        k3, s3, _, p3, _ = _geometry(k, s, k, p, out)
        _max_pool(_box(x, 2), _box(y, 2), _box(arg, 2), k3, s3, p3, x.dtype.type(-np.inf))
        return y, arg

    def max_pool_grad(self, dy: Array, arg: Array, k: tuple[int, ...], s: tuple[int, ...], p: tuple[int, ...],
                      size: tuple[int, ...]) -> Array:
        """dy, arg [B, C, *out] -> dx [B, C, *size]: each window's gradient to its maximum."""
        dx = np.zeros(dy.shape[:2] + tuple(size), dtype=dy.dtype)
        k3, s3, _, p3, _ = _geometry(k, s, k, p, dy.shape[2:])
        _max_pool_grad(_box(dy, 2), _box(np.ascontiguousarray(arg), 2), _box(dx, 2), k3, s3, p3)
        return dx


# --- the loops (module level, for numba's on-disk cache) -----------------------------------------

def _im2col(x, cols, G, Cg, k, s, d, lo, small):
    # offsets outer and positions inner: each innermost loop reads a row of x in order
    B = x.shape[0]
    P = small[0] * small[1] * small[2]
    K = k[0] * k[1] * k[2]
    for grp in range(G):
        for b in range(B):
            for cg in range(Cg):
                c = grp * Cg + cg
                col = cg * K
                for j0 in range(k[0]):
                    for j1 in range(k[1]):
                        for j2 in range(k[2]):
                            for o0 in range(small[0]):
                                i0 = o0 * s[0] + j0 * d[0] - lo[0]
                                for o1 in range(small[1]):
                                    i1 = o1 * s[1] + j1 * d[1] - lo[1]
                                    row = b * P + (o0 * small[1] + o1) * small[2]
                                    if i0 < 0 or i0 >= x.shape[2] or i1 < 0 or i1 >= x.shape[3]:
                                        for o2 in range(small[2]):
                                            cols[grp, row + o2, col] = 0
                                        continue
                                    for o2 in range(small[2]):
                                        i2 = o2 * s[2] + j2 * d[2] - lo[2]
                                        if 0 <= i2 < x.shape[4]:
                                            cols[grp, row + o2, col] = x[b, c, i0, i1, i2]
                                        else:
                                            cols[grp, row + o2, col] = 0
                            col += 1


def _col2im(cols, dx, G, Cg, k, s, d, lo, small):
    # dx starts at zero; offsets outermost per (b, c): each position sums its parts in offset order
    B = dx.shape[0]
    P = small[0] * small[1] * small[2]
    K = k[0] * k[1] * k[2]
    for b in range(B):
        for c in range(G * Cg):
            grp, cg = c // Cg, c % Cg
            j = 0
            for j0 in range(k[0]):
                for j1 in range(k[1]):
                    for j2 in range(k[2]):
                        col = cg * K + j
                        for o0 in range(small[0]):
                            i0 = o0 * s[0] + j0 * d[0] - lo[0]
                            if i0 < 0 or i0 >= dx.shape[2]:
                                continue
                            for o1 in range(small[1]):
                                i1 = o1 * s[1] + j1 * d[1] - lo[1]
                                if i1 < 0 or i1 >= dx.shape[3]:
                                    continue
                                for o2 in range(small[2]):
                                    i2 = o2 * s[2] + j2 * d[2] - lo[2]
                                    if i2 < 0 or i2 >= dx.shape[4]:
                                        continue
                                    row = b * P + (o0 * small[1] + o1) * small[2] + o2
                                    dx[b, c, i0, i1, i2] += cols[grp, row, col]
                        j += 1


def _max_pool(x, y, arg, k, s, lo, low):
    # the first maximal element of each window in row-major order; NaN counts as the maximum and
    # padding as -inf (low: -inf in x's dtype; numpy.argmax over the -inf padded window)
    for b in range(x.shape[0]):
        for c in range(x.shape[1]):
            for o0 in range(y.shape[2]):
                for o1 in range(y.shape[3]):
                    for o2 in range(y.shape[4]):
                        best = x[b, c, 0, 0, 0]
                        at = -1
                        j = 0
                        for j0 in range(k[0]):
                            i0 = o0 * s[0] + j0 - lo[0]
                            for j1 in range(k[1]):
                                i1 = o1 * s[1] + j1 - lo[1]
                                for j2 in range(k[2]):
                                    i2 = o2 * s[2] + j2 - lo[2]
                                    if 0 <= i0 < x.shape[2] and 0 <= i1 < x.shape[3] and 0 <= i2 < x.shape[4]:
                                        v = x[b, c, i0, i1, i2]
                                    else:
                                        v = low
                                    if at < 0 or (not np.isnan(best) and (np.isnan(v) or v > best)):
                                        best = v
                                        at = j
                                    j += 1
                        y[b, c, o0, o1, o2] = best
                        arg[b, c, o0, o1, o2] = at


def _max_pool_grad(dy, arg, dx, k, s, lo):
    # dx starts at zero; offsets outermost per (b, c), as _col2im
    for b in range(dy.shape[0]):
        for c in range(dy.shape[1]):
            j = 0
            for j0 in range(k[0]):
                for j1 in range(k[1]):
                    for j2 in range(k[2]):
                        for o0 in range(dy.shape[2]):
                            i0 = o0 * s[0] + j0 - lo[0]
                            if i0 < 0 or i0 >= dx.shape[2]:
                                continue
                            for o1 in range(dy.shape[3]):
                                i1 = o1 * s[1] + j1 - lo[1]
                                if i1 < 0 or i1 >= dx.shape[3]:
                                    continue
                                for o2 in range(dy.shape[4]):
                                    i2 = o2 * s[2] + j2 - lo[2]
                                    if i2 < 0 or i2 >= dx.shape[4]:
                                        continue
                                    if arg[b, c, o0, o1, o2] == j:
                                        dx[b, c, i0, i1, i2] += dy[b, c, o0, o1, o2]
                        j += 1


def _rows_to_channels(rows, bias, y, has_bias, relu):
    # y [B, C, P] <- rows[g, b*P + p, cg] (+ bias[c]), then numpy.maximum(z, 0) for relu: NaN passes,
    # -0.0 becomes +0.0
    G, Cg = rows.shape[0], rows.shape[2]
    B, P = y.shape[0], y.shape[2]
    for b in range(B):
        for c in range(G * Cg):
            grp, cg = c // Cg, c % Cg
            for p in range(P):
                z = rows[grp, b * P + p, cg]
                if has_bias:
                    z = z + bias[c]
                if relu and not (z > 0 or np.isnan(z)):
                    y[b, c, p] = 0
                else:
                    y[b, c, p] = z


def _channels_to_rows(dy, y, rows, relu, zero):
    # rows[g, b*P + p, cg] <- dy[b, c, p] * (y[b, c, p] > 0) for relu, else dy (zero: 0 in dy's dtype,
    # so that NaN and inf times 0 and the sign of 0 follow the reference)
    G, Cg = rows.shape[0], rows.shape[2]
    B, P = dy.shape[0], dy.shape[2]
    for b in range(B):
        for c in range(G * Cg):
            grp, cg = c // Cg, c % Cg
            for p in range(P):
                v = dy[b, c, p]
                if relu and not y[b, c, p] > 0:
                    v = v * zero
                rows[grp, b * P + p, cg] = v
