"""The arguments of the one-call patterns (patterns.py, sorting.py, histogram.py): arrays of any backend
or Python lists and scalars, the dtypes the patterns take, axes and counts, each bad one a typed error
naming it.

Arrays stay where they live: a NumPy array runs on the CPU, a CuPy array on its GPU (the backend that
`loom.backend.of` names), and lists, tuples and Python or NumPy scalars become NumPy arrays.
"""
from __future__ import annotations

import math
import operator
from typing import Any

import numpy as np

from .. import backend
from ..backend import Array, Backend
from ..errors import ConfigError, ShapeError

FLOATS = tuple(np.dtype(t) for t in (np.float16, np.float32, np.float64))
INTEGERS = tuple(np.dtype(t) for t in (np.int8, np.int16, np.int32, np.int64,
                                       np.uint8, np.uint16, np.uint32, np.uint64))
BOOL = np.dtype(np.bool_)
REAL = (BOOL, *INTEGERS, *FLOATS)          # what every pattern takes: no complex, object, strings, dates


def array_of(x: Any, what: str, dtypes: tuple = REAL) -> tuple[Array, Backend]:
    """(x as an array of its own backend, that backend); lists, tuples and scalars become NumPy arrays.
    ShapeError names `what` (the pattern) and the dtype when x's dtype is not among `dtypes`;
    BackendError when no backend owns x."""
    if isinstance(x, (list, tuple, int, float, bool, np.generic)):
        x = np.asarray(x)
    be = backend.of(x)
    check_dtype(x, what, dtypes)
    return x, be


def check_dtype(x: Array, what: str, dtypes: tuple = REAL) -> None:
    dtype = np.dtype(x.dtype)
    if dtype not in dtypes:
        names = ", ".join(str(d) for d in dtypes)
        raise ShapeError(f"{what}: unsupported dtype {dtype}; expected one of {names}")


def is_float(x: Array) -> bool:
    return np.dtype(x.dtype) in FLOATS


def accumulator(dtype: np.dtype) -> np.dtype:
    """The dtype np.sum gives for `dtype`: int64 or uint64 for narrower integers and bool."""
    return np.sum(np.zeros(1, dtype)).dtype


def axes(axis: Any, ndim: int, what: str) -> tuple[int, ...]:
    """axis (None: all, an int or a tuple of ints, negative from the end) as sorted non-negative ints."""
    if axis is None:
        return tuple(range(ndim))
    items = axis if isinstance(axis, tuple) else (axis,)
    out = tuple(sorted(one_axis(a, ndim, what) for a in items))
    if len(set(out)) != len(out):
        raise ShapeError(f"{what}: axis {axis!r} repeats an axis")
    return out


def one_axis(axis: Any, ndim: int, what: str) -> int:
    """One axis as a non-negative int; ShapeError when the array has no such axis."""
    a = integer(axis, "axis")
    if not -ndim <= a < ndim:
        raise ShapeError(f"{what}: axis {a} is out of bounds for an array of {ndim} dimension"
                         f"{'' if ndim == 1 else 's'}")
    return a % ndim


def integer(value: Any, name: str) -> int:
    """value as a Python int (any integer type, not bool, not float), else ConfigError naming it."""
    if isinstance(value, (bool, np.bool_)):
        raise ConfigError(name, f"expected an integer, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise ConfigError(name, f"expected an integer, got {value!r} ({type(value).__name__})") from None


def nonempty(x: Array, reduced: tuple[int, ...], what: str) -> None:
    """ShapeError (a ValueError, as NumPy raises) when a reduction without an identity has nothing to
    reduce: a reduced axis of length 0."""
    if math.prod(x.shape[a] for a in reduced) == 0:
        raise ShapeError(f"{what}: cannot reduce an empty array (shape {x.shape}, axes {reduced}); "
                         f"it has no identity")
