"""Spec 5's integer attention on the CPU, compiled (numba, the optional `loom[cpu]` extra): the scheme of
loom/kernels/exact/attention.py (its reference, the array code) for a prompt's rows or a decode step's, a row
at a time, its bits. The rows' integers, exponents and inf/NaN flags are made here too (fixed.row_exponents'
and to_integers' arithmetic, a row at a time: in NumPy they took two thirds of a SmolLM2 decode step's
attention), held as float64; each query row then walks its keys twice: the scores and their largest, then
p, w and the two exact integer sums. The integer dot products are float64 sums of exact integers below 2^53,
so the compiler may reorder them (`_dot`: reassociated, vectorized) without changing a bit; w v's (`_axpy`)
is elementwise and vectorizes as it is.

A deterministic decode token's attention (`rope_step`, decoder.layer_tokens_exact) also takes its RoPE, the
cache writes and q's integers in one compiled call and reads the keys and values in place from their cache
slots: through Decoder.attend, the NumPy calls around the loop (the rotation, gathering each head's keys and
values, the reshapes) cost SmolLM2-135M's step more than the loop itself. It takes decode_exact's compiled RoPE
(`_rope_heads`, with exact_jit's per-head norms); numba's disk cache checks only this file's timestamp, so a
change there needs this file touched too.
"""
from __future__ import annotations

import math

import numpy as np

from . import decode_exact, exact_jit
from . import jit as cpu_jit

# (_integers on one thread: a prompt's q, k and v rows are a fraction of a millisecond of work, and OpenMP's threads
# waking beside OpenBLAS's, still spinning after the product before, made each call 2.3 ms: SmolLM2-135M's 256-token
# prompt 1.34 -> 1.14 s, the 2-core VM)
_PARALLEL = ("_rows", "_step_rows")
_PLAIN = ("_rint", "_exp_fixed", "_axpy", "_row_exponent", "_row_integers", "_rope_q", "_integers")
_EXACT_SUMS = ("_dot",)                         # (exact integer sums: any order gives the same bits)
prange = range          # (numba's prange once compiled)
_ROUNDER = 6755399441055744.0                   # 1.5 2^52


def available() -> bool:
    """Whether the compiled loop runs here (decode_exact's, whose RoPE rope_step calls, first)."""
    if cpu_jit.compiled(globals()):
        return cpu_jit.available()
    return decode_exact.available() and cpu_jit.compile_module(globals(), plain=_PLAIN, parallel=_PARALLEL,
                                                            reassociated=_EXACT_SUMS)


def causal(q: np.ndarray, k: np.ndarray, v: np.ndarray, per_group: int, first: int, lo: int, window: int | None,
           scale: float, table: np.ndarray, consts: np.ndarray) -> np.ndarray | None:
    """protocols.IntegerAttention's causal: attention()'s rows where numba runs here, else None (the array
    code)."""
    if not available():
        return None
    return attention(q, k, v, per_group, first, lo, window or 0, scale, table, consts)


