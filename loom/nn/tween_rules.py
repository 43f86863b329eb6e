"""Gap mode's per-layer rules (loom.nn.tween): for one top-level layer, given its input x, its output
y and the target t of its output, write the layer's update direction into its gradient buffers and
return the target of its input (the estimate the layer below tries to reach).

With gap = t - y and B the batch size:

  matrix layers (dense, conv1d/2d/3d: y = act(A x + b), A linear in the weight):
      direction  g_W = -(1/B) sum_b s_b gap_b^T x_b  (conv: over the im2col rows),  g_b = -(1/B) sum_b s_b gap_b
                 (Hebbian input x gap; the activation's derivative is deliberately left out), with
                 s_b = 1 / (|x_b|^2 + P_b) when normalize (P_b: the sample's rows, 1 for dense on
                 [B, F]; conv: |x_b|^2 over the sample's patches, averaged over groups), else 1
      estimate   est = x + (A^T gap) / (|A|^T 1)     projection "gap"
                 est = (A^T t) / (|A|^T 1)           projection "target" (the seeds' formula)
                 where |A|^T 1 = sum_out |W[out, in]| (conv: over every output that reads the
                 input element); where that sum is not above min_weight_sum, est = x.
  every other layer (norms, recurrent, attention, containers, pools, ...): the layer's own backward
      of the local loss (1/2B) |y - t|^2: the direction is that loss's true parameter gradient and
                 est = x + d * |gap_b| / (|d_b| + 1e-12) per sample b, with d = -(input gradient):
                 the backward's direction, rescaled to the sample's gap norm.

Both estimates are bounded: the normalized back-projection is a weighted average of output gaps
(|est - x| <= max |gap|), the fallback keeps each sample's gap norm.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..backend import Array
from ..kernels import ops, windows
from .layers import Layer
from .layers.activation import SELU_ALPHA, SELU_LAMBDA

INF = math.inf
EPS = 1e-12
# The range of each activation's output, rounded outward (gelu's minimum is -0.16997..., silu's
# -0.27846..., mish's -0.30884...).
ACTIVATION_RANGES: dict[str, tuple[float, float]] = {
    "linear": (-INF, INF), "relu": (0.0, INF), "leaky_relu": (-INF, INF), "elu": (-1.0, INF),
    "selu": (-SELU_LAMBDA * SELU_ALPHA, INF), "gelu": (-0.1700, INF), "gelu_tanh": (-0.1700, INF),
    "silu": (-0.2785, INF), "mish": (-0.3089, INF), "softplus": (0.0, INF), "sigmoid": (0.0, 1.0),
    "tanh": (-1.0, 1.0), "hard_sigmoid": (0.0, 1.0)}
# softmax variants whose outputs are probabilities
PROBABILITY_SOFTMAX = frozenset({"standard", "temperature", "gumbel", "masked", "sparsemax", "entmax",
                                 "grid", "hierarchical"})
MATRIX_TYPES = frozenset({"dense", "conv1d", "conv2d", "conv3d"})


def output_range(layer: Layer) -> tuple[float, float]:
    """The interval a layer's outputs lie in, as far as its type says (else unbounded)."""
    cfg = layer.cfg
    if layer.type == "activation":
        return ACTIVATION_RANGES.get(cfg["fn"], (-INF, INF))
    if layer.type in ("softmax", "openfluke_softmax") and cfg.get("variant", "standard") in PROBABILITY_SOFTMAX:
        return (0.0, 1.0)
    fn = cfg.get("activation")
    return ACTIVATION_RANGES.get(fn, (-INF, INF)) if isinstance(fn, str) else (-INF, INF)


def clamp_range(layer: Layer, to_activation: bool, bound: float | None) -> tuple[float, float] | None:
    """The interval estimated targets of `layer`'s output are clamped to (None: no clamp)."""
    lo, hi = output_range(layer) if to_activation else (-INF, INF)
    if bound is not None:
        lo, hi = max(lo, -bound), min(hi, bound)
    return None if lo == -INF and hi == INF else (lo, hi)


def link_budget(x: Array, y: Array) -> Array:
    """rms(y) / (rms(x) + 1e-12) as a 0-d float64 array on the layer's device: how much of the
    input's signal the layer passes on. 1 for integer inputs (token ids carry no magnitude)."""
    xp = _xp(y)
    if x.dtype.kind != "f":
        return xp.ones((), dtype=np.float64)
    return _rms(y) / (_rms(x) + EPS)


def _rms(a):
    return ops.sqrt(ops.sum(a * a).astype(np.float64) / np.float64(a.size))


def _xp(a):
    from .. import backend
    return backend.of(a).xp


def is_matrix(layer: Layer) -> bool:
    """Whether the layer takes the matrix rule (dense, or a convolution with a float weight)."""
    return layer.type in MATRIX_TYPES and isinstance(layer.params.get("weight"), layer.xp.ndarray)


