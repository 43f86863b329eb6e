"""exact_rounded's CPU loops (numba, the optional `loom[cpu]` extra): the float64 copies of the
operands with their row or column 2-norms in one pass, and the certification of the float64 GEMM's
result with the exact sum of every entry it cannot certify.

The exact sum is an integer accumulator (`_exact_dot`): each product of two float32 numbers is a
53-bit integer times 2^(pos - 350), 0 <= pos <= 553, added as three 32-bit pieces to int64 limbs
of 32 bits each (headroom for 2^31 additions), so no sum is rounded; `_round_limbs` then rounds
once to float32, to nearest with ties to even, subnormals and overflow included. The CUDA kernel
(loom/backend/cuda_exact.py, ROUNDED) is the same algorithm, written in CUDA C.
"""
from __future__ import annotations

import math

import numpy as np

from . import cpu_jit

_LOOPS = ("_cast_rows", "_cast_cols", "_bit_length", "_round_limbs", "_exact_dot", "_certify")
LIMBS = 21              # bits 0 .. 671 of 2^350 |sum|: products reach bit 606, 2^12 of them bit 618
_OFFSET = 297           # pos = frexp exponent + 297 (= the float64 exponent field - 725)
_MASK = 0xFFFFFFFF


def available() -> bool:
    return cpu_jit.compile_module(globals(), plain=_LOOPS)


def takes(x) -> bool:
    """Whether these loops take x: 2-D, non-empty, float32, C- or F-contiguous."""
    return x.ndim == 2 and x.size > 0 and x.dtype == np.float32 and (x.flags.c_contiguous or x.flags.f_contiguous)


def cast_norms(x, rows: bool, out, norms) -> None:
    """out[...] = float64(x) (out in x's layout), norms = the 2-norms of x's rows or columns."""
    if x.flags.c_contiguous:
        (_cast_rows if rows else _cast_cols)(x, out, norms)
    else:                               # F-ordered: its transpose is C-ordered, rows and columns swapped
        (_cast_cols if rows else _cast_rows)(x.T, out.T, norms)


def certify(r, na, nb, factor: float, a, b, out) -> None:
    """out = every entry of r (the float64 GEMM of a and b) rounded to float32 where the error bound
    certifies it (exact_rounded's docstring), the exact sum rounded otherwise."""
    _certify(r, na, nb, factor, a, b, out, np.zeros(LIMBS, np.int64))


def _cast_rows(x, out, norms):
    for i in range(x.shape[0]):
        s = 0.0
        for k in range(x.shape[1]):
            v = np.float64(x[i, k])
            out[i, k] = v
            s += v * v
        norms[i] = math.sqrt(s)


def _cast_cols(x, out, norms):
    norms[:] = 0.0
    for i in range(x.shape[0]):
        for k in range(x.shape[1]):
            v = np.float64(x[i, k])
            out[i, k] = v
            norms[k] += v * v
    for k in range(x.shape[1]):
        norms[k] = math.sqrt(norms[k])


def _certify(r, na, nb, factor, a, b, out, limbs):
    m, n = r.shape
    for i in range(m):
        scale = na[i] * factor
        doubtful = False
        for j in range(n):
            x = r[i, j]
            e = scale * nb[j] + abs(x) * 2.0 ** -52
            lo, hi = np.float32(x - e), np.float32(x + e)
            out[i, j] = hi if e != 0.0 else np.float32(0.0)
            doubtful |= (lo != hi or math.copysign(1.0, lo) != math.copysign(1.0, hi)) and math.isfinite(e)
        if not doubtful:
            continue
        for j in range(n):      # the row again: the rare entries to sum exactly
            x = r[i, j]
            e = scale * nb[j] + abs(x) * 2.0 ** -52
            lo, hi = np.float32(x - e), np.float32(x + e)
            if (lo != hi or math.copysign(1.0, lo) != math.copysign(1.0, hi)) and math.isfinite(e):
                out[i, j] = _exact_dot(a, b, i, j, limbs)


def _exact_dot(a, b, i, j, limbs):
    """sum_q a[i, q] b[q, j] exactly, rounded once to float32."""
    limbs[:] = 0
    for q in range(a.shape[1]):
        p = np.float64(a[i, q]) * np.float64(b[q, j])       # exact: 48 bits at most
        if p == 0.0:
            continue
        frac, exponent = math.frexp(p)
        sig = np.int64(abs(frac) * 9007199254740992.0)      # |p| = sig 2^(exponent - 53), sig < 2^53
        pos = exponent + _OFFSET
        w, sh = pos >> 5, pos & 31
        low = (sig & ((np.int64(1) << (32 - sh)) - 1)) << sh          # masked first: no overflow
        rest = sig >> (32 - sh)
        if p < 0.0:
            limbs[w] -= low
            limbs[w + 1] -= rest & _MASK
            limbs[w + 2] -= rest >> 32
        else:
            limbs[w] += low
            limbs[w + 1] += rest & _MASK
            limbs[w + 2] += rest >> 32
    return _round_limbs(limbs)


def _bit_length(v):
    return math.frexp(np.float64(v))[1]                      # exact for 0 < v < 2^53


def _round_limbs(limbs):
    """sum_t limbs[t] 2^(32 t - 350), rounded once to float32 (limbs overwritten)."""
    carry = np.int64(0)
    for t in range(LIMBS):                                   # digits in [0, 2^32), the sign in the carry
        v = limbs[t] + carry
        carry = v >> 32
        limbs[t] = v & _MASK
    negative = carry < 0
    if negative:                                             # the magnitude's digits instead
        carry = np.int64(0)
        for t in range(LIMBS):
            v = carry - limbs[t]
            carry = v >> 32
            limbs[t] = v & _MASK
    top = LIMBS - 1
    while top >= 0 and limbs[top] == 0:
        top -= 1
    if top < 0:
        return np.float32(0.0)                               # an exact zero: +0
    high = 32 * top + _bit_length(limbs[top]) - 1 - 350      # |sum| in [2^high, 2^(high + 1))
    q = max(high - 23, -149)                                 # float32's spacing there: 2^q
    d = q + 350                                              # bits below the kept ones (>= 201)
    w, s = d >> 5, d & 31
    above = limbs[w + 1] & 0x1FFFFFF if w + 1 < LIMBS else np.int64(0)
    mant = ((limbs[w] >> s) | (above << (32 - s))) & 0x1FFFFFF
    rw, rs = (d - 1) >> 5, (d - 1) & 31
    half = (limbs[rw] >> rs) & 1
    sticky = (limbs[rw] & ((np.int64(1) << rs) - 1)) != 0
    for t in range(rw):
        sticky = sticky or limbs[t] != 0
    if half == 1 and (sticky or (mant & 1) == 1):
        mant += 1
    value = np.float32(math.ldexp(np.float64(mant), q))      # exact; 2^128 becomes inf
    return -value if negative else value
