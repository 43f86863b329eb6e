"""The small operations of a one-token decode step, and of prompts, on the CPU, compiled by Numba (fast mode).

A decode step of a small model (SmolLM2-135M: 30 layers) spends as long in the NumPy calls around
its products as in the products: an RMSNorm, RoPE, the cache writes, the attention's two products
and softmax, SwiGLU are each several whole-array NumPy calls of a few hundred values, and their
Python and dispatch cost (about 7 ms a token, 2026-11-24) is what kept the decode behind
llama.cpp. Here each is one compiled call: `rms_rows` (RMSNorm of rows), `attend_token_paged` (the
rotated query and key, the cache writes, and the attention of one query position over its keys in a
paged cache, every head), `swiglu_rows`. loom.llm.decoder uses them for a step of decode tokens in
fast mode (Decoder.layer_tokens_paged); the products stay loom/backend/cpu/gemv.py's.

A prompt's layers keep BLAS for every product, the attention's two included, and use `rms_rows`,
`swiglu_rows` and `causal_softmax` (the scores' softmax in place, computing only the keys a query
sees) between them: the NumPy calls they replace wrote and reread whole [T, 2 I] and [heads, T, T]
temporaries several times (0.13 s of a 0.65 s prefill of 256 tokens of SmolLM2-135M on 2 cores; 0.08 s
compiled, 2026-11-24). These run on the calling thread: split over numba's threads they cost more
than they gained, as numba's OpenMP workers, spinning after each loop, slowed the OpenBLAS products
next to them about 2x.

Fast mode only: float32 sums in the loops' order, reassociated by the compiler (jit.FASTMATH);
deterministic mode keeps the composed path, whose bits its contract fixes.
Until _load() runs these are plain Python functions (jit.compile_module).
"""
from __future__ import annotations

import numpy as np

from . import jit

prange = range
f32 = np.float32
_PLAIN = ("_rms_rows", "_swiglu_rows", "_rope_head", "_causal_softmax")
_PARALLEL = ("_attend_token_paged",)


def available() -> bool:
    """Whether these loops run here (jit.available()); compiles them on the first call."""
    return jit.compile_module(globals(), plain=_PLAIN, parallel=_PARALLEL, fastmath=jit.FASTMATH)


def rms_rows(x: np.ndarray, weight: np.ndarray, eps: float, out: np.ndarray) -> None:
    """out [R, E] = x / sqrt(mean(x^2) + eps) * weight, row by row (x float32 C-contiguous [R, E])."""
    _rms_rows(x, weight, f32(eps), out)


def swiglu_rows(gate_up: np.ndarray, out: np.ndarray) -> None:
    """out [R, I] = silu(gate) * up for gate_up [R, 2 I] = [gate | up]."""
    _swiglu_rows(gate_up, out)


def causal_softmax(scores: np.ndarray, scale: float, pos: int, lo: int, window: int | None) -> None:
    """In place, scores [G, T, n] (float32, C-contiguous) -> softmax(scores * scale) over the keys each query
    sees, 0 elsewhere: query t sits at position pos + t, key k at lo + k; a query sees the keys at its
    own position and before, and with a sliding `window` only the last `window` of them. Every query
    must see at least one key (lo <= pos; window >= 1)."""
    if lo > pos or (window is not None and window < 1):
        raise ValueError(f"causal_softmax: query positions from {pos} see no key from position {lo} "
                         f"with window {window}")
    _causal_softmax(scores, f32(scale), pos, lo, 0 if window is None else window)


