"""Parallel branches over one input, merged by one of six combine modes.

Every branch is built on the same input spec as child "branches.{i}" and runs on the same x; the
input gradient is the sum of the branches' input gradients (plus the gate's, for filter).

    concat        [..., sum of last axes]    branch outputs agree on every axis but the last
    add / avg     the common branch shape     y = sum_i o_i   /   y = mean_i o_i
    multiply      the common branch shape     y = prod_i o_i  (backward without division)
    grid_scatter  [rows, cols, layers, F]     branch i flattened into its cell; empty cells 0
    filter        the common branch shape     y = sum_i w_i o_i, w = softmax of a gate's scores,
                                              optionally over only the top_k scores per sample

Each mode is a small object (build / forward / backward) so the layer itself carries no mode flags.
"""
from __future__ import annotations

from types import ModuleType
from typing import Any

from ... import config as configs
from ...backend import Array
from ...kernels import ops
from .base import BuildContext, ForwardContext, Layer, Spec, register


def default_gate(n: int) -> dict[str, Any]:
    """The gate a filter uses when its config says `gate: null`: one linear score per branch."""
    return {"type": "sequential", "layers": [{"type": "flatten"}, {"type": "dense", "units": n}]}


class Concat:
    def build(self, layer: Layer, specs: list[Spec], ctx: BuildContext) -> Spec:
        shapes = [list(s.shape) for s in specs]
        first = shapes[0]
        if any(len(s) != len(first) or s[:-1] != first[:-1] for s in shapes):
            raise ctx.error("concat joins the last axis, so every other axis of the branch outputs must match; "
                            f"branch output shapes are {shapes}", "branches")
        self.widths = [s[-1] for s in shapes]
        return Spec(tuple(first[:-1]) + (sum(self.widths),), specs[0].dtype)

    def forward(self, layer: Layer, outs: list[Array], x: Array, fc: ForwardContext) -> Array:
        return ops.concatenate(outs, axis=-1)

    def backward(self, layer: Layer, dy: Array) -> tuple[list[Array], Array | None]:
        grads, start = [], 0
        for w in self.widths:
            grads.append(dy[..., start:start + w])
            start += w
        return grads, None


def same_shapes(mode: str, specs: list[Spec], ctx: BuildContext) -> Spec:
    shapes = [list(s.shape) for s in specs]
    if any(s != shapes[0] for s in shapes):
        raise ctx.error(f"combine {mode} needs identical branch output shapes; branch output shapes are {shapes}",
                        "branches")
    return specs[0]


class Sum:
    """add (mean=False) and avg (mean=True)."""

    def __init__(self, mean: bool):
        self.mean = mean

    def build(self, layer: Layer, specs: list[Spec], ctx: BuildContext) -> Spec:
        self.n = len(specs)
        return same_shapes("avg" if self.mean else "add", specs, ctx)

    def forward(self, layer: Layer, outs: list[Array], x: Array, fc: ForwardContext) -> Array:
        stacked = ops.stack(outs)
        return ops.mean(stacked, axis=0) if self.mean else ops.sum(stacked, axis=0)

    def backward(self, layer: Layer, dy: Array) -> tuple[list[Array], Array | None]:
        g = dy / dy.dtype.type(self.n) if self.mean else dy
        return [g] * self.n, None


class Product:
    def build(self, layer: Layer, specs: list[Spec], ctx: BuildContext) -> Spec:
        return same_shapes("multiply", specs, ctx)

    def forward(self, layer: Layer, outs: list[Array], x: Array, fc: ForwardContext) -> Array:
        # prefix[i] = o_0 ... o_{i-1}; kept so backward needs no division (zeros are fine)
        self.outs = outs
        self.prefix = [layer.xp.ones_like(outs[0])]
        for o in outs:
            self.prefix.append(self.prefix[-1] * o)
        return self.prefix.pop()

    def backward(self, layer: Layer, dy: Array) -> tuple[list[Array], Array | None]:
        grads = [None] * len(self.outs)
        suffix = dy  # dy * o_{n-1} ... o_{i+1}
        for i in reversed(range(len(self.outs))):
            grads[i] = suffix * self.prefix[i]
            suffix = suffix * self.outs[i]
        return grads, None


