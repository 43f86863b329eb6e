"""The model-file codec as nn sees it. Networks save themselves (Network.save, checkpoints in
loom.train), but the codec (loom/formats/loomfile.py) sits above nn in the dependency order: it
registers itself here when imported, and `import loom` (which any `import loom.<module>` runs
first) imports it."""
from __future__ import annotations

from types import ModuleType

from ..errors import LoomError

_CODEC: list[ModuleType] = []


def register(codec: ModuleType) -> None:
    """Make `codec` (a module with save, to_bytes, load and from_bytes) the one nn uses."""
    _CODEC[:] = [codec]


def codec() -> ModuleType:
    """The registered model-file codec."""
    if not _CODEC:
        raise LoomError("no model-file codec is registered: import loom (it registers loom.formats.loomfile)")
    return _CODEC[0]
