"""Loom's kernel IR: typed SSA expressions built from Python, lowered to NumPy and to CUDA C.

A kernel body is an ordinary Python function that receives a builder and typed parameter values and
returns values; operator overloading records one node per operation:

    def scaled_square(b, x):          # x: Value of type f64
        return x * x * 0.5            # 0.5 becomes an f64 constant: constants take their partner's type

    fn = ir.function("scaled_square", [ir.F64], scaled_square)

Every node kind is a row of OPS, and each lowering (lower_numpy.py with rules.py's table,
lower_cuda.py, lower_numba.py) is a table with one entry per row, so the engine's ops (thread id,
buffer loads and stores, loops, shared memory, barriers, atomics) are new rows, not a new design.
Types are never promoted implicitly: mixing f32 and f64 (or i32 and i64) without convert() is a
TypeError that names the op. Constant operands are folded while a kernel is built, with rules.py's
NumPy rules (the ones lower_numpy.py evaluates with).

Semantics, identical in every lowering (the tests compare NumPy against the compiled CUDA C bits):
- add, sub, mul, div, sqrt on floats are correctly rounded IEEE-754 (round to nearest even, with
  subnormals); integer add, sub, mul, neg wrap modulo 2^bits; div is float only.
- min, max propagate NaN (min(a, b) = a if a < b or a is NaN, else b), so min(+0, -0) is b.
- rint rounds half to even; floor rounds toward -inf; abs clears the sign bit of a float.
- shl, shr: a shift by a Value uses its low log2(bits) bits (x86 and PTX both mask or clamp, C
  does neither); a constant shift must lie in [0, bits). shr is arithmetic on signed types.
- convert: float -> float rounds to nearest even (f32 -> f64 is exact); int -> float rounds to
  nearest even; float -> int truncates toward zero, maps NaN to 0 and saturates out-of-range values
  to the type's min/max (C leaves these undefined; PTX saturates, so both lowerings spell it out);
  int -> int wraps; bool -> number gives 0 or 1.
- bitcast reinterprets the bits between types of one width.
- floordiv (//) and mod (%) on integers round as NumPy and Python do (toward -inf; the remainder takes
  the divisor's sign); x // 0 and x % 0 are 0, and for signed types MIN // -1 is MIN (wrapped).
- popcount counts the set bits of the two's-complement pattern (C's __popc; NumPy's bitwise_count
  counts those of |x| for signed types), as a value of the operand's type.
- NaN payloads and signs are not specified: processors differ in which operand's payload an
  operation keeps. Code whose NaN bits matter replaces NaNs by a canonical one (mathlib does).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from numpy.typing import DTypeLike

# the NumPy rule of every op, which folding applies; rules.py imports nothing of this package, so
# there is no cycle (lower_numpy.py, which imports this package, evaluates with the same table)
from . import rules


@dataclass(frozen=True)
class Type:
    name: str        # "f32", "i64", ...
    kind: str        # "float" | "int" | "uint" | "bool"
    bits: int

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(_DTYPES[self.name])

    @property
    def is_float(self) -> bool:
        return self.kind == "float"

    @property
    def is_int(self) -> bool:           # signed or unsigned integer
        return self.kind in ("int", "uint")

    def __repr__(self) -> str:
        return self.name


F32, F64 = Type("f32", "float", 32), Type("f64", "float", 64)
I32, I64 = Type("i32", "int", 32), Type("i64", "int", 64)
U32, U64 = Type("u32", "uint", 32), Type("u64", "uint", 64)
BOOL = Type("bool", "bool", 8)
TYPES = {t.name: t for t in (F32, F64, I32, I64, U32, U64, BOOL)}
_DTYPES = {"f32": np.float32, "f64": np.float64, "i32": np.int32, "i64": np.int64,
           "u32": np.uint32, "u64": np.uint64, "bool": np.bool_}


def type_of(dtype: DTypeLike) -> Type:
    """The IR type of a NumPy dtype; TypeError for any other dtype."""
    dtype = np.dtype(dtype)
    for t in TYPES.values():
        if t.dtype == dtype:
            return t
    raise TypeError(f"no IR type for dtype {dtype}")


def int_type(bits: int, signed: bool = True) -> Type:
    """The integer type of a float's width (bitcast partner): 32 -> i32/u32, 64 -> i64/u64."""
    return {(32, True): I32, (64, True): I64, (32, False): U32, (64, False): U64}[(bits, signed)]


class OpKind(NamedTuple):
    arity: int
    operands: str     # "float", "int" (signed or unsigned), "num" (float or int), "logic" (bool or int), "any"
    result: str       # "same" (the operands' type), "bool", or "attr" (the type named by the node)


