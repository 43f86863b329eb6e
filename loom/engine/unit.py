"""Units and dispatch chains: the engine's Tier 2.

    with engine.boot(device="cuda", registers=1 << 20, globals=4096, dtype="uint32") as unit:
        unit.write(0, primes, buffer="globals")
        for segment in range(n):
            unit.dispatch(sieve_kernel, params=(segment, words), grid=words)
        prog = unit.build()          # one CUDA graph: the whole chain is one submission
        prog.run()                   # or prog.launch(); ...; prog.poll(); prog.wait()
        counts = unit.read(0, n)

A unit owns two device buffers: `registers` (read-write workspace) and `globals` (inputs shared by the
chain's kernels). A dispatch binds them to the kernel's buffer parameters in that order (a kernel
takes one or two buffers) and carries a few scalars (the seed's push constants), each converted
exactly to its parameter's type. build() freezes the chain into a Program: on the GPU every launch is
recorded into one CUDA graph on the unit's own stream; on the CPU the chain runs its kernels with
NumPy (kernel_numpy.py), launch() on a worker thread. Programs of different units overlap (swarm.py).

State rules, each broken with an EngineError that says what to do instead: no read or write while the
unit's program is in flight; no dispatch after build() (clear() starts a new chain) or shutdown(); a
program of a shut-down unit does not run. A kernel that indexes outside a buffer raises KernelFault
(on the GPU when the program is waited for: the unit's fault word names the buffer).
"""
from __future__ import annotations

import concurrent.futures
import math
import os
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import backend
from ..errors import ConfigError, EngineError, KernelFault
from ..kernels.ir import TYPES, kernel_numpy, type_of
from ..kernels.ir.kernel import Kernel
from ..kernels.ir.lower_kernel import c_name
from .pattern_inputs import integer

BUFFERS = ("registers", "globals")
THREADS_PER_BLOCK = 256
MAX_BLOCKS = (1 << 31) - 1

# The I/O path: host <-> device transfers of every unit go through it one at a time (the seed's
# "Support loom"), while chains build on other threads (swarm.build_all) and programs run on their
# own streams.
IO_LOCK = threading.Lock()
_CPU_POOL: concurrent.futures.ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def boot(device: str = "cpu", registers: int = 0, globals: int = 0, dtype: Any = "float32",  # noqa: A002
         globals_dtype: Any = None) -> Unit:
    """A unit on `device` ("cpu" or "cuda") with `registers` and `globals` elements of `dtype`
    (float32, float64, int32, int64, uint32 or uint64; globals may have their own globals_dtype),
    zero-filled."""
    return Unit(device, registers, globals, dtype, globals_dtype)


def _size(value: Any, name: str) -> int:
    count = integer(value, name)
    if count < 0:
        raise ConfigError(name, f"expected a count of elements >= 0, got {count}")
    return count


def _dtype(value: Any, name: str) -> np.dtype:
    try:
        dtype = np.dtype(value)
        type_of(dtype)
    except TypeError:
        raise ConfigError(name, f"expected one of float32, float64, int32, int64, uint32, uint64, got {value!r}") from None
    if dtype == np.bool_:
        raise ConfigError(name, "a unit's buffers hold numbers, not bool")
    return dtype


