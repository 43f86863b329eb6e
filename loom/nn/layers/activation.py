"""Activation functions (forward and gradient) and the `activation` layer.

Constants follow PyTorch: leaky_relu slope 0.01, elu alpha 1, selu's (lambda, alpha) from
Klambauer et al., gelu exact (erf) and gelu_tanh (the tanh approximation), hard_sigmoid =
relu6(x + 3) / 6.
"""
from __future__ import annotations

from typing import Any

from ...backend import Array
from ...kernels import fused, ops
from .base import BuildContext, ForwardContext, Layer, Spec, register

LEAKY_SLOPE = 0.01
SELU_LAMBDA = 1.0507009873554804934193349852946
SELU_ALPHA = 1.6732632423543772848170429916717
_TANH_C, _TANH_K = fused.TANH_C, fused.TANH_K
# Activations whose default weight init is He (Kaiming) uniform; the rest use Glorot uniform.
RELU_LIKE = frozenset({"relu", "leaky_relu", "elu", "gelu", "gelu_tanh", "silu", "mish"})


# Activations whose gradient needs only the output y: y > 0 exactly where x > 0, and the derivative is a
# function of y. Layers need not keep the pre-activation for these.
OUTPUT_GRAD = frozenset({"linear", "relu", "leaky_relu", "elu", "sigmoid", "tanh"})


def forward(fn: str, z: Array) -> tuple[Array, Array]:
    """(what grad() needs as its x, y) for a pre-activation z that the caller owns and will not reuse:
    for OUTPUT_GRAD functions that is y itself (relu then runs in place on z, saving an allocation)."""
    if fn == "relu":
        y = _xp(z).maximum(z, 0, out=z)
        return y, y
    y = apply(fn, z)
    return (y if fn in OUTPUT_GRAD else z), y


def _xp(x):
    from ... import backend
    return backend.of(x).xp


def apply(fn: str, x: Array) -> Array:
    """fn(x) elementwise."""
    if fn in fused.BIAS_ACTIVATIONS:        # linear, relu, gelu, gelu_tanh, silu, sigmoid, tanh
        return fused.activation(fn, x)
    xp = _xp(x)
    if fn == "leaky_relu":
        return xp.where(x > 0, x, x * LEAKY_SLOPE)
    if fn == "elu":
        return xp.where(x > 0, x, ops.expm1(xp.minimum(x, 0)))
    if fn == "selu":
        return SELU_LAMBDA * xp.where(x > 0, x, SELU_ALPHA * ops.expm1(xp.minimum(x, 0)))
    if fn == "mish":
        return x * ops.tanh(ops.softplus(x))
    if fn == "softplus":
        return ops.softplus(x)
    if fn == "hard_sigmoid":
        return xp.clip(x + 3, 0, 6) / 6
    raise ValueError(f"unknown activation {fn!r}")


def grad(fn: str, x: Array, y: Array, dy: Array) -> Array:
    """dL/dx given the input x, the output y = fn(x) and dL/dy."""
    xp = _xp(x)
    if fn == "linear":
        return dy
    if fn == "relu":
        return dy * (x > 0)
    if fn == "leaky_relu":
        return dy * xp.where(x > 0, 1.0, LEAKY_SLOPE).astype(x.dtype)
    if fn == "elu":
        return dy * xp.where(x > 0, 1, y + 1)
    if fn == "selu":
        return dy * xp.where(x > 0, SELU_LAMBDA, y + SELU_LAMBDA * SELU_ALPHA)
    if fn == "gelu":
        return fused.gelu_grad(x, dy)
    if fn == "gelu_tanh":
        t = ops.tanh(_TANH_C * (x + _TANH_K * x * x * x))
        return dy * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * _TANH_C * (1 + 3 * _TANH_K * x * x))
    if fn == "silu":
        s = ops.sigmoid(x)
        return dy * (s + x * s * (1 - s))
    if fn == "mish":
        t = ops.tanh(ops.softplus(x))
        return dy * (t + x * (1 - t * t) * ops.sigmoid(x))
    if fn == "softplus":
        return dy * ops.sigmoid(x)
    if fn == "sigmoid":
        return dy * y * (1 - y)
    if fn == "tanh":
        return dy * (1 - y * y)
    if fn == "hard_sigmoid":
        return dy * ((x > -3) & (x < 3)) / 6
    raise ValueError(f"unknown activation {fn!r}")


@register("activation")
class Activation(Layer):
    def build(self, cfg: dict[str, Any], in_spec: Spec, ctx: BuildContext) -> Spec:
        self.require_float(in_spec, ctx)
        self.fn = cfg["fn"]
        return in_spec

    def forward(self, x: Array, fc: ForwardContext) -> Array:
        self.x = x
        self.y = apply(self.fn, x)
        return self.y

    def backward(self, dy: Array) -> Array:
        return grad(self.fn, self.x, self.y, dy)
