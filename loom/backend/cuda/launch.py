"""Kernel launches that may overlap the previous kernel's tail (Hopper's programmatic dependent launch).

A recorded decode step is ~150 short, latency-bound kernels in a row. Launched plainly, each starts
only after the previous one has finished and its blocks have drained, and then starts by waiting
for weights from device memory. Launched with the driver's
CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION, a kernel may start as soon as every block of
the one before has executed `griddepcontrol.launch_dependents`; it then loads what does not depend on
that kernel (its weights, the cached keys) and executes `griddepcontrol.wait`, which returns once the
previous kernel has completed and its writes are visible. Kernels launched this way must read
nothing the previous kernels write, and write nothing at all, before that wait (OVERLAP_PROLOGUE
below is the convention the decode kernels follow).

CuPy's RawKernel call has no launch attributes, so `launch` calls the driver's cuLaunchKernelEx
through ctypes with CuPy's function handle and current stream (stream capture records it like any
launch). Without the driver entry point (a CUDA older than 12) it falls back to CuPy's plain launch:
`griddepcontrol.wait` is then a no-op, so the kernels are correct either way.
"""
from __future__ import annotations

import ctypes
import logging
from typing import TYPE_CHECKING

import numpy as np

from ... import fallback
from ...errors import BackendError

if TYPE_CHECKING:
    import cupy

# The two instructions every overlapping kernel runs: wait for the previous kernel (its writes are
# visible after this), then let the next kernel launch (placed after the wait, so at most one kernel
# ahead is resident and waiting).
OVERLAP_PROLOGUE = r"""
__device__ __forceinline__ void wait_for_previous_kernel() {
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" :::);
}
__device__ __forceinline__ void prefetch_l1(const void* p) { asm volatile("prefetch.global.L1 [%0];" :: "l"(p)); }
"""

_PROGRAMMATIC_STREAM_SERIALIZATION = 6      # CUlaunchAttributeID


class _Attribute(ctypes.Structure):          # CUlaunchAttribute: id, padding, a 64-byte value union
    _fields_ = [("id", ctypes.c_int), ("pad", ctypes.c_char * 4), ("value", ctypes.c_int),
                ("rest", ctypes.c_char * 60)]


class _Config(ctypes.Structure):             # CUlaunchConfig
    _fields_ = [("grid", ctypes.c_uint * 3), ("block", ctypes.c_uint * 3), ("shared", ctypes.c_uint),
                ("stream", ctypes.c_void_p), ("attrs", ctypes.POINTER(_Attribute)), ("num_attrs", ctypes.c_uint)]


_DRIVER: list = []                            # [libcuda or None], resolved once


def _driver():
    if not _DRIVER:
        lib = None
        try:
            lib = ctypes.CDLL("libcuda.so.1")
            lib.cuLaunchKernelEx.restype = ctypes.c_int
            lib.cuGetErrorName.restype = ctypes.c_int
        except (OSError, AttributeError) as exc:
            lib = None
            fallback.notice_once(f"fast mode: decode kernels launch one after another, without overlapping "
                                 f"(no cuLaunchKernelEx in the CUDA driver: {exc})", logging.INFO)
        _DRIVER.append(lib)
    return _DRIVER[0]


def _c_value(a):
    """A ctypes value for one kernel argument (a device array's address, or a NumPy scalar)."""
    if hasattr(a, "data") and hasattr(a.data, "ptr"):
        return ctypes.c_uint64(a.data.ptr)
    for kind, ctype in ((np.uint64, ctypes.c_uint64), (np.int64, ctypes.c_int64), (np.int32, ctypes.c_int32),
                        (np.float32, ctypes.c_float), (np.float64, ctypes.c_double)):
        if isinstance(a, kind):
            return ctype(a)
    raise BackendError(f"kernel argument of type {type(a).__name__} cannot be passed to cuLaunchKernelEx")


def multiprocessors(device: int | None = None) -> int:
    """The multiprocessors of GPU `device` (by default the current one), asked once a device: CuPy's
    Device.attributes reads every attribute of the device each time."""
    import cupy
    if device is None:
        device = cupy.cuda.runtime.getDevice()
    count = _MULTIPROCESSORS.get(device)
    if count is None:
        count = _MULTIPROCESSORS[device] = cupy.cuda.Device(device).attributes["MultiProcessorCount"]
    return count


_MULTIPROCESSORS: dict = {}


def resident_per_sm(kernel: cupy.RawKernel, threads: int, shared: int = 0) -> int:
    """Blocks of `threads` threads with `shared` bytes of dynamic shared memory (its registers and static shared
    memory its own) that one multiprocessor of the current GPU holds at once, by the driver's occupancy query (at
    least 1); kept per device, kernel and size. The kernel's dynamic shared memory limit is raised to `shared`
    where it is below, as `launch` does."""
    import cupy  # (cupy is loaded: the kernel is one of its objects)
    key = (cupy.cuda.Device().id, kernel.kernel.ptr, threads, shared)
    if key not in _RESIDENT:
        if shared and kernel.max_dynamic_shared_size_bytes < shared:
            kernel.max_dynamic_shared_size_bytes = shared
        per_sm = cupy.cuda.driver.occupancyMaxActiveBlocksPerMultiprocessor(kernel.kernel.ptr, threads, shared)
        _RESIDENT[key] = max(1, per_sm)
    return _RESIDENT[key]


_RESIDENT: dict = {}


def launch(kernel: cupy.RawKernel, grid: int, block: int, args: tuple, overlap: bool, shared: int = 0) -> None:
    """kernel<<<grid, block, shared>>>(*args) for a cupy.RawKernel on CuPy's current stream; with
    overlap, as a programmatic dependent launch. shared: bytes of dynamic shared memory (the kernel's
    limit, 48 KiB less its static shared memory unless raised, is raised to it where it is below)."""
    if shared and kernel.max_dynamic_shared_size_bytes < shared:
        kernel.max_dynamic_shared_size_bytes = shared
    lib = _driver() if overlap else None
    if lib is None:
        kernel((grid,), (block,), args, shared_mem=shared)
        return
    import cupy  # (cupy is loaded: the kernel is one of its objects)
    stream_ptr = cupy.cuda.get_current_stream().ptr
    values = [_c_value(a) for a in args]
    params = (ctypes.c_void_p * len(values))(*[ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for v in values])
    attr = _Attribute(id=_PROGRAMMATIC_STREAM_SERIALIZATION, value=1)     # programmaticStreamSerializationAllowed
    config = _Config((grid, 1, 1), (block, 1, 1), shared, ctypes.c_void_p(stream_ptr), ctypes.pointer(attr), 1)
    function = kernel.kernel            # a RawKernel's compiled cupy.cuda.Function for the current device
    status = lib.cuLaunchKernelEx(ctypes.byref(config), ctypes.c_void_p(function.ptr), params, None)
    if status != 0:
        name = ctypes.c_char_p()
        lib.cuGetErrorName(status, ctypes.byref(name))
        raise BackendError(f"cuLaunchKernelEx failed: {(name.value or b'?').decode()} ({status})")