class Unit:
    def __init__(self, device: str, registers: int, globals_: int, dtype: Any, globals_dtype: Any):
        if device not in ("cpu", "cuda"):
            raise ConfigError("device", f"expected 'cpu' or 'cuda', got {device!r}")
        sizes = {"registers": _size(registers, "registers"), "globals": _size(globals_, "globals")}
        dtypes = {"registers": _dtype(dtype, "dtype"),
                  "globals": _dtype(dtype if globals_dtype is None else globals_dtype, "globals_dtype")}
        self.device = device
        self.compute = backend.get(device).compute     # None: NumPy runs the kernels
        if self.compute is None:
            self._buffers = {b: np.zeros(sizes[b], dtype=dtypes[b]) for b in BUFFERS}
            self._stream = None
            self._fault = None
        else:
            self._stream = self.compute.stream()
            self._buffers = {b: self.compute.zeros(sizes[b], dtypes[b], self._stream) for b in BUFFERS}
            self._fault = self.compute.zeros(1, np.uint32, self._stream)
        self._chain: list[tuple[Kernel, tuple, tuple[int, int]]] = []
        self.program: Program | None = None
        self._alive = True

    # -- buffers -------------------------------------------------------------------------------
    def dtype(self, buffer: str = "registers") -> np.dtype:
        return self._buffer(buffer).dtype

    def size(self, buffer: str = "registers") -> int:
        return int(self._buffer(buffer).size)

    def _buffer(self, name: str):
        if name not in BUFFERS:
            raise ConfigError("buffer", f"expected 'registers' or 'globals', got {name!r}")
        return self._buffers[name]

    def _span(self, buffer: str, offset: Any, count: Any) -> tuple[Any, int, int]:
        """(the buffer, offset, count) checked to lie inside it; count None: to the buffer's end."""
        array = self._buffer(buffer)
        offset = _size(offset, "offset")
        count = max(array.size - offset, 0) if count is None else _size(count, "count")
        if offset + count > array.size:
            raise ConfigError("offset", f"elements [{offset}, {offset + count}) lie outside {buffer}'s "
                                        f"{array.size} elements")
        return array, offset, count

    def write(self, offset: int, data: Any, buffer: str = "registers") -> None:
        """Copy `data` (an array or sequence) into buffer[offset:offset + len(data)]. Its values must
        be exact in the buffer's dtype (no rounding, no wrap-around)."""
        self._idle("write to")
        target = self._buffer(buffer)
        if self.compute is not None and _on_device(data, target.dtype):
            # an array already on the GPU in the buffer's dtype: copied there, not through the host
            array, offset, count = self._span(buffer, offset, data.size)
            if count:
                with IO_LOCK:
                    self.compute.copy(array, offset, data.reshape(-1), self._stream)
            return
        host = _exact(data, target.dtype, buffer)
        array, offset, count = self._span(buffer, offset, host.size)
        if not count:
            return
        with IO_LOCK:
            if self.compute is None:
                array[offset:offset + count] = host
            else:
                self.compute.upload(array, offset, host, self._stream)

    def read(self, offset: int = 0, count: int | None = None, buffer: str = "registers") -> np.ndarray:
        """A NumPy copy of buffer[offset:offset + count] (to the end when count is None)."""
        self._idle("read")
        array, offset, count = self._span(buffer, offset, count)
        with IO_LOCK:
            if self.compute is None:
                return array[offset:offset + count].copy()
            return self.compute.download(array, offset, count, self._stream)

    def copy(self, offset: int = 0, count: int | None = None, buffer: str = "registers") -> Any:
        """A copy of buffer[offset:offset + count] where the unit lives: a CuPy array on the GPU (no
        trip through the host; finished on the unit's stream before it returns), NumPy on the CPU."""
        self._idle("copy")
        array, offset, count = self._span(buffer, offset, count)
        with IO_LOCK:
            if self.compute is None:
                return array[offset:offset + count].copy()
            with self._stream:                  # queued behind the unit's own work
                out = array[offset:offset + count].copy()
            self.compute.wait(self.compute.event(self._stream))
            return out

    def fill(self, value: Any, buffer: str = "registers") -> None:
        """Set every element of the buffer to value (exact in its dtype)."""
        self._idle("fill")
        array = self._buffer(buffer)
        scalar = _exact([value], array.dtype, buffer)[0]
        with IO_LOCK:
            if self.compute is None:
                array.fill(scalar)
            else:
                self.compute.fill(array, scalar, self._stream)

    # -- the chain -----------------------------------------------------------------------------
    def dispatch(self, kernel: Kernel, params: Sequence = (), grid: int | tuple[int, int] = 1) -> None:
        """Record one launch of `kernel` over `grid` (a thread count, run in blocks of 256, or
        (blocks, threads per block)) with the scalars `params`."""
        self._alive_or_raise("dispatch to")
        if self.program is not None:
            raise EngineError("this unit's chain is built (unit.build()); unit.clear() discards the program "
                              "and starts a new chain")
        if not isinstance(kernel, Kernel):
            raise EngineError(f"dispatch takes a kernel made with loom.engine.kernel, got {type(kernel).__name__}")
        self._chain.append((kernel, self._arguments(kernel, params), _grid(grid)))

    def _arguments(self, kernel: Kernel, params: Sequence) -> tuple:
        buffers = kernel.buffers
        if len(buffers) > len(BUFFERS):
            raise EngineError(f"kernel {kernel.name} takes {len(buffers)} buffers; a unit binds at most 2 "
                              "(registers, then globals)")
        for param, name in zip(buffers, BUFFERS):
            if param.element.dtype != self._buffers[name].dtype:
                raise EngineError(f"kernel {kernel.name}: buffer {param.name!r} holds {param.element}, but "
                                  f"this unit's {name} hold {type_of(self._buffers[name].dtype)}")
        scalars = kernel.scalars
        if isinstance(params, (str, bytes)) or not isinstance(params, Sequence):
            raise ConfigError("params", f"expected a sequence of {len(scalars)} numbers, got {params!r}")
        if len(params) != len(scalars):
            names = ", ".join(n for _, n, _ in scalars) or "none"
            raise ConfigError("params", f"kernel {kernel.name} takes {len(scalars)} scalars ({names}), "
                                        f"got {len(params)}")
        values = {position: _scalar(v, t, f"params[{i}] ({name})")
                  for i, ((position, name, t), v) in enumerate(zip(scalars, params))}
        names = iter(BUFFERS)
        return tuple(self._buffers[next(names)] if position not in values else values[position]
                     for position in range(len(kernel.signature)))

    def __len__(self) -> int:
        """Dispatches recorded in the current chain."""
        return len(self._chain)

    def build(self) -> Program:
        """Freeze the chain into a Program (compiling and recording it on the GPU)."""
        self._alive_or_raise("build")
        if self.program is not None:
            raise EngineError("this unit's chain is already built; unit.clear() starts a new one")
        self.program = Program(self, list(self._chain))
        return self.program

    def clear(self) -> None:
        """Discard the chain and its program (waiting for it if in flight): dispatch again after this."""
        if self.program is not None:
            self.program.wait()
        self._chain, self.program = [], None

    def shutdown(self) -> None:
        """Wait for the program in flight, if any, and release the buffers; the unit and its program are
        unusable afterwards."""
        if not self._alive:
            return
        try:
            if self.program is not None and self.program.in_flight:
                self.program.wait()            # a fault it raises still ends the unit
        finally:
            if self.program is None or not self.program.in_flight:
                self._alive = False
                self._buffers = {b: None for b in BUFFERS}
                self._chain, self.program, self._fault = [], None, None

    def __enter__(self) -> Unit:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        if not self._alive:
            return f"<Unit {self.device} (shut down)>"
        return (f"<Unit {self.device} registers={self.size('registers')} x {self.dtype('registers')} "
                f"globals={self.size('globals')} x {self.dtype('globals')} dispatches={len(self)}>")

    # -- state ---------------------------------------------------------------------------------
    def _alive_or_raise(self, what: str) -> None:
        if not self._alive:
            raise EngineError(f"cannot {what} a unit after shutdown(); boot a new one")

    def _idle(self, what: str) -> None:
        self._alive_or_raise(what)
        if self.program is not None and self.program.in_flight and not self.program.poll():
            raise EngineError(f"cannot {what} this unit while its program is in flight; "
                              "call program.wait() (or poll() until it returns True) first")


