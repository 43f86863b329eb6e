"""Exact, order-independent GEMM and sums: deterministic mode's reductions.

A float sum's bits depend on the order of its additions, and every BLAS, thread split and GPU
kernel picks its own order. Here every reduction is made exact instead, so order cannot matter:

- each row (of a GEMM's left operand, or of a sum) is scaled by a power of two to integers of at
  most `bits` bits (one rounding per element, which depends on that element and its row's
  maximum only);
- the integers are accumulated in float64, where every partial sum is an integer below 2^53 and so
  exact, whatever order a BLAS or a GPU adds them in;
- the exact total is scaled back and rounded once to the result's type.

Which scheme a product or sum takes is decided by exact_dispatch's table from the dtype and the
reduced length alone, so a row's bits never depend on its batch. float32 (and narrower) GEMMs with
K <= 2048 are rounded correctly instead: each entry is the exact dot product rounded once
(exact_rounded.py), one float64 GEMM's work.

Longer float32 GEMMs (K > 2048) split the left operand
into two integer slices (hi and lo, `29 - log2 K` bits each for float32 inputs) and keep the right
operand at 24 bits (a float32 mantissa) relative to its column maximum:
2 float64 GEMMs' worth of work, done as one GEMM on the slices stacked along M (on the GPU, large
ones find the same integers with nine int8 GEMMs instead: loom/backend/cuda/exact_int8.py). Measured error
against a float64 reference is at most about NumPy's float32 GEMM error on random and on
wide-dynamic-range inputs (tests/kernels/test_exact.py). float64 inputs use three slices on each
side (the six pairs whose product is not negligible, 2^-63 relative).

Non-finite inputs: rows or columns holding inf or NaN get IEEE's answer, computed from a product of
the operands' signs and special values (0 * inf = NaN, inf - inf = NaN, otherwise the infinity),
which no summation order can change.
"""
from __future__ import annotations

import math

import numpy as np

from ... import backend, dtypes
from ...backend import Array
from . import dispatch as exact_dispatch
from . import rounded as exact_rounded

_F32_RIGHT_BITS = 24                      # a float32 mantissa


def matmul(a: Array, b: Array, out: Array | None = None) -> Array:
    """a @ b (NumPy broadcasting over leading axes) with exactly accumulated sums."""
    be = backend.of(a)
    dtype = np.result_type(a.dtype, b.dtype)
    if not _is_float(dtype) or a.ndim == 0 or b.ndim == 0 or a.size == 0 or b.size == 0 \
            or a.shape[-1] != b.shape[-2 if b.ndim > 1 else 0]:
        # integer products are exact already; empty sums are exactly 0; the backend names bad shapes
        return be.matmul(a, b, out=out)
    result = _matmul_exact(be, a, b, dtype)
    if out is not None:
        out[...] = result
        return out
    return result


def _matmul_exact(be, a, b, dtype):
    vector_left, vector_right = a.ndim == 1, b.ndim == 1
    a2 = a[None, :] if vector_left else a
    b2 = b[:, None] if vector_right else b
    if (a2.ndim > 2) != (b2.ndim > 2):
        return _unvector(_folded(be, a2, b2, dtype), vector_left, vector_right)
    if exact_dispatch.matmul_scheme(dtype, a2.shape[-1]) == exact_dispatch.ROUNDED:
        # float32 and narrower: the product rounded correctly (exact_rounded), then to dtype
        result, finite = exact_rounded.matmul(be, a2.astype(np.float32, copy=False),
                                              b2.astype(np.float32, copy=False))
        if not finite:
            with np.errstate(invalid="ignore"):
                result = _with_specials(be, a2, b2, result)
        return _unvector(result.astype(dtype, copy=False), vector_left, vector_right)
    return _unvector(_matmul_sliced(be, a2, b2, dtype), vector_left, vector_right)


