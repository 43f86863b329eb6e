"""Tier 1 of the compute engine: one-call patterns, exported at the top level (loom.sum, loom.sort, ...).

Each takes NumPy or CuPy arrays (lists and Python scalars become NumPy arrays) and runs where its input
lives, returning arrays of the same library (reductions over every axis return 0-d arrays). The dtypes
are bool, int8..int64, uint8..uint64 and float16/32/64; others (complex, object, strings, dates) raise
ShapeError naming the dtype. Bad parameters (an unknown op, a k out of range) raise ConfigError naming
them.

Determinism. In deterministic mode (loom.mode, the default) every result has the same bits on every
backend:
- sum, mean and the sum scan are exact and order-independent (loom.kernels.exact: each float rounded
  to a shared power-of-two grid, summed exactly as integers, rounded once); fast mode uses the
  library's own sums. Integer sums are exact in both modes, in np.sum's accumulator dtype.
- min, max, argmin, argmax, the min/max scans, sort, argsort and topk work on integer order keys
  (order_keys.py) in both modes, so they are exact and NaN and the zeros' signs are treated one way
  everywhere.
- map's transcendentals are Loom's math library (loom.kernels.mathlib); fast mode uses the library's.
  Its other operations are correctly rounded IEEE arithmetic in both modes.
- matmul is loom.kernels.ops.matmul: the exact GEMM in deterministic mode, BLAS in fast mode.

NaN and zeros. min and max return NaN when a NaN is present (the canonical quiet NaN), like NumPy, and
the min of -0 and +0 is -0, their max +0 (IEEE 754-2019's minimum and maximum; NumPy's answer depends
on its SIMD path). argmin and argmax return the first NaN's index when there is one, else the first
index of the extreme, -0 and +0 being equal (NumPy's rule). Sorting: sorting.py.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from ..backend import Array
from ..errors import BackendError, ConfigError, ShapeError
from ..kernels import ops
from ..mode import is_deterministic
from . import pattern_inputs as args
from .histogram import histogram
from .order_keys import accumulate, float_values, order_keys
from .sorting import argsort, sort, topk

__all__ = ["sum", "mean", "min", "max", "argmin", "argmax", "map", "scan", "sort", "argsort", "topk",
           "histogram", "matmul", "MAP_OPS", "SCAN_OPS"]

SCAN_OPS = ("sum", "min", "max")


# --- reductions ------------------------------------------------------------------------------------

def sum(x: Any, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Array:  # noqa: A001
    """x summed over `axis` (None: all), like np.sum. Floats keep their dtype: in deterministic mode
    the exact sum rounded once (the same bits on CPU and GPU, whatever the order of the terms), in
    fast mode the library's sum. Integers and bools sum exactly in np.sum's accumulator (int64, or
    uint64 for unsigned types), wrapping on overflow as NumPy does. An empty sum is 0."""
    x, be = args.array_of(x, "loom.sum")
    reduced = args.axes(axis, x.ndim, "loom.sum")
    xp = be.xp
    if not args.is_float(x):
        return xp.asarray(xp.sum(x, axis=reduced, dtype=args.accumulator(x.dtype), keepdims=keepdims))
    if not reduced:
        return x.copy()
    return xp.asarray(ops.sum(x, axis=reduced, keepdims=keepdims))


def mean(x: Any, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Array:
    """The mean over `axis` (None: all): sum (above) divided by the count, rounded once more. float32
    and float64 keep their dtype; float16 is summed and divided in float32, then rounded to float16
    (NumPy also uses float32 there); integers and bools give float64 (the exact sum of their float64
    values, as np.mean gives float64). The mean of nothing is NaN (NumPy warns as well)."""
    x, be = args.array_of(x, "loom.mean")
    reduced = args.axes(axis, x.ndim, "loom.mean")
    xp = be.xp
    out_dtype = x.dtype if args.is_float(x) else np.dtype(np.float64)
    work = x.astype(np.float32 if out_dtype == np.float16 else out_dtype, copy=False)
    count = math.prod(x.shape[a] for a in reduced)
    total = ops.sum(work, axis=reduced, keepdims=keepdims) if reduced else work
    with np.errstate(invalid="ignore", divide="ignore"):        # 0 / 0: the NaN asked for
        return xp.asarray(total / work.dtype.type(count)).astype(out_dtype, copy=False)


def min(x: Any, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Array:  # noqa: A001
    """The minimum over `axis` (None: all), like np.min: NaN if any value is NaN, -0 as the min of
    -0 and +0. An empty reduction raises ShapeError (NumPy raises ValueError; ShapeError is one)."""
    return _extreme(x, axis, keepdims, "min")


def max(x: Any, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Array:  # noqa: A001
    """The maximum over `axis` (None: all), like np.max: NaN if any value is NaN, +0 as the max of
    -0 and +0. An empty reduction raises ShapeError."""
    return _extreme(x, axis, keepdims, "max")


def _extreme(x, axis, keepdims, op):
    what = f"loom.{op}"
    x, be = args.array_of(x, what)
    reduced = args.axes(axis, x.ndim, what)
    args.nonempty(x, reduced, what)
    xp = be.xp
    reduce = xp.min if op == "min" else xp.max
    if not args.is_float(x):
        return xp.asarray(reduce(x, axis=reduced, keepdims=keepdims))
    # NaN's key is the smallest for min, the largest for max: it wins, as NaN propagates in NumPy
    keys = order_keys(xp, x, nan_first=op == "min", zeros_equal=False)
    return float_values(xp, reduce(keys, axis=reduced, keepdims=keepdims), x.dtype)


def argmin(x: Any, axis: int | None = None, keepdims: bool = False) -> Array:
    """int64 index of the minimum along `axis` (None: of the flattened array), like np.argmin: the
    first NaN's if there is a NaN, else the first minimum's (-0 and +0 equal). An empty axis raises
    ShapeError."""
    return _arg_extreme(x, axis, keepdims, "argmin")


def argmax(x: Any, axis: int | None = None, keepdims: bool = False) -> Array:
    """int64 index of the maximum along `axis` (None: flattened), like np.argmax: the first NaN's if
    there is a NaN, else the first maximum's. An empty axis raises ShapeError."""
    return _arg_extreme(x, axis, keepdims, "argmax")


