"""The Python side of libloom.so: handles, status codes, errors and the conversions between C
arguments and arrays, shared by the network ABI (network_api.py) and the tensor API (tensor_api.py).

Every exported function is registered with @export; attach() (run by the library's init code, see
build.py) hands each one to cffi as the `extern "Python"` callback behind the header's C function.
The wrapper around each one turns every exception into a status code and the calling thread's
loom_last_error() message (never a Python traceback escaping into C), runs the call in the
library-wide mode (loom_set_deterministic), and refuses calls after loom_shutdown().
"""
from __future__ import annotations

import contextlib
import functools
import itertools
import json
import math
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from .. import mode
from ..errors import BackendError, ConfigError, DeterminismError, FormatError, LoomError

OK, ARGUMENT, HANDLE, CONFIG, FORMAT, IO, DEVICE, DETERMINISM, SHUTDOWN, RUNTIME, INTERNAL = range(11)
MAX_DIMS = 8

ffi: Any = None         # the library's cffi FFI and lib, set by attach()
lib: Any = None
_EXPORTS: dict[str, tuple[Callable, bool]] = {}


class CError(Exception):
    """A failed call's status code and message (the message without the function's name)."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def export(name: str, pointer: bool = False) -> Callable[[Callable], Callable]:
    """Register fn as the implementation of loom_<name>; pointer: it returns a handle or pointer
    (NULL on error) instead of a status."""
    def register(fn: Callable) -> Callable:
        _EXPORTS[name] = (fn, pointer)
        return fn
    return register


class _State:
    def __init__(self):
        self.deterministic = True
        self.shutdown = False
        self.lock = threading.Lock()
        self.handles: dict[int, Handle] = {}


STATE = _State()


def status_of(exc: BaseException) -> tuple[int, str]:
    """(status code, message) for an exception raised inside a call."""
    if isinstance(exc, CError):
        return exc.code, str(exc)
    if isinstance(exc, (ConfigError, json.JSONDecodeError)):
        return CONFIG, str(exc)
    if isinstance(exc, FormatError):
        return FORMAT, str(exc)
    if isinstance(exc, DeterminismError):
        return DETERMINISM, str(exc)
    if isinstance(exc, (BackendError, MemoryError)):
        return DEVICE, str(exc) or type(exc).__name__
    if isinstance(exc, OSError):
        return IO, str(exc)
    if isinstance(exc, (LoomError, ValueError, TypeError)):
        return ARGUMENT, str(exc)       # the rest of Loom's typed errors (NumericError: NaN in the data, ...)
    return INTERNAL, f"internal error: {type(exc).__name__}: {exc}"


def _wrap(name: str, fn: Callable, pointer: bool) -> Callable:
    @functools.wraps(fn)
    def call(*args):
        try:
            if STATE.shutdown:
                raise CError(SHUTDOWN, "the library was shut down (loom_shutdown)")
            token = mode.enter(STATE.deterministic)           # the caller's mode (a Python host's) stays
            try:
                result = fn(*args)
            finally:
                mode.leave(token)
            return OK if result is None else result
        except BaseException as exc:            # nothing may propagate into C
            code, message = status_of(exc)
            lib.loom__set_error(f"loom_{name}: {message}".encode("utf-8", "replace"))
            return ffi.NULL if pointer else code
    return call


def attach(ffi_: Any, lib_: Any) -> None:
    """Attach every exported function to its `extern "Python"` callback; then mark the library alive.
    The library must have been built from this Loom's loom.h (its SHA-256 is compiled in), and every
    function the header declares must have an implementation: else nothing is attached and every
    call fails with LOOM_ERR_RUNTIME, saying so."""
    global ffi, lib
    from . import build, network_api, tensor_api  # noqa: F401  (their @export calls fill _EXPORTS)
    built = ffi_.string(lib_.loom__header_sha256()).decode()
    if built != build.header_sha256():
        raise RuntimeError("libloom.so was built from another loom.h than this Loom's "
                           f"({built[:12]}... vs {build.header_sha256()[:12]}...): rebuild it with `loom capi build`")
    declared = {f.name[5:] for f in build.declarations()[1] if f.name not in build.C_FUNCTIONS}
    if declared != set(_EXPORTS):
        raise RuntimeError(f"loom.h and loom.capi disagree: declared only {sorted(declared - set(_EXPORTS))}, "
                           f"implemented only {sorted(set(_EXPORTS) - declared)}")
    ffi, lib = ffi_, lib_
    for name, (fn, pointer) in _EXPORTS.items():
        ffi.def_extern(name=f"_loomx_{name}", error=INTERNAL if not pointer else None)(_wrap(name, fn, pointer))
    lib.loom__set_alive(1)


# --- handles ----------------------------------------------------------------------------------------

class Handle:
    """What a C handle stands for: its kind (the C type name), the object, and the lock that
    serializes calls on it (shared by handles whose objects share state, e.g. a network and its
    step states)."""

    def __init__(self, kind: str, obj: Any, lock: threading.RLock | None = None):
        self.kind, self.obj = kind, obj
        self.lock = lock or threading.RLock()


_ids = itertools.count(1)


def new_handle(kind: str, obj: Any, lock: threading.RLock | None = None) -> Any:
    """A fresh handle (never reused) for obj, as a C pointer of type `kind*`."""
    with STATE.lock:
        if STATE.shutdown:                               # a call that raced loom_shutdown
            raise CError(SHUTDOWN, "the library was shut down (loom_shutdown)")
        ptr = ffi.cast(f"{kind} *", next(_ids) << 4)     # aligned, never NULL, never reused
        STATE.handles[ptr] = Handle(kind, obj, lock)     # cffi pointers hash and compare by address
    return ptr


def handle(ptr: Any, kind: str, what: str) -> Handle:
    """The live handle behind C pointer ptr, which must be a `kind`."""
    if ptr == ffi.NULL:
        raise CError(HANDLE, f"{what} is NULL")
    h = STATE.handles.get(ptr)
    if h is None:
        raise CError(HANDLE, f"{what} ({kind}* 0x{_address(ptr):x}) was freed or was not made by this library")
    if h.kind != kind:
        raise CError(HANDLE, f"{what} (0x{_address(ptr):x}) is a {h.kind}*, not a {kind}*")
    return h


def _address(ptr: Any) -> int:
    return int(ffi.cast("uintptr_t", ptr))


def free_handle(ptr: Any, kind: str, what: str) -> Handle:
    """Remove the handle (a second free is an error naming it); returns what it held."""
    h = handle(ptr, kind, what)
    with STATE.lock:
        if STATE.handles.pop(ptr, None) is None:         # freed by another thread meanwhile
            raise CError(HANDLE, f"{what} ({kind}* 0x{_address(ptr):x}) was freed or was not made by this library")
    return h


def locked(*handles: Handle) -> contextlib.AbstractContextManager:
    """A context manager holding the handles' locks (each once, in a fixed order)."""
    if len(handles) == 1:
        return handles[0].lock
    stack = contextlib.ExitStack()
    for lock in sorted({id(h.lock): h.lock for h in handles}.items()):
        stack.enter_context(lock[1])
    return stack


