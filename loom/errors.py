"""Loom's typed errors. Every message names the bad value and where it is."""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager


class LoomError(Exception):
    """Base of every error Loom raises on purpose."""


class ConfigError(LoomError, ValueError):
    """A network config is invalid. `path` is the JSON path of the bad value (e.g. "layers[3].units")."""

    def __init__(self, path: str, message: str):
        self.path = path
        self.reason = message
        super().__init__(f"{path}: {message}" if path else message)


@contextmanager
def renamed_paths(names: Mapping[str, str]) -> Iterator[None]:
    """Re-raise a ConfigError whose path is a key of `names`, or lies under one (`key.x`, `key[0]`),
    with that part of the path replaced by its value: a setting checked by library code, named as the
    user gave it (`epochs` -> `--epochs`, `optimizer.schedule` -> `training.schedule`)."""
    try:
        yield
    except ConfigError as exc:
        for old, new in names.items():
            if old != new and (exc.path == old or exc.path.startswith((old + ".", old + "["))):
                raise ConfigError(new + exc.path[len(old):], exc.reason) from None
        raise


class ShapeError(LoomError, ValueError):
    """An array has the wrong shape or dtype for where it is used."""


class FormatError(LoomError, ValueError):
    """A file or byte string is malformed; the message names the offset or tensor."""


class BackendError(LoomError, RuntimeError):
    """A backend cannot run what was asked (missing library, device error, out of memory)."""


class EngineError(LoomError, RuntimeError):
    """A compute-engine object (loom.engine: a unit, a program, a swarm) is used out of turn: read
    while its program runs, dispatched into after shutdown or build, bound to a mismatched kernel."""


class KernelFault(EngineError, IndexError):
    """A kernel accessed a buffer or shared array outside its bounds; the message names the kernel,
    the buffer and, where known, the index and the thread."""


class StoreError(LoomError, RuntimeError):
    """A store (loom.db) is used out of turn: a second writer while one holds it, a write to a store
    opened read-only, any use after close."""


class NotFoundError(LoomError, KeyError):
    """An id or key that is not there (loom.db: a vector id, a table row); the message names it."""

    def __str__(self) -> str:             # KeyError would print the message in quotes
        return str(self.args[0]) if self.args else ""


class DeterminismError(LoomError, RuntimeError):
    """A result differs where the determinism contract says it cannot, or deterministic mode cannot
    keep that contract for an operation (loom/fallback.py): the message names the operation and why."""


class NumericError(LoomError, ArithmeticError):
    """A computation produced NaN or infinity where that means a failure (training, data): the
    message names the sample, the batch, the layer or the parameter where it first appeared."""


class DistributedError(LoomError, RuntimeError):
    """A data-parallel world cannot form or keep going (loom.distributed): a rank that does not
    reach the rendezvous, dies or hangs past the timeout, ranks with mismatched configs or world
    sizes, more GPUs asked than present, NCCL missing. The message names the rank and the reason."""
