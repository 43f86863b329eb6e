"""Convolutions (conv1d/2d/3d) and transposed convolutions (conv_transpose1d/2d/3d), channels first.

Both run on one N-d engine built from two adjoint pieces:
  correlate:          im2col (a strided window view of the padded input, copied into rows), then
                      one GEMM batched over groups;            [B, Ci, *big] -> [B, Co, *small]
  correlate_adjoint:  the transposed GEMM, then col2im (scatter-add the rows back, one strided
                      slice per kernel offset), then crop;     [B, Co, *small] -> [B, Ci, *big]
A convolution runs correlate forward and correlate_adjoint backward; a transposed convolution is
the adjoint of a convolution, so it runs them the other way round with the same weight layout.

Parameters as in torch.nn.ConvNd / ConvTransposeNd: conv weight [filters, C/groups, *k],
transposed weight [C, filters/groups, *k], bias [filters]. The engine and its window helpers are in
loom/kernels/windows.py (shared with pool.py), which also asks the backend for its window kernels.
"""
from __future__ import annotations

import math
from typing import Any

from ...backend import Array
from ...kernels import ops, windows
from ...kernels.quant import affine as quant
from . import activation, linear
from .base import BuildContext, ForwardContext, Layer, Spec, dims, register
from .dense import init_bound

AXIS_NAMES = {1: "L", 2: "H, W", 3: "D, H, W"}


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
        where the backend has it, the same bits as _finish(windows.from_rows(out))."""
        y = windows.rows_to_channels(out, self.params.get("bias"), self.act, b, self.geom.small)
        if y is not None:
            self.z = self.y = y
            return y
        return self._finish(windows.from_rows(out, b, self.geom.small))

    def _dz_rows(self, dy):
        """The pre-activation gradient as GEMM rows [G, B*P, Co/G] (bias gradient accumulated): one
        kernel where the backend has it (exact sums make the bias gradient the same bits either way)."""
        rows = windows.channels_to_rows(dy, self.y, self.act, self.geom.groups)
        if rows is None:
            return windows.to_rows(self._dz(dy), self.geom.groups)
        if self.trains("bias"):
            self.grads["bias"] += ops.grad_sum(rows, axis=1).reshape(self.f)
        return rows

    def _dz(self, dy):
        dz = activation.grad(self.act, self.z, self.y, dy)
        if self.trains("bias"):
            self.grads["bias"] += ops.grad_sum(dz, axis=(0,) + tuple(range(2, 2 + self.n)))
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
        return windows.Geometry(k, s, d, lo, hi, size, tuple(out), cfg["groups"])

    def forward(self, x: Array, fc: ForwardContext) -> Array:
        w = self.params["weight"]
        if isinstance(w, quant.AffineQuantized):
            return self._finish(self._quantized(x, w))
        if self.qat is not None:
            return self._finish(self._fake_quantized(x, w))
        out, self.cols = windows.correlate_rows(self.xp, x, self._wm(), self.geom)
        return self._finish_rows(out, x.shape[0])

    def _quantized(self, x, w):
        """The convolution with stored quantized weights: one quant.qmatmul per group."""
        g = self.geom
        cols = windows.im2col(self.xp, x, g)                                          # [G, B*P, Ci/G*prod(k)]
        out = ops.stack([quant.qmatmul(cols[i], part, x.dtype)
                         for i, part in enumerate(quant.split_rows(w, g.groups))])
        return windows.from_rows(out, x.shape[0], g.small)

    def _fake_quantized(self, x, w):
        """QAT: the weight fake-quantized per output channel and, for integer types, each im2col row
        per row, as _quantized computes them; the operands are kept for backward."""
        g = self.geom
        cols, wq, mask = linear.fake_quant_operands(self.qat, windows.im2col(self.xp, x, g), w)
        wm = wq.reshape(g.groups, w.shape[0] // g.groups, -1)
        self.cols, self.qat_cache["weight"] = cols, (wm, mask)
        return windows.from_rows(ops.matmul(cols, wm.transpose(0, 2, 1)), x.shape[0], g.small)

    def backward(self, dy: Array) -> Array | None:
        rows = self._dz_rows(dy)
        wm, mask = self._wm(), None
        if self.qat is not None and "weight" in self.qat_cache:     # straight-through to the float weight
            wm, mask = self.qat_cache["weight"]
        dx = None                                  # no col2im when nobody reads the input gradient
        if self.input_grad:
            dx = windows.correlate_adjoint_rows(self.xp, rows, wm, self.geom, dy.shape[0], self.c)
        if self.trains("weight"):
            gw = windows.weight_grad(self.xp, rows, self.cols, self.params["weight"].shape)
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
        return windows.Geometry(k, s, d, p, p, tuple(out), size, cfg["groups"])

    def forward(self, x: Array, fc: ForwardContext) -> Array:
        z, self.rows = windows.correlate_adjoint(self.xp, x, self._wm(), self.geom, self.f)
        return self._finish(z)

    def backward(self, dy: Array) -> Array:
        dz = self._dz(dy)
        dx, cols = windows.correlate(self.xp, dz, self._wm(), self.geom)
        if self.trains("weight"):
            self.grads["weight"] += windows.weight_grad(self.xp, self.rows, cols, self.params["weight"].shape)
        return dx
