"""Differentiable k-means: soft assignment of each feature vector to learned centroids.

Parameter centroids [clusters, F] (normal init, std 1). For x [..., F]:
    d_k = ||x - c_k||^2,   p = softmax(-d / temperature) over the clusters
output "probabilities" -> p [..., clusters];  "features" -> sum_k p_k c_k [..., F].

Since d_k = ||x||^2 - 2 x.c_k + ||c_k||^2 and softmax ignores a per-row constant, the logits are
z_k = (2 x.c_k - ||c_k||^2) / temperature: one GEMM, no cancellation against ||x||^2, and the
gradients below are exact for p itself.
"""
from __future__ import annotations

from typing import Any

from ...backend import Array
from ...kernels import ops
from .base import BuildContext, ForwardContext, Layer, Spec, register


@register("kmeans")
class KMeans(Layer):
    def build(self, cfg: dict[str, Any], in_spec: Spec, ctx: BuildContext) -> Spec:
        self.require_float(in_spec, ctx)
        self.features = in_spec.shape[-1]
        self.clusters = cfg["clusters"]
        self.output = cfg["output"]
        self.temperature = cfg["temperature"]
        self.add_param("centroids", ctx.normal("centroids", (self.clusters, self.features), 1.0))
        if self.output == "probabilities":
            return Spec(in_spec.shape[:-1] + (self.clusters,), in_spec.dtype)
        return in_spec

    def forward(self, x: Array, fc: ForwardContext) -> Array:
        c = self.params["centroids"]                                    # [K, F]
        x2 = x.reshape(-1, self.features)                               # [N, F]
        scale = 2.0 / self.temperature
        z = ops.matmul(x2, c.T) * scale - ops.sum(c * c, axis=1) / self.temperature   # [N, K]
        p = ops.softmax(z, axis=1)                                      # [N, K]
        self.x2, self.p, self.in_shape = x2, p, x.shape
        if self.output == "probabilities":
            return p.reshape(x.shape[:-1] + (self.clusters,))
        return ops.matmul(p, c).reshape(x.shape)                        # [N, F] soft reconstruction

    def backward(self, dy: Array) -> Array:
        c, p = self.params["centroids"], self.p
        if self.output == "features":
            df = dy.reshape(-1, self.features)                          # [N, F]
            dp = ops.matmul(df, c.T)                                    # [N, K]
            if self.trains("centroids"):
                self.grads["centroids"] += ops.grad_matmul(p.T, df)
        else:
            dp = dy.reshape(-1, self.clusters)
        dz = p * (dp - ops.sum(p * dp, axis=1, keepdims=True))         # softmax backward
        # z_k = (2 x.c_k - ||c_k||^2) / T  =>  da = 2 dz / T drives both x and c
        da = dz * (2.0 / self.temperature)
        if self.trains("centroids"):
            self.grads["centroids"] += ops.grad_matmul(da.T, self.x2) - ops.grad_sum(da, axis=0)[:, None] * c
        return ops.matmul(da, c).reshape(self.in_shape)

    def describe(self) -> str:
        return f"clusters={self.clusters}, output={self.output}, temperature={self.temperature:g}"
