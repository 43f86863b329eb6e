"""loom.histogram: np.histogram's counts and edges, on the array's own backend.

The edges are NumPy's own: computed on the host by the same NumPy calls np.histogram makes (a few
scalars: the range, its dtype, np.linspace), then sent to the device. The bin of every value is found
with np.histogram's arithmetic, each step in the dtype NumPy uses for it (chosen on the host by
NumPy's promotion rules, then applied explicitly, so no library's own promotion takes part):
  equal bins:   i = int((x - first) / (last - first) * bins), then moved down one where
                x < edges[i] and up one where x >= edges[i + 1] (the last bin includes its right edge);
  given edges:  bin i holds edges[i] <= x < edges[i + 1], the last bin edges[-2] <= x <= edges[-1].
Only subtraction, division and multiplication, each correctly rounded, and comparisons take part, so
every backend finds the same bins as NumPy, and integer counts (bincount) have no order to depend on.
Values outside the range and NaNs are not counted.
"""
from __future__ import annotations

import builtins
from typing import Any

import numpy as np

from ..backend import Array, Backend
from ..errors import ConfigError, ShapeError
from . import pattern_inputs as args
from .order_keys import float_values, order_keys

_DTYPES = (*args.INTEGERS, *args.FLOATS, args.BOOL)


def histogram(x: Any, bins: Any = 10, range: tuple[float, float] | None = None) -> tuple[Array, Array]:  # noqa: A002
    """(counts, edges) of x (flattened) as np.histogram(x, bins, range) gives them: `bins` a
    positive number of equal bins over `range` (default: x's min and max, widened by 0.5 each way
    when they are equal; [0, 1] for an empty x), or a 1-D array of monotonically increasing edges
    (then `range` is not used). counts are int64 on x's backend, edges on x's backend in NumPy's
    dtype. Booleans are counted as uint8 (NumPy converts them too). Bad bins or range raise
    ConfigError naming them; an automatically found range that is not finite (x holds NaN or inf)
    raises ShapeError."""
    x, be = args.array_of(x, "loom.histogram", _DTYPES)
    if x.dtype == np.bool_:
        x = x.astype(np.uint8)
    x = x.reshape(-1)
    if isinstance(bins, str):
        raise ConfigError("bins", f"expected a number of bins or an array of edges, got {bins!r} "
                                  f"(automatic bin estimators are not supported)")
    if np.ndim(bins) == 0:
        n = args.integer(bins, "bins")
        if n < 1:
            raise ConfigError("bins", f"expected a positive number of bins, got {n}")
        first, last = _outer_edges(be, x, range)
        return _equal_bins(be, x, n, first, last)
    return _given_edges(be, x, bins)


def _outer_edges(be: Backend, x: Array, range: Any) -> tuple[Any, Any]:  # noqa: A002
    """np.histogram's first and last edge, as the same NumPy scalars (their types pick the dtypes)."""
    if range is not None:
        try:
            first, last = range
        except (TypeError, ValueError):
            raise ConfigError("range", f"expected (lower, upper), got {range!r}") from None
        if first > last:
            raise ConfigError("range", f"expected lower <= upper, got {range!r}")
        if not (np.isfinite(first) and np.isfinite(last)):
            raise ConfigError("range", f"expected finite bounds, got {range!r}")
    elif x.size == 0:
        first, last = 0, 1
    else:
        first, last = (_extreme(be, x, op) for op in ("min", "max"))
        if not (np.isfinite(first) and np.isfinite(last)):
            raise ShapeError(f"loom.histogram: the range found in the data, [{first}, {last}], is not "
                             f"finite; pass range=(lower, upper) to count the finite values")
    if first == last:
        first, last = first - 0.5, last + 0.5
    return first, last


def _extreme(be: Backend, x: Array, op: str):
    """x's min or max as a NumPy scalar of x's dtype (floats through order keys: -0 is the min of
    the two zeros on every backend)."""
    xp = be.xp
    reduce = xp.min if op == "min" else xp.max
    if args.is_float(x):
        value = float_values(xp, reduce(order_keys(xp, x, nan_first=op == "min", zeros_equal=False)), x.dtype)
    else:
        value = reduce(x)
    return be.to_numpy(xp.asarray(value))[()]


