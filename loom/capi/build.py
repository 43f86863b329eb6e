"""`loom capi build`: libloom.so, loom.h and loom.pc for the Loom installation running this.

How: cffi's embedding mode (the optional `loom[capi]` extra). From the declarations in loom.h it
generates one C file: for every function implemented in Python an `extern "Python"` callback
(`_loomx_<name>`, attached by loom.capi.runtime) and an exported C wrapper with the header's name
that starts the runtime on first use and returns LOOM_ERR_RUNTIME (or NULL) when it cannot; plus the
few functions written in C (the version, the per-thread error message, loom_free). The C compiler
links it against this interpreter's libpython.

Why cffi: it owns the hard parts of embedding CPython (one-time start under concurrent first calls,
the interpreter lock for calls from any C thread, C <-> Python conversions) and is maintained; the
alternative, hand-written CPython C-API glue per function, is what it generates. The runtime is
started here, not by cffi, so that it is this installation's interpreter: its executable (a virtual
environment's included) is the program name, so the embedded Python finds the same packages; and
without Python's signal handlers, so that the host program's signals stay its own.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .. import atomic
from ..errors import BackendError
from ..version import __version__

MODULE = "_loom_capi"
C_FUNCTIONS = ("loom_version", "loom_last_error", "loom_free")   # written in C below, not Python
_PREFIX = "_loomx_"


@dataclass(frozen=True)
class Function:
    ret: str                # "int", "LoomTensor*", "void*", ...
    name: str
    params: str             # as declared, "void" for none
    args: tuple[str, ...]   # parameter names

    @property
    def failure(self) -> str:
        """What the C wrapper returns when the runtime cannot start."""
        return "NULL" if self.ret.endswith("*") else "LOOM_ERR_RUNTIME"


def header_text() -> str:
    return resources.files(__package__).joinpath("loom.h").read_text()


def header_sha256() -> str:
    """Compiled into the library, which checks it against the installed Loom's on start."""
    return hashlib.sha256(header_text().encode()).hexdigest()


def declarations(text: str | None = None) -> tuple[list[str], list[Function]]:
    """(the #defines, typedefs and enums, the functions) between the header's BEGIN and END markers."""
    text = header_text() if text is None else text
    body = text.split("/* BEGIN DECLARATIONS */", 1)[1].split("/* END DECLARATIONS */", 1)[0]
    body = re.sub(r"/\*.*?\*/", "", body, flags=re.S)
    types, functions = [], []
    statements = []
    for line in body.splitlines():
        if line.strip().startswith("#define"):
            types.append(line.strip())
        else:
            statements.append(line)
    for stmt in " ".join(statements).split(";"):
        stmt = " ".join(stmt.split())
        if not stmt:
            continue
        m = re.fullmatch(r"(?P<ret>[\w ]+?\s*\**)\s*(?P<name>loom_\w+)\((?P<params>.*)\)", stmt)
        if m is None or stmt.startswith(("typedef", "enum")):
            types.append(stmt + ";")
            continue
        params = m["params"].strip()
        args = () if params == "void" else tuple(re.findall(r"(\w+)\s*$", p)[0] for p in params.split(","))
        functions.append(Function(" ".join(m["ret"].replace("*", " * ").split()).replace(" *", "*"), m["name"],
                                  params, args))
    return types, functions