# --- arguments ---------------------------------------------------------------------------------------

def need(ptr: Any, what: str) -> Any:
    if ptr == ffi.NULL:
        raise CError(ARGUMENT, f"{what} is NULL")
    return ptr


def text(ptr: Any, what: str) -> str:
    """A NUL-terminated UTF-8 string argument."""
    try:
        return ffi.string(need(ptr, what)).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CError(ARGUMENT, f"{what} is not UTF-8 (byte {exc.start})") from None


def json_arg(ptr: Any, what: str) -> Any:
    source = text(ptr, what)
    try:
        return json.loads(source)
    except json.JSONDecodeError as exc:
        raise CError(CONFIG, f"{what} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise CError(CONFIG, f"{what} nests deeper than Python's JSON reader goes") from None


def shape(ptr: Any, ndim: int, what: str) -> tuple[int, ...]:
    """int64 dims[ndim], each >= 0, 1 <= ndim <= MAX_DIMS."""
    if not 1 <= ndim <= MAX_DIMS:
        raise CError(ARGUMENT, f"{what}: ndim {ndim} is outside 1..{MAX_DIMS}")
    dims = tuple(ffi.unpack(need(ptr, what), ndim))          # ptr is the C signature's const int64_t*
    if min(dims) < 0:
        raise CError(ARGUMENT, f"{what} {list(dims)} has a negative dimension")
    if math.prod(dims) * 8 >= 1 << 62:          # else an OverflowError (LOOM_ERR_INTERNAL) in array_in
        raise CError(ARGUMENT, f"{what} {list(dims)} describes more elements than any buffer holds")
    return dims


def array_in(ptr: Any, dims: tuple[int, ...], dtype: Any, what: str, copy: bool = True) -> np.ndarray:
    """The caller's buffer as an array of dims (a copy unless copy=False: then a view of C memory)."""
    if not copy:
        n = math.prod(dims)
        dtype = np.dtype(dtype)
        if n == 0:
            return np.zeros(dims, dtype)
        return np.frombuffer(ffi.buffer(need(ptr, what), n * dtype.itemsize), dtype).reshape(dims)
    out = np.empty(dims, dtype)
    if out.nbytes:
        ffi.memmove(out, need(ptr, what), out.nbytes)
    return out


def array_out(ptr: Any, capacity: int, value: np.ndarray, what: str) -> None:
    """Copy value (C order, its dtype) into the caller's buffer of `capacity` elements."""
    value = np.ascontiguousarray(value)
    if value.size > capacity:
        raise CError(ARGUMENT, f"{what} has room for {capacity} values; the result has {value.size} "
                               f"(shape {list(value.shape)})")
    if value.size:
        ffi.memmove(need(ptr, what), value, value.nbytes)


def put(ptr: Any, value: Any, what: str, ctype: str | None = None) -> None:
    """*ptr = value for an out-parameter."""
    target = need(ptr, what) if ctype is None else ffi.cast(ctype, need(ptr, what))
    target[0] = value


def malloc_copy(data: bytes | np.ndarray, what: str) -> Any:
    """A malloc'd copy of data (freed by the caller with loom_free)."""
    raw = data.tobytes() if isinstance(data, np.ndarray) else data
    p = lib.malloc(max(len(raw), 1))
    if p == ffi.NULL:
        raise CError(DEVICE, f"{what}: out of memory ({len(raw)} bytes)")
    ffi.memmove(p, raw, len(raw))
    return p


def put_string(ptr: Any, value: str, what: str) -> None:
    """*ptr = a malloc'd NUL-terminated UTF-8 copy of value."""
    need(ptr, what)
    ffi.cast("char **", ptr)[0] = ffi.cast("char *", malloc_copy(value.encode() + b"\0", what))


@export("set_deterministic")
def set_deterministic(on: int) -> None:
    if on not in (0, 1):
        raise CError(ARGUMENT, f"on is 0 or 1, got {on}")
    STATE.deterministic = bool(on)


@export("get_deterministic")
def get_deterministic(on: Any) -> None:
    put(on, int(STATE.deterministic), "on")


@export("live_handles")
def live_handles(count: Any) -> None:
    put(count, len(STATE.handles), "count")


@export("shutdown")
def shutdown() -> None:
    """Free every handle (waiting for asynchronous ops); later calls fail with LOOM_ERR_SHUTDOWN."""
    with STATE.lock:
        handles = list(STATE.handles.values())
        STATE.handles.clear()
        STATE.shutdown = True
    for h in handles:
        close = getattr(h.obj, "close", None)
        if close is not None:
            close()
