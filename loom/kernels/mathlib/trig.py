"""sin and cos of Loom's math library (same conventions as mathlib_exp.py).

Range reduction is Cody-Waite: n = rint(x 2/pi), r = x - n pi/2 with pi/2 split into pieces short
enough that every n * piece is exact. float64: three 33-bit pieces and a tail, with the running
difference kept as a double-double, valid for |x| < 2^20 (then n < 2^20). float32 (in float64):
three 24-bit pieces and a tail, valid for |x| < 2^29. Beyond those limits the functions return NaN
rather than a silently inaccurate value (documented in docs/mathlib.md); Payne-Hanek reduction for
larger arguments is not implemented.

On |r| <= pi/4: sin r = r + r^3 S(r^2), cos r = 1 - r^2/2 + r^4 C(r^2) with minimax S, C; the
quadrant n mod 4 picks and signs one of them.
"""
from __future__ import annotations

from .. import ir
from .core import NAN, C, Grade, horner, small_int, two_sum

LIMIT = {"f64": 2.0 ** 20, "f32": 2.0 ** 29}


def _reduce(b, g, x):
    """(hi, lo, n): x - n pi/2 = hi + lo (lo is 0 at grade f32)."""
    n = b.rint(x * C["TWO_OVER_PI"])
    if not g.dd:
        r = x - n * C["PIO2_32_0"]                  # exact (Sterbenz); so is the next step
        r = ((r - n * C["PIO2_32_1"]) - n * C["PIO2_32_2"]) - n * C["PIO2_32_3"]
        return r, None, n
    r1 = x - n * C["PIO2_64_0"]                     # exact
    s2, e2 = two_sum(r1, -(n * C["PIO2_64_1"]))     # n * piece exact for |n| < 2^20
    s3, e3 = two_sum(s2, -(n * C["PIO2_64_2"]))
    hi, lo = two_sum(s3, (e2 + e3) - n * C["PIO2_64_3"])
    return hi, lo, n


def _sin_cos_reduced(b, g, hi, lo):
    z = hi * hi
    s_poly = hi * z * horner(z, g.coeffs("sin_s"))
    c_poly = z * z * horner(z, g.coeffs("cos_c"))
    hz = 0.5 * z
    w = 1.0 - hz
    if lo is None:
        return hi + s_poly, w + c_poly
    sin_r = hi + (lo * (1.0 - hz) + s_poly)          # sin(hi + lo) ~ sin hi + lo cos hi
    cos_r = w + (((1.0 - w) - hz) + (c_poly - hi * lo))   # recovers the rounding of 1 - hz
    return sin_r, cos_r


def _sincos(b, g, x, want_sin: bool):
    hi, lo, n = _reduce(b, g, x)
    sin_r, cos_r = _sin_cos_reduced(b, g, hi, lo)
    q = small_int(n)                                # garbage for NaN and inf: replaced below
    if not want_sin:
        q = q + 1                                   # cos x = sin(x + pi/2)
    odd = (q & 1) == 1
    v = b.select(odd, cos_r, sin_r)
    v = b.select((q & 2) == 2, -v, v)
    v = b.select(b.abs(x) < LIMIT[g.name], v, NAN)  # also inf and NaN
    return b.select(x == 0.0, x, v) if want_sin else v   # sin keeps the sign of zero


def sin(b: ir.Function, g: Grade, x: ir.Value) -> ir.Value:
    return _sincos(b, g, x, want_sin=True)


def cos(b: ir.Function, g: Grade, x: ir.Value) -> ir.Value:
    return _sincos(b, g, x, want_sin=False)
