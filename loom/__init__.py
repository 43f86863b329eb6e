"""Loom: a deterministic neural compute runtime. Networks are portable JSON, run on CPU (NumPy)."""
from .errors import BackendError, ConfigError, DeterminismError, FormatError, LoomError, ShapeError
from .nn import Network, NonFinite
from .info import info

__version__ = "0.1.0"

__all__ = ["Network", "NonFinite", "info", "LoomError", "ConfigError", "ShapeError", "FormatError",
           "BackendError", "DeterminismError", "__version__"]
