"""The Python side of libloom.so: what the library's init code runs (attach(), see build.py).

Every exported function is registered with @export (abi.py); attach() imports the network ABI
(network_api.py) and the tensor API (tensor_api.py), whose @export calls fill the registry, and hands
each function to cffi as the `extern "Python"` callback behind the header's C function. The wrapper
around each one turns every exception into a status code and the calling thread's loom_last_error()
message (never a Python traceback escaping into C), runs the call in the library-wide mode
(loom_set_deterministic), and refuses calls after loom_shutdown().

The handles, status codes, errors and argument conversions are abi.py's, re-exported here.
"""
from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

from .. import mode
from ..errors import BackendError, ConfigError, DeterminismError, FormatError, LoomError
from . import abi, build, network_api, tensor_api  # noqa: F401 - the APIs' @export calls fill abi.EXPORTS
from .abi import (  # noqa: F401 - re-exported
    ARGUMENT,
    CONFIG,
    DETERMINISM,
    DEVICE,
    FORMAT,
    HANDLE,
    INTERNAL,
    IO,
    MAX_DIMS,
    OK,
    RUNTIME,
    SHUTDOWN,
    STATE,
    CError,
    Handle,
    array_in,
    array_out,
    export,
    free_handle,
    handle,
    json_arg,
    locked,
    malloc_copy,
    need,
    new_handle,
    put,
    put_string,
    shape,
    text,
)


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
            abi.lib.loom__set_error(f"loom_{name}: {message}".encode("utf-8", "replace"))
            return abi.ffi.NULL if pointer else code
    return call


def attach(ffi_: Any, lib_: Any) -> None:
    """Attach every exported function to its `extern "Python"` callback; then mark the library alive.
    The library must have been built from this Loom's loom.h (its SHA-256 is compiled in), and every
    function the header declares must have an implementation: else nothing is attached and every
    call fails with LOOM_ERR_RUNTIME, saying so."""
    built = ffi_.string(lib_.loom__header_sha256()).decode()
    if built != build.header_sha256():
        raise RuntimeError("libloom.so was built from another loom.h than this Loom's "
                           f"({built[:12]}... vs {build.header_sha256()[:12]}...): rebuild it with `loom capi build`")
    declared = {f.name[5:] for f in build.declarations()[1] if f.name not in build.C_FUNCTIONS}
    if declared != set(abi.EXPORTS):
        raise RuntimeError(f"loom.h and loom.capi disagree: declared only {sorted(declared - set(abi.EXPORTS))}, "
                           f"implemented only {sorted(set(abi.EXPORTS) - declared)}")
    abi.ffi, abi.lib = ffi_, lib_
    for name, (fn, pointer) in abi.EXPORTS.items():
        ffi_.def_extern(name=f"_loomx_{name}", error=INTERNAL if not pointer else None)(_wrap(name, fn, pointer))
    lib_.loom__set_alive(1)


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
