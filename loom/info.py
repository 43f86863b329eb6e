"""loom.info(): what this installation is and what it can run on."""
from __future__ import annotations

import platform
import sys


def info() -> dict:
    import ml_dtypes
    import numpy as np

    from . import __version__, backend
    from .nn.layers import REGISTRY
    from .config import SOFTMAX_VARIANTS
    devices = backend.available()
    gpus, cuda = [], {}
    if devices.get("cuda") == "ok":
        gpu = backend.get("cuda")
        gpus, cuda = gpu.devices(), gpu.versions()
    return {
        "loom": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "numpy": np.__version__,
        "ml_dtypes": ml_dtypes.__version__,
        "devices": devices,
        "gpus": gpus,           # index, name, memory_bytes, compute_capability of each visible GPU
        "cuda": cuda,           # cupy, cuda_runtime and cuda_driver versions ({} without a GPU)
        "layer_types": sorted(REGISTRY),
        "softmax_variants": list(SOFTMAX_VARIANTS),
        "format_version": 1,
    }