class Program:
    """A unit's frozen chain: run() blocks, launch() returns at once, poll() says whether it finished,
    wait() blocks until it has. A kernel fault is raised by the run(), poll() or wait() that sees it."""

    def __init__(self, unit: Unit, chain: list):
        self.unit = unit
        self.dispatches = len(chain)
        self._chain = chain
        self._pending: Any = None          # an event (GPU) or a future (CPU) while in flight
        self._graph = None
        if unit.compute is not None and chain:
            compute = unit.compute
            functions = {id(k): compute.function(k.source, c_name(k)) for k, _, _ in chain}
            launches = [(functions[id(k)], grid, _device_args(k, args, unit._fault)) for k, args, grid in chain]

            def record():
                for fn, grid, args in launches:
                    compute.launch(fn, grid, args, unit._stream)
            self._graph = compute.record(unit._stream, record)

    @property
    def in_flight(self) -> bool:
        return self._pending is not None

    def launch(self) -> Program:
        """Start the program and return at once."""
        self.unit._alive_or_raise("launch the program of")
        if self.unit.program is not self:
            raise EngineError("this program was discarded by unit.clear(); build the unit again")
        if self.in_flight and not self.poll():
            raise EngineError("this program is already in flight; wait() for it before launching it again")
        compute = self.unit.compute
        if compute is None:
            self._pending = _cpu_pool().submit(self._run_on_cpu)
        else:
            if self._graph is not None:
                compute.replay(self._graph, self.unit._stream)
            self._pending = compute.event(self.unit._stream)
        return self

    def run(self) -> None:
        """Run the program to completion."""
        self.launch()
        self.wait()

    def poll(self) -> bool:
        """True once the program has finished (raising its kernel fault, if any), False while it runs."""
        if self._pending is None:
            return True
        compute = self.unit.compute
        done = self._pending.done() if compute is None else compute.done(self._pending)
        if done:
            self.wait()
        return done

    def wait(self) -> None:
        """Block until the program has finished; raise KernelFault if a kernel indexed out of range."""
        pending = self._pending
        if pending is None:
            return
        compute = self.unit.compute
        if compute is None:
            try:
                pending.result()               # re-raises the NumPy run's KernelFault
            finally:
                if pending.done():             # not after an interrupted wait: it still runs
                    self._pending = None
            return
        compute.wait(pending)
        self._pending = None
        self._check_fault()

    def _run_on_cpu(self) -> None:
        for kernel, args, grid in self._chain:
            kernel_numpy.run(kernel, args, grid)

    def _check_fault(self) -> None:
        unit = self.unit
        if unit._fault is None:
            return
        word = int(unit.compute.download(unit._fault, 0, 1, unit._stream)[0])
        if not word:
            return
        unit.compute.fill(unit._fault, np.uint32(0), unit._stream)
        kernels = sorted({k.name for k, _, _ in self._chain})
        places = [BUFFERS[b] for b in range(len(BUFFERS)) if word >> b & 1]
        if word >> 31 & 1:
            places.append("a shared array")
        raise KernelFault(f"a kernel of this program ({', '.join(kernels)}) accessed {' and '.join(places)} "
                          "outside its bounds; those accesses were skipped")

    def __repr__(self) -> str:
        return f"<Program {self.unit.device} dispatches={self.dispatches}{' in flight' if self.in_flight else ''}>"


