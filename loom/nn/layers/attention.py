"""Multi-head self-attention over a sequence [T, E], with GQA, RoPE, QK-norm, causal and padding masks.

Parameters are named like HuggingFace Llama's attention so checkpoints map by name:
q_proj.weight [heads*hd, E], k_proj.weight [kv*hd, E], v_proj.weight [kv*hd, E],
o_proj.weight [E, heads*hd] (+ ".bias" of each when bias), q_norm.weight / k_norm.weight [hd]
with qk_norm (Qwen3).

Per head: q, k (RMS-normed over hd with qk_norm, then rotated with rope), scores q k^T / sqrt(hd),
keys j > i masked when causal, padded keys (attention_mask False) masked, stable softmax, times v.
A query whose keys are all masked outputs zeros. Key/value head j serves query heads
j*R ... (j+1)*R - 1 with R = heads / kv_heads (HF repeat_kv order).

Internally q is kept as [B, kv, R*T, hd] so every GEMM is a plain batched [B, kv] matmul and the
GQA sums over the R query heads of a kv head fall out of the backward GEMMs. openfluke welvet's
attention, which runs a whole batch as one sequence, is `openfluke_attention` (loom/nn/layers/openfluke.py).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from ... import rng
from ...backend import Array
from ...errors import ShapeError
from ...kernels import fused, ops
from . import linear
from .base import BuildContext, ForwardContext, Layer, Spec, register
from .norm import rms_norm, rms_norm_backward

NORM_EPS = 1e-6


def rope_tables(steps: int, hd: int, theta: float, scaling: float | None) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin [T, hd] for HF's rotate-half RoPE, in float64 on the host.

    inv_freq_i = theta^(-2i/hd), angle = (position / scaling) * inv_freq, duplicated over both
    halves. The cosines come from rng.exact_cos_2pi (correctly rounded operations only), so the
    tables are the same bits on every machine, unlike libm's cos.
    """
    inv_freq = np.array([theta ** (-(2.0 * i) / hd) for i in range(hd // 2)], dtype=np.float64)
    pos = np.arange(steps, dtype=np.float64)
    if scaling is not None:
        pos = pos / scaling
    turns = np.outer(pos, inv_freq) / (2.0 * np.pi)
    turns = np.concatenate([turns, turns], axis=1)
    return rng.exact_cos_2pi(turns), rng.exact_cos_2pi(turns - 0.25)


@register("multi_head_attention")
class MultiHeadAttention(Layer):
    QUANT_WEIGHTS = ("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight")
    SUPPORTS_QAT = True      # through linear.forward/backward

    def build(self, cfg: dict[str, Any], in_spec: Spec, ctx: BuildContext) -> Spec:
        self.require_float(in_spec, ctx)
        if len(in_spec.shape) != 2:
            raise ctx.error(f"multi_head_attention needs a sequence [T, E] per sample, "
                            f"got shape {list(in_spec.shape)}")
        steps, embed = in_spec.shape
        heads = cfg["heads"]
        kv = heads if cfg["kv_heads"] is None else cfg["kv_heads"]
        if heads % kv:
            raise ctx.error(f"heads ({heads}) must be a multiple of kv_heads ({kv})", "kv_heads")
        if cfg["head_dim"] is None:
            if embed % heads:
                raise ctx.error(f"the embedding size {embed} is not divisible by heads={heads}; "
                                "set head_dim or change heads", "heads")
            hd = embed // heads
        else:
            hd = cfg["head_dim"]
        if cfg["rope"] is not None and hd % 2:
            raise ctx.error(f"rope needs an even head dimension, got {hd}", "rope")
        self.T, self.E, self.heads, self.kv, self.hd = steps, embed, heads, kv, hd
        self.R = heads // kv
        self.causal, self.qk_norm = cfg["causal"], cfg["qk_norm"]
        self.scale = 1.0 / math.sqrt(hd)

        def proj(name, rows, cols):  # Glorot uniform
            linear.create(self, ctx, name, rows, cols, math.sqrt(6.0 / (rows + cols)), cfg["bias"])

        proj("q_proj", heads * hd, embed)
        proj("k_proj", kv * hd, embed)
        proj("v_proj", kv * hd, embed)
        proj("o_proj", embed, heads * hd)
        if self.qk_norm:
            self.add_param("q_norm.weight", ctx.full((hd,), 1.0))
            self.add_param("k_norm.weight", ctx.full((hd,), 1.0))
        self.rope = self.rope_for(steps)
        return Spec((steps, embed), in_spec.dtype)

    def rope_for(self, n: int) -> tuple[Array, Array] | None:
        """The cos/sin tables [n, hd] of positions 0..n-1 on the device (None without RoPE)."""
        if self.cfg["rope"] is None:
            return None
        cos, sin = rope_tables(n, self.hd, self.cfg["rope"]["theta"], self.cfg["rope"]["scaling"])
        return self.B.asarray(cos.astype(self.dtype)), self.B.asarray(sin.astype(self.dtype))

    # --- pieces, each with its gradient ---
    def _rms(self, x, name):
        return rms_norm(x, self.params[name], NORM_EPS)

    def _rms_back(self, dy, cache, name):
        dx, dweight = rms_norm_backward(dy, cache, self.params[name])
        if self.trains(name):
            self.grads[name] += dweight
        return dx

    def _rotate(self, x, sign):
        """rotate_half(x) = [-x2, x1] (sign=1) or its transpose [x2, -x1] (sign=-1)."""
        half = self.hd // 2
        x1, x2 = x[..., :half], x[..., half:]
        return self.xp.concatenate([-x2, x1] if sign > 0 else [x2, -x1], axis=-1)

    def _rope(self, x):
        cos, sin = self.rope                         # [T, hd]; x [..., T, hd]
        return x * cos + self._rotate(x, 1) * sin

    def _rope_back(self, dy):
        cos, sin = self.rope
        return dy * cos + self._rotate(dy * sin, -1)

    def _heads(self, y, n):
        """[B, T, n*hd] -> [B, n, T, hd]."""
        B, T = y.shape[:2]
        return y.reshape(B, T, n, self.hd).transpose(0, 2, 1, 3)

    def _unheads(self, y):
        """[B, n, T, hd] -> [B, T, n*hd]."""
        B, n, T = y.shape[:3]
        return y.transpose(0, 2, 1, 3).reshape(B, T, n * self.hd)

    def _allowed(self, fc, B, T):
        """Bool [B|1, 1, 1, T, T] of the (query, key) pairs that may attend, or None for all."""
        xp = self.xp
        allowed = None
        if self.causal:
            allowed = xp.tril(xp.ones((T, T), dtype=bool))[None, None, None]
        mask = fc.attention_mask
        if mask is not None:
            if tuple(mask.shape) != (B, T):
                raise ShapeError(f"{self.path}: attention_mask has shape {list(mask.shape)}, "
                                 f"expected [batch={B}, T={T}]")
            keys = mask.astype(bool)[:, None, None, None, :]
            allowed = keys if allowed is None else allowed & keys
        return allowed

    # --- forward / backward ---
    def forward(self, x: Array, fc: ForwardContext) -> Array:
        B, T, _ = x.shape
        H, KV, R, hd = self.heads, self.kv, self.R, self.hd
        q = self._heads(linear.forward(self, "q_proj", x), H)               # [B, H, T, hd]
        k = self._heads(linear.forward(self, "k_proj", x), KV)              # [B, KV, T, hd]
        v = self._heads(linear.forward(self, "v_proj", x), KV)
        self.qn = self.kn = None
        if self.qk_norm:
            q, self.qn = self._rms(q, "q_norm.weight")
            k, self.kn = self._rms(k, "k_norm.weight")
        if self.rope is not None:
            q, k = self._rope(q), self._rope(k)
        q = q.reshape(B, KV, R * T, hd)                              # query head h = j*R + r
        scores = ops.matmul(q, k.transpose(0, 1, 3, 2))              # [B, KV, R*T, T]
        if fc.attention_mask is None:                                # scale, causal mask, softmax: one kernel on the GPU
            p = fused.scaled_masked_softmax(scores.reshape(B, KV, R, T, T), self.scale,
                                            self.causal).reshape(B, KV, R * T, T)
        else:                                                        # a query with every key masked gets 0
            p = ops.softmax((scores * self.scale).reshape(B, KV, R, T, T), axis=-1,
                            mask=self._allowed(fc, B, T)).reshape(B, KV, R * T, T)
        ctx = ops.matmul(p, v).reshape(B, H, T, hd)                  # [B, H, T, hd]
        ctx = self._unheads(ctx)                                     # [B, T, H*hd]
        self.x, self.q, self.k, self.v, self.p, self.ctx_out = x, q, k, v, p, ctx
        return linear.forward(self, "o_proj", ctx)

    def backward(self, dy: Array) -> Array:
        B, T, E = dy.shape
        H, KV, R, hd = self.heads, self.kv, self.R, self.hd
        q, k, v, p = self.q, self.k, self.v, self.p
        dctx = linear.backward(self, "o_proj", self.ctx_out, dy)
        dctx = self._heads(dctx, H).reshape(B, KV, R * T, hd)
        dv = ops.matmul(p.transpose(0, 1, 3, 2), dctx)               # [B, KV, T, hd], summed over R
        dp = ops.matmul(dctx, v.transpose(0, 1, 3, 2))               # [B, KV, R*T, T]
        ds = fused.softmax_grad(p, dp) * self.scale                  # zero where masked (p = 0)
        dq = ops.matmul(ds, k).reshape(B, H, T, hd)
        dk = ops.matmul(ds.transpose(0, 1, 3, 2), q)                 # [B, KV, T, hd], summed over R
        if self.rope is not None:
            dq, dk = self._rope_back(dq), self._rope_back(dk)
        if self.qk_norm:
            dq = self._rms_back(dq, self.qn, "q_norm.weight")
            dk = self._rms_back(dk, self.kn, "k_norm.weight")
        dx = linear.backward(self, "q_proj", self.x, self._unheads(dq))
        dx = dx + linear.backward(self, "k_proj", self.x, self._unheads(dk))
        dx = dx + linear.backward(self, "v_proj", self.x, self._unheads(dv))
        return dx
