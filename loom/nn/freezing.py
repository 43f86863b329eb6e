"""Freezing: parameters chosen by glob patterns over their dotted names stop training.

    net.freeze("layers.0.branches.*")      # the experts of a filter mixture; returns the names frozen
    net.unfreeze("*.bias")                 # pattern errors name the pattern: ConfigError at unfreeze[0]

A frozen parameter stays in net.parameters() and in the state dict (saved, loaded, moved, counted
as before: PyTorch's requires_grad=False, which its state_dict does not record either), but its
layer holds no gradient buffer for it. So backward computes no gradient for it (input gradients
still flow through its layer to trainable layers before it), net.gradients() leaves it out, and an
optimizer built on net.parameters() leaves it out too (the dict's `.frozen`): no state, no update,
no weight decay, no part in the clipping norm. A network's freezing is not part of its config or
its model file; the config's training block can list patterns (training.freeze) that loom.train
freezes before it builds the optimizer.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase
from typing import Any

from ..errors import ConfigError
from .built_network import BuiltNetwork
from .layers import Layer


class Parameters(dict):
    """What net.parameters() returns: name -> live array, and `frozen`, the names that were frozen
    when it was taken (optimizers built on it leave those out)."""

    def __init__(self, items: Mapping[str, Any] | Iterable[tuple[str, Any]] = (), frozen: Iterable[str] = ()):
        super().__init__(items)
        self.frozen = frozenset(frozen)


def owners(net: BuiltNetwork) -> dict[str, tuple[Layer, str]]:
    """Each parameter's name -> (the layer holding it, its key in that layer), in parameter order."""
    return {f"{prefix}.{key}" if prefix else key: (layer, key)
            for prefix, layer in net.root.walk() for key in layer.params}


def frozen(net: BuiltNetwork) -> list[str]:
    """The names of the frozen parameters, in parameter order (a quantized network has none: its
    stored weights are inference-only, not frozen)."""
    if net.quantized:
        return []
    return [name for name, (layer, key) in owners(net).items() if not layer.trains(key)]


def select(names: Iterable[str], patterns: tuple[Any, ...], what: str) -> list[str]:
    """The names matched by any of the glob patterns, in the order of `names`. ConfigError at
    "<what>[i]" for a pattern that is not a string or matches no name; at "<what>" for no patterns."""
    names = list(names)
    if not patterns:
        raise ConfigError(what, "give at least one parameter-name pattern (\"*\" for every parameter)")
    for i, pattern in enumerate(patterns):
        if not isinstance(pattern, str) or not pattern:
            raise ConfigError(f"{what}[{i}]", f"expected a glob pattern over parameter names, got {pattern!r}")
        if not any(fnmatchcase(name, pattern) for name in names):
            example = names[0] if names else "layers.0.weight"
            raise ConfigError(f"{what}[{i}]", f"pattern {pattern!r} matches no parameter name (names look like "
                              f"{example!r}; patterns are globs such as 'layers.0.*' or '*.bias')"
                              + ("" if names else "; this network has no parameters"))
    return [name for name in names if any(fnmatchcase(name, p) for p in patterns)]


def freeze(net: BuiltNetwork, patterns: tuple[Any, ...], what: str = "freeze") -> list[str]:
    """Freeze the parameters matching any pattern; returns the names this call froze."""
    return _set(net, patterns, what, trainable=False)


def unfreeze(net: BuiltNetwork, patterns: tuple[Any, ...], what: str = "unfreeze") -> list[str]:
    """Unfreeze the parameters matching any pattern (zeroed gradient buffers); returns the names
    this call unfroze."""
    return _set(net, patterns, what, trainable=True)


def freeze_exact(net: BuiltNetwork, names: Iterable[str]) -> None:
    """Freeze the parameters of exactly these names (no patterns): how Network.to carries its
    freezing over to the layers it rebuilds."""
    table = owners(net)
    for name in names:
        layer, key = table[name]
        layer.freeze_param(key)


def _set(net, patterns, what, trainable):
    if net.quantized:
        raise ConfigError("quantization", f"{what}: a network quantized to {net.config['quantization']['dtype']} "
                          "runs inference only; freeze parameters of its float original")
    table = owners(net)
    changed = []
    for name in select(table, patterns, what):       # every pattern checked before anything changes
        layer, key = table[name]
        if layer.trains(key) != trainable:
            if trainable:
                layer.unfreeze_param(key)
            else:
                layer.freeze_param(key)
            changed.append(name)
    return changed


__all__ = ["Parameters", "freeze", "freeze_exact", "frozen", "owners", "select", "unfreeze"]
