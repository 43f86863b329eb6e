"""The affine map y = x W^T + b over the last axis and its gradient, shared by every layer that
owns a projection (dense, swiglu, attention). Parameters are "<name>.weight" [out, in] and
"<name>.bias" [out] (just "weight"/"bias" when name is empty), PyTorch's nn.Linear layout."""
from __future__ import annotations

from ...backend import Array
from ...kernels import ops
from ...kernels.quant import affine as quant
from .base import BuildContext, Layer


def _key(name: str, part: str) -> str:
    return f"{name}.{part}" if name else part


def create(layer: Layer, ctx: BuildContext, name: str, out: int, inp: int, bound: float, bias: bool) -> None:
    """Add the weight (uniform in [-bound, bound]) and, if asked, a zero bias to `layer`."""
    layer.add_param(_key(name, "weight"), ctx.uniform(_key(name, "weight"), (out, inp), bound))
    if bias:
        layer.add_param(_key(name, "bias"), ctx.full((out,), 0.0))


def project(layer: Layer, key: str, x: Array) -> Array:
    """x @ W^T for the weight layer.params[key]: a float array, a quantized weight (an exact integer
    GEMM for integer types, see quant.qmatmul), or, under quantization-aware training, the
    fake-quantized weight and input (cached for backward)."""
    w = layer.params[key]
    if isinstance(w, quant.AffineQuantized):
        return quant.qmatmul(x, w, x.dtype)
    if layer.qat is None:
        return ops.matmul(x, w.T)
    xq, wq, mask = fake_quant_operands(layer.qat, x, w)
    layer.qat_cache[key] = (xq, wq, mask)
    return ops.matmul(xq, wq.T)


def fake_quant_operands(qat: tuple[str, str], x: Array, w: Array) -> tuple[Array, Array, Array]:
    """(x', w', mask) for QAT: w' = dequant(quant(w)) per the qat setting; for integer types x' is
    quantized per row to int8 as quant.qmatmul does at inference, so the trained network sees the
    arithmetic the quantized one runs. mask is the straight-through gradient mask of w."""
    dtype, per = qat
    qt = quant.quantize(w, dtype, per=per, axis=0)
    wq = quant.dequantize(qt, w.dtype)                      # = quant.fake_quantize(w, ...)
    mask = quant.ste_mask(w, dtype, per=per, axis=0, qt=qt)
    if quant.is_integer(dtype):
        x = quant.fake_quantize(x.reshape(-1, x.shape[-1]), quant.activation_type(dtype), per="channel",
                                axis=0).reshape(x.shape)
    return x, wq, mask


def forward(layer: Layer, name: str, x: Array) -> Array:
    y = project(layer, _key(name, "weight"), x)
    bias = layer.params.get(_key(name, "bias"))
    if bias is not None:
        y += bias                  # in place: y is a fresh array
    return y


def backward(layer: Layer, name: str, x: Array, dy: Array, need_dx: bool = True) -> Array | None:
    """Accumulate the weight and bias gradients for input x (any leading axes); return dL/dx
    (None when need_dx is false)."""
    key = _key(name, "weight")
    w, mask = layer.params[key], None
    if layer.qat is not None and key in layer.qat_cache:      # straight-through: the grads of w' go to w
        x, w, mask = layer.qat_cache[key]
    dy2, x2 = dy.reshape(-1, dy.shape[-1]), x.reshape(-1, x.shape[-1])
    if mask is None:
        layer.accumulate_matmul(key, dy2.T, x2)
    elif layer.trains(key):
        layer.accumulate(key, ops.grad_matmul(dy2.T, x2) * mask)
    if layer.trains(_key(name, "bias")):
        layer.accumulate(_key(name, "bias"), ops.grad_sum(dy2, axis=0))
    if not need_dx:
        return None
    return ops.matmul(dy, w)
