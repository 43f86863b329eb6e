"""Deterministic mode's exact float32 GEMM on the CPU as compiled loops around the float64 GEMM
(numba, the optional `loom[cpu]` extra, loaded by loom.backend.cpu.jit): exact._matmul_narrow's
reference bits, with one pass per operand.

Why: the NumPy form (exact_cpu) needs about twenty NumPy calls on small arrays to find the scales,
then several passes over each operand (scale, rint, subtract, scale, rint, convert to float64),
each streaming it through memory. At training shapes those cost more than the GEMM itself (a
[32, 784] x [784, 256] product, for one). Here the scales
come from the exponents inside the loops, and each operand is read once and written once as its
float64 slices.

Strict IEEE arithmetic (no fastmath: nothing reassociated or contracted into an FMA), in the
reference's order and types: s = (x f0) f1 in float32 with f0 f1 = 2^shift (two factors where
2^shift is above float32's range), rint (half to even), the remainder scaled by 2^bits_a, the
folded scales as float32 products, stores as float64; the recombination in float64, rounded once to
float32. tests/kernels/test_exact.py runs the reference bit tests with and without these loops.

Loops take C-contiguous 2-D arrays: an F-ordered operand (x.T, W.T) comes as its transpose, its
per-row scales then per column ("cols" loops). The loops are single-threaded: numba's OpenMP
threads and OpenBLAS's, both spin-waiting on the same two cores between calls, made every product
last a scheduler time slice; one thread per pass is memory-bound already.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from . import jit as cpu_jit

_LOOPS = ("_pow2_f32", "_factors", "_exponent", "_row_top", "_absmax_rows", "_absmax_cols", "_exponents_rows",
          "_exponents_cols", "_row_sum", "_sum_rows", "_sum_cols", "_slice_rows", "_slice_cols", "_combine_fold",
          "_combine_scaled", "_rms_rows")
_MAGNITUDE_MASKS = {4: (np.uint32, np.uint32(0x7FFFFFFF)), 8: (np.uint64, np.uint64(0x7FFFFFFFFFFFFFFF))}


def available() -> bool:
    return cpu_jit.compile_module(globals(), plain=_LOOPS)


def takes(x: np.ndarray) -> bool:
    """Whether these loops take x: 2-D and non-empty (they read each row's first element unchecked),
    C- or F-contiguous, float32 or float64."""
    return (x.ndim == 2 and x.size > 0 and x.dtype in (np.float32, np.float64)
            and (x.flags.c_contiguous or x.flags.f_contiguous))


def absmax(x: np.ndarray, axis: int) -> np.ndarray:
    """exact_cpu.absmax for x that takes() (axis -1 or -2, kept): the maximum of the magnitudes'
    bit patterns (NaN patterns are above infinity's, so a row with a NaN gives a NaN)."""
    axis %= 2
    if not x.flags.c_contiguous:        # F-ordered: its transpose is C-ordered, the axes swapped
        return absmax(x.T, 1 - axis).T
    uint, mask = _MAGNITUDE_MASKS[x.dtype.itemsize]
    bits = x.view(uint)
    if axis == 1:
        out = np.empty((x.shape[0], 1), uint)
        _absmax_rows(bits, mask, out[:, 0])
    else:
        out = np.empty((1, x.shape[1]), uint)
        _absmax_cols(bits, mask, out[0])
    return out.view(x.dtype)


def exponents(x: np.ndarray, axis: int) -> tuple[np.ndarray, int, int] | None:
    """(e, min e, max e) for float32 x that takes(): int32 e per row (axis -1) or column (axis -2)
    with max |x| < 2^e, frexp's exponent of the maximum (0 for zeros); None where one is inf or NaN."""
    axis %= 2
    if not x.flags.c_contiguous:
        return exponents(x.T, 1 - axis)
    e = np.empty(x.shape[0] if axis == 1 else x.shape[1], np.int32)
    finite, low, high = (_exponents_rows if axis == 1 else _exponents_cols)(x.view(np.uint32), e)
    return (e, low, high) if finite else None


def slice_operand(x: np.ndarray, e: np.ndarray, per_row: bool, bits: int, lo_bits: int, fold: bool, out_hi: np.ndarray,
                  out_lo: np.ndarray | None) -> None:
    """The slices of float32 x (C or F) with a scale per row (per_row) or per column, e the
    exponents: s = x 2^(bits - e) in float32, hi = rint(s), out_hi = hi (times 2^(e - bits) when
    fold); with lo_bits > 0 also lo = rint((s - hi) 2^lo_bits), out_lo = lo (times
    2^(e - bits - lo_bits) when fold). out_hi and out_lo: float64 in x's layout."""
    c_order = x.flags.c_contiguous
    view = x if c_order else x.T
    hi = out_hi if c_order else out_hi.T
    lo = hi if out_lo is None else (out_lo if c_order else out_lo.T)
    kernel = _slice_rows if per_row == c_order else _slice_cols
    kernel(view, e, bits, lo_bits, fold, hi, lo)


def combine(g: np.ndarray, m: int, bits_a: int, bits_b: int, ea: np.ndarray, eb: np.ndarray, fold: bool,
            out: np.ndarray) -> None:
    """out [m, n] float32 from the C-ordered float64 product g [2m, n] of the stacked slices:
    float32(g[:m] + g[m:]) when folded, else
    float32(((g[m:] 2^-bits_a + g[:m]) 2^(ea - bits_a)) 2^(eb - bits_b))."""
    if fold:
        _combine_fold(g, m, out)
    else:
        _combine_scaled(g, m, bits_a, bits_b, ea, eb, out)


def sum_float32(x: np.ndarray, axes: tuple, bits: int) -> np.ndarray | None:
    """exact_cpu.sum_float32 (the float64 totals over axes, kept) for C- or F-contiguous float32 x
    summed over all its axes, or 2-D x over one axis; None where these loops do not take it or x
    holds inf or NaN."""
    if x.dtype != np.float32 or not (x.flags.c_contiguous or x.flags.f_contiguous) or x.size == 0:
        return None
    if len(axes) == x.ndim:
        rows, kept = x.reshape(1, -1, order="C" if x.flags.c_contiguous else "F"), (1,) * x.ndim   # a view
        return _sum_of_rows(rows, bits, kept)
    if x.ndim != 2 or len(axes) != 1:
        return None
    axis = axes[0] % 2
    if not x.flags.c_contiguous:
        x, axis = x.T, 1 - axis
        kept = (1, x.shape[0]) if axis == 1 else (x.shape[1], 1)
    else:
        kept = (x.shape[0], 1) if axis == 1 else (1, x.shape[1])
    if axis == 1:
        return _sum_of_rows(x, bits, kept)
    out = np.empty(x.shape[1], np.float64)
    return out.reshape(kept) if _sum_cols(x.view(np.uint32), x, bits, out) else None


def rms_rows(x: np.ndarray, weight: np.ndarray, eps: float, out: np.ndarray) -> bool:
    """out = loom.kernels.fused.rms_norm(x, weight, eps)[0] in deterministic mode, its bits, for float32
    x [M, n] and weight [n], C-contiguous: one compiled call where the array code makes a dozen (a
    decode step's norms, 61 a token for SmolLM2-135M, were 80 us each). False (out undefined) where
    the loops are unavailable or a square is inf or NaN: the caller runs the array code."""
    if not available() or x.ndim != 2 or x.shape[1] == 0 or not x.flags.c_contiguous:
        return False
    return _rms_rows(x, np.ascontiguousarray(weight, dtype=np.float32), np.float32(eps), sum_bits(x.shape[1]), out)


def rms_rows_loop() -> Callable | None:
    """The compiled loop behind rms_rows, for a caller that checks its arguments once (a decode step's
    layers: 61 norms a token for SmolLM2-135M, where rms_rows' checks cost several times its loop):
    loop(x, weight, eps, bits, out) -> bool with x [M, n] and weight [n] float32, C-contiguous, eps a
    float32, bits sum_bits(n); None where the loops are unavailable."""
    return _rms_rows if available() else None


def sum_bits(n: int) -> int:
    """exact.sum's bits for sums of n values, 53 - ceil(log2 n) (for callers below loom.kernels)."""
    return 53 - max(0, (n - 1).bit_length())


def _sum_of_rows(rows, bits: int, kept: tuple):
    out = np.empty(rows.shape[0], np.float64)
    return out.reshape(kept) if _sum_rows(rows.view(np.uint32), rows, bits, out) else None


# --- the loops ---------------------------------------------------------------------------------------

def _row_top(bits, i, mask):
    """The largest magnitude bit pattern of row i (every row has at least one element: takes())."""
    top = bits[i, 0] & mask
    for k in range(1, bits.shape[1]):
        top = max(top, bits[i, k] & mask)
    return top


def _absmax_rows(bits, mask, out):
    for i in range(bits.shape[0]):
        out[i] = _row_top(bits, i, mask)


def _absmax_cols(bits, mask, out):
    for j in range(bits.shape[1]):
        out[j] = bits[0, j] & mask
    for i in range(1, bits.shape[0]):
        for j in range(bits.shape[1]):
            out[j] = max(out[j], bits[i, j] & mask)


def _exponent(bits):
    """frexp's exponent of the float32 magnitude with bit pattern `bits` (finite): biased - 126 for
    normal numbers; for subnormals, those of the integer mantissa times 2^-149; 0 for zero."""
    biased = bits >> 23
    if biased > 0:
        return np.int32(biased) - 126
    if bits == 0:
        return np.int32(0)
    return np.int32(math.frexp(np.float64(bits))[1] - 149)


def _exponents_rows(bits, e):
    low, high = np.int32(1000), np.int32(-1000)
    for i in range(bits.shape[0]):
        top = _row_top(bits, i, np.uint32(0x7FFFFFFF))
        if top >= np.uint32(0x7F800000):        # inf or NaN
            return False, low, high
        e[i] = _exponent(top)
        low, high = min(low, e[i]), max(high, e[i])
    return True, low, high


def _exponents_cols(bits, e):
    n = bits.shape[1]
    top = np.empty(n, np.uint32)
    _absmax_cols(bits, np.uint32(0x7FFFFFFF), top)
    low, high = np.int32(1000), np.int32(-1000)
    for j in range(n):
        if top[j] >= np.uint32(0x7F800000):
            return False, low, high
        e[j] = _exponent(top[j])
        low, high = min(low, e[j]), max(high, e[j])
    return True, low, high


def _row_sum(bits_x, x, i, bits):
    """(finite, total): row i of float32 x summed as exact.sum's one slice does it, the float64 total
    (exact, before its rounding to float32); finite False (total 0) where the row holds inf or NaN."""
    top = _row_top(bits_x, i, np.uint32(0x7FFFFFFF))
    if top >= np.uint32(0x7F800000):
        return False, 0.0
    e = _exponent(top)
    f0, f1, _, _ = _factors(e, bits, 0)
    total = 0.0
    for k in range(x.shape[1]):
        total += np.float64(np.rint(x[i, k] * f0 * f1))      # integers below 2^53: exact
    return True, math.ldexp(total, e - bits)


def _sum_rows(bits_x, x, bits, out):
    for i in range(x.shape[0]):
        finite, total = _row_sum(bits_x, x, i, bits)
        if not finite:
            return False
        out[i] = total
    return True


def _rms_rows(x, w, eps, bits, out):
    """rms_rows' loop: per row, the squares in float32, their exact sum as _sum_rows makes it, rounded
    once to float32, then the array code's float32 operations in its order: / n, + eps, sqrt, 1 / it,
    x times that, times w."""
    n = x.shape[1]
    squares = np.empty((1, n), np.float32)
    square_bits = squares.view(np.uint32)
    for i in range(x.shape[0]):
        for k in range(n):
            squares[0, k] = x[i, k] * x[i, k]
        finite, total = _row_sum(square_bits, squares, 0, bits)
        if not finite:
            return False
        mean = np.float32(total) / np.float32(n)
        rstd = np.float32(1.0) / np.sqrt(mean + eps)
        for k in range(n):
            out[i, k] = (x[i, k] * rstd) * w[k]
    return True


def _sum_cols(bits_x, x, bits, out):
    n = x.shape[1]
    e = np.empty(n, np.int32)
    if not _exponents_cols(bits_x, e)[0]:
        return False
    f0 = np.empty(n, np.float32)
    f1 = np.empty(n, np.float32)
    for j in range(n):
        f0[j], f1[j], _, _ = _factors(e[j], bits, 0)
        out[j] = 0.0
    for i in range(x.shape[0]):
        for j in range(n):
            out[j] += np.float64(np.rint(x[i, j] * f0[j] * f1[j]))
    for j in range(n):
        out[j] = math.ldexp(out[j], e[j] - bits)
    return True


def _pow2_f32(n):
    """2^n as float32 for n in float32's range (exact: a float64 power of two, converted)."""
    return np.float32(math.ldexp(1.0, n))


def _factors(e, bits, lo_bits):
    """(f0, f1, hi unit, lo unit) of a row of exponent e: f0 f1 = 2^(bits - e), split where above
    2^127 (the first factor scales up without overflow, the last rounds once, as ldexp would)."""
    shift = bits - e
    last = min(shift, 127)
    return (_pow2_f32(shift - last), _pow2_f32(last),
            _pow2_f32(-shift), _pow2_f32(-shift - lo_bits))


def _slice_rows(x, e, bits, lo_bits, fold, out_hi, out_lo):
    lo_scale = _pow2_f32(lo_bits)
    for i in range(x.shape[0]):
        f0, f1, u_hi, u_lo = _factors(e[i], bits, lo_bits)
        for k in range(x.shape[1]):
            s = x[i, k] * f0 * f1
            h = np.rint(s)
            out_hi[i, k] = h * u_hi if fold else h
            if lo_bits > 0:
                r = np.rint((s - h) * lo_scale)
                out_lo[i, k] = r * u_lo if fold else r


def _slice_cols(x, e, bits, lo_bits, fold, out_hi, out_lo):
    n = x.shape[1]
    lo_scale = _pow2_f32(lo_bits)
    f0 = np.empty(n, np.float32)
    f1 = np.empty(n, np.float32)
    u_hi = np.empty(n, np.float32)
    u_lo = np.empty(n, np.float32)
    for k in range(n):
        f0[k], f1[k], u_hi[k], u_lo[k] = _factors(e[k], bits, lo_bits)
    for i in range(x.shape[0]):
        for k in range(n):
            s = x[i, k] * f0[k] * f1[k]
            h = np.rint(s)
            out_hi[i, k] = h * u_hi[k] if fold else h
            if lo_bits > 0:
                r = np.rint((s - h) * lo_scale)
                out_lo[i, k] = r * u_lo[k] if fold else r


def _combine_fold(g, m, out):
    for i in range(m):
        for j in range(g.shape[1]):
            out[i, j] = np.float32(g[i, j] + g[m + i, j])


def _combine_scaled(g, m, bits_a, bits_b, ea, eb, out):
    lo_unit = math.ldexp(1.0, -bits_a)
    col = np.empty(g.shape[1], np.float64)
    for j in range(g.shape[1]):
        col[j] = math.ldexp(1.0, eb[j] - bits_b)
    for i in range(m):
        row = math.ldexp(1.0, ea[i] - bits_a)
        for j in range(g.shape[1]):
            out[i, j] = np.float32(((g[m + i, j] * lo_unit + g[i, j]) * row) * col[j])
