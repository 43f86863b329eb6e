"""`loom web build DIR`: the static site that runs Loom in the browser.

DIR gets the page (loom/web/page: index.html, app.js, worker.js, style.css), the Pyodide runtime and
its NumPy wheel (runtime.py's cache), a wheel of this Loom (wheel.py) and site.json: the wheel's
name, the default number of epochs, and the native run of every example network for that many
epochs (app.py's Session.train here, in deterministic mode): the fingerprint the page compares its
own with, the accuracy, the losses, the time.
"""
from __future__ import annotations

import os
import platform
import shutil
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from .. import atomic
from ..errors import ConfigError
from ..version import __version__
from . import app, runtime, wheel

PAGE = ("index.html", "app.js", "worker.js", "style.css")
RUNTIME = ("pyodide.js", "pyodide.asm.js", "pyodide.asm.wasm", "python_stdlib.zip", "pyodide-lock.json",
           runtime.NUMPY_WHEEL)


def build(out: str | os.PathLike[str], epochs: int = 3, log: Callable[..., object] = print) -> Path:
    """Write the site into `out` (created if missing); returns its path."""
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ConfigError("--epochs", f"expected a positive integer, got {epochs!r}")
    folder = Path(out)
    with atomic.new_folder(folder):
        log(f"browser runtime: Pyodide {runtime.VERSION} from {runtime.PACKAGE} (cache {runtime.cache_dir()})")
        source = runtime.runtime_dir()
        for name in RUNTIME:
            shutil.copyfile(source / name, folder / name)
        page = resources.files(__package__).joinpath("page")
        for name in PAGE:
            atomic.write_bytes(folder / name, page.joinpath(name).read_bytes())
        atomic.write_bytes(folder / wheel.name(), wheel.build())
        session, native = app.Session(), {}
        for name in app.networks():
            log(f"native reference: {name}, {epochs} epochs")
            result = session.train(name, epochs)
            native[name] = {k: result[k] for k in ("fingerprint", "accuracy", "correct", "total", "losses",
                                                   "seconds", "samples_per_s")}
        manifest = {"loom": __version__, "wheel": wheel.name(), "pyodide": runtime.VERSION, "epochs": epochs,
                    "networks": list(app.networks()), "native": native,
                    "native_machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_implementation()} "
                                      f"{platform.python_version()}"}
        atomic.write_json(folder / "site.json", manifest)
    return folder