def _folded(be, a2, b2, dtype):
    """A stack against a matrix as one matrix product: the batch folded into M ([..., M, K] @ [K, N])
    or into N ([M, K] @ [..., K, N]). Every scheme makes each entry from its own row and column, so
    the bits are the stack's; the matrix paths (the CPU's compiled loops, the pieces' and chunks'
    views of the operands) then take it, and nothing is copied once per batch entry."""
    xp = be.xp
    k, m, n = a2.shape[-1], a2.shape[-2], b2.shape[-1]
    if a2.ndim > 2:
        return _matmul_exact(be, a2.reshape(-1, k), b2, dtype).reshape(a2.shape[:-1] + (n,))
    result = _matmul_exact(be, a2, xp.moveaxis(b2, -2, 0).reshape(k, -1), dtype)
    return xp.ascontiguousarray(xp.moveaxis(result.reshape((m,) + b2.shape[:-2] + (n,)), 0, -2))


def _matmul_sliced(be, a2, b2, dtype):
    """The slice scheme (the module's docstring) for matrices or stacks of them: float64 operands,
    and float32 ones with K > 2048 (exact_dispatch)."""
    xp = be.xp
    if a2.shape[-1] <= 1 << exact_dispatch.CHUNK_BITS:
        # the whole product at once (the CPU's compiled loops: finite float32 values), the same bits
        result = be.exact.matmul_sliced(a2, b2, narrow_bits(a2.shape[-1]))
        if result is not None:
            return result
    maxima = be.exact.gemm_maxima(a2, b2)                       # (the GPU: one memset for both)
    if maxima is not None:
        amax, bmax = maxima
    else:
        amax = _absmax(be, a2, -1)                                # [..., M, 1]
        bmax = _absmax(be, b2, -2)                                # [..., 1, N]
    wide = np.dtype(dtype).itemsize > 4
    # Rows and columns holding inf or NaN come out of the slices as NaN; every one of their entries
    # is then overwritten with IEEE's special value, and no other entry depends on them.
    guard = be.exact.special_guard(a2, b2)
    finite = guard is not None or not be.may_be_true(~(xp.all(xp.isfinite(amax)) & xp.all(xp.isfinite(bmax))))
    with np.errstate(invalid="ignore"):
        if not wide:                # the GPU's guard (float32 only) runs inside: no host read, no extra product
            result = _matmul_float32(be, a2, b2, amax, bmax, dtype, guard)
        else:
            result = _matmul_general(be, a2, b2, amax, bmax, wide, dtype)
        if not finite:              # (always while recording a graph: it cannot branch on data)
            result = _with_specials(be, a2, b2, result)
    return result


def _with_specials(be, a, b, result):
    """result with IEEE's special value wherever a row of a or a column of b holding inf or NaN makes
    the product's entry one (_special_values); every other entry as it was."""
    special = _special_values(be, a, b).astype(result.dtype)
    return be.xp.where(be.xp.isfinite(special), result, special)


def _unvector(result, vector_left: bool, vector_right: bool):
    if vector_left:
        result = result[..., 0, :]
    if vector_right:
        result = result[..., 0]
    return result


def _absmax(be, x, axis):
    """max |x| along axis (kept; NaN where one is NaN): two reductions and no |x| temporary, or
    the backend's own kernel (the GPU: one pass, split over warps and combined with atomics; the
    CPU: integer reductions of the bit patterns)."""
    result = be.exact.absmax(x, axis)
    if result is not None:
        return result
    xp = be.xp
    return xp.maximum(xp.max(x, axis=axis, keepdims=True), -xp.min(x, axis=axis, keepdims=True))


def _matmul_float32(be, a, b, amax, bmax, dtype, guard=None):
    """float32 (and narrower) operands: the narrow scheme, over fixed-order chunks of 2^14 along K when
    K is longer (each chunk's product kept in float64, the chunks added in order, one rounding to
    dtype at the end). The maxima, and so the slices' scales, are the whole rows' and columns', and
    every chunk uses the bits of the longest one. `guard`: the GPU's special-value kernels, applied
    to the result (inside the recombination when there is one chunk)."""
    step = 1 << exact_dispatch.CHUNK_BITS
    a, b = a.astype(np.float32, copy=False), b.astype(np.float32, copy=False)
    k = min(a.shape[-1], step)
    if a.shape[-1] <= step:
        return _matmul_narrow(be, a, b, amax, bmax, k, dtype, guard is not None)
    # the GPU: every chunk at once where the memory allows, the same bits
    result = be.exact.matmul_narrow_chunks(a, b, amax, bmax, narrow_bits(k), dtype, step)
    if result is not None:
        if guard is not None:
            guard.patch_specials(a, b, amax, bmax, result)
        return result
    total = None
    for start in range(0, a.shape[-1], step):
        part = _matmul_narrow(be, a[..., start:start + step], b[..., start:start + step, :], amax, bmax, k,
                              np.float64)
        if total is None:
            total = part
        else:
            total += part
    result = total.astype(dtype)
    if guard is not None:
        guard.patch_specials(a, b, amax, bmax, result)
    return result


