"""Sorting patterns: loom.sort, loom.argsort and loom.topk.

Every one is stable and gives the same result on every backend. The order is NumPy's: ascending,
-0 and +0 equal (so they keep their input order), NaNs after +inf, all NaNs equal (in their input
order). `descending=True` (and topk's `largest=True`) is that order reversed but still stable: NaNs
first, then +inf down to -inf, equal values in their input order (what torch.sort(descending=True,
stable=True) gives, and np.sort(x)[::-1] apart from the order of equal values).

The work runs on integer keys (order_keys.py), so neither the library's treatment of NaN and of the
zeros' signs nor its choice of sorting algorithm can change a result, and each value keeps its own bits
(-0 stays -0, NaN payloads stay). argsort and topk sort the keys stably with their indices; sort sorts
the keys alone (distinct for -0 and +0, one for every NaN: 4x faster than an argsort and a gather of
2^28 float32 on an H100), turns them back into values, and where the result holds a -0 or a NaN puts
the input's zeros and NaNs back into their runs in input order.

Where the backend has sort kernels that take the array (`backend.sorts`: the GPU's radix sorts), they
do all of it instead, computing the same keys from the values' bits inside each pass.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .. import backend
from ..backend import Array
from ..errors import ConfigError, ShapeError
from . import pattern_inputs as args
from .order_keys import float_values, order_keys, stable_argsort

_PARTITION_RATIO = 8        # topk selects by partition when k <= n / 8, else sorts the whole axis


def sort(x: Any, axis: int | None = -1, *, descending: bool = False) -> Array:
    """A sorted copy of x along `axis` (None: the flattened array), stable: ascending as np.sort, NaNs
    last (after +inf, each NaN as it was), -0 and +0 equal (each keeps its sign and its place among
    equals). descending=True: NaNs first, then +inf down to -inf, equal values still in input order.
    The same result on every backend.

    Takes bool, int8..int64, uint8..uint64 and float16/32/64 arrays of any backend (lists become NumPy
    arrays); other dtypes raise ShapeError naming the dtype; a 0-d array needs axis=None."""
    x, xp, axis = _prepared(x, axis, "loom.sort")
    radix = _radix(x, axis)
    if radix is not None:
        return _back(xp, radix.sort(xp.moveaxis(x, axis, -1), descending), axis)
    if not args.is_float(x):
        # equal integers are identical: no order among them to keep, and no gather needed
        out = xp.sort(x, axis=axis)
        return xp.ascontiguousarray(xp.flip(out, axis=axis)) if descending else out
    keys = xp.sort(order_keys(xp, x, zeros_equal=False, descending=descending), axis=axis)
    out = float_values(xp, keys, x.dtype, descending)
    _restore_ties(xp, xp.moveaxis(out, axis, -1), xp.moveaxis(x, axis, -1), descending)
    return out


def _restore_ties(xp, out: Array, x: Array, descending: bool) -> None:
    """Put x's zeros and NaNs, in input order, into the runs they sort to in out (both along the last
    axis; out writable): each row holds as many of them in out as in x, and boolean indexing lists
    them row by row, so the two lists line up. Skipped where out's zeros are all +0 (then already
    right) or it has no NaN. A backend's restore kernel does it in two passes over x."""
    kernels = backend.of(out).order
    if kernels is not None and np.dtype(out.dtype) in kernels.DTYPES:
        if out.flags.c_contiguous and x.flags.c_contiguous:
            kernels.restore(out, x, descending)
            return
        if not kernels.ties(out):
            return                      # (one pass over out on the GPU instead of four)
    zeros = out == 0
    if bool(xp.any(zeros & xp.signbit(out))):
        out[zeros] = x[x == 0]
    nans = xp.isnan(out)
    if bool(xp.any(nans)):
        out[nans] = x[xp.isnan(x)]


