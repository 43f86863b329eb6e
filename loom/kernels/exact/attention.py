"""Attention in integers: determinism spec 5's scheme for a decoder language model's attention, its CPU
reference (exact_dispatch's "attention" rule; decoder.Decoder.attend takes it in deterministic mode).

Why: under spec 4 a prompt's exact attention is float64 tensor-core products, certified and settled, and a
softmax of mathlib's float64 exp with an exact sum: most of a 2,048-token prompt's time on the GPU
(docs/performance.md). Here every sum is an exact integer sum (GEMMs of int8 planes on any tensor core, in
any order) and the softmax is integer arithmetic (no float64 exp, no division a probability). Measured on
SmolLM2-135M over Hamlet (benchmarks/attention_schemes.py, "integer 14/14/14/14", a bit coarser than this
on q, k and v): mean |logit difference| from exact attention 0.004, every argmax kept, against fast mode's
bfloat16 inputs' 0.022.

The scheme, for one query row q (a head's D values) over the keys and values it may see (causal, its
window; `allowed`):

1. q's row, each k row and each v row are rounded once to integers at spec 4's scale (fixed.py:
   |integers| <= 32767, the row's exponent e).
2. Scores s_j = (qi . ki_j) 2^(eq + ek_j - 30): exact integer sums, exact in float64.
3. d_j = fl64(fl64(s_max - s_j) * scale) >= 0 (s_max the row's largest allowed score; float64 operations,
   rounded to nearest), then t_j = d_j log2(e) in integers: dq = rint(min(d_j, 64) 2^16) and
   u = (dq * LOG2E_30) >> 30 (units of 2^-16); p_j = 2^-u in units of 2^-31 from a 256-entry table of
   2^(-k/256) and a linear step over the last 8 bits (relative error below 2^-15.7), shifted right by u's
   integer part (exp_fixed). The largest p is 2^31.
4. Each key's v scale folded into p, at P_BITS bits below 1: w_j = round(p_j 2^(ev_j - E) / 2^(31 - P_BITS))
   (half up; E the largest allowed ev_j; 0 <= w_j <= 2^P_BITS, two int8 planes).
5. The context is 2^(E - P_BITS - 15 + 31) (sum_j w_j vi_j) / (sum_j p_j): both sums exact integers (below
   2^53), their float64 quotient (rounded to nearest) scaled by the power of two, rounded to float32.

A row depends on its own keys alone, so any split of a prompt into chunks, any batch and decode steps give the
same bits. A row whose q, or any allowed key's k or v, holds inf or NaN is NaN.
"""
from __future__ import annotations

from types import ModuleType

import numpy as np

from ... import backend
from ...backend import Array
from ...errors import ShapeError
from .fixed import BITS, row_exponents, to_integers

P_BITS = 14                                                     # p's integers: 0 .. 2^14 (two int8 planes)
D_FRAC = 16                                                     # d and t in units of 2^-16
LOG2E_30 = 1549082005                                           # round(log2(e) 2^30)
LN2_15 = 22713                                                  # round(ln(2) 2^15): 2^(-r/2^16) ~ 1 - r ln2 2^-16
MAX_KEYS = 1 << 22                                              # keys a row may see: sum p < 2^31 2^22 = 2^53
EXP2_TABLE = np.array([round(2.0 ** 31 * 2.0 ** (-k / 256)) for k in range(256)], dtype=np.int64)   # 2^-31 units
# what the backends' kernels take (protocols.IntegerAttention): the table and (LOG2E_30, LN2_15, P_BITS, BITS)
SCHEME = (EXP2_TABLE, np.array([LOG2E_30, LN2_15, P_BITS, BITS], dtype=np.int64))


def exp_fixed(xp: ModuleType, d: Array) -> Array:
    """int64: exp(-d) in units of 2^-31 for float64 d >= 0 by integer operations (step 3 of the docstring);
    d beyond 64 counts as 64 (2^-92: 0)."""
    dq = xp.rint(xp.minimum(d, 64.0) * float(1 << D_FRAC)).astype(np.int64)
    u = (dq * LOG2E_30) >> 30                                   # (below 2^53: exact)
    i, k, r = u >> D_FRAC, (u >> 8) & 255, u & 255
    p = (xp.asarray(EXP2_TABLE)[k] * ((1 << 31) - r * LN2_15)) >> 31
    return xp.where(i < 62, p >> xp.minimum(i, 62), 0)