def narrow_bits(k: int) -> tuple:
    """(bits_a, bits_b) of the 2 x 1 slice scheme for sums of at most k products: a's rows become
    integers below 2^bits_a (two slices), b's columns below 2^bits_b, so every partial sum of k
    products of slices stays an integer below 2^53."""
    bits_b = min(_F32_RIGHT_BITS, 53 - _log2_ceil(k) - 12)
    return 53 - _log2_ceil(k) - bits_b, bits_b


def _matmul_narrow(be, a, b, amax, bmax, k: int, dtype, guarded: bool = False):
    """float32 operands, K <= k <= 2^14, the row maxima of a and column maxima of b: the 2 x 1 slice
    scheme, with _narrow_scales' shifts and scales. The reference arithmetic, which both backends'
    kernels reproduce bit for bit:
        s = ldexp(a, shift_a) in float32 (|s| < 2^bits_a), hi = rint(s), lo = rint((s - hi) 2^bits_a),
        b_int = rint(ldexp(b, shift_b)), [g_hi; g_lo] = [hi; lo] @ b_int (one float64 GEMM: exact),
        out = ((g_lo 2^-bits_a + g_hi) * row_scale) * col_scale in float64, then rounded to dtype,
    where the sum is the one rounding in float64 (scaling by a power of two is exact there).
    Each pass over the operands costs a sizeable share of the GEMM, so both backends fuse or
    trim them: fused kernels on the GPU, float32 passes on the CPU (loom/backend/cpu/exact.py), each
    working the scales out from the maxima itself. `guarded` (operands with a special_guard):
    special values patched in as well."""
    return be.exact.matmul_narrow(a, b, amax, bmax, narrow_bits(k), dtype, guarded)


