"""Loom: a deterministic neural compute runtime. Networks are portable JSON, run on CPU (NumPy) and NVIDIA GPUs (CuPy)."""
from __future__ import annotations

from .distributed import train
from .engine import prime_count, primes
from .engine.patterns import argmax, argmin, argsort, histogram, map, matmul, max, mean, min, scan, sort, sum, topk
from .errors import BackendError, ConfigError, DeterminismError, FormatError, LoomError, ShapeError
from .formats import from_bytes, load
from .info import info
from .mixed_precision import precision
from .mode import deterministic, is_deterministic
from .nn import Network, NonFinite
from .nn.train import evaluate, predict
from .version import __version__


def __getattr__(name: str):
    # loom.DETERMINISM_SPEC, the version of deterministic mode's rules (docs/determinism.md), read
    # from loom.spec on first use (importing it here would break `python -m loom.spec`)
    if name == "DETERMINISM_SPEC":
        from .spec import SPEC
        return SPEC
    # loom.llm (loom.llm.load: language models from GGUF files and HuggingFace directories) on first use: a
    # quarter of `import loom`'s time, which every CLI command and C ABI process paid without using it
    if name == "llm":
        import importlib
        return importlib.import_module(".llm", __name__)
    raise AttributeError(f"module 'loom' has no attribute {name!r}")

__all__ = ["llm", "Network", "NonFinite", "train", "evaluate", "predict", "info", "deterministic", "precision",
           "is_deterministic", "load", "from_bytes", "LoomError", "ConfigError", "ShapeError", "FormatError",
           "BackendError", "DeterminismError", "DETERMINISM_SPEC", "__version__",
           # the compute engine's one-call patterns (loom/engine/patterns.py) and prime counting
           "sum", "min", "max", "mean", "argmin", "argmax", "map", "scan", "sort", "argsort", "topk",
           "histogram", "matmul", "prime_count", "primes"]
