"""Stitch: parallel branches of any widths, each projected to a common width, then combined.

    o_i = branch_i(x)                     [..., w_i]   each expert at its own width
    s_i = o_i P_i^T + b_i                 [..., width] P_i [width, w_i]: a dense child, linear
    y   = combine(s_0, ..., s_{n-1})      any of parallel's combine modes

The layer is a `parallel` (its combine objects, its gate, its keys) whose branches are stitched: each
branch child "branches.{i}" is followed by a dense child "projections.{i}" (weight [width, w_i], bias
[width] as torch.nn.Linear; Glorot init as a linear dense), so a 5-wide and a 7-wide expert can be
added, averaged or mixed by a gate. Only build and the per-branch steps (parallel's branch_forward
and branch_backward) differ: a branch, then its projection; backward, the projection, then the
branch. The projections are real dense layers: their GEMMs, exact schemes, quantization and QAT are dense's. The network's config
keeps the stitch as written; the projections are a build-time detail, like filter's default gate.
"""
from __future__ import annotations

from typing import Any

from ... import config as configs
from ...backend import Array
from .base import BuildContext, ForwardContext, Spec, register
from .parallel import COMBINERS, Parallel


@register("stitch")
class Stitch(Parallel):
    def build(self, cfg: dict[str, Any], in_spec: Spec, ctx: BuildContext) -> Spec:
        self.mode = cfg["combine"]
        branches = [self.add_child(f"branches.{i}", b, in_spec, ctx.child("branches", i))
                    for i, b in enumerate(cfg["branches"])]
        for i, b in enumerate(branches):
            if not b.out_spec.is_float:
                raise ctx.error(f"stitch projects floating-point branch outputs, but branch {i} outputs "
                                f"{b.out_spec.dtype}", f"branches[{i}]")
        leading = [list(b.out_spec.shape[:-1]) for b in branches]
        if self.mode != "grid_scatter" and any(s != leading[0] for s in leading):
            raise ctx.error(f"stitch projects only the last axis, so combine {self.mode} needs the other axes of "
                            f"the branch outputs to match; branch output shapes are "
                            f"{[list(b.out_spec.shape) for b in branches]}", "branches")
        # Projections have no JSON of their own: an error building one (a weight too large for memory)
        # names `width`, the key that sized it.
        where = f"{ctx.path}.width" if ctx.path else "width"
        dense = configs.parse_layer({"type": "dense", "units": cfg["width"], "bias": cfg["bias"]}, where)
        projections = []
        for i, b in enumerate(branches):
            at = BuildContext(ctx.backend, ctx.dtype, ctx.seed, where, ctx.child("projections", i).prefix)
            projections.append(self.add_child(f"projections.{i}", dense, b.out_spec, at))
        self.branches, self.projections = branches, projections
        self.combine = COMBINERS[self.mode]()
        return self.combine.build(self, [p.out_spec for p in projections], ctx)

    def branch_forward(self, i: int, x: Array, fc: ForwardContext) -> Array:
        return self.projections[i].forward(self.branches[i].forward(x, fc), fc)

    def branch_backward(self, i: int, dy: Array) -> Array | None:
        branch, need = self.branches[i], self.input_grad
        # a projection passes a gradient on only when its branch trains or the input's is wanted
        do = self.backward_child(self.projections[i], dy, need or branch.trains())
        return None if do is None else self.backward_child(branch, do, need)

    def describe(self) -> str:
        return f"width={self.cfg['width']}{'' if self.cfg['bias'] else ' (no bias)'}, {super().describe()}"
