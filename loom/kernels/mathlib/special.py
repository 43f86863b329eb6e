"""erf and the GELUs of Loom's math library (same conventions as mathlib_exp.py).

Both erf's tail and gelu's go through one function, h(a) = a Phi(-a) e^(a^2/2) (a times the
Mills ratio of the normal distribution): smooth, between 0.21 and 0.4 for a >= 1/sqrt(2), so a
polynomial in a well-chosen variable fits it, and the exponential factor is left to exp_parts(),
where e^(-x^2/2) gets x^2 as an exact double-double. That gives gelu(x) = -h(|x|) e^(-x^2/2) for
x <= -1/sqrt(2) (a relative error of ~1 ulp all the way down to gelu's underflow near -38.6, where
1 + erf(x / sqrt 2) would have cancelled completely) and x - h(x) e^(-x^2/2) above +1/sqrt(2).
"""
from __future__ import annotations

from .. import ir
from .core import (
    C,
    Grade,
    copysign,
    div_dd,
    exp,
    exp_parts,
    fast_two_sum,
    horner,
    horner_select,
    scale,
    two_prod,
    two_sum,
)

SQRT_HALF = C["INV_SQRT2"]
H_END = {"f64": 39.5, "f32": 17.0}     # the fitted range of h; gelu is 0 beyond -H_END


def mills_h(b: ir.Function, g: Grade, a: ir.Value, precise: bool = True) -> tuple[ir.Value, ir.Value | None]:
    """(h, h_lo): h(a) for a in [1/sqrt(2), H_END] (h_lo, at grade f64, the rounding error of the
    last Horner step, the largest one). Grade f64 fits two pieces, a polynomial in a - c below
    3/sqrt(2) and one in w = (a - K) / (a + K) above, which maps the long tail to a short interval
    (`precise` computes w as a corrected quotient of exact differences: 30 operations that gelu
    needs and erf does not); grade f32 fits one piece in w."""
    if not g.dd:
        return horner((a - C["H_W32_K"]) / (a + C["H_W32_K"]), g.coeffs("h_w32")), None
    near = a < C["H_SPLIT"]
    if precise:     # h moves ~1:1 with w's relative error near the piece's start
        num, num_lo = two_sum(a, -C["H_FAR_K"])
        den, den_lo = two_sum(a, C["H_FAR_K"])
        w = div_dd(b, num, num_lo, den, den_lo)
    else:
        w = (a - C["H_FAR_K"]) / (a + C["H_FAR_K"])
    t = b.select(near, a - C["H_NEAR_C"], w)
    c_near, c_far = g.coeffs("h_near"), g.coeffs("h_far")
    rest = horner_select(b, t, near, c_near[1:], c_far[1:])
    h, h_lo = fast_two_sum(b.select(near, b.const(c_near[0], t.type), c_far[0]), t * rest)
    return h, h_lo + b.select(near, b.const(g.c0_lo("h_near"), t.type), g.c0_lo("h_far"))


def gaussian_tail(b: ir.Function, g: Grade, x: ir.Value) -> ir.Value:
    """|x| Phi(-|x|) = h(|x|) e^(-x^2/2), for |x| >= 1/sqrt(2)."""
    a = b.min(b.abs(x), H_END[g.name])              # NaN passes; beyond, the exponential is 0
    h, h_lo = mills_h(b, g, a)
    if not g.dd:
        return h * exp(b, g, -0.5 * (a * a))
    sq, sq_err = two_prod(a, a)
    y, y_lo, k = exp_parts(b, g, -0.5 * sq, -0.5 * sq_err)
    p, p_err = two_prod(h, y)                        # (h + h_lo)(y + y_lo), rounded once in scale()
    return scale(p + (p_err + (h_lo * y + h * y_lo)), k)


