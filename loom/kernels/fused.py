"""Fused operations: several array operations as one, on any backend.

Each function asks the backend that owns its arrays for fused kernels (the CUDA backend has them:
`backend.fused`, loom/backend/cuda/fused.py, in fast mode; `backend.fused_exact`,
loom/backend/cuda/fused_exact.py, in deterministic mode). They run when every array is non-empty,
C-contiguous and of one dtype, float32 or float64 (deterministic row sums: float32); anything else runs
the reference here, with the array module.

The references are the formulas the layers and optimizers use (activation.py, norm.py, attention.py,
optim.py), copied operation for operation, so a layer that switches to these functions keeps its CPU
results bit for bit (tests/kernels/test_fused_reference.py checks that). They are copies, not imports,
because loom/kernels sits below loom/nn. The fast kernels keep the same operation order; they differ from
the reference only where CUDA's transcendentals or a row sum's order round differently. The deterministic
ones differ nowhere: mathlib's transcendentals and exact.sum's row sums give the reference's bits.

Optimizer scalars (step_size, bc2_sqrt, decay, lr) may be Python floats or 0-d arrays of the parameter's
dtype on its device (what a recorded CUDA graph passes); both give the same bits.
"""
from __future__ import annotations

import math

import numpy as np

from .. import backend
from ..backend import Array
from ..backend.cpu import elementwise as elementwise_jit
from ..backend.protocols import FusedKernels
from ..mode import is_deterministic
from . import ops

_FAST_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
# loom/nn/layers/activation.py's constants
_INV_SQRT2 = 1 / math.sqrt(2)
_INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)
TANH_C = math.sqrt(2 / math.pi)     # gelu_tanh's constants (activation.grad uses them too)
TANH_K = 0.044715
BIAS_ACTIVATIONS = ("linear", "relu", "gelu", "gelu_tanh", "silu", "sigmoid", "tanh")
_OUTPUT_GRAD = frozenset({"linear", "relu", "sigmoid", "tanh"})   # activation.OUTPUT_GRAD among them


def _xp(x):
    return backend.of(x).xp


def _kernels(*arrays, arithmetic: bool = False, row_sums: bool = False):
    """The owning backend's fused kernels when they can take `arrays` (None entries are absent
    arguments), else None: the reference runs.

    Fast mode: `backend.fused`. Deterministic mode: `backend.fused_exact`, kernels built to give the
    reference's bits (mathlib's transcendentals, exact.sum's row sums; for float32 only where the
    kernel sums rows), or for an `arithmetic` kernel the fast one: only + - * / sqrt and comparisons,
    correctly rounded, in the reference's order, with no contraction and no flush to zero, so it gives
    the reference's bits too. tests/gpu checks both against the reference."""
    be = backend.of(arrays[0])
    if is_deterministic() and not arithmetic:
        fused = be.fused_exact
        if fused is not None and row_sums and arrays[0].dtype not in fused.ROW_DTYPES:
            return None
    else:
        fused = be.fused
    if fused is None:
        return None
    kind, dtype = type(arrays[0]), arrays[0].dtype
    if dtype not in _FAST_DTYPES:
        return None
    for a in arrays:
        if a is not None and (type(a) is not kind or a.dtype != dtype or a.size == 0 or not a.flags.c_contiguous):
            return None
    return fused


def _row_kernels(x, *per_feature, arithmetic: bool = False, row_sums: bool = True):
    """_kernels for a row operation over x's last axis (summing each row unless not `row_sums`);
    per-feature arrays must be exactly [n]."""
    n = x.shape[-1] if x.ndim else 0
    if any(v is not None and tuple(v.shape) != (n,) for v in per_feature):
        return None
    return _kernels(x, *per_feature, arithmetic=arithmetic, row_sums=row_sums) if x.ndim else None


# --- activations -----------------------------------------------------------------------------------

def lstm_kernels(x: Array) -> FusedKernels | None:
    """The owning backend's fused LSTM steps for a float network whose input is x (lstm_step and
    lstm_step_back: nn/layers/recurrent.py's fused loop, with the composed cell's results, its bits in
    deterministic mode), or None: the layer composes its cell."""
    return _kernels(x)


def gelu(x: Array) -> Array:
    """Exact GELU, 0.5 x (1 + erf(x / sqrt 2))."""
    fused = _kernels(x)
    if fused is not None:
        return fused.gelu(x)
    return _gelu_reference(x)


def _gelu_reference(x):
    return 0.5 * x * (1 + ops.erf(x * _INV_SQRT2))


def gelu_grad(x: Array, dy: Array) -> Array:
    """dL/dx of gelu at x for dL/dy = dy."""
    fused = _kernels(x, dy) if x.shape == dy.shape else None
    if fused is not None:
        return fused.gelu_grad(x, dy)
    cdf = 0.5 * (1 + ops.erf(x * _INV_SQRT2))
    return dy * (cdf + x * _INV_SQRT_2PI * ops.exp(-0.5 * x * x))


