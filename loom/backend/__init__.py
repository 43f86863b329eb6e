"""The backend protocol: where arrays live and which library does the arithmetic.

A backend names its array module (`xp`, NumPy-compatible), the few primitives whose results
depend on summation order (GEMM and reductions), so that deterministic mode can replace exactly
those, and the kernel families it accelerates (protocols.py). Layers never ask where an array
lives; they use the backend they were built with, through loom.kernels.ops.
"""
from __future__ import annotations

import functools

import numpy as np

from ..errors import BackendError, DeterminismError
from .protocols import Array, Backend  # re-exported: what every backend provides (protocols.py)

__all__ = ["Array", "Backend", "available", "get", "of"]


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
