"""Deterministic float32 GEMM, rounded correctly: every entry of a @ b is the exact dot product of
its row and column, rounded once to float32 (to nearest, ties to even). One right answer exists, so
any BLAS, thread split, GPU kernel or summation order that finds it gives the same bits.

How it is found cheaply (the products exact_dispatch's table gives this scheme: K <= 2048):
- the operands are converted to float64, where each product of two float32 numbers is exact, and
  multiplied by any float64 GEMM: r = the dot product with rounding errors from the additions only;
- in any order, K additions err by at most gamma_K sum_k |a_k b_k| <= gamma_K ||a||_2 ||b||_2
  (Cauchy-Schwarz), gamma_K = K u / (1 - K u), u = 2^-53 (Higham, Accuracy and Stability of
  Numerical Algorithms, 2nd ed., section 3.1); with the norms' own rounding and r +- e's allowed for,
  e = (K + 2) u (1 + 2^-20) ||a|| ||b|| + 2^-52 |r| bounds |r - exact| in the floats r - e, r + e;
- rounding to nearest is monotonic, so where float32(r - e) and float32(r + e) have the same bits
  the exact value rounds to them too: that is the answer;
- otherwise (about 0.06% of entries at K = 784 on random data; far more where no product is nonzero
  but the norms are, as in the weight gradients of sparse inputs) the entry takes cheaper stages
  first: +0 where no product is nonzero, a compensated sum certified the same way (loom/backend/cpu/rounded.py's
  docstring; the GPU runs it with a warp per entry), and only then the
  exact sum: an integer accumulator (numba, CUDA C), or here a float64 sum whose additions are shown
  exact (TwoSum; many entries at once, where many are open) and else math.fsum with the midpoint check
  of `_round_float32`.

Zero: an exact zero is +0 (a tiny negative result rounds to -0, as IEEE's rounding does). Rows and
columns holding inf or NaN are the caller's (exact.py patches in IEEE's special values).

Why not the slices: they need two float64 GEMMs' work on the CPU (the left operand in two integer
slices) and truncate each element to its row's scale; this needs one, and is more accurate (half
an ulp of the exact value).
"""
from __future__ import annotations

import math

import numpy as np

from ...backend import Array, Backend

# Longer sums (K > exact_dispatch.ROUNDED_MAX_K) take the slice scheme. Until spec 1, sums up to
# 2^15 were summed here in pieces of 512 (a float64 GEMM each, the bound's K replaced by pieces +
# piece length) while the pieces' results fitted a memory budget, which made the scheme depend on
# M x N and so on the batch: spec 1 chooses from K alone (exact_dispatch).


def error_factor(k: int) -> float:
    """gamma_K, inflated for the rounding of the norms and their product (relative error below
    (K + 4) u, well inside 2^-20 for K <= 2^30): e = error_factor(K) ||a|| ||b|| + 2^-52 |r|."""
    return (k + 2) * 2.0 ** -53 * (1.0 + 2.0 ** -20)


def matmul(be: Backend, a: Array, b: Array) -> tuple[Array, bool]:
    """(product, finite) for float32 a [..., M, K] and b [..., K, N]: the float32 product, each entry the
    exact dot product rounded once. Where `finite` is False a row or column holds inf or NaN, and its
    entries are left for the caller to patch; the GPU patches them itself (no host read) and says True.
    The backend's kernels first (the GPU's; the CPU's compiled loops), else the NumPy reference."""
    factor = error_factor(a.shape[-1])
    done = be.exact.matmul_rounded(a, b, factor)
    return done if done is not None else _matmul_numpy(be, a, b, factor)


