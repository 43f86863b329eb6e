"""File formats: safetensors, the Loom model file."""
from __future__ import annotations

import os

from ..nn import Network
from . import loomfile


def load(path: str | os.PathLike[str]) -> Network:
    """A network from a Loom model file (see Network.save); `loom.load`."""
    return loomfile.load(path)[0]


def from_bytes(data: bytes) -> Network:
    """A network from a Loom model file's bytes (Network.to_bytes); `loom.from_bytes`."""
    return loomfile.from_bytes(data)[0]
