"""Integer keys that order an array's values, so that sorts, selections and min/max run on integers.

A float's IEEE bits, with the sign bit flipped for positive values and every bit flipped for negative
ones, are an unsigned integer in the same order as the value: -inf < ... < -0 < +0 < ... < +inf. Here
NaNs (of either sign, any payload) all get one key, the largest or the smallest, and -0 may get +0's
key. Integers order exactly on every backend, so a sort, an argmin or a prefix minimum of the keys has
one answer whatever the library: no backend's own handling of NaN, of -0 against +0 (a GPU radix sort
puts -0 first and negative NaNs first; NumPy's minimum returns either zero), or of ties decides a bit.

Integer arrays are their own keys; booleans become uint8.
"""
from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType
from typing import Any

import numpy as np

from .. import backend
from ..backend import Array

_UNSIGNED = {2: np.dtype(np.uint16), 4: np.dtype(np.uint32), 8: np.dtype(np.uint64)}


def order_keys(xp: ModuleType, x: Array, *, nan_first: bool = False, zeros_equal: bool = True,
               descending: bool = False) -> Array:
    """Integer keys in x's order (ascending; descending reverses it).

    Floats: unsigned keys of their width. NaNs all share the largest key (the smallest with
    nan_first); zeros_equal gives -0 and +0 one key (they compare equal, as in NumPy), else -0's is
    the smaller. Integers: x itself; booleans: uint8. `descending` flips every bit: the order
    reverses, NaNs (largest) come first, and equal values still share a key."""
    dtype = np.dtype(x.dtype)
    if dtype == np.bool_:
        keys = x.astype(np.uint8)
    elif dtype.kind in "iu":
        keys = x
    else:
        kernels = _kernels(x)
        if kernels is not None:         # the backend's one-pass kernel: the same integers
            return kernels.keys(x, nan_first, zeros_equal, descending)
        keys = _float_keys(xp, x, nan_first, zeros_equal)
    return ~keys if descending else keys


def _kernels(x: Array):
    """The backend's OrderKernels where they take x's dtype, else None."""
    kernels = backend.of(x).order
    return kernels if kernels is not None and np.dtype(x.dtype) in kernels.DTYPES else None


def _float_keys(xp, x: Array, nan_first: bool, zeros_equal: bool) -> Array:
    ut = _UNSIGNED[x.dtype.itemsize]
    top, ones = ut.type(1 << (8 * ut.itemsize - 1)), ut.type(np.iinfo(ut).max)
    if zeros_equal:
        x = x + x.dtype.type(0)             # -0 + 0 = +0 in round to nearest: one key for both zeros
    bits = x.view(ut)
    # negative: every bit flipped (~bits); positive: the sign bit set (bits | top); both as one xor,
    # in place, so a key array costs one array of keys and two of booleans (arrays past 2^31 fit)
    keys = xp.where(bits >= top, ones, top)
    xp.bitwise_xor(keys, bits, out=keys)
    xp.copyto(keys, xp.asarray(ut.type(0) if nan_first else ones), where=xp.isnan(x))
    return keys


def float_values(xp: ModuleType, keys: Array, dtype: np.dtype, descending: bool = False) -> Array:
    """The floats of `dtype` whose keys (zeros_equal=False; descending: order_keys' descending keys)
    are `keys`; NaN keys give the canonical quiet NaN (NaN payloads are not kept: the same bits on
    every backend)."""
    dtype = np.dtype(dtype)
    keys = xp.asarray(keys)
    kernels = backend.of(keys).order
    if kernels is not None and dtype in kernels.DTYPES:
        return kernels.values(keys, dtype, descending)
    if descending:
        keys = ~keys
    top = keys.dtype.type(1 << (8 * keys.dtype.itemsize - 1))
    bits = xp.where((keys & top) != 0, keys ^ top, ~keys)
    values = bits.view(dtype)
    return xp.where(xp.isnan(values), dtype.type(np.nan), values)


def stable_argsort(xp: ModuleType, keys: Array, axis: int) -> Array:
    """Indices that sort `keys` along `axis`, equal keys in their input order (int64)."""
    try:
        return xp.argsort(keys, axis=axis, kind="stable")
    except TypeError:
        # CuPy before 14 takes no `kind`: its argsort is always stable (thrust's stable_sort_by_key)
        return xp.argsort(keys, axis=axis)


def lexsort(xp: ModuleType, keys: Sequence[Array]) -> Array:
    """Indices that sort 1-d arrays by keys[-1], then keys[-2], ... (numpy.lexsort's order) on any
    array library: one stable argsort per key, least significant first."""
    order = stable_argsort(xp, keys[0], 0)
    for key in keys[1:]:
        order = order[stable_argsort(xp, key[order], 0)]
    return order


def accumulate(xp: ModuleType, keys: Array, op: str) -> Array:
    """Running minimum or maximum of integer keys along the last axis (op "min" or "max")."""
    ufunc = xp.minimum if op == "min" else xp.maximum
    try:
        return ufunc.accumulate(keys, axis=-1)
    except (NotImplementedError, AttributeError):
        # CuPy's ufunc.accumulate takes only add and multiply: the same integers by doubling
        return doubling_scan(ufunc, keys)


def doubling_scan(ufunc: Any, keys: Array) -> Array:
    """Inclusive scan of an associative ufunc (minimum, maximum) along the last axis in ceil(log2 n)
    whole-array steps (Hillis and Steele): after the step of width s, entry i combines entries
    i - 2s + 1 .. i. On integer keys any grouping gives the sequential scan's result."""
    out = keys.copy()
    n = out.shape[-1]
    step = 1
    while step < n:
        out[..., step:] = ufunc(out[..., step:], out[..., :-step])    # the right side is a new array
        step *= 2
    return out