def _device_args(kernel: Kernel, args: tuple, fault) -> tuple:
    out = []
    for (_, ptype), value in zip(kernel.signature, args):
        if ptype in TYPES.values():
            out.append(value)
        else:
            out += [value, np.int64(value.size)]
    return (*out, fault)


def _grid(grid: Any) -> tuple[int, int]:
    if isinstance(grid, tuple) and len(grid) == 2:
        blocks, threads = grid
        for value, name, top in ((blocks, "blocks", MAX_BLOCKS), (threads, "threads per block", 1024)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= top:
                raise ConfigError("grid", f"{name} must be an integer in [1, {top}], got {value!r}")
        return int(blocks), int(threads)
    if isinstance(grid, bool) or not isinstance(grid, (int, np.integer)) or grid < 1:
        raise ConfigError("grid", f"expected a thread count >= 1 or (blocks, threads per block), got {grid!r}")
    threads = min(int(grid), THREADS_PER_BLOCK)
    blocks = math.ceil(int(grid) / threads)
    if blocks > MAX_BLOCKS:
        raise ConfigError("grid", f"{grid} threads need more than {MAX_BLOCKS} blocks")
    return blocks, threads


def _scalar(value: Any, type_, where: str) -> np.generic:
    """value as a NumPy scalar of the IR type, exactly (floats round to the type; integers must fit)."""
    dtype = type_.dtype
    if type_.kind == "bool":
        if not isinstance(value, (bool, np.bool_)):
            raise ConfigError(where, f"expected True or False, got {value!r}")
        return np.bool_(value)
    if isinstance(value, (bool, np.bool_)):
        raise ConfigError(where, f"expected a number for {type_}, got {value!r}")
    if type_.is_float:
        if not isinstance(value, (int, float, np.integer, np.floating)):
            raise ConfigError(where, f"expected a number for {type_}, got {value!r}")
        try:
            with np.errstate(over="ignore"):
                scalar = dtype.type(value)
        except OverflowError:                  # a Python int beyond any float
            scalar = dtype.type(np.inf)
        if np.isinf(scalar) and not (isinstance(value, (float, np.floating)) and math.isinf(value)):
            raise ConfigError(where, f"{value!r} overflows {type_}")
        return scalar
    if isinstance(value, (np.floating, float)) and float(value).is_integer():
        value = int(value)
    if not isinstance(value, (int, np.integer)):
        raise ConfigError(where, f"expected an integer for {type_}, got {value!r}")
    info = np.iinfo(dtype)
    if not info.min <= int(value) <= info.max:
        raise ConfigError(where, f"{int(value)} does not fit in {type_} [{info.min}, {info.max}]")
    return dtype.type(int(value))


def _on_device(data: Any, dtype: np.dtype) -> bool:
    """Whether data is a device array (not host memory) of exactly dtype."""
    if isinstance(data, (list, tuple, int, float, np.ndarray, np.generic)) or not hasattr(data, "dtype"):
        return False
    return not backend.of(data).host and data.dtype == dtype


def _exact(data: Any, dtype: np.dtype, where: str) -> np.ndarray:
    """data (a NumPy or CuPy array, a sequence or a number) as a 1-d NumPy array of dtype, refusing
    values the dtype cannot hold exactly (no rounding, no wrap-around)."""
    if isinstance(data, (list, tuple, int)) and dtype.kind in "iu":
        # Python integers, as they are: NumPy would turn [2**64 - 1, 7] into float64
        values = np.asarray(data, dtype=object).reshape(-1)
        if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
            data = np.array([int(v) for v in values], dtype=object)
            bits = dtype.itemsize * 8
            low, high = (0, 2 ** bits) if dtype.kind == "u" else (-(2 ** (bits - 1)), 2 ** (bits - 1))
            bad = next((v for v in data if not low <= v < high), None)
            if bad is not None:
                raise ConfigError(where, f"{bad} is not exact in the buffer's {dtype}")
            return data.astype(dtype)
    if isinstance(data, (list, tuple, int, float, np.ndarray, np.generic)):
        host = np.asarray(data)
    else:
        host = backend.of(data).to_numpy(data)
    host = host.reshape(-1)
    if host.dtype == dtype:
        return host
    if host.dtype.kind not in "biuf":
        raise ConfigError(where, f"cannot write {host.dtype} data into a {dtype} buffer")
    if dtype.kind in "iu":
        bits = dtype.itemsize * 8
        low, high = (0, 2 ** bits) if dtype.kind == "u" else (-(2 ** (bits - 1)), 2 ** (bits - 1))
        if host.dtype.kind == "f":
            # compared as floats: low and high are powers of two (exact), the values whole numbers
            fits = np.isfinite(host) & (host == np.trunc(host)) & (host >= low) & (host < high)
            if not np.all(fits):
                bad = host[np.flatnonzero(~fits)[0]]
                raise ConfigError(where, f"{bad!r} ({host.dtype}) is not exact in the buffer's {dtype}")
        elif host.size:
            least, most = int(host.min()), int(host.max())      # Python ints: no wrap, no rounding
            if least < low or most >= high:
                bad = least if least < low else most
                raise ConfigError(where, f"{bad} ({host.dtype}) is not exact in the buffer's {dtype}")
        return host.astype(dtype)
    with np.errstate(all="ignore"):
        converted = host.astype(dtype)
        back = converted.astype(host.dtype)
    same = (back == host) | (np.isnan(host) & np.isnan(back) if host.dtype.kind == "f" else False)
    if host.dtype.kind in "iu":     # an int64 that rounds can come back equal: compare as floats too
        same &= converted.astype(np.float64) == host.astype(np.float64)
    if not np.all(same):
        bad = host[np.flatnonzero(~np.asarray(same))[0]]
        raise ConfigError(where, f"{bad!r} ({host.dtype}) is not exact in the buffer's {dtype}")
    return converted


def _cpu_pool() -> concurrent.futures.ThreadPoolExecutor:
    global _CPU_POOL
    with _POOL_LOCK:
        if _CPU_POOL is None:
            _CPU_POOL = concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1,
                                                              thread_name_prefix="loom-unit")
        return _CPU_POOL
