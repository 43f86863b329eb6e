"""The numba loader of Loom's compiled CPU loops (numba: the optional `loom[cpu]` extra).

Each module of compiled loops (gemv.py, elementwise.py, exact_jit.py, rounded.py, rounded_gemv.py,
and loom.kernels.ir.lower_numba's generated modules) is plain Python until `compile_module` replaces
its functions, in the module's own namespace, by numba dispatchers: module-level functions are what
numba's on-disk cache (cache=True) can key, and calls between a module's functions then resolve to
the dispatchers. `available()` says whether that can happen here: numba importable, LOOM_JIT not
"0" (read on every call, so the switch works at run time), and not a forked child of a process
that ran OpenMP kernels. `run` calls a parallel kernel, one at a time.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import numpy as np

# Without nnan/ninf: NaN and inf scales must propagate as in gguf_quants' dequantization.
FASTMATH = {"reassoc", "contract", "nsz", "arcp"}

_state: dict = {}       # after _load(): "numba", then "layer"; or "missing": why not
_load_lock = threading.Lock()
# numba's "workqueue" threading layer (its fallback where neither TBB nor OpenMP is found) aborts
# the process when two threads launch parallel kernels at once; products from several Python
# threads take turns instead.
_call_lock = threading.Lock()


def available() -> bool:
    """Whether products run here: numba importable and LOOM_JIT is not "0" (read on every call,
    so the switch works at run time)."""
    if os.environ.get("LOOM_JIT", "1") == "0":
        return False
    return "missing" not in _load()


def unavailable_reason() -> str | None:
    """Why the compiled loops do not run here (available() is False), or None where they do."""
    if os.environ.get("LOOM_JIT", "1") == "0":
        return "LOOM_JIT=0"
    return _load().get("missing")


def _forked_child() -> None:
    """GNU OpenMP (numba's threading layer on Linux where libgomp is found; its "workqueue"
    alternative wakes threads too slowly for decode) aborts a forked child that starts a
    parallel region after the parent did. Such a child runs the NumPy path instead."""
    if _state.get("layer") == "omp":
        _state["missing"] = "forked from a process that ran the OpenMP kernels (GNU OpenMP is not fork-safe)"


if hasattr(os, "register_at_fork"):          # absent where there is no fork (Pyodide, Windows)
    os.register_at_fork(after_in_child=_forked_child)


def _load() -> dict:
    if not _state:
        with _load_lock:
            if not _state:
                try:
                    import numba
                except ImportError as exc:
                    _state["missing"] = f"numba is not installed (pip install 'loom[cpu]'): {exc}"
                else:
                    _state["numba"] = numba
    return _state


def _wrap(numba, namespace: dict, names, fastmath, parallel: bool) -> None:
    namespace["prange"] = numba.prange
    for name in names:
        namespace[name] = numba.njit(fastmath=fastmath, cache=True, parallel=parallel)(namespace[name])


def compile_module(namespace: dict, plain: Iterable[str] = (), parallel: Iterable[str] = (),
                   fastmath: bool | set[str] = False, reassociated: Iterable[str] = ()) -> bool:
    """For another module of compiled loops (loom.backend.cpu.exact_jit): replace its functions named in
    `plain` and `parallel` (module-level, for numba's on-disk cache) by numba dispatchers, once, and
    its `prange` by numba's; those in `reassociated` get FASTMATH (loops whose result may depend on
    the order of their additions, as a bound's may). False where the JIT is unavailable
    (available()); the module's plain Python functions then stay as they are."""
    if not available():
        return False
    if namespace.get("_numba_compiled"):
        return True
    with _load_lock:
        if not namespace.get("_numba_compiled"):
            numba = _state["numba"]
            _wrap(numba, namespace, plain, fastmath, parallel=False)
            _wrap(numba, namespace, parallel, fastmath, parallel=True)
            _wrap(numba, namespace, reassociated, FASTMATH, parallel=False)
            namespace["_numba_compiled"] = True
    return True


def compiled(namespace: dict) -> bool:
    """Whether compile_module has replaced the functions of the module with this namespace."""
    return bool(namespace.get("_numba_compiled"))


def run(kernel: Callable[..., Any], *args: Any) -> None:
    """Call a parallel kernel: one at a time (see _call_lock), noting numba's threading layer."""
    with _call_lock:
        kernel(*args)
        if "layer" not in _state:                   # known once a parallel kernel has run
            _state["layer"] = _state["numba"].threading_layer()


@functools.cache
def f16_table() -> np.ndarray:
    """float32 [65536]: every float16 bit pattern's value, converted once by NumPy (256 KiB), for the
    block types' scales: a lookup per scale is faster per Q4_1 row than arithmetic."""
    return np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)


_source_lock = threading.Lock()


@functools.cache
def load_source(text: str) -> ModuleType:
    """The module whose source is `text` (generated code, e.g. loom.kernels.ir.lower_numba's), imported
    once per text. The text is written to a file named by its hash under the user cache
    (LOOM_CACHE_DIR, else ~/.cache/loom) and imported from there, so numba's on-disk cache keys it
    and a later process loads the compiled loops instead of compiling again; a change to the
    generator changes the text, hence the file, so a stale cache entry is never reused. Where the
    cache directory is not writable the text is compiled in memory, every process."""
    with _source_lock:
        digest = hashlib.sha256(text.encode()).hexdigest()[:24]
        name = f"loom_ir_{digest}"
        path = _write_source(name, text)
        if path is None:
            namespace = {"__name__": name}
            exec(compile(text.replace("cache=True", "cache=False"), f"<{name}>", "exec"), namespace)
            return SimpleNamespace(**namespace)
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module          # numba's cache finds the loop's globals by module name
        spec.loader.exec_module(module)
        return module


def _write_source(name: str, text: str) -> Path | None:
    """The module file (written atomically unless present with this text), or None."""
    root = os.environ.get("LOOM_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "loom")
    folder = Path(root) / "ir_numba"
    path = folder / f"{name}.py"
    try:
        if path.is_file() and path.read_text() == text:
            return path
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
        return path
    except OSError:
        return None
