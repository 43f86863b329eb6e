"""SwiGLU feed-forward block (Llama's MLP): y = down(silu(gate(x)) * up(x)), same width in and out.

Parameters as in HF Llama: gate_proj.weight [hidden, E], up_proj.weight [hidden, E],
down_proj.weight [E, hidden] (plus .bias for each when bias is true).
"""
from __future__ import annotations

import math

from ...kernels import ops
from . import activation
from .base import Layer, register

_PROJ = ("gate_proj", "up_proj", "down_proj")


@register("swiglu")
class SwiGLU(Layer):
    def build(self, cfg, in_spec, ctx):
        self.require_float(in_spec, ctx)
        e, h = in_spec.shape[-1], cfg["hidden"]
        bound = math.sqrt(6.0 / (e + h))
        for name, shape in zip(_PROJ, ((h, e), (h, e), (e, h))):
            self.add_param(f"{name}.weight", ctx.uniform(f"{name}.weight", shape, bound))
            if cfg["bias"]:
                self.add_param(f"{name}.bias", ctx.full(shape[:1], 0.0))
        return in_spec

    def _linear(self, name, x):
        y = ops.matmul(x, self.params[f"{name}.weight"].T)
        return y + self.params[f"{name}.bias"] if f"{name}.bias" in self.params else y

    def _linear_backward(self, name, x, dy):
        dy2, x2 = dy.reshape(-1, dy.shape[-1]), x.reshape(-1, x.shape[-1])
        self.grads[f"{name}.weight"] += ops.matmul(dy2.T, x2)
        if f"{name}.bias" in self.params:
            self.grads[f"{name}.bias"] += ops.sum(dy2, axis=0)
        return ops.matmul(dy, self.params[f"{name}.weight"])

    def forward(self, x, fc):
        self.x = x
        self.g = self._linear("gate_proj", x)
        self.u = self._linear("up_proj", x)
        self.a = activation.apply("silu", self.g)
        self.h = self.a * self.u
        return self._linear("down_proj", self.h)

    def backward(self, dy):
        dh = self._linear_backward("down_proj", self.h, dy)
        dg = activation.grad("silu", self.g, self.a, dh * self.u)
        return self._linear_backward("gate_proj", self.x, dg) + self._linear_backward("up_proj", self.x, dh * self.a)