class GridScatter:
    def build(self, layer: Layer, specs: list[Spec], ctx: BuildContext) -> Spec:
        sizes = [s.size for s in specs]
        if any(s != sizes[0] for s in sizes):
            detail = ", ".join(f"branch {i}: {list(s.shape)} = {s.size}" for i, s in enumerate(specs))
            raise ctx.error(f"grid_scatter needs branch outputs of one size; got {detail}", "branches")
        g = layer.cfg["grid"]
        self.cells = [tuple(p) for p in g["positions"]]
        self.shapes = [s.shape for s in specs]
        return Spec((g["rows"], g["cols"], g["layers"], sizes[0]), specs[0].dtype)

    def forward(self, layer: Layer, outs: list[Array], x: Array, fc: ForwardContext) -> Array:
        batch = x.shape[0]
        y = layer.xp.zeros((batch,) + layer.out_spec.shape, dtype=outs[0].dtype)
        for (r, c, l), o in zip(self.cells, outs):
            y[:, r, c, l] = o.reshape(batch, -1)
        return y

    def backward(self, layer: Layer, dy: Array) -> tuple[list[Array], Array | None]:
        batch = dy.shape[0]
        return [dy[:, r, c, l].reshape((batch,) + shape) for (r, c, l), shape in zip(self.cells, self.shapes)], None


class Filter:
    """Soft mixture of experts: p = softmax(gate(x)) over the branches; y = sum_i w_i o_i.

    With top_k, each sample keeps its k highest-scoring branches and the rest weigh exactly 0. The
    kept branches weigh p_i (Switch-Transformer style, the default), or with renormalize = true a
    softmax over just the kept scores (Mixtral style). Renormalized top-1 weighs the winner exactly
    1, so its gate receives no gradient; the default keeps the gate learning for every k."""

    def build(self, layer: Layer, specs: list[Spec], ctx: BuildContext) -> Spec:
        n = len(specs)
        spec = same_shapes("filter", specs, ctx)
        gate_ctx = ctx.child("gate")
        cfg = layer.cfg["gate"]
        self.default = cfg is None
        if self.default:  # built here only; the network's config keeps gate: null
            cfg = configs.parse_layer(default_gate(n), gate_ctx.path)
        self.gate = layer.add_child("gate", cfg, layer.in_spec, gate_ctx)
        if self.gate.out_spec.shape != (n,):
            raise ctx.error(f"the gate must output one score per branch, shape [{n}], but it outputs "
                            f"{list(self.gate.out_spec.shape)}", "gate")
        self.n, self.k = n, layer.cfg["top_k"] or n
        self.renormalize = bool(layer.cfg["renormalize"])
        return spec

    def select(self, xp: ModuleType, g: Array) -> Array:
        """[B, n] mask of each sample's k largest scores; ties go to the lower branch index."""
        if self.k >= self.n:
            return xp.ones(g.shape, dtype=bool)
        idx = xp.arange(self.n)
        earlier = idx[None, :] < idx[:, None]                 # [i, j]: j comes before i
        gi, gj = g[:, :, None], g[:, None, :]
        beaten_by = (gj > gi) | ((gj == gi) & earlier)        # [B, i, j]: j ranks above i
        return xp.count_nonzero(beaten_by, axis=2) < self.k

    def forward(self, layer: Layer, outs: list[Array], x: Array, fc: ForwardContext) -> Array:
        xp = layer.xp
        g = self.gate.forward(x, fc)                          # [B, n]
        mask = self.select(xp, g)
        p = ops.softmax(g, axis=1, mask=mask if self.renormalize else None)   # over the kept, or over all
        w = xp.where(mask, p, 0)
        self.outs, self.mask, self.p, self.w = outs, mask, p, w
        # where() keeps unselected experts out entirely, even if their output is not finite
        return ops.sum(ops.stack([xp.where(self._col(mask, i, o), self._col(w, i, o) * o, 0)
                                  for i, o in enumerate(outs)]), axis=0)

    @staticmethod
    def _col(a, i, like):
        """Column i of a [B, n] array, shaped to broadcast against `like` [B, ...]."""
        return a[:, i].reshape((a.shape[0],) + (1,) * (like.ndim - 1))

    def backward(self, layer: Layer, dy: Array) -> tuple[list[Array], Array | None]:
        xp, mask, w = layer.xp, self.mask, self.w
        batch = dy.shape[0]
        dw = ops.stack([ops.sum((dy * o).reshape(batch, -1), axis=1) for o in self.outs], axis=1)
        dp = xp.where(mask, dw, 0)                            # unselected branches do not depend on p
        p = self.p
        dg = p * (dp - ops.sum(p * dp, axis=1, keepdims=True))  # softmax backward (p is 0 outside its pool)
        dx_gate = layer.backward_child(self.gate, dg, layer.input_grad)
        grads = [xp.where(self._col(mask, i, dy), self._col(w, i, dy) * dy, 0) for i in range(self.n)]
        return grads, dx_gate


