"""Dropout: in training, zero each value with probability `rate` and scale the rest by 1/(1-rate).

The mask comes from the counter RNG (stream "<layer>.noise", counter = the network's rng_counter),
so a training step's mask is reproducible anywhere. In eval mode the layer is the identity.
"""
from __future__ import annotations

from typing import Any

from ...backend import Array
from .base import BuildContext, ForwardContext, Layer, Spec, register


@register("dropout")
class Dropout(Layer):
    USES_NOISE = True
    def build(self, cfg: dict[str, Any], in_spec: Spec, ctx: BuildContext) -> Spec:
        self.require_float(in_spec, ctx)
        self.rate = cfg["rate"]
        return in_spec

    def forward(self, x: Array, fc: ForwardContext) -> Array:
        self.scale = None
        if not fc.training or self.rate == 0.0:
            return x
        keep = self.noise_uniform(x.shape, fc) >= self.rate
        self.scale = keep.astype(x.dtype) / x.dtype.type(1.0 - self.rate)
        return x * self.scale

    def backward(self, dy: Array) -> Array:
        return dy if self.scale is None else dy * self.scale
