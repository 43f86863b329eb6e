"""The CUDA backend: CuPy arrays on the current NVIDIA GPU, cuBLAS for GEMM.

Only this module (and the CUDA kernel lowering in loom/kernels) imports cupy. TF32 stays off (CuPy's
default unless CUPY_TF32=1 is set): float32 GEMMs are full float32, so fast mode agrees with the CPU
within float32 rounding. Errors from CUDA (out of memory, launch failures) become BackendError
naming the operation and the shapes; the arrays already on the GPU stay valid.
"""
from __future__ import annotations

import contextlib

import numpy as np

from ..errors import BackendError


def _import_cupy():
    try:
        import cupy
    except ImportError:
        raise BackendError("device 'cuda' needs CuPy: pip install 'loom[cuda]' (cupy-cuda12x)") from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:   # CUDARuntimeError without a driver, or a broken install
        raise BackendError(f"device 'cuda': CuPy is installed but finds no usable GPU ({exc})") from None
    if count < 1:
        raise BackendError("device 'cuda': CuPy is installed but finds no GPU")
    return cupy


@contextlib.contextmanager
def translating(op: str, *arrays):
    """Turn CUDA/CuPy failures inside the block into BackendError naming `op` and the shapes."""
    try:
        yield
    except BackendError:
        raise
    except Exception as exc:
        name = type(exc).__name__
        if "OutOfMemory" in name or "CUDA" in name.upper() or "cuda" in type(exc).__module__:
            shapes = ", ".join(f"{list(a.shape)} {a.dtype}" for a in arrays if hasattr(a, "shape"))
            raise BackendError(f"CUDA {op} failed on {shapes or 'its inputs'}: {name}: {exc}") from None
        raise


class CUDABackend:
    name = "cuda"

    def __init__(self):
        self.xp = _import_cupy()

    def asarray(self, x, dtype=None):
        with translating("copy to the GPU", x):
            return self.xp.asarray(x, dtype=dtype)

    def to_numpy(self, x) -> np.ndarray:
        return self.xp.asnumpy(x) if isinstance(x, self.xp.ndarray) else np.asarray(x)

    def matmul(self, a, b, out=None):
        with translating("matmul", a, b):
            return self.xp.matmul(a, b, out=out)

    def sum(self, x, axis=None, keepdims: bool = False):
        with translating("sum", x):
            return self.xp.sum(x, axis=axis, keepdims=keepdims)

    def devices(self) -> list[dict]:
        """Every visible GPU: name, memory, compute capability."""
        rt = self.xp.cuda.runtime
        out = []
        for i in range(rt.getDeviceCount()):
            p = rt.getDeviceProperties(i)
            name = p["name"].decode() if isinstance(p["name"], bytes) else str(p["name"])
            out.append({"index": i, "name": name, "memory_bytes": int(p["totalGlobalMem"]),
                        "compute_capability": f"{p['major']}.{p['minor']}"})
        return out

    def versions(self) -> dict:
        rt = self.xp.cuda.runtime
        v = rt.runtimeGetVersion()
        d = rt.driverGetVersion()
        return {"cupy": self.xp.__version__, "cuda_runtime": f"{v // 1000}.{v % 1000 // 10}",
                "cuda_driver": f"{d // 1000}.{d % 1000 // 10}"}


_CUDA: CUDABackend | None = None


def get() -> CUDABackend:
    global _CUDA
    if _CUDA is None:
        _CUDA = CUDABackend()
    return _CUDA


def owns(array) -> bool:
    """Whether `array` is a CuPy array (without importing cupy when it was never loaded)."""
    return type(array).__module__.startswith("cupy")