COMBINERS = {"concat": Concat, "add": lambda: Sum(False), "avg": lambda: Sum(True),
             "multiply": Product, "grid_scatter": GridScatter, "filter": Filter}


@register("parallel")
class Parallel(Layer):
    def build(self, cfg: dict[str, Any], in_spec: Spec, ctx: BuildContext) -> Spec:
        self.mode = cfg["combine"]
        self.branches = [self.add_child(f"branches.{i}", b, in_spec, ctx.child("branches", i))
                         for i, b in enumerate(cfg["branches"])]
        specs = [b.out_spec for b in self.branches]
        dtypes = sorted({s.dtype for s in specs})
        if len(dtypes) > 1 or not specs[0].is_float:
            raise ctx.error(f"combine {self.mode} needs floating-point branch outputs of one dtype; "
                            f"branch output dtypes are {[s.dtype for s in specs]}", "branches")
        self.combine = COMBINERS[self.mode]()
        return self.combine.build(self, specs, ctx)

    def forward(self, x: Array, fc: ForwardContext) -> Array:
        outs = [self.branch_forward(i, x, fc) for i in range(len(self.branches))]
        return self.combine.forward(self, outs, x, fc)

    def backward(self, dy: Array) -> Array | None:
        grads, dx_gate = self.combine.backward(self, dy)
        dxs = [self.branch_backward(i, g) for i, g in enumerate(grads)]
        if not self.in_spec.is_float or not self.input_grad:
            return None
        if dx_gate is not None:
            dxs.append(dx_gate)
        return dxs[0] if len(dxs) == 1 else ops.sum(ops.stack(dxs), axis=0)

    def branch_forward(self, i: int, x: Array, fc: ForwardContext) -> Array:
        """Branch i's output (what the combine mode receives)."""
        return self.branches[i].forward(x, fc)

    def branch_backward(self, i: int, dy: Array) -> Array | None:
        """Branch i's input gradient from the gradient of its output; without input_grad, a branch
        whose parameters are all frozen is not run backward at all."""
        return self.backward_child(self.branches[i], dy, self.input_grad)

    def describe(self) -> str:
        n = len(self.branches)
        parts = [f"combine={self.mode}", f"{n} branch{'es' if n > 1 else ''}"]
        if self.mode == "grid_scatter":
            g = self.cfg["grid"]
            parts.append(f"grid={g['rows']}x{g['cols']}x{g['layers']}")
        if self.mode == "filter":
            parts.append("gate=default (flatten, dense)" if self.combine.default else f"gate={self.combine.gate.type}")
            if self.cfg["top_k"] is not None:
                parts.append(f"top_k={self.cfg['top_k']}")
        return ", ".join(parts)
