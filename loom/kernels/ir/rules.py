"""The NumPy evaluation rule of every IR op: the one table (LOWER) that lower_numpy.py runs on arrays
and that the IR itself (ir/__init__.py, Function._fold_or_node) runs on constant operands while a
kernel is built, so folding can never disagree with evaluation.

Each rule is rule(xp, type_, attr, args): one element-wise call of the array module `xp` (NumPy or
CuPy) with an explicit result dtype (conversion, bitcast and select are astype, view and where), so
nothing is fused, contracted or reassociated. The few ops whose IR meaning is more than one IEEE
operation spell it out here exactly as lower_cuda.py does: float -> int conversion (NaN -> 0,
saturation) and shifts by a Value (masked).

This module imports nothing of the IR package (ir/__init__.py imports it at its top): a rule reads
only the attributes of the IR type it is handed (dtype, bits, is_int) and the operands' dtypes.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from . import Type


def fold(op: str, type_: Type, attr: Type | None, scalars: Sequence[np.generic]) -> np.generic:
    """The value of `op` on constant operands (NumPy scalars of their exact dtypes), as a NumPy scalar
    of `type_`'s dtype: the rule lower_numpy.py evaluates with, applied by NumPy."""
    with np.errstate(all="ignore"):     # IEEE overflow/invalid are results here, not errors
        return np.asarray(LOWER[op](np, type_, attr, list(scalars)), dtype=type_.dtype)[()]


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


def _unsigned(type_):
    return np.dtype(f"uint{type_.bits}")


def _popcount(xp, type_, attr, args):
    """Set bits of an integer, as its type: a SWAR count on the unsigned view (NumPy before 2.0 and
    CuPy have no popcount ufunc on every version; this gives the same bits everywhere)."""
    u = _unsigned(type_)
    x = xp.asarray(args[0]).astype(u)
    digits = type_.bits // 4                # hexadecimal digits of the width
    c = [u.type(int(pattern * (digits // len(pattern)), 16)) for pattern in ("5", "3", "0f")]
    x = xp.subtract(x, xp.bitwise_and(xp.right_shift(x, u.type(1)), c[0]), dtype=u)
    x = xp.add(xp.bitwise_and(x, c[1]), xp.bitwise_and(xp.right_shift(x, u.type(2)), c[1]), dtype=u)
    x = xp.bitwise_and(xp.add(x, xp.right_shift(x, u.type(4)), dtype=u), c[2])
    ones = u.type(int("01" * u.itemsize, 16))
    x = xp.right_shift(xp.multiply(x, ones, dtype=u), u.type(type_.bits - 8))
    return x.astype(type_.dtype)


def _division(name):
    """Integer floor division and modulo with NumPy's results everywhere: x // 0 == x % 0 == 0 and,
    for signed types, MIN // -1 == MIN (wrapped) and MIN % -1 == 0, spelled out so that no array
    module (nor C, where both are undefined) is asked to divide by 0 or to overflow."""
    def lower(xp, type_, attr, args):
        a, b = args
        dt = type_.dtype
        special = xp.equal(b, dt.type(0))
        if type_.kind == "int":
            special = xp.logical_or(special, xp.equal(b, dt.type(-1)))
        safe = xp.where(special, dt.type(1), b).astype(dt)
        out = getattr(xp, name)(a, safe, dtype=dt)
        if name == "floor_divide" and type_.kind == "int":     # a // -1 is -a, wrapped
            special_result = xp.where(xp.equal(b, dt.type(-1)), xp.negative(a, dtype=dt), dt.type(0))
        else:
            special_result = dt.type(0)
        return xp.where(special, special_result, out).astype(dt)
    return lower


def _bitcast(xp, type_, attr, args):
    return args[0].view(type_.dtype)


def _convert(xp, type_, attr, args):
    a = args[0]
    src = np.dtype(a.dtype)             # an IR type's dtype: its kind "f" is the IR's float kind
    if not (src.kind == "f" and type_.is_int):
        return a.astype(type_.dtype)
    # float -> int: truncate; NaN -> 0; saturate. lo - 1 and hi + 1 rounded to the float type are
    # the exclusive bounds (hi + 1 is a power of two; lo - 1 rounds to lo or below it).
    info = np.iinfo(type_.dtype)
    lo_excl, hi_excl = src.type(info.min - 1), src.type(info.max + 1)
    inside = xp.logical_and(xp.greater(a, lo_excl), xp.less(a, hi_excl))
    safe = xp.where(inside, a, src.type(0)).astype(type_.dtype)
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
    "popcount": _popcount, "floordiv": _division("floor_divide"), "mod": _division("remainder"),
}
