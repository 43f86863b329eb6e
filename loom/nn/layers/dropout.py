"""Dropout: in training, zero each value with probability `rate` and scale the rest by 1/(1-rate).

The mask comes from the counter RNG (stream "<layer>.noise", counter = the network's rng_counter),
so a training step's mask is reproducible anywhere. In eval mode the layer is the identity.
"""
from __future__ import annotations

from .base import Layer, register


@register("dropout")
class Dropout(Layer):
    USES_NOISE = True
    def build(self, cfg, in_spec, ctx):
        self.require_float(in_spec, ctx)
        self.rate = cfg["rate"]
        return in_spec

    def forward(self, x, fc):
        self.scale = None
        if not fc.training or self.rate == 0.0:
            return x
        keep = self.noise_uniform(x.shape, fc) >= self.rate
        self.scale = keep.astype(x.dtype) / x.dtype.type(1.0 - self.rate)
        return x * self.scale

    def backward(self, dy):
        return dy if self.scale is None else dy * self.scale
