"""The affine map y = x W^T + b over the last axis and its gradient, shared by every layer that
owns a projection (dense, swiglu, attention). Parameters are "<name>.weight" [out, in] and
"<name>.bias" [out] (just "weight"/"bias" when name is empty), PyTorch's nn.Linear layout."""
from __future__ import annotations

from ...kernels import ops


def _key(name: str, part: str) -> str:
    return f"{name}.{part}" if name else part


def create(layer, ctx, name: str, out: int, inp: int, bound: float, bias: bool) -> None:
    """Add the weight (uniform in [-bound, bound]) and, if asked, a zero bias to `layer`."""
    layer.add_param(_key(name, "weight"), ctx.uniform(_key(name, "weight"), (out, inp), bound))
    if bias:
        layer.add_param(_key(name, "bias"), ctx.full((out,), 0.0))


def forward(layer, name: str, x):
    y = ops.matmul(x, layer.params[_key(name, "weight")].T)
    bias = layer.params.get(_key(name, "bias"))
    if bias is not None:
        y += bias                  # in place: y is a fresh array
    return y


def backward(layer, name: str, x, dy, need_dx: bool = True):
    """Accumulate the weight and bias gradients for input x (any leading axes); return dL/dx
    (None when need_dx is false)."""
    dy2, x2 = dy.reshape(-1, dy.shape[-1]), x.reshape(-1, x.shape[-1])
    layer.accumulate_matmul(_key(name, "weight"), dy2.T, x2)
    if _key(name, "bias") in layer.params:
        layer.accumulate(_key(name, "bias"), ops.sum(dy2, axis=0))
    if not need_dx:
        return None
    return ops.matmul(dy, layer.params[_key(name, "weight")])