_C_SOURCE = r"""
#include <Python.h>                 /* first: it sets _GNU_SOURCE, which dladdr needs */
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include "loom.h"

static __thread char loom__error[4096];
static volatile int loom__alive = 0;
static char loom__start_error[4096];
static pthread_once_t loom__once = PTHREAD_ONCE_INIT;
static int loom__python_ok = 0;

const char* loom_version(void) { return LOOM_VERSION_STRING; }
static const char* loom__header_sha256(void) { return LOOM_HEADER_SHA256; }
const char* loom_last_error(void) { return loom__error; }
void loom_free(void* p) { free(p); }

static void loom__set_error(const char* msg) {
    size_t n = strlen(msg);
    if (n >= sizeof loom__error) {          /* keep the start; mark the cut */
        memcpy(loom__error, msg, sizeof loom__error - 4);
        memcpy(loom__error + sizeof loom__error - 4, "...", 4);
    } else {
        memcpy(loom__error, msg, n + 1);
    }
}
static void loom__set_alive(int on) { loom__alive = on; }
static void loom__set_start_error(const char* msg) {
    strncpy(loom__start_error, msg, sizeof loom__start_error - 1);
}

/* This installation's interpreter, without Python's signal handlers. Where the host process is
   itself Python (libloom.so loaded by ctypes or cffi), that interpreter serves. */
static void loom__start_python(void) {
    /* Python's extension modules (cffi's backend, NumPy) resolve libpython's symbols globally; a host
       that opened libloom.so with RTLD_LOCAL (dlopen's default, most FFIs) left them local */
    Dl_info where;
    if (dladdr((void*)&Py_IsInitialized, &where) && where.dli_fname)
        (void)dlopen(where.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_GLOBAL);
    if (Py_IsInitialized()) { loom__python_ok = 1; return; }
    PyConfig config;
    PyConfig_InitPythonConfig(&config);
    config.install_signal_handlers = 0;
    config.parse_argv = 0;
    PyStatus status = PyConfig_SetBytesString(&config, &config.program_name, LOOM_PYTHON_EXECUTABLE);
    if (!PyStatus_Exception(status)) status = Py_InitializeFromConfig(&config);
    PyConfig_Clear(&config);
    if (PyStatus_Exception(status)) {
        snprintf(loom__start_error, sizeof loom__start_error, "Python (%s) did not start: %s",
                 LOOM_PYTHON_EXECUTABLE, status.err_msg ? status.err_msg : "unknown reason");
        return;
    }
    PyEval_SaveThread();                      /* let any thread take the interpreter lock */
    loom__python_ok = 1;
}

static int _loomx_ping(void);

static __thread int loom__thread_state = 0;
static pthread_key_t loom__state_key;
static pthread_once_t loom__key_once = PTHREAD_ONCE_INIT;

/* At the exit of a thread whose Python thread state the library made: delete it. Not through
   PyGILState_Release: Python's own thread-local key may be cleared already (destructors run in any
   order); PyThreadState_DeleteCurrent needs only the lock, taken with the state itself. */
static void loom__drop_thread_state(void* state) {
    PyEval_RestoreThread((PyThreadState*)state);
    PyThreadState_Clear((PyThreadState*)state);
    PyThreadState_DeleteCurrent();          /* also gives the lock back */
}
static void loom__make_key(void) { pthread_key_create(&loom__state_key, loom__drop_thread_state); }

/* cffi takes the interpreter lock for each call with PyGILState_Ensure/Release, which, on a thread
   without a Python thread state, creates one and destroys it again after the call: its thread-local
   data (the exact products' scratch buffers, the mode) would be rebuilt on every call. So a calling
   thread that has none gets one on its first call and keeps it until it exits (ensured once; then
   PyEval_SaveThread only gives the lock back). A thread that has one (Python's own) keeps its owner's. */
static void loom__keep_thread_state(void) {
    if (loom__thread_state || !loom__python_ok) return;
    loom__thread_state = 1;
    if (PyGILState_GetThisThreadState() != NULL) return;
    (void)PyGILState_Ensure();
    PyThreadState* state = PyEval_SaveThread();
    pthread_once(&loom__key_once, loom__make_key);
    pthread_setspecific(loom__state_key, state);
}

static int loom__ready(void) {
    if (loom__alive) {
        if (!loom__thread_state) loom__keep_thread_state();
        return 1;
    }
    pthread_once(&loom__once, loom__start_python);
    loom__keep_thread_state();
    if (loom__python_ok) _loomx_ping();      /* the first call runs the init code (loom.capi.runtime) */
    if (loom__alive) return 1;
    loom__set_error(loom__start_error[0] ? loom__start_error
                    : "Loom's embedded runtime did not start (see the standard error for why)");
    return 0;
}
"""

_INIT_CODE = """
from _loom_capi import ffi, lib

@ffi.def_extern(error=0)
def _loomx_ping():
    return 1

try:
    from loom.capi import runtime
    runtime.attach(ffi, lib)
except BaseException as exc:
    lib.loom__set_start_error(f"loom.capi did not start: {type(exc).__name__}: {exc}".encode()[:4000])
"""


def c_source(functions: list[Function]) -> str:
    """The set_source code: the C part, forward declarations of the callbacks, and the wrappers."""
    out = [_C_SOURCE]
    for f in functions:
        if f.name in C_FUNCTIONS:
            continue
        args = ", ".join(f.args)
        out.append(f"static {f.ret} {_PREFIX}{f.name[5:]}({f.params});\n"
                   f"{f.ret} {f.name}({f.params}) {{\n"
                   f"    if (!loom__ready()) return {f.failure};\n"
                   f"    return {_PREFIX}{f.name[5:]}({args});\n}}\n")
    return "\n".join(out)


