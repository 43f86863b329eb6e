"""loom.info(): what this installation is and what it can run on."""
from __future__ import annotations

import platform
import sys


def info() -> dict:
    import numpy as np

    from . import backend, dtypes
    from .config import SOFTMAX_VARIANTS
    from .nn.layers import REGISTRY
    from .version import __version__
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
        "ml_dtypes": dtypes.ml_dtypes.__version__ if dtypes.ml_dtypes is not None else "not installed",
        "devices": devices,
        "gpus": gpus,           # index, name, memory_bytes, compute_capability of each visible GPU
        "cuda": cuda,           # cupy, cuda_runtime and cuda_driver versions ({} without a GPU)
        "accelerations": accelerations(devices.get("cuda", "not checked")),
        "extras": extras(),
        "layer_types": sorted(REGISTRY),
        "softmax_variants": list(SOFTMAX_VARIANTS),
        "format_version": 1,
    }


# optional packages: (distribution name, the pip extra that installs it, what Loom uses it for)
EXTRAS = (("numba", "cpu", "CPU compiled loops"), ("cupy", "cuda", "NVIDIA GPUs"),
          ("tokenizers", "llm", "LLM tokenizers"), ("jinja2", "llm", "LLM chat templates"),
          ("matplotlib", "plot", "loom plot, training curves"))


def extras() -> dict:
    """Optional packages: name -> {"version": installed version or None, "extra": the pip extra,
    "for": what Loom uses it for}. Read from package metadata, nothing is imported."""
    from importlib import metadata
    out = {}
    for dist, extra, what in EXTRAS:
        # CuPy ships as one distribution per CUDA major version (cupy-cuda12x, ...) or as plain cupy
        names = [dist] + ([d.metadata["Name"] for d in metadata.distributions()
                           if (d.metadata["Name"] or "").lower().startswith("cupy-")] if dist == "cupy" else [])
        version = None
        for name in names:
            try:
                version = metadata.version(name)
                break
            except metadata.PackageNotFoundError:
                continue
        out[dist] = {"version": version, "extra": extra, "for": what}
    return out


def accelerations(cuda: str) -> dict:
    """Which optional accelerations are active in this process and mode: name -> {"what": what it
    speeds up, "active": bool, "reason": why not (None when active)}. `cuda` is
    backend.available()["cuda"]: "ok" or why the GPU cannot run here. Read from the flags the code
    paths themselves check; CuPy is imported only where the GPU is available."""
    from .backend import get
    from .backend.cpu import jit as cpu_jit
    from .kernels.quant import gguf as gguf_quants
    from .llm.decoder import Decoder
    from .mode import is_deterministic
    gpu = None if cuda == "ok" else cuda
    k_quants = [t for t in gguf_quants.BLOCKS if t.endswith("_K")]
    block_types = set(get("cpu").quant.TYPES)
    if gpu is None:
        block_types |= set(get("cuda").quant.TYPES)

    def why_not_decode_graphs():
        if gpu:
            return gpu
        return None if Decoder.graphs else "loom.llm.decoder.Decoder.graphs is False"

    def why_not_int8():
        if gpu or not is_deterministic():
            return gpu or "deterministic mode only (fast mode runs cuBLAS SGEMM)"
        return None

    def why_not_k_quants():
        if not block_types.intersection(k_quants):
            return f"GPU only: the CPU decodes {', '.join(k_quants)} weights to float32 blocks for the GEMM"
        return None

    def entry(what, why_not):
        return {"what": what, "active": why_not is None, "reason": why_not}

    return {
        "numba": entry("CPU compiled loops: exact GEMM passes, SGD update, quantized decode products",
                       cpu_jit.unavailable_reason()),
        "cuda_graphs": entry("dispatch chains (TrainStep, net.compile()) replayed as CUDA graphs", gpu),
        "decode_graphs": entry("LLM decode steps replayed as one CUDA graph", why_not_decode_graphs()),
        "int8_exact_gemm": entry("exact GEMM slices on int8 tensor cores (loom/backend/cuda/exact_int8.py)",
                                 why_not_int8()),
        "kquant_kernels": entry(f"block kernels for {', '.join(k_quants)} products, fast and deterministic "
                                "(backend/cuda/quant.py, quant_exact.py)",
                                why_not_k_quants()),
    }
