"""Building blocks of Loom's math library, written in the kernel IR on float64 values.

Every function here takes the builder `b`, a Grade and float64 Values. float64 functions use grade
F64 (polynomials good to ~2^-57, double-double corrections where an argument's own rounding would
cost more than an ulp); float32 functions run the same code at grade F32 (shorter polynomials, no
corrections) in float64 and round once at the end, which keeps them within one float32 ulp.

Only correctly rounded operations appear, and no FMA: the double-double helpers use Dekker's split.
"""
from __future__ import annotations

from collections.abc import Sequence

from .. import ir
from .coeffs import COEFFS, CONSTS

C = CONSTS
INF, NAN = float("inf"), float("nan")


class Grade:
    def __init__(self, name: str):
        self.name = name
        self.dd = name == "f64"            # spend double-double work on argument errors

    def coeffs(self, table: str) -> list[float]:
        return [float.fromhex(h) for h in COEFFS[table][self.name]]

    def c0_lo(self, table: str) -> float:
        """The rest of the constant term, for tables whose callers add it as a double-double."""
        return float.fromhex(COEFFS[table][f"{self.name}_c0_lo"])


F64, F32 = Grade("f64"), Grade("f32")


# -- polynomials ------------------------------------------------------------------------------------
def horner(t: ir.Value, coeffs: Sequence[float]) -> ir.Value:
    """sum coeffs[j] t^j (lowest degree first), evaluated by Horner's rule."""
    acc = t.fn.const(coeffs[-1], t.type)
    for c in reversed(coeffs[:-1]):
        acc = acc * t + c
    return acc


def horner_select(b: ir.Function, t: ir.Value, cond: ir.Value, when_true: Sequence[float],
                  when_false: Sequence[float]) -> ir.Value:
    """Horner with each coefficient chosen per element: a two-piece approximation for the price of
    one polynomial plus a select per coefficient (the shorter table is padded with zeros)."""
    n = max(len(when_true), len(when_false))
    a = list(when_true) + [0.0] * (n - len(when_true))
    c = list(when_false) + [0.0] * (n - len(when_false))
    coeff = [b.const(x, t.type) if x == y else b.select(cond, b.const(x, t.type), y) for x, y in zip(a, c)]
    acc = coeff[-1]
    for k in reversed(coeff[:-1]):
        acc = acc * t + k
    return acc


# -- double-double arithmetic (exact error terms from correctly rounded operations) ---------------
def two_sum(a: ir.Value | float, c: ir.Value | float) -> tuple[ir.Value, ir.Value]:
    """(s, e) with s = fl(a + c) and s + e = a + c exactly (Knuth; any magnitudes)."""
    s = a + c
    bb = s - a
    return s, (a - (s - bb)) + (c - bb)


def fast_two_sum(a: ir.Value | float, c: ir.Value | float) -> tuple[ir.Value, ir.Value]:
    """(s, e) with s + e = a + c exactly, when |a| >= |c| or a is zero (Dekker)."""
    s = a + c
    return s, c - (s - a)


def split(a: ir.Value | float) -> tuple[ir.Value | float, ir.Value | float]:
    """a = hi + lo with hi holding the top 26 bits (Veltkamp). Needs |a| < 2^995."""
    t = a * 134217729.0                    # 2^27 + 1
    hi = t - (t - a)
    return hi, a - hi


def two_prod(a: ir.Value | float, c: ir.Value | float) -> tuple[ir.Value, ir.Value]:
    """(p, e) with p = fl(a * c) and p + e = a * c exactly (Dekker, no FMA)."""
    p = a * c
    ah, al = split(a)
    ch, cl = split(c)
    return p, ((ah * ch - p) + ah * cl + al * ch) + al * cl


def small_int(x: ir.Value) -> ir.Value:
    """The i64 value of an integral float64 with |x| < 2^51, in three exact operations (adding
    1.5 * 2^52 puts the integer in the low mantissa bits) instead of convert()'s NaN and
    saturation guards. NaN gives garbage, which callers replace anyway."""
    bias = 1.5 * 2.0 ** 52
    return (x + bias).bitcast(ir.I64) - 0x4338000000000000


# -- powers of two ----------------------------------------------------------------------------------
def pow2(k: ir.Value) -> ir.Value:
    """2^k as float64 for an i64 k in [-1022, 1023] (built from its exponent bits)."""
    return ((k + 1023) << 52).bitcast(ir.F64)


