"""The plumbing every function of libloom.so's Python side uses: status codes, errors, the registry
of exported functions, handles, and the conversions between C arguments and arrays. The network ABI
(network_api.py) and the tensor API (tensor_api.py) build on it; runtime.py attaches what they
export to the library and re-exports these names.

It is apart from runtime.py because attaching the library imports both APIs, which use all of this.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import math
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

OK, ARGUMENT, HANDLE, CONFIG, FORMAT, IO, DEVICE, DETERMINISM, SHUTDOWN, RUNTIME, INTERNAL = range(11)
MAX_DIMS = 8

ffi: Any = None         # the library's cffi FFI and lib, set by runtime.attach()
lib: Any = None
EXPORTS: dict[str, tuple[Callable, bool]] = {}


class CError(Exception):
    """A failed call's status code and message (the message without the function's name)."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def export(name: str, pointer: bool = False) -> Callable[[Callable], Callable]:
    """Register fn as the implementation of loom_<name>; pointer: it returns a handle or pointer
    (NULL on error) instead of a status."""
    def register(fn: Callable) -> Callable:
        EXPORTS[name] = (fn, pointer)
        return fn
    return register


class _State:
    def __init__(self):
        self.deterministic = True
        self.shutdown = False
        self.lock = threading.Lock()
        self.handles: dict[int, Handle] = {}


STATE = _State()


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