def _equal_bins(be: Backend, x: Array, n: int, first: Any, last: Any) -> tuple[Array, Array]:
    xp = be.xp
    probe = np.empty(0, x.dtype)
    bin_type = np.result_type(first, last, probe)
    if np.issubdtype(bin_type, np.integer):
        bin_type = np.result_type(bin_type, float)
    edges = np.linspace(first, last, n + 1, endpoint=True, dtype=bin_type)
    if np.any(edges[:-1] >= edges[1:]):
        raise ConfigError("bins", f"too many bins ({n}) for the range [{first}, {last}]: the edges "
                                  f"do not increase in {bin_type}")
    d_edges = be.asarray(edges)
    if x.size == 0:
        return xp.zeros(n, dtype=np.int64), d_edges
    keep = _compare(xp, x, first, "ge") & _compare(xp, x, last, "le")
    # values outside are counted nowhere; they first stand in as the first edge, so that every
    # index below is in range
    value = xp.where(keep, x.astype(bin_type, copy=False), edges[0])
    sub_type = np.result_type(np.empty(0, bin_type), first)
    denom = _unsigned_subtract(last, first)
    div_type = (np.empty(0, sub_type) / denom).dtype
    mul_type = (np.empty(0, div_type) * n).dtype
    f = xp.subtract(value.astype(sub_type, copy=False), np.asarray(first).astype(sub_type)[()])
    f = f.astype(div_type, copy=False) / div_type.type(denom)
    f = f.astype(mul_type, copy=False) * mul_type.type(n)
    index = f.astype(np.int64)
    index = xp.where(index == n, n - 1, index)
    index = index - (value < d_edges[index]).astype(np.int64)
    index = index + ((value >= d_edges[index + 1]) & (index != n - 1)).astype(np.int64)
    return _counts(xp, xp.where(keep, index, n), n), d_edges


def _given_edges(be: Backend, x: Array, bins: Any) -> tuple[Array, Array]:
    xp = be.xp
    if isinstance(bins, (list, tuple, np.ndarray)):
        edges = np.asarray(bins)
    else:
        edges = be.to_numpy(args.array_of(bins, "loom.histogram bins")[0])
    if edges.ndim != 1:
        raise ConfigError("bins", f"expected a number of bins or a 1-D array of edges, got shape {edges.shape}")
    args.check_dtype(edges, "loom.histogram bins", (*args.INTEGERS, *args.FLOATS))
    if np.any(edges[:-1] > edges[1:]):
        raise ConfigError("bins", f"edges must increase monotonically, got {edges.tolist()[:8]}...")
    nb = edges.size - 1
    if nb < 1 or x.size == 0:
        return xp.zeros(builtins.max(nb, 0), dtype=np.int64), be.asarray(edges)
    common = np.result_type(x.dtype, edges.dtype)
    value = x.astype(common, copy=False)
    d_edges = be.asarray(edges.astype(common))
    index = xp.searchsorted(d_edges, value, side="right") - 1          # the last edge <= value
    index = xp.where(value == d_edges[-1], nb - 1, index)              # the last bin holds its right edge
    keep = (index >= 0) & (index < nb)
    if common.kind == "f":
        keep &= ~xp.isnan(value)
    return _counts(xp, xp.where(keep, index, nb), nb), be.asarray(edges)


def _counts(xp, index: Array, n: int) -> Array:
    """How many of `index` fall in each of 0 .. n - 1 (index n: not counted)."""
    return xp.bincount(index, minlength=n + 1)[:n].astype(np.int64)


def _compare(xp, x: Array, bound: Any, op: str) -> Array:
    """x >= bound (op "ge") or x <= bound ("le") as NumPy 2 compares an array with a scalar: in the
    promoted dtype, a Python int outside an integer dtype's range compared exactly."""
    if x.dtype.kind in "iu" and isinstance(bound, int) and not isinstance(bound, np.integer):
        info = np.iinfo(x.dtype)
        if not info.min <= bound <= info.max:
            return xp.full(x.shape, (bound < info.min) == (op == "ge"), dtype=bool)
    dtype = np.result_type(np.empty(0, x.dtype), bound)
    value = x.astype(dtype, copy=False)
    b = np.asarray(bound).astype(dtype)[()]
    return value >= b if op == "ge" else value <= b


def _unsigned_subtract(a: Any, b: Any):
    """np.histogram's width of the range, last - first, as the same NumPy scalar: signed integers
    subtract into their unsigned type (an int8 range is up to 255 wide)."""
    dt = np.result_type(a, b)
    unsigned = {np.dtype(t): np.dtype(u) for t, u in ((np.int8, np.uint8), (np.int16, np.uint16),
                                                       (np.int32, np.uint32), (np.int64, np.uint64))}
    if dt in unsigned:
        return np.subtract(np.asarray(a, dtype=dt), np.asarray(b, dtype=dt), casting="unsafe",
                           dtype=unsigned[dt])
    return np.subtract(a, b, dtype=dt)
