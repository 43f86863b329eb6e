"""Deterministic mode's greedy token on the CPU without every exact logit: the argmax of the exact
logits, found from fast mode's float32 logits and a bound on their error.

Why: a deterministic decode step of SmolLM2-135M spends about 2.1 ms of its 17 on the output layer's
exact products (49,152 rows of Q8_0), where fast mode's float32 product takes 1.0 ms, and a plain
greedy request uses nothing of the logits but their argmax.

How (exact_logits): fast mode's compiled product z~ (backend quant.matmul_t: float32 sums in any
order, FMAs included) differs from the exact dot product z of the same x and W by at most
gamma_n sum_k |x_k| |w_k| with n = K + 128 (every term meets at most K additions, one product and a
few decode roundings on its way) and gamma_n = n u / (1 - n u), u = 2^-24; that sum is at most
max |W| ||x||_1 =: S (max |W| found once), so every |z~_r - z_r| <= B = 2 gamma_n S (twice, for slack),
and where S < 2^126 no partial sum can overflow. The largest exact logit M is then at least
max z~ - B, and a row with z~_r < max z~ - 2 B - 2^-22 (|max z~| + B) - 2^-148 has z_r below M by
more than float32's spacing there, so its rounded logit is below M's rounded (rounding is monotonic)
and it can neither be the argmax nor tie with it. Every other row (the candidates: usually one or
two) gets its exact logit from the same exact product as the full output layer (row-invariant: the
same bits); the rest are -inf. The first argmax of that row is the first argmax of the exact logits,
ties and all. (Under the dispatch table's "weight" rule the deterministic logit is the exact product
of x's and W's integers, rounded once: each row's bound grows by how far those integers can move its z,
from the row's sum of |w| and its integers' step, found once.) A few passes over the fast logits are
all the extra work. Rows with a non-finite fast maximum, or an S that could overflow, take the full
exact product.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..backend import Array, Backend
from ..kernels.exact import fixed
from ..kernels.quant.block import BlockQuantized, linear

_U = 2.0 ** -24


def supports(be: Backend, w: Array | BlockQuantized | tuple) -> bool:
    """Whether exact_logits takes output weight w on backend be: the CPU with a compiled fast product
    for w's stored type (whose values it decodes as the reference does)."""
    return be.host and isinstance(w, BlockQuantized) and w.qtype in be.quant.TYPES


class WeightBounds(NamedTuple):
    """What exact_logits' bounds need of an output weight, found once (weight_bounds)."""
    top: float              # max |w|
    l1: np.ndarray          # float64 [rows]: each row's sum |w| plus K of its integers' half-steps
    step: np.ndarray        # float64 [rows]: half a step of each row's integers, 2^(e - 16) (exact.fixed)


def weight_bounds(w: BlockQuantized, rows_per_chunk: int = 4096) -> WeightBounds:
    """The largest |w| of the stored weight (the reference's decoded values), and each row's sum of |w| and
    its integers' half-step under the dispatch table's weight rule (exact.fixed.row_exponents)."""
    rows, k = w.shape
    top, l1, step = 0.0, np.empty(rows), np.empty(rows)
    for start in range(0, rows, rows_per_chunk):
        part = slice(start, min(rows, start + rows_per_chunk))
        v = w.dequantize(part)
        top = max(top, float(np.abs(v).max(initial=0.0)))
        step[part] = np.ldexp(1.0, fixed.row_exponents(np, v) - 16)
        l1[part] = np.abs(v.astype(np.float64)).sum(axis=1) + k * step[part]
    return WeightBounds(top, l1, step)


def exact_logits(be: Backend, x: np.ndarray, w: BlockQuantized, bounds: WeightBounds) -> np.ndarray:
    """[M, rows] float32 for x [M, K] (float32, C-contiguous, M within the fast product's rows): each
    row's candidates for its argmax hold their exact logits (the deterministic product's bits), every
    other entry -inf; a row the bound cannot settle holds all its exact logits. bounds: weight_bounds(w)."""
    rows, k = w.shape
    fast = np.empty((x.shape[0], rows), np.float32)
    if not be.quant.matmul_t(x, w.data, w.qtype, fast):
        return linear(x, w)
    n = k + 128
    gamma = n * _U / (1 - n * _U)
    out = np.full((x.shape[0], rows), -np.inf, np.float32)
    for i in range(x.shape[0]):
        x_sum = float(np.abs(x[i].astype(np.float64)).sum())
        s = bounds.top * x_sum
        top = float(fast[i].max())
        if not (s < 2.0 ** 126 and np.isfinite(top)):
            out[i] = linear(x[i:i + 1], w)[0]
            continue
        # the weight rule's integers move z by at most dx sum |w~| + step_r ||x||_1 (x's and row r's values
        # each move by at most half a step of their integers, dx and step_r; |w~| <= |w| + step_r): the
        # deterministic logit is that moved z rounded once, so the argument holds with each row's bound
        # widened by it (twice, for slack)
        dx = float(np.ldexp(1.0, int(fixed.row_exponents(np, x[i:i + 1])[0]) - 16))
        bound = 2.0 * (gamma * s + dx * bounds.l1 + x_sum * bounds.step)
        f = fast[i].astype(np.float64)
        low = float((f - bound).max())                              # the largest exact logit is at least this
        floor = low - 2.0 ** -22 * (abs(top) + float(bound.max())) - 2.0 ** -148
        candidates = np.flatnonzero(f + bound >= floor)
        part = BlockQuantized(np.ascontiguousarray(w.data[candidates]), w.qtype, (len(candidates), k))
        out[i, candidates] = linear(x[i:i + 1], part)[0]
    return out