def _arg_extreme(x, axis, keepdims, op):
    what = f"loom.{op}"
    x, be = args.array_of(x, what)
    xp = be.xp
    if axis is not None:
        axis = args.one_axis(axis, x.ndim, what)
    args.nonempty(x, args.axes(axis, x.ndim, what), what)
    # integer keys: ties (-0 and +0, all NaNs) are equal keys, and every library returns the first
    keys = order_keys(xp, x, nan_first=op == "argmin")
    reduce = xp.argmin if op == "argmin" else xp.argmax
    return xp.asarray(reduce(keys, axis=axis, keepdims=keepdims)).astype(np.int64, copy=False)


# --- scans -----------------------------------------------------------------------------------------

def scan(x: Any, op: str = "sum", inclusive: bool = True, axis: int | None = -1) -> Array:
    """Prefix sums, minima or maxima of x along `axis` (None: the flattened array).

    inclusive: entry i combines entries 0..i; exclusive (inclusive=False): entries 0..i-1, the first
    being the identity (0; +inf or the dtype's largest value for min; -inf or its smallest for max).

    op "sum": floats in deterministic mode with loom.kernels.exact.cumsum: each element is first
    rounded to the grid of 2^(e - 53 + ceil(log2 n)) (2 slices of that many bits for float64), where
    2^e bounds the axis' largest magnitude, then every prefix sum is exact and rounded once. So it is
    order-independent and the same on every backend, exact-then-rounded-once where no element is
    below that grid, and it can differ from np.cumsum, which rounds after every addition. Fast mode:
    the library's cumsum. Integers and bools: exact, in np.cumsum's accumulator (int64 / uint64).
    op "min" / "max": exact, in x's dtype, NaN propagating from its position on, -0 below +0 (as
    loom.min and loom.max)."""
    if op not in SCAN_OPS:
        raise ConfigError("op", f"expected one of {', '.join(SCAN_OPS)}, got {op!r}")
    x, be = args.array_of(x, "loom.scan")
    xp = be.xp
    if axis is None:
        x = x.reshape(-1)
        axis = 0
    if x.ndim == 0:
        raise ShapeError("loom.scan: a 0-d array has no axis to scan along; pass axis=None")
    axis = args.one_axis(axis, x.ndim, "loom.scan")
    if op == "sum":
        if args.is_float(x):
            out = ops.cumsum(x, axis=axis) if x.size else x.copy()
        else:
            out = xp.cumsum(x, axis=axis, dtype=args.accumulator(x.dtype))
        identity = 0
    else:
        out = _minmax_scan(xp, x, axis, op)
        identity = _identity(out.dtype, op)
    return out if inclusive else _exclusive(xp, out, axis, identity)


def _minmax_scan(xp, x, axis, op):
    if x.size == 0:
        return x.copy()
    keys = order_keys(xp, x, nan_first=op == "min", zeros_equal=False)
    out = xp.moveaxis(accumulate(xp, xp.moveaxis(keys, axis, -1), op), -1, axis)
    if args.is_float(x):
        return float_values(xp, out, x.dtype)
    return out.astype(x.dtype, copy=False)         # bool keys were uint8


