"""The NumPy side of exact.py's float32 GEMM scheme and float32 sums: the reference arithmetic's
bits (exact._matmul_narrow's docstring, exact._sum_general), in fewer and cheaper passes. Where
numba is installed, 2-D products and sums run exact_jit's compiled loops instead (matmul_2d,
sum_float32): the same bits again, in one pass per operand.

Around the float64 GEMM, the slicing and recombination passes are costly next to the GEMM
(memory-bound: every pass streams its operands through memory). What makes them cheaper, with NumPy
and OpenBLAS:
- the slicing runs in float32: multiplying by a power of two, rint and the subtraction of a number's
  own integer part are all exact there, and half the bytes; each slice is converted to float64
  once (no mixed float32/float64 ufunc: NumPy runs those through a slow cast buffer);
- scratch buffers are reused per thread (fresh multi-megabyte buffers are page-faulted in again on
  every call, which slows the whole exact GEMM down) and 64-byte aligned (AVX-512 passes over
  NumPy's 16-byte-aligned arrays are slower);
- a multiply by a per-row factor runs with NumPy's ufunc buffer no longer than a row: with the
  default 8192 elements NumPy first copies the broadcast factor into a buffer, which is slower;
- where the output is larger than the operands (a weight gradient, dy.T @ x) the power-of-two
  scales are folded into the slices instead of the product, so the recombination is one pass;
- maxima come from integer reductions of the bit patterns (no NaN-aware float max and min).
"""
from __future__ import annotations

import contextlib
import math
import threading

import numpy as np
from numpy.typing import DTypeLike

from .. import Backend
from . import exact_jit

_ALIGN = 64                         # bytes: a cache line, an AVX-512 register
_REUSE_BYTES = 8 << 20              # scratch buffers up to this size are kept per thread and role
_MAX_SHAPED = 64                    # scratch arrays (role, shape) kept before the cache is emptied
_ROW_BUFFER_MIN = 512               # elements: shorter rows run faster with NumPy's default buffer
_BIT_ABSMAX_MIN = 1 << 14           # elements: below, |x| (a temporary) costs less than more calls
_F32_MAX_EXP = 127                  # 2^127: the largest power of two in float32
_F32_MIN_EXP = -149                 # 2^-149: the smallest (subnormal)
_INTS = {4: (np.int32, np.uint32), 8: (np.int64, np.uint64)}


def absmax(x: np.ndarray, axis: int | tuple[int, ...]) -> np.ndarray:
    """max |x| along axis (kept), NaN where a NaN is, for float32 and float64 x. Large arrays: two
    integer reductions of the bit patterns, which order like the magnitudes (sign-magnitude): the
    signed maximum is the largest non-negative pattern (if any), the unsigned maximum the largest
    negative one (if any); NaN patterns are above infinity's."""
    if isinstance(axis, int) and exact_jit.takes(x) and exact_jit.available():
        return exact_jit.absmax(x, axis)
    if x.size < _BIT_ABSMAX_MIN:
        return np.abs(x).max(axis=axis, keepdims=True)
    signed, unsigned = _INTS[x.dtype.itemsize]
    positive = np.maximum(x.view(signed).max(axis=axis, keepdims=True), 0).view(unsigned)
    negative = x.view(unsigned).max(axis=axis, keepdims=True)
    sign = unsigned(1) << unsigned(8 * x.dtype.itemsize - 1)
    negative[negative < sign] = sign            # no negative value: |x| >= +0 stands for it
    return np.maximum(positive, negative ^ sign).view(x.dtype)


def narrow_scales(amax: np.ndarray, bmax: np.ndarray, bits: tuple[int, int]) -> tuple:
    """(bits_a, shift_a, shift_b, row_scale, col_scale) of the 2 x 1 slice scheme with bits (bits_a,
    bits_b) (loom.kernels.exact.narrow_bits) for row maxima amax and column maxima bmax."""
    bits_a, bits_b = bits
    ea, eb = np.frexp(amax)[1], np.frexp(bmax)[1]                 # max < 2^e (0 for zero rows)
    return (bits_a, (bits_a - ea).astype(np.int32), (bits_b - eb).astype(np.int32),
            np.ldexp(1.0, (ea - bits_a).astype(np.int32)), np.ldexp(1.0, (eb - bits_b).astype(np.int32)))


