"""The world a rank belongs to: the launcher's variables, the rendezvous, the collective.

Initialization follows the variables launchers already set (torchrun, `loom train --gpus N`,
SLURM scripts, Kubernetes operators): RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT.

    group = loom.distributed.init()          # every rank: meet at MASTER_ADDR:MASTER_PORT
    loom.train(net, X, Y, ...)               # trains data-parallel over the group
    loom.distributed.shutdown()

Rank 0 hosts the rendezvous store (loom/distributed/store.py); on GPUs it makes NCCL's unique id and
the store hands it to the others, who join one NCCL communicator. On the CPU the collective is the
store's own (slow: for tests and debugging). A watchdog thread on each rank publishes its progress
and, when a collective has not finished within `timeout` seconds, names the ranks that fell behind
(dead or hung) and ends this process with exit code 3, so no rank waits forever.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .. import backend
from ..errors import DistributedError
from .store import Store
from .store_collective import StoreCollective

_log = logging.getLogger("loom")
VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class World:
    rank: int
    size: int
    local_rank: int
    master_addr: str
    master_port: int

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> World | None:
        """The world the launcher's variables describe, or None when WORLD_SIZE is not set."""
        env = os.environ if env is None else env
        if "WORLD_SIZE" not in env:
            return None
        missing = [v for v in VARIABLES if v not in env and v != "LOCAL_RANK"]
        if missing:
            raise DistributedError(f"WORLD_SIZE is set but {', '.join(missing)} is not: a launcher sets "
                                   f"all of {', '.join(VARIABLES)}")

        def number(name: str, default: str | None = None) -> int:
            text = env.get(name, default)
            try:
                return int(text)
            except (TypeError, ValueError):
                raise DistributedError(f"{name}={text!r} is not an integer") from None
        size, rank = number("WORLD_SIZE"), number("RANK")
        local = number("LOCAL_RANK", str(rank))
        port = number("MASTER_PORT")
        if size < 1:
            raise DistributedError(f"WORLD_SIZE={size} must be at least 1")
        if not 0 <= rank < size:
            raise DistributedError(f"RANK={rank} is outside the world of WORLD_SIZE={size} ranks")
        if local < 0:
            raise DistributedError(f"LOCAL_RANK={local} must not be negative")
        if not 0 < port < 65536:
            raise DistributedError(f"MASTER_PORT={port} is not a TCP port")
        return cls(rank, size, local, env["MASTER_ADDR"], port)


class Group:
    """An initialized world: the store, the collective (NCCL or the store's), the device."""

    def __init__(self, world: World, store: Store, collective: Any, device: str, timeout: float):
        self.world, self.store, self.collective, self.device = world, store, collective, device
        self.rank, self.size = world.rank, world.size
        self.timeout = timeout
        self._progress = 0
        self._busy_since: float | None = None
        self._stop = threading.Event()
        self._watchdog = threading.Thread(target=self._watch, name="loom-watchdog", daemon=True)
        self._watchdog.start()

    # --- progress and the watchdog ---
    def begin(self) -> None:
        """A step (a sequence of collectives) starts: the watchdog times it until the next step
        starts or idle(), since a GPU's collectives finish at a later synchronization (the loss read
        back, the epoch's end), not when the host has queued them."""
        self._busy_since = time.monotonic()

    def end(self) -> None:
        """The step was queued on this rank: publish the progress the watchdog compares."""
        self._progress += 1
        try:
            self.store.set(f"progress/{self.rank}", str(self._progress).encode())
        except DistributedError:
            pass            # the rendezvous is gone: the watchdog says so

    def idle(self) -> None:
        """Training is over (or failed): nothing for the watchdog to time."""
        self._busy_since = None

    def _watch(self) -> None:
        while not self._stop.wait(min(1.0, self.timeout / 4)):
            since = self._busy_since
            # later than the collectives' own timeouts (the store's), whose errors say more
            if since is None or time.monotonic() - since < 1.5 * self.timeout + 5:
                continue
            behind = self._behind()
            who = (f"rank(s) {', '.join(map(str, behind))} did not finish step {self._progress + 1}" if behind
                   else "the ranks could not be reached")
            print(f"loom: error: rank {self.rank}: a step's collectives did not finish within "
                  f"{1.5 * self.timeout + 5:g} s: {who} "
                  "(dead or hung); stopping", file=sys.stderr, flush=True)
            os._exit(3)

    def _behind(self) -> list[int]:
        """Ranks whose published progress is below this rank's (they never reached this step)."""
        behind = []
        for r in range(self.size):
            if r == self.rank:
                continue
            try:
                done = int(self.store.get(f"progress/{r}", timeout=2.0))
            except (DistributedError, ValueError):
                done = -1
            if done < self._progress:
                behind.append(r)
        return behind

    def close(self) -> None:
        self._stop.set()
        closer = getattr(self.collective, "close", None)
        if closer is not None:
            closer()
        self.store.close()


_CURRENT: Group | None = None


def init(device: str | None = None, timeout: float = 300.0, world: World | None = None) -> Group:
    """Join the world the launcher's variables describe (or `world`): meet at the rendezvous, check
    the world size, make the collective. device: "cuda" (one GPU per rank, LOCAL_RANK's, NCCL) or
    "cpu" (the store's collective: tests and debugging); None: cuda where CuPy sees a GPU.
    timeout: seconds a rank waits for the rendezvous and for any step's collectives."""
    global _CURRENT
    if _CURRENT is not None:
        raise DistributedError(f"this process already joined a world as rank {_CURRENT.rank}; call shutdown() first")
    world = world if world is not None else World.from_env()
    if world is None:
        raise DistributedError("no world to join: the launcher's variables (WORLD_SIZE, RANK, MASTER_ADDR, "
                               "MASTER_PORT) are not set; start ranks with `loom train --gpus N`, torchrun or srun")
    device = device or ("cuda" if _has_gpu() else "cpu")
    if device not in ("cpu", "cuda"):
        raise DistributedError(f"device {device!r}: expected 'cpu' or 'cuda'")
    store = Store(world.master_addr, world.master_port, world.rank, world.size, timeout=timeout)
    try:
        sizes = store.exchange("world", f"{world.size} {device}".encode(), timeout=timeout)
        if len(set(sizes)) != 1:
            said = ", ".join(f"rank {r}: {s.decode()}" for r, s in enumerate(sizes))
            raise DistributedError(f"the ranks disagree on the world size or device ({said})")
        collective = _collective(world, store, device, timeout)
    except BaseException:
        store.close(wait=0)
        raise
    _CURRENT = Group(world, store, collective, device, timeout)
    return _CURRENT


def current() -> Group | None:
    """The world this process joined with init(), or None."""
    return _CURRENT


def shutdown() -> None:
    """Leave the world (every rank, at the end)."""
    global _CURRENT
    if _CURRENT is not None:
        group, _CURRENT = _CURRENT, None
        group.close()


def _has_gpu() -> bool:
    try:
        return backend.get("cuda").collectives.device_count() > 0
    except Exception:            # noqa: BLE001 - no CuPy, no driver: the CPU
        return False


def _collective(world: World, store: Store, device: str, timeout: float):
    if device == "cpu":
        return StoreCollective(store, world.rank, world.size, timeout=timeout)
    nccl = backend.get("cuda").collectives
    nccl.select_device(world.local_rank)
    if world.rank == 0:
        store.set("nccl_id", nccl.unique_id())
    uid = store.get("nccl_id", timeout=timeout)
    return nccl.communicator(world.rank, world.size, uid)
