"""Swarms: many units' programs in flight at once, and their chains built on worker threads.

The model (docs/engine.md): each unit owns its buffers, its chain and, on the GPU, its own stream, so
the programs of a swarm are independent submissions the GPU overlaps as its resources allow. Host <->
device transfers of all units share one I/O path (unit.IO_LOCK: the seed's "Support loom"), while the
chains of other units are recorded on worker threads (build_all) and programs run (the "Main looms").
On the CPU a launched program runs on a worker thread; NumPy releases the interpreter lock inside its
array operations, so programs overlap there too, less.
"""
from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Iterable

from ..errors import EngineError
from .unit import Program, Unit


def build_all(units: Iterable[Unit], workers: int | None = None) -> list[Program]:
    """unit.build() for every unit, on up to `workers` threads (default: one per core, at most 16);
    returns the programs in the units' order."""
    units = list(units)
    for u in units:
        if not isinstance(u, Unit):
            raise EngineError(f"build_all takes units, got {type(u).__name__}")
    workers = workers or min(len(units), os.cpu_count() or 1, 16) or 1
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="loom-build") as pool:
        return list(pool.map(lambda u: u.build(), units))


def swarm(members: Iterable[Unit | Program], wait: bool = True) -> list[Program]:
    """Launch the programs of `members` (units, whose built program is taken, or programs) so that
    they run concurrently, each on its own stream; then wait for all of them unless wait=False.
    Returns the programs. A unit without a built program is built first."""
    programs = []
    for m in members:
        if isinstance(m, Unit):
            programs.append(m.program if m.program is not None else m.build())
        elif isinstance(m, Program):
            programs.append(m)
        else:
            raise EngineError(f"swarm takes units or programs, got {type(m).__name__}")
    if len({id(p) for p in programs}) != len(programs):
        raise EngineError("a program appears twice in the swarm; one program runs once at a time")
    launched = []
    try:
        for p in programs:
            launched.append(p.launch())
    except BaseException:
        _wait_all(launched)         # none is left running unwatched when one cannot start
        raise
    if wait:
        _wait_all(launched)
    return programs


def _wait_all(programs: list[Program]) -> None:
    """Wait for every program, even after one raised, then raise the first error."""
    errors = []
    for p in programs:
        try:
            p.wait()
        except Exception as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)
    if errors:
        raise errors[0]
