"""Layers that only rearrange: flatten (to one axis per sample) and reshape."""
from __future__ import annotations

import math
from typing import Any

from ...backend import Array
from .base import BuildContext, ForwardContext, Layer, Spec, register


@register("flatten")
class Flatten(Layer):
    def build(self, cfg: dict[str, Any], in_spec: Spec, ctx: BuildContext) -> Spec:
        return Spec((in_spec.size,), in_spec.dtype)

    def forward(self, x: Array, fc: ForwardContext) -> Array:
        return x.reshape(x.shape[0], -1)

    def backward(self, dy: Array) -> Array | None:
        if not self.in_spec.is_float:
            return None
        return dy.reshape((dy.shape[0],) + self.in_spec.shape)


@register("reshape")
class Reshape(Layer):
    def build(self, cfg: dict[str, Any], in_spec: Spec, ctx: BuildContext) -> Spec:
        target = list(cfg["shape"])
        known = math.prod(d for d in target if d != -1)
        if -1 in target:
            if in_spec.size % known:
                raise ctx.error(f"cannot reshape {list(in_spec.shape)} ({in_spec.size} values) to {target}", "shape")
            target[target.index(-1)] = in_spec.size // known
        elif known != in_spec.size:
            raise ctx.error(f"cannot reshape {list(in_spec.shape)} ({in_spec.size} values) to {target} "
                            f"({known} values)", "shape")
        return Spec(tuple(target), in_spec.dtype)

    def forward(self, x: Array, fc: ForwardContext) -> Array:
        return x.reshape((x.shape[0],) + self.out_spec.shape)

    def backward(self, dy: Array) -> Array | None:
        if not self.in_spec.is_float:
            return None
        return dy.reshape((dy.shape[0],) + self.in_spec.shape)
