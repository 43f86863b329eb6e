"""Sparse normalizers over the last axis: sparsemax and alpha-entmax, forward and backward.

Both map logits z to probabilities p = [(alpha - 1) z - tau]_+ ^ (1 / (alpha - 1)) with the
threshold tau chosen so that p sums to 1; positions below the threshold get exactly 0.
sparsemax (alpha = 2; Martins & Astudillo 2016) finds tau exactly from the sorted logits.
alpha-entmax (Peters, Niculae & Martins 2019) finds tau by bisection in float64.
"""
from __future__ import annotations

import numpy as np

from ...backend import Array
from ...kernels import ops


def _xp(x):
    from ... import backend
    return backend.of(x).xp


# --- sparsemax --------------------------------------------------------------------------------------

def sparsemax(z: Array) -> Array:
    """Euclidean projection of every row of z (last axis) onto the probability simplex."""
    xp = _xp(z)
    n = z.shape[-1]
    zs = -xp.sort(-z, axis=-1)                                 # descending
    cs = ops.cumsum(zs, axis=-1)                                # cumsum of sorted values
    k = xp.arange(1, n + 1, dtype=z.dtype)
    support = 1 + k * zs > cs                                  # true on a prefix of the sorted row
    size = xp.count_nonzero(support, axis=-1)[..., None]      # [..., 1], >= 1
    tau = (xp.take_along_axis(cs, size - 1, axis=-1) - 1) / size.astype(z.dtype)
    return xp.maximum(z - tau, 0)


def sparsemax_grad(p: Array, dp: Array) -> Array:
    """dz for p = sparsemax(z): dp minus its mean over the support, on the support; 0 off it."""
    xp = _xp(p)
    on = p > 0
    count = xp.count_nonzero(on, axis=-1)[..., None].astype(p.dtype)
    mean = ops.sum(xp.where(on, dp, 0), axis=-1, keepdims=True) / count
    return xp.where(on, dp - mean, 0).astype(p.dtype)


# --- alpha-entmax -----------------------------------------------------------------------------------

_MAX_BISECTIONS = 64   # the bracket starts narrower than 1 and halves each step (see entmax)


def power(x: Array, e: float) -> Array:
    """x ** e for x >= 0 (0 where x == 0); exact for e in {1, 2} and correctly rounded for 0.5."""
    xp = _xp(x)
    if e == 1:
        return x
    if e == 2:
        return x * x
    if e == 0.5:
        return ops.sqrt(x)
    pos = x > 0
    return xp.where(pos, ops.exp(e * ops.log(xp.where(pos, x, 1))), 0)


def entmax(z: Array, alpha: float) -> Array:
    """alpha-entmax of every row of z (last axis), returned in float64 (the caller casts).

    With x = (alpha - 1) z and m = max(x), the root tau of f(tau) = sum [x - tau]_+^(1/(alpha-1)) - 1
    lies in [m - 1, m - (1/n)^(alpha-1)]: at the left end the largest term alone is 1, at the right
    end every term is at most 1/n. The bracket is narrower than 1 and halves each step, so at most
    53 steps bring it below eps * max(1, |tau|), i.e. tau to full float64 precision. The result is
    renormalized to sum to 1 (it is off by a few ulp before). A converged row stops moving, so the
    result does not depend on how many more steps the other rows take: the GPU runs all 64 steps
    (no host check, so the step can be recorded), the CPU stops once every row has converged.
    """
    xp = _xp(z)
    x = z.astype(np.float64) * (alpha - 1)
    n = x.shape[-1]
    inv = 1.0 / (alpha - 1)
    top = xp.max(x, axis=-1, keepdims=True)
    lo = top - 1.0
    hi = top - (1.0 / n) ** (alpha - 1)
    eps = np.finfo(np.float64).eps
    for _ in range(_MAX_BISECTIONS):
        moving = hi - lo > eps * xp.maximum(xp.maximum(xp.abs(lo), xp.abs(hi)), 1.0)
        if ops.none_on_host(moving):
            break
        mid = 0.5 * (lo + hi)
        mass = ops.sum(power(xp.maximum(x - mid, 0.0), inv), axis=-1, keepdims=True)
        over = mass >= 1.0                                     # tau is at or right of mid
        lo = xp.where(moving & over, mid, lo)
        hi = xp.where(moving & ~over, mid, hi)
    p = power(xp.maximum(x - lo, 0.0), inv)
    return p / ops.sum(p, axis=-1, keepdims=True)


def entmax_grad(p: Array, dp: Array, alpha: float) -> Array:
    """dz for p = entmax(z) (all float64): with g = p^(2-alpha) on the support and 0 off it,
    dz = g dp - g sum(g dp) / sum(g)."""
    xp = _xp(p)
    g = xp.where(p > 0, power(p, 2.0 - alpha), 0.0)
    gdp = g * dp
    return gdp - g * (ops.sum(gdp, axis=-1, keepdims=True) / ops.sum(g, axis=-1, keepdims=True))