def argsort(x: Any, axis: int | None = -1, *, descending: bool = False) -> Array:
    """int64 indices that sort x along `axis` (None: the flattened array), stable, in sort's order:
    np.argsort(x, kind="stable")'s indices (NaNs last); descending=True: NaNs first, largest to
    smallest. Equal values (-0 and +0 too, and all NaNs) keep their input order. Same dtypes as sort."""
    x, xp, axis = _prepared(x, axis, "loom.argsort")
    radix = _radix(x, axis)
    if radix is not None:
        return _back(xp, radix.argsort(xp.moveaxis(x, axis, -1), descending), axis)
    return stable_argsort(xp, order_keys(xp, x, descending=descending), axis)


def topk(x: Any, k: int, *, largest: bool = True, axis: int = -1) -> tuple[Array, Array]:
    """(values, indices) of the k largest (largest=False: smallest) entries along `axis`, sorted
    (largest first, or smallest first), ties broken by the smaller index: exactly the first k of
    argsort(x, descending=largest) along `axis`, on every backend.

    NaN is the largest value, as NumPy's sort orders it: topk(largest=True) returns NaNs first, and
    largest=False reaches them only after every number. k must be an integer with 0 <= k <= n (the
    axis' length), else ConfigError naming k. Values are gathered from x (their own bits); indices are
    int64. Small k (k <= n / 8) selects the k keys with one partition before sorting them, O(n) work
    instead of a full sort, with the same result."""
    x, xp, axis = _prepared(x, axis, "loom.topk")
    n = x.shape[axis]
    k = args.integer(k, "k")
    if not 0 <= k <= n:
        raise ConfigError("k", f"expected 0 <= k <= {n} (the length of axis {axis}), got {k}")
    radix = _radix(x, axis)
    if k == 0:
        picked = xp.zeros(x.shape[:axis] + x.shape[axis + 1:] + (0,), dtype=np.int64)
    elif radix is not None and (k * _PARTITION_RATIO > n or n <= radix.ROW_TILE):
        # (rows a block sorts whole: faster than the partition)
        picked = radix.argsort(xp.moveaxis(x, axis, -1), largest)[..., :k]
    else:
        keys = xp.moveaxis(order_keys(xp, x, descending=largest), axis, -1)
        picked = _select(xp, keys, k) if k * _PARTITION_RATIO <= n else stable_argsort(xp, keys, -1)[..., :k]
    indices = xp.ascontiguousarray(xp.moveaxis(picked, -1, axis))
    return xp.take_along_axis(x, indices, axis=axis), indices


def _select(xp, keys: Array, k: int) -> Array:
    """The first k of a stable argsort of keys along the last axis, without sorting all of it: the
    k-th smallest key t of each row (a partition: exact on integers), every index with a key below t
    and the first ones (in index order) with key t, then those k sorted stably."""
    n = keys.shape[-1]
    kth = xp.partition(keys, k - 1, axis=-1)[..., k - 1:k]
    below = keys < kth
    room = k - xp.sum(below, axis=-1, keepdims=True, dtype=np.int64)
    tied = keys == kth
    take = below | (tied & (xp.cumsum(tied, axis=-1, dtype=np.int64) <= room))
    # every row takes exactly k entries; nonzero lists them row by row, each row's in index order
    columns = xp.nonzero(take.reshape(-1, n))[1].reshape(keys.shape[:-1] + (k,))
    order = stable_argsort(xp, xp.take_along_axis(keys, columns, axis=-1), -1)
    return xp.take_along_axis(columns, order, axis=-1)


def _radix(x: Array, axis: int):
    """The backend's sort kernels where they take x sorted along axis, else None."""
    kernels = backend.of(x).sorts
    return kernels if kernels is not None and kernels.takes(x.swapaxes(axis, -1)) else None


def _back(xp, out: Array, axis: int) -> Array:
    """A result along the last axis moved back to `axis`, C-contiguous."""
    return out if axis == out.ndim - 1 else xp.ascontiguousarray(xp.moveaxis(out, -1, axis))


def _prepared(x: Any, axis: int | None, what: str):
    """(x, its array module, the axis as a non-negative int); axis None flattens x."""
    x, be = args.array_of(x, what)
    if axis is None:
        x = x.reshape(-1)
        axis = 0
    if x.ndim == 0:
        raise ShapeError(f"{what}: a 0-d array has no axis {axis} to sort along; pass axis=None")
    return x, be.xp, args.one_axis(axis, x.ndim, what)