def erf(b: ir.Function, g: Grade, x: ir.Value) -> ir.Value:
    """|x| < 1: x + x D(x^2) with a minimax D; beyond: 1 - erfc(|x|) with
    erfc(a) = e^(-a^2) sqrt(2) h(sqrt(2) a) / a (whose errors shrink by erfc(a) / erf(a) <= 0.19)."""
    ax = b.abs(x)
    d = g.coeffs("erf_e")
    d[0] -= 1.0                                      # exact; x + x D keeps x's bits
    near = x + x * horner(x * x, d)
    a = b.min(ax, 6.0)                               # erf rounds to +-1 beyond 5.93
    h = mills_h(b, g, C["SQRT2"] * a, precise=False)[0]       # erf needs erfc to a few ulps only
    erfc = exp(b, g, -(a * a)) * h * C["SQRT2"] / a
    return b.select(ax < C["ERF_SPLIT"], near, copysign(b, 1.0 - erfc, x))


def gelu(b: ir.Function, g: Grade, x: ir.Value) -> ir.Value:
    """x Phi(x): |x| < 1/sqrt(2): x (1/2 + x P(x^2)); beyond: see the module docstring."""
    v = x * x
    if g.dd:                                         # 1/2 + x P cancels by half for x < 0: keep it exact
        c = g.coeffs("phi_p")
        poly, poly_lo = fast_two_sum(b.const(c[0], x.type), v * horner(v, c[1:]))
        poly_lo = poly_lo + g.c0_lo("phi_p")
        xp, xp_err = two_prod(x, poly)
        phi, phi_err = fast_two_sum(0.5, xp)
        p, p_err = two_prod(x, phi)
        near = p + (p_err + x * (phi_err + (xp_err + x * poly_lo)))
        near = b.select(x == 0.0, x, near)           # keeps -0
    else:
        near = x * (0.5 + x * horner(v, g.coeffs("phi_p")))
    t = gaussian_tail(b, g, x)
    far = b.select(x > 0.0, x - t, -t)
    return b.select(b.abs(x) < SQRT_HALF, near, far)


def gelu_tanh(b: ir.Function, g: Grade, x: ir.Value) -> ir.Value:
    """x / 2 (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3), evaluated as x / (1 + e^(-2u)).

    For x < 0 the result is about x e^(2u), whose relative error is 2|u| times u's: at grade f64,
    u is a double-double (with sqrt(2/pi) and 0.044715 as double-doubles too, so the constants are
    the decimal ones, as in PyTorch's approximate="tanh")."""
    xc = b.min(b.max(x, -40.0), 40.0)                # beyond: x, or 0
    if not g.dd:
        u = C["SQRT_2_OVER_PI_HI"] * (xc * (1.0 + C["GELU_K_HI"] * (xc * xc)))
        result = x / (1.0 + exp(b, g, -2.0 * u))
        return b.select(x < -40.0, -0.0, result)
    sq, sq_err = two_prod(xc, xc)
    kx, kx_err = two_prod(C["GELU_K_HI"], sq)
    kx_err = kx_err + (C["GELU_K_HI"] * sq_err + C["GELU_K_LO"] * sq)
    one, one_err = two_sum(1.0, kx)
    d, d_err = two_prod(xc, one)
    d_err = d_err + xc * (one_err + kx_err)
    u, u_err = two_prod(C["SQRT_2_OVER_PI_HI"], d)
    u_err = u_err + (C["SQRT_2_OVER_PI_HI"] * d_err + C["SQRT_2_OVER_PI_LO"] * d)
    u, u_err = fast_two_sum(u, u_err)
    tail = u < -20.0                                  # e^(2u) < 2^-57: x e^(2u) is the result
    y, y_lo, k = exp_parts(b, g, b.select(tail, 2.0 * u, -2.0 * u), b.select(tail, 2.0 * u_err, -2.0 * u_err))
    d, d_err = two_sum(1.0, scale(y, k))
    xy, xy_err = two_prod(x, y)                      # x e^(2u) rounded once, in scale()
    xy = xy + (xy_err + x * y_lo)
    result = b.select(tail, scale(xy, k), div_dd(b, x, None, d, d_err + scale(y_lo, k)))
    result = b.select(x > 40.0, x, result)           # e^-2u < 2^-57; also keeps div_dd finite
    return b.select(x < -40.0, -0.0, result)
