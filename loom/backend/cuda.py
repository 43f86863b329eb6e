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
    graphs = True       # record() can capture a step into a CUDA graph

    def __init__(self):
        self.xp = _import_cupy()
        self._blas = None
        from . import cuda_kernels      # fused kernels behind loom.kernels.fused
        self.fused = cuda_kernels

    def asarray(self, x, dtype=None):
        with translating("copy to the GPU", x):
            return self.xp.asarray(x, dtype=dtype)

    def to_numpy(self, x) -> np.ndarray:
        return self.xp.asnumpy(x) if isinstance(x, self.xp.ndarray) else np.asarray(x)

    def matmul(self, a, b, out=None):
        from .cublas import supports
        with translating("matmul", a, b):
            if supports(a, b):
                return self.blas.gemm(a, b, out=out)
            return self.xp.matmul(a, b, out=out)     # integer and mixed dtypes: eager only

    @property
    def blas(self):
        """Loom's own cuBLAS handle (see cublas.py: CuPy's cannot be recorded into graphs)."""
        if self._blas is None:
            from .cublas import CuBLAS
            self._blas = CuBLAS(self.xp)
        return self._blas

    def synchronize(self) -> None:
        self.xp.cuda.get_current_stream().synchronize()

    def record(self, fn):
        """Run fn() under stream capture and return (Graph, fn's result). Nothing runs on the GPU
        while recording; the graph's memory comes from its own pool, so nothing else can reuse the
        buffers it reads and writes between launches. Host transfers and synchronizations inside
        fn raise (CuPy refuses them while capturing) and the capture is abandoned."""
        cp = self.xp
        pool = cp.cuda.MemoryPool()
        stream = cp.cuda.Stream(non_blocking=False)      # ordered with the default stream
        self.synchronize()
        with cp.cuda.using_allocator(pool.malloc), stream:
            stream.begin_capture()
            try:
                result = fn()
            except BaseException:
                with contextlib.suppress(Exception):
                    stream.end_capture()
                raise
            graph = stream.end_capture()
        return Graph(graph, pool, stream, cp), result

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


class Graph:
    """A recorded CUDA graph with the memory pool and stream it was recorded with (kept alive)."""

    def __init__(self, graph, pool, stream, cp):
        self.graph, self.pool, self.stream, self._cp = graph, pool, stream, cp

    def launch(self) -> None:
        """Replay on the current stream (after whatever was queued there, e.g. input copies)."""
        with translating("graph launch"):
            self.graph.launch(self._cp.cuda.get_current_stream())

    @property
    def nbytes(self) -> int:
        return self.pool.total_bytes()


_CUDA: CUDABackend | None = None


def get() -> CUDABackend:
    global _CUDA
    if _CUDA is None:
        _CUDA = CUDABackend()
    return _CUDA


def owns(array) -> bool:
    """Whether `array` is a CuPy array (without importing cupy when it was never loaded)."""
    return type(array).__module__.startswith("cupy")
