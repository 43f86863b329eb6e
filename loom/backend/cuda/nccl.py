"""NCCL collectives for loom.distributed, through CuPy's binding (cupy.cuda.nccl).

Why CuPy's: Loom's GPU arrays are CuPy arrays already, the binding ships with CuPy's wheels (NCCL
itself comes from the nvidia-nccl wheel or the system), and its NcclCommunicator takes raw device
pointers and a stream, which is all an all-reduce needs; torch.distributed would add PyTorch as a
dependency for the same NCCL calls.

Every collective is enqueued on the current stream, so it orders with the kernels around it and is
captured into a CUDA graph when a train step is recorded; all_reduce_async forks it onto the
communicator's own stream (an event orders it after the work queued so far) so that it runs while
the current stream goes on, and join() merges it back: the fork and the join are captured too.
NCCL's ring and tree all-reduces hand every rank the same bytes, which deterministic mode needs
(each rank then rounds the same way).
"""
from __future__ import annotations

import gc
import logging
import threading
from typing import Any

import numpy as np

from ...errors import BackendError, DistributedError

_log = logging.getLogger("loom")


def _nccl():
    try:
        from cupy.cuda import nccl
    except ImportError as exc:      # CuPy built without NCCL, or libnccl missing
        raise BackendError(f"NCCL is not available to CuPy ({exc}); install the nvidia-nccl-cu12 wheel "
                           "(pip install 'loom[cuda]')") from None
    if not getattr(nccl, "available", True):
        raise BackendError("CuPy was built without NCCL; install the nvidia-nccl-cu12 wheel")
    return nccl


class NcclCollectives:
    """The CUDA backend's door to NCCL: pick this process's GPU, make a communicator."""

    def __init__(self, xp: Any):
        self.xp = xp

    def device_count(self) -> int:
        return int(self.xp.cuda.runtime.getDeviceCount())

    def select_device(self, index: int) -> None:
        """Make GPU `index` this process's device (before any array is allocated on another)."""
        count = self.device_count()
        if not 0 <= index < count:
            raise DistributedError(f"LOCAL_RANK {index} names GPU {index}, but this host has {count} GPU(s)")
        self.xp.cuda.Device(index).use()

    def unique_id(self) -> bytes:
        """A new NCCL unique id (rank 0 makes it; the rendezvous hands it to the others)."""
        uid = _nccl().get_unique_id()          # bytes (CuPy 14) or a tuple of signed chars (older)
        return bytes(uid) if isinstance(uid, bytes) else bytes(b & 0xFF for b in uid)

    def communicator(self, rank: int, size: int, uid: bytes) -> NcclCollective:
        return NcclCollective(self.xp, rank, size, uid)


class NcclCollective:
    """loom.kernels.batch_split.Collective over one NCCL communicator (one GPU per rank)."""

    def __init__(self, xp: Any, rank: int, size: int, uid: bytes):
        nccl = _nccl()
        self.xp, self.rank, self.size = xp, rank, size
        self._types = {np.dtype(np.float32): nccl.NCCL_FLOAT32, np.dtype(np.float64): nccl.NCCL_FLOAT64,
                       np.dtype(np.int64): nccl.NCCL_INT64, np.dtype(np.int32): nccl.NCCL_INT32,
                       np.dtype(np.float16): nccl.NCCL_FLOAT16}
        self._ops = {"sum": nccl.NCCL_SUM, "max": nccl.NCCL_MAX}
        try:
            try:
                self.comm = nccl.NcclCommunicator(size, uid, rank)
            except TypeError:                   # CuPy before 14: a tuple of signed chars
                self.comm = nccl.NcclCommunicator(size, tuple(b - 256 if b > 127 else b for b in uid), rank)
        except nccl.NcclError as exc:
            raise DistributedError(f"rank {rank} could not join the NCCL communicator of {size} ranks: {exc}") from None
        # made here, not on first use: a train step may be under stream capture then
        self._side = xp.cuda.Stream(non_blocking=True)
        self._fork = xp.cuda.Event(disable_timing=True)
        self._merge = xp.cuda.Event(disable_timing=True)
        self._forked = False
        self._closed = False

    def _check(self, x, what: str):
        if not isinstance(x, self.xp.ndarray):
            raise TypeError(f"NCCL {what} needs a CuPy array, got {type(x).__name__}")
        if not x.flags.c_contiguous:
            raise ValueError(f"NCCL {what} needs a contiguous array (shape {list(x.shape)})")
        kind = self._types.get(np.dtype(x.dtype))
        if kind is None:
            raise TypeError(f"NCCL {what}: unsupported dtype {x.dtype} (float16/32/64, int32/64)")
        return kind

    def all_reduce(self, x: Any, op: str) -> None:
        if op not in self._ops:
            raise ValueError(f"unknown all-reduce op {op!r}; expected 'sum' or 'max'")
        kind = self._check(x, "all_reduce")
        stream = self.xp.cuda.get_current_stream()
        self.comm.allReduce(x.data.ptr, x.data.ptr, x.size, kind, self._ops[op], stream.ptr)

    def all_reduce_async(self, x: Any, op: str) -> None:
        """all_reduce on the communicator's stream, after everything queued on the current stream so
        far; x must not be read or written until join()."""
        self._fork.record(self.xp.cuda.get_current_stream())
        self._side.wait_event(self._fork)
        with self._side:
            self.all_reduce(x, op)
        self._forked = True

    def join(self) -> None:
        """Make the current stream wait for every all_reduce_async since the last join."""
        if self._forked:
            self._merge.record(self._side)
            self.xp.cuda.get_current_stream().wait_event(self._merge)
            self._forked = False

    def broadcast(self, x: Any, root: int = 0) -> None:
        kind = self._check(x, "broadcast")
        stream = self.xp.cuda.get_current_stream()
        self.comm.broadcast(x.data.ptr, x.data.ptr, x.size, kind, root, stream.ptr)

    def barrier(self) -> None:
        flag = self.xp.zeros(1, dtype=np.float32)
        self.all_reduce(flag, "sum")
        self.xp.cuda.get_current_stream().synchronize()

    def abort(self) -> None:
        """Tear the communicator down without waiting for the other ranks (a rank died or hangs)."""
        if not self._closed:
            self._closed = True
            self.comm.abort()

    def close(self, timeout: float = 20.0) -> None:
        """Destroy the communicator. NCCL's destroy waits until every CUDA graph that captured one of
        its calls is freed, so graphs still held elsewhere would make it wait forever: unreachable
        ones are collected first, and a destroy still waiting after `timeout` seconds is left behind
        (logged; the process is leaving the world) rather than hanging the caller."""
        if self._closed:            # a second destroy of the same handle, maybe while the first still waits
            return
        self._closed = True
        gc.collect()
        done = threading.Thread(target=self.comm.destroy, name="loom-nccl-destroy", daemon=True)
        done.start()
        done.join(timeout)
        if done.is_alive():
            _log.warning("rank %d: the NCCL communicator was not destroyed within %g s: a recorded step that "
                         "captured its collectives is still held; leaving it", self.rank, timeout)