def _identity(dtype, op):
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return np.inf if op == "min" else -np.inf
    if dtype == np.bool_:
        return op == "min"
    info = np.iinfo(dtype)
    return info.max if op == "min" else info.min


def _exclusive(xp, inclusive, axis, identity):
    n = inclusive.shape[axis]
    if n == 0:
        return inclusive
    head = list(inclusive.shape)
    head[axis] = 1
    first = xp.full(tuple(head), inclusive.dtype.type(identity), dtype=inclusive.dtype)
    rest = xp.take(inclusive, xp.arange(n - 1), axis=axis)
    return xp.concatenate([first, rest], axis=axis)


# --- map -------------------------------------------------------------------------------------------

# Loom's math library: the same bits on every backend in deterministic mode
_TRANSCENDENTAL = ("exp", "log", "log1p", "expm1", "tanh", "sigmoid", "softplus", "silu", "erf", "gelu",
                   "gelu_tanh", "sin", "cos")
_INV_SQRT2 = 1 / math.sqrt(2)
_TANH_C, _TANH_K = math.sqrt(2 / math.pi), 0.044715
_FAST: dict[str, Callable] = {             # fast mode: the library's functions (ops switches by mode)
    "exp": lambda xp, x: xp.exp(x), "log": lambda xp, x: xp.log(x), "log1p": lambda xp, x: xp.log1p(x),
    "expm1": lambda xp, x: xp.expm1(x), "tanh": lambda xp, x: xp.tanh(x), "sin": lambda xp, x: xp.sin(x),
    "cos": lambda xp, x: xp.cos(x), "sigmoid": lambda xp, x: ops.sigmoid(x),
    "softplus": lambda xp, x: ops.softplus(x), "erf": lambda xp, x: ops.erf(x),
    "silu": lambda xp, x: x * ops.sigmoid(x),
    "gelu": lambda xp, x: 0.5 * x * (1 + ops.erf(x * _INV_SQRT2)),
    "gelu_tanh": lambda xp, x: 0.5 * x * (1 + xp.tanh(_TANH_C * (x + _TANH_K * x * x * x))),
}
# correctly rounded or exact on every backend, in both modes: (NumPy's function, for the result dtype
# by NumPy's rules, and the computation on x's library)
_UNARY: dict[str, tuple[Callable, Callable]] = {
    "abs": (np.abs, lambda xp, x: xp.abs(x)),
    "neg": (np.negative, lambda xp, x: xp.negative(x)),
    "square": (np.square, lambda xp, x: x * x),
    "sqrt": (np.sqrt, lambda xp, x: xp.sqrt(x)),
    "reciprocal": (lambda x: np.true_divide(1, x), lambda xp, x: x.dtype.type(1) / x),
    "floor": (np.floor, lambda xp, x: xp.floor(x)),
    "ceil": (np.ceil, lambda xp, x: xp.ceil(x)),
    "trunc": (np.trunc, lambda xp, x: xp.trunc(x)),
    "rint": (np.rint, lambda xp, x: xp.rint(x)),
    "relu": (lambda x: x, lambda xp, x: xp.where(x <= 0, x.dtype.type(0), x)),
}
_BINARY: dict[str, tuple[Callable, Callable]] = {       # x op scalar
    "add": (np.add, lambda xp, x, s: x + s),
    "sub": (np.subtract, lambda xp, x, s: x - s),
    "mul": (np.multiply, lambda xp, x, s: x * s),
    "div": (np.true_divide, lambda xp, x, s: x / s),
    "maximum": (np.maximum, lambda xp, x, s: xp.where((x > s) | _nan(xp, x), x, s)),
    "minimum": (np.minimum, lambda xp, x, s: xp.where((x < s) | _nan(xp, x), x, s)),
    "pow": (np.power, lambda xp, x, s: xp.power(x, s)),
}
MAP_OPS = tuple(sorted((*_TRANSCENDENTAL, *_UNARY, *_BINARY)))


