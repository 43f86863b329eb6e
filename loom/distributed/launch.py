"""The built-in launcher: one process per rank on this machine, with torchrun's environment conventions.

Data-parallel training runs one process per GPU. `spawn` starts them, tells each who it is through
RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT (the names torchrun uses,
so scripts written for one run under the other), passes their output through, and watches them: a
world in which one rank died cannot finish (the others would wait on it in the next collective), so
the first failure is reported by rank and exit status, the others get `grace` seconds to notice and
exit, and are then terminated. A world that runs past `timeout` is terminated and its stragglers named.

Each rank runs in a session (process group) of its own, so terminating a rank also ends the processes
it started (data loader workers); the launcher forwards Ctrl-C by terminating them itself.
"""
from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import IO

from loom.errors import DistributedError

_POLL = 0.05                          # seconds between looks at the children's exit status
_KILL_AFTER = 3.0                     # seconds from SIGTERM to SIGKILL for a rank that ignores SIGTERM


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` now (the OS picks it; another process may still take it before use)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def launch_env(rank: int, world_size: int, local_rank: int, master_addr: str, master_port: int,
               local_world_size: int | None = None) -> dict[str, str]:
    """The environment variables that tell a process its place in the world (torchrun's names).
    `local_world_size` is the number of ranks on this machine: world_size on a single machine."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of size {world_size}")
    return {"RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(local_rank),
            "LOCAL_WORLD_SIZE": str(world_size if local_world_size is None else local_world_size),
            "MASTER_ADDR": master_addr, "MASTER_PORT": str(master_port)}


def spawn(argv: list[str], nprocs: int, env: dict[str, str] | None = None, timeout: float | None = None,
          grace: float = 10.0) -> list[int]:
    """Run `argv` as ranks 0..nprocs-1 of a world on this machine and wait for all of them; their exit
    codes (all 0). Rank 0 writes to this process's stdout/stderr; the others' lines come prefixed
    "[rank N] ". If a rank fails, raise DistributedError naming the first to fail, after giving the rest
    `grace` seconds and terminating those still running; past `timeout` seconds, terminate all and raise
    naming the ranks still running."""
    if nprocs < 1:
        raise ValueError(f"nprocs must be at least 1, got {nprocs}")
    if not argv:
        raise ValueError("spawn needs a command to run (argv is empty)")
    command = shlex.join(argv)
    port = free_port()
    procs: list[subprocess.Popen] = []
    pumps: list[threading.Thread] = []
    write_lock = threading.Lock()
    try:
        for rank in range(nprocs):
            # unbuffered, so that lines pass through as they are printed and a killed rank's last words arrive
            child_env = {"PYTHONUNBUFFERED": "1", **os.environ, **(env or {}),
                         **launch_env(rank, nprocs, rank, "127.0.0.1", port)}
            pipe = subprocess.PIPE if rank > 0 else None
            try:
                proc = subprocess.Popen(argv, env=child_env, stdout=pipe, stderr=pipe, start_new_session=True,
                                        text=True, encoding="utf-8", errors="replace")
            except OSError as exc:
                raise DistributedError(f"rank {rank}: cannot start {command}: {exc}") from exc
            procs.append(proc)
            if rank > 0:
                for stream, sink in ((proc.stdout, "stdout"), (proc.stderr, "stderr")):
                    pump = threading.Thread(target=_pump, args=(stream, rank, sink, write_lock),
                                            name=f"loom-spawn-{sink}-{rank}", daemon=True)
                    pump.start()
                    pumps.append(pump)
        return _watch(procs, command, timeout, grace)
    finally:
        # also on KeyboardInterrupt or an error of our own: leave no rank behind
        _terminate(procs)
        for pump in pumps:
            pump.join(2.0)            # a grandchild may hold the pipe open: do not wait on it for long


def run_ranks(target: str, nprocs: int, args: Sequence[str] = (), env: dict[str, str] | None = None,
              timeout: float | None = None, grace: float = 10.0) -> list[int]:
    """spawn() of `python -m target args...` with this interpreter."""
    return spawn([sys.executable, "-m", target, *args], nprocs, env=env, timeout=timeout, grace=grace)


def _watch(procs: list[subprocess.Popen], command: str, timeout: float | None, grace: float) -> list[int]:
    deadline = None if timeout is None else time.monotonic() + timeout
    first_failure: tuple[int, int] | None = None
    failure_deadline = 0.0
    while True:
        codes = [p.poll() for p in procs]
        if first_failure is None:
            failed = [(r, c) for r, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                first_failure = failed[0]         # ranks seen failing in the same look: the lowest
                failure_deadline = time.monotonic() + grace
        running = [r for r, c in enumerate(codes) if c is None]
        if not running:
            break
        now = time.monotonic()
        if first_failure is not None and (now >= failure_deadline or (deadline is not None and now >= deadline)):
            _terminate(procs)
            raise DistributedError(f"{_describe(*first_failure)} (running {command}); ranks {running} were "
                                   f"still running after {grace:g} s of grace and were terminated")
        if deadline is not None and now >= deadline:
            _terminate(procs)
            raise DistributedError(f"the world of {len(procs)} ranks timed out after {timeout:g} s (running "
                                   f"{command}): ranks {running} were still running and were terminated")
        time.sleep(_POLL)
    if first_failure is not None:
        raise DistributedError(f"{_describe(*first_failure)} (running {command}); the other ranks ended with "
                               + ", ".join(_describe(r, c) for r, c in enumerate(codes) if r != first_failure[0]))
    return codes                                  # type: ignore[return-value]  # none is None here


def _describe(rank: int, code: int) -> str:
    if code >= 0:
        return f"rank {rank} exited with code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = str(-code)
    return f"rank {rank} was killed by signal {name}"


def _signal(proc: subprocess.Popen, sig: int) -> None:
    # The whole session of the rank: its own children too. Only a child not yet reaped is signalled,
    # so its pid (the group id) cannot have been reused by an unrelated process.
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _terminate(procs: list[subprocess.Popen]) -> None:
    """SIGTERM every rank still running, then SIGKILL those still there _KILL_AFTER seconds later."""
    alive = [p for p in procs if p.poll() is None]
    for proc in alive:
        _signal(proc, signal.SIGTERM)
    end = time.monotonic() + _KILL_AFTER
    for proc in alive:
        try:
            proc.wait(max(0.0, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal(proc, signal.SIGKILL)
            proc.wait()


def _pump(stream: IO[str], rank: int, sink: str, lock: threading.Lock) -> None:
    """Copy a rank's output line by line to this process's stdout or stderr, each line prefixed."""
    with stream:
        for line in stream:
            text = f"[rank {rank}] {line}" if line.endswith("\n") else f"[rank {rank}] {line}\n"
            try:
                with lock:
                    out = getattr(sys, sink)      # looked up per line: tests and tools swap sys.stdout
                    out.write(text)
                    out.flush()
            except (OSError, ValueError):
                pass                              # our own output is gone; keep draining so the rank never blocks
