"""Exponential-family functions of Loom's math library: tanh, sigmoid, silu, softplus, pow.

Each takes (b, grade, *float64 Values) like mathlib_core's blocks. The float64 versions reach
their tails through exp_parts() and scale() so that results in the subnormal range are rounded
once; the float32 versions can afford plain formulas, because float64 covers float32's range.
"""
from __future__ import annotations

from .. import ir
from .core import (
    F64,
    INF,
    NAN,
    C,
    Grade,
    copysign,
    div_dd,
    exp,
    exp_parts,
    expm1_dd,
    fast_two_sum,
    horner,
    log,
    log1p,
    log_reduce,
    quotient_dd,
    scale,
    signbit,
    two_prod,
    two_sum,
)


def tanh(b: ir.Function, g: Grade, x: ir.Value) -> ir.Value:
    """With t = expm1(2|x|): t / (t + 2) below 0.55, 1 - 2 / (t + 2) above (neither cancels, and
    t's relative error is damped, never amplified). float64 carries t + 2 as a double-double and
    divides with one correction, so the result is rounded about once."""
    a = b.min(b.abs(x), 22.0 if g.dd else 10.0)     # tanh rounds to 1 beyond
    small = a < 0.55
    t, t_lo = expm1_dd(b, g, 2.0 * a)
    if not g.dd:
        r = b.select(small, t / (t + 2.0), 1.0 - 2.0 / (t + 2.0))
    else:
        den, den_err = two_sum(t, 2.0)
        den_lo = den_err + t_lo
        q, q_lo = quotient_dd(b.const(2.0, ir.F64), None, den, den_lo)
        one, one_err = two_sum(1.0, -q)             # 1 - 2 / (t + 2), rounded once
        big = one + (one_err - q_lo)
        r = b.select(small, div_dd(b, t, t_lo, den, den_lo), big)
    return copysign(b, r, x)


def _one_plus_exp(b, g, x):
    """(d, d_lo, y, y_lo, k): 1 + e^x = d + d_lo and e^x = (y + y_lo) 2^k (double-doubles)."""
    y, y_lo, k = exp_parts(b, g, x)
    d, d_err = two_sum(1.0, scale(y, k))
    return d, d_err + scale(y_lo, k), y, y_lo, k


def sigmoid(b: ir.Function, g: Grade, x: ir.Value) -> ir.Value:
    """1 / (1 + e^-x); below -40 simply e^x (the neglected factor 1 / (1 + e^x) is within 2^-57 of 1),
    which also keeps results down to the subnormal range where e^-x would overflow."""
    if not g.dd:
        return 1.0 / (1.0 + exp(b, g, -x))
    tail = x < -40.0
    d, d_lo, y, _, k = _one_plus_exp(b, g, b.select(tail, x, -x))
    return b.select(tail, scale(y, k), div_dd(b, b.const(1.0, ir.F64), None, d, d_lo))


def silu(b: ir.Function, g: Grade, x: ir.Value) -> ir.Value:
    """x / (1 + e^-x) (one division, not x * sigmoid(x)); below -40, x e^x scaled once."""
    if g.dd:
        tail = x < -40.0
        d, d_lo, y, y_lo, k = _one_plus_exp(b, g, b.select(tail, x, -x))
        xy, xy_err = two_prod(x, y)                  # x e^x rounded once, in scale()
        xy = xy + (xy_err + x * y_lo)
        result = b.select(tail, scale(xy, k), div_dd(b, x, None, d, d_lo))
        result = b.select(x > 40.0, x, result)       # e^-x < 2^-57; also keeps div_dd finite
    else:
        result = x / (1.0 + exp(b, g, -x))
    return b.select(x < -800.0, -0.0, result)       # e^x underflows; also -inf * 0


