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
}