def matmul_narrow(be: Backend, a: np.ndarray, b: np.ndarray, scales: tuple, dtype: DTypeLike) -> np.ndarray:
    """exact._matmul_narrow for float32 a and b on the CPU: the same bits."""
    bits_a, shift_a, shift_b, row_scale, col_scale = scales
    fold = _foldable(a, b, bits_a, shift_a, shift_b)
    stacked = _slice_left(a, shift_a, bits_a, fold)
    b_q = _slice_right(b, shift_b, fold)
    if stacked.ndim == 2 and b_q.ndim == 2:     # the product in scratch memory too
        g = be.matmul(stacked, b_q, out=scratch("product", (stacked.shape[0], b.shape[-1]), np.float64))
    else:
        g = be.matmul(stacked, b_q)             # exact: integer partial sums below 2^53
    m = a.shape[-2]
    out = np.empty(g.shape[:-2] + (m, g.shape[-1]), dtype=dtype)
    if fold:        # g's halves hold g_hi and g_lo 2^-bits_a already scaled (exactly: powers of two)
        np.add(g[..., :m, :], g[..., m:, :], out=out, casting="unsafe")     # the one rounding
    else:
        _combine(g, bits_a, row_scale, col_scale, out)
    return out


def matmul_2d(be: Backend, a: np.ndarray, b: np.ndarray, bits_a: int, bits_b: int) -> np.ndarray | None:
    """exact._matmul_narrow's bits for 2-D float32 a and b (C- or F-ordered; K <= 2^14) through
    exact_jit's compiled loops: None where they cannot run (no numba) or an operand holds inf or NaN
    (exact._matmul_exact then takes the general path)."""
    if not (exact_jit.takes(a) and exact_jit.takes(b) and exact_jit.available()):
        return None
    left, right = exact_jit.exponents(a, -1), exact_jit.exponents(b, -2)
    if left is None or right is None:
        return None
    (ea, ea_min, ea_max), (eb, eb_min, eb_max) = left, right
    m, n = a.shape[0], b.shape[1]
    # shift = bits - e: _foldable's conditions on the shifts' ranges
    fold = _foldable_ranges(a, b, bits_a, bits_a - ea_max, bits_a - ea_min, bits_b - eb_max, bits_b - eb_min)
    stacked = scratch("stacked", (2 * m, a.shape[1]), np.float64, _order(a))
    exact_jit.slice_operand(a, ea, True, bits_a, bits_a, fold, stacked[:m], stacked[m:])
    b_q = scratch("right64", b.shape, np.float64, _order(b))
    exact_jit.slice_operand(b, eb, False, bits_b, 0, fold, b_q, None)
    g = be.matmul(stacked, b_q, out=scratch("product", (2 * m, n), np.float64))
    out = np.empty((m, n), dtype=np.float32)
    exact_jit.combine(g, m, bits_a, bits_b, ea, eb, fold, out)
    return out


def sum_float32(x: np.ndarray, axes: tuple, bits: int) -> np.ndarray | None:
    """exact.sum's one-slice arithmetic for float32 x, in float32 up to the sum: the float64 total
    over axes (kept) of rint(x 2^(bits - e)) 2^(e - bits), e the exponent of the largest magnitude
    over axes; None where x holds an infinity or a NaN (exact._sum_general handles those). The
    float32 values are the float64 reference's: the scaling is exact but where it goes below 2^-126,
    and those elements are +-0 after rint either way."""
    if exact_jit.available():           # compiled loops where they take x: the same totals
        lead = x.ndim - len(axes)
        if x.ndim > 2 and 0 < lead and x.flags.c_contiguous and sorted(axes) == list(range(lead, x.ndim)):
            # trailing axes of a C-ordered array (a norm's or softmax's rows, [B, T, E]): the rows of
            # a 2-D view, each its own sum, where the loops took only 2-D x (NumPy's passes: 48 us
            # against 5 for one row of 576)
            total = exact_jit.sum_float32(x.reshape(-1, math.prod(x.shape[lead:])), (1,), bits)
            if total is not None:
                return total.reshape(x.shape[:lead] + (1,) * len(axes))
        total = exact_jit.sum_float32(x, axes, bits)
        if total is not None:
            return total
    top = absmax(x, axes)
    if not np.isfinite(top).all():
        return None
    e = np.frexp(top)[1]
    s = scratch("sum", x.shape, np.float32, _order(x))
    with _row_buffer(x):
        _multiply(x, _powers_of_two(bits - e), s)     # |s| < 2^bits
        np.rint(s, out=s)
    total = np.sum(s, axis=axes, keepdims=True, dtype=np.float64)     # integers below 2^53: exact
    return np.ldexp(total, e - bits)


