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
of x's and W's integers, rounded once: the bound grows by how far those integers move z.) Two passes
over the fast logits (their maximum, the comparison) are all the extra work. Rows with
a non-finite fast maximum, or an S that could overflow, take the full exact product.
"""
from __future__ import annotations

import numpy as np

from ..backend import Array, Backend
from ..kernels.quant.block import BlockQuantized, linear

_U = 2.0 ** -24


def supports(be: Backend, w: Array | BlockQuantized | tuple) -> bool:
    """Whether exact_logits takes output weight w on backend be: the CPU with a compiled fast product
    for w's stored type (whose values it decodes as the reference does)."""
    return be.host and isinstance(w, BlockQuantized) and w.qtype in be.quant.TYPES


def weight_max(w: BlockQuantized, rows_per_chunk: int = 4096) -> float:
    """The largest |w| of the stored weight (the reference's decoded values)."""
    top = 0.0
    for start in range(0, w.shape[0], rows_per_chunk):
        top = max(top, float(np.abs(w.dequantize(slice(start, min(w.shape[0], start + rows_per_chunk)))).max()))
    return top


def exact_logits(be: Backend, x: np.ndarray, w: BlockQuantized, w_max: float) -> np.ndarray:
    """[M, rows] float32 for x [M, K] (float32, C-contiguous, M within the fast product's rows): each
    row's candidates for its argmax hold their exact logits (the deterministic product's bits), every
    other entry -inf; a row the bound cannot settle holds all its exact logits. w_max: weight_max(w)."""
    rows, k = w.shape
    fast = np.empty((x.shape[0], rows), np.float32)
    if not be.quant.matmul_t(x, w.data, w.qtype, fast):
        return linear(x, w)
    n = k + 128
    gamma = n * _U / (1 - n * _U)
    out = np.full((x.shape[0], rows), -np.inf, np.float32)
    for i in range(x.shape[0]):
        s = w_max * float(np.abs(x[i].astype(np.float64)).sum())
        top = float(fast[i].max())
        if not (s < 2.0 ** 126 and np.isfinite(top)):
            out[i] = linear(x[i:i + 1], w)[0]
            continue
        # the weight rule's integers (exact.fixed: x and W rounded to 2^-16 of a power of two at most 4x their
        # rows' largest magnitudes, so each value moves by at most 2^-14 of that largest) move z by at most
        # 2^-14 max|x| K max|W| + (||x||_1 + 2^-14 max|x| K) 2^-14 max|W|: the deterministic logit is that
        # moved z rounded once, so the same argument holds with the bound widened by it (twice, for slack)
        x_top, x_sum = float(np.abs(x[i]).max()), s / w_max if w_max > 0 else 0.0
        moved = 2.0 ** -14 * x_top * k * w_max + (x_sum + 2.0 ** -14 * x_top * k) * 2.0 ** -14 * w_max
        bound = 2.0 * (gamma * s + moved)
        floor = np.float32(top - 2.0 * bound - 2.0 ** -22 * (abs(top) + bound) - 2.0 ** -148)
        candidates = np.flatnonzero(fast[i] >= floor)          # (float32(v) rounds v up by under the slack)
        part = BlockQuantized(np.ascontiguousarray(w.data[candidates]), w.qtype, (len(candidates), k))
        out[i, candidates] = linear(x[i:i + 1], part)[0]
    return out
