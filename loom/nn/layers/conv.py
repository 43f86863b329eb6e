"""Convolutions (conv1d/2d/3d) and transposed convolutions (conv_transpose1d/2d/3d), channels first.

Both run on one N-d engine built from two adjoint pieces:
  correlate:          im2col (a strided window view of the padded input, copied into rows), then
                      one GEMM batched over groups;            [B, Ci, *big] -> [B, Co, *small]
  correlate_adjoint:  the transposed GEMM, then col2im (scatter-add the rows back, one strided
                      slice per kernel offset), then crop;     [B, Co, *small] -> [B, Ci, *big]
A convolution runs correlate forward and correlate_adjoint backward; a transposed convolution is
the adjoint of a convolution, so it runs them the other way round with the same weight layout.

Parameters as in torch.nn.ConvNd / ConvTransposeNd: conv weight [filters, C/groups, *k],
transposed weight [C, filters/groups, *k], bias [filters]. Window helpers (`windows`,
`windows_adjoint`, `pad`, `crop`) are shared with pool.py.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from ... import backend
from ...backend import Array
from ...kernels import ops
from ...kernels.quant import affine as quant
from . import activation, linear
from .base import BuildContext, ForwardContext, Layer, Spec, dims, register
from .dense import init_bound

AXIS_NAMES = {1: "L", 2: "H, W", 3: "D, H, W"}


# --- window helpers (also used by pool.py) --------------------------------------------------------

def pad(xp: ModuleType, x: Array, lo: tuple[int, ...], hi: tuple[int, ...], value: float = 0.0) -> Array:
    """x [B, C, *L] padded by lo/hi per spatial dimension with a constant."""
    if not any(lo) and not any(hi):
        return x
    return xp.pad(x, [(0, 0), (0, 0)] + list(zip(lo, hi)), constant_values=value)


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


def window_kernels(*arrays: Array) -> ModuleType | None:
    """The owning backend's sliding-window kernels (loom/backend/cuda/windows.py: im2col, col2im, max
    pooling, the same bits as the code here) when they take `arrays`, else None."""
    kernels = getattr(backend.of(arrays[0]), "windows", None)
    return kernels if kernels is not None and kernels.supports(*arrays) else None


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


def _to_rows(t, groups):
    """[B, F, *sp] -> [G, B*prod(sp), F/G] (one GEMM row per batch element and position)."""
    b, f = t.shape[:2]
    p = math.prod(t.shape[2:])
    return t.reshape(b, groups, f // groups, p).transpose(1, 0, 3, 2).reshape(groups, b * p, f // groups)


def _from_rows(m, b, sp):
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


def _col2im(xp, cols, b, c, g: Geometry):
    """The adjoint of _im2col followed by the crop: cols -> [B, C, *big]."""
    kernels = window_kernels(cols)
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
    return _from_rows(out, big.shape[0], g.small), cols


def correlate_adjoint(xp: ModuleType, small: Array, wm: Array, g: Geometry, ci: int) -> tuple[Array, Array]:
    """small [B, Co, *small] -> ([B, Ci, *big], rows): the input gradient of `correlate`."""
    rows = _to_rows(small, g.groups)                       # [G, B*P, Co/G]
    return correlate_adjoint_rows(xp, rows, wm, g, small.shape[0], ci), rows


def correlate_adjoint_rows(xp: ModuleType, rows: Array, wm: Array, g: Geometry, b: int, ci: int) -> Array:
    """GEMM rows [G, B*P, Co/G] -> [B, Ci, *big]: the transposed GEMM, then col2im."""
    return _col2im(xp, ops.matmul(rows, wm), b, ci, g)     # cols [G, B*P, Ci/G*prod(k)]


def im2col(xp: ModuleType, big: Array, g: Geometry) -> Array:
    """The padded input's patches as GEMM rows [G, B*P, Ci/G*prod(k)]."""
    kernels = window_kernels(big)
    if kernels is not None:
        return kernels.im2col(big, g)
    return im2col_arrays(xp, big, g)


def im2col_arrays(xp: ModuleType, big: Array, g: Geometry) -> Array:
    """im2col with array-module operations only (pad, strided window view, copy)."""
    return _im2col(xp, pad(xp, big, g.lo, g.hi), g)


def weight_grad(xp: ModuleType, rows: Array, cols: Array, shape: tuple[int, ...]) -> Array:
    """d weight from the small side's rows and the big side's cols: [G, Co/G, Ci/G*prod(k)] -> shape."""
    if rows.shape[0] == 1:      # one group: a 2-D product, which every BLAS takes transposed as it is
        return ops.matmul(rows[0].T, cols[0]).reshape(shape)
    # a contiguous transpose: NumPy's stacked matmul of a transposed view can miss BLAS (~6x slower)
    return ops.matmul(xp.ascontiguousarray(rows.transpose(0, 2, 1)), cols).reshape(shape)


