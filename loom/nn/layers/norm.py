"""Normalization layers: layer_norm and rms_norm over the last axis, batch_norm per channel.

Parameter and buffer names follow PyTorch: weight, bias; batch_norm also keeps running_mean,
running_var (unbiased, as PyTorch) and num_batches_tracked. Variances in the normalization itself
are biased (divide by N), as in PyTorch. openfluke welvet's float64 norms are `openfluke_layer_norm`
and `openfluke_rms_norm` (loom/nn/layers/openfluke.py).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ...backend import Array
from ...errors import ShapeError
from ...kernels import fused, ops
from .base import BuildContext, ForwardContext, Layer, Spec, register


@register("layer_norm")
class LayerNorm(Layer):
    def build(self, cfg: dict[str, Any], in_spec: Spec, ctx: BuildContext) -> Spec:
        self.require_float(in_spec, ctx)
        self.eps = cfg["eps"]
        if cfg["affine"]:
            f = in_spec.shape[-1]
            self.add_param("weight", ctx.full((f,), 1.0))
            self.add_param("bias", ctx.full((f,), 0.0))
        return in_spec

    def forward(self, x: Array, fc: ForwardContext) -> Array:
        y, self.xhat, self.rstd = fused.layer_norm(x, self.params.get("weight"), self.params.get("bias"), self.eps)
        return y

    def backward(self, dy: Array) -> Array:
        xhat, out = self.xhat, dy.dtype
        dy = dy.astype(xhat.dtype)
        lead = tuple(range(dy.ndim - 1))
        if self.trains("weight"):
            self.grads["weight"] += ops.grad_sum(dy * xhat, axis=lead).astype(out)
        if self.trains("bias"):
            self.grads["bias"] += ops.grad_sum(dy, axis=lead).astype(out)
        return fused.layer_norm_grad(dy, xhat, self.rstd, self.params.get("weight")).astype(out)


def rms_norm(x: Array, weight: Array, eps: float) -> tuple[Array, tuple[Array, Array]]:
    """y = x / sqrt(mean(x^2) + eps) * weight over the last axis; returns (y, cache for backward)."""
    y, xhat, rstd = fused.rms_norm(x, weight, eps)
    return y, (xhat, rstd)


def rms_norm_backward(dy: Array, cache: tuple[Array, Array], weight: Array) -> tuple[Array, Array]:
    """(dL/dx, dL/dweight) for rms_norm's output gradient dy."""
    xhat, rstd = cache
    dweight = ops.grad_sum((dy * xhat).reshape(-1, dy.shape[-1]), axis=0)
    return fused.rms_norm_grad(dy, xhat, rstd, weight), dweight


@register("rms_norm")
class RMSNorm(Layer):
    def build(self, cfg: dict[str, Any], in_spec: Spec, ctx: BuildContext) -> Spec:
        self.require_float(in_spec, ctx)
        self.eps = cfg["eps"]
        self.add_param("weight", ctx.full((in_spec.shape[-1],), 1.0))
        return in_spec

    def forward(self, x: Array, fc: ForwardContext) -> Array:
        y, self.cache = rms_norm(x, self.params["weight"], self.eps)
        return y.astype(x.dtype)

    def backward(self, dy: Array) -> Array:
        dx, dweight = rms_norm_backward(dy, self.cache, self.params["weight"])
        if self.trains("weight"):
            self.grads["weight"] += dweight.astype(dy.dtype)
        return dx.astype(dy.dtype)


@register("batch_norm")
class BatchNorm(Layer):
    """Per-channel normalization of [C, *spatial] samples (channels first; a [C] sample works too)."""

    def build(self, cfg: dict[str, Any], in_spec: Spec, ctx: BuildContext) -> Spec:
        self.require_float(in_spec, ctx)
        self.eps, self.momentum = cfg["eps"], cfg["momentum"]
        c = in_spec.shape[0]
        self.add_param("weight", ctx.full((c,), 1.0))
        self.add_param("bias", ctx.full((c,), 0.0))
        self.add_buffer("running_mean", ctx.full((c,), 0.0))
        self.add_buffer("running_var", ctx.full((c,), 1.0))
        self.add_buffer("num_batches_tracked", self.B.asarray(np.zeros((), dtype=np.int64)))
        return in_spec

    def _bcast(self, v, ndim):
        return v.reshape((1, -1) + (1,) * (ndim - 2))

    def forward(self, x: Array, fc: ForwardContext) -> Array:
        axes = (0,) + tuple(range(2, x.ndim))
        n = x.size // x.shape[1]
        self.axes = axes
        self.training_step = fc.training
        if fc.training:
            n = ops.count_over_batch(n)        # the global batch's (a data-parallel rank holds a slice)
            if n < 2:
                raise ShapeError(f"{self.path}: batch_norm in training needs more than one value per channel, "
                                 f"got input shape {list(x.shape)}")
            # statistics over the global batch: synchronized across the ranks of a data-parallel world
            mu = ops.mean_over_batch(x, axis=axes, keepdims=True)
            xc = x - mu
            var = ops.mean_over_batch(xc * xc, axis=axes, keepdims=True)
            m = x.dtype.type(self.momentum)
            rm, rv = self.buffers["running_mean"], self.buffers["running_var"]
            rm[...] = (1 - m) * rm + m * mu.reshape(-1)
            rv[...] = (1 - m) * rv + m * var.reshape(-1) * x.dtype.type(n / (n - 1))
            self.buffers["num_batches_tracked"][...] += 1
        else:
            mu = self._bcast(self.buffers["running_mean"], x.ndim)
            var = self._bcast(self.buffers["running_var"], x.ndim)
            xc = x - mu
        self.rstd = 1 / ops.sqrt(var + x.dtype.type(self.eps))
        self.xhat = xc * self.rstd
        return self.xhat * self._bcast(self.params["weight"], x.ndim) + self._bcast(self.params["bias"], x.ndim)

    def backward(self, dy: Array) -> Array:
        axes, xhat = self.axes, self.xhat
        if self.trains("weight"):
            self.grads["weight"] += ops.grad_sum(dy * xhat, axis=axes)
        if self.trains("bias"):
            self.grads["bias"] += ops.grad_sum(dy, axis=axes)
        g = dy * self._bcast(self.params["weight"], dy.ndim)
        if not self.training_step:        # running statistics are constants
            return g * self.rstd
        return self.rstd * (g - ops.mean_over_batch(g, axis=axes, keepdims=True)
                            - xhat * ops.mean_over_batch(g * xhat, axis=axes, keepdims=True))
