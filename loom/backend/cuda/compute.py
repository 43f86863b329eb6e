"""The compute engine's GPU primitives (protocols.ComputeKernels): compiling generated kernels,
streams, launches, recording a stream's launches into a CUDA graph, events, and transfers.

loom.engine builds units, chains and swarms on these; it never imports cupy. Kernels are compiled once
per source text (NVRTC through CuPy's RawModule, Loom's IEEE options). Recording uses the relaxed
capture mode, so chains of several units can be recorded on worker threads at once.
"""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

import numpy as np
from numpy.typing import DTypeLike

from .. import Array
from .compile import OPTIONS, translating


class Compute:
    def __init__(self, cp: ModuleType):
        self._cp = cp
        self._functions: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()

    def function(self, source: str, name: str) -> Any:
        """The compiled kernel `name` of `source` (cached by the text)."""
        key = (source, name)
        fn = self._functions.get(key)
        if fn is None:
            with self._lock, translating(f"compiling kernel {name}"):
                fn = self._functions.get(key)
                if fn is None:
                    fn = self._cp.RawModule(code=source, options=OPTIONS).get_function(name)
                    self._functions[key] = fn
        return fn

    def zeros(self, count: int, dtype: DTypeLike, stream: Any = None) -> Array:
        """A zero-filled array, the zeros written on `stream` (and finished when this returns: a unit's
        non-blocking stream is not ordered with the stream CuPy would use otherwise)."""
        with translating(f"allocating {count} x {np.dtype(dtype).name}"):
            if stream is None:
                return self._cp.zeros(count, dtype=dtype)
            with stream:
                out = self._cp.zeros(count, dtype=dtype)
            stream.synchronize()
            return out

    def stream(self) -> Any:
        return self._cp.cuda.Stream(non_blocking=True)

    def external_stream(self, handle: int) -> Any:
        return self._cp.cuda.ExternalStream(handle)

    def csr_matmul(self, row_ptr: Array, col_idx: Array, values: Array, shape: tuple[int, int], dense: Array) -> Array:
        from cupyx.scipy import sparse
        with translating("sparse matrix product", dense):
            matrix = sparse.csr_matrix((values, col_idx.astype(np.int32), row_ptr.astype(np.int32)), shape=shape)
            return matrix @ dense

    def launch(self, fn: Any, grid: tuple[int, int], args: Sequence, stream: Any) -> None:
        with translating("kernel launch"), stream:
            fn((grid[0],), (grid[1],), tuple(args))

    def record(self, stream: Any, launches: Callable[[], None]) -> Any:
        """Run launches() under capture on `stream` and return the instantiated graph."""
        cp = self._cp
        mode = getattr(cp.cuda.runtime, "streamCaptureModeRelaxed", None)
        with translating("recording a dispatch chain"), stream:
            if mode is None:
                stream.begin_capture()
            else:
                stream.begin_capture(mode)
            try:
                launches()
            except BaseException:
                with contextlib.suppress(Exception):
                    stream.end_capture()
                raise
            return stream.end_capture()

    def replay(self, graph: Any, stream: Any) -> None:
        with translating("replaying a dispatch chain"):
            graph.launch(stream)

    def event(self, stream: Any) -> Any:
        event = self._cp.cuda.Event(block=False, disable_timing=True)
        event.record(stream)
        return event

    def done(self, event: Any) -> bool:
        return bool(event.done)

    def wait(self, event: Any) -> None:
        with translating("waiting for a dispatch chain"):
            event.synchronize()

    def upload(self, dst: Array, offset: int, host: np.ndarray, stream: Any) -> None:
        """dst[offset:offset + len(host)] = host, finished when this returns."""
        with translating("copy to a unit", dst):
            dst[offset:offset + host.size].set(np.ascontiguousarray(host), stream=stream)
            stream.synchronize()

    def copy(self, dst: Array, offset: int, src: Array, stream: Any) -> None:
        """dst[offset:offset + len(src)] = src for a device array src, finished when this returns."""
        with translating("copy within the GPU", dst, src), stream:
            dst[offset:offset + src.size] = src
            stream.synchronize()

    def download(self, src: Array, offset: int, count: int, stream: Any) -> np.ndarray:
        with translating("copy from a unit", src):
            out = src[offset:offset + count].get(stream=stream)
            stream.synchronize()
            return out

    def fill(self, dst: Array, value: Any, stream: Any) -> None:
        with translating("fill", dst), stream:
            dst.fill(value)
            stream.synchronize()
