"""Dense (fully connected) layer: y = act(x W^T + b) over the last axis.

Parameters as in torch.nn.Linear: weight [units, in], bias [units]. Inputs may carry extra axes
between the batch and the features ([B, T, F] applies the same weights at every position).
"""
from __future__ import annotations

import math

from . import activation, linear
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
    LAZY_GRADS = True   # all its gradient writes go through linear.backward's accumulate calls

    def build(self, cfg, in_spec, ctx):
        self.require_float(in_spec, ctx)
        fan_in, units = in_spec.shape[-1], cfg["units"]
        self.act = cfg["activation"]
        linear.create(self, ctx, "", units, fan_in, init_bound(self.act, fan_in, units), cfg["bias"])
        return Spec(in_spec.shape[:-1] + (units,), in_spec.dtype)

    def forward(self, x, fc):
        self.x = x
        self.z, self.y = activation.forward(self.act, linear.forward(self, "", x))
        return self.y

    def backward(self, dy):
        dz = activation.grad(self.act, self.z, self.y, dy)
        return linear.backward(self, "", self.x, dz, need_dx=self.input_grad)
