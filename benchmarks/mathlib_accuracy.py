"""Measure loom.kernels.mathlib's error in ulps against mpmath (50 digits); prints a Markdown table.

    python benchmarks/mathlib_accuracy.py [--samples N] [--seed S] [--only NAME ...]

For each function and dtype: N random arguments per domain (uniform ranges and log-uniform over the
float range, both signs where the function takes them) plus the special cases, evaluated with the
NumPy lowering. The error of a result y against the exact value v is |y - v| / ulp(v), where ulp(v)
is the spacing of the dtype's floats in v's binade (the smallest subnormal below the normal range);
a result that should overflow must be inf. docs/mathlib.md holds the table this prints.
"""
from __future__ import annotations

import argparse
import sys
import time

import mpmath as mp
import numpy as np

from loom.kernels import mathlib

mp.mp.dps = 50
HALF = mp.mpf(1) / 2
GELU_K = mp.mpf("0.044715")


def _gelu_tanh(x):
    u = mp.sqrt(2 / mp.pi) * (x + GELU_K * x ** 3)
    return x / (1 + mp.exp(-2 * u))


REFERENCE = {
    "exp": mp.exp, "log": mp.log, "log1p": mp.log1p, "expm1": mp.expm1, "tanh": mp.tanh,
    "sigmoid": lambda x: 1 / (1 + mp.exp(-x)), "softplus": lambda x: mp.log1p(mp.exp(x)),
    "silu": lambda x: x / (1 + mp.exp(-x)), "erf": mp.erf,
    "gelu": lambda x: x * mp.ncdf(x) if abs(x) < 1e6 else max(x, mp.mpf(0)),   # mpmath's erfc overflows
    "gelu_tanh": _gelu_tanh, "sin": mp.sin, "cos": mp.cos, "pow": mp.power,
}


def _uniform(rng, lo, hi, n):
    return rng.uniform(lo, hi, n)


def _loguniform(rng, lo_exp, hi_exp, n, signed=True):
    x = 2.0 ** rng.uniform(lo_exp, hi_exp, n)
    return x * rng.choice([-1.0, 1.0], n) if signed else x


# name -> list of (label, sampler(rng, n, dtype) -> tuple of arrays)
def domains(dtype):
    f32 = np.dtype(dtype) == np.float32
    big = 128 if f32 else 1024
    tiny = -149 if f32 else -1074
    exp_lo, exp_hi = (-104.0, 89.0) if f32 else (-746.0, 710.0)
    one = [
        ("[-1, 1]", lambda r, n: (_uniform(r, -1, 1, n),)),
        ("log-uniform", lambda r, n: (_loguniform(r, tiny, big, n),)),
    ]
    return {
        "exp": [("exp range", lambda r, n: (_uniform(r, exp_lo, exp_hi, n),))] + one,
        "log": [("[0.5, 2]", lambda r, n: (_uniform(r, 0.5, 2, n),)),
                ("log-uniform > 0", lambda r, n: (_loguniform(r, tiny, big, n, signed=False),))],
        "log1p": [("[-1, 1]", lambda r, n: (_uniform(r, -1, 1, n),)),
                  ("log-uniform > 0", lambda r, n: (_loguniform(r, tiny, big, n, signed=False),)),
                  ("log-uniform (-1, 0)", lambda r, n: (-_loguniform(r, tiny, 0, n, signed=False),))],
        "expm1": [("[-40, exp max]", lambda r, n: (_uniform(r, -40, exp_hi, n),))] + one,
        "tanh": [("[-25, 25]", lambda r, n: (_uniform(r, -25, 25, n),))] + one,
        "sigmoid": [("[-40, 40]", lambda r, n: (_uniform(r, -40, 40, n),)),
                    ("exp range", lambda r, n: (_uniform(r, -exp_hi - 40, exp_hi, n),))] + one,
        "softplus": [("[-40, 40]", lambda r, n: (_uniform(r, -40, 40, n),)),
                     ("exp range", lambda r, n: (_uniform(r, exp_lo, exp_hi, n),))] + one,
        "silu": [("[-40, 40]", lambda r, n: (_uniform(r, -40, 40, n),)),
                 ("exp range", lambda r, n: (_uniform(r, exp_lo - 8, exp_hi, n),))] + one,
        "erf": [("[-6, 6]", lambda r, n: (_uniform(r, -6, 6, n),))] + one,
        "gelu": [("[-5, 5]", lambda r, n: (_uniform(r, -5, 5, n),)),
                 ("[-40, 0]" if not f32 else "[-15, 0]", lambda r, n: (_uniform(r, -15 if f32 else -40, 0, n),))] + one,
        "gelu_tanh": [("[-5, 5]", lambda r, n: (_uniform(r, -5, 5, n),)),
                      ("[-25, 0]" if not f32 else "[-12, 0]", lambda r, n: (_uniform(r, -12 if f32 else -25, 0, n),))] + one,
        "sin": [("[-10, 10]", lambda r, n: (_uniform(r, -10, 10, n),)),
                ("[-2^20, 2^20]" if not f32 else "[-2^29, 2^29]",
                 lambda r, n: (_uniform(r, -2.0 ** (29 if f32 else 20), 2.0 ** (29 if f32 else 20), n),)),
                ("log-uniform < limit", lambda r, n: (_loguniform(r, tiny, 29 if f32 else 20, n),))],
        "pow": [("x in [0.01, 100], y in [-50, 50]", lambda r, n: (_loguniform(r, -6.6, 6.6, n, False), _uniform(r, -50, 50, n))),
                ("x in [0.5, 2], |y| < 1000", lambda r, n: (_uniform(r, 0.5, 2, n), _uniform(r, -1000, 1000, n))),
                ("x log-uniform, y in [-2, 2]", lambda r, n: (_loguniform(r, tiny, big, n, False), _uniform(r, -2, 2, n))),
                ("x < 0, integer y", lambda r, n: (-_loguniform(r, -10, 10, n, False), np.round(_uniform(r, -60, 60, n)))),
                ("x near 1, y large", lambda r, n: (1 + _uniform(r, -1e-3, 1e-3, n), _uniform(r, -1e5, 1e5, n)))],
    }


