"""Hooks: see what each layer of a network outputs, and when a backward pass has finished, without
changing what anything computes.

A hook is installed by replacing a method with a wrapper in the object's own `__dict__` (the
class's method stays untouched); leaving the block puts back exactly what was there before, so hooks
nest: Network.check_finite can run inside a training step that Telemetry watches, and each removes
only its own wrapper. A wrapper calls the method, hands the hook what it needs and returns the
method's result unchanged: the network's bits are those of an unhooked run.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ..backend import Array
from .layers import Layer

ForwardHook = Callable[[str, Layer, Array, Array], None]    # hook(path, layer, x, y) after y = layer.forward(x)

_ABSENT = object()


@contextlib.contextmanager
def patched(targets: Iterable[tuple[Any, str, Callable[[Callable], Callable]]]) -> Iterator[None]:
    """While the block runs, each (obj, name, make) has obj.name replaced by make(obj.name)."""
    installed: list[tuple[Any, str, Any]] = []
    try:
        for obj, name, make in targets:
            installed.append((obj, name, obj.__dict__.get(name, _ABSENT)))
            setattr(obj, name, make(getattr(obj, name)))
        yield
    finally:
        for obj, name, before in reversed(installed):
            if before is _ABSENT:
                obj.__dict__.pop(name, None)
            else:
                setattr(obj, name, before)


def forward_hooks(layers: Iterable[tuple[str, Layer]], hook: ForwardHook) -> contextlib.AbstractContextManager[None]:
    """While the block runs, every (path, layer) given calls hook(path, layer, x, y) after each forward.
    Containers finish after the layers inside them, so a hook sees inner layers first."""
    def make(path, layer):
        def wrap(original):
            def hooked(x, fc):
                y = original(x, fc)
                hook(path, layer, x, y)
                return y
            return hooked
        return wrap
    return patched((layer, "forward", make(path, layer)) for path, layer in layers)


def after_call(obj: Any, name: str, hook: Callable[[], None]) -> contextlib.AbstractContextManager[None]:
    """While the block runs, every call of obj.name (a method) runs hook() after it returns."""
    def wrap(original):
        def hooked(*args, **kwargs):
            out = original(*args, **kwargs)
            hook()
            return out
        return hooked
    return patched([(obj, name, wrap)])
