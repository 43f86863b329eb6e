"""A loopback stand-in for NCCL, for tests only: N ranks as threads of one process, on the CPU.

`run_world(n, fn)` calls fn(collective) on n threads and returns their results in rank order; the
collectives meet at a barrier and reduce the contributions in rank order, so every rank gets the
same bits (as NCCL guarantees). A rank that raises breaks the barrier, and the others fail too.
Arrays may be NumPy's or CuPy's (the threads of a GPU world share its device; their steps must run
eagerly, not recorded).
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np


class _Room:
    def __init__(self, size: int):
        self.size = size
        self.barrier = threading.Barrier(size, timeout=60)
        self.slots: list[Any] = [None] * size


class LoopbackCollective:
    """loom.kernels.batch_split.Collective (and loom.distributed's) for one thread of a world."""

    def __init__(self, room: _Room, rank: int):
        self.room, self.rank, self.size = room, rank, room.size
        self.calls: list[tuple[str, tuple, str]] = []      # (op, shape, dtype): what tests inspect

    def all_reduce(self, x: np.ndarray, op: str) -> None:
        if op not in ("sum", "max"):
            raise ValueError(f"unknown all-reduce op {op!r}")
        self.calls.append((op, tuple(x.shape), str(x.dtype)))
        room = self.room
        room.slots[self.rank] = x.copy()
        room.barrier.wait()
        parts = list(room.slots)
        shapes = {(p.shape, str(p.dtype)) for p in parts}
        if len(shapes) != 1:
            raise AssertionError(f"ranks disagree on an all-reduce: {shapes}")
        total = parts[0].copy()
        for p in parts[1:]:
            total = total + p if op == "sum" else _module(x).maximum(total, p)
        room.barrier.wait()
        x[...] = total

    def broadcast(self, x: np.ndarray, root: int = 0) -> None:
        room = self.room
        room.slots[self.rank] = x.copy()
        room.barrier.wait()
        value = room.slots[root]
        room.barrier.wait()
        x[...] = value

    def barrier(self) -> None:
        self.room.barrier.wait()


def _module(x):
    return np if isinstance(x, np.ndarray) else __import__("cupy")


def run_world(n: int, fn: Callable[[LoopbackCollective], Any]) -> list:
    """fn(collective) on n threads (ranks 0..n-1); their results in rank order, or the first error."""
    room = _Room(n)
    results: list[Any] = [None] * n
    errors: list[BaseException | None] = [None] * n

    def target(rank):
        try:
            results[rank] = fn(LoopbackCollective(room, rank))
        except BaseException as exc:        # noqa: BLE001 - reported to the caller below
            errors[rank] = exc
            room.barrier.abort()
    threads = [threading.Thread(target=target, args=(r,)) for r in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    first = next((e for e in errors if e is not None and not isinstance(e, threading.BrokenBarrierError)), None)
    if first is None:
        first = next((e for e in errors if e is not None), None)
    if first is not None:
        raise first
    return results