def cdef(types: list[str], functions: list[Function]) -> str:
    """cffi's declarations: the header's types and constants, the callbacks, the C helpers."""
    lines = list(types)
    lines.append('extern "Python" int _loomx_ping(void);')
    for f in functions:
        if f.name not in C_FUNCTIONS:
            lines.append(f'extern "Python" {f.ret} {_PREFIX}{f.name[5:]}({f.params});')
    lines += ["void loom__set_error(const char* msg);", "const char* loom__header_sha256(void);",
              "void loom__set_alive(int on);", "void loom__set_start_error(const char* msg);",
              "void* malloc(size_t size);"]
    return "\n".join(lines)


def _require_cffi():
    try:
        import cffi
    except ImportError:
        raise BackendError("the C ABI needs cffi: pip install 'loom[capi]'") from None
    return cffi


def compiler() -> str | None:
    """The C compiler: $CC (which must exist), else cc, gcc or clang on PATH; None if none is found."""
    chosen = os.environ.get("CC")
    if chosen:
        if not shutil.which(shlex.split(chosen)[0]):
            raise BackendError(f"CC={chosen!r}: no such compiler on PATH")
        return chosen
    return next((name for name in ("cc", "gcc", "clang") if shutil.which(name)), None)


def python_link() -> tuple[str, str, str]:
    """(include dir, lib dir, library name) of this interpreter's libpython."""
    include = sysconfig.get_paths()["include"]
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    version = sysconfig.get_config_var("LDVERSION") or sysconfig.get_config_var("VERSION")
    if not os.path.isfile(os.path.join(include, "Python.h")):
        raise BackendError(f"Python's headers are missing ({include}/Python.h): install your Python's "
                           "development package (e.g. python3-dev)")
    return include, libdir, f"python{version}"


def build(out: str | os.PathLike[str], cc: str | None = None) -> dict[str, Path]:
    """Write libloom.so, loom.h and loom.pc into `out` (created if missing); returns their paths."""
    cffi = _require_cffi()
    if cc is not None and not shutil.which(shlex.split(cc)[0]):
        raise BackendError(f"--cc {cc!r}: no such compiler on PATH")
    cc = cc or compiler()
    if cc is None:
        raise BackendError("no C compiler found (set CC, or install cc, gcc or clang)")
    include, libdir, pylib = python_link()
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    types, functions = declarations()
    ffi = cffi.FFI()
    ffi.embedding_api("")
    ffi.cdef(cdef(types, functions))
    ffi.set_source(MODULE, c_source(functions))
    ffi.embedding_init_code(_INIT_CODE)
    header = header_text()
    with tempfile.TemporaryDirectory(prefix="loom-capi-") as tmp:
        src = Path(tmp) / "libloom.c"
        with contextlib.redirect_stdout(io.StringIO()):      # cffi prints "generating ..."
            ffi.emit_c_code(str(src))
        (Path(tmp) / "loom.h").write_text(header)
        lib = Path(tmp) / "libloom.so"
        cmd = shlex.split(cc) + [
            "-shared", "-fPIC", "-O2", "-o", str(lib), str(src), f"-I{tmp}", f"-I{include}",
            f'-DLOOM_PYTHON_EXECUTABLE="{_c_string(sys.executable)}"',
            f'-DLOOM_VERSION_STRING="{_c_string(__version__)}"', f'-DLOOM_HEADER_SHA256="{header_sha256()}"',
            f"-L{libdir}", f"-l{pylib}", f"-Wl,-rpath,{libdir}", "-lpthread", "-ldl"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise BackendError(f"compiling libloom.so failed ({shlex.join(cmd)}):\n{done.stderr.strip()}")
        paths = {"lib": out / "libloom.so", "header": out / "loom.h", "pkgconfig": out / "loom.pc"}
        atomic.write_bytes(paths["lib"], lib.read_bytes())
    atomic.write_bytes(paths["header"], header.encode())
    atomic.write_bytes(paths["pkgconfig"], pkgconfig(out).encode())
    return paths


def pkgconfig(prefix: Path) -> str:
    return (f"prefix={prefix}\nlibdir=${{prefix}}\nincludedir=${{prefix}}\n\n"
            f"Name: loom\nDescription: Loom, the deterministic neural compute runtime, from C\n"
            f"Version: {__version__}\nCflags: -I${{includedir}}\n"
            f"Libs: -L${{libdir}} -lloom -Wl,-rpath,${{libdir}}\n")


def _c_string(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')