# --- the layers -----------------------------------------------------------------------------------

def spatial_input(layer: Layer, in_spec: Spec, ctx: BuildContext) -> tuple[int, int, tuple[int, ...]]:
    """(N, channels, spatial size) of a [C, *spatial] float input to an N-d conv or pool layer."""
    layer.require_float(in_spec, ctx)
    n = int(layer.type[-2])
    if len(in_spec.shape) != n + 1:
        raise ctx.error(f"{layer.type} expects input [C, {AXIS_NAMES[n]}] ({n + 1} axes), "
                        f"got shape {list(in_spec.shape)}")
    return n, in_spec.shape[0], tuple(in_spec.shape[1:])


class _ConvBase(Layer):
    transposed = False

    def build(self, cfg: dict[str, Any], in_spec: Spec, ctx: BuildContext) -> Spec:
        n, c, size = spatial_input(self, in_spec, ctx)
        f, G = cfg["filters"], cfg["groups"]
        if c % G or f % G:
            raise ctx.error(f"groups ({G}) must divide both the input channels ({c}) and filters ({f})", "groups")
        k = dims(cfg["kernel_size"], n, ctx, "kernel_size")
        s = dims(cfg["stride"], n, ctx, "stride")
        d = dims(cfg["dilation"], n, ctx, "dilation")
        self.n, self.c, self.f, self.act = n, c, f, cfg["activation"]
        self.geom = self._geometry(cfg, ctx, size, k, s, d)
        out = self.geom.big if self.transposed else self.geom.small

        kp = math.prod(k)
        # weight [Co, Ci/G, *k] of the underlying convolution (torch's layout for both kinds)
        shape = (c, f // G) + k if self.transposed else (f, c // G) + k
        bound = init_bound(self.act, fan_in=c // G * kp, fan_out=f // G * kp)
        self.add_param("weight", ctx.uniform("weight", shape, bound))
        if cfg["bias"]:
            self.add_param("bias", ctx.full((f,), 0.0))
        return Spec((f,) + out, in_spec.dtype)

    def _wm(self):
        """The weight as GEMM rows [G, Co/G, Ci/G*prod(k)]."""
        w = self.params["weight"]
        return w.reshape(self.geom.groups, w.shape[0] // self.geom.groups, -1)

    def _finish(self, z):
        if "bias" in self.params:
            z = z + self.params["bias"].reshape((self.f,) + (1,) * self.n)
        self.z, self.y = activation.forward(self.act, z)
        return self.y

    def _finish_rows(self, out, b: int):
        """_finish for the GEMM rows [G, B*P, Co/G] of a convolution: one kernel (layout, bias, relu)
        where the backend has it, the same bits as _finish(_from_rows(out))."""
        kernels, bias = window_kernels(out), self.params.get("bias")
        if kernels is not None and self.act in kernels.ROW_ACTIVATIONS and (bias is None or window_kernels(out, bias)):
            self.z = self.y = kernels.rows_to_channels(out, bias, self.act, b, self.geom.small)
            return self.y
        return self._finish(_from_rows(out, b, self.geom.small))

    def _dz_rows(self, dy):
        """The pre-activation gradient as GEMM rows [G, B*P, Co/G] (bias gradient accumulated): one
        kernel where the backend has it (exact sums make the bias gradient the same bits either way)."""
        kernels = window_kernels(dy, self.y)
        if kernels is None or self.act not in kernels.ROW_ACTIVATIONS:
            return _to_rows(self._dz(dy), self.geom.groups)
        rows = kernels.channels_to_rows(dy, self.y, self.act, self.geom.groups)
        if "bias" in self.params:
            self.grads["bias"] += ops.sum(rows, axis=1).reshape(self.f)
        return rows

    def _dz(self, dy):
        dz = activation.grad(self.act, self.z, self.y, dy)
        if "bias" in self.params:
            self.grads["bias"] += ops.sum(dz, axis=(0,) + tuple(range(2, 2 + self.n)))
        return dz


@register("conv1d", "conv2d", "conv3d")
class Conv(_ConvBase):
    QUANT_WEIGHTS = ("weight",)
    SUPPORTS_QAT = True

    def _geometry(self, cfg, ctx, size, k, s, d):
        if cfg["padding"] == "same":
            if any(v != 1 for v in s):
                raise ctx.error(f'padding "same" needs stride 1, got stride {cfg["stride"]}', "padding")
            total = tuple(di * (ki - 1) for di, ki in zip(d, k))
            lo = tuple(t // 2 for t in total)
            hi = tuple(t - a for t, a in zip(total, lo))
        else:
            lo = hi = dims(cfg["padding"], self.n, ctx, "padding")
        out = []
        for i in range(self.n):
            span, avail = d[i] * (k[i] - 1) + 1, size[i] + lo[i] + hi[i]
            if span > avail:
                raise ctx.error(f"kernel {k[i]} with dilation {d[i]} spans {span} positions but the padded "
                                f"input has {avail} along spatial dimension {i} (input shape "
                                f"{[self.c, *size]})", "kernel_size")
            out.append((avail - span) // s[i] + 1)
        return Geometry(k, s, d, lo, hi, size, tuple(out), cfg["groups"])

    def forward(self, x: Array, fc: ForwardContext) -> Array:
        w = self.params["weight"]
        if isinstance(w, quant.QTensor):
            return self._finish(self._quantized(x, w))
        if self.qat is not None:
            return self._finish(self._fake_quantized(x, w))
        out, self.cols = correlate_rows(self.xp, x, self._wm(), self.geom)
        return self._finish_rows(out, x.shape[0])

    def _quantized(self, x, w):
        """The convolution with stored quantized weights: one quant.qmatmul per group."""
        g = self.geom
        cols = im2col(self.xp, x, g)                                          # [G, B*P, Ci/G*prod(k)]
        out = self.xp.stack([quant.qmatmul(cols[i], part, x.dtype)
                             for i, part in enumerate(quant.split_rows(w, g.groups))])
        return _from_rows(out, x.shape[0], g.small)

    def _fake_quantized(self, x, w):
        """QAT: the weight fake-quantized per output channel and, for integer types, each im2col row
        per row, as _quantized computes them; the operands are kept for backward."""
        g = self.geom
        cols, wq, mask = linear.fake_quant_operands(self.qat, im2col(self.xp, x, g), w)
        wm = wq.reshape(g.groups, w.shape[0] // g.groups, -1)
        self.cols, self.qat_cache["weight"] = cols, (wm, mask)
        return _from_rows(ops.matmul(cols, wm.transpose(0, 2, 1)), x.shape[0], g.small)

    def backward(self, dy: Array) -> Array | None:
        rows = self._dz_rows(dy)
        wm, mask = self._wm(), None
        if self.qat is not None and "weight" in self.qat_cache:     # straight-through to the float weight
            wm, mask = self.qat_cache["weight"]
        dx = None                                  # no col2im when nobody reads the input gradient
        if self.input_grad:
            dx = correlate_adjoint_rows(self.xp, rows, wm, self.geom, dy.shape[0], self.c)
        gw = weight_grad(self.xp, rows, self.cols, self.params["weight"].shape)
        self.grads["weight"] += gw if mask is None else gw * mask
        return dx


@register("conv_transpose1d", "conv_transpose2d", "conv_transpose3d")
class ConvTranspose(_ConvBase):
    transposed = True

    def _geometry(self, cfg, ctx, size, k, s, d):
        p = dims(cfg["padding"], self.n, ctx, "padding")
        op = dims(cfg["output_padding"], self.n, ctx, "output_padding")
        out = []
        for i in range(self.n):
            if not (op[i] < s[i] or op[i] < d[i]):
                raise ctx.error(f"output_padding {op[i]} must be smaller than the stride ({s[i]}) or the "
                                f"dilation ({d[i]}) along spatial dimension {i}", "output_padding")
            o = (size[i] - 1) * s[i] - 2 * p[i] + d[i] * (k[i] - 1) + op[i] + 1
            if o < 1:
                raise ctx.error(f"padding {p[i]} leaves an output size of {o} along spatial dimension {i} "
                                f"(input shape {[self.c, *size]})", "padding")
            out.append(o)
        # the convolution this one is the adjoint of: from the output (big) to the input (small)
        return Geometry(k, s, d, p, p, tuple(out), size, cfg["groups"])

    def forward(self, x: Array, fc: ForwardContext) -> Array:
        z, self.rows = correlate_adjoint(self.xp, x, self._wm(), self.geom, self.f)
        return self._finish(z)

    def backward(self, dy: Array) -> Array:
        dz = self._dz(dy)
        dx, cols = correlate(self.xp, dz, self._wm(), self.geom)
        self.grads["weight"] += weight_grad(self.xp, self.rows, cols, self.params["weight"].shape)
        return dx
