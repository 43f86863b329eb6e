"""Exact reductions over the batch that split across the ranks of a data-parallel world.

A reduction over the batch (a parameter gradient, a batch-norm statistic, a loss total) on one
device is exact.py's: every value is scaled to an integer at a power of two taken from the largest
magnitude it is summed with, the integers are summed exactly, the total is rounded once. Split over
ranks, the same bits come out when every rank
- scales with the global largest magnitude (an all-reduce "max" of the ranks' maxima),
- takes the bits of the global count (each rank knows it: the split's global_count),
- sums its integers exactly, and the ranks' integer sums are added exactly (an all-reduce "sum" of
  int64, or of float64 integers below 2^53), then rounded once, the same way on every rank.

Sums and index_add keep exact.py's schemes: on one device these functions return its bits.
Parameter-gradient products (`matmul`) take the 2 x 1 slice scheme at every K, because the
correctly rounded scheme exact.py uses for short products (K <= 2048) has no integer accumulator
to add across ranks; past 2^14 the chunks' integers are added exactly in int64 instead of rounding
each chunk's float64 result. Determinism spec 2 made that change (exact_dispatch's table).
"""
from __future__ import annotations

import math

import numpy as np

from ... import backend
from ...backend import Array
from .. import batch_split
from . import dispatch as exact_dispatch


def matmul(a: Array, b: Array) -> Array:
    """a @ b (a [..., M, K], b [..., K, N], float) whose K runs over the batch: a parameter gradient,
    summed over every rank of the split in effect. Float32 result for float32 operands (and narrower);
    float64 operands take exact.py's float64 scheme and cannot be split. An entry whose row of a or
    column of b holds inf or NaN on any rank is NaN (a flag the ranks share, where IEEE's value would
    need another product of the flagged rows)."""
    from . import _matmul_sliced
    be = backend.of(a)
    xp = be.xp
    split = batch_split.current()
    dtype = np.result_type(a.dtype, b.dtype)
    k = a.shape[-1]
    if exact_dispatch.dtype_class(dtype) == "float64":
        if split is not None:
            raise ValueError("float64 parameter gradients cannot be split across ranks exactly; train in float32")
        return _matmul_sliced(be, a, b, dtype)
    if a.size == 0 or b.size == 0:
        return xp.zeros(np.broadcast_shapes(a.shape[:-2], b.shape[:-2]) + (a.shape[-2], b.shape[-1]), dtype=dtype)
    a, b = a.astype(np.float32, copy=False), b.astype(np.float32, copy=False)
    with np.errstate(invalid="ignore", over="ignore"):
        maxima = be.exact.gemm_maxima(a, b)                        # (the GPU: one kernel each, one memset)
        # [..., M, 1] and [..., 1, N]; NaN or inf: a flagged row or column
        amax, bmax = maxima if maxima is not None else (xp.max(xp.abs(a), axis=-1, keepdims=True),
                                                        xp.max(xp.abs(b), axis=-2, keepdims=True))
        if split is None and k <= 1 << exact_dispatch.CHUNK_BITS:
            result = _matmul_sliced(be, a, b, dtype)             # the backend's fused kernels: the same bits
        else:
            result = _matmul_parts(be, a, b, amax, bmax, k if split is None else split.global_count(k), split,
                                   dtype)
            if split is not None:
                return result
        return xp.where(xp.isfinite(amax) & xp.isfinite(bmax), result, np.float32(np.nan)).astype(dtype, copy=False)


def _matmul_parts(be, a, b, amax, bmax, k_total: int, split, dtype):
    """The slice scheme through its integers: [g_hi; g_lo] in int64, summed over the ranks."""
    from . import narrow_bits
    xp = be.xp
    bits = narrow_bits(min(k_total, 1 << exact_dispatch.CHUNK_BITS))
    bad_rows, bad_cols = ~xp.isfinite(amax), ~xp.isfinite(bmax)
    amax, bmax = xp.where(bad_rows, 0, amax), xp.where(bad_cols, 0, bmax)    # their entries become NaN
    if split is not None:              # one all-reduce for both maxima and both flags
        both = xp.concatenate([amax.reshape(-1), bmax.reshape(-1), bad_rows.reshape(-1).astype(np.float32),
                               bad_cols.reshape(-1).astype(np.float32)])
        split.collective.all_reduce(both, "max")
        sizes = np.cumsum([amax.size, bmax.size, amax.size])
        amax = both[:sizes[0]].reshape(amax.shape)
        bmax = both[sizes[0]:sizes[1]].reshape(bmax.shape)
        bad_rows = both[sizes[1]:sizes[2]].reshape(amax.shape) > 0
        bad_cols = both[sizes[2]:].reshape(bmax.shape) > 0
    parts = be.exact.slice_parts(a, b, amax, bmax, bits)
    if parts is None:
        parts = _slice_parts(be, a, b, amax, bmax, bits)
    if split is not None:
        split.collective.all_reduce(parts, "sum")
    result = be.exact.combine_parts(parts, amax, bmax, bits, dtype)
    if result is None:
        bits_a, bits_b = bits
        m = a.shape[-2]
        total = parts[..., m:, :].astype(np.float64) * 2.0 ** -bits_a + parts[..., :m, :].astype(np.float64)
        ea = xp.frexp(amax)[1].astype(np.int32)          # max < 2^e (0 for an all-zero row)
        eb = xp.frexp(bmax)[1].astype(np.int32)
        total = total * xp.ldexp(1.0, ea - bits_a) * xp.ldexp(1.0, eb - bits_b)
        result = total.astype(dtype)
    return xp.where(bad_rows | bad_cols, np.float32(np.nan), result).astype(dtype, copy=False)


