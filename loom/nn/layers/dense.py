"""Dense (fully connected) layer: y = act(x W^T + b) over the last axis.

Parameters as in torch.nn.Linear: weight [units, in], bias [units]. Inputs may carry extra axes
between the batch and the features ([B, T, F] applies the same weights at every position).
"""
from __future__ import annotations

import math

from ...kernels import ops
from . import activation
from .base import Layer, Spec, register


def init_bound(fn: str, fan_in: int, fan_out: int) -> float:
    """Uniform init bound: He for relu-like activations, LeCun for selu, Glorot otherwise."""
    if fn in activation.RELU_LIKE:
        return math.sqrt(6.0 / fan_in)
    if fn == "selu":
        return math.sqrt(3.0 / fan_in)
    return math.sqrt(6.0 / (fan_in + fan_out))


@register("dense")
class Dense(Layer):
    def build(self, cfg, in_spec, ctx):
        self.require_float(in_spec, ctx)
        fan_in, units = in_spec.shape[-1], cfg["units"]
        self.act = cfg["activation"]
        self.add_param("weight", ctx.uniform("weight", (units, fan_in), init_bound(self.act, fan_in, units)))
        if cfg["bias"]:
            self.add_param("bias", ctx.full((units,), 0.0))
        return Spec(in_spec.shape[:-1] + (units,), in_spec.dtype)

    def forward(self, x, fc):
        self.x = x
        z = ops.matmul(x, self.params["weight"].T)
        if "bias" in self.params:
            z = z + self.params["bias"]
        self.z = z
        self.y = activation.apply(self.act, z)
        return self.y

    def backward(self, dy):
        dz = activation.grad(self.act, self.z, self.y, dy)
        dz2 = dz.reshape(-1, dz.shape[-1])
        x2 = self.x.reshape(-1, self.x.shape[-1])
        self.grads["weight"] += ops.matmul(dz2.T, x2)
        if "bias" in self.params:
            self.grads["bias"] += ops.sum(dz2, axis=0)
        return ops.matmul(dz, self.params["weight"])
