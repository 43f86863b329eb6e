"""Mixed precision for training: the arithmetic of a step's products.

"float32" (the default) computes every product of float32 operands. "bf16" is mixed precision as
PyTorch's autocast gives it: each operand of a product (`ops.matmul` and `ops.grad_matmul`: every
dense, convolution, attention, recurrent, SwiGLU and adaptive-softmax product, forward and backward) is
rounded to bfloat16 (to nearest, ties to even; overflow to infinity), and the product of those bfloat16
values is taken as float32 products are, in the mode in effect: exactly and rounded once in
deterministic mode (docs/determinism.md), by the BLAS in fast mode. Everything else stays float32: the
master weights, gradients and their sums, the optimizer's state and update, activations, norms, softmax,
losses. docs/determinism.md ("bf16 mixed precision") has the table of which operations run in which
precision, and what the bits depend on.

Like the mode (loom.mode), the precision is a context variable: `with loom.precision("bf16"):` affects
the current thread and asyncio task, and nests. `loom.train(..., precision="bf16")`, the training
block's "precision" and `loom train --precision bf16` set it for a training run.
"""
from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

import numpy as np

from .errors import ConfigError

PRECISIONS = ("float32", "bf16")
# Layer types whose products cannot be rounded to bfloat16, and why (loom.train refuses them under bf16)
REFUSED = {
    "kmeans": "its products are distances to the centroids, whose nearest one must not change with rounding "
              "(PyTorch's autocast keeps cdist in float32)",
}
_OPENFLUKE = "an openfluke compatibility layer computes its products in float64, as openfluke does"

_PRECISION = contextvars.ContextVar("loom_precision", default="float32")


def current() -> str:
    return _PRECISION.get()


def is_bf16() -> bool:
    return _PRECISION.get() == "bf16"


@contextlib.contextmanager
def precision(name: str = "float32") -> Iterator[None]:
    """`with loom.precision("bf16"):` rounds the operands of the block's products to bfloat16."""
    token = _PRECISION.set(check(name, "precision"))
    try:
        yield
    finally:
        _PRECISION.reset(token)


def check(value: Any, where: str) -> str:
    """value if it names a precision, else ConfigError at `where`."""
    if not isinstance(value, str) or value not in PRECISIONS:
        raise ConfigError(where, f"expected one of {', '.join(PRECISIONS)}, got {value!r}")
    return value


def check_network(net: Any, value: str, where: str) -> None:
    """ConfigError at `where` when `net` cannot train in precision `value`: bf16 needs a float32 network
    without quantization-aware training, and no layer of REFUSED's types or openfluke's."""
    if value == "float32":
        return
    dtype = net.config.get("dtype", "float32")
    if dtype != "float32":
        raise ConfigError(where, f"bf16 mixed precision trains float32 networks; this one computes in {dtype} "
                                 "(its \"dtype\")")
    if net.config.get("quantization") is not None:
        raise ConfigError(where, "bf16 mixed precision trains float weights; this network's are quantized (its "
                                 "\"quantization\" block: inference only)")
    if net.config.get("qat") is not None:
        raise ConfigError(where, "bf16 mixed precision and quantization-aware training (the \"qat\" block) "
                                 "both set the products' operands; use one")
    for path, layer in net.root.walk():
        kind = layer.cfg.get("type", "")
        reason = REFUSED.get(kind) or (_OPENFLUKE if kind.startswith("openfluke") else None)
        if reason is not None:
            raise ConfigError(where, f"{path or 'the network'} ({kind}) cannot train in bf16: {reason}")


def round_bf16(x: Any, xp: Any) -> Any:
    """float32 array x rounded to bfloat16's values (kept as float32): to nearest, ties to even, values
    past bfloat16's largest to infinity, subnormals kept, NaN kept. Integer arithmetic on the bits, so
    every backend gives the same bits."""
    if x.dtype != np.float32:
        raise TypeError(f"bf16 rounding takes float32 operands, got {x.dtype}")
    bits = xp.ascontiguousarray(x).reshape(x.shape).view(np.uint32)     # (0-d stays 0-d)
    up = (bits >> np.uint32(16)) & np.uint32(1)
    rounded = ((bits + np.uint32(0x7FFF) + up) & np.uint32(0xFFFF0000)).view(np.float32)
    return xp.where(xp.isnan(x), x, rounded)