def _slice_parts(be, a, b, amax, bmax, bits):
    """slice_parts' reference (the backends' kernels give its integers): rows of a as two integer
    slices, columns of b as one, at their maxima's scales; float64 GEMMs of at most 2^14 products
    (exact), added in int64."""
    xp = be.xp
    bits_a, bits_b = bits
    ea = xp.frexp(amax)[1].astype(np.int32)
    eb = xp.frexp(bmax)[1].astype(np.int32)
    with np.errstate(invalid="ignore"):
        s = _scaled(xp, a, bits_a - ea)                       # |s| < 2^bits_a
        hi = xp.rint(s)
        lo = xp.rint((s - hi) * np.float32(2.0 ** bits_a))
        stacked = xp.concatenate([hi, lo], axis=-2).astype(np.float64)
        right = xp.rint(_scaled(xp, b, bits_b - eb)).astype(np.float64)
        step = 1 << exact_dispatch.CHUNK_BITS
        parts = None
        for start in range(0, a.shape[-1], step):
            g = be.matmul(stacked[..., start:start + step], right[..., start:start + step, :]).astype(np.int64)
            parts = g if parts is None else parts + g
    return parts


def _scaled(xp, x, shift):
    """x 2^shift in float32, rounded as ldexp rounds: loom/backend/cpu/exact.py's _powers_of_two, as
    two factors always (the first exact, 1 unless 2^shift is past float32's range), so no branch
    reads the device."""
    last = xp.minimum(shift, 127)
    x = x * xp.ldexp(np.float32(1), (shift - last).astype(np.int32)).astype(np.float32)
    return x * xp.ldexp(np.float32(1), last.astype(np.int32)).astype(np.float32)


def sum(x: Array, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Array:  # noqa: A001
    """x summed over `axis` (which includes the batch axis) over every rank of the split in effect,
    exactly, rounded once to x's dtype: exact.sum's bits for the global batch."""
    from . import _log2_ceil, _slices
    from . import sum as exact_sum
    split = batch_split.current()
    if split is None or np.dtype(x.dtype).kind != "f":
        if split is not None:
            raise TypeError(f"a sum over a split batch needs floating-point values, got {x.dtype}")
        return exact_sum(x, axis=axis, keepdims=keepdims)
    be = backend.of(x)
    xp = be.xp
    axes = tuple(range(x.ndim)) if axis is None else tuple(
        a % x.ndim for a in (axis if isinstance(axis, tuple) else (axis,)))
    n = split.global_count(math.prod(x.shape[a] for a in axes))
    bits = 53 - _log2_ceil(n)
    if x.dtype == np.float32:          # the backend's kernels (the GPU's), the same arithmetic
        total = be.exact.sum_float32_across(x, axes, bits, split.collective.all_reduce)
        if total is not None:
            return total if keepdims else total.reshape(tuple(d for i, d in enumerate(x.shape) if i not in axes))
    with np.errstate(invalid="ignore"):
        x64 = x.astype(np.float64)
        finite = xp.isfinite(x64)
        special = xp.sum(xp.where(finite, 0.0, x64), axis=axes, keepdims=True)   # infinities and NaN
        x64 = xp.where(finite, x64, 0.0)
        top = xp.max(xp.abs(x64), axis=axes, keepdims=True)
        split.collective.all_reduce(top, "max")
        e, parts = _slices(xp, x64, top, bits, 1 if x.dtype.itemsize <= 4 else 2)
        totals = xp.stack([xp.sum(p, axis=axes, keepdims=True) for p in parts] + [special])
        split.collective.all_reduce(totals, "sum")      # integers below 2^53, infinities: exact
        total = totals[0] if len(parts) == 1 else totals[0] + xp.ldexp(totals[1], -bits)
        total = xp.ldexp(total, (e - bits).astype(np.int32))
        special = totals[-1]
        total = xp.where(xp.isfinite(special), total, special)
    if not keepdims:
        total = total.reshape(tuple(d for i, d in enumerate(x.shape) if i not in axes))
    return total.astype(x.dtype, copy=False)


def index_add(dst: Array, ids: Array, rows: Array) -> None:
    """dst[ids[i]] += rows[i] for the rows of every rank of the split in effect (an embedding's
    gradient): exact.index_add's bits for the global batch."""
    from . import _log2_ceil, _slices
    from . import index_add as exact_index_add
    split = batch_split.current()
    if split is None:
        exact_index_add(dst, ids, rows)
        return
    be = backend.of(rows)
    xp = be.xp
    n = split.global_count(rows.shape[0])
    bits = 53 - _log2_ceil(n)
    with np.errstate(invalid="ignore"):
        x64 = rows.astype(np.float64)
        finite = xp.isfinite(x64)
        x64 = xp.where(finite, x64, 0.0)
        top = xp.max(xp.abs(x64), axis=0, keepdims=True) if rows.shape[0] else xp.zeros((1,) + rows.shape[1:])
        split.collective.all_reduce(top, "max")
        e, parts = _slices(xp, x64, top, bits, 1 if rows.dtype.itemsize <= 4 else 2)
        totals = xp.zeros((len(parts) + 1,) + dst.shape, dtype=np.float64)
        for i, p in enumerate(parts):
            xp.add.at(totals[i], ids, p)                 # integer partial sums below 2^53: exact
        xp.add.at(totals[-1], ids, rows.astype(np.float64) - x64)   # the infinities and NaN alone
        split.collective.all_reduce(totals, "sum")
        total = totals[0] if len(parts) == 1 else totals[0] + xp.ldexp(totals[1], -bits)
        total = xp.ldexp(total, (e - bits).astype(np.int32))
        special = totals[-1]
        total = xp.where(special == 0, total, special)
    dst += total.astype(dst.dtype)
