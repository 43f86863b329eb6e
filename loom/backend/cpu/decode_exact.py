"""Deterministic mode's attention for a decode token over a paged cache on the CPU, the RoPE and the
cache writes included (numba, the optional `loom[cpu]` extra), with the composed path's bits.

Why: a deterministic decode step of SmolLM2-135M (30 layers) spent about as long in the NumPy calls
between its products as fast mode spends on its whole step's products: the rotation (six whole-array
calls), the cache writes, gathering each head's keys and values into contiguous copies, the reshapes
around the compiled attention (attend_exact.py). Fast mode replaced the same calls by one compiled call a
row (decode_jit.attend_token_paged) with float32 arithmetic of its own; this module does it with the
deterministic arithmetic, so the bits stay those of Decoder.qkv then Decoder.attend:

1. `rope_scores`: the row's query and key heads (qwen3's per-head RMSNorm first, exact_jit's loop, which
   has fused.rms_norm's bits), rotated as decoder._rotate does it: x cos + (-x_hi | x_lo) sin, each a
   float32 product and a float32 sum, compiled without fastmath (nothing contracted into an FMA); the
   rotated key and the value written to the query's own slot; the keys and values the query sees
   gathered into contiguous [KV, n, D] buffers; then attend_exact's scores (the same loop on the same
   values);
2. the caller's exp (mathlib, ops.exp; the backend does not reach up to loom.kernels);
3. attend_exact.weighted_values on the gathered values.

Where a score, a sum or a per-head norm is not finite the calls return False and the caller runs the
composed path for the row (writing the same key and value again).

The compiled loop calls exact_jit's, rounded_gemv's and attend_exact's numba functions; numba's disk
cache checks only this file's timestamp, so a change to those needs this file's cache dropped too
(touching this file does it), as rounded_gemv's docstring says of its own helpers.
"""
from __future__ import annotations

import numpy as np

from . import attend_exact, exact_jit, rounded, rounded_gemv
from . import jit as cpu_jit

_LOOPS = ("_rope_heads", "_rope_scores")
f32 = np.float32


def available() -> bool:
    """Whether the compiled loop runs here (attend_exact's and exact_jit's, which it calls, first)."""
    if cpu_jit.compiled(globals()):
        return cpu_jit.available()
    return attend_exact.available() and cpu_jit.compile_module(globals(), plain=_LOOPS)


def rope_scores(qkv: np.ndarray, heads: int, kv_heads: int, cos: np.ndarray, sin: np.ndarray,
                qk_norm: np.ndarray | None, eps: float, cache_k: np.ndarray, cache_v: np.ndarray,
                slots: np.ndarray, scale: float, factor: float, values: np.ndarray) -> np.ndarray | None:
    """One query position's scores over a paged cache, shifted by their row maxima (attend_exact's
    shifted_scores of the rotated query and the keys it sees): qkv float32 [(H + 2 KV) D] holds the
    query heads, the key heads and the value heads (biases added); qk_norm [H + KV, D] (qwen3) or None;
    cos, sin [D] at the query's position; cache_k, cache_v [slots, KV, D]; slots int64 [n] the slots
    of the keys the query sees in position order, its own last, where its rotated key and its value
    are written; values float32 [KV, n, D] receives the values it sees (for weighted_values);
    `factor` exact_rounded.error_factor(D). Returns [H, n] (head h reads key head h // (H / KV)), or
    None where a per-head norm or a scaled score is not finite."""
    if slots.ndim != 1 or slots.size == 0 or values.shape != (kv_heads, slots.size, cache_k.shape[2]):
        raise ValueError(f"rope_scores: {slots.size} slots (1-D, at least one) and a values buffer of shape "
                         f"{(kv_heads, slots.size, cache_k.shape[2])} expected, got slots {slots.shape} and "
                         f"values {values.shape}")
    d = cache_k.shape[2]
    norm = qk_norm if qk_norm is not None else np.empty((0, d), np.float32)
    shifted = np.empty((heads, slots.size), np.float32)
    ok = _rope_scores(qkv, heads, kv_heads, cos, sin, norm, f32(eps), exact_jit.sum_bits(d), cache_k, cache_v,
                      slots, f32(scale), factor, values, shifted)
    return shifted if ok else None


def _rope_heads(qkv, heads, kv_heads, cos, sin, norm, eps, norm_bits, cache_k, cache_v, own, q):
    """A query position's heads as Decoder.qkv's tail makes them: qwen3's per-head norms (norm [H + KV, D], or
    none), decoder._rotate's float32 operations one by one; the rotated query heads into q [H, D], the rotated key
    and the value into cache slot `own`. False where a norm is not finite (nothing written)."""
    d = cache_k.shape[2]
    half = d // 2
    rows = np.empty((heads + kv_heads, d), np.float32)          # the query heads, then the key heads
    for h in range(heads + kv_heads):
        for k in range(d):
            rows[h, k] = qkv[h * d + k]
    if norm.shape[0] > 0:                                        # qwen3's q_norm and k_norm
        normed = np.empty_like(rows)
        for h in range(heads + kv_heads):
            if not exact_jit._rms_rows(rows[h:h + 1], norm[h], eps, norm_bits, normed[h:h + 1]):
                return False
        rows = normed
    for h in range(heads + kv_heads):
        target = q[h] if h < heads else cache_k[own, h - heads]
        for k in range(half):                                    # decoder._rotate, operation by operation
            a, b = rows[h, k], rows[h, k + half]
            target[k] = a * cos[k] + (-b) * sin[k]
            target[k + half] = b * cos[k + half] + a * sin[k + half]
    for j in range(kv_heads):
        cache_v[own, j] = qkv[(heads + kv_heads + j) * d:(heads + kv_heads + j + 1) * d]
    return True


def _rope_scores(qkv, heads, kv_heads, cos, sin, norm, eps, norm_bits, cache_k, cache_v, slots, scale, factor,
                 values, shifted):
    n = slots.shape[0]
    q = np.empty((heads, cache_k.shape[2]), np.float32)
    if not _rope_heads(qkv, heads, kv_heads, cos, sin, norm, eps, norm_bits, cache_k, cache_v, slots[n - 1], q):
        return False
    for j in range(kv_heads):
        for t in range(n):
            values[j, t] = cache_v[slots[t], j]
    # rounded_gemv._stack_dots with each key read in place from its slot (a gathered copy of the keys
    # cost more than the products): the same loop, entry by entry, so the same bits
    group = heads // kv_heads
    x64, ax = q.astype(np.float64), np.abs(q)
    stages = np.zeros((1, 2), np.int64)
    limbs = np.zeros(rounded.LIMBS, np.int64)
    for j in range(kv_heads):
        for t in range(n):
            key = cache_k[slots[t], j]
            for i in range(j * group, j * group + group):
                s, bound = rounded_gemv._dot(x64, ax, i, key)
                v, certain = rounded_gemv._first_stage(s, bound, factor)
                shifted[i, t] = v if certain else rounded_gemv._settle(q, key, i, factor, limbs, stages, 0)
    return attend_exact._scale_shift(shifted, scale)
