"""Deterministic float32 GEMM, rounded correctly: every entry of a @ b is the exact dot product of
its row and column, rounded once to float32 (to nearest, ties to even). One right answer exists, so
any BLAS, thread split, GPU kernel or summation order that finds it gives the same bits.

How it is found cheaply (for the products `span` takes; exact.py uses its slice scheme for the rest):
- the operands are converted to float64, where each product of two float32 numbers is exact, and
  multiplied by any float64 GEMM: r = the dot product with rounding errors from the additions only;
- in any order, K additions err by at most gamma_K sum_k |a_k b_k| <= gamma_K ||a||_2 ||b||_2
  (Cauchy-Schwarz), gamma_K = K u / (1 - K u), u = 2^-53 (Higham, Accuracy and Stability of
  Numerical Algorithms, 2nd ed., section 3.1); with the norms' own rounding and r +- e's allowed for,
  e = (K + 2) u (1 + 2^-20) ||a|| ||b|| + 2^-52 |r| bounds |r - exact| in the floats r - e, r + e;
- K > MAX_K: the sum is split into P pieces of at most C products, each piece a float64 GEMM (one
  batched GEMM), and the pieces' results are added up: each piece errs by gamma_C, their sum by
  gamma_P, together by at most gamma_(C + P), so C + P stands for K in e (P ~ K / 512: 528 for
  K = 8192, a transformer's weight gradient, against 8192 for one GEMM);
- rounding to nearest is monotonic, so where float32(r - e) and float32(r + e) have the same bits
  the exact value rounds to them too: that is the answer;
- otherwise (about 0.06% of entries at K = 784 on random data; far more where no product is nonzero
  but the norms are, as in the weight gradients of sparse inputs) the entry takes cheaper stages
  first: +0 where no product is nonzero, a compensated sum certified the same way (rounded_jit's
  docstring; the GPU runs it with a warp per entry, a block where K > MAX_K), and only then the
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

from . import exact_cpu, rounded_jit

MAX_K = 1 << 11         # uncertified entries grow as K^1.5 (random data): 0.05% at K = 784, 0.2% at 2048
PIECE = 512             # products per piece where K > MAX_K
# Longer sums take the slice scheme: an entry the bound leaves open is summed along its whole row
# and column (strided loads, latency-bound), and the sparse gradients of a convolution leave many
# open (3.6% of a [64, 288] weight gradient at K = 50176): on the H100 those settles cost the
# convnet's train step 0.49 ms where the slices took 0.24.
MAX_PIECED_K = 1 << 15
# the pieces' float64 results held at once, in entries (256 MiB); products that would need more
# pieces than this allows to keep C + P <= MAX_K take the slice scheme. (Summing the pieces in
# groups instead, each group's sum added to a running total, was measured on the H100: 4096^3 4.82
# ms against the slices' 4.84, 8192^3 0.42x SGEMM against 0.60x; the extra passes over the output
# cost what the halved GEMM saves.)
MAX_PIECE_ENTRIES = 1 << 25


def span(k: int, entries: int) -> tuple | None:
    """(C, P): the products each piece sums and the number of pieces, for K-long sums and `entries`
    entries (every batch's): (K, 1) where K <= MAX_K; None where K > MAX_PIECED_K or no split keeps
    C + P <= MAX_K within MAX_PIECE_ENTRIES (exact.py then takes the slice scheme). Shapes alone
    decide it, so every backend takes the same scheme and gives the same bits."""
    if k <= MAX_K:
        return k, 1
    if k > MAX_PIECED_K:
        return None
    pieces = min(-(-k // PIECE), MAX_PIECE_ENTRIES // max(entries, 1))
    if pieces < 2:
        return None
    size = -(-k // pieces)
    pieces = -(-k // size)
    return (size, pieces) if size + pieces <= MAX_K else None


def bound_length(split: tuple) -> int:
    """The K that error_factor takes for a product summed as `split` (span's answer)."""
    size, pieces = split
    return size if pieces == 1 else size + pieces


def float64_product(be, a64, b64, split: tuple, out=None):
    """a64 @ b64 (float64, [..., M, K] and [..., K, N], both matrices or both stacks: exact.py folds
    a stack against a matrix) summed as `split` says: one GEMM, or the pieces: a batched GEMM over
    views of the operands, their results added up, and the last, shorter piece's added to that.
    `out` receives the result."""
    size, pieces = split
    if pieces == 1:
        return be.matmul(a64, b64, out=out)
    return _pieces_sum(be, a64, b64, size, out)


def _pieces_sum(be, a64, b64, size: int, out=None):
    """The sum of the products of a64's and b64's pieces of `size` along K (the last one shorter)."""
    k = a64.shape[-1]
    full = k // size
    xp = be.xp
    a_pieces = xp.moveaxis(a64[..., :full * size].reshape(a64.shape[:-1] + (full, size)), -2, -3)
    b_pieces = b64[..., :full * size, :].reshape(b64.shape[:-2] + (full, size, b64.shape[-1]))
    r = xp.sum(be.matmul(a_pieces, b_pieces), axis=-3, out=out)
    if full * size < k:
        r += be.matmul(a64[..., full * size:], b64[..., full * size:, :])
    return r


def error_factor(k: int) -> float:
    """gamma_K, inflated for the rounding of the norms and their product (relative error below
    (K + 4) u, well inside 2^-20 for K <= 2^30): e = error_factor(K) ||a|| ||b|| + 2^-52 |r|."""
    return (k + 2) * 2.0 ** -53 * (1.0 + 2.0 ** -20)


def matmul(be, a, b, split: tuple) -> tuple:
    """(product, finite) for float32 a [..., M, K] and b [..., K, N] summed as `split` (span's answer
    for their shapes): the float32 product, each entry the exact dot product rounded once. Where
    `finite` is False a row or column holds inf or NaN, and its entries are left for the caller to
    patch; the GPU patches them itself (no host read) and says True."""
    factor = error_factor(bound_length(split))
    kernels = getattr(be, "exact_kernels", None)
    if kernels is not None:
        return kernels.matmul_rounded(be, a, b, factor, lambda x, y: float64_product(be, x, y, split)), True
    if a.ndim == 2 and b.ndim == 2 and rounded_jit.takes(a) and rounded_jit.takes(b) and rounded_jit.available():
        return _matmul_jit(be, a, b, split, factor)
    return _matmul_numpy(be, a, b, split, factor)


def entries(shape_a: tuple, shape_b: tuple) -> int:
    """How many entries a @ b has, over its broadcast batch axes (a, b at least 2-D)."""
    if len(shape_a) == len(shape_b) == 2:
        return shape_a[0] * shape_b[1]
    return math.prod(np.broadcast_shapes(shape_a[:-2], shape_b[:-2])) * shape_a[-2] * shape_b[-1]


def _matmul_jit(be, a, b, split, factor) -> tuple:
    m = a.shape[0]
    n = b.shape[1]
    a64, na = _cast(a, "rounded_left", rows=True)
    b64, nb = _cast(b, "rounded_right", rows=False)
    with np.errstate(invalid="ignore"):                     # inf and NaN rows: patched by the caller
        r = float64_product(be, a64, b64, split, out=exact_cpu.scratch("rounded_product", (m, n), np.float64))
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


def _matmul_numpy(be, a, b, split, factor) -> tuple:
    xp = be.xp
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):      # inf and NaN rows: patched by the caller
        r = float64_product(be, a64, b64, split)
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
