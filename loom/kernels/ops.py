"""Array operations every layer goes through for GEMM, reductions and transcendentals.

Each function works on the arrays of any backend (it asks `backend.of` for the array module).
Structural operations (reshape, transpose, indexing, where, maximum) stay with the array module:
they are exact on every backend.

In deterministic mode (loom.mode, the default) GEMMs and sums are exact and order-independent
(`exact`); in fast mode they are the backend's BLAS and reductions.
"""
from __future__ import annotations

import builtins
import math

import numpy as np

from .. import backend
from ..backend import Array
from ..mixed_precision import is_bf16
from ..mode import is_deterministic
from . import batch_split, exact, mathlib
from .exact import over_batch

_SQRT_PI = math.sqrt(math.pi)
_builtin_sum = builtins.sum       # `sum` below is the exact one


def _xp(x):
    return backend.of(x).xp


def matmul(a: Array, b: Array, out: Array | None = None) -> Array:
    """a @ b with NumPy broadcasting over leading dimensions (written into `out` when given); under
    loom.precision("bf16"), of a and b rounded to bfloat16."""
    if is_bf16():
        if _fast_bf16(a, b):
            return backend.of(a).matmul_bf16(a, b, out=out)
        a, b = _bf16(a), _bf16(b)
    if is_deterministic():
        return exact.matmul(a, b, out=out)
    return backend.of(a).matmul(a, b, out=out)


def _bf16(x: Array) -> Array:
    """x rounded to bfloat16 where it is float32 (the operands mixed precision narrows); other dtypes
    (a float64 network's, integers) as they are."""
    return backend.of(x).round_bf16(x) if x.dtype == np.float32 else x


def _fast_bf16(a: Array, b: Array) -> bool:
    """Whether a mixed-precision product goes to the backend's bfloat16 GEMM (fast mode, float32
    operands: the tensor cores on a GPU); deterministic mode rounds the operands and takes its exact
    product of their values."""
    return not is_deterministic() and a.dtype == np.float32 and b.dtype == np.float32


def sum(x: Array, axis: int | tuple[int, ...] | None = None,  # noqa: A001 - mirrors numpy's name on purpose
        keepdims: bool = False, padded: bool = False) -> Array:
    """padded (deterministic mode): the axis holds zero padding that must not change the bits
    (exact.sum)."""
    if is_deterministic():
        return exact.sum(x, axis=axis, keepdims=keepdims, padded=padded)
    return backend.of(x).sum(x, axis=axis, keepdims=keepdims)


def cumsum(x: Array, axis: int = -1) -> Array:
    if is_deterministic():
        return exact.cumsum(x, axis=axis)
    return backend.of(x).cumsum(x, axis)


def index_add(dst: Array, ids: Array, rows: Array) -> None:
    """dst[ids[i]] += rows[i] in place, ids may repeat (an embedding's gradient)."""
    if is_deterministic():
        exact.index_add(dst, ids, rows)
    else:
        _xp(rows).add.at(dst, ids, rows)


