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
  first: +0 where no product is nonzero, a compensated sum certified the same way (rounded_jit's
  docstring; the GPU runs it with a warp per entry), and only then the
  exact sum: an integer accumulator (numba, CUDA C), or here math.fsum with the midpoint check of
  `_round_float32`.

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
from ...backend.cpu import exact as exact_cpu
from ...backend.cpu import rounded as rounded_jit

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
    entries are left for the caller to patch; the GPU patches them itself (no host read) and says True."""
    factor = error_factor(a.shape[-1])
    kernels = getattr(be, "exact_kernels", None)
    if kernels is not None:
        return kernels.matmul_rounded(be, a, b, factor), True
    if a.ndim == 2 and b.ndim == 2 and rounded_jit.takes(a) and rounded_jit.takes(b) and rounded_jit.available():
        return _matmul_jit(be, a, b, factor)
    if _stack_takes(a, b) and rounded_jit.available():
        return _stack_jit(be, a, b, factor)
    return _matmul_numpy(be, a, b, factor)


def _stack_takes(a, b) -> bool:
    """Whether a stack (attention's scores and p @ v in a prefill) goes through the compiled loops
    one matrix at a time: each matrix contiguous (every one has the first one's strides), and few
    enough or large enough that a Python loop over them costs less than the NumPy passes save."""
    if a.ndim < 3 and b.ndim < 3:
        return False
    batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    count = math.prod(batch)
    first = (0,) * len(batch)
    return (count <= 256 or a.shape[-2] * a.shape[-1] * b.shape[-1] >= 1 << 16) and \
        rounded_jit.takes(np.broadcast_to(a, batch + a.shape[-2:])[first]) and \
        rounded_jit.takes(np.broadcast_to(b, batch + b.shape[-2:])[first])


def _stack_jit(be, a, b, factor) -> tuple:
    batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    a_b, b_b = np.broadcast_to(a, batch + a.shape[-2:]), np.broadcast_to(b, batch + b.shape[-2:])
    out = np.empty(batch + (a.shape[-2], b.shape[-1]), np.float32)
    finite = True
    for index in np.ndindex(*batch):
        out[index], ok = _matmul_jit(be, a_b[index], b_b[index], factor)
        finite = finite and ok
    return out, finite


def _matmul_jit(be, a, b, factor) -> tuple:
    m = a.shape[0]
    n = b.shape[1]
    a64, na = _cast(a, "rounded_left", rows=True)
    b64, nb = _cast(b, "rounded_right", rows=False)
    with np.errstate(invalid="ignore"):                     # inf and NaN rows: patched by the caller
        r = be.matmul(a64, b64, out=exact_cpu.scratch("rounded_product", (m, n), np.float64))
    out = np.empty((m, n), np.float32)
    rounded_jit.certify(r, na, nb, factor, a, b, out)
    # inf and NaN reach the norms' sums (float64 norms of float32 rows cannot overflow): one test
    return out, math.isfinite(float(na.sum()) + float(nb.sum()))


def _cast(x, role: str, rows: bool):
    """x in float64 (x's layout, in scratch memory) and the 2-norms of its rows or columns."""
    order = "F" if x.flags.f_contiguous and not x.flags.c_contiguous else "C"
    x64 = exact_cpu.scratch(role, x.shape, np.float64, order)
    norms = np.empty(x.shape[0] if rows else x.shape[1], np.float64)
    rounded_jit.cast_norms(x, rows, x64, norms)
    return x64, norms


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
    for index in zip(*np.nonzero(flagged)):
        *batch, i, j = index
        row, col = a_b[tuple(batch) + (i,)], b_b[tuple(batch) + (slice(None), j)]
        out[index] = _round_float32(row.astype(np.float64) * col.astype(np.float64))
    return out, finite


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