def _combine(g, bits_a: int, row_scale, col_scale, out) -> None:
    """out = ((g_lo 2^-bits_a + g_hi) * row_scale) * col_scale, in place in g."""
    m = out.shape[-2]
    hi, lo = g[..., :m, :], g[..., m:, :]
    with _row_buffer(lo):
        np.multiply(lo, 2.0 ** -bits_a, out=lo)
        np.add(lo, hi, out=lo)          # the one rounding
        np.multiply(lo, row_scale, out=lo)
        np.multiply(lo, col_scale, out=out, casting="unsafe")


def _foldable(a, b, bits_a: int, shift_a, shift_b) -> bool:
    """Whether to scale the slices rather than the product by row_scale = 2^-shift_a and
    col_scale = 2^-shift_b: cheaper where the output is the largest array, and exact in float32
    where every scaled slice is a float32 (the product's terms stay exact in float64 either way)."""
    return _foldable_ranges(a, b, bits_a, int(shift_a.min()), int(shift_a.max()), int(shift_b.min()),
                            int(shift_b.max()))


def _foldable_ranges(a, b, bits_a: int, min_a: int, max_a: int, min_b: int, max_b: int) -> bool:
    """_foldable for shifts in [min_a, max_a] (rows of a) and [min_b, max_b] (columns of b)."""
    batch = 1 if a.ndim == b.ndim == 2 else math.prod(np.broadcast_shapes(a.shape[:-2], b.shape[:-2]))
    if 2 * a.size + b.size > batch * a.shape[-2] * b.shape[-1]:
        return False
    # The folded slices are float32s (so the product's terms are exact) where their units, 2^-shift_b
    # for b and 2^(-shift_a - bits_a) for a's lo (hi's is larger), are at least 2^-149, and where
    # their largest values, 2^(bits_a - shift_a) and 2^(24 - shift_b), stay below 2^128.
    return (max_a <= -_F32_MIN_EXP - bits_a and min_a >= bits_a - _F32_MAX_EXP
            and max_b <= -_F32_MIN_EXP and min_b >= 24 - _F32_MAX_EXP)


def _slice_left(a, shift_a, bits_a: int, fold: bool):
    """The stacked float64 [.., 2M, K] of a's hi and lo integer slices: s = a 2^shift_a,
    hi = rint(s), lo = rint((s - hi) 2^bits_a); times 2^-shift_a and 2^(-shift_a - bits_a) when
    folded. Two float32 buffers of a's layout (the halves of one stacked buffer would be strided for
    a transposed view), each converted once."""
    m, order = a.shape[-2], _order(a)
    s = scratch("scaled", a.shape, np.float32, order)
    hi = scratch("hi", a.shape, np.float32, order)
    with _row_buffer(a):
        _multiply(a, _powers_of_two(shift_a), s)      # |s| < 2^bits_a
        np.rint(s, out=hi)
        np.subtract(s, hi, out=s)                   # the remainder, |r| <= 1/2: exact
        np.multiply(s, np.float32(2.0 ** bits_a), out=s)
        np.rint(s, out=s)
        if fold:                                    # float32 powers: _foldable
            np.multiply(hi, _pow2(-shift_a), out=hi)
            np.multiply(s, _pow2(-shift_a - bits_a), out=s)
    stacked = scratch("stacked", a.shape[:-2] + (2 * m, a.shape[-1]), np.float64, order)
    stacked[..., :m, :] = hi
    stacked[..., m:, :] = s
    return stacked


