"""Fit the polynomial coefficients of loom/kernels/mathlib/coeffs.py (needs mpmath).

    python benchmarks/mathlib_fit.py > loom/kernels/mathlib/coeffs.py

Each table is a minimax fit (Remez exchange in 50-digit arithmetic, relative error) of a smooth
function on the interval its caller reduces to, at two grades: "f64" (the float64 functions) and
"f32" (the float32 functions, which compute in float64 and round once, so ~2^-36 suffices). The
script notes, per table, the error of the polynomial with its float64 coefficients (evaluated
exactly) beside the table; the leading coefficients are rounded one at a time with the rest refit.
"""
from __future__ import annotations

import math
import sys

import mpmath as mp

mp.mp.dps = 50
SLACK = 1 + 2.0 ** -8     # reduced arguments can overshoot their nominal interval by rounding


def remez(f, nterms, a, b, fixed=(), grid=1500, iters=60):
    """Coefficients c of sum c_j t^j minimising max |p/f - 1| on [a, b] (discrete Remez exchange);
    the first len(fixed) coefficients are held at the given values."""
    a, b = mp.mpf(a), mp.mpf(b)
    xs = [a + (b - a) * (1 - mp.cos(mp.pi * i / (grid - 1))) / 2 for i in range(grid)]
    fx = [f(x) for x in xs]
    powers = [[x ** j for j in range(nterms)] for x in xs]
    m = len(fixed)
    rhs_base = [fx[i] - sum(mp.mpf(c) * powers[i][j] for j, c in enumerate(fixed)) for i in range(grid)]
    n = nterms - m
    ref = [int(round((grid - 1) * (1 - math.cos(math.pi * i / n)) / 2)) for i in range(n + 1)]
    best = None
    for _ in range(iters):
        A = mp.matrix(n + 1, n + 1)
        rhs = mp.matrix(n + 1, 1)
        for row, i in enumerate(ref):
            for j in range(n):
                A[row, j] = powers[i][m + j]
            A[row, n] = (-1) ** row * abs(fx[i])
            rhs[row] = rhs_base[i]
        sol = mp.lu_solve(A, rhs)
        c = [mp.mpf(v) for v in fixed] + [sol[j] for j in range(n)]
        err = [(sum(c[j] * powers[i][j] for j in range(nterms)) - fx[i]) / abs(fx[i]) for i in range(grid)]
        worst = max(abs(e) for e in err)
        if best is None or worst < best[1]:
            best = (c, worst)
        ext, start = [], 0
        for i in range(1, grid + 1):
            if i == grid or (err[i] > 0) != (err[start] > 0):
                ext.append(max(range(start, i), key=lambda k: abs(err[k])))
                start = i
        while len(ext) > n + 1:
            ext.pop(0 if abs(err[ext[0]]) < abs(err[ext[-1]]) else -1)
        if len(ext) < n + 1 or worst <= abs(sol[n]) * (1 + mp.mpf("1e-9")):
            break
        ref = ext
    return best


def fit_doubles(f, nterms, a, b, rounds=2, c0_lo=False):
    """A minimax fit whose first `rounds` coefficients are rounded to float64 one at a time, each
    time refitting the rest around it, so rounding the leading terms costs (almost) nothing.
    With c0_lo, the constant term is kept as a double-double (returned as the last element)."""
    fixed = []
    for _ in range(rounds):
        c, _ = remez(f, nterms, a, b, fixed=fixed)
        v = c[len(fixed)]
        fixed.append(mp.mpf(float(v)) + float(v - float(v)) if c0_lo and not fixed else float(v))
    c, err = remez(f, nterms, a, b, fixed=fixed)
    out = [float(v) for v in c]
    return out + [float(fixed[0] - out[0])] if c0_lo else out


def exact_error(f, coeffs, a, b, c0_lo=0.0, samples=2000):
    """log2 of the max relative error of the polynomial with the float64 coefficients (plus c0_lo
    on the constant term), evaluated exactly (the evaluation's rounding is the caller's business)."""
    worst = mp.mpf(0)
    for i in range(samples):
        t = mp.mpf(a) + (mp.mpf(b) - a) * i / (samples - 1)
        p = mp.polyval([mp.mpf(c) for c in reversed(coeffs)], t) + c0_lo
        worst = max(worst, abs(p / f(t) - 1))
    return float(mp.log(worst, 2)) if worst else -200.0