def softplus(b: ir.Function, g: Grade, x: ir.Value) -> ir.Value:
    """log(1 + e^x) = max(x, 0) + log1p(e^-|x|): no overflow, and log1p keeps tiny e^x exact.
    float64 hands e^-|x| to log1p as a double-double (its rounding would cost up to an ulp)."""
    if not g.dd:
        return b.max(x, 0.0) + log1p(b, g, exp(b, g, -b.abs(x)))
    y, y_lo, k = exp_parts(b, g, -b.abs(x))
    return b.max(x, 0.0) + log1p(b, g, scale(y, k), scale(y_lo, k))


# -- pow -----------------------------------------------------------------------------------------
def log_dd(b: ir.Function, x: ir.Value) -> tuple[ir.Value, ir.Value]:
    """log(x) as a double-double (hi, lo) good to ~2^-66 relative, for positive finite x.

    log(m) = 2 atanh(s), s = f / (2 + f): s and the 2 s^3 / 3 term are carried as double-doubles,
    the rest s^5 Q(s^2) is small enough for float64."""
    m, k = log_reduce(b, x, subnormals=True)
    f = m - 1.0
    d_hi, d_lo = fast_two_sum(2.0, f)                # 2 + f exactly
    s = f / d_hi
    p, p_err = two_prod(s, d_hi)
    s_lo = (((f - p) - p_err) - s * d_lo) / d_hi     # f / (2 + f) - s
    s2, s2_err = two_prod(s, s)
    s3, s3_err = two_prod(s2, s)
    s3_lo = s3_err + s2_err * s + 3.0 * s2 * s_lo
    t3, t3_err = two_prod(C["TWO_THIRDS_HI"], s3)
    t3_lo = t3_err + (C["TWO_THIRDS_HI"] * s3_lo + C["TWO_THIRDS_LO"] * s3)
    t5 = s3 * s2 * horner(s2, F64.coeffs("log_q5"))
    kf = k.convert(ir.F64)
    big, e1 = two_sum(kf * C["LN2_HI"], 2.0 * s)
    big, e2 = two_sum(big, t3)
    tail = (((kf * C["LN2_LO"] + t5) + t3_lo) + 2.0 * s_lo) + (e2 + e1)
    return fast_two_sum(big, tail)


def pow_(b: ir.Function, g: Grade, x: ir.Value, y: ir.Value) -> ir.Value:
    """|x|^y = e^(y log|x|), then the C99 (Annex F) special cases by select, last rule winning.

    float64: log|x| and y log|x| are double-doubles, because |y log x| reaches 745 and each unit
    of its absolute error is a relative error of the result. float32: float64 log and exp suffice."""
    ax = b.abs(x)
    if g.dd:
        l_hi, l_lo = log_dd(b, ax)
        yc = b.min(b.max(y, -2.0 ** 900), 2.0 ** 900)   # beyond, the result is 0 or inf anyway
        p_hi, p_err = two_prod(yc, l_hi)
        e, _, k = exp_parts(b, g, p_hi, p_err + yc * l_lo)
        mag = scale(e, k)
    else:
        mag = exp(b, F64, y * log(b, F64, ax))
    half = y * 0.5
    y_int = b.rint(y) == y                           # true for +-inf too; they are handled below
    y_odd = y_int & (b.rint(half) != half)
    negative = x < 0.0
    result = b.select(negative & y_odd, -mag, mag)
    result = b.select(negative & ~y_int & (x > -INF), NAN, result)
    zero_or_inf = (ax == 0.0) | (ax == INF)
    inf = b.const(INF, ir.F64)
    edge = b.select((ax == INF) == (y > 0.0), inf, 0.0)
    result = b.select(zero_or_inf, b.select(signbit(b, x) & y_odd, -edge, edge), result)
    y_inf = b.abs(y) == INF
    limit = b.select(ax == 1.0, 1.0, b.select((ax > 1.0) == (y > 0.0), inf, 0.0))
    result = b.select(y_inf, limit, result)
    result = b.select(b.isnan(x) | b.isnan(y), NAN, result)
    return b.select((y == 0.0) | (x == 1.0), 1.0, result)