def bias_act(z: Array, bias: Array | None, fn: str) -> tuple[Array, Array]:
    """(saved, y): y = fn(z + bias), bias [F] over z's last axis (None: no bias); saved is what
    activation.grad needs as its x: y itself for relu, linear, sigmoid, tanh, else z + bias.
    z may be overwritten (the caller owns it)."""
    if fn not in BIAS_ACTIVATIONS:
        raise ValueError(f"bias_act: unknown activation {fn!r}; expected one of {', '.join(BIAS_ACTIVATIONS)}")
    fused = _row_kernels(z, bias, arithmetic=fn in ("linear", "relu"), row_sums=False)
    if fused is not None:
        return fused.bias_act(z, bias, fn)
    pre = z if bias is None else z + bias
    y = activation(fn, pre, overwrite=True)
    return (y if fn in _OUTPUT_GRAD else pre), y


def activation(fn: str, x: Array, overwrite: bool = False) -> Array:
    """fn(x) for the BIAS_ACTIVATIONS, the formulas activation.apply uses for them (one copy, here,
    below loom/nn); overwrite lets relu run in place on x."""
    if fn == "linear":
        return x
    if fn == "relu":
        return _xp(x).maximum(x, 0, out=x if overwrite else None)
    if fn == "gelu":
        return gelu(x)
    if fn == "gelu_tanh":
        return 0.5 * x * (1 + ops.tanh(TANH_C * (x + TANH_K * x * x * x)))
    if fn == "silu":
        return x * ops.sigmoid(x)
    if fn == "sigmoid":
        return ops.sigmoid(x)
    if fn == "tanh":
        return ops.tanh(x)
    raise ValueError(f"activation: {fn!r} is not one of {', '.join(BIAS_ACTIVATIONS)}")


# --- softmax ---------------------------------------------------------------------------------------

def softmax(x: Array) -> Array:
    """Softmax over the last axis."""
    fused = _row_kernels(x)
    if fused is not None:
        return fused.softmax(x)
    return ops.softmax(x, axis=-1)


def softmax_grad(y: Array, dy: Array) -> Array:
    """dL/dx of y = softmax(x) over the last axis for dL/dy = dy: y (dy - sum(dy y))."""
    # (dy is a whole array like y, not a per-feature one: _kernels, not _row_kernels, checks it)
    fused = _kernels(y, dy, row_sums=True) if y.shape == dy.shape and y.ndim else None
    if fused is not None:
        return fused.softmax_grad(y, dy)
    return y * (dy - ops.sum(dy * y, axis=-1, keepdims=True))


def scaled_masked_softmax(scores: Array, scale: float, causal: bool, offset: int = 0) -> Array:
    """softmax(scores * scale) over the last axis of scores [..., Tq, Tk]; when causal, entry [..., i, j]
    with j > i + offset is masked out (exactly 0), and a query with no key left is all 0."""
    if causal and scores.ndim < 2:
        raise ValueError(f"scaled_masked_softmax: causal scores need shape [..., Tq, Tk], got {list(scores.shape)}")
    fused = _row_kernels(scores)
    if fused is not None:
        return fused.scaled_masked_softmax(scores, scale, causal, offset)
    s = scores * scale
    if not causal:
        return ops.softmax(s, axis=-1)
    xp = _xp(s)
    tq, tk = s.shape[-2:]
    allowed = xp.arange(tk)[None, :] <= xp.arange(tq)[:, None] + offset
    return ops.softmax(s, axis=-1, mask=allowed)


# --- norms -----------------------------------------------------------------------------------------

def layer_norm(x: Array, weight: Array | None, bias: Array | None, eps: float) -> tuple[Array, Array, Array]:
    """(y, xhat, rstd) over the last axis: xhat = (x - mean) / sqrt(var + eps) (biased variance),
    y = xhat * weight + bias (either may be None; without both y is xhat), rstd [..., 1]."""
    fused = _row_kernels(x, weight, bias)
    if fused is not None:
        return fused.layer_norm(x, weight, bias, eps)
    mu = ops.mean(x, axis=-1, keepdims=True)
    xc = x - mu
    var = ops.mean(xc * xc, axis=-1, keepdims=True)
    rstd = 1 / ops.sqrt(var + x.dtype.type(eps))
    xhat = xc * rstd
    y = xhat
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y, xhat, rstd


def layer_norm_grad(dy: Array, xhat: Array, rstd: Array, weight: Array | None) -> Array:
    """dL/dx of layer_norm (weight may be None); the weight and bias gradients stay with the caller."""
    fused = _norm_grad_kernels(dy, xhat, rstd, weight)
    if fused is not None:
        return fused.layer_norm_grad(dy, xhat, rstd, weight)
    if weight is not None:
        dy = dy * weight
    mean_dy = ops.mean(dy, axis=-1, keepdims=True)
    mean_dy_xhat = ops.mean(dy * xhat, axis=-1, keepdims=True)
    return rstd * (dy - mean_dy - xhat * mean_dy_xhat)