def _exp_q(r):          # (e^r - 1 - r) / r^2
    return (mp.expm1(r) - r) / r ** 2 if r else mp.mpf(1) / 2


def _log_r(z):          # (2 atanh(s) / s - 2) / z with z = s^2
    if not z:
        return mp.mpf(2) / 3
    s = mp.sqrt(z)
    return (2 * mp.atanh(s) / s - 2) / z


def _log_q5(z):         # (2 atanh(s) - 2 s - 2 s^3 / 3) / s^5
    if not z:
        return mp.mpf(2) / 5
    s = mp.sqrt(z)
    return (2 * mp.atanh(s) - 2 * s - 2 * s ** 3 / 3) / s ** 5


def _sin_s(z):          # (sin x - x) / x^3 with z = x^2
    if not z:
        return -mp.mpf(1) / 6
    x = mp.sqrt(z)
    return (mp.sin(x) - x) / x ** 3


def _cos_c(z):          # (cos x - 1 + x^2 / 2) / x^4
    if not z:
        return mp.mpf(1) / 24
    x = mp.sqrt(z)
    return (mp.cos(x) - 1 + z / 2) / z ** 2


def _erf_e(z):          # erf(x) / x with z = x^2
    if not z:
        return 2 / mp.sqrt(mp.pi)
    x = mp.sqrt(z)
    return mp.erf(x) / x


def _phi_p(v):          # (Phi(x) - 1/2) / x with v = x^2: the normal CDF near 0, for gelu
    if not v:
        return 1 / mp.sqrt(2 * mp.pi)
    x = mp.sqrt(v)
    return mp.erf(x / mp.sqrt(2)) / (2 * x)


def _mills_h(a):        # a Phi(-a) e^(a^2/2): the Gaussian tail without its exponential
    return a * mp.ncdf(-a) * mp.exp(a * a / 2)


SQRT_HALF = math.sqrt(0.5)
ERF_SPLIT = 1.0                        # erf: polynomial below, 1 - erfc above
H_SPLIT = 1.5 * math.sqrt(2)           # h_near below, h_far above
H_END = {"f64": 28 * math.sqrt(2), "f32": 17.0}   # gelu underflows beyond -H_END in each dtype
H_FAR_K = math.sqrt(H_SPLIT * H_END["f64"])
H_W32_K = math.sqrt(SQRT_HALF * H_END["f32"])
H_NEAR_C = (SQRT_HALF + H_SPLIT) / 2


def _w_fit(k):          # h(a) as a function of w = (a - k) / (a + k)
    return lambda w: _mills_h(k * (1 + w) / (1 - w))


def _w(a, k):
    return (a - k) / (a + k)


LOG_S = (math.sqrt(2) - 1) / (math.sqrt(2) + 1) * SLACK
PIO4 = math.pi / 4 * SLACK
# name: (function, interval, terms at grade f64, terms at grade f32 (0: not used))
FITS = {
    "exp_q": (_exp_q, (-math.log(2) / 2 * SLACK, math.log(2) / 2 * SLACK), 11, 7),
    "log_r": (_log_r, (0, LOG_S ** 2), 7, 4),
    "log_q5": (_log_q5, (0, LOG_S ** 2), 9, 0),
    "sin_s": (_sin_s, (0, PIO4 ** 2), 6, 4),
    "cos_c": (_cos_c, (0, PIO4 ** 2), 6, 4),
    "erf_e": (_erf_e, (0, (ERF_SPLIT * SLACK) ** 2), 13, 8),
    "phi_p": (_phi_p, (0, (SQRT_HALF * SLACK) ** 2), 11, 6),
    "h_near": (lambda t: _mills_h(H_NEAR_C + t), (SQRT_HALF / SLACK - H_NEAR_C, H_SPLIT * SLACK - H_NEAR_C), 18, 0),
    "h_far": (_w_fit(H_FAR_K), (_w(H_SPLIT / SLACK, H_FAR_K), _w(H_END["f64"] * SLACK, H_FAR_K)), 23, 0),
    "h_w32": (_w_fit(H_W32_K), (_w(SQRT_HALF / SLACK, H_W32_K), _w(H_END["f32"] * SLACK, H_W32_K)), 0, 14),
}