def scale(y: ir.Value, k: ir.Value) -> ir.Value:
    """y * 2^k for k in [-2044, 2046] with a single rounding (in two exact-then-rounding steps,
    so subnormal results are correctly rounded and huge k overflows to inf)."""
    k1 = k >> 1
    return y * pow2(k1) * pow2(k - k1)


def signbit(b: ir.Function, x: ir.Value) -> ir.Value:
    return x.bitcast(ir.I64) < 0


def copysign(b: ir.Function, magnitude: ir.Value, sign_of: ir.Value) -> ir.Value:
    """|magnitude| with the sign bit of `sign_of` (so -0.0 and NaN signs are honoured)."""
    mask = -(2 ** 63)
    bits = (magnitude.bitcast(ir.I64) & (2 ** 63 - 1)) | (sign_of.bitcast(ir.I64) & mask)
    return bits.bitcast(ir.F64)


def quotient_dd(num: ir.Value, num_lo: ir.Value | None, den: ir.Value, den_lo: ir.Value) -> tuple[ir.Value, ir.Value]:
    """(q, c): (num + num_lo) / (den + den_lo) = q + c to about 2^-104 (num_lo may be None):
    the float64 quotient and one Newton correction from the exact residual."""
    q = num / den
    p, p_err = two_prod(q, den)
    r = (num - p) - p_err                            # num - p is exact (Sterbenz)
    if num_lo is not None:
        r = r + num_lo
    return q, (r - q * den_lo) / den


def div_dd(b: ir.Function, num: ir.Value, num_lo: ir.Value | None, den: ir.Value, den_lo: ir.Value) -> ir.Value:
    """(num + num_lo) / (den + den_lo) rounded about once (see quotient_dd)."""
    q, c = quotient_dd(num, num_lo, den, den_lo)
    return b.select(q == 0.0, q, q + c)              # 0 keeps its sign


# -- exp ---------------------------------------------------------------------------------------
def exp_parts(b: ir.Function, g: Grade, x: ir.Value,
              lo: ir.Value | None = None) -> tuple[ir.Value, ir.Value | None, ir.Value]:
    """(y, y_lo, k) with e^(x + lo) = (y + y_lo) * 2^k, y in [0.7, 1.5], k an i64: callers scale
    once at the end. y_lo (grade f64 only, else None) is the rounding error of y.

    x is clamped first (the result is 0 or inf beyond, and k stays small); NaN passes through.
    Reduction: k = rint(x / ln 2), r = x - k ln2 with ln 2 in two parts (k * LN2_HI is exact), then
    e^r = 1 + r + r^2 q(r) with a minimax q. At grade f64 the rounding errors of r, of r + r^2 q
    and of 1 + ... are carried along instead of being lost."""
    lo_bound, hi_bound = (-800.0, 710.0) if g.dd else (-200.0, 200.0)
    xc = b.min(b.max(x, lo_bound), hi_bound)
    kf = b.rint((xc if lo is None else xc + lo) * C["INV_LN2"])
    hi = xc - kf * C["LN2_HI"]                      # exact: Sterbenz, or k = 0
    tail = kf * C["LN2_LO"] if lo is None else kf * C["LN2_LO"] - lo
    r = hi - tail
    q = horner(r, g.coeffs("exp_q"))
    k = small_int(kf)
    if not g.dd:
        return 1.0 + (r + r * r * q), None, k
    corr = (hi - r) - tail                          # r + corr = hi - tail exactly
    p, p_err = fast_two_sum(r, r * r * q + corr)
    y, y_err = fast_two_sum(1.0, p)
    return y, y_err + p_err, k


def exp(b: ir.Function, g: Grade, x: ir.Value) -> ir.Value:
    y, _, k = exp_parts(b, g, x)
    return scale(y, k) if g.dd else y * pow2(k)     # f32 grade: |k| <= 289, one exact step


