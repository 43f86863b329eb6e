"""Running C programs built against libloom.so (the fixtures that build them are in tests/capi/conftest.py):
pkg-config's flags for the built library, and running a program as a subprocess."""
import os
import subprocess
from pathlib import Path


def flags(capi: Path) -> list[str]:
    """pkg-config's compile and link flags for the built library."""
    env = {**os.environ, "PKG_CONFIG_PATH": str(capi)}
    done = subprocess.run(["pkg-config", "--cflags", "--libs", "loom"], capture_output=True, text=True, env=env,
                          check=True)
    return done.stdout.split()


def run(exe, *args, env=None, timeout=300, check=True) -> subprocess.CompletedProcess:
    """Run a compiled program; its stdout and stderr, and (check=True) a zero exit status."""
    full = {**os.environ, **(env or {})}     # PYTHONPATH too: where Loom runs from a checkout, so does the library
    done = subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, env=full, timeout=timeout)
    if check:
        assert done.returncode == 0, f"{exe.name} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done

