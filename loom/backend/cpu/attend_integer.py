"""Spec 5's integer attention on the CPU, compiled (numba, the optional `loom[cpu]` extra): the scheme of
loom/kernels/exact/attention.py (its reference, the array code) for a prompt's rows or a decode step's, a row
at a time, its bits. The rows' integers, exponents and inf/NaN flags are made here too (fixed.row_exponents'
and to_integers' arithmetic, a row a thread: in NumPy they took two thirds of a SmolLM2 decode step's
attention), held as float64; each query row then walks its keys twice: the scores and their largest, then
p, w and the two exact integer sums. The integer dot products are float64 sums of exact integers below 2^53,
so the compiler may reorder them (`_dot`: reassociated, vectorized) without changing a bit; w v's (`_axpy`)
is elementwise and vectorizes as it is.
"""
from __future__ import annotations

import math

import numpy as np

from . import jit as cpu_jit

_PARALLEL = ("_rows", "_integers")
_EXACT_SUMS = ("_dot",)                         # (exact integer sums: any order gives the same bits)
prange = range          # (numba's prange once compiled)


def available() -> bool:
    """Whether the compiled loop runs here."""
    if cpu_jit.compiled(globals()):
        return cpu_jit.available()
    return cpu_jit.compile_module(globals(), plain=("_exp_fixed", "_axpy"), parallel=_PARALLEL, reassociated=_EXACT_SUMS)


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, per_group: int, first: int, lo: int, window: int,
              scale: float, table: np.ndarray, consts: np.ndarray) -> np.ndarray:
    """float32 [G, per_group T, D]: group g's query rows (q float32 [G, per_group T, D], row i at position
    first + i % T) over its keys and values (k, v float32 [G, n, D], key j at position lo + j): causal, within
    `window` positions (0: no window); table and consts: attention.EXP2_TABLE and (LOG2E_30, LN2_15, P_BITS,
    BITS)."""
    G, rows, D = q.shape
    parts = []
    for a in (q, k, v):
        a2 = np.ascontiguousarray(a, dtype=np.float32).reshape(-1, D)
        xi, e, bad = np.empty(a2.shape), np.empty(len(a2), np.int64), np.empty(len(a2), np.bool_)
        cpu_jit.run(_integers, a2, int(consts[3]), xi, e, bad)
        parts += [xi.reshape(a.shape), e.reshape(a.shape[:-1]), bad.reshape(a.shape[:-1])]
    out = np.empty((G, rows, D), np.float32)
    cpu_jit.run(_rows, *parts, rows // per_group, first, lo, window, float(np.float32(scale)), table, consts, out)
    return out


def _integers(x, bits, xi, e, bad):
    for r in prange(x.shape[0]):
        top, nonfinite = 0.0, False
        for c in range(x.shape[1]):
            a = abs(np.float64(x[r, c]))
            if math.isfinite(a):
                top = max(top, a)
            else:
                nonfinite = True
        er = 0
        if top > 0.0:
            er = math.frexp(top)[1]
            if np.rint(math.ldexp(top, bits - er)) > (1 << bits) - 1:
                er += 1
        e[r], bad[r] = er, nonfinite
        scale = math.ldexp(1.0, bits - er)          # (|bits - er| < 200: a float64; each product exact)
        for c in range(x.shape[1]):
            val = np.float64(x[r, c]) * scale
            xi[r, c] = np.rint(val) + 0.0 if math.isfinite(val) else 0.0


def _dot(a, b):
    acc = 0.0
    for c in range(a.shape[0]):
        acc += a[c] * b[c]
    return acc


def _axpy(w, x, out):
    for c in range(x.shape[0]):
        out[c] += w * x[c]


def _exp_fixed(d, table, log2e, ln2):
    dq = np.int64(np.rint(min(d, 64.0) * 65536.0))
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
    for gi in prange(G * rows):
        g, i = gi // rows, gi % rows
        qpos = first + i % T
        start = lo if window == 0 else max(lo, qpos - window + 1)
        stop = min(n, qpos - lo + 1)                    # keys lo + j for j < stop
        s = np.empty(n, np.float64)
        top_s = -np.inf
        top_e = -(1 << 40)
        bad = qbad[g, i]
        for j in range(start - lo, stop):
            s[j] = math.ldexp(_dot(qi[g, i], ki[g, j]), eq[g, i] + ek[g, j] - 2 * bits)
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