def map(x: Any, op: str, *operands: Any) -> Array:  # noqa: A001
    """op applied to every element of x; the result has NumPy's dtype for it (np.exp of an integer
    array is a float array, an int8 array times 2 stays int8, times 2.5 is float64).

    Unary ops: exp, log, log1p, expm1, tanh, sigmoid, softplus, silu, erf, gelu, gelu_tanh, sin, cos
    (Loom's math library in deterministic mode, the same bits on CPU and GPU; the library's functions
    in fast mode; float16 is computed in float32 and rounded), and abs, neg, square, sqrt, reciprocal,
    floor, ceil, trunc, rint and relu (x where x > 0, else +0; NaN stays NaN), exact or correctly
    rounded in both modes. With one scalar operand s: add, sub, mul, div (x op s), maximum and minimum
    (a NaN on either side propagates; on a tie, -0 against +0, the result is s, as NumPy's float32
    and float64 loops give) and pow (x ** s; Loom's pow for floats in
    deterministic mode). An unknown op raises ConfigError listing the valid names."""
    x, be = args.array_of(x, "loom.map")
    xp = be.xp
    if op in _TRANSCENDENTAL or op in _UNARY:
        if operands:
            raise ConfigError("operands", f"{op} takes no operand, got {len(operands)}")
        if op in _UNARY:
            reference, compute = _UNARY[op]
            dtype = _result_dtype(reference, x.dtype, op)
            with np.errstate(all="ignore"):              # sqrt(-1), 1 / 0: IEEE's answers, as on a GPU
                return compute(xp, x.astype(_work(dtype), copy=False)).astype(dtype, copy=False)
        return _transcendental(xp, op, x)
    if op not in _BINARY:
        raise ConfigError("op", f"unknown op {op!r}; expected one of {', '.join(MAP_OPS)}")
    if len(operands) != 1 or not isinstance(operands[0], (int, float, np.integer, np.floating)) \
            or isinstance(operands[0], (bool, np.bool_)):
        raise ConfigError("operands", f"{op} takes one real scalar operand, got {operands!r}")
    s = operands[0]
    reference, compute = _BINARY[op]
    dtype = _result_dtype(reference, x.dtype, op, s)
    work = _work(dtype)
    xs, ss = x.astype(work, copy=False), work.type(dtype.type(s))      # s rounded to dtype first, as NumPy
    with np.errstate(all="ignore"):                     # overflow, 0 / 0: IEEE's answers, as on a GPU
        if op == "pow" and dtype.kind == "f" and is_deterministic():
            y = ops.canonical("pow", xs, xp.full(x.shape, ss, dtype=work))
        else:
            y = compute(xp, xs, ss)
        return y.astype(dtype, copy=False)


def _work(dtype) -> np.dtype:
    """float16 is computed in float32 and rounded once more, as NumPy does: for + - * / and sqrt
    the double rounding cannot change a bit (24 >= 2 * 11 + 2 bits), so the result is NumPy's."""
    return np.dtype(np.float32) if dtype == np.float16 else np.dtype(dtype)


def _transcendental(xp, op, x):
    dtype = np.result_type(x.dtype, np.float16)          # NumPy's float type for x (ints: by width)
    work = x.astype(_work(dtype), copy=False)
    with np.errstate(all="ignore"):                      # log(0), exp overflow: IEEE's answers
        y = ops.canonical(op, work) if is_deterministic() else _FAST[op](xp, work)
        return y.astype(dtype, copy=False)


def _nan(xp, x):
    return xp.isnan(x) if x.dtype.kind == "f" else xp.zeros(x.shape, dtype=bool)


def _result_dtype(reference, dtype, op, *scalars) -> np.dtype:
    """The dtype NumPy's `reference` gives for an array of `dtype` (and the scalars, NumPy 2's rules);
    the errors NumPy raises there (a negative integer power, a scalar out of an integer's range, neg
    of bool) as typed ones."""
    try:
        with np.errstate(all="ignore"):
            return np.dtype(reference(np.ones(1, dtype), *scalars).dtype)
    except (TypeError, OverflowError, ValueError) as exc:
        if scalars:
            raise ConfigError("operands", f"{op} of a {dtype} array and {scalars[0]!r}: {exc}") from None
        raise ShapeError(f"loom.map: {op} does not take dtype {dtype}: {exc}") from None


# --- matmul ----------------------------------------------------------------------------------------

def matmul(a: Any, b: Any) -> Array:
    """a @ b with NumPy's broadcasting over leading dimensions (loom.kernels.ops.matmul): in
    deterministic mode float products are exact sums rounded once (the same bits on CPU and GPU),
    in fast mode the backend's BLAS. Both operands must live on one backend (BackendError otherwise)."""
    a, be = args.array_of(a, "loom.matmul")
    b, be_b = args.array_of(b, "loom.matmul")
    if be_b is not be:
        raise BackendError(f"loom.matmul: a lives on {be.name}, b on {be_b.name}; move one of them first")
    if a.ndim == 0 or b.ndim == 0:
        raise ShapeError(f"loom.matmul: operands must have at least one dimension, got shapes {a.shape} "
                         f"and {b.shape}")
    return ops.matmul(a, b)