# One row per node kind. Lowerings key their tables by these names.
OPS: dict[str, OpKind] = {
    "param": OpKind(0, "any", "attr"),
    "const": OpKind(0, "any", "attr"),
    "add": OpKind(2, "num", "same"), "sub": OpKind(2, "num", "same"), "mul": OpKind(2, "num", "same"),
    "div": OpKind(2, "float", "same"), "neg": OpKind(1, "num", "same"),
    "sqrt": OpKind(1, "float", "same"), "abs": OpKind(1, "num", "same"),
    "rint": OpKind(1, "float", "same"), "floor": OpKind(1, "float", "same"),
    "lt": OpKind(2, "num", "bool"), "le": OpKind(2, "num", "bool"), "gt": OpKind(2, "num", "bool"),
    "ge": OpKind(2, "num", "bool"), "eq": OpKind(2, "any", "bool"), "ne": OpKind(2, "any", "bool"),
    "select": OpKind(3, "any", "same"),
    "and": OpKind(2, "logic", "same"), "or": OpKind(2, "logic", "same"), "xor": OpKind(2, "logic", "same"),
    "not": OpKind(1, "logic", "same"),
    "shl": OpKind(2, "int", "same"), "shr": OpKind(2, "int", "same"),
    "bitcast": OpKind(1, "any", "attr"), "convert": OpKind(1, "any", "attr"),
    "popcount": OpKind(1, "int", "same"),
    "floordiv": OpKind(2, "int", "same"), "mod": OpKind(2, "int", "same"),
    # kernels only (kernel.py: values with effects or a thread's identity; lower_numpy and lower_numba
    # evaluate pure functions and have no rows for them)
    "thread": OpKind(0, "any", "attr"), "buffer_size": OpKind(0, "any", "attr"),
    "load": OpKind(1, "int", "attr"), "read": OpKind(0, "any", "attr"),
    "loop_index": OpKind(0, "int", "attr"), "atomic": OpKind(2, "any", "attr"),
}
KERNEL_OPS = frozenset({"thread", "buffer_size", "load", "read", "loop_index", "atomic"})
_OPERAND_KINDS = {"float": ("float",), "int": ("int", "uint"), "num": ("float", "int", "uint"),
                  "logic": ("bool", "int", "uint"), "any": ("float", "int", "uint", "bool")}


class Value:
    """One SSA node. Build values with operators and Function methods, never directly."""

    __slots__ = ("fn", "op", "type", "args", "attr", "index")
    __hash__ = object.__hash__          # identity: == builds an "eq" node instead

    def __init__(self, fn: Function, op: str, type_: Type, args: tuple[Value, ...], attr: int | Type | None,
                 index: int):
        self.fn, self.op, self.type, self.args, self.attr, self.index = fn, op, type_, args, attr, index

    def __repr__(self) -> str:
        return f"%{self.index}:{self.type}={self.op}"

    def __bool__(self):
        raise TypeError("an IR Value has no truth value while a kernel is built; use b.select(cond, a, b)")

    @property
    def is_const(self) -> bool:
        return self.op == "const"

    def const_value(self) -> np.generic:
        """The constant as a NumPy scalar of its dtype (only for const nodes)."""
        if self.type == BOOL:
            return np.bool_(self.attr)
        return np.array(self.attr, dtype=np.uint64).astype(_bits_dtype(self.type)).view(self.type.dtype)[()]

    # arithmetic
    def __add__(self, o): return self.fn.op("add", self, o)
    def __radd__(self, o): return self.fn.op("add", o, self)
    def __sub__(self, o): return self.fn.op("sub", self, o)
    def __rsub__(self, o): return self.fn.op("sub", o, self)
    def __mul__(self, o): return self.fn.op("mul", self, o)
    def __rmul__(self, o): return self.fn.op("mul", o, self)
    def __truediv__(self, o): return self.fn.op("div", self, o)
    def __rtruediv__(self, o): return self.fn.op("div", o, self)
    def __neg__(self): return self.fn.op("neg", self)
    def __abs__(self): return self.fn.op("abs", self)
    # comparisons (all build bool values)
    def __lt__(self, o): return self.fn.op("lt", self, o)
    def __le__(self, o): return self.fn.op("le", self, o)
    def __gt__(self, o): return self.fn.op("gt", self, o)
    def __ge__(self, o): return self.fn.op("ge", self, o)
    def __eq__(self, o): return self.fn.op("eq", self, o)     # type: ignore[override]
    def __ne__(self, o): return self.fn.op("ne", self, o)     # type: ignore[override]
    # logic and bits
    def __and__(self, o): return self.fn.op("and", self, o)
    def __rand__(self, o): return self.fn.op("and", o, self)
    def __or__(self, o): return self.fn.op("or", self, o)
    def __ror__(self, o): return self.fn.op("or", o, self)
    def __xor__(self, o): return self.fn.op("xor", self, o)
    def __rxor__(self, o): return self.fn.op("xor", o, self)
    def __invert__(self): return self.fn.op("not", self)
    def __lshift__(self, o): return self.fn.op("shl", self, o)
    def __rshift__(self, o): return self.fn.op("shr", self, o)
    # integer floor division and modulo, NumPy's and Python's rounding (x // 0 == x % 0 == 0)
    def __floordiv__(self, o): return self.fn.op("floordiv", self, o)
    def __rfloordiv__(self, o): return self.fn.op("floordiv", o, self)
    def __mod__(self, o): return self.fn.op("mod", self, o)
    def __rmod__(self, o): return self.fn.op("mod", o, self)

    def convert(self, type_: Type) -> Value:
        return self.fn.convert(self, type_)

    def bitcast(self, type_: Type) -> Value:
        return self.fn.bitcast(self, type_)


