"""Element-wise IR functions as compiled CPU loops (numba, the optional `loom[cpu]` extra).

Why: lower_numpy runs one ufunc call per IR node, so a mathlib function costs 40-290 whole-array
passes and a fixed Python cost per node whatever the size, which dominates on small arrays (SiLU on
one row, in each deterministic decode step). Here the whole function body is one loop over the
elements, each node a scalar operation in registers.

The IR's meaning is kept node for node, as in lower_cuda.py: every float operation is one correctly
rounded IEEE operation in the node's type (no fastmath: nothing contracted into FMAs or reordered;
error_model="numpy": x / 0 is inf, not an exception); integer results are cast back to the node's
type after numba's widening, which wraps them as the IR says; shifts by a Value are masked;
float -> int conversion is spelled out (NaN -> 0, saturation); bitcasts are LLVM bitcasts; float
constants are written as their bit patterns, so no decimal text is ever re-read. The tests compare
every op and every mathlib function with lower_numpy bit for bit.

The generated text of each function holds everything the loop calls (the bitcast intrinsic too) and
is loaded by loom.backend.cpu.jit.load_source, which caches it on disk by its hash: a change to this
lowering changes the text, so a stale compiled loop is never reused. The CPU backend runs these
loops for loom.kernels.mathlib (protocols.ElementwiseKernels).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from ...backend.cpu import CPUElementwise
from ...backend.cpu import jit as cpu_jit
from .. import ir
from . import lower_numpy

_PRELUDE = '''\
import numpy as np
from numba import njit, types
from numba.extending import intrinsic


@njit(inline="always")
def _popcount32(x):
    x = np.uint32(x - ((x >> np.uint32(1)) & np.uint32(0x55555555)))
    x = np.uint32((x & np.uint32(0x33333333)) + ((x >> np.uint32(2)) & np.uint32(0x33333333)))
    x = np.uint32((x + (x >> np.uint32(4))) & np.uint32(0x0F0F0F0F))
    return np.uint32(np.uint32(x * np.uint32(0x01010101)) >> np.uint32(24))


@njit(inline="always")
def _popcount64(x):
    x = np.uint64(x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555)))
    x = np.uint64((x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333)))
    x = np.uint64((x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F))
    return np.uint64(np.uint64(x * np.uint64(0x0101010101010101)) >> np.uint64(56))


_TYPES = {"f32": types.float32, "f64": types.float64, "i32": types.int32, "i64": types.int64,
          "u32": types.uint32, "u64": types.uint64}


def _bitcaster(name):
    target = _TYPES[name]

    @intrinsic
    def bitcast(typingctx, x):
        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], context.get_value_type(target))
        return target(x), codegen
    return bitcast


'''


def available() -> bool:
    """Whether IR functions run compiled here (numba importable, LOOM_JIT not "0")."""
    return cpu_jit.available()


def evaluate(fn: ir.Function, *arrays: np.ndarray) -> np.ndarray | tuple[np.ndarray, ...]:
    """lower_numpy.evaluate's result for NumPy `arrays` (same checks, same broadcasting, same bits),
    from the compiled loop. Call only where available()."""
    lower_numpy.check_arguments(fn, arrays)
    outs = CPUElementwise().run(_source(fn), "kernel", arrays, [r.type.dtype for r in fn.results])
    return outs[0] if len(outs) == 1 else tuple(outs)


def source(fn: ir.Function) -> str:
    """The module text: _PRELUDE, the bitcasters it needs, and `kernel(x0.., y0.., )`, a loop over
    flat arrays. Depends only on the IR (the same function always gives the same text)."""
    lines, casts = [], set()
    for node in fn.live_nodes():
        if node.op == "param":
            continue
        name = f"v{node.index}"
        if node.op == "const":
            if node.type.is_float:
                casts.add(node.type.name)
            lines.append(f"{name} = {_constant(node)}")
            continue
        args = [f"v{a.index}" for a in node.args]
        if node.op == "bitcast":
            casts.add(node.type.name)
        lines.append(f"{name} = {_LOWER[node.op](node, args)}")
    params = [f"x{i}" for i in range(len(fn.params))]
    outs = [f"y{i}" for i in range(len(fn.results))]
    body = [f"v{p.index} = x{p.attr}[i]" for p in fn.params] + lines
    body += [f"y{i}[i] = v{r.index}" for i, r in enumerate(fn.results)]
    text = _PRELUDE + "".join(f'_as_{t} = _bitcaster("{t}")\n' for t in sorted(casts)) + "\n\n"
    text += '@njit(cache=True, error_model="numpy", fastmath=False)\n'
    text += f"def kernel({', '.join(params + outs)}):\n"
    text += "    for i in range(y0.shape[0]):\n"
    text += "".join(f"        {line}\n" for line in body)
    return text


def _constant(node) -> str:
    t = node.type
    if t == ir.BOOL:
        return "True" if node.attr else "False"
    if t.is_float:
        bits = ir.int_type(t.bits, False)
        return f"_as_{t.name}(np.{bits.dtype.name}({node.attr}))"
    return f"np.{t.dtype.name}({int(node.const_value())})"


def _cast(node, expr: str) -> str:
    return f"np.{node.type.dtype.name}({expr})"


def _binary(symbol):
    def lower(node, a):
        expr = f"{a[0]} {symbol} {a[1]}"
        return expr if node.type.is_float else _cast(node, expr)   # ints widen in numba: wrap back
    return lower


def _compare(symbol):
    return lambda node, a: f"{a[0]} {symbol} {a[1]}"


def _logic(symbol, boolean):
    def lower(node, a):
        if node.type == ir.BOOL:
            return f"({a[0]} {boolean} {a[1]})"
        return _cast(node, f"{a[0]} {symbol} {a[1]}")
    return lower


def _neg(node, a):
    if node.type.is_float:
        return f"-{a[0]}"
    return _cast(node, f"np.{node.type.dtype.name}(0) - {a[0]}")     # unsigned negation wraps too


def _abs(node, a):
    return f"abs({a[0]})" if node.type.is_float else _cast(node, f"abs({a[0]})")


def _not(node, a):
    return f"(not {a[0]})" if node.type == ir.BOOL else _cast(node, f"~{a[0]}")


def _shift(symbol):
    def lower(node, a):
        # the IR masks a Value shift amount to its low log2(bits) bits; a constant is in range already
        amount = a[1] if node.args[1].is_const else f"({a[1]} & {node.type.bits - 1})"
        return _cast(node, f"{a[0]} {symbol} {amount}")
    return lower


def _convert(node, a):
    src, dst = node.args[0].type, node.type
    if src == ir.BOOL:
        return f"(np.{dst.dtype.name}(1) if {a[0]} else np.{dst.dtype.name}(0))"
    if not (src.is_float and dst.is_int):
        return _cast(node, a[0])
    # float -> int: truncate; NaN -> 0; saturate (lower_numpy's exclusive bounds, as constants)
    info = np.iinfo(dst.dtype)
    lo = _float_literal(src, src.dtype.type(info.min - 1))
    hi = _float_literal(src, src.dtype.type(info.max + 1))
    return (f"(np.{dst.dtype.name}({info.min}) if {a[0]} <= {lo} else np.{dst.dtype.name}({info.max}) "
            f"if {a[0]} >= {hi} else np.{dst.dtype.name}({a[0]}) if {a[0]} == {a[0]} "
            f"else np.{dst.dtype.name}(0))")


def _float_literal(type_: ir.Type, value) -> str:
    """An exactly representable float (the conversion bounds) as numba reads it: a float64 literal
    that converts exactly to the type."""
    return f"np.{type_.dtype.name}({float(value)!r})"


def _popcount(node, a):
    """SWAR on the unsigned view (the prelude's; numba has no popcount), cast back to the node's type."""
    return _cast(node, f"_popcount{node.type.bits}(np.uint{node.type.bits}({a[0]}))")


def _division(node, a):
    """NumPy's integer floor_divide / remainder, which numba's // and % follow except where NumPy
    gives 0 (division by zero) or wraps (MIN // -1): those cases are spelled out."""
    t, x, y = node.type.dtype.name, a[0], a[1]
    symbol = "//" if node.op == "floordiv" else "%"
    if node.type.kind == "uint":
        return f"(np.{t}(0) if {y} == 0 else {_cast(node, f'{x} {symbol} {y}')})"
    minus1 = (f"{_cast(node, f'np.{t}(0) - {x}')}" if node.op == "floordiv" else f"np.{t}(0)")
    return (f"(np.{t}(0) if {y} == 0 else {minus1} if {y} == -1 else {_cast(node, f'{x} {symbol} {y}')})")


_LOWER = {
    "add": _binary("+"), "sub": _binary("-"), "mul": _binary("*"), "div": _binary("/"),
    "neg": _neg, "abs": _abs,
    "sqrt": lambda node, a: f"np.sqrt({a[0]})",
    "rint": lambda node, a: f"np.rint({a[0]})",
    "floor": lambda node, a: f"np.floor({a[0]})",
    "lt": _compare("<"), "le": _compare("<="), "gt": _compare(">"), "ge": _compare(">="),
    "eq": _compare("=="), "ne": _compare("!="),
    "select": lambda node, a: f"({a[1]} if {a[0]} else {a[2]})",
    "and": _logic("&", "and"), "or": _logic("|", "or"), "xor": _logic("^", "!="), "not": _not,
    "shl": _shift("<<"), "shr": _shift(">>"),
    "bitcast": lambda node, a: f"_as_{node.type.name}({a[0]})",
    "convert": _convert,
    "popcount": _popcount, "floordiv": _division, "mod": _division,
}
assert set(_LOWER) == set(ir.OPS) - {"param", "const"} - ir.KERNEL_OPS, "every IR op needs a numba lowering"


@lru_cache(maxsize=256)
def _source(fn: ir.Function) -> str:
    return source(fn)
