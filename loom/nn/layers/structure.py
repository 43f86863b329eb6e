"""Containers: sequential (a chain of layers) and residual (x + chain(x))."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ...backend import Array
from .base import BuildContext, ForwardContext, Layer, Spec, register


def build_chain(owner: Layer, cfgs: list[dict[str, Any]], in_spec: Spec, ctx: BuildContext) -> Spec:
    """Build `cfgs` as owner's children "layers.0", "layers.1", ... and return the last spec."""
    spec = in_spec
    for i, cfg in enumerate(cfgs):
        spec = owner.add_child(f"layers.{i}", cfg, spec, ctx.child("layers", i)).out_spec
    return spec


def forward_chain(owner: Layer, x: Array, fc: ForwardContext) -> Array:
    for layer in owner.children.values():
        x = layer.forward(x, fc)
    return x


def backward_chain(owner: Layer, dy: Array, need_dx: bool = True,
                   done: Callable[[Layer], None] | None = None) -> Array | None:
    """Back through owner's children, last first. Without need_dx the leading children that hold
    no trainable parameter (frozen, or none at all) are not run: they would only compute an input
    gradient nobody reads; the first child that trains is told it need not return one (None then).
    done(child), when given, is called as each child's backward returns: its subtree's gradients
    are final then (a data-parallel world starts their all-reduce while the rest runs)."""
    layers = list(owner.children.values())
    start = 0 if need_dx else next((i for i, layer in enumerate(layers) if layer.trains()), len(layers))
    for i in reversed(range(start, len(layers))):
        dy = owner.backward_child(layers[i], dy, need_dx or i > start)
        if done is not None:
            done(layers[i])
    return dy if need_dx else None


@register("sequential")
class Sequential(Layer):
    # Network.root's hook for loom.distributed: called with each child whose backward has returned
    child_done: Callable[[Layer], None] | None = None

    def build(self, cfg: dict[str, Any], in_spec: Spec, ctx: BuildContext) -> Spec:
        return build_chain(self, cfg["layers"], in_spec, ctx)

    def forward(self, x: Array, fc: ForwardContext) -> Array:
        return forward_chain(self, x, fc)

    def backward(self, dy: Array) -> Array | None:
        return backward_chain(self, dy, self.input_grad, self.child_done)


@register("residual")
class Residual(Layer):
    def build(self, cfg: dict[str, Any], in_spec: Spec, ctx: BuildContext) -> Spec:
        self.require_float(in_spec, ctx)
        out = build_chain(self, cfg["layers"], in_spec, ctx)
        if out != in_spec:
            raise ctx.error(f"residual branch must keep the shape {list(in_spec.shape)}, "
                            f"but its layers produce {list(out.shape)}", "layers")
        return in_spec

    def forward(self, x: Array, fc: ForwardContext) -> Array:
        return x + forward_chain(self, x, fc)

    def backward(self, dy: Array) -> Array:
        return dy + backward_chain(self, dy)