class Function:
    """A kernel body under construction, and the builder its Python definition receives.

    Nodes are hash-consed (the same op on the same operands is one node) and constant operands are
    folded with the NumPy lowering's own rules (rules.py), so the recorded graph is small and the same
    definition always records the same nodes in the same order (the CUDA text is then identical)."""

    def __init__(self, name: str, param_types: Iterable[Type]):
        self.name = name
        self.nodes: list[Value] = []
        self._cache: dict[tuple, Value] = {}
        self.params = tuple(self._node("param", t, (), i) for i, t in enumerate(param_types))
        self.results: tuple[Value, ...] = ()
        self._live = None

    # -- node construction ---------------------------------------------------------------------
    def _node(self, op, type_, args, attr=None) -> Value:
        key = (op, type_, tuple(a.index for a in args), attr)
        hit = self._cache.get(key)
        if hit is None:
            hit = Value(self, op, type_, tuple(args), attr, len(self.nodes))
            self.nodes.append(hit)
            self._cache[key] = hit
        return hit

    def const(self, value: float | np.generic, type_: Type) -> Value:
        """A typed constant. Python floats round to nearest even in f32; ints must fit exactly."""
        if type_.is_float:
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.floating, np.integer)):
                raise TypeError(f"constant {value!r} is not a number for type {type_}")
            scalar = type_.dtype.type(value)
            if isinstance(value, (int, np.integer)) and int(scalar) != int(value):
                raise TypeError(f"integer constant {value} is not exact in {type_}")
            bits = int(np.array(scalar).view(_bits_dtype(type_)).astype(np.uint64))
        elif type_.is_int:
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"constant {value!r} is not an integer for type {type_}")
            info = np.iinfo(type_.dtype)
            if not info.min <= int(value) <= info.max:
                raise TypeError(f"constant {value} does not fit in {type_}")
            bits = int(value) & ((1 << type_.bits) - 1)
        else:
            if not isinstance(value, (bool, np.bool_)):
                raise TypeError(f"constant {value!r} is not a bool")
            bits = int(bool(value))
        return self._node("const", type_, (), bits)

    def _coerce(self, op, value, partner: Type) -> Value:
        if isinstance(value, Value):
            if value.fn is not self:
                raise TypeError(f"{op}: operand belongs to another function")
            return value
        return self.const(value, partner)

    def op(self, op: str, *operands: Value | float, attr: Type | None = None) -> Value:
        """Record `op` on operands (Values or Python scalars, which take a Value partner's type)."""
        kind = OPS[op]
        if len(operands) != kind.arity:
            raise TypeError(f"{op} takes {kind.arity} operands, got {len(operands)}")
        partner = next((v.type for v in operands if isinstance(v, Value)), None)
        if partner is None:
            raise TypeError(f"{op}: at least one operand must be an IR Value")
        if op == "select":
            cond = self._coerce(op, operands[0], BOOL)
            partner = next((v.type for v in operands[1:] if isinstance(v, Value)), None)
            if partner is None:
                raise TypeError("select: one of the two choices must be an IR Value")
            args = [cond] + [self._coerce(op, v, partner) for v in operands[1:]]
            if cond.type != BOOL:
                raise TypeError(f"select: condition has type {cond.type}, not bool")
            data = args[1:]
        else:
            args = [self._coerce(op, v, partner) for v in operands]
            data = args
        if op in ("shl", "shr"):
            return self._shift(op, args[0], args[1])
        types = {a.type for a in data}
        if len(types) > 1:
            raise TypeError(f"{op}: operand types {' and '.join(sorted(t.name for t in types))} differ; "
                            "convert one explicitly")
        type_ = data[0].type
        if type_.kind not in _OPERAND_KINDS[kind.operands]:
            raise TypeError(f"{op} does not take {type_} operands")
        result = BOOL if kind.result == "bool" else attr if kind.result == "attr" else type_
        return self._fold_or_node(op, result, args, attr)

    def _shift(self, op, a: Value, s: Value) -> Value:
        if a.type.kind not in ("int", "uint") or s.type != a.type:
            raise TypeError(f"{op}: shifts an integer by an integer of its own type, got {a.type} by {s.type}")
        if s.is_const and not 0 <= int(s.const_value()) < a.type.bits:
            raise TypeError(f"{op}: constant shift {int(s.const_value())} outside [0, {a.type.bits})")
        return self._fold_or_node(op, a.type, [a, s], None)

    def _fold_or_node(self, op, type_, args, attr) -> Value:
        if args and all(a.is_const for a in args):
            return self.const_from_scalar(rules.fold(op, type_, attr, [a.const_value() for a in args]), type_)
        return self._node(op, type_, args, attr)

    def const_from_scalar(self, scalar: float | np.generic, type_: Type) -> Value:
        if type_ == BOOL:
            return self.const(bool(scalar), BOOL)
        bits = int(np.asarray(scalar, dtype=type_.dtype).view(_bits_dtype(type_)).astype(np.uint64))
        return self._node("const", type_, (), bits)

    # -- named operations ----------------------------------------------------------------------
    def sqrt(self, x: Value) -> Value: return self.op("sqrt", x)
    def abs(self, x: Value) -> Value: return self.op("abs", x)
    def rint(self, x: Value) -> Value: return self.op("rint", x)
    def floor(self, x: Value) -> Value: return self.op("floor", x)
    def select(self, cond: Value, a: Value | float, b: Value | float) -> Value: return self.op("select", cond, a, b)
    def logical_not(self, x: Value) -> Value: return self.op("not", x)
    def popcount(self, x: Value) -> Value: return self.op("popcount", x)

    def min(self, a: Value | float, b: Value | float) -> Value:
        """a if a < b or a is NaN, else b: NaN propagates from either side."""
        a, b = self._pair("min", a, b)
        return self.select((a < b) | self.isnan(a), a, b) if a.type.is_float else self.select(a < b, a, b)

    def max(self, a: Value | float, b: Value | float) -> Value:
        """a if a > b or a is NaN, else b: NaN propagates from either side."""
        a, b = self._pair("max", a, b)
        return self.select((a > b) | self.isnan(a), a, b) if a.type.is_float else self.select(a > b, a, b)

    def _pair(self, op, a, b):
        partner = a.type if isinstance(a, Value) else b.type
        return self._coerce(op, a, partner), self._coerce(op, b, partner)

    def isnan(self, x: Value) -> Value: return x != x
    def isinf(self, x: Value) -> Value: return self.abs(x) == float("inf")
    def isfinite(self, x: Value) -> Value: return self.abs(x) < float("inf")

    def convert(self, x: Value, type_: Type) -> Value:
        if type_ == BOOL:
            raise TypeError("convert to bool is not an op; compare with zero (x != 0)")
        if x.type == type_:
            return x
        return self._fold_or_node("convert", type_, [x], type_)

    def bitcast(self, x: Value, type_: Type) -> Value:
        if x.type.bits != type_.bits or BOOL in (x.type, type_):
            raise TypeError(f"bitcast: {x.type} and {type_} differ in width")
        if x.type == type_:
            return x
        return self._fold_or_node("bitcast", type_, [x], type_)

    # -- results -------------------------------------------------------------------------------
    def set_results(self, values: Value | tuple[Value, ...] | list[Value]) -> None:
        values = tuple(values) if isinstance(values, (tuple, list)) else (values,)
        for v in values:
            if not isinstance(v, Value) or v.fn is not self:
                raise TypeError(f"{self.name}: a result must be a Value of this function, got {v!r}")
        self.results = values

    def live_nodes(self) -> list[Value]:
        """Nodes the results depend on, in creation order (a valid evaluation order)."""
        if self._live is not None and self._live[0] == self.results:
            return self._live[1]
        live = set()
        stack = list(self.results)
        while stack:
            v = stack.pop()
            if v.index not in live:
                live.add(v.index)
                stack.extend(v.args)
        self._live = (self.results, [v for v in self.nodes if v.index in live])
        return self._live[1]

    @property
    def param_types(self) -> tuple[Type, ...]:
        return tuple(p.type for p in self.params)

    @property
    def result_types(self) -> tuple[Type, ...]:
        return tuple(r.type for r in self.results)


def function(name: str, param_types: Iterable[Type], body: Callable[..., Value | tuple[Value, ...]]) -> Function:
    """Trace `body(builder, *params)` into a Function; body returns a Value or a tuple of them."""
    fn = Function(name, param_types)
    fn.set_results(body(fn, *fn.params))
    return fn


def _bits_dtype(type_: Type):
    return {8: np.uint8, 32: np.uint32, 64: np.uint64}[type_.bits]
