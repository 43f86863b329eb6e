"""Loom: a deterministic neural compute runtime. Networks are portable JSON, run on CPU (NumPy) and NVIDIA GPUs (CuPy)."""
from . import llm  # loom.llm.load: language models from GGUF files and HuggingFace directories
from .errors import BackendError, ConfigError, DeterminismError, FormatError, LoomError, ShapeError
from .info import info
from .mode import deterministic, is_deterministic
from .nn import Network, NonFinite
from .nn.train import evaluate, predict, train


def load(path) -> Network:
    """A network from a Loom model file (see Network.save)."""
    from .formats import loomfile
    return loomfile.load(path)[0]


def from_bytes(data: bytes) -> Network:
    from .formats import loomfile
    return loomfile.from_bytes(data)[0]

__version__ = "0.1.0"


def __getattr__(name: str):
    # loom.DETERMINISM_SPEC, the version of deterministic mode's rules (docs/determinism.md), read
    # from loom.spec on first use (importing it here would break `python -m loom.spec`)
    if name == "DETERMINISM_SPEC":
        from .spec import SPEC
        return SPEC
    raise AttributeError(f"module 'loom' has no attribute {name!r}")

__all__ = ["llm", "Network", "NonFinite", "train", "evaluate", "predict", "info", "deterministic",
           "is_deterministic", "load", "from_bytes", "LoomError", "ConfigError", "ShapeError", "FormatError",
           "BackendError", "DeterminismError", "DETERMINISM_SPEC", "__version__"]
