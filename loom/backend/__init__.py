"""The backend protocol: where arrays live and which library does the arithmetic.

A backend names its array module (`xp`, NumPy-compatible) and the few primitives whose results
depend on summation order (GEMM and reductions), so that deterministic mode can replace exactly
those. Layers never ask where an array lives; they use the backend they were built with.
"""
from __future__ import annotations

import functools
from typing import Any, Protocol

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from ..errors import BackendError, DeterminismError

# An array of some backend: numpy.ndarray on the CPU, cupy.ndarray on the GPU (annotations only; which
# one is the owning backend's business, `of`).
Array = Any


class Backend(Protocol):
    name: str
    xp: Any  # the array module: numpy, or cupy on the GPU
    graphs: bool  # whether record() can capture work into a replayable graph (CUDA)

    def asarray(self, x: ArrayLike | Array, dtype: DTypeLike = None) -> Array: ...
    def to_numpy(self, x: Array) -> np.ndarray: ...
    def copy_into(self, dst: Array, src: Array) -> None: ...
    def matmul(self, a: Array, b: Array, out: Array | None = None) -> Array: ...
    def sum(self, x: Array, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Array: ...
    def synchronize(self) -> None: ...
    def may_be_true(self, flag: Array) -> bool: ...   # a data-dependent branch: True when it cannot look


def get(name: str) -> Backend:
    """The backend called `name` ("cpu" or "cuda")."""
    if name == "cpu":
        from .cpu import CPU
        return CPU
    if name == "cuda":
        from . import cuda
        return cuda.get()
    raise BackendError(f"unknown device {name!r}; expected 'cpu' or 'cuda'")


@functools.cache
def _cpu() -> Backend:
    from .cpu import CPU  # imported once: `of` runs hundreds of times per LLM decode step
    return CPU


def of(array: Array | float) -> Backend:
    """The backend that owns `array` (NumPy arrays and Python scalars belong to the CPU)."""
    if isinstance(array, (np.ndarray, np.generic, float, int)):
        return _cpu()
    from . import cuda
    if cuda.owns(array):
        return cuda.get()
    raise BackendError(f"no backend owns arrays of type {type(array).__module__}.{type(array).__name__}")


def available() -> dict[str, str]:
    """Each known device and whether it can run here in the current mode ("ok" or the reason it
    cannot: a GPU that cannot keep deterministic mode's contract is not available in that mode)."""
    out = {"cpu": "ok"}
    try:
        get("cuda")
        out["cuda"] = "ok"
    except (BackendError, DeterminismError) as exc:
        out["cuda"] = str(exc)
    return out
