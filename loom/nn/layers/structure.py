"""Containers: sequential (a chain of layers) and residual (x + chain(x))."""
from __future__ import annotations

from .base import Layer, Spec, register


def build_chain(owner: Layer, cfgs: list, in_spec: Spec, ctx) -> Spec:
    """Build `cfgs` as owner's children "layers.0", "layers.1", ... and return the last spec."""
    spec = in_spec
    for i, cfg in enumerate(cfgs):
        spec = owner.add_child(f"layers.{i}", cfg, spec, ctx.child("layers", i)).out_spec
    return spec


def forward_chain(owner: Layer, x, fc):
    for layer in owner.children.values():
        x = layer.forward(x, fc)
    return x


def backward_chain(owner: Layer, dy):
    for layer in reversed(owner.children.values()):
        dy = layer.backward(dy)
    return dy


@register("sequential")
class Sequential(Layer):
    def build(self, cfg, in_spec, ctx):
        return build_chain(self, cfg["layers"], in_spec, ctx)

    def forward(self, x, fc):
        return forward_chain(self, x, fc)

    def backward(self, dy):
        return backward_chain(self, dy)


@register("residual")
class Residual(Layer):
    def build(self, cfg, in_spec, ctx):
        self.require_float(in_spec, ctx)
        out = build_chain(self, cfg["layers"], in_spec, ctx)
        if out != in_spec:
            raise ctx.error(f"residual branch must keep the shape {list(in_spec.shape)}, "
                            f"but its layers produce {list(out.shape)}", "layers")
        return in_spec

    def forward(self, x, fc):
        return x + forward_chain(self, x, fc)

    def backward(self, dy):
        return dy + backward_chain(self, dy)
