"""Deterministic mode's attention for one decode token on the CPU (numba, the optional `loom[cpu]`
extra): Decoder.attend's array code for a single query position, with its bits, in two compiled calls
around mathlib's exp (which the caller runs: the backend does not reach up to loom.kernels).

The array code makes about a dozen calls a layer (two exact stacked products, the scale, the row
maxima, the subtraction, exp, the exact sums, the division, the reshapes); a decode step of
SmolLM2-135M spent 6-7 ms a token there on two cores. Here:

1. `shifted_scores`: the scores q k^T as rounded_gemv._stack_dots makes them (exact_dispatch's rounded
   scheme over K = head_dim, the exact GEMM's bits: each the exact dot product rounded once), times
   the float32 scale, minus each row's maximum (float32 operations, as ops.softmax does them);
2. the caller's exp (mathlib, ops.exp);
3. `weighted_values`: each row's exact sum as exact.sum makes it (exact_jit's one-slice integers, the
   float64 total rounded once), the division, and p v as rounded_gemv._stack_rows makes it (the rounded
   scheme over K = keys: the caller keeps the keys within exact_dispatch.ROUNDED_MAX_K).

Where a scaled score or a sum is not finite, the functions return None and the caller runs the array
code (which handles infinities and NaNs as IEEE says).
"""
from __future__ import annotations

import numpy as np

from . import exact_jit, rounded_gemv
from . import jit as cpu_jit

_LOOPS = ("_scores", "_scale_shift", "_weighted")
f32 = np.float32


def available() -> bool:
    """Whether the compiled loops run here (rounded_gemv's and exact_jit's, which these call, first)."""
    if cpu_jit.compiled(globals()):
        return cpu_jit.available()
    return rounded_gemv.available() and exact_jit.available() and cpu_jit.compile_module(globals(), plain=_LOOPS)


def shifted_scores(q: np.ndarray, keys: np.ndarray, per_group: int, scale: float, factor: float) -> np.ndarray | None:
    """x - max(x) along each row, x = (q k^T) scale: q float32 [G per_group, D] (group g's rows
    g per_group ...), keys float32 [G, n, D], both C-contiguous; `factor` exact_rounded.error_factor(D).
    None where a scaled score is not finite."""
    out = np.empty((q.shape[0], keys.shape[1]), np.float32)
    return out if _scores(q, keys, per_group, f32(scale), factor, out) else None


def weighted_values(e: np.ndarray, values: np.ndarray, per_group: int, factor: float) -> np.ndarray | None:
    """(e / its exact row sums) @ values: e float32 [G per_group, n], values float32 [G, n, D], both
    C-contiguous; `factor` exact_rounded.error_factor(n). None where a sum is not finite."""
    n = e.shape[1]
    out = np.empty((e.shape[0], values.shape[2]), np.float32)
    return out if _weighted(e, values, per_group, exact_jit.sum_bits(n), factor, out) else None


def _scores(q, keys, per_group, scale, factor, out):
    counts = np.zeros(2, np.int64)
    rounded_gemv._stack_dots(q, keys, per_group, out, factor, counts)
    return _scale_shift(out, scale)


def _scale_shift(out, scale):
    """In place, each row of the scores x -> x scale - max(x scale) (float32, as ops.softmax does it);
    False where a scaled score is not finite."""
    for i in range(out.shape[0]):
        top = f32(-np.inf)
        for j in range(out.shape[1]):
            v = out[i, j] * scale
            if not np.isfinite(v):
                return False
            out[i, j] = v
            top = max(top, v)
        for j in range(out.shape[1]):
            out[i, j] = out[i, j] - top
    return True


def _weighted(e, values, per_group, bits, factor, out):
    p = np.empty_like(e)
    e_bits = e.view(np.uint32)
    for i in range(e.shape[0]):
        finite, total = exact_jit._row_sum(e_bits, e, i, bits)
        if not finite:
            return False
        s = f32(total)
        for k in range(e.shape[1]):
            p[i, k] = e[i, k] / s
    counts = np.zeros(2, np.int64)
    rounded_gemv._stack_rows(p, values, per_group, out, factor, counts)
    return True