def causal_paged(q: np.ndarray, cache_k: np.ndarray, cache_v: np.ndarray, key_slots: np.ndarray, items: tuple,
                 per_group: int, window: int | None, scale: float, table: np.ndarray, consts: np.ndarray,
                 out: np.ndarray) -> bool:
    """protocols.IntegerAttention's causal_paged: declined (the caller gathers the rows for causal; on the CPU the
    copies are a small share of the compiled loop's time)."""
    return False


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, per_group: int, first: int, lo: int, window: int,
              scale: float, table: np.ndarray, consts: np.ndarray) -> np.ndarray:
    """float32 [G, per_group T, D]: group g's query rows (q float32 [G, per_group T, D], row i at position
    first + i % T) over its keys and values (k, v float32 [G, n, D], key j at position lo + j): causal, within
    `window` positions (0: no window); table and consts: attention.EXP2_TABLE and (LOG2E_30, LN2_15, P_BITS,
    BITS)."""
    G, rows, D = q.shape
    out = np.empty((G, rows, D), np.float32)
    if rows == per_group and window == 0:           # a decode step: every row sees keys lo .. first
        q2 = np.ascontiguousarray(q, dtype=np.float32).reshape(-1, D)
        qi, eq, qbad = np.empty(q2.shape), np.empty(len(q2), np.int64), np.empty(len(q2), np.bool_)
        _integers(q2, int(consts[3]), qi, eq, qbad)
        # (key j of group g as a cache's slot j, key/value head g: [n, G, D] views)
        cpu_jit.run(_step_rows, qi.reshape(q.shape), eq.reshape(G, rows), qbad.reshape(G, rows),
                    np.ascontiguousarray(k, dtype=np.float32).transpose(1, 0, 2),
                    np.ascontiguousarray(v, dtype=np.float32).transpose(1, 0, 2),
                    np.arange(min(k.shape[1], first - lo + 1)), float(np.float32(scale)), table, consts, out)
        return out
    parts = []
    for a in (q, k, v):
        a2 = np.ascontiguousarray(a, dtype=np.float32).reshape(-1, D)
        xi, e, bad = np.empty(a2.shape), np.empty(len(a2), np.int64), np.empty(len(a2), np.bool_)
        _integers(a2, int(consts[3]), xi, e, bad)
        parts += [xi.reshape(a.shape), e.reshape(a.shape[:-1]), bad.reshape(a.shape[:-1])]
    cpu_jit.run(_rows, *parts, rows // per_group, first, lo, window, float(np.float32(scale)), table, consts, out)
    return out


def rope_step(qkv: np.ndarray, heads: int, kv_heads: int, cos: np.ndarray, sin: np.ndarray,
              qk_norm: np.ndarray | None, eps: float, cache_k: np.ndarray, cache_v: np.ndarray, slots: np.ndarray,
              scale: float, table: np.ndarray, consts: np.ndarray) -> np.ndarray | None:
    """One query position's context float32 [H D] in the scheme, from its projection to its attention, with
    the bits of Decoder.qkv's tail then Decoder.attend (decode_exact.rope_scores' arguments: qkv float32
    [(H + 2 KV) D] with its biases added, qk_norm [H + KV, D] (qwen3) or None, cos and sin [D] at the
    position, the caches [slots, KV, D], slots int64 [n] the keys the query sees in position order, its own
    last, where its rotated key and its value are written); table and consts: attention.EXP2_TABLE and
    (LOG2E_30, LN2_15, P_BITS, BITS). None where numba does not run here or a per-head norm is not finite (the
    caller's composed path then runs the row, writing the same key and value again)."""
    if not available():
        return None
    R, D = heads // kv_heads, cache_k.shape[2]
    if slots.ndim != 1 or slots.size == 0:
        raise ValueError(f"rope_step: at least one slot (1-D) expected, got slots of shape {slots.shape}")
    norm = qk_norm if qk_norm is not None else np.empty((0, D), np.float32)
    qi, eq, qbad = np.empty((heads, D)), np.empty(heads, np.int64), np.empty(heads, np.bool_)
    if not _rope_q(qkv, heads, kv_heads, cos, sin, norm, np.float32(eps), exact_jit.sum_bits(D), cache_k, cache_v,
                   slots[-1], int(consts[3]), qi, eq, qbad):
        return None
    out = np.empty((kv_heads, R, D), np.float32)
    cpu_jit.run(_step_rows, qi.reshape(kv_heads, R, D), eq.reshape(kv_heads, R), qbad.reshape(kv_heads, R), cache_k,
                cache_v, slots, float(np.float32(scale)), table, consts, out)
    return out.reshape(-1)


def _rope_q(qkv, heads, kv_heads, cos, sin, norm, eps, norm_bits, cache_k, cache_v, own, bits, qi, eq, qbad):
    """rope_step's heads (decode_exact._rope_heads: the rotated key and the value into slot `own`) and q's
    integers. False where a norm is not finite."""
    q = np.empty((heads, cache_k.shape[2]), np.float32)
    if not decode_exact._rope_heads(qkv, heads, kv_heads, cos, sin, norm, eps, norm_bits, cache_k, cache_v, own, q):
        return False
    for h in range(heads):
        eq[h], qbad[h] = _row_exponent(q[h], bits)
        _row_integers(q[h], bits, eq[h], qbad[h], qi[h])
    return True


def _integers(x, bits, xi, e, bad):
    for r in prange(x.shape[0]):
        e[r], bad[r] = _row_exponent(x[r], bits)
        _row_integers(x[r], bits, e[r], bad[r], xi[r])


def _row_exponent(x, bits):
    """(fixed.row_exponents' e, whether the row holds inf or NaN) of one float32 row."""
    bits32 = x.view(np.int32)
    worst = 0
    for c in range(x.shape[0]):                     # (on the bits: an integer maximum, vectorized)
        worst = max(worst, bits32[c] & 0x7FFFFFFF)
    top_bits = worst
    if worst >= 0x7F800000:                         # inf or NaN in the row (rare): its finite maximum
        top_bits = 0
        for c in range(x.shape[0]):
            a = bits32[c] & 0x7FFFFFFF
            if a < 0x7F800000:
                top_bits = max(top_bits, a)
    nonfinite = worst >= 0x7F800000
    biased, mantissa = top_bits >> 23, top_bits & 0x7FFFFF
    if biased > 0:                                  # a normal float32: 1.m 2^(biased - 127), frexp's e biased - 126,
        # one more where 1.m 2^(bits - 1) rounds to 2^bits (ties to even: from half an integer below it)
        return biased - 126 + (mantissa >= (1 << 23) - (1 << (23 - bits))), nonfinite
    e = 0
    if top_bits > 0:                                # (subnormal: rare, the general way)
        top = math.ldexp(np.float64(mantissa), -149)
        e = math.frexp(top)[1]
        if np.rint(math.ldexp(top, bits - e)) > (1 << bits) - 1:
            e += 1
    return e, nonfinite


def _row_integers(x, bits, e, nonfinite, out):
    """to_integers of one float32 row at its exponent e into out (float64); nonfinite: whether it holds inf or
    NaN (0 there)."""
    scale = math.ldexp(1.0, bits - e)               # (|bits - e| < 200: a float64; each product exact)
    if nonfinite:                                   # (_rint's zeros are +0: R - R)
        for c in range(x.shape[0]):
            val = np.float64(x[c]) * scale
            out[c] = _rint(val) if abs(val) < np.inf else 0.0
    else:
        for c in range(x.shape[0]):
            out[c] = _rint(np.float64(x[c]) * scale)


def _dot(a, b):
    acc = 0.0
    for c in range(a.shape[0]):
        acc += a[c] * b[c]
    return acc


def _axpy(w, x, out):
    for c in range(x.shape[0]):
        out[c] += w * x[c]


def _rint(x):
    """x rounded to an integer, ties to even, for |x| < 2^51 (a float64 addition rounds it: inlined, where libm's
    rint is a call)."""
    return (x + _ROUNDER) - _ROUNDER


def _exp_fixed(d, table, log2e, ln2):
    dq = np.int64(_rint(min(d, 64.0) * 65536.0))
    u = (dq * log2e) >> 30
    i = u >> 16
    if i >= 62:
        return np.int64(0)
    p = (table[(u >> 8) & 255] * ((np.int64(1) << 31) - (u & 255) * ln2)) >> 31
    return p >> i


def _rows(qi, eq, qbad, ki, ek, kbad, vi, ev, vbad, T, first, lo, window, scale, table, consts, out):
    G, rows, D = qi.shape
    n = ki.shape[1]
    log2e, ln2, p_bits, bits = consts[0], consts[1], consts[2], consts[3]
    # ldexp(sum, eq + ek - 2 bits) as two exact products by powers of two (the exponents are float32's, the sums
    # integers below 2^53: no subnormal or overflow on the way), made once a key and a row, not a libm call a score
    # (SmolLM2-135M's 2,048-token prompt, the 2-core VM, cProfile: this loop 10.5 -> 9.4 s of 16.8 -> 15.5)
    kmul = np.empty((G, n), np.float64)
    for g in range(G):
        for j in range(n):
            kmul[g, j] = math.ldexp(1.0, ek[g, j] - 2 * bits)
    for gi in prange(G * rows):
        g, i = gi // rows, gi % rows
        qpos = first + i % T
        start = lo if window == 0 else max(lo, qpos - window + 1)
        stop = min(n, qpos - lo + 1)                    # keys lo + j for j < stop
        s = np.empty(n, np.float64)
        top_s = -np.inf
        top_e = -(1 << 40)
        bad = qbad[g, i]
        qmul = math.ldexp(1.0, eq[g, i])
        for j in range(start - lo, stop):
            s[j] = _dot(qi[g, i], ki[g, j]) * kmul[g, j] * qmul
            top_s = max(top_s, s[j])
            top_e = max(top_e, ev[g, j])
            bad = bad or kbad[g, j] or vbad[g, j]
        num = np.zeros(D, np.float64)
        den = np.int64(0)
        for j in range(start - lo, stop):
            p = _exp_fixed((top_s - s[j]) * scale, table, log2e, ln2)
            den += p
            sh = 31 - p_bits + top_e - ev[g, j]
            if sh < 62:
                w = (p + (np.int64(1) << (sh - 1))) >> sh
                _axpy(np.float64(w), vi[g, j], num)
        for c in range(D):
            if bad or den == 0:
                out[g, i, c] = np.float32(np.nan)
            else:
                out[g, i, c] = np.float32(math.ldexp(num[c] / float(den), top_e - p_bits - bits + 31))


def _step_rows(qi, eq, qbad, k, v, slots, scale, table, consts, out):
    """A decode step's rows (every row of group g sees the keys and values k[slots[j], g], v[slots[j], g], k and
    v float32 [slots, G, D]: a paged cache's, or gathered rows' [n, G, D] view), a group a thread, each key's and
    value's row made integers once for the group's rows (not a float64 copy of the cache each step)."""
    G, R, D = qi.shape
    stop = slots.shape[0]
    log2e, ln2, p_bits, bits = consts[0], consts[1], consts[2], consts[3]
    for g in prange(G):
        s = np.empty((R, stop), np.float64)
        evs = np.empty(stop, np.int64)
        vbad = np.empty(stop, np.bool_)
        row = np.empty(D, np.float64)
        top_s = np.full(R, -np.inf)
        qscale = np.empty(R, np.float64)
        for r in range(R):
            qscale[r] = math.ldexp(1.0, eq[g, r])
        top_e = -(1 << 40)
        bad = False
        for j in range(stop):
            ek, kb = _row_exponent(k[slots[j], g], bits)
            ev, vb = _row_exponent(v[slots[j], g], bits)
            _row_integers(k[slots[j], g], bits, ek, kb, row)
            kscale = math.ldexp(1.0, ek - 2 * bits)
            for r in range(R):      # (ldexp(sum, eq + ek - 30) as two exact products: no subnormal on the way)
                s[r, j] = _dot(qi[g, r], row) * kscale * qscale[r]
                top_s[r] = max(top_s[r], s[r, j])
            evs[j] = ev
            vbad[j] = vb
            top_e = max(top_e, ev)
            bad = bad or kb or vb
        num = np.zeros((R, D), np.float64)
        den = np.zeros(R, np.int64)
        for j in range(stop):
            sh = 31 - p_bits + top_e - evs[j]
            _row_integers(v[slots[j], g], bits, evs[j], vbad[j], row)
            for r in range(R):
                p = _exp_fixed((top_s[r] - s[r, j]) * scale, table, log2e, ln2)
                den[r] += p
                if sh < 62:
                    _axpy(np.float64((p + (np.int64(1) << (sh - 1))) >> sh), row, num[r])
        for r in range(R):
            for c in range(D):
                if bad or qbad[g, r] or den[r] == 0:
                    out[g, r, c] = np.float32(np.nan)
                else:
                    out[g, r, c] = np.float32(math.ldexp(num[r, c] / float(den[r]), top_e - p_bits - bits + 31))
