"""SwiGLU feed-forward block (Llama's MLP): y = down(silu(gate(x)) * up(x)), same width in and out.

Parameters as in HF Llama: gate_proj.weight [hidden, E], up_proj.weight [hidden, E],
down_proj.weight [E, hidden] (plus .bias for each when bias is true).
"""
from __future__ import annotations

import math
from typing import Any

from ...backend import Array
from . import activation, linear
from .base import BuildContext, ForwardContext, Layer, Spec, register

_PROJ = ("gate_proj", "up_proj", "down_proj")


@register("swiglu")
class SwiGLU(Layer):
    QUANT_WEIGHTS = tuple(f"{name}.weight" for name in _PROJ)
    SUPPORTS_QAT = True

    def build(self, cfg: dict[str, Any], in_spec: Spec, ctx: BuildContext) -> Spec:
        self.require_float(in_spec, ctx)
        e, h = in_spec.shape[-1], cfg["hidden"]
        bound = math.sqrt(6.0 / (e + h))
        for name, (out, inp) in zip(_PROJ, ((h, e), (h, e), (e, h))):
            linear.create(self, ctx, name, out, inp, bound, cfg["bias"])
        return in_spec

    def forward(self, x: Array, fc: ForwardContext) -> Array:
        self.x = x
        self.g = linear.forward(self, "gate_proj", x)
        self.u = linear.forward(self, "up_proj", x)
        self.a = activation.apply("silu", self.g)
        self.h = self.a * self.u
        return linear.forward(self, "down_proj", self.h)

    def backward(self, dy: Array) -> Array:
        dh = linear.backward(self, "down_proj", self.h, dy)
        dg = activation.grad("silu", self.g, self.a, dh * self.u)
        return linear.backward(self, "gate_proj", self.x, dg) + linear.backward(self, "up_proj", self.x, dh * self.a)
