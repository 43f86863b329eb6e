"""Max and average pooling over 1, 2 or 3 spatial dimensions, channels first (PyTorch semantics).

Both read a strided window view [B, C, *out, *k] of the padded input (loom.kernels.windows) and
write their gradient back with its adjoint (windows_adjoint), so overlapping windows accumulate.
Max pooling pads with -inf and sends each window's gradient to its first maximal element in
row-major window order (torch's tie rule); average pooling divides by prod(pool_size), padded zeros
included (torch's count_include_pad=True).
"""
from __future__ import annotations

import math
from types import ModuleType
from typing import Any

from ...backend import Array
from ...kernels import ops
from ...kernels import windows as kernel_windows
from ...kernels.windows import crop, pad, windows, windows_adjoint
from .base import BuildContext, ForwardContext, Layer, Spec, dims, register
from .conv import spatial_input


class _Pool(Layer):
    def build(self, cfg: dict[str, Any], in_spec: Spec, ctx: BuildContext) -> Spec:
        n, c, size = spatial_input(self, in_spec, ctx)
        k = dims(cfg["pool_size"], n, ctx, "pool_size")
        s = k if cfg["stride"] is None else dims(cfg["stride"], n, ctx, "stride")
        p = dims(cfg["padding"], n, ctx, "padding")
        out = []
        for i in range(n):
            if p[i] > k[i] // 2:
                raise ctx.error(f"padding {p[i]} must be at most half the pool size ({k[i]}) along "
                                f"spatial dimension {i}", "padding")
            avail = size[i] + 2 * p[i]
            if k[i] > avail:
                raise ctx.error(f"pool size {k[i]} exceeds the padded input ({avail}) along spatial "
                                f"dimension {i} (input shape {[c, *size]})", "pool_size")
            out.append((avail - k[i]) // s[i] + 1)
        self.n, self.k, self.s, self.p = n, k, s, p
        self.size, self.out = size, tuple(out)
        self.padded = tuple(a + 2 * b for a, b in zip(size, p))
        return Spec((c,) + self.out, in_spec.dtype)

    def _windows(self, x, value):
        xpad = pad(self.xp, x, self.p, self.p, value)
        return windows(self.xp, xpad, self.out, self.k, self.s, (1,) * self.n)   # [B, C, *out, *k]

    def _scatter(self, parts):
        """parts [B, C, *out, *k] -> input gradient [B, C, *size]."""
        acc = windows_adjoint(self.xp, parts, self.padded, self.s, (1,) * self.n)
        return crop(self.xp, acc, self.p, self.size)


def max_pool_arrays(xp: ModuleType, x: Array, k: tuple[int, ...], s: tuple[int, ...], p: tuple[int, ...],
                    out: tuple[int, ...]) -> tuple[Array, Array]:
    """(y, arg): max pooling with array-module operations only (the -inf padded window view, argmax
    over each flattened window: the first maximum, NaN counting as the maximum)."""
    n = len(k)
    w = windows(xp, pad(xp, x, p, p, -math.inf), out, k, s, (1,) * n)    # [B, C, *out, *k]
    flat = w.reshape(w.shape[:2 + n] + (-1,))                            # [B, C, *out, prod(k)] (a copy)
    arg = xp.argmax(flat, axis=-1)
    return xp.take_along_axis(flat, arg[..., None], axis=-1)[..., 0], arg


def max_pool_grad_arrays(xp: ModuleType, dy: Array, arg: Array, k: tuple[int, ...], s: tuple[int, ...],
                         p: tuple[int, ...], size: tuple[int, ...]) -> Array:
    """Each window's gradient to its maximum (overlaps add up), array-module operations only."""
    n = len(k)
    hit = arg[..., None] == xp.arange(math.prod(k))
    parts = xp.where(hit, dy[..., None], xp.zeros((), dtype=dy.dtype)).reshape(dy.shape + tuple(k))
    if tuple(s) == tuple(k) and not any(p):
        return _tile(xp, parts, size)
    padded = tuple(a + 2 * b for a, b in zip(size, p))
    return crop(xp, windows_adjoint(xp, parts, padded, s, (1,) * n), p, size)


def _tile(xp: ModuleType, parts: Array, size: tuple[int, ...]) -> Array:
    """windows_adjoint for windows that tile the input (stride = pool size, no padding): every input
    element is in at most one window, so the sum is a transpose, plus 0 (the adjoint's zero start turns
    -0.0 into +0.0; the same bits)."""
    n = len(size)
    b, c, out, k = parts.shape[0], parts.shape[1], parts.shape[2:2 + n], parts.shape[2 + n:]
    perm = (0, 1) + tuple(x for i in range(n) for x in (2 + i, 2 + n + i))      # [B, C, o0, k0, o1, k1, ...]
    dense = parts.transpose(perm).reshape((b, c) + tuple(o * j for o, j in zip(out, k)))
    if tuple(dense.shape[2:]) != tuple(size):
        full = xp.zeros((b, c) + tuple(size), dtype=parts.dtype)
        full[(slice(None), slice(None)) + tuple(slice(0, o * j) for o, j in zip(out, k))] = dense
        dense = full
    dense += dense.dtype.type(0)          # in place: dense is a fresh array (or a view of the fresh parts)
    return dense


@register("max_pool1d", "max_pool2d", "max_pool3d")
class MaxPool(_Pool):
    def forward(self, x: Array, fc: ForwardContext) -> Array:
        done = kernel_windows.max_pool(x, self.k, self.s, self.p, self.out)
        y, self.arg = done if done is not None else max_pool_arrays(self.xp, x, self.k, self.s, self.p, self.out)
        return y

    def backward(self, dy: Array) -> Array:
        dx = kernel_windows.max_pool_grad(dy, self.arg, self.k, self.s, self.p, self.size)
        return dx if dx is not None else max_pool_grad_arrays(self.xp, dy, self.arg, self.k, self.s, self.p, self.size)


@register("avg_pool1d", "avg_pool2d", "avg_pool3d")
class AvgPool(_Pool):
    def forward(self, x: Array, fc: ForwardContext) -> Array:
        w = self._windows(x, 0.0)
        total = ops.sum(w, axis=tuple(range(-self.n, 0)))
        return total / x.dtype.type(math.prod(self.k))

    def backward(self, dy: Array) -> Array:
        g = dy / dy.dtype.type(math.prod(self.k))
        parts = self.xp.broadcast_to(g.reshape(g.shape + (1,) * self.n), g.shape + self.k)
        return self._scatter(parts)