def attention(xp: ModuleType, q: Array, k: Array, v: Array, allowed: Array, scale: float) -> Array:
    """float32 [..., T, D]: the context of queries q [..., T, D] over keys k and values v [..., n, D]
    (float32; leading axes broadcast), where allowed [..., T, n] (bool, broadcast) says which keys each
    query sees, in this scheme."""
    if q.shape[-1] != k.shape[-1] or k.shape[-1] != v.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ShapeError(f"attention takes q [..., T, D], k and v [..., n, D], got {q.shape}, {k.shape}, {v.shape}")
    q, k, v = (xp.asarray(a, dtype=np.float32) for a in (q, k, v))
    eq, ek, ev = row_exponents(xp, q), row_exponents(xp, k), row_exponents(xp, v)
    qi, ki, vi = to_integers(xp, q, eq), to_integers(xp, k, ek), to_integers(xp, v, ev)
    # 2: scores, exact (integers below 2^53 times powers of two)
    s = xp.ldexp(qi @ xp.swapaxes(ki, -1, -2), (eq[..., :, None] + ek[..., None, :] - 2 * BITS).astype(np.int32))
    s = xp.where(allowed, s, -np.inf)
    # 3: p in units of 2^-31, the largest 2^31
    with np.errstate(invalid="ignore"):
        d = (s.max(axis=-1, keepdims=True) - s) * float(np.float32(scale))
    p = xp.where(allowed, exp_fixed(xp, xp.where(allowed, d, 64.0)), 0)
    # 4: each key's scale folded in
    ev_keys = ev[..., None, :].astype(np.int64)
    top = xp.max(xp.where(allowed, ev_keys, np.iinfo(np.int32).min), axis=-1, keepdims=True)
    shift = xp.clip(31 - P_BITS + top - ev_keys, 1, 62)          # (at least 17 where allowed)
    w = xp.where(allowed & (shift < 62), (p + (xp.int64(1) << (shift - 1))) >> shift, 0)
    # 5: one quotient of exact integer sums a row
    num = w.astype(np.float64) @ vi                             # |w vi| < 2^29: exact below 2^24 keys
    den = p.sum(axis=-1, keepdims=True).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        ctx = xp.ldexp(num / den, (top - P_BITS - BITS + 31).astype(np.int32)).astype(np.float32)
    bad = ~xp.all(xp.isfinite(q), axis=-1)[..., None]          # a row touching inf or NaN: NaN
    bad = bad | xp.any(allowed & ~xp.all(xp.isfinite(k) & xp.isfinite(v), axis=-1)[..., None, :], axis=-1)[..., None]
    return xp.where(bad | (den == 0), np.float32(np.nan), ctx)


def causal(q: Array, k: Array, v: Array, per_group: int, first: int, lo: int, window: int | None,
           scale: float) -> Array:
    """attention() for a decoder's causal rows on their device: q float32 [G, per_group T, D] (row r T + t of
    group g at position first + t), k and v [G, n, D] (key j at position lo + j), keys within `window` positions
    (None: all); by the backend's kernels (protocols.IntegerAttention: the CPU's compiled loop, the GPU's int8
    tensor-core kernel, the same bits) where it takes them, else the array code."""
    _check_keys(k.shape[1])
    be = backend.of(q)
    if be.attend_integer is not None:
        out = be.attend_integer.causal(q, k, v, per_group, first, lo, window, scale, *SCHEME)
        if out is not None:
            return out
    return causal_arrays(be.xp, q, k, v, per_group, first, lo, window, scale)


def causal_paged(q: Array, cache_k: Array, cache_v: Array, key_slots: Array, items: tuple, per_group: int,
                 window: int | None, scale: float, out: Array) -> None:
    """causal() for the prompt rows of several sequences in a decoder's layouts: queries q float32 [N, H, D] (H =
    KV per_group; head h of key/value head h // per_group), the paged caches [slots, KV, D], the contexts into
    out [N, H D] (float32, C-contiguous); items[s] = (first row, T, first position, lo, n): sequence s's T rows
    of q from that row, at positions first .., over its n keys and values at key_slots[s, :n] (int64 [S, n_max])
    at positions lo .. (paged_forward.flash_plans' items). By the backend's kernel where it reads these layouts in
    place (protocols.IntegerAttention.causal_paged: no copies, the sequences in one launch), else each sequence
    gathered for causal(): the same bits."""
    for item in items:
        _check_keys(item[4])
    be = backend.of(q)
    if be.attend_integer is not None and be.attend_integer.causal_paged(q, cache_k, cache_v, key_slots, items,
                                                                        per_group, window, scale, *SCHEME, out):
        return
    xp = be.xp
    _, H, D = q.shape
    KV = H // per_group
    for s, (row, T, first, lo, n) in enumerate(items):
        q5 = xp.ascontiguousarray(q[row:row + T].reshape(T, KV, per_group, D).transpose(1, 2, 0, 3))
        k, v = (xp.ascontiguousarray(c[key_slots[s, :n]].transpose(1, 0, 2)) for c in (cache_k, cache_v))
        ctx = causal(q5.reshape(KV, per_group * T, D), k, v, per_group, first, lo, window, scale)
        out[row:row + T] = ctx.reshape(KV, per_group, T, D).transpose(2, 0, 1, 3).reshape(T, H * D)


def _check_keys(n: int) -> None:
    if n >= MAX_KEYS:
        raise ShapeError(f"integer attention takes windows below {MAX_KEYS} keys (its sum of p must stay below "
                         f"2^53), got {n} keys")


def causal_arrays(xp: ModuleType, q: Array, k: Array, v: Array, per_group: int, first: int, lo: int,
                  window: int | None, scale: float) -> Array:
    """causal()'s rows by the array code on NumPy or CuPy arrays (the GPU's kernels' head sizes past theirs)."""
    G, rows, D = q.shape
    T, n = rows // per_group, k.shape[1]
    qpos, kpos = xp.arange(first, first + T)[:, None], xp.arange(lo, lo + n)[None, :]
    allowed = (kpos <= qpos) & (kpos > qpos - (n + first if window is None else window))
    out = attention(xp, q.reshape(G, per_group, T, D), k[:, None], v[:, None], allowed, scale)
    return out.reshape(G, rows, D)
