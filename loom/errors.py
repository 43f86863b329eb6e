"""Loom's typed errors. Every message names the bad value and where it is."""
from __future__ import annotations


class LoomError(Exception):
    """Base of every error Loom raises on purpose."""


class ConfigError(LoomError, ValueError):
    """A network config is invalid. `path` is the JSON path of the bad value (e.g. "layers[3].units")."""

    def __init__(self, path: str, message: str):
        self.path = path
        self.reason = message
        super().__init__(f"{path}: {message}" if path else message)


class ShapeError(LoomError, ValueError):
    """An array has the wrong shape or dtype for where it is used."""


class FormatError(LoomError, ValueError):
    """A file or byte string is malformed; the message names the offset or tensor."""


class BackendError(LoomError, RuntimeError):
    """A backend cannot run what was asked (missing library, device error, out of memory)."""


class DeterminismError(LoomError, RuntimeError):
    """A result differs where the determinism contract says it cannot, or deterministic mode cannot
    keep that contract for an operation (loom/fallback.py): the message names the operation and why."""


class NumericError(LoomError, ArithmeticError):
    """A computation produced NaN or infinity where that means a failure (training, data): the
    message names the sample, the batch, the layer or the parameter where it first appeared."""
