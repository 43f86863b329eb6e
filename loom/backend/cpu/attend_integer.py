"""Spec 5's integer attention on the CPU, compiled (numba, the optional `loom[cpu]` extra): the scheme of
loom/kernels/exact/attention.py (its reference, the array code) for a prompt's rows or a decode step's, a row
at a time, its bits. The caller makes the rows' integers and exponents (fixed.row_exponents, to_integers) and
the non-finite flags; here each query row walks its keys twice: the largest score, then p, w, and the two
exact integer sums.
"""
from __future__ import annotations

import math

import numpy as np

from . import jit as cpu_jit

_PARALLEL = ("_rows",)
prange = range          # (numba's prange once compiled)


def available() -> bool:
    """Whether the compiled loop runs here."""
    if cpu_jit.compiled(globals()):
        return cpu_jit.available()
    return cpu_jit.compile_module(globals(), plain=("_exp_fixed",), parallel=_PARALLEL)


def attention(qi, eq, qbad, ki, ek, kbad, vi, ev, vbad, per_group: int, first: int, lo: int, window: int,
              scale: float, table, consts) -> np.ndarray:
    """float32 [G, per_group T, D]: group g's query rows (qi int64 [G, per_group T, D], row i at position
    first + i % T) over its keys and values (ki, vi int64 [G, n, D], key j at position lo + j): causal, within
    `window` positions (0: no window); eq, ek, ev int64 exponents, *bad bool flags of rows holding inf or NaN;
    table and consts: attention.EXP2_TABLE and (LOG2E_30, LN2_15, P_BITS, BITS)."""
    G, rows, D = qi.shape
    out = np.empty((G, rows, D), np.float32)
    cpu_jit.run(_rows, qi, eq, qbad, ki, ek, kbad, vi, ev, vbad, rows // per_group, first, lo, window,
                float(np.float32(scale)), table, consts, out)
    return out


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
            acc = np.int64(0)
            for c in range(D):
                acc += qi[g, i, c] * ki[g, j, c]
            s[j] = math.ldexp(float(acc), eq[g, i] + ek[g, j] - 2 * bits)
            top_s = max(top_s, s[j])
            top_e = max(top_e, ev[g, j])
            bad = bad or kbad[g, j] or vbad[g, j]
        num = np.zeros(D, np.int64)
        den = np.int64(0)
        for j in range(start - lo, stop):
            p = _exp_fixed((top_s - s[j]) * scale, table, log2e, ln2)
            den += p
            sh = 31 - p_bits + top_e - ev[g, j]
            if sh < 62:
                w = (p + (np.int64(1) << (sh - 1))) >> sh
                for c in range(D):
                    num[c] += w * vi[g, j, c]
        for c in range(D):
            if bad or den == 0:
                out[g, i, c] = np.float32(np.nan)
            else:
                out[g, i, c] = np.float32(math.ldexp(float(num[c]) / float(den), top_e - p_bits - bits + 31))