C0_LO = ("h_near", "h_far", "phi_p")     # callers add the constant term as a double-double


def split(value, bits, parts):
    """`value` as a sum of floats of `bits` significant bits each (the last one: 53)."""
    out = []
    rest = mp.mpf(value)
    for i in range(parts):
        width = 53 if i == parts - 1 else bits
        e = int(mp.floor(mp.log(abs(rest), 2)))
        piece = mp.nint(rest * mp.mpf(2) ** (width - 1 - e)) / mp.mpf(2) ** (width - 1 - e)
        out.append(float(piece))
        assert mp.mpf(out[-1]) == piece
        rest -= piece
    return out


def constants() -> dict[str, float]:
    ln2, pio2 = mp.log(2), mp.pi / 2
    c = {"INV_LN2": float(1 / ln2), "TWO_OVER_PI": float(2 / mp.pi)}
    c["LN2_HI"], c["LN2_LO"] = split(ln2, 42, 2)          # k * LN2_HI exact for |k| < 2^11
    for i, v in enumerate(split(pio2, 33, 4)):             # n * piece exact for |n| < 2^20
        c[f"PIO2_64_{i}"] = v
    for i, v in enumerate(split(pio2, 24, 4)):             # n * piece exact for |n| < 2^29
        c[f"PIO2_32_{i}"] = v
    c["TWO_THIRDS_HI"], c["TWO_THIRDS_LO"] = split(mp.mpf(2) / 3, 53, 2)
    c["SQRT_2_OVER_PI_HI"], c["SQRT_2_OVER_PI_LO"] = split(mp.sqrt(2 / mp.pi), 53, 2)
    c["GELU_K_HI"], c["GELU_K_LO"] = split(mp.mpf("0.044715"), 53, 2)   # gelu_tanh's cubic term
    c["SQRT2"], c["INV_SQRT2"] = float(mp.sqrt(2)), float(1 / mp.sqrt(2))
    c["ERF_SPLIT"] = ERF_SPLIT
    c["H_SPLIT"], c["H_NEAR_C"], c["H_FAR_K"], c["H_W32_K"] = H_SPLIT, H_NEAR_C, H_FAR_K, H_W32_K
    return c


def main() -> None:
    out = ['"""Polynomial coefficients for loom/kernels/mathlib*.py, generated by',
           'benchmarks/mathlib_fit.py (minimax fits in 50-digit arithmetic); regenerate, do not edit.',
           'Each entry: grade -> coefficients, lowest degree first, as exact float64 hex strings.',
           'The comment gives log2 of the max relative error of the polynomial with these float64',
           'coefficients (evaluated exactly)."""',
           "", "CONSTS = {"]
    out += [f'    "{k}": float.fromhex("{v.hex()}"),  # {v!r}' for k, v in constants().items()]
    out += ["}", "", "COEFFS = {"]
    for name, (f, (a, b), n64, n32) in FITS.items():
        out.append(f'    "{name}": {{')
        for grade, n in (("f64", n64), ("f32", n32)):
            if not n:
                continue
            dd = grade == "f64" and name in C0_LO
            coeffs = fit_doubles(f, n, a, b, c0_lo=dd)
            lo = coeffs.pop() if dd else 0.0
            err = exact_error(f, coeffs, a, b, lo)
            print(f"{name} {grade}: {n} terms, 2^{err:.1f}", file=sys.stderr)
            out.append(f'        "{grade}": (  # {n} terms, 2^{err:.1f} on [{a:.6g}, {b:.6g}]')
            for i in range(0, n, 3):
                out.append("            " + " ".join(f'"{v.hex()}",' for v in coeffs[i:i + 3]))
            out.append("        ),")
            if dd:
                out.append(f'        "{grade}_c0_lo": "{lo.hex()}",')
        out.append("    },")
    out.append("}")
    print("\n".join(out))


if __name__ == "__main__":
    main()
