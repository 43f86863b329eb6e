"""Deterministic or fast mode: which implementation `loom.kernels.ops` uses for GEMMs, reductions and
transcendentals.

Deterministic mode (the default) makes every result a pure function of its inputs: exact,
order-independent sums and Loom's own transcendentals, the same bits on every backend
(docs/determinism.md). Fast mode uses the vendor libraries (BLAS, cuBLAS, libm, fused kernels).

The mode is a context variable: `with loom.deterministic(False):` affects the current thread (and
asyncio task) only, and nests.
"""
from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

_DETERMINISTIC = contextvars.ContextVar("loom_deterministic", default=True)


def is_deterministic() -> bool:
    return _DETERMINISTIC.get()


def set_deterministic(flag: bool) -> None:
    """Select the mode for the rest of this context (the CLI's --fast); prefer `deterministic()`."""
    _DETERMINISTIC.set(_check(flag))


@contextlib.contextmanager
def deterministic(flag: bool = True) -> Iterator[None]:
    """`with loom.deterministic(False):` runs the block in fast mode; `deterministic(True)` restores
    the default inside a fast block."""
    token = _DETERMINISTIC.set(_check(flag))
    try:
        yield
    finally:
        _DETERMINISTIC.reset(token)


def enter(flag: bool) -> contextvars.Token:
    """Select the mode for this context until leave(token): deterministic()'s work without a generator,
    for callers on a hot path (each call of the C ABI, loom/capi/runtime.py)."""
    return _DETERMINISTIC.set(_check(flag))


def leave(token: contextvars.Token) -> None:
    _DETERMINISTIC.reset(token)


def name() -> str:
    return "deterministic" if _DETERMINISTIC.get() else "fast"


def _check(flag) -> bool:
    if not isinstance(flag, bool):
        raise TypeError(f"deterministic mode is True or False, got {flag!r}")
    return flag