def attend_token_paged(qkv: np.ndarray, heads: int, kv_heads: int, cos: np.ndarray, sin: np.ndarray,
                       qk_norm: np.ndarray | None, eps: float, cache_k: np.ndarray, cache_v: np.ndarray,
                       slots: np.ndarray, scale: float, out: np.ndarray) -> None:
    """One query position's attention, every head, over a paged cache: qkv [(H + 2 KV) D] (biases
    added) holds the query heads, the key heads and the value heads; each query and key head gets
    qwen3's RMSNorm (qk_norm [H + KV, D], a weight row a head, if given) and HF's rotate-half RoPE
    (cos, sin [D] of the query's position); cache_k, cache_v [cache slots, KV, D]; slots (int64 [n])
    are the slots of the keys the query sees, in position order, the last one the query's own
    position, where its key and value are written; out [H D] = softmax(q K^T scale) V over those keys,
    query head h reading key head h // (H / KV). Each slot's key and value row is read once and the
    context summed in a local row."""
    # through jit.run, as every parallel kernel: its lock (numba's workqueue layer aborts on concurrent
    # parallel calls) and its note of the threading layer (a forked child must not start OpenMP)
    if slots.ndim != 1 or slots.size == 0:
        raise ValueError(f"attend_token_paged: expected a non-empty 1-D slot list, got shape {slots.shape}")
    norm = qk_norm if qk_norm is not None else np.empty((0, qkv.shape[0] // (heads + 2 * kv_heads)), np.float32)
    jit.run(_attend_token_paged, qkv, heads, kv_heads, cos, sin, norm, f32(eps), cache_k, cache_v, slots,
            f32(scale), out)


def _rms_rows(x, weight, eps, out):
    n = x.shape[1]
    for r in range(x.shape[0]):
        s = f32(0)
        for k in range(n):
            s += x[r, k] * x[r, k]
        rstd = f32(1) / np.sqrt(s / f32(n) + eps)
        for k in range(n):
            out[r, k] = x[r, k] * rstd * weight[k]


def _swiglu_rows(gate_up, out):
    n = out.shape[1]
    for r in range(out.shape[0]):
        for k in range(n):
            g = gate_up[r, k]
            out[r, k] = g / (f32(1) + np.exp(-g)) * gate_up[r, n + k]


def _causal_softmax(scores, scale, pos, lo, window):
    t_len, n = scores.shape[1], scores.shape[2]
    for row in prange(scores.shape[0] * t_len):
        g, t = row // t_len, row % t_len
        last = min(n - 1, pos + t - lo)                     # the query's own key
        first = max(0, last - window + 1) if window > 0 else 0
        top = f32(-np.inf)
        for k in range(first, last + 1):
            scores[g, t, k] *= scale
            top = max(top, scores[g, t, k])
        total = f32(0)
        for k in range(first, last + 1):
            e = np.exp(scores[g, t, k] - top)
            scores[g, t, k] = e
            total += e
        inv = f32(1) / total
        for k in range(first, last + 1):
            scores[g, t, k] *= inv
        for k in range(first):
            scores[g, t, k] = f32(0)
        for k in range(last + 1, n):
            scores[g, t, k] = f32(0)


def _rope_head(x, cos, sin, norm, head, eps, out):
    """out [D] = RoPE(rms(x) * norm[head]) (x alone where norm has no rows)."""
    d = x.shape[0]
    half = d // 2
    normed = norm.shape[0] > 0
    rstd = f32(1)
    if normed:
        s = f32(0)
        for k in range(d):
            s += x[k] * x[k]
        rstd = f32(1) / np.sqrt(s / f32(d) + eps)
    for k in range(half):
        a = x[k] * rstd * (norm[head, k] if normed else f32(1))
        b = x[k + half] * rstd * (norm[head, k + half] if normed else f32(1))
        out[k] = a * cos[k] - b * sin[k]
        out[k + half] = b * cos[k + half] + a * sin[k + half]


def _attend_token_paged(qkv, heads, kv_heads, cos, sin, norm, eps, cache_k, cache_v, slots, scale, out):
    d = cache_k.shape[2]
    group = heads // kv_heads
    n = slots.shape[0]
    own = slots[n - 1]
    for j in range(kv_heads):                       # the new key and value, rotated, into the cache
        _rope_head(qkv[(heads + j) * d:(heads + j + 1) * d], cos, sin, norm, heads + j, eps, cache_k[own, j])
        for k in range(d):
            cache_v[own, j, k] = qkv[(heads + kv_heads + j) * d + k]
    for h in prange(heads):
        j = h // group
        q = np.empty(d, np.float32)
        _rope_head(qkv[h * d:(h + 1) * d], cos, sin, norm, h, eps, q)
        p = np.empty(n, np.float32)
        top = f32(-np.inf)
        for t in range(n):
            key = cache_k[slots[t], j]              # (a row view: the slot read once, the loop vectorized)
            s = f32(0)
            for k in range(d):
                s += q[k] * key[k]
            p[t] = s * scale
            top = max(top, p[t])
        total = f32(0)
        for t in range(n):
            p[t] = np.exp(p[t] - top)
            total += p[t]
        acc = np.zeros(d, np.float32)
        for t in range(n):
            w = p[t] / total
            value = cache_v[slots[t], j]
            for k in range(d):
                acc[k] += w * value[k]
        for k in range(d):
            out[h * d + k] = acc[k]
