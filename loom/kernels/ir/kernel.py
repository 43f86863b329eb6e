"""Kernels: IR functions with effects, written as Python functions and launched over a grid of threads.

    @ir.kernel
    def saxpy(k, x: ir.Buffer(ir.F32), y: ir.Buffer(ir.F32), a: ir.F32, n: ir.I64):
        i = k.global_id()
        with k.if_(i < n):
            y[i] = a * x[i] + y[i]

A Kernel is an ir.Function (one IR: the same Values, types, operators, folding and lowering rules)
whose body is also a tree of statements: buffer and shared-memory stores, variables, `if`/`else`,
counted and `while` loops, barriers. Values with effects or a thread's identity are the new rows of
ir.OPS listed in ir.KERNEL_OPS (thread ids, loads, variable reads, loop indices, atomics). Every
node is recorded in the block where it was built (pure ones are shared within that block only, so
no value is used outside the scope it is defined in); loads, reads and atomics are never shared.

Semantics beyond ir's (the same in both lowerings, kernel_numpy.py and lower_kernel.py):
- Thread ids are i64: global_id = block_id * block_dim + local_id; grids are one-dimensional.
- Buffers are bounds-checked unless the kernel says checked=False: an access outside a buffer or a
  shared array loads 0 and stores nothing, and the launch reports it (kernel_numpy raises at once;
  on the GPU a fault word is set and the engine raises when the launch is waited for).
- `for i in k.range(start, stop, step)` runs i = start, start + step, ... while i < stop, with
  step > 0 (a Value step <= 0 runs no iteration) and no overflow: it ends when the next index would
  pass stop, even where start + n*step wraps.
- Atomics return the old value. Integer atomics give exact results in any order; float atomic_add's
  result depends on the order threads arrive (as in CUDA: deterministic code does not use it).
- Two threads storing to one address without a barrier or an atomic between them leave one of the
  values (which one is unspecified). A barrier must be reached by every thread of a block.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cached_property
from typing import Any

from . import BOOL, F32, F64, I32, I64, TYPES, U32, U64, Function, Type, Value, lower_kernel
from .statements import (  # noqa: F401 - re-exported: the statement types are read from here (kernel_numpy.py)
    Assign,
    Barrier,
    Block,
    Buffer,
    BufferParam,
    Declare,
    For,
    If,
    Let,
    Shared,
    Store,
    Var,
    While,
    _Memory,
)

THREAD_IDS = ("global", "local", "block", "block_dim", "grid_dim")
ATOMICS = ("add", "min", "max", "and", "or", "xor", "exchange")
MAX_SHARED_BYTES = 48 * 1024        # static shared memory per block (CUDA's limit without opting in)


_DECLARES = {"param", "loop_index"}     # nodes defined by a signature or a loop header, not a Let
_UNSHARED = {"load", "read", "atomic"}  # effects: each use is its own node


class Kernel(Function):
    """A kernel under construction, and the builder `k` its Python definition receives."""

    def __init__(self, name: str, params: list[tuple[str, Type | Buffer]], checked: bool = True):
        if not name.isidentifier():
            raise TypeError(f"kernel name {name!r} is not an identifier")
        self.body = Block()
        self._stack = [self.body]
        self.checked = bool(checked)
        self.vars: list[Var] = []
        self.shared_arrays: list[Shared] = []
        self._defined_in: dict[int, Block] = {}       # node index -> the block that defines it
        super().__init__(name, ())
        self.signature: list[tuple[str, Type | Buffer]] = []
        args: list[Value | BufferParam] = []
        for position, (pname, ptype) in enumerate(params):
            if isinstance(ptype, Buffer):
                args.append(BufferParam(self, ptype.element, pname, position))
            elif isinstance(ptype, Type):
                args.append(self._node("param", ptype, (), position))
            else:
                raise TypeError(f"kernel {name}: parameter {pname!r} needs a type (ir.F32, ..., or "
                                f"ir.Buffer(ir.F32)), got {ptype!r}")
            self.signature.append((pname, ptype))
        self.args = tuple(args)
        self.params = tuple(a for a in args if isinstance(a, Value))

    @cached_property
    def buffers(self) -> list[BufferParam]:
        return [a for a in self.args if isinstance(a, BufferParam)]

    @cached_property
    def scalars(self) -> list[tuple[int, str, Type]]:
        """(position, name, type) of each scalar parameter, in order."""
        return [(i, n, t) for i, (n, t) in enumerate(self.signature) if isinstance(t, Type)]

    @cached_property
    def source(self) -> str:
        """The CUDA C text of this kernel (lower_kernel.py)."""
        return lower_kernel.source(self)

    def __repr__(self) -> str:
        params = ", ".join(f"{n}: {t}" for n, t in self.signature)
        return f"<kernel {self.name}({params})>"

    # -- recording ---------------------------------------------------------------------------------
    @property
    def _block(self) -> Block:
        return self._stack[-1]

    def _emit(self, statement) -> None:
        self._block.append(statement)

    def _visible(self, value: Value, what: str) -> Value:
        """value, if it is defined in a block enclosing the one being built; else a TypeError: a value
        (or a variable) made inside an if_, a loop or a while_ does not exist after it."""
        block = self._defined_in.get(value.index, self.body)
        if not any(b is block for b in self._stack):
            raise TypeError(f"{self.name}: {what} {value!r} was made inside a block (if_, else_, range or "
                            "while_) that has ended; keep it in a k.var declared before the block")
        return value

    def _coerce(self, op, value, partner: Type) -> Value:
        return self._visible(super()._coerce(op, value, partner), f"{op} operand")

    def _node(self, op, type_, args, attr=None) -> Value:
        for a in args:
            self._visible(a, f"{op} operand")
        if isinstance(attr, Var) and not any(b is attr.block for b in self._stack):
            raise TypeError(f"{self.name}: variable {attr.index} was declared inside a block that has ended")
        block = self._block
        if op in _UNSHARED:
            node = Value(self, op, type_, tuple(args), attr, len(self.nodes))
            self.nodes.append(node)
        else:
            key = (op, type_, tuple(a.index for a in args), attr, id(block))
            node = self._cache.get(key)
            if node is not None:
                return node
            node = Value(self, op, type_, tuple(args), attr, len(self.nodes))
            self.nodes.append(node)
            self._cache[key] = node
        self._defined_in[node.index] = block
        if op not in _DECLARES:
            block.append(Let(node))
        return node

    def _typed(self, value, type_: Type, what: str) -> Value:
        value = self._coerce(what, value, type_)
        if value.type != type_:
            raise TypeError(f"{self.name}: {what} has type {value.type}, expected {type_}; convert it explicitly")
        return value

    def _index(self, memory: _Memory, index) -> Value:
        index = self._coerce("index", index, I64)
        if not index.type.is_int:
            raise TypeError(f"{self.name}: index into {memory.name} has type {index.type}, not an integer type")
        return index

    def _load(self, memory: _Memory, index) -> Value:
        return self._node("load", memory.element, (self._index(memory, index),), memory)

    def _store(self, memory: _Memory, index, value) -> None:
        index = self._index(memory, index)
        self._emit(Store(memory, index, self._typed(value, memory.element, f"value stored into {memory.name}")))

    # -- the builder's vocabulary --------------------------------------------------------------
    def global_id(self) -> Value:
        """This thread's index in the whole grid (i64)."""
        return self._node("thread", I64, (), "global")

    def local_id(self) -> Value:
        """This thread's index in its block (i64)."""
        return self._node("thread", I64, (), "local")

    def block_id(self) -> Value:
        return self._node("thread", I64, (), "block")

    def block_dim(self) -> Value:
        """Threads per block (i64)."""
        return self._node("thread", I64, (), "block_dim")

    def grid_dim(self) -> Value:
        """Blocks in the grid (i64)."""
        return self._node("thread", I64, (), "grid_dim")

    def var(self, type_: Type, init: Value | float) -> Var:
        """A per-thread variable of type_, initialized to init (a Value of that type or a number)."""
        if type_ not in TYPES.values():
            raise TypeError(f"{self.name}: a variable needs an IR type, got {type_!r}")
        var = Var(self, type_, len(self.vars))
        self.vars.append(var)
        self._emit(Declare(var, self._typed(init, type_, f"initial value of variable {var.index}")))
        return var

    def shared(self, type_: Type, size: int) -> Shared:
        """A block's shared array of `size` elements (declared once, at the kernel's top level)."""
        if type_ not in TYPES.values() or type_ == BOOL:
            raise TypeError(f"{self.name}: shared memory holds numbers, not {type_!r}")
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise TypeError(f"{self.name}: shared array size must be a positive int, got {size!r}")
        if len(self._stack) != 1:
            raise TypeError(f"{self.name}: declare shared arrays at the kernel's top level")
        total = sum(s.length * s.element.bits // 8 for s in self.shared_arrays) + size * type_.bits // 8
        if total > MAX_SHARED_BYTES:
            raise TypeError(f"{self.name}: {total} bytes of shared memory exceed {MAX_SHARED_BYTES}")
        array = Shared(self, type_, size, len(self.shared_arrays))
        self.shared_arrays.append(array)
        return array

    def barrier(self) -> None:
        """Wait until every thread of the block has reached this point (CUDA's __syncthreads)."""
        self._emit(Barrier())

    @contextmanager
    def if_(self, cond: Value) -> Iterator[None]:
        cond = self._typed(cond, BOOL, "if condition")
        statement = If(cond, Block())
        self._emit(statement)
        with self._inside(statement.then):
            yield

    @contextmanager
    def else_(self) -> Iterator[None]:
        """The other branch of the `if_` just closed in this block."""
        last = self._block[-1] if self._block else None
        if not isinstance(last, If) or last.orelse is not None:
            raise TypeError(f"{self.name}: else_() must follow an if_() block directly")
        last.orelse = Block()
        with self._inside(last.orelse):
            yield

    @contextmanager
    def while_(self, condition: Callable[[], Value]) -> Iterator[None]:
        """Repeat the block while condition() (a function building a bool Value, evaluated before
        each iteration) is true."""
        statement = While(Block(), Block())
        self._emit(statement)
        with self._inside(statement.header):
            statement.cond = self._typed(condition(), BOOL, "while condition")
        with self._inside(statement.body):
            yield

    def range(self, start: Value | int, stop: Value | int | None = None,
              step: Value | int = 1) -> Iterator[Value]:
        """`for i in k.range(...)`: a counted loop (see the module's semantics). Bounds are integer
        Values of one type or Python ints (i64 when all are ints)."""
        if stop is None:
            start, stop = 0, start
        partner = next((v.type for v in (start, stop, step) if isinstance(v, Value)), I64)
        start, stop, step = (self._coerce("range", v, partner) for v in (start, stop, step))
        if len({start.type, stop.type, step.type}) > 1 or not partner.is_int:
            raise TypeError(f"{self.name}: range bounds must be integers of one type, got "
                            f"{start.type}, {stop.type}, {step.type}")
        if step.is_const and int(step.const_value()) <= 0:
            raise TypeError(f"{self.name}: range step must be positive, got {int(step.const_value())}")
        loop = For(start, stop, step, Block())
        self._emit(loop)
        with self._inside(loop.body):
            loop.index = self._node("loop_index", partner, (), loop)
            try:
                yield loop.index
            except GeneratorExit:       # a Python `break` (or an error) in the body: refused in _finish
                self._left_loop = True
                raise

    def atomic(self, op: str, memory: _Memory, index: Value | int, value: Value | float) -> Value:
        """memory[index] = op(memory[index], value) as one indivisible step; returns the old value.
        op: add (floats and integers), min, max, and, or, xor (integers), exchange (any)."""
        if op not in ATOMICS:
            raise TypeError(f"{self.name}: atomic op {op!r} is not one of {', '.join(ATOMICS)}")
        if not isinstance(memory, _Memory) or memory.kernel is not self:
            raise TypeError(f"{self.name}: atomic {op} needs a buffer or shared array of this kernel")
        if memory.element.is_float and op not in ("add", "exchange"):
            raise TypeError(f"{self.name}: atomic {op} takes integer elements, {memory.name} holds {memory.element}")
        index = self._index(memory, index)
        value = self._typed(value, memory.element, f"atomic {op} operand")
        return self._node("atomic", memory.element, (index, value), (op, memory))

    def atomic_add(self, memory: _Memory, index: Value | int, value: Value | float) -> Value:
        return self.atomic("add", memory, index, value)

    @contextmanager
    def _inside(self, block: Block) -> Iterator[None]:
        self._stack.append(block)
        try:
            yield
        finally:
            self._stack.pop()

    def _finish(self) -> None:
        if len(self._stack) != 1 or getattr(self, "_left_loop", False):
            raise TypeError(f"{self.name}: a k.range() loop was left with `break` or an exception; "
                            "leave kernel loops by their condition")


def kernel(fn: Callable | None = None, *, name: str | None = None,
           params: list[tuple[str, Type | Buffer]] | None = None, checked: bool = True) -> Any:
    """Trace a Python function into a Kernel. Its first parameter receives the builder; the others
    are the kernel's parameters, typed by annotation (ir.F32, ir.I64, ..., ir.Buffer(ir.U32)) or by
    `params` [(name, type), ...]. Use as @kernel or @kernel(checked=False)."""
    def trace(fn: Callable) -> Kernel:
        declared = params
        if declared is None:
            sig = inspect.signature(fn, eval_str=True)
            names = list(sig.parameters)[1:]
            declared = [(n, sig.parameters[n].annotation) for n in names]
            missing = [n for n, t in declared if t is inspect.Parameter.empty]
            if missing:
                raise TypeError(f"kernel {fn.__name__}: parameter(s) {', '.join(missing)} need a type annotation")
        k = Kernel(name or fn.__name__, declared, checked)
        result = fn(k, *k.args)
        k._finish()
        if result is not None:
            raise TypeError(f"kernel {k.name} returns {result!r}: kernels write results into buffers")
        return k
    return trace(fn) if fn is not None else trace


__all__ = ["Buffer", "Kernel", "kernel", "F32", "F64", "I32", "I64", "U32", "U64", "BOOL", "THREAD_IDS"]
