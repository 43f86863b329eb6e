"""Collectives through the rendezvous store, for tests and CPU-only debugging of multi-process worlds.

Data-parallel code is written against a collective (rank, size, all_reduce, broadcast, barrier); on GPUs
NCCL provides it. This one moves every array through rank 0's store server as bytes, so that the
process plumbing and the training logic of a world can be tested on a machine without GPUs. It is slow
(every rank sends its whole array and receives everyone's over TCP, each call): not a transport for
real training.

Deterministic by construction: every rank gathers all contributions (Store.exchange, whose per-name use
count is the per-call sequence number) and reduces them itself in rank order, ((x0 op x1) op x2) ...,
so every rank gets identical bits whatever the arrival order. Each call's exchanged header (the call,
op, shape, dtype, root) is compared across ranks, so ranks that disagree raise instead of mixing
unrelated arrays. Keys of finished calls are deleted by Store.exchange, so thousands of calls leave
one call's keys in the store.
"""
from __future__ import annotations

import json
import struct

import numpy as np

from loom.distributed.store import Store
from loom.errors import DistributedError

_REDUCE = {"sum": np.add, "max": np.maximum}
_REDUCE_DTYPES = (np.float32, np.float64, np.int64, np.int32)
_HEAD = struct.Struct("!I")           # length of the JSON header in front of the array bytes
_NAME = "store_collective"            # one exchange name for every call, so calls of all kinds stay in order


class StoreCollective:
    """all_reduce / broadcast / barrier of NumPy arrays among the `size` ranks sharing `store`.
    `timeout` bounds each call (default: the store's); close() ends this object's use, not the store's."""

    def __init__(self, store: Store, rank: int, size: int, timeout: float | None = None):
        if rank != store.rank or size != store.world_size:
            raise ValueError(f"StoreCollective(rank={rank}, size={size}) does not match its store: rank "
                             f"{store.rank} of {store.world_size}")
        self.store = store
        self.rank = rank
        self.size = size
        self.timeout = timeout
        self._calls = 0
        self._closed = False

    def all_reduce(self, x: np.ndarray, op: str) -> None:
        """Replace x, on every rank, by the reduction ("sum" or "max") of all ranks' x, taken in rank order."""
        reduce = _REDUCE.get(op)
        if reduce is None:
            raise ValueError(f"all_reduce op {op!r} is not one of {sorted(_REDUCE)}")
        _check_writable(x, "all_reduce")
        if x.dtype.type not in _REDUCE_DTYPES:
            raise TypeError(f"all_reduce does not support dtype {x.dtype}; use float32, float64, int64 or int32")
        header = {"call": "all_reduce", "op": op, "shape": list(x.shape), "dtype": x.dtype.str}
        parts = self._exchange(header, np.ascontiguousarray(x).tobytes())
        acc = np.frombuffer(parts[0], dtype=x.dtype).copy()
        for data in parts[1:]:
            reduce(acc, np.frombuffer(data, dtype=x.dtype), out=acc)
        x[...] = acc.reshape(x.shape)

    def broadcast(self, x: np.ndarray, root: int = 0) -> None:
        """Replace x, on every rank, by rank `root`'s x."""
        if not 0 <= root < self.size:
            raise ValueError(f"broadcast root {root} is not a rank of a world of size {self.size}")
        _check_writable(x, "broadcast")
        if x.dtype.hasobject:
            raise TypeError(f"broadcast cannot send dtype {x.dtype} (it holds Python objects)")
        header = {"call": "broadcast", "root": root, "shape": list(x.shape), "dtype": x.dtype.str}
        parts = self._exchange(header, np.ascontiguousarray(x).tobytes() if self.rank == root else b"")
        if self.rank != root:
            x[...] = np.frombuffer(parts[root], dtype=x.dtype).reshape(x.shape)

    def barrier(self) -> None:
        """Return once every rank has made the same calls as this one, this barrier included."""
        self._exchange({"call": "barrier"}, b"")

    def close(self) -> None:
        """Refuse later calls. The store stays open: its owner closes it."""
        self._closed = True

    def _exchange(self, header: dict, data: bytes) -> list[bytes]:
        """Every rank's array bytes for this call, after checking that every rank made the same call."""
        if self._closed:
            raise DistributedError(f"rank {self.rank}: this StoreCollective is closed")
        self._calls += 1
        head = json.dumps(header, sort_keys=True).encode()
        replies = self.store.exchange(_NAME, _HEAD.pack(len(head)) + head + data, timeout=self.timeout)
        headers, datas = [], []
        for reply in replies:
            (n,) = _HEAD.unpack_from(reply)
            headers.append(json.loads(reply[_HEAD.size:_HEAD.size + n]))
            datas.append(reply[_HEAD.size + n:])
        if any(h != header for h in headers):
            calls = "; ".join(f"rank {r}: {_describe(h)}" for r, h in enumerate(headers))
            raise DistributedError(f"rank {self.rank}: the ranks disagree on collective call #{self._calls}: {calls}")
        return datas


def _check_writable(x: np.ndarray, call: str) -> None:
    # checked before exchanging, so a bad argument on one rank fails there before the others wait on it
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{call} takes a NumPy array, got {type(x).__name__}")
    if not x.flags.writeable:
        raise ValueError(f"{call} works in place, but the array of shape {x.shape} is read-only")


def _describe(header: dict) -> str:
    call = header.get("call")
    if call == "barrier":
        return "barrier()"
    arg = f"op {header.get('op')!r}" if call == "all_reduce" else f"root {header.get('root')}"
    return f"{call}({arg}, shape {tuple(header.get('shape', ()))}, dtype {np.dtype(header.get('dtype', 'V')).name})"