def expm1_dd(b: ir.Function, g: Grade, x: ir.Value) -> tuple[ir.Value, ir.Value | None]:
    """e^x - 1 as (hi, lo) (lo is None at grade f32), from 2^k (1 + p) - 1 with p = e^r - 1,
    arranged so nothing cancels: (2^k - 1) + 2^k p is exact up to its last addition for k <= 53,
    and huge k goes through scale()."""
    xc = b.min(b.max(x, -60.0), 710.0)              # below -60 the result rounds to -1
    kf = b.rint(xc * C["INV_LN2"])
    hi = xc - kf * C["LN2_HI"]
    tail = kf * C["LN2_LO"]
    r = hi - tail
    small = r * r * horner(r, g.coeffs("exp_q"))
    k = small_int(kf)
    big = kf > 1000.0                               # 2^k would overflow; the -1 no longer matters
    t = pow2(b.select(big, b.const(0, ir.I64), k))
    if not g.dd:
        p = r + small
        return b.select(big, scale(1.0 + p, k), (t - 1.0) + t * p), None
    p, p_err = fast_two_sum(r, small + ((hi - r) - tail))
    s, s_err = two_sum(t - 1.0, t * p)
    return b.select(big, scale(1.0 + p, k), s), b.select(big, 0.0, s_err + t * p_err)


def expm1(b: ir.Function, g: Grade, x: ir.Value) -> ir.Value:
    hi, lo = expm1_dd(b, g, x)
    result = hi if lo is None else hi + lo
    return b.select(x == 0.0, x, result)            # keeps the sign of zero


# -- log ---------------------------------------------------------------------------------------
def log_reduce(b: ir.Function, x: ir.Value, subnormals: bool) -> tuple[ir.Value, ir.Value]:
    """(m, k): x = m * 2^k with m in [sqrt(1/2), sqrt(2)), for positive finite x (anything else
    gives garbage the caller replaces). Subtracting the bits of sqrt(1/2) puts the cut there."""
    if subnormals:
        tiny = x < 2.0 ** -1022
        x = b.select(tiny, x * 2.0 ** 54, x)
    bits = x.bitcast(ir.I64)
    k = (bits - 0x3FE6A09E667F3BCD) >> 52
    m = (bits - (k << 52)).bitcast(ir.F64)
    if subnormals:
        k = k - b.select(tiny, b.const(54, ir.I64), 0)
    return m, k


def log_kernel(b: ir.Function, g: Grade, f: ir.Value, k: ir.Value, c: ir.Value | None = None) -> ir.Value:
    """log(1 + f) + k ln 2 (+ c, a tiny correction), f in [sqrt(1/2) - 1, sqrt(2) - 1).

    With s = f / (2 + f): log(1 + f) = 2 atanh(s) = f - f^2/2 + s (f^2/2 + R(s^2)), R minimax;
    the form keeps the large terms exact and rounds only small ones."""
    s = f / (2.0 + f)
    z = s * s
    R = z * horner(z, g.coeffs("log_r"))
    hfsq = 0.5 * f * f
    kf = k.convert(ir.F64)
    small = kf * C["LN2_LO"] if c is None else kf * C["LN2_LO"] + c
    return kf * C["LN2_HI"] + (f - (hfsq - (s * (hfsq + R) + small)))


def log(b: ir.Function, g: Grade, x: ir.Value) -> ir.Value:
    m, k = log_reduce(b, x, subnormals=g.dd)        # float32 inputs are never subnormal in f64
    result = log_kernel(b, g, m - 1.0, k)
    result = b.select(x == INF, INF, result)
    result = b.select(x == 0.0, -INF, result)
    return b.select(x >= 0.0, result, NAN)          # negative or NaN


def log1p(b: ir.Function, g: Grade, x: ir.Value, x_lo: ir.Value | None = None) -> ir.Value:
    """log(u) for u = fl(1 + x), plus the rounding error of u divided by u; when u is within
    [sqrt(1/2), sqrt(2)) x itself is the reduced argument and nothing is lost at all. x_lo (grade
    f64) extends x to a double-double: log1p(x + x_lo) = log1p(x) + x_lo / (1 + x)."""
    u = 1.0 + x
    m, k = log_reduce(b, u, subnormals=False)
    direct = k == 0
    f = b.select(direct, x, m - 1.0)
    if g.dd:                                        # at f32 grade 1 + x is exact or harmless
        _, err = two_sum(1.0, x)
        err = b.select(direct, 0.0, err)
        result = log_kernel(b, g, f, k, (err if x_lo is None else err + x_lo) / u)
    else:
        result = log_kernel(b, g, f, k)
    result = b.select(x == INF, INF, result)
    result = b.select(x == -1.0, -INF, result)
    result = b.select(x == 0.0, x, result)          # keeps the sign of zero
    return b.select(x >= -1.0, result, NAN)