def _matmul_general(be, a, b, amax, bmax, wide, dtype):
    """float64 operands: the slices of _matmul_chunk over fixed-order chunks of K."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    k = a64.shape[-1]
    total = None
    step = 1 << exact_dispatch.CHUNK_BITS
    for start in range(0, k, step):                     # fixed chunk order: deterministic
        part = _matmul_chunk(be, a64[..., start:start + step], b64[..., start:start + step, :],
                             amax.astype(np.float64), bmax.astype(np.float64), wide)
        total = part if total is None else total + part
    return total.astype(dtype)


def _matmul_chunk(be, a64, b64, amax, bmax, wide: bool):
    """sum_k a[.., m, k] b[.., k, n] exactly (in float64, scaled back), for one chunk of K."""
    xp = be.xp
    budget = 53 - _log2_ceil(a64.shape[-1])             # bits of |a_int| * |b_int| summed K times
    if wide:                                            # float64: 3 x 3 slices of budget/2 bits
        bits_a = bits_b = budget // 2
        n_a, n_b = 3, 3
    else:                                               # float32 and narrower: 2 x 1 slices
        bits_b = min(_F32_RIGHT_BITS, budget - 12)
        bits_a = budget - bits_b
        n_a, n_b = 2, 1
    ea, a_slices = _slices(xp, a64, amax, bits_a, n_a)
    eb, b_slices = _slices(xp, b64, bmax, bits_b, n_b)
    m = a64.shape[-2]
    terms = {}
    for j, bj in enumerate(b_slices):                   # the pairs (i, j) with i + j < max(n_a, n_b)
        keep = min(n_a, max(n_a, n_b) - j)
        stacked = xp.concatenate(a_slices[:keep], axis=-2) if keep > 1 else a_slices[0]
        g = be.matmul(stacked, bj)                      # exact: integer partial sums below 2^53
        for i in range(keep):
            terms[(i, j)] = g[..., i * m:(i + 1) * m, :]
    acc = None
    for (i, j) in sorted(terms, key=lambda t: (-(t[0] * bits_a + t[1] * bits_b), t)):   # smallest first
        term = xp.ldexp(terms[(i, j)], -(i * bits_a + j * bits_b))
        acc = term if acc is None else acc + term
    shift = (ea - bits_a) + (eb - bits_b)               # [..., M, 1] + [..., 1, N]
    return xp.ldexp(acc, shift.astype(np.int32))


def _slices(xp, x64, xmax, bits: int, count: int):
    """(e, [s_0, s_1, ...]): x = 2^(e - bits) sum_i s_i 2^(-i bits) + a remainder below the last
    slice, each s_i an integer-valued float64 with |s_i| <= 2^bits; e broadcasts like xmax."""
    _, e = xp.frexp(xmax)                               # xmax < 2^e (e = 0 for an all-zero row)
    scaled = xp.ldexp(x64, (bits - e).astype(np.int32))    # exact: a power-of-two scaling
    out = []
    for i in range(count):
        whole = xp.rint(scaled)
        out.append(whole)
        if i + 1 < count:
            scaled = xp.ldexp(scaled - whole, bits)     # the remainder, exactly, shifted up
    return e, out


def _special_values(be, a, b):
    """The IEEE result where a row or column holds inf or NaN (finite elsewhere): a product of
    sign(x) (0 for zeros) with infinities and NaNs kept, so 0 * inf = NaN and inf + -inf = NaN as in
    the real product, and no finite sum can overflow."""
    xp = be.xp

    def marks(x):
        x = x.astype(np.float32)
        return xp.where(xp.isfinite(x), xp.sign(x), x)
    with np.errstate(invalid="ignore"):                 # the NaNs asked for
        return be.matmul(marks(a), marks(b)).astype(np.float64)


def sum(x: Array, axis: int | tuple[int, ...] | None = None,  # noqa: A001 - numpy's name on purpose
        keepdims: bool = False, padded: bool = False) -> Array:
    """x summed over `axis` exactly, rounded once to x's dtype (float inputs; others as NumPy).

    padded: the summed axis holds padding (masked entries, exactly 0), so each sum takes the bits of
    the count of its nonzero entries instead of the axis length: the same bits however much padding
    surrounds the real entries (a sequence alone or padded in a batch)."""
    be = backend.of(x)
    xp = be.xp
    if not _is_float(x.dtype):
        return be.sum(x, axis=axis, keepdims=keepdims)
    axes = tuple(range(x.ndim)) if axis is None else tuple(
        a % x.ndim for a in (axis if isinstance(axis, tuple) else (axis,)))
    n = math.prod(x.shape[a] for a in axes)
    if n == 0 or x.size == 0:
        return xp.sum(x, axis=axes, keepdims=keepdims)
    bits = 53 - _log2_ceil(n)
    if padded:          # bits per sum, from its nonzero terms: the float64 passes take an array of them
        nonzero = (x != 0).sum(axis=axes, keepdims=True)          # (CuPy's count_nonzero keeps no dims)
        total = _sum_general(be, x, axes, 53 - _log2_ceil_array(xp, nonzero))
    else:
        # the backend's kernels (the GPU: five launches, two of them memsets), the same arithmetic
        total = be.exact.sum_float32(x, axes, bits) if x.dtype == np.float32 else None
        if total is None:
            total = _sum_general(be, x, axes, bits)
    if not keepdims:
        total = total.reshape(tuple(d for i, d in enumerate(x.shape) if i not in axes))
    return total.astype(x.dtype, copy=False)


def _sum_general(be, x, axes: tuple, bits):
    """exact.sum's arithmetic in float64 (one slice per element, two for float64 elements), with
    infinities and NaNs: the total over axes (kept), in float64. `bits`: an int, or an int array of
    the kept shape (each sum its own)."""
    xp = be.xp
    x64 = x.astype(np.float64)
    finite = xp.isfinite(x64)
    top = xp.max(xp.abs(x64), axis=axes, keepdims=True)
    special = None
    if be.may_be_true(~xp.all(xp.isfinite(top))):
        # only infinities and NaNs: their sum is the same in every order (finite overflow excluded)
        with np.errstate(invalid="ignore"):             # inf - inf: the NaN asked for
            special = xp.sum(xp.where(finite, 0.0, x64), axis=axes, keepdims=True)
        x64 = xp.where(finite, x64, 0.0)
        top = xp.max(xp.abs(x64), axis=axes, keepdims=True)
    e, parts = _slices(xp, x64, top, bits, 1 if x.dtype.itemsize <= 4 else 2)
    total = xp.sum(parts[0], axis=axes, keepdims=True)
    if len(parts) == 2:
        total = total + xp.ldexp(xp.sum(parts[1], axis=axes, keepdims=True), -bits)
    total = xp.ldexp(total, (e - bits).astype(np.int32))
    if special is not None:
        total = xp.where(xp.isfinite(special), total, special)
    return total


def index_add(dst: Array, ids: Array, rows: Array) -> None:
    """dst[ids[i]] += rows[i] for every i (ids may repeat), each row of dst getting its exact sum,
    rounded once, then one addition: no atomic or loop order can change the bits. Each column of
    rows is scaled by its own power of two (from its largest magnitude over all i)."""
    be = backend.of(rows)
    xp = be.xp
    if rows.shape[0] == 0:
        return
    x64 = rows.astype(np.float64)
    finite = xp.isfinite(x64)
    top = xp.max(xp.abs(xp.where(finite, x64, 0.0)), axis=0, keepdims=True)
    bits = 53 - _log2_ceil(rows.shape[0])
    e, parts = _slices(xp, xp.where(finite, x64, 0.0), top, bits, 1 if rows.dtype.itemsize <= 4 else 2)
    total = xp.zeros(dst.shape, dtype=np.float64)
    xp.add.at(total, ids, parts[0])                     # integer partial sums <= 2^53: exact
    if len(parts) == 2:
        low = xp.zeros(dst.shape, dtype=np.float64)
        xp.add.at(low, ids, parts[1])
        total += xp.ldexp(low, -bits)
    total = xp.ldexp(total, (e - bits).astype(np.int32))
    if be.may_be_true(~xp.all(finite)):
        special = xp.zeros(dst.shape, dtype=np.float64)
        with np.errstate(invalid="ignore"):             # inf - inf: the NaN asked for
            xp.add.at(special, ids, xp.where(finite, 0.0, x64))
        total = xp.where(special == 0, total, special)
    dst += total.astype(dst.dtype)


def cumsum(x: Array, axis: int = -1) -> Array:
    """Inclusive prefix sums along `axis` (float inputs): each element is first rounded to
    53 - log2(n) bits of its row's largest magnitude, then every prefix sum is exact and rounded once."""
    be = backend.of(x)
    xp = be.xp
    if not _is_float(x.dtype) or x.size == 0:
        return xp.cumsum(x, axis=axis)
    bits = 53 - _log2_ceil(x.shape[axis])
    if x.dtype == np.float32:       # the backend's one-pass kernel (the GPU's), the same arithmetic
        out = be.exact.cumsum_float32(x, axis, bits)
        if out is not None:
            return out
    x64 = x.astype(np.float64)
    finite = xp.isfinite(x64)
    top = xp.max(xp.abs(xp.where(finite, x64, 0.0)), axis=axis, keepdims=True)
    # a 1-d array scans with axis=None: CuPy then runs CUB's device-wide scan, ~3x faster than its
    # per-axis kernel; the sums are of exact integers (and of infinities), the same in any order
    along = None if x.ndim == 1 else axis
    with np.errstate(invalid="ignore"):
        special = xp.cumsum(xp.where(finite, 0.0, x64), axis=along)
    e, parts = _slices(xp, xp.where(finite, x64, 0.0), top, bits, 1 if x.dtype.itemsize <= 4 else 2)
    total = xp.cumsum(parts[0], axis=along)
    if len(parts) == 2:
        total = total + xp.ldexp(xp.cumsum(parts[1], axis=along), -bits)
    total = xp.ldexp(total, (e - bits).astype(np.int32))
    return xp.where(special == 0, total, special).astype(x.dtype)


def _is_float(dtype) -> bool:
    return np.dtype(dtype).kind == "f" or np.dtype(dtype) in dtypes.FLOAT_NUMPY


def _log2_ceil(n: int) -> int:
    return max(0, (int(n) - 1).bit_length())


def _log2_ceil_array(xp, n):
    """_log2_ceil of each count (int32; 0 for counts of 0 and 1): frexp's exponent of n - 1 is its
    bit length."""
    return xp.frexp(xp.maximum(n, 1).astype(np.float64) - 1)[1].astype(np.int32)