def _matmul_numpy(be, a, b, factor) -> tuple:
    xp = be.xp
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):      # inf and NaN rows: patched by the caller
        r = be.matmul(a64, b64)
        na = xp.sqrt(xp.sum(a64 * a64, axis=-1, keepdims=True))
        nb = xp.sqrt(xp.sum(b64 * b64, axis=-2, keepdims=True))
        e = (na * nb) * factor + xp.abs(r) * 2.0 ** -52
        lo, hi = (r - e).astype(np.float32), (r + e).astype(np.float32)
        out = xp.where(e == 0, np.float32(0), hi)           # e == 0: every product is 0, so is the sum
        flagged = (lo.view(np.uint32) != hi.view(np.uint32)) & xp.isfinite(e)
    finite = bool(np.isfinite(na).all() and np.isfinite(nb).all())
    if not flagged.any():
        return out, finite
    if flagged.sum() > 64:      # many: mostly entries with no nonzero product (sparse data), cheaply
        with np.errstate(invalid="ignore"):
            overlap = be.matmul((a != 0).astype(np.float32), (b != 0).astype(np.float32))   # counts < 2^24: exact
        out[flagged & (overlap == 0)] = 0
        flagged &= overlap != 0
    a_b, b_b = np.broadcast_to(a, out.shape[:-2] + a.shape[-2:]), np.broadcast_to(b, out.shape[:-2] + b.shape[-2:])
    where = np.nonzero(flagged)
    left = np.ones(len(where[0]), dtype=bool)
    if len(left) > 64:
        for start in range(0, len(left), OPEN_PART):
            part = tuple(w[start:start + OPEN_PART] for w in where)
            *batch, i, j = part
            rows = a_b[tuple(batch) + (i,)].astype(np.float64)                  # [n, K]
            cols = np.swapaxes(b_b, -1, -2)[tuple(batch) + (j,)].astype(np.float64)   # [n, K]
            sums, exact = _sums_without_error(rows * cols)
            with np.errstate(over="ignore"):                   # past float32's range: inf, as asked
                out[tuple(w[exact] for w in part)] = sums[exact].astype(np.float32)
            left[start:start + OPEN_PART] = ~exact
    for index in zip(*(w[left] for w in where)):
        *batch, i, j = index
        row, col = a_b[tuple(batch) + (i,)], b_b[tuple(batch) + (slice(None), j)]
        out[index] = _round_float32(row.astype(np.float64) * col.astype(np.float64))
    return out, finite


# More than 64 entries left open are first summed together (_sums_without_error), in parts of this many.
# Few arise on general data; operands of few significant bits (bfloat16 values, small integers) leave many
# whose exact sum lies on a float32 midpoint, a tie, each of which took a Python fsum (a bf16 training
# step of a small transformer: 40x the float32 step).
OPEN_PART = 4096


def _sums_without_error(products: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(s, exact) for products [n, K] (float64): exact[i] where s[i] is shown to be the exact sum of row
    i, and its float32 conversion (to nearest, ties to even) is then the answer. The row is added left
    to right, each addition's rounding error found exactly (Knuth's TwoSum); where some rounded, the
    errors are added the same way, then the two sums: where none of those additions rounded, s is exact
    (sums whose partial sums outgrow float64, as in cancelling rows, too)."""
    with np.errstate(invalid="ignore"):
        s, errors = _two_sums(np.asfortranarray(products))
        rounded = np.nonzero(errors.any(axis=1))[0]
        exact = np.ones(len(s), dtype=bool)
        if len(rounded):
            carry, second = _two_sums(errors[rounded])
            total = s[rounded] + carry
            z = total - s[rounded]
            exact[rounded] = ~second.any(axis=1) & (((s[rounded] - (total - z)) + (carry - z)) == 0)
            s[rounded] = total
    return s, exact & np.isfinite(s)


def _two_sums(terms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the rows of terms added left to right in float64, each addition's exact rounding error)."""
    total = terms[:, 0].copy()
    errors = np.zeros(terms.shape, order="F")
    for k in range(1, terms.shape[1]):
        p = terms[:, k]
        t = total + p
        z = t - total
        errors[:, k] = (total - (t - z)) + (p - z)
        total = t
    return total, errors


def _round_float32(products) -> np.float32:
    """The exact sum of float64 values, rounded once to float32. math.fsum gives s, the exact sum
    rounded to float64; rounding is monotonic, so float32(s) is the answer unless s lies exactly on
    a midpoint between two float32 numbers (float64 holds them all) while the exact sum does not:
    then the sign of (exact - s), from a second fsum, picks the side."""
    s = math.fsum(products)
    if s == 0:
        return np.float32(0)                                # exact zero (fsum is exact there)
    with np.errstate(over="ignore"):                         # past float32's range: inf, as asked
        f = np.float32(s)
    if float(f) == s:
        return f
    below, above = (f, np.nextafter(f, np.float32(np.inf))) if float(f) < s else \
        (np.nextafter(f, np.float32(-np.inf)), f)
    if np.isinf(f):                                          # past float32's largest: ties go to inf
        big = np.float32(np.finfo(np.float32).max)
        below, above = (big, f) if f > 0 else (f, -big)
    low, high = float(below), float(above)
    mid = low / 2 + high / 2 if math.isfinite(low) and math.isfinite(high) else \
        math.copysign(2.0 ** 128 - 2.0 ** 103, s)
    if s != mid:
        return f
    side = math.fsum(list(products) + [-s])
    return above if side > 0 else below if side < 0 else f
