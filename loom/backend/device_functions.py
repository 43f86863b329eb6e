"""Device functions that backend kernels call but the kernels layer writes: deterministic mode's
transcendentals (loom.kernels.mathlib, lowered to CUDA C by loom.kernels' IR). The backend sits below
the kernels layer and does not import it; the kernels layer registers a generator of the source text
when imported (`import loom` imports it), and the backend asks for the text when it compiles."""
from __future__ import annotations

from collections.abc import Callable
from functools import cache

from ..errors import BackendError

_GENERATORS: dict[str, Callable[[], str]] = {}


def register(name: str, generate: Callable[[], str]) -> None:
    """Make generate() the source of the device functions called `name` (called once, when needed)."""
    _GENERATORS[name] = generate
    source.cache_clear()


@cache
def source(name: str) -> str:
    """The registered device functions `name` as source text."""
    if name not in _GENERATORS:
        raise BackendError(f"no device functions {name!r} are registered (loom.kernels registers them: import loom)")
    return _GENERATORS[name]()
