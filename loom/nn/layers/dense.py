"""Dense (fully connected) layer: y = act(x W^T + b) over the last axis.

Parameters as in torch.nn.Linear: weight [units, in], bias [units]. Inputs may carry extra axes
between the batch and the features ([B, T, F] applies the same weights at every position).

With accumulate_block = k the products are summed in float64 over consecutive blocks of k inputs and
the running sum is rounded to the compute dtype after each block, reproducing openfluke welvet's
dense (docs/interop.md). The backward pass is that of the exact product x W^T.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from ...backend import Array
from ...kernels import fused, ops
from . import activation, linear
from .base import BuildContext, ForwardContext, Layer, Spec, register


def init_bound(fn: str, fan_in: int, fan_out: int) -> float:
    """Uniform init bound: He for relu-like activations, LeCun for selu, Glorot otherwise."""
    if fn in activation.RELU_LIKE:
        return math.sqrt(6.0 / fan_in)
    if fn == "selu":
        return math.sqrt(3.0 / fan_in)
    return math.sqrt(6.0 / (fan_in + fan_out))


@register("dense")
class Dense(Layer):
    LAZY_GRADS = True   # all its gradient writes go through linear.backward's accumulate calls
    QUANT_WEIGHTS = ("weight",)
    SUPPORTS_QAT = True

    def build(self, cfg: dict[str, Any], in_spec: Spec, ctx: BuildContext) -> Spec:
        self.require_float(in_spec, ctx)
        fan_in, units = in_spec.shape[-1], cfg["units"]
        self.act = cfg["activation"]
        self.block = cfg.get("accumulate_block")
        linear.create(self, ctx, "", units, fan_in, init_bound(self.act, fan_in, units), cfg["bias"])
        return Spec(in_spec.shape[:-1] + (units,), in_spec.dtype)

    def forward(self, x: Array, fc: ForwardContext) -> Array:
        self.x = x
        # accumulate_block describes float arithmetic: a quantized weight or QAT runs its own GEMM
        float_weight = isinstance(self.params["weight"], self.xp.ndarray) and self.qat is None
        bias = self.params.get("bias")
        if (self.block is None and float_weight and bias is not None and self.act in fused.BIAS_ACTIVATIONS
                and getattr(self.B, "fused", None) is not None):
            # one kernel for bias + activation where the backend has it (the GPU: launches dominate)
            self.z, self.y = fused.bias_act(linear.project(self, "weight", x), bias, self.act)
            return self.y
        z = self._blocked(x) if self.block is not None and float_weight else linear.forward(self, "", x)
        self.z, self.y = activation.forward(self.act, z)
        return self.y

    def _blocked(self, x):
        """x W^T (+ b) with float64 block sums, the running sum rounded to x.dtype after each block."""
        w64 = self.params["weight"].astype(np.float64)
        x64 = x.astype(np.float64)
        acc = self.xp.zeros(x.shape[:-1] + (w64.shape[0],), dtype=x.dtype)
        for start in range(0, w64.shape[1], self.block):
            part = ops.matmul(x64[..., start:start + self.block], w64[:, start:start + self.block].T)
            acc = (acc.astype(np.float64) + part).astype(x.dtype)
        bias = self.params.get("bias")
        return acc + bias if bias is not None else acc

    def backward(self, dy: Array) -> Array | None:
        dz = activation.grad(self.act, self.z, self.y, dy)
        return linear.backward(self, "", self.x, dz, need_dx=self.input_grad)