def rms_norm(x: Array, weight: Array | None, eps: float) -> tuple[Array, Array, Array]:
    """(y, xhat, rstd) over the last axis: xhat = x / sqrt(mean(x^2) + eps), y = xhat * weight
    (weight may be None: y is xhat), rstd [..., 1]."""
    fused = _row_kernels(x, weight)
    if fused is not None:
        return fused.rms_norm(x, weight, eps)
    rstd = 1 / ops.sqrt(ops.mean(x * x, axis=-1, keepdims=True) + x.dtype.type(eps))
    xhat = x * rstd
    return (xhat if weight is None else xhat * weight), xhat, rstd


def rms_norm_grad(dy: Array, xhat: Array, rstd: Array, weight: Array | None) -> Array:
    """dL/dx of rms_norm (weight may be None); the weight gradient stays with the caller."""
    fused = _norm_grad_kernels(dy, xhat, rstd, weight)
    if fused is not None:
        return fused.rms_norm_grad(dy, xhat, rstd, weight)
    g = dy if weight is None else dy * weight
    return rstd * (g - xhat * ops.mean(g * xhat, axis=-1, keepdims=True))


def _norm_grad_kernels(dy, xhat, rstd, weight):
    if dy.shape != xhat.shape or dy.ndim == 0 or tuple(rstd.shape) != dy.shape[:-1] + (1,):
        return None
    fused = _row_kernels(dy, weight)
    return fused if fused is not None and _kernels(dy, xhat, rstd, row_sums=True) is not None else None


# --- optimizers ------------------------------------------------------------------------------------

def adam_update(p: Array, g: Array, m: Array, v: Array, vmax: Array | None, step_size: float | Array,
                bc2_sqrt: float | Array, b1: float, b2: float, eps: float, l2: float,
                decay: float | Array | None) -> None:
    """One Adam/AdamW step in place, as optim.Adam.update: l2 (0 for none) adds l2 * p to the gradient;
    decay (None for none) is AdamW's factor 1 - lr * wd; step_size = lr / (1 - b1^t);
    bc2_sqrt = sqrt(1 - b2^t); vmax (None without amsgrad) keeps the running maximum of v.
    g is not modified."""
    fused = _kernels(p, g, m, v, vmax, arithmetic=True) if _same_shapes(p, g, m, v, vmax) else None
    if fused is not None:
        fused.adam_update(p, g, m, v, vmax, step_size, bc2_sqrt, b1, b2, eps, l2, decay)
        return
    if l2 != 0:
        g = g + l2 * p
    if decay is not None:
        p *= decay
    lerp(m, g, 1 - b1)
    v *= b2
    v += (1 - b2) * g * g
    if vmax is not None:
        _xp(vmax).maximum(vmax, v, out=vmax)
        v = vmax
    denom = ops.sqrt(v) / bc2_sqrt + eps
    p += (-step_size * m) / denom


def sgd_update(p: Array, g: Array, buf: Array | None, lr: float | Array, momentum: float, dampening: float,
               nesterov: bool, wd: float, first: bool) -> None:
    """One SGD step in place, as optim.SGD.update: buf is the momentum buffer (None when momentum is 0);
    first: this is update 1 (buf = g). g is not modified."""
    if momentum != 0 and buf is None:
        raise ValueError(f"sgd_update: momentum {momentum:g} needs a momentum buffer, got buf=None")
    fused = _kernels(p, g, buf, arithmetic=True) if _same_shapes(p, g, buf) else None
    if fused is not None:
        fused.sgd_update(p, g, buf, lr, momentum, dampening, nesterov, wd, first)
        return
    if elementwise_jit.takes(p, g, buf):            # the CPU's compiled loop: these bits, one pass
        lr_scalar = elementwise_jit.scalar(lr, p.dtype)
        if lr_scalar is not None and elementwise_jit.available():
            elementwise_jit.sgd_update(p, g, buf, lr_scalar, momentum, dampening, nesterov, wd, first)
            return
    if wd != 0:
        g = g + wd * p
    if momentum != 0:
        if first:
            buf[...] = g
        else:
            buf *= momentum
            buf += (1 - dampening) * g
        g = g + momentum * buf if nesterov else buf
    p -= lr * g


def _same_shapes(p, *others) -> bool:
    return all(a is None or a.shape == p.shape for a in others)


def lerp(a: Array, b: Array, w: float) -> None:
    """a <- a + w (b - a) in place, with torch.lerp's two forms (the second keeps w near 1 exact)."""
    if abs(w) < 0.5:
        a += w * (b - a)
    else:
        a[...] = b - (b - a) * (1 - w)


__all__ = ["gelu", "gelu_grad", "bias_act", "softmax", "softmax_grad", "scaled_masked_softmax", "layer_norm",
           "layer_norm_grad", "rms_norm", "rms_norm_grad", "adam_update", "sgd_update", "BIAS_ACTIVATIONS",
           "activation", "lerp"]
