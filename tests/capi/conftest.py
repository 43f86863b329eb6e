"""Fixtures for the C ABI tests: libloom.so built once per session (`loom capi build` into a temporary
folder) and C/C++ programs compiled against it with pkg-config's flags, then run as subprocesses.

Everything here skips, with the reason, where a piece is missing: cffi (the `loom[capi]` extra), a C
compiler, Python's headers, pkg-config."""
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from capi_programs import flags

HERE = Path(__file__).parent


def _missing() -> str | None:
    try:
        import cffi  # noqa: F401
    except ImportError:
        return "cffi is not installed (pip install 'loom[capi]')"
    from loom.capi import build
    try:
        if build.compiler() is None:
            return "no C compiler (cc, gcc or clang) on PATH"
        build.python_link()
    except Exception as exc:        # noqa: BLE001 - the reason is the message
        return str(exc)
    if shutil.which("pkg-config") is None:
        return "pkg-config is not installed"
    return None


@pytest.fixture(scope="session")
def capi(tmp_path_factory):
    """The built library's folder (libloom.so, loom.h, loom.pc)."""
    why = _missing()
    if why:
        pytest.skip(why)
    from loom.capi.build import build
    out = tmp_path_factory.mktemp("capi")
    build(out)
    return out


@pytest.fixture(scope="session")
def compile_c(capi, tmp_path_factory):
    """compile_c(source path or text, name, cxx=False, extra=()) -> the executable's path."""
    folder = tmp_path_factory.mktemp("capi-programs")

    def compile_(source, name: str, cxx: bool = False, extra=()) -> Path:
        src = Path(source) if isinstance(source, Path) else None
        if src is None:
            src = folder / (name + (".cpp" if cxx else ".c"))
            src.write_text(source)
        exe = folder / name
        compiler = (shutil.which("c++") or shutil.which("g++")) if cxx else os.environ.get("CC", "cc")
        if compiler is None:
            pytest.skip("no C++ compiler on PATH")
        cmd = [*shlex.split(compiler), "-O1", "-g", "-Wall", "-Werror", *(["-std=c++17"] if cxx else ["-std=c11"]),
               "-o", str(exe), str(src), f"-I{HERE}", *extra, *flags(capi), "-lpthread"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        assert done.returncode == 0, f"compiling {src.name} failed:\n{done.stderr}"
        return exe
    return compile_
