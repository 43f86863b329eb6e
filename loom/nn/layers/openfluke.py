"""openfluke compatibility types: the core layers computing as openfluke welvet computes.

loom/formats/openfluke.py imports welvet models into these types; each is a core layer plus the keys
that switch its arithmetic to welvet's (docs/interop.md: what welvet does, measured against 0.80):

- `openfluke_dense`: dense whose products are summed in float64 over consecutive blocks of
  `accumulate_block` inputs, the running sum rounded to the compute dtype after each block.
- `openfluke_layer_norm`, `openfluke_rms_norm` (`compute_dtype` "float64"): statistics,
  normalization and the affine map in float64 on the widened input, rounded once to the network
  dtype; the backward pass runs in float64 too.
- `openfluke_attention` (`span` "batch"): the whole batch is one sequence, sample b following sample
  b-1 with positions running on (welvet's KV cache runs on across a batch); takes no attention_mask.
- `openfluke_softmax`: `normalize` "batch" treats the whole batch tensor as one vector; entmax `form`
  "blend" is ((2 - alpha) softmax + (alpha - 1) sparsemax) / its sum, welvet's stand-in for entmax.

The backward passes are those of the maps computed (dense: of the exact product x W^T). The core
layers have none of these keys; loom/config.py reads a core layer that sets one (as configs were
written before these types) as the openfluke type.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ...backend import Array
from ...errors import ShapeError
from ...kernels import ops
from . import activation
from . import softmax_sparse as sparse
from .attention import MultiHeadAttention
from .base import BuildContext, ForwardContext, Layer, Spec, register
from .dense import Dense
from .norm import LayerNorm, RMSNorm, rms_norm_backward
from .softmax import Softmax, Standard, softmax, softmax_grad


def _xp(x):
    from ... import backend
    return backend.of(x).xp


@register("openfluke_dense")
class OpenflukeDense(Dense):
    """dense with float64 block sums (`accumulate_block`); a quantized weight or QAT runs the core's
    GEMM, as the blocks describe float arithmetic."""

    def build(self, cfg: dict[str, Any], in_spec: Spec, ctx: BuildContext) -> Spec:
        self.block = cfg["accumulate_block"]
        return super().build(cfg, in_spec, ctx)

    def forward(self, x: Array, fc: ForwardContext) -> Array:
        if not self.float_weight():
            return super().forward(x, fc)
        self.x = x
        self.z, self.y = activation.forward(self.act, self._blocked(x))
        return self.y

    def _blocked(self, x):
        """x W^T (+ b) with float64 block sums, the running sum rounded to x.dtype after each block."""
        w64 = self.params["weight"].astype(np.float64)
        x64 = x.astype(np.float64)
        acc = self.xp.zeros(x.shape[:-1] + (w64.shape[0],), dtype=x.dtype)
        for start in range(0, w64.shape[1], self.block):
            part = ops.matmul(x64[..., start:start + self.block], w64[:, start:start + self.block].T)
            acc = (acc.astype(np.float64) + part).astype(x.dtype)
        bias = self.params.get("bias")
        return acc + bias if bias is not None else acc


@register("openfluke_layer_norm")
class OpenflukeLayerNorm(LayerNorm):
    """layer_norm in float64 (`compute_dtype`), rounded once to the input's dtype. The core backward
    already runs in the dtype of the cached statistics."""

    def forward(self, x: Array, fc: ForwardContext) -> Array:
        return super().forward(x.astype(np.float64), fc).astype(x.dtype)


@register("openfluke_rms_norm")
class OpenflukeRMSNorm(RMSNorm):
    """rms_norm in float64 (`compute_dtype`), forward and backward, rounded once to the input's dtype."""

    def forward(self, x: Array, fc: ForwardContext) -> Array:
        return super().forward(x.astype(np.float64), fc).astype(x.dtype)

    def backward(self, dy: Array) -> Array:
        dx, dweight = rms_norm_backward(dy.astype(np.float64), self.cache, self.params["weight"])
        if self.trains("weight"):
            self.grads["weight"] += dweight.astype(dy.dtype)
        return dx.astype(dy.dtype)