def ulp_errors(name, args, dtype):
    """Errors in ulps of mathlib's results on `args` (arrays of `dtype`)."""
    finfo = np.finfo(dtype)
    got = mathlib.evaluate(name, *args)
    errors = np.zeros(got.shape)
    emin, p = finfo.minexp, finfo.nmant
    for i in range(got.size):
        v = REFERENCE[name](*(mp.mpf(float(a[i])) for a in args))
        y = got[i]
        if isinstance(v, mp.mpc) or mp.isnan(v):
            errors[i] = 0 if np.isnan(y) else np.inf
            continue
        if mp.isinf(v) or abs(v) >= mp.mpf(float(finfo.max)) * (1 + mp.mpf(2) ** (-p - 1)):
            errors[i] = 0 if np.isinf(y) and (y > 0) == (v > 0) else np.inf
            continue
        if not np.isfinite(y):
            errors[i] = np.inf
            continue
        e = max(int(mp.floor(mp.log(abs(v), 2))) if v else emin, emin)
        errors[i] = float(abs(mp.mpf(float(y)) - v) / mp.mpf(2) ** (e - p))
    return errors


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20000, help="random arguments per domain")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="*", default=None)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    print("| function | dtype | max ulp | samples | domain (worst at) |")
    print("|---|---|---|---|---|")
    for name in args.only or list(mathlib.FUNCTIONS):
        for dtype in (np.float32, np.float64):
            table = domains(dtype)
            doms = table["sin"] if name == "cos" else table[name]
            worst, worst_at, total, labels = 0.0, None, 0, []
            start = time.time()
            for label, sample in doms:
                xs = tuple(np.asarray(a, dtype=np.float64).astype(dtype) for a in sample(rng, args.samples))
                err = ulp_errors(name, xs, dtype)
                total += err.size
                labels.append(label)
                i = int(np.argmax(err))
                if err[i] > worst:
                    worst, worst_at = float(err[i]), tuple(float(a[i]) for a in xs)
            at = ", ".join(repr(a) for a in worst_at) if worst_at else "-"
            print(f"| {name} | {np.dtype(dtype).name} | {worst:.3f} | {total} | {'; '.join(labels)} ({at}) |",
                  flush=True)
            print(f"  {name} {np.dtype(dtype).name}: {time.time() - start:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
