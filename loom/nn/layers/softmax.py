"""The softmax layer and its ten variants, each a small forward/backward pair over the last axis.

Every variant normalizes the last axis independently for every sample and every leading
position (never across the batch), after dividing the input by `temperature`: s = z / T.
The adaptive variant is the exception: its input is features, not logits, so T divides its head
and cluster logits instead (identical to dividing the input when head_bias is false).
Definitions, shapes and parameters of each variant: docs/layers/softmax.md. openfluke welvet's
softmax (whole-batch normalization, blended entmax) is `openfluke_softmax` (loom/nn/layers/openfluke.py).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from ...backend import Array
from ...kernels import ops
from . import softmax_sparse as sparse
from .base import BuildContext, ForwardContext, Layer, Spec, register


def _xp(x):
    from ... import backend
    return backend.of(x).xp


def softmax(s: Array) -> Array:
    """exp(s - max) / sum over the last axis."""
    return ops.softmax(s, axis=-1)


def softmax_grad(p: Array, dp: Array) -> Array:
    """ds for p = softmax(s) given dL/dp: p (dp - <p, dp>) over the last axis."""
    return p * (dp - ops.sum(p * dp, axis=-1, keepdims=True))


def gumbel_from_uniform(u: Array, bits: int) -> Array:
    """Gumbel(0, 1) noise -log(-log(u')) in float64, from uniforms u = k 2^-bits, k in [0, 2^bits).

    u' = u + 2^-(bits+1) is the midpoint of u's cell, strictly inside (0, 1) and symmetric about
    1/2, so no draw is clamped. u' is never rounded: below 1/2 it is formed exactly in float64
    (bits <= 53); above, -log(u') is taken as -log1p(-(1 - u')) with 1 - u' = (1 - u) - 2^-(bits+1),
    also exact. (Adding 2^-25 in float32 itself would round the top draw up to 1.0.)
    """
    xp = _xp(u)
    u = u.astype(np.float64)
    half = 2.0 ** -(bits + 1)
    low = u < 0.5
    neg_log = xp.where(low, -ops.log(xp.where(low, u + half, 0.5)),
                       -ops.log1p(-xp.where(low, 0.5, (1.0 - u) - half)))
    return -ops.log(neg_log)


# --- variants: build in __init__ (setting out_shape), forward(s, fc) -> y, backward(dy) -> ds ------

class Standard:
    """softmax(s) over the last axis ("standard" and "temperature")."""
    tempers_input = True

    def __init__(self, layer: Layer, cfg: dict[str, Any], in_spec: Spec, ctx: BuildContext):
        self.layer = layer
        self.out_shape = in_spec.shape

    def forward(self, s: Array, fc: ForwardContext) -> Array:
        self.p = softmax(s)
        return self.p

    def backward(self, dy: Array) -> Array:
        return softmax_grad(self.p, dy)


class Grid(Standard):
    """The last axis viewed as [rows, cols]; softmax over every row."""

    def __init__(self, layer: Layer, cfg: dict[str, Any], in_spec: Spec, ctx: BuildContext):
        super().__init__(layer, cfg, in_spec, ctx)
        self.rows, self.cols = cfg["rows"], cfg["cols"]
        n = in_spec.shape[-1]
        if n != self.rows * self.cols:
            raise ctx.error(f"grid softmax needs the last axis to be rows*cols = {self.rows}*{self.cols} = "
                            f"{self.rows * self.cols}, got {n} (input shape {list(in_spec.shape)})")

    def forward(self, s: Array, fc: ForwardContext) -> Array:
        self.p = softmax(s.reshape(*s.shape[:-1], self.rows, self.cols))   # [..., rows, cols]
        return self.p.reshape(s.shape)

    def backward(self, dy: Array) -> Array:
        return softmax_grad(self.p, dy.reshape(self.p.shape)).reshape(dy.shape)


class Hierarchical:
    """A tree softmax. Depth d has N_d = n_1 ... n_d nodes; its logits sit on the last axis after
    those of depths < d, grouped by parent. p(leaf) = product over depths of the softmax among
    the siblings on the leaf's path."""
    tempers_input = True

    def __init__(self, layer: Layer, cfg: dict[str, Any], in_spec: Spec, ctx: BuildContext):
        self.levels = cfg["levels"]
        self.counts = [math.prod(self.levels[:d + 1]) for d in range(len(self.levels))]   # N_1..N_k
        expected, n = sum(self.counts), in_spec.shape[-1]
        if n != expected:
            raise ctx.error(f"hierarchical levels {self.levels} need {' + '.join(map(str, self.counts))} = "
                            f"{expected} node logits on the last axis, got {n} "
                            f"(input shape {list(in_spec.shape)})", "levels")
        self.out_shape = in_spec.shape[:-1] + (self.counts[-1],)

    def forward(self, s: Array, fc: ForwardContext) -> Array:
        lead = s.shape[:-1]
        path = _xp(s).ones(lead + (1,), dtype=s.dtype)           # P_0: the root has probability 1
        self.q, self.parents, start = [], [], 0
        for n_d, count in zip(self.levels, self.counts):
            q = softmax(s[..., start:start + count].reshape(lead + (count // n_d, n_d)))  # [..., N_{d-1}, n_d]
            self.q.append(q)
            self.parents.append(path)                            # [..., N_{d-1}]
            path = (path[..., None] * q).reshape(lead + (count,))
            start += count
        return path                                              # [..., N_k]

    def backward(self, dy: Array) -> Array:
        lead = dy.shape[:-1]
        parts, dpath = [], dy
        for q, parent in zip(reversed(self.q), reversed(self.parents)):
            dP = dpath.reshape(q.shape)                          # [..., N_{d-1}, n_d]
            parts.append(softmax_grad(q, dP * parent[..., None]).reshape(lead + (q.shape[-2] * q.shape[-1],)))
            dpath = ops.sum(dP * q, axis=-1)                     # [..., N_{d-1}]
        return ops.concatenate(parts[::-1], axis=-1)


class Gumbel(Standard):
    """Training: softmax(s + g) with Gumbel noise g from the layer's counter stream (a constant
    for backward). Eval: exactly softmax(s)."""

    def forward(self, s: Array, fc: ForwardContext) -> Array:
        if fc.training:
            bits = 24 if s.dtype == np.float32 else 53          # the resolution of noise_uniform
            u = self.layer.noise_uniform(s.shape, fc)
            s = s + gumbel_from_uniform(u, bits).astype(s.dtype)
        return super().forward(s, fc)


class Masked:
    """softmax over the positions with mask 1; positions with mask 0 output exactly 0."""
    tempers_input = True

    def __init__(self, layer: Layer, cfg: dict[str, Any], in_spec: Spec, ctx: BuildContext):
        n = in_spec.shape[-1]
        if len(cfg["mask"]) != n:
            raise ctx.error(f"mask has {len(cfg['mask'])} entries but the last axis has {n} "
                            f"(input shape {list(in_spec.shape)})", "mask")
        self.keep = layer.B.asarray(np.array(cfg["mask"], dtype=bool))
        self.out_shape = in_spec.shape

    def forward(self, s: Array, fc: ForwardContext) -> Array:
        self.p = ops.softmax(s, axis=-1, mask=self.keep)      # the config keeps at least one position
        return self.p

    def backward(self, dy: Array) -> Array:
        return _xp(dy).where(self.keep, softmax_grad(self.p, dy), 0).astype(dy.dtype)


class Sparsemax(Standard):
    """Euclidean projection onto the simplex (sort-based threshold)."""

    def forward(self, s: Array, fc: ForwardContext) -> Array:
        self.p = sparse.sparsemax(s)
        return self.p

    def backward(self, dy: Array) -> Array:
        return sparse.sparsemax_grad(self.p, dy)


class Entmax(Standard):
    """alpha-entmax, solved in float64 by bisection, output in the input dtype."""

    def __init__(self, layer: Layer, cfg: dict[str, Any], in_spec: Spec, ctx: BuildContext):
        super().__init__(layer, cfg, in_spec, ctx)
        self.alpha = cfg["alpha"]

    def forward(self, s: Array, fc: ForwardContext) -> Array:
        self.p64 = sparse.entmax(s, self.alpha)
        return self.p64.astype(s.dtype)

    def backward(self, dy: Array) -> Array:
        return sparse.entmax_grad(self.p64, dy.astype(np.float64), self.alpha).astype(dy.dtype)


class Adaptive:
    """torch.nn.AdaptiveLogSoftmaxWithLoss's distribution over classes (the exp of its log_prob).
    The head scores the shortlist [0, cutoffs[0]) and one logit per tail cluster; cluster i
    scores classes [c_i, c_{i+1}) through a rank-hsz_i projection; p = p_head(cluster) p_cluster."""
    tempers_input = False   # T divides the logits here, not the input features

    def __init__(self, layer: Layer, cfg: dict[str, Any], in_spec: Spec, ctx: BuildContext):
        self.layer, self.T = layer, cfg["temperature"]
        F, classes = in_spec.shape[-1], cfg["classes"]
        self.bounds = cfg["cutoffs"] + [classes]
        self.short, n_clusters = self.bounds[0], len(cfg["cutoffs"])
        head = self.short + n_clusters
        layer.add_param("head.weight", ctx.uniform("head.weight", (head, F), _glorot(F, head)))
        self.bias = cfg["head_bias"]
        if self.bias:
            layer.add_param("head.bias", ctx.full((head,), 0.0))
        for i in range(n_clusters):
            hsz = int(F // cfg["div_value"] ** (i + 1))
            osz = self.bounds[i + 1] - self.bounds[i]
            if hsz == 0:
                raise ctx.error(f"tail cluster {i} gets a projection of size 0: in_features {F} // "
                                f"div_value {cfg['div_value']}**{i + 1} = 0; lower div_value or use fewer cutoffs",
                                "div_value")
            layer.add_param(f"tail.{i}.0.weight", ctx.uniform(f"tail.{i}.0.weight", (hsz, F), _glorot(F, hsz)))
            layer.add_param(f"tail.{i}.1.weight", ctx.uniform(f"tail.{i}.1.weight", (osz, hsz), _glorot(hsz, osz)))
        self.n_clusters = n_clusters
        self.out_shape = in_spec.shape[:-1] + (classes,)

    def forward(self, x: Array, fc: ForwardContext) -> Array:
        P = self.layer.params
        self.in_shape = x.shape
        self.x = x.reshape(-1, x.shape[-1])                      # [N, F]
        h = ops.matmul(self.x, P["head.weight"].T)               # [N, head]
        if self.bias:
            h = h + P["head.bias"]
        self.ph = softmax(h / self.T)
        parts, self.u, self.q = [self.ph[:, :self.short]], [], []
        for i in range(self.n_clusters):
            u = ops.matmul(self.x, P[f"tail.{i}.0.weight"].T)   # [N, hsz]
            q = softmax(ops.matmul(u, P[f"tail.{i}.1.weight"].T) / self.T)   # [N, osz]
            self.u.append(u)
            self.q.append(q)
            parts.append(self.ph[:, self.short + i, None] * q)
        return ops.concatenate(parts, axis=-1).reshape(x.shape[:-1] + (-1,))

    def backward(self, dy: Array) -> Array:
        P, G, xp = self.layer.params, self.layer.grads, _xp(dy)
        dy = dy.reshape(-1, dy.shape[-1])                        # [N, classes]
        dph = xp.zeros_like(self.ph)
        dph[:, :self.short] = dy[:, :self.short]
        dx = 0
        for i in range(self.n_clusters):
            dyi = dy[:, self.bounds[i]:self.bounds[i + 1]]
            dph[:, self.short + i] = ops.sum(dyi * self.q[i], axis=-1)
            dc = softmax_grad(self.q[i], dyi * self.ph[:, self.short + i, None]) / self.T   # [N, osz]
            if f"tail.{i}.1.weight" in G:
                G[f"tail.{i}.1.weight"] += ops.grad_matmul(dc.T, self.u[i])
            du = ops.matmul(dc, P[f"tail.{i}.1.weight"])        # [N, hsz]
            if f"tail.{i}.0.weight" in G:
                G[f"tail.{i}.0.weight"] += ops.grad_matmul(du.T, self.x)
            dx = dx + ops.matmul(du, P[f"tail.{i}.0.weight"])
        dh = softmax_grad(self.ph, dph) / self.T                 # [N, head]
        if "head.weight" in G:
            G["head.weight"] += ops.grad_matmul(dh.T, self.x)
        if "head.bias" in G:
            G["head.bias"] += ops.grad_sum(dh, axis=0)
        dx = dx + ops.matmul(dh, P["head.weight"])
        return dx.reshape(self.in_shape)


class Mixture:
    """p = sum_k softmax(w)_k softmax(s / exp(t_k)): K temperature softmaxes with learned weights
    (w = mixture_logits) and log-temperatures (t = log_temperature)."""
    tempers_input = True

    def __init__(self, layer: Layer, cfg: dict[str, Any], in_spec: Spec, ctx: BuildContext):
        self.layer = layer
        K = cfg["components"]
        # log(geomspace(0.5, 2, K)) = ln2 * linspace(-1, 1, K), computed with + * / only
        t0 = math.log(2.0) * np.linspace(-1.0, 1.0, K) if K > 1 else np.zeros(1)
        layer.add_param("mixture_logits", ctx.full((K,), 0.0))
        layer.add_param("log_temperature", layer.B.asarray(t0.astype(layer.dtype)))
        self.out_shape = in_spec.shape

    def forward(self, s: Array, fc: ForwardContext) -> Array:
        P = self.layer.params
        self.pi = softmax(P["mixture_logits"])                   # [K]
        self.temp = ops.exp(P["log_temperature"])[:, None]       # [K, 1]
        self.a = s[..., None, :] / self.temp                     # [..., K, n]
        self.q = softmax(self.a)
        return ops.sum(self.pi[:, None] * self.q, axis=-2)       # [..., n]

    def backward(self, dy: Array) -> Array:
        G = self.layer.grads
        but_k = tuple(i for i in range(self.q.ndim) if i != self.q.ndim - 2)   # every axis except K
        if "mixture_logits" in G:           # absent when frozen
            G["mixture_logits"] += softmax_grad(self.pi, ops.grad_sum(self.q * dy[..., None, :], axis=but_k))
        da = softmax_grad(self.q, self.pi[:, None] * dy[..., None, :])          # [..., K, n]
        if "log_temperature" in G:
            G["log_temperature"] -= ops.grad_sum(da * self.a, axis=but_k)            # da/dt_k = -a_k
        return ops.sum(da / self.temp, axis=-2)


def _glorot(fan_in: int, fan_out: int) -> float:
    return math.sqrt(6.0 / (fan_in + fan_out))


VARIANTS = {"standard": Standard, "temperature": Standard, "grid": Grid, "hierarchical": Hierarchical,
            "gumbel": Gumbel, "masked": Masked, "sparsemax": Sparsemax, "entmax": Entmax,
            "adaptive": Adaptive, "mixture": Mixture}


@register("softmax")
class Softmax(Layer):
    """Divides by the temperature (unless the variant tempers its own logits) and delegates to
    the variant object chosen by cfg["variant"]; parameters, if any, live on this layer."""

    def build(self, cfg: dict[str, Any], in_spec: Spec, ctx: BuildContext) -> Spec:
        self.require_float(in_spec, ctx)
        self.temperature = cfg["temperature"]
        self.variant = self.variant_class(cfg)(self, cfg, in_spec, ctx)
        self.USES_NOISE = isinstance(self.variant, Gumbel)
        return Spec(tuple(self.variant.out_shape), in_spec.dtype)

    def variant_class(self, cfg: dict[str, Any]) -> type:
        """The class implementing cfg's variant."""
        return VARIANTS[cfg["variant"]]

    def forward(self, x: Array, fc: ForwardContext) -> Array:
        if self.variant.tempers_input:
            x = x / self.temperature
        return self.variant.forward(x, fc)

    def backward(self, dy: Array) -> Array:
        ds = self.variant.backward(dy)
        return ds / self.temperature if self.variant.tempers_input else ds
