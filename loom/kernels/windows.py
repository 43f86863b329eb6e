"""Sliding windows for convolution and pooling: the N-d convolution engine's pieces (pad, the strided
window view and its adjoint, im2col and col2im, the correlation and its adjoint as GEMMs) written
with the array module, and the dispatch to the owning backend's window kernels
(protocols.WindowKernels: loom/backend/cuda/windows.py, the same bits) where it has them.

Used by loom/nn/layers/conv.py (which explains the engine) and pool.py.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from .. import backend
from ..backend import Array
from ..backend.protocols import WindowKernels
from . import ops

# --- window helpers --------------------------------------------------------

def pad(xp: ModuleType, x: Array, lo: tuple[int, ...], hi: tuple[int, ...], value: float = 0.0) -> Array:
    """x [B, C, *L] padded by lo/hi per spatial dimension with a constant."""
    if not any(lo) and not any(hi):
        return x
    # a filled array and one slice assignment: np.pad costs ~40 us of Python per call at these sizes
    shape = tuple(x.shape[:2]) + tuple(n + a + b for n, a, b in zip(x.shape[2:], lo, hi))
    out = xp.full(shape, value, dtype=x.dtype)
    out[(slice(None), slice(None)) + tuple(slice(a, a + n) for a, n in zip(lo, x.shape[2:]))] = x
    return out


def crop(xp: ModuleType, x: Array, lo: tuple[int, ...], size: tuple[int, ...]) -> Array:
    """The inverse of pad: x [B, C, *Lp] -> [B, C, *size] starting at lo."""
    if tuple(x.shape[2:]) == tuple(size):
        return x
    idx = (slice(None), slice(None)) + tuple(slice(a, a + n) for a, n in zip(lo, size))
    return xp.ascontiguousarray(x[idx])


def windows(xp: ModuleType, x: Array, out: tuple[int, ...], k: tuple[int, ...], s: tuple[int, ...],
            d: tuple[int, ...]) -> Array:
    """Read-only view [B, C, *out, *k] of x [B, C, *L]: element (o, j) is x[o*s + j*d] per dim.

    The caller guarantees (out-1)*s + (k-1)*d < L in every dimension."""
    n = len(k)
    st = x.strides
    shape = tuple(x.shape[:2]) + tuple(out) + tuple(k)
    strides = (st[0], st[1]) + tuple(st[2 + i] * s[i] for i in range(n)) + tuple(st[2 + i] * d[i] for i in range(n))
    return xp.lib.stride_tricks.as_strided(x, shape, strides)


def _kernels(*arrays: Array) -> WindowKernels | None:
    """The owning backend's sliding-window kernels (loom/backend/cuda/windows.py: im2col, col2im, max
    pooling, the same bits as the code here) when they take `arrays`, else None."""
    kernels = backend.of(arrays[0]).windows
    return kernels if kernels is not None and kernels.supports(*arrays) else None


def rows_to_channels(rows: Array, bias: Array | None, act: str, b: int, small: tuple[int, ...]) -> Array | None:
    """activation(from_rows(rows) + bias) in one kernel where the backend has one for `act`, else None
    (the caller runs the reference: from_rows, the bias, the activation)."""
    kernels = _kernels(rows)
    if kernels is None or act not in kernels.ROW_ACTIVATIONS or (bias is not None and not _kernels(rows, bias)):
        return None
    return kernels.rows_to_channels(rows, bias, act, b, small)


def channels_to_rows(dy: Array, y: Array, act: str, groups: int) -> Array | None:
    """to_rows(the pre-activation gradient from dy and the output y) in one kernel where the backend
    has one for `act`, else None."""
    kernels = _kernels(dy, y)
    if kernels is None or act not in kernels.ROW_ACTIVATIONS:
        return None
    return kernels.channels_to_rows(dy, y, act, groups)


def max_pool(x: Array, k: tuple[int, ...], s: tuple[int, ...], p: tuple[int, ...],
             out: tuple[int, ...]) -> tuple[Array, Array] | None:
    """(max pooled x, the argmax) from the backend's kernel, or None (the caller's reference runs)."""
    kernels = _kernels(x)
    return None if kernels is None else kernels.max_pool(x, k, s, p, out)


def max_pool_grad(dy: Array, arg: Array, k: tuple[int, ...], s: tuple[int, ...], p: tuple[int, ...],
                  size: tuple[int, ...]) -> Array | None:
    """max_pool's input gradient from the backend's kernel where it wrote `arg`, or None."""
    kernels = _kernels(dy)
    if kernels is None or arg.dtype != kernels.ARG_DTYPE:
        return None
    return kernels.max_pool_grad(dy, arg, k, s, p, size)


def windows_adjoint(xp: ModuleType, parts: Array, size: tuple[int, ...], s: tuple[int, ...],
                    d: tuple[int, ...]) -> Array:
    """The adjoint of `windows`: parts [B, C, *out, *k] summed into a zero array [B, C, *size] at
    the positions the windows read (overlaps accumulate, in a fixed kernel-offset order)."""
    n = len(s)
    out_shape, k = parts.shape[2:2 + n], parts.shape[2 + n:]
    acc = xp.zeros(tuple(parts.shape[:2]) + tuple(size), dtype=parts.dtype)
    for j in np.ndindex(*k):
        idx = (slice(None), slice(None)) + tuple(
            slice(j[i] * d[i], j[i] * d[i] + (out_shape[i] - 1) * s[i] + 1, s[i]) for i in range(n))
        acc[idx] += parts[(Ellipsis,) + j]
    return acc


# --- the N-d convolution engine -------------------------------------------------------------------

@dataclass(frozen=True)
class Geometry:
    """A convolution from the `big` side (spatial size big, padded by lo/hi) to the `small` side
    (spatial size small): small[o] reads big_padded[o*s + j*d] for kernel offsets j < k."""
    k: tuple
    s: tuple
    d: tuple
    lo: tuple
    hi: tuple
    big: tuple
    small: tuple
    groups: int

    @property
    def padded(self) -> tuple[int, ...]:
        return tuple(n + a + b for n, a, b in zip(self.big, self.lo, self.hi))


def to_rows(t: Array, groups: int) -> Array:
    """[B, F, *sp] -> [G, B*prod(sp), F/G] (one GEMM row per batch element and position)."""
    b, f = t.shape[:2]
    p = math.prod(t.shape[2:])
    return t.reshape(b, groups, f // groups, p).transpose(1, 0, 3, 2).reshape(groups, b * p, f // groups)


def from_rows(m: Array, b: int, sp: tuple[int, ...]) -> Array:
    """[G, B*prod(sp), F/G] -> [B, F, *sp] (the inverse of _to_rows)."""
    g, _, fg = m.shape
    return m.reshape(g, b, math.prod(sp), fg).transpose(1, 0, 3, 2).reshape((b, g * fg) + tuple(sp))


def _im2col(xp, xpad, g: Geometry):
    """xpad [B, C, *padded] -> cols [G, B*prod(small), C/G*prod(k)]."""
    b, c = xpad.shape[:2]
    n, G = len(g.k), g.groups
    w = windows(xp, xpad, g.small, g.k, g.s, g.d).reshape((b, G, c // G) + g.small + g.k)
    perm = (1, 0) + tuple(range(3, 3 + n)) + (2,) + tuple(range(3 + n, 3 + 2 * n))  # [G, B, *small, Cg, *k]
    return w.transpose(perm).reshape(G, b * math.prod(g.small), (c // G) * math.prod(g.k))


def col2im(xp: ModuleType, cols: Array, b: int, c: int, g: Geometry) -> Array:
    """The adjoint of _im2col followed by the crop: cols -> [B, C, *big]."""
    kernels = _kernels(cols)
    if kernels is not None:
        return kernels.col2im(cols, b, c, g)
    return col2im_arrays(xp, cols, b, c, g)


def col2im_arrays(xp: ModuleType, cols: Array, b: int, c: int, g: Geometry) -> Array:
    """_col2im with array-module operations only (one strided add per kernel offset)."""
    n, G = len(g.k), g.groups
    r = cols.reshape((G, b) + g.small + (c // G,) + g.k)
    perm = (1, 0, 2 + n) + tuple(range(2, 2 + n)) + tuple(range(3 + n, 3 + 2 * n))  # [B, G, Cg, *small, *k]
    parts = r.transpose(perm).reshape((b, c) + g.small + g.k)
    return crop(xp, windows_adjoint(xp, parts, g.padded, g.s, g.d), g.lo, g.big)


def correlate_rows(xp: ModuleType, big: Array, wm: Array, g: Geometry) -> tuple[Array, Array]:
    """big [B, Ci, *big] with weight rows wm [G, Co/G, Ci/G*prod(k)] -> (GEMM rows [G, B*P, Co/G], cols)."""
    cols = im2col(xp, big, g)
    return ops.matmul(cols, wm.transpose(0, 2, 1)), cols


def correlate(xp: ModuleType, big: Array, wm: Array, g: Geometry) -> tuple[Array, Array]:
    """big [B, Ci, *big] with weight rows wm [G, Co/G, Ci/G*prod(k)] -> ([B, Co, *small], cols)."""
    out, cols = correlate_rows(xp, big, wm, g)
    return from_rows(out, big.shape[0], g.small), cols


def correlate_adjoint(xp: ModuleType, small: Array, wm: Array, g: Geometry, ci: int) -> tuple[Array, Array]:
    """small [B, Co, *small] -> ([B, Ci, *big], rows): the input gradient of `correlate`."""
    rows = to_rows(small, g.groups)                       # [G, B*P, Co/G]
    return correlate_adjoint_rows(xp, rows, wm, g, small.shape[0], ci), rows


def correlate_adjoint_rows(xp: ModuleType, rows: Array, wm: Array, g: Geometry, b: int, ci: int) -> Array:
    """GEMM rows [G, B*P, Co/G] -> [B, Ci, *big]: the transposed GEMM, then col2im."""
    return col2im(xp, ops.matmul(rows, wm), b, ci, g)     # cols [G, B*P, Ci/G*prod(k)]


def im2col(xp: ModuleType, big: Array, g: Geometry) -> Array:
    """The padded input's patches as GEMM rows [G, B*P, Ci/G*prod(k)]."""
    kernels = _kernels(big)
    if kernels is not None:
        return kernels.im2col(big, g)
    return im2col_arrays(xp, big, g)


def im2col_arrays(xp: ModuleType, big: Array, g: Geometry) -> Array:
    """im2col with array-module operations only (pad, strided window view, copy)."""
    return _im2col(xp, pad(xp, big, g.lo, g.hi), g)


def weight_grad(xp: ModuleType, rows: Array, cols: Array, shape: tuple[int, ...]) -> Array:
    """d weight from the small side's rows and the big side's cols: [G, Co/G, Ci/G*prod(k)] -> shape
    (a product over the batch: ops.grad_matmul)."""
    if rows.shape[0] == 1:      # one group: a 2-D product, which every BLAS takes transposed as it is
        return ops.grad_matmul(rows[0].T, cols[0]).reshape(shape)
    # a contiguous transpose: NumPy's stacked matmul of a transposed view can miss BLAS (~6x slower)
    return ops.grad_matmul(xp.ascontiguousarray(rows.transpose(0, 2, 1)), cols).reshape(shape)
