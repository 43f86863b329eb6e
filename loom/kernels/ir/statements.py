"""A kernel's memory, variables and statements: what kernel.py's builder records and what the
lowerings (lower_kernel.py, kernel_numpy.py) walk.

They live below both so that a Kernel can lower itself (Kernel.source) while the lowering reads the
statement types without importing the builder. kernel.py re-exports them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from . import BOOL, I64, Type, Value


class Tracer(Protocol):
    """The kernel being traced (kernel.Kernel), as its memory and variables call back into it."""
    name: str
    _stack: list[Block]

    @property
    def _block(self) -> Block: ...

    def _node(self, op: str, type_: Type, args: tuple, attr: object = None) -> Value: ...

    def _typed(self, value: Value | float, type_: Type, what: str) -> Value: ...

    def _load(self, memory: _Memory, index: Value | int) -> Value: ...

    def _store(self, memory: _Memory, index: Value | int, value: Value | float) -> None: ...

    def _emit(self, statement: object) -> None: ...


class TracedKernel(Protocol):
    """A finished kernel (kernel.Kernel), as a lowering reads it."""
    name: str
    checked: bool
    body: Block
    signature: list[tuple[str, Type | Buffer]]
    params: tuple[Value, ...]
    shared_arrays: list[Shared]

    @property
    def buffers(self) -> list[BufferParam]: ...


@dataclass(frozen=True)
class Buffer:
    """A buffer parameter's type: a one-dimensional array of `element`."""
    element: Type

    def __post_init__(self):
        if not isinstance(self.element, Type) or self.element == BOOL:
            raise TypeError(f"a buffer holds f32, f64, i32, i64, u32 or u64 elements, not {self.element!r}")

    def __repr__(self) -> str:
        return f"Buffer({self.element})"


class _Memory:
    """A buffer parameter or a shared array while a kernel is traced: x[i] loads, x[i] = v stores."""

    def __init__(self, kernel: Tracer, element: Type, name: str):
        self.kernel, self.element, self.name = kernel, element, name

    def __getitem__(self, index) -> Value:
        return self.kernel._load(self, index)

    def __setitem__(self, index, value) -> None:
        self.kernel._store(self, index, value)


class BufferParam(_Memory):
    def __init__(self, kernel: Tracer, element: Type, name: str, position: int):
        super().__init__(kernel, element, name)
        self.position = position

    @property
    def size(self) -> Value:
        """The buffer's length in elements (i64)."""
        return self.kernel._node("buffer_size", I64, (), self)

    def __repr__(self) -> str:
        return f"<buffer {self.name}: {self.element}>"


class Shared(_Memory):
    def __init__(self, kernel: Tracer, element: Type, size: int, index: int):
        super().__init__(kernel, element, f"shared{index}")
        self.length, self.index = size, index

    def __repr__(self) -> str:
        return f"<shared {self.name}: {self.element}[{self.length}]>"


class Var:
    """A mutable variable of one type, private to each thread: `v.value` reads, `v.value = x` assigns."""

    def __init__(self, kernel: Tracer, type_: Type, index: int):
        self.kernel, self.type, self.index = kernel, type_, index
        self.block = kernel._block          # where it is declared: it exists until that block ends

    @property
    def value(self) -> Value:
        return self.kernel._node("read", self.type, (), self)

    @value.setter
    def value(self, new: Value | float) -> None:
        if not any(b is self.block for b in self.kernel._stack):
            raise TypeError(f"{self.kernel.name}: variable {self.index} was declared inside a block that has ended")
        new = self.kernel._typed(new, self.type, f"assignment to variable {self.index}")
        self.kernel._emit(Assign(self, new))

    def __repr__(self) -> str:
        return f"<var{self.index}: {self.type}>"


# -- statements ------------------------------------------------------------------------------------
class Block(list):
    """Statements in order."""
    __hash__ = object.__hash__


@dataclass(eq=False)
class Let:
    node: Value


@dataclass(eq=False)
class Store:
    target: _Memory
    index: Value
    value: Value


@dataclass(eq=False)
class Declare:
    var: Var
    init: Value


@dataclass(eq=False)
class Assign:
    var: Var
    value: Value


@dataclass(eq=False)
class If:
    cond: Value
    then: Block
    orelse: Block | None = None


@dataclass(eq=False)
class For:
    start: Value
    stop: Value
    step: Value
    body: Block
    index: Value | None = None


@dataclass(eq=False)
class While:
    header: Block
    body: Block
    cond: Value | None = None


@dataclass(eq=False)
class Barrier:
    pass
