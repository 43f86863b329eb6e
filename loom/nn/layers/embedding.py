"""Embedding: integer ids [..] -> vectors [.., dim] by row lookup in weight [vocab_size, dim]."""
from __future__ import annotations

from typing import Any

from ...backend import Array
from ...errors import ShapeError
from ...kernels import ops
from ...kernels.quant import affine as quant
from .base import BuildContext, ForwardContext, Layer, Spec, register


@register("embedding")
class Embedding(Layer):
    QUANT_WEIGHTS = ("weight",)      # rows dequantized on lookup; per channel = one scale per token

    def build(self, cfg: dict[str, Any], in_spec: Spec, ctx: BuildContext) -> Spec:
        if in_spec.is_float:
            raise ctx.error(f"embedding needs integer ids as input, got {in_spec.dtype} "
                            "(set input.dtype to int64 or int32)")
        self.vocab = cfg["vocab_size"]
        self.add_param("weight", ctx.normal("weight", (self.vocab, cfg["dim"])))  # N(0, 1) as in PyTorch
        return Spec(in_spec.shape + (cfg["dim"],), self.dtype)

    def forward(self, ids: Array, fc: ForwardContext) -> Array:
        if fc.checked:
            self.check_ids(ids)
        self.ids = ids
        w = self.params["weight"]
        if isinstance(w, quant.AffineQuantized):
            return quant.take_rows(w, ids, self.dtype)
        return w[ids]

    def check_ids(self, ids: Array) -> None:
        """ShapeError naming the first id outside [0, vocab_size) (synchronizes with the device)."""
        from ... import backend
        xp = backend.of(ids).xp            # ids may still be on the host (checked before copying in)
        bad = (ids < 0) | (ids >= self.vocab)
        if bool(bad.any()):
            where = tuple(int(i) for i in xp.argwhere(bad)[0])
            raise ShapeError(f"{self.path}: token id {int(ids[where])} at index {list(where)} is outside "
                             f"[0, vocab_size={self.vocab})")

    def backward(self, dy: Array) -> None:
        if self.trains("weight"):
            flat = dy.reshape(-1, dy.shape[-1])
            ops.grad_index_add(self.grads["weight"], self.ids.reshape(-1), flat)
        return None