@register("openfluke_attention")
class OpenflukeAttention(MultiHeadAttention):
    """multi_head_attention over the whole batch as one sequence (`span` "batch"): [B, T, E] runs as
    [1, B*T, E], with RoPE tables for B*T positions (made once per length)."""

    def build(self, cfg: dict[str, Any], in_spec: Spec, ctx: BuildContext) -> Spec:
        out = super().build(cfg, in_spec, ctx)
        self._rope_tables = {in_spec.shape[0]: self.rope}
        return out

    def forward(self, x: Array, fc: ForwardContext) -> Array:
        if fc.attention_mask is not None:
            raise ShapeError(f"{self.path}: span batch runs the batch as one sequence; it takes no attention_mask")
        B, T, E = x.shape
        if B * T not in self._rope_tables:
            self._rope_tables[B * T] = self.rope_for(B * T)
        self.rope = self._rope_tables[B * T]
        return super().forward(x.reshape(1, B * T, E), fc).reshape(B, T, -1)

    def backward(self, dy: Array) -> Array:
        B, T, E = dy.shape
        return super().backward(dy.reshape(1, B * T, E)).reshape(B, T, -1)


class EntmaxBlend(Standard):
    """form "blend": ((2 - alpha) softmax(s) + (alpha - 1) sparsemax(s)) / its sum, openfluke
    welvet's stand-in for entmax (the sum is 1 up to rounding; dividing by it is part of the map)."""

    def __init__(self, layer: Layer, cfg: dict[str, Any], in_spec: Spec, ctx: BuildContext):
        super().__init__(layer, cfg, in_spec, ctx)
        self.a, self.b = 2.0 - cfg["alpha"], cfg["alpha"] - 1.0

    def forward(self, s: Array, fc: ForwardContext) -> Array:
        self.p1, self.p2 = softmax(s), sparse.sparsemax(s)
        r = self.a * self.p1 + self.b * self.p2
        self.total = ops.sum(r, axis=-1, keepdims=True)
        self.p = r / self.total
        return self.p

    def backward(self, dy: Array) -> Array:
        dr = (dy - ops.sum(dy * self.p, axis=-1, keepdims=True)) / self.total
        return softmax_grad(self.p1, self.a * dr) + sparse.sparsemax_grad(self.p2, self.b * dr)


class BatchGrid(Standard):
    """grid with normalize "batch": the batch arrives flattened to [1, N]; a softmax over each of
    the first `rows` runs of `cols` values, every later value 0 (openfluke welvet's grid softmax)."""

    def __init__(self, layer: Layer, cfg: dict[str, Any], in_spec: Spec, ctx: BuildContext):
        super().__init__(layer, cfg, in_spec, ctx)
        self.rows, self.cols = cfg["rows"], cfg["cols"]

    def forward(self, s: Array, fc: ForwardContext) -> Array:
        k = self.rows * self.cols
        if k > s.shape[-1]:
            raise ShapeError(f"{self.layer.path}: grid softmax with normalize batch needs rows*cols = {k} "
                             f"values, but the batch holds {s.shape[-1]}")
        self.p = softmax(s[..., :k].reshape(s.shape[:-1] + (self.rows, self.cols)))
        out = _xp(s).zeros_like(s)
        out[..., :k] = self.p.reshape(s.shape[:-1] + (k,))
        return out

    def backward(self, dy: Array) -> Array:
        k = self.rows * self.cols
        ds = _xp(dy).zeros_like(dy)
        ds[..., :k] = softmax_grad(self.p, dy[..., :k].reshape(self.p.shape)).reshape(dy.shape[:-1] + (k,))
        return ds


@register("openfluke_softmax")
class OpenflukeSoftmax(Softmax):
    """softmax with `normalize` "batch" (the batch tensor flattened to one vector [1, N] around the
    variant) and entmax `form` "blend"."""

    def build(self, cfg: dict[str, Any], in_spec: Spec, ctx: BuildContext) -> Spec:
        self.batch = cfg["normalize"] == "batch"
        return super().build(cfg, in_spec, ctx)

    def variant_class(self, cfg: dict[str, Any]) -> type:
        if cfg.get("form") == "blend":
            return EntmaxBlend
        if self.batch and cfg["variant"] == "grid":
            return BatchGrid
        return super().variant_class(cfg)

    def forward(self, x: Array, fc: ForwardContext) -> Array:
        if not self.batch:
            return super().forward(x, fc)
        return super().forward(x.reshape(1, -1), fc).reshape(x.shape)   # one vector per batch

    def backward(self, dy: Array) -> Array:
        if not self.batch:
            return super().backward(dy)
        return super().backward(dy.reshape(1, -1)).reshape(dy.shape)
