"""exact_rounded's CPU loops (numba, the optional `loom[cpu]` extra): the float64 copies of the
operands with their row or column 2-norms (`cast_norms`), and the certification of the float64 GEMM's
result, with three stages for the entries it cannot certify, cheapest first:

1. no product is nonzero (bit masks of the nonzero elements of the row and the column share no bit:
   sparse data, ReLU gradients; the masks are built only when many entries are uncertified): the
   sum is exactly 0, so +0;
2. a compensated sum (`_dot2`): every addition's rounding error is recovered exactly (TwoSum) and
   the errors are summed in float64, so the result errs by at most about (K u)^2 sum |a_k b_k|
   (Ogita, Rump and Oishi, Accurate sum and dot product, SIAM J. Sci. Comput. 26, 2005); the same
   certification as the GEMM's decides it;
3. what the compensated sum cannot certify either (results on or next to a float32 midpoint, or
   cancelling to zero) is summed exactly.

The exact sum is an integer accumulator (`_exact_dot`): each product of two float32 numbers is a
53-bit integer times 2^(pos - 350), 0 <= pos <= 553, added as three 32-bit pieces to int64 limbs
of 32 bits each (headroom for 2^31 additions), so no sum is rounded; `_round_limbs` then rounds
once to float32, to nearest with ties to even, subnormals and overflow included. The CUDA kernel
(loom/backend/cuda/exact.py, ROUNDED) is the same algorithm, written in CUDA C.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from . import exact
from . import jit as cpu_jit

if TYPE_CHECKING:
    from .. import Backend

_LOOPS = ("_row_masks", "_col_masks", "_bit_length", "_round_limbs", "_exact_dot",
          "_dot2", "_uncertain", "_certified", "_disjoint", "_certify", "_settle")
# doubtful entries: from here on (and from half as many as the product's rows and columns), certify
# builds the nonzero masks. The masks read every element once (about 5 ns each, strided), a settle
# reads its row and column (about 11 ns a product): at K = 8192, 268 doubtful entries of a 512 x 512
# weight gradient settled in 25 ms, where the masks took 40.
_MASKED_FROM = 256
LIMBS = 21              # bits 0 .. 671 of 2^350 |sum|: products reach bit 606, 2^12 of them bit 618
_OFFSET = 297           # pos = frexp exponent + 297 (= the float64 exponent field - 725)
_MASK = 0xFFFFFFFF


def available() -> bool:
    # the casts' norms may be summed in any order (exact_rounded.error_factor allows for it), so
    # LLVM may vectorize their sums of squares
    return cpu_jit.compile_module(globals(), plain=_LOOPS, reassociated=("_cast_rows", "_col_norms"))


def takes(x: np.ndarray) -> bool:
    """Whether these loops take x: 2-D, non-empty, float32, C- or F-contiguous."""
    return x.ndim == 2 and x.size > 0 and x.dtype == np.float32 and (x.flags.c_contiguous or x.flags.f_contiguous)


def cast_norms(x: np.ndarray, rows: bool, out: np.ndarray, norms: np.ndarray) -> None:
    """out[...] = float64(x) (out in x's layout), norms = the 2-norms of x's rows or columns."""
    if not x.flags.c_contiguous:        # F-ordered: its transpose is C-ordered, rows and columns swapped
        x, out, rows = x.T, out.T, not rows
    if rows:
        _cast_rows(x, out, norms)
    else:
        # two passes beat one here: NumPy's cast and a read-only loop over float32 (784 x 256: 82 + 28
        # us against 150 for the fused loop, whose stores and column sums do not vectorize together)
        np.copyto(out, x)
        _col_norms(x, norms)


def certify(r: np.ndarray, na: np.ndarray, nb: np.ndarray, factor: float, a: np.ndarray, b: np.ndarray,
            out: np.ndarray) -> None:
    """out = every entry of r (the float64 GEMM of a and b) rounded to float32 where the error bound
    certifies it (exact_rounded's docstring), by the module docstring's stages otherwise."""
    rows = np.zeros(r.shape[0], np.uint8)
    doubtful = _certify(r, na, nb, factor, out, rows)
    if not doubtful:
        return
    if doubtful > max(_MASKED_FROM, sum(r.shape) // 2):    # many (sparse data): the masks pay for themselves
        ma, mb = _masks(a, rows=True), _masks(b, rows=False)
    else:
        ma = mb = np.zeros((0, 0), np.uint64)
    _settle(r, na, nb, factor, a, b, ma, mb, out, rows, np.zeros(LIMBS, np.int64))


def matmul(be: Backend, a: np.ndarray, b: np.ndarray, factor: float) -> tuple[np.ndarray, bool] | None:
    """loom.kernels.exact.rounded.matmul's (product, finite) for float32 a [..., M, K], b [..., K, N]:
    the float64 GEMM and `certify`, for matrices and for stacks of them one matrix at a time. None
    where the loops do not take the operands (numba missing, an unusual layout)."""
    if a.ndim == 2 and b.ndim == 2 and takes(a) and takes(b) and available():
        return _matmul_2d(be, a, b, factor)
    if _stack_takes(a, b) and available():
        return _stack(be, a, b, factor)
    return None


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
        takes(np.broadcast_to(a, batch + a.shape[-2:])[first]) and \
        takes(np.broadcast_to(b, batch + b.shape[-2:])[first])


def _stack(be, a, b, factor) -> tuple:
    batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    a_b, b_b = np.broadcast_to(a, batch + a.shape[-2:]), np.broadcast_to(b, batch + b.shape[-2:])
    out = np.empty(batch + (a.shape[-2], b.shape[-1]), np.float32)
    finite = True
    for index in np.ndindex(*batch):
        out[index], ok = _matmul_2d(be, a_b[index], b_b[index], factor)
        finite = finite and ok
    return out, finite


def _matmul_2d(be, a, b, factor) -> tuple:
    m = a.shape[0]
    n = b.shape[1]
    a64, na = _cast(a, "rounded_left", rows=True)
    b64, nb = _cast(b, "rounded_right", rows=False)
    with np.errstate(invalid="ignore"):                     # inf and NaN rows: patched by the caller
        r = be.matmul(a64, b64, out=exact.scratch("rounded_product", (m, n), np.float64))
    out = np.empty((m, n), np.float32)
    certify(r, na, nb, factor, a, b, out)
    # inf and NaN reach the norms' sums (float64 norms of float32 rows cannot overflow): one test
    return out, math.isfinite(float(na.sum()) + float(nb.sum()))


def _cast(x, role: str, rows: bool):
    """x in float64 (x's layout, in scratch memory) and the 2-norms of its rows or columns."""
    order = "F" if x.flags.f_contiguous and not x.flags.c_contiguous else "C"
    x64 = exact.scratch(role, x.shape, np.float64, order)
    norms = np.empty(x.shape[0] if rows else x.shape[1], np.float64)
    cast_norms(x, rows, x64, norms)
    return x64, norms


def _masks(x, rows: bool):
    """[rows or columns of x, ceil(K / 64)] uint64: bit k % 64 of word k // 64 set where element k of
    the row (column) is nonzero."""
    count, k = (x.shape[0], x.shape[1]) if rows else (x.shape[1], x.shape[0])
    masks = np.zeros((count, (k + 63) // 64), np.uint64)
    if x.flags.c_contiguous == rows:
        _row_masks(x if rows else x.T, masks)
    else:
        _col_masks(x.T if rows else x, masks)
    return masks


def _row_masks(x, masks):
    for i in range(x.shape[0]):
        for k in range(x.shape[1]):
            if x[i, k] != 0:
                masks[i, k >> 6] |= np.uint64(1) << np.uint64(k & 63)


def _col_masks(x, masks):
    for k in range(x.shape[0]):
        for j in range(x.shape[1]):
            if x[k, j] != 0:
                masks[j, k >> 6] |= np.uint64(1) << np.uint64(k & 63)


def _cast_rows(x, out, norms):
    for i in range(x.shape[0]):
        s = 0.0
        for k in range(x.shape[1]):
            v = np.float64(x[i, k])
            out[i, k] = v
            s += v * v
        norms[i] = math.sqrt(s)


def _col_norms(x, norms):
    norms[:] = 0.0
    for i in range(x.shape[0]):
        for k in range(x.shape[1]):
            v = np.float64(x[i, k])
            norms[k] += v * v
    for k in range(x.shape[1]):
        norms[k] = math.sqrt(norms[k])


def _uncertain(x, e):
    """1 where float32(x - e) and float32(x + e) differ in their bits (-0 and +0 differ), so the
    exact value within e of x may round to either; 0 where they agree, and for an infinite or NaN
    bound (its row or column holds inf or NaN: the caller patches it). Branch-free, so the loops
    that inline it vectorize (bits and `e < inf` instead of values, signs and isfinite: faster over
    256 x 256 entries)."""
    return np.int64(np.float32(x - e).view(np.int32) != np.float32(x + e).view(np.int32)) & np.int64(e < np.inf)


def _certified(x, e):
    """(value, certain): float32(x + e), certain unless _uncertain; e == 0 means every product is 0:
    +0, certain."""
    if e == 0.0:
        return np.float32(0.0), True
    return np.float32(x + e), _uncertain(x, e) == 0


def _disjoint(ma, mb, i, j):
    for w in range(ma.shape[1]):
        if ma[i, w] & mb[j, w]:
            return False
    return True


def _certify(r, na, nb, factor, out, rows):
    """The first stage over every entry; returns how many it could not certify, and marks their rows."""
    m, n = r.shape
    doubtful = 0
    for i in range(m):
        scale = na[i] * factor
        row = 0
        for j in range(n):      # written out, with _uncertain branch-free: LLVM vectorizes it (4x faster)
            x = r[i, j]
            e = scale * nb[j] + abs(x) * 2.0 ** -52
            out[i, j] = np.float32(x + e) if e != 0.0 else np.float32(0.0)
            row += _uncertain(x, e)
        rows[i] = row != 0
        doubtful += row
    return doubtful


def _settle(r, na, nb, factor, a, b, ma, mb, out, rows, limbs):
    """The later stages for the entries _certify could not certify (masks empty: not built)."""
    m, n = r.shape
    for i in range(m):
        if not rows[i]:
            continue
        scale = na[i] * factor
        for j in range(n):      # _certify's test again (most of a marked row certifies)
            x = r[i, j]
            if not _uncertain(x, scale * nb[j] + abs(x) * 2.0 ** -52):
                continue
            if ma.shape[0] and _disjoint(ma, mb, i, j):
                out[i, j] = np.float32(0.0)
                continue
            v, certain = _dot2(a, b, i, j)
            out[i, j] = v if certain else _exact_dot(a, b, i, j, limbs)


def _dot2(a, b, i, j):
    """sum_q a[i, q] b[q, j] by a compensated sum, rounded to float32: (value, certain), certain where
    its error bound certifies it (_certified). Each product is exact in float64; TwoSum splits each addition into the rounded
    sum s and its exact error, and c adds up the errors (K of them, each below u sum |p|), so
    |exact - (s + c)| <= gamma_K K u (1 + gamma_K) sum |p| <= (K + 2)^2 u^2 (1 + 2^-20) t, t the
    computed sum |p|; f = s + c adds u |f|, and 2^-51 |f| covers that and f +- e's own rounding
    (2^-52, as the first stage has, would leave no room for the latter here: this e's slack is tiny)."""
    s = 0.0
    c = 0.0
    t = 0.0
    for q in range(a.shape[1]):
        p = np.float64(a[i, q]) * np.float64(b[q, j])
        total = s + p
        back = total - s
        c += (s - (total - back)) + (p - back)
        s = total
        t += abs(p)
    f = s + c
    k = a.shape[1] + 2.0
    return _certified(f, k * k * 2.0 ** -106 * (1.0 + 2.0 ** -20) * t + abs(f) * 2.0 ** -51)


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
