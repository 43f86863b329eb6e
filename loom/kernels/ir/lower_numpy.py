"""Evaluate IR functions on arrays with an array module: NumPy here, CuPy unchanged.

Each IR node becomes one element-wise ufunc call with an explicit result dtype (conversion,
bitcast and select are astype, view and where), so nothing is fused, contracted or reassociated,
and every correctly rounded node gives the same bits as the CUDA lowering's intrinsic. Constants are
0-d scalars of their exact dtype, never Python floats, so NumPy's promotion rules never apply. Only
the `xp.` namespace touches data; `np` is used for dtypes and for folding constants at build time.

The few nodes whose IR meaning is more than one IEEE operation spell it out here exactly as
lower_cuda.py does: float -> int conversion (NaN -> 0, saturation) and shifts by a Value (masked).
"""
from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType

import numpy as np

from ...backend import Array
from .. import ir

CHUNK = 8192     # NumPy: elements per pass, so a kernel's temporaries stay in cache (2x faster)


def evaluate(fn: ir.Function, *arrays: Array, xp: ModuleType = np,
             chunk: int | None = None) -> Array | tuple[Array, ...]:
    """Run `fn` element-wise on `arrays` (one per parameter, of exactly its dtype, broadcastable).
    Returns one array, or a tuple when `fn` has several results.

    With NumPy, large arrays go through in slices of `chunk` elements (CHUNK by default; 0 turns
    it off); elements are independent, so the bits are the same either way. Other array modules
    (CuPy) get whole arrays: there each ufunc is a kernel launch."""
    shape = check_arguments(fn, arrays)
    size = int(np.prod(shape, dtype=np.int64))
    chunk = (CHUNK if xp is np else 0) if chunk is None else chunk
    if not chunk or size <= chunk:
        outs = _run(fn, arrays, shape, xp)
    else:
        flat = [xp.broadcast_to(a, shape).reshape(-1) for a in arrays]
        outs = tuple(xp.empty(size, dtype=r.type.dtype) for r in fn.results)
        for start in range(0, size, chunk):
            stop = min(start + chunk, size)
            for out, part in zip(outs, _run(fn, [f[start:stop] for f in flat], (stop - start,), xp)):
                out[start:stop] = part
        outs = tuple(o.reshape(shape) for o in outs)
    return outs[0] if len(outs) == 1 else outs


def check_arguments(fn: ir.Function, arrays: Sequence[Array]) -> tuple[int, ...]:
    """The broadcast shape of `arrays`, one per parameter of `fn` and each of exactly its dtype
    (TypeError naming the argument otherwise): every lowering's evaluate takes the same arguments."""
    if len(arrays) != len(fn.params):
        raise TypeError(f"{fn.name} takes {len(fn.params)} arrays, got {len(arrays)}")
    for i, (a, p) in enumerate(zip(arrays, fn.params)):
        if np.dtype(a.dtype) != p.type.dtype:
            raise TypeError(f"{fn.name}: argument {i} has dtype {a.dtype}, expected {p.type.dtype}")
    return np.broadcast_shapes(*(tuple(np.shape(a)) for a in arrays)) if arrays else ()


def _run(fn, arrays, shape, xp):
    env = {}
    with np.errstate(all="ignore"):     # IEEE overflow/invalid are results here, not errors
        for node in fn.live_nodes():
            if node.op == "param":
                env[node.index] = arrays[node.attr]
            elif node.op == "const":
                env[node.index] = node.const_value()
            else:
                env[node.index] = LOWER[node.op](xp, node.type, node.attr, [env[a.index] for a in node.args])
    return tuple(_full(xp, env[r.index], shape, r.type.dtype, copy=r.op == "param") for r in fn.results)


def fold_constant(op: str, type_: ir.Type, args: Sequence[ir.Value], attr: ir.Type | None) -> np.generic:
    """The value of `op` on constant nodes, computed with this lowering's own rule (so folding at
    build time can never disagree with evaluation)."""
    with np.errstate(all="ignore"):
        return np.asarray(LOWER[op](np, type_, attr, [a.const_value() for a in args]), dtype=type_.dtype)[()]


def _full(xp, value, shape, dtype, copy):
    if getattr(value, "shape", ()) == shape and not isinstance(value, np.generic):
        return value.copy() if copy else value
    return xp.broadcast_to(xp.asarray(value, dtype=dtype), shape).copy()


def _ufunc(name):
    def lower(xp, type_, attr, args):
        return getattr(xp, name)(*args, dtype=type_.dtype)
    return lower


def _compare(name):
    def lower(xp, type_, attr, args):
        return getattr(xp, name)(*args)
    return lower


def _select(xp, type_, attr, args):
    return xp.where(args[0], args[1], args[2])


def _shift(name):
    def lower(xp, type_, attr, args):
        a, s = args
        if not isinstance(s, np.generic):     # a Value shift amount: use its low log2(bits) bits
            s = xp.bitwise_and(s, type_.dtype.type(type_.bits - 1), dtype=type_.dtype)
        return getattr(xp, name)(a, s, dtype=type_.dtype)
    return lower


def _bitcast(xp, type_, attr, args):
    return args[0].view(type_.dtype)


def _convert(xp, type_, attr, args):
    a = args[0]
    src = ir.type_of(a.dtype)
    if not (src.is_float and type_.is_int):
        return a.astype(type_.dtype)
    # float -> int: truncate; NaN -> 0; saturate. lo - 1 and hi + 1 rounded to the float type are
    # the exclusive bounds (hi + 1 is a power of two; lo - 1 rounds to lo or below it).
    info = np.iinfo(type_.dtype)
    lo_excl, hi_excl = src.dtype.type(info.min - 1), src.dtype.type(info.max + 1)
    inside = xp.logical_and(xp.greater(a, lo_excl), xp.less(a, hi_excl))
    safe = xp.where(inside, a, src.dtype.type(0)).astype(type_.dtype)
    low = xp.where(xp.less_equal(a, lo_excl), type_.dtype.type(info.min), safe)
    return xp.where(xp.greater_equal(a, hi_excl), type_.dtype.type(info.max), low)


LOWER = {
    "add": _ufunc("add"), "sub": _ufunc("subtract"), "mul": _ufunc("multiply"),
    "div": _ufunc("divide"), "neg": _ufunc("negative"), "sqrt": _ufunc("sqrt"),
    "abs": _ufunc("absolute"), "rint": _ufunc("rint"), "floor": _ufunc("floor"),
    "lt": _compare("less"), "le": _compare("less_equal"), "gt": _compare("greater"),
    "ge": _compare("greater_equal"), "eq": _compare("equal"), "ne": _compare("not_equal"),
    "select": _select,
    "and": _ufunc("bitwise_and"), "or": _ufunc("bitwise_or"), "xor": _ufunc("bitwise_xor"),
    "not": _ufunc("invert"),
    "shl": _shift("left_shift"), "shr": _shift("right_shift"),
    "bitcast": _bitcast, "convert": _convert,
}
