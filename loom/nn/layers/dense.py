"""Dense (fully connected) layer: y = act(x W^T + b) over the last axis.

Parameters as in torch.nn.Linear: weight [units, in], bias [units]. Inputs may carry extra axes
between the batch and the features ([B, T, F] applies the same weights at every position).
openfluke welvet's blocked float64 sums are `openfluke_dense` (loom/nn/layers/openfluke.py).
"""
from __future__ import annotations

import math
from typing import Any

from ...backend import Array
from ...kernels import fused
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
        linear.create(self, ctx, "", units, fan_in, init_bound(self.act, fan_in, units), cfg["bias"])
        return Spec(in_spec.shape[:-1] + (units,), in_spec.dtype)

    def forward(self, x: Array, fc: ForwardContext) -> Array:
        self.x = x
        bias = self.params.get("bias")
        if (self.float_weight() and bias is not None and self.act in fused.BIAS_ACTIVATIONS
                and self.B.fused is not None):
            # one kernel for bias + activation where the backend has it (the GPU: launches dominate)
            self.z, self.y = fused.bias_act(linear.project(self, "weight", x), bias, self.act)
            return self.y
        self.z, self.y = activation.forward(self.act, linear.forward(self, "", x))
        return self.y

    def float_weight(self) -> bool:
        """Whether the forward multiplies by the float weight itself (a quantized weight or QAT runs its
        own GEMM)."""
        return isinstance(self.params["weight"], self.xp.ndarray) and self.qat is None

    def backward(self, dy: Array) -> Array | None:
        dz = activation.grad(self.act, self.z, self.y, dy)
        return linear.backward(self, "", self.x, dz, need_dx=self.input_grad)