def matrix_rule(layer: Layer, x: Array, y: Array, t: Array, settings: Any, need_estimate: bool) -> Array | None:
    """The matrix rule for dense and conv layers (see the module docstring). `settings`: the
    TweenConfig (normalize, projection, min_weight_sum)."""
    gap = t - y
    if layer.type == "dense":
        return _dense(layer, x, gap, t, settings, need_estimate)
    return _conv(layer, x, gap, t, settings, need_estimate)


def _direction_scale(energy: Array | None, positions: int, batch: int, like: Array) -> Array | float:
    """-(1/B), or with normalize -(1/B) / (energy_b + positions) per sample b, shaped to broadcast
    against `like` (a [B, ...] array)."""
    if energy is None:
        return like.dtype.type(-1.0 / batch)
    scale = like.dtype.type(-1.0 / batch) / (energy.astype(like.dtype) + like.dtype.type(positions))
    return scale.reshape((batch,) + (1,) * (like.ndim - 1))


def _dense(layer, x, gap, t, settings, need_estimate):
    w = layer.params["weight"]                                 # [out, in]
    b = x.shape[0]
    energy = ops.sum((x * x).reshape(b, -1), axis=1) if settings.normalize else None   # sum of |x_r|^2 per sample
    neg = gap * _direction_scale(energy, x.size // (b * x.shape[-1]), b, gap)
    n2, x2 = neg.reshape(-1, neg.shape[-1]), x.reshape(-1, x.shape[-1])
    layer.accumulate_matmul("weight", n2.T, x2)
    if "bias" in layer.params:
        layer.accumulate("bias", ops.sum(n2, axis=0))
    if not need_estimate:
        return None
    den = ops.sum(layer.xp.abs(w), axis=0)                     # [in]: sum_out |W[out, in]|
    num = ops.matmul(gap if settings.projection == "gap" else t, w)
    return _estimate(x, num, den, settings)


def _conv(layer, x, gap, t, settings, need_estimate):
    xp, g = layer.xp, layer.geom
    w = layer.params["weight"]
    wm = w.reshape(g.groups, w.shape[0] // g.groups, -1)        # [G, Co/G, Ci/G*prod(k)]
    b, c = x.shape[:2]
    positions = math.prod(gap.shape[2:])
    cols = windows.im2col(xp, x, g)                            # [G, B*P, Ci/G*prod(k)]
    energy = None
    if settings.normalize:                                     # sum over the sample's patches, mean over groups
        energy = ops.sum((cols * cols).reshape(g.groups, b, -1), axis=(0, 2)) / cols.dtype.type(g.groups)
    neg = gap * _direction_scale(energy, positions, b, gap)
    if "weight" in layer.grads:                                # not frozen
        layer.accumulate("weight", windows.weight_grad(xp, windows.to_rows(neg, g.groups), cols, w.shape))
    if "bias" in layer.params:
        layer.accumulate("bias", ops.sum(neg, axis=(0,) + tuple(range(2, neg.ndim))))
    if not need_estimate:
        return None
    src = gap if settings.projection == "gap" else t
    num = windows.correlate_adjoint_rows(xp, windows.to_rows(src, g.groups), wm, g, b, c)
    ones = windows.to_rows(xp.ones((1,) + tuple(gap.shape[1:]), dtype=gap.dtype), g.groups)
    den = windows.correlate_adjoint_rows(xp, ones, xp.abs(wm), g, 1, c)   # [1, C, *in]: |A|^T 1
    return _estimate(x, num, den, settings)


def _estimate(x, num, den, settings):
    xp = _xp(x)
    ok = den > den.dtype.type(settings.min_weight_sum)
    share = num / xp.where(ok, den, den.dtype.type(1))
    if settings.projection == "gap":
        return x + xp.where(ok, share, share.dtype.type(0))
    return xp.where(ok, share, x)


def fallback_rule(owner: Layer, layer: Layer, x: Array, y: Array, t: Array, need_estimate: bool) -> Array | None:
    """The rule for every other layer: its backward of (y - t) / B (see the module docstring).
    owner: the layer's container (its backward_child skips a fully frozen layer)."""
    gap = t - y
    scale = gap.dtype.type(1.0 / x.shape[0])
    dx = owner.backward_child(layer, -gap * scale, need_estimate and x.dtype.kind == "f")
    if dx is None:
        return None
    d = -dx
    per_sample = (x.shape[0],) + (1,) * (x.ndim - 1)
    d_norm = _sample_norms(d).reshape(per_sample)
    g_norm = _sample_norms(gap).reshape(per_sample)
    return x + d * (g_norm / (d_norm + d_norm.dtype.type(EPS)))


def _sample_norms(a):
    """The Euclidean norm of each sample (row of the batch axis), shape [B]."""
    return ops.sqrt(ops.sum((a * a).reshape(a.shape[0], -1), axis=1))


__all__ = ["ACTIVATION_RANGES", "MATRIX_TYPES", "clamp_range", "fallback_rule", "is_matrix", "link_budget",
           "matrix_rule", "output_range"]