def mean(x: Array, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Array:
    count = x.size if axis is None else math.prod(x.shape[a] for a in _axes(axis, x.ndim))
    # a NumPy scalar, not a device array: no host-to-device copy (recorded steps allow none)
    return sum(x, axis=axis, keepdims=keepdims) / x.dtype.type(count)


# --- reductions over the batch: split across the ranks of a data-parallel world (batch_split) ---

def grad_matmul(a: Array, b: Array, out: Array | None = None) -> Array:
    """a @ b whose reduced axis K runs over the batch: a parameter gradient. Deterministic mode: the
    gradient over the global batch, the same bits on any number of ranks (exact.over_batch); fast
    mode: this rank's part, which the data-parallel trainer all-reduces with the others. `out`:
    written there too. Under loom.precision("bf16"), of a and b rounded to bfloat16."""
    if is_bf16():
        if _fast_bf16(a, b):
            return backend.of(a).matmul_bf16(a, b, out=out)
        a, b = _bf16(a), _bf16(b)
    if is_deterministic():
        result = over_batch.matmul(a, b)
        if out is not None:
            out[...] = result
            return out
        return result
    return backend.of(a).matmul(a, b, out=out)


def grad_sum(x: Array, axis: int | tuple[int, ...]) -> Array:
    """x summed over axes that include the batch, for a parameter gradient (as grad_matmul)."""
    if is_deterministic():
        return over_batch.sum(x, axis=axis)
    return backend.of(x).sum(x, axis=axis)


def grad_index_add(dst: Array, ids: Array, rows: Array) -> None:
    """dst[ids[i]] += rows[i] for an embedding's gradient (as grad_matmul)."""
    if is_deterministic():
        over_batch.index_add(dst, ids, rows)
    else:
        _xp(rows).add.at(dst, ids, rows)


def sum_over_batch(x: Array, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Array:
    """x summed over axes that include the batch, over every rank in both modes (a batch-norm
    statistic, a loss total): exact and split-invariant in deterministic mode, a float all-reduce
    in fast mode."""
    if is_deterministic():
        return over_batch.sum(x, axis=axis, keepdims=keepdims)
    total = backend.of(x).sum(x, axis=axis, keepdims=keepdims)
    split = batch_split.current()
    if split is not None:
        shape = total.shape
        total = _xp(x).ascontiguousarray(total).reshape(-1)     # (a 0-d total as one element)
        split.collective.all_reduce(total, "sum")
        total = total.reshape(shape)
    return total


def mean_over_batch(x: Array, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Array:
    """sum_over_batch divided by the global count of the values it adds."""
    count = x.size if axis is None else math.prod(x.shape[a] for a in _axes(axis, x.ndim))
    return sum_over_batch(x, axis=axis, keepdims=keepdims) / x.dtype.type(count_over_batch(count))


def count_over_batch(count: int) -> int:
    """The number of values over the global batch of a reduction covering `count` here."""
    split = batch_split.current()
    return count if split is None else split.global_count(count)


def _axes(axis, ndim):
    return [a % ndim for a in (axis if isinstance(axis, tuple) else (axis,))]


def exp(x: Array) -> Array:
    if is_deterministic():
        return canonical("exp", x)
    return _xp(x).exp(x)


def log(x: Array) -> Array:
    if is_deterministic():
        return canonical("log", x)
    return _xp(x).log(x)


def log1p(x: Array) -> Array:
    if is_deterministic():
        return canonical("log1p", x)
    return _xp(x).log1p(x)


def expm1(x: Array) -> Array:
    if is_deterministic():
        return canonical("expm1", x)
    return _xp(x).expm1(x)


def tanh(x: Array) -> Array:
    if is_deterministic():
        return canonical("tanh", x)
    return _xp(x).tanh(x)


def sqrt(x: Array) -> Array:
    return _xp(x).sqrt(x)


def none_on_host(flags: Array) -> bool:
    """Whether no flag is set, answered only where reading that costs nothing (host arrays); False
    on a device, where the read would synchronize and could not be recorded into a graph: a loop
    that stops early on it must give the same result when it runs on."""
    return backend.of(flags).host and not bool(flags.any())


def stack(arrays: list[Array], axis: int = 0) -> Array:
    """xp.stack of arrays of one shape. On a device each is written into one new array: CuPy stacks
    and concatenates more than 8 arrays with one kernel whose table of their addresses it copies from
    the host, which a recorded step (a CUDA graph's capture) refuses."""
    xp = _xp(arrays[0])
    if backend.of(arrays[0]).host:
        return xp.stack(arrays, axis=axis)
    return _joined(xp, arrays, axis, True)


def concatenate(arrays: list[Array], axis: int = -1) -> Array:
    """xp.concatenate, as `stack` writes it on a device (any number of arrays, one recorded step)."""
    xp = _xp(arrays[0])
    if backend.of(arrays[0]).host:
        return xp.concatenate(arrays, axis=axis)
    return _joined(xp, arrays, axis, False)


def _joined(xp, arrays: list[Array], axis: int, new_axis: bool) -> Array:
    """The arrays along `axis` (a new one when new_axis), each copied into its slice of one array."""
    first = arrays[0]
    ndim = first.ndim + new_axis
    axis = axis + ndim if axis < 0 else axis
    if not 0 <= axis < ndim:
        raise ValueError(f"axis {axis} is out of bounds for {ndim} dimensions")
    for a in arrays:        # as xp.stack and xp.concatenate check (a slice assignment would broadcast)
        if a.ndim != first.ndim or any(m != n for i, (m, n) in enumerate(zip(a.shape, first.shape))
                                       if new_axis or i != axis):
            raise ValueError(f"all input arrays must have the same shape{'' if new_axis else ' off the axis'}: "
                             f"{list(first.shape)} and {list(a.shape)}")
    sizes = [1] * len(arrays) if new_axis else [a.shape[axis] for a in arrays]
    shape = list(first.shape)
    if new_axis:
        shape.insert(axis, len(arrays))
    else:
        shape[axis] = _builtin_sum(sizes)
    out = xp.empty(tuple(shape), dtype=xp.result_type(*arrays))
    start = 0
    for a, size in zip(arrays, sizes):
        at = (slice(None),) * axis + ((start,) if new_axis else (slice(start, start + size),))
        out[at] = a
        start += size
    return out


def canonical(name: str, *xs: Array) -> Array:
    """Loom's own `name` from loom.kernels.mathlib (the same bits on every backend): one compiled
    kernel or loop where the backend has them, the NumPy lowering of the same IR elsewhere."""
    return mathlib.evaluate(name, *xs)


def softmax(x: Array, axis: int = -1, mask: Array | None = None, padded: bool = False) -> Array:
    """exp(x - max) / sum along `axis`. With a boolean `mask` (broadcastable to x), entries outside it
    are exactly 0 and are ignored by the max and the sum; a row with no entry inside the mask is all
    0 (not NaN). Non-finite inputs inside the mask propagate as IEEE says. padded: the mask is padding,
    whose width must not change a row's bits (sum's `padded`)."""
    xp = _xp(x)
    if mask is None:
        e = exp(x - xp.max(x, axis=axis, keepdims=True))
        return e / sum(e, axis=axis, keepdims=True)
    any_kept = xp.any(mask, axis=axis, keepdims=True)
    peak = xp.max(xp.where(mask, x, -xp.inf), axis=axis, keepdims=True)
    peak = xp.where(any_kept, peak, 0)
    e = xp.where(mask, exp(xp.where(mask, x - peak, 0)), 0)
    return e / xp.where(any_kept, sum(e, axis=axis, keepdims=True, padded=padded), 1)


def sigmoid(x: Array) -> Array:
    """1 / (1 + e^-x), evaluated so that neither branch overflows."""
    if is_deterministic():
        return canonical("sigmoid", x)
    xp = _xp(x)
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1 / (1 + e), e / (1 + e))


def softplus(x: Array) -> Array:
    """log(1 + e^x) without overflow: max(x, 0) + log1p(e^-|x|)."""
    if is_deterministic():
        return canonical("softplus", x)
    xp = _xp(x)
    return xp.maximum(x, 0) + xp.log1p(xp.exp(-xp.abs(x)))


def erf(x: Array) -> Array:
    """Error function to within 8 ulp in float64 (float32 inputs are computed in float64).

    |x| < 3: erf(x) = 2/sqrt(pi) x e^-x^2 sum_n (2x^2)^n / (2n+1)!!  (all terms positive, no
    cancellation); |x| >= 3: 1 - erfc(x) with erfc from its continued fraction. The term counts
    (50, 30) were chosen by measuring the error against math.erf over [-8, 8]. Deterministic mode
    uses mathlib's erf instead.
    """
    if is_deterministic():
        return canonical("erf", x)
    xp = _xp(x)
    dtype = x.dtype
    x64 = x.astype(xp.float64)
    ax = xp.abs(x64)
    near = ax < 3.0
    xs = xp.where(near, ax, 0.0)
    x2 = xs * xs
    series = xp.ones_like(xs)
    for n in range(50, 0, -1):
        series = series * (2.0 * x2) / (2 * n + 1) + 1.0
    inner = (2.0 / _SQRT_PI) * xs * xp.exp(-x2) * series
    xl = xp.where(near, 3.0, ax)
    frac = xl
    for k in range(30, 0, -1):
        frac = xl + (k / 2.0) / frac
    outer = 1.0 - xp.exp(-xl * xl) / (_SQRT_PI * frac)
    return xp.copysign(xp.where(near, inner, outer), x64).astype(dtype)