def _slice_right(b, shift_b, fold: bool):
    """rint(b 2^shift_b) as float64 in b's layout (a transposed weight stays so), times 2^-shift_b
    when folded."""
    q = scratch("right", b.shape, np.float32, _order(b))
    with _row_buffer(b):
        _multiply(b, _powers_of_two(shift_b), q)
        np.rint(q, out=q)
        if fold:                                    # a float32 power: _foldable
            np.multiply(q, _pow2(-shift_b), out=q)
    b_q = scratch("right64", b.shape, np.float64, _order(b))
    b_q[...] = q
    return b_q


def _powers_of_two(shift) -> list:
    """float32 factors whose product is 2^shift: one, or two where 2^shift is above 2^127 (rows of
    tiny values; shift > -128 as every maximum is below 2^128). Multiplying by them in order rounds
    as ldexp(x, shift) does: the first factor scales up without overflow, the last rounds once."""
    if shift.max() <= _F32_MAX_EXP:
        return [_pow2(shift)]
    last = np.minimum(shift, _F32_MAX_EXP)
    return [_pow2(shift - last), _pow2(last)]


def _multiply(x, factors: list, out) -> None:
    """out = x * f0 * f1 ..., the factors broadcast."""
    for f in factors:
        np.multiply(x, f, out=out)
        x = out


@contextlib.contextmanager
def _row_buffer(x):
    """A block in which NumPy's ufunc buffer is no longer than x's rows in memory, if they are
    long, so that a per-row factor needs no buffering; the previous size is restored after it."""
    row = x.shape[-1] if x.flags.c_contiguous else x.shape[0] if x.flags.f_contiguous else 0
    if row < _ROW_BUFFER_MIN:
        yield
        return
    previous = np.setbufsize(row - row % 16)    # NumPy takes multiples of 16
    try:
        yield
    finally:
        np.setbufsize(previous)


def _pow2(exponent):
    """2^exponent as float32 (exact: the exponents here are in float32's range)."""
    return np.ldexp(np.float32(1), exponent, dtype=np.float32)


def _order(x) -> str:
    return "F" if x.ndim == 2 and x.flags.f_contiguous and not x.flags.c_contiguous else "C"


class _Scratch(threading.local):
    """Per-thread aligned byte buffers, one per role, and the arrays last shaped from them (a
    training step's shapes repeat from call to call)."""

    def __init__(self):
        self.buffers, self.arrays = {}, {}


_SCRATCH = _Scratch()


def scratch(role: str, shape: tuple, dtype: DTypeLike, order: str = "C") -> np.ndarray:
    """An uninitialized 64-byte-aligned array, the same memory on every call for one role and thread
    (up to _REUSE_BYTES): a caller keeps nothing in it past the next call that names the role."""
    key = (role, shape, dtype, order)
    array = _SCRATCH.arrays.get(key)
    if array is not None:
        return array
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    buf = _SCRATCH.buffers.get(role)
    if buf is None or buf.size < nbytes:
        raw = np.empty(nbytes + _ALIGN, np.uint8)
        start = -raw.ctypes.data % _ALIGN
        buf = raw[start:start + nbytes]
        if nbytes > _REUSE_BYTES:
            return _shaped(buf, shape, dtype, order)
        _SCRATCH.buffers[role] = buf
        _SCRATCH.arrays = {k: v for k, v in _SCRATCH.arrays.items() if k[0] != role}   # the old memory
    if len(_SCRATCH.arrays) >= _MAX_SHAPED:
        _SCRATCH.arrays = {}
    array = _SCRATCH.arrays[key] = _shaped(buf, shape, dtype, order)
    return array


def _shaped(buf, shape: tuple, dtype, order: str):
    flat = buf[:math.prod(shape) * dtype.itemsize].view(dtype)
    return flat.reshape(shape[::-1]).T if order == "F" else flat.reshape(shape)
