"""`loom web build DIR`: the static site that runs Loom in the browser.

DIR gets the page (loom/web/page: index.html, app.js, worker.js, style.css), the Pyodide runtime and
its NumPy wheel (runtime.py's cache), a wheel of this Loom (wheel.py) and site.json: the wheel's
name, the default number of epochs, and the native run of every example network for that many
epochs (app.py's Session.train here, in deterministic mode): the fingerprint the page compares its
own with, the accuracy, the losses, the time.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from .. import atomic
from ..errors import ConfigError
from ..version import __version__
from . import app, llm, runtime, wheel

PAGE = ("index.html", "app.js", "worker.js", "style.css")
RUNTIME = tuple(runtime.FILES)


MODEL = "model.gguf"
CHAT_PACKAGES = "chat-packages.zip"


def build(out: str | os.PathLike[str], epochs: int = 3, log: Callable[..., object] = print,
          llm_path: str | os.PathLike[str] | None = None) -> Path:
    """Write the site into `out`; returns its path. llm_path: a GGUF decoder for the page's language
    model panel. The site is written into a staging folder beside
    `out` and moved into place when complete: a failed build changes nothing. `out` may be missing,
    empty, or a site built before (replaced); any other folder is refused, so nothing of the user's
    is overwritten."""
    if isinstance(epochs, bool) or not isinstance(epochs, int) or not 1 <= epochs <= app.MAX_EPOCHS:
        raise ConfigError("--epochs", f"expected an integer in 1..{app.MAX_EPOCHS}, got {epochs!r}")
    if llm_path is not None:
        if not Path(llm_path).is_file():
            raise ConfigError("--llm", f"{llm_path}: no such file (expected a GGUF decoder, e.g. SmolLM2-135M's)")
        with open(llm_path, "rb") as fh:
            magic = fh.read(4)
        if magic != b"GGUF":
            raise ConfigError("--llm", f"{llm_path}: not a GGUF file (starts with {magic!r}, not b'GGUF')")
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise ConfigError("DIR", f"{folder} exists and is not a folder")
    if folder.is_dir() and any(folder.iterdir()) and not (folder / "site.json").is_file():
        raise ConfigError("DIR", f"{folder} is a folder with other files in it (not a site built by `loom web "
                                 "build`); give an empty or new folder")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        _write(staging, epochs, log, llm_path)
        if folder.exists():                     # a previous site: swap, then remove it
            old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old.", dir=folder.parent))
            os.replace(folder, old / "site")
            os.replace(staging, folder)
            shutil.rmtree(old)
        else:
            os.replace(staging, folder)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return folder


def _write(folder: Path, epochs: int, log: Callable[..., object], llm_path) -> None:
    log(f"browser runtime: Pyodide {runtime.VERSION} from {runtime.PACKAGE} (cache {runtime.cache_dir()})")
    source = runtime.runtime_dir()
    for name in RUNTIME:
        shutil.copyfile(source / name, folder / name)
    page = resources.files(__package__).joinpath("page")
    for name in PAGE:
        (folder / name).write_bytes(page.joinpath(name).read_bytes())
    (folder / wheel.name()).write_bytes(wheel.build())
    session, native = app.Session(), {}
    for name in app.networks():
        log(f"native reference: {name}, {epochs} epochs")
        result = session.train(name, epochs)
        native[name] = {k: result[k] for k in ("fingerprint", "accuracy", "correct", "total", "losses",
                                               "seconds", "samples_per_s")}
    manifest = {"loom": __version__, "wheel": wheel.name(), "pyodide": runtime.VERSION, "epochs": epochs,
                "max_epochs": app.MAX_EPOCHS,
                "networks": list(app.networks()), "native": native,
                "native_machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_implementation()} "
                                  f"{platform.python_version()}"}
    if llm_path is not None:
        manifest["llm"] = _write_llm(folder, Path(llm_path), log)
    atomic.write_json(folder / "site.json", manifest)


def _write_llm(folder: Path, source: Path, log: Callable[..., object]) -> dict:
    """Copy the model and the chat template's packages into the site; the native reference run."""
    _chat_packages(folder / CHAT_PACKAGES)
    log(f"native reference: {source.name}, {llm.REFERENCE_TOKENS} tokens of {llm.REFERENCE_PROMPT!r}")
    native = llm.reference(source)
    shutil.copyfile(source, folder / MODEL)
    return {"file": MODEL, "name": source.name, "bytes": source.stat().st_size, "packages": CHAT_PACKAGES,
            "native": native}


def _chat_packages(zip_path: Path) -> None:
    """jinja2 and markupsafe as pure Python (markupsafe falls back to its _native module without its C
    speedups), with their licence files, for Pyodide's site-packages."""
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as z:
        for package, dist in (("jinja2", "Jinja2"), ("markupsafe", "MarkupSafe")):
            spec = importlib.util.find_spec(package)
            if spec is None or not spec.submodule_search_locations:
                raise ConfigError("--llm", f"the page's chat templates need the `{package}` package here to "
                                           "bundle it: pip install 'loom[llm]'")
            root = Path(next(iter(spec.submodule_search_locations)))
            for file in sorted(root.glob("*.py")):
                z.write(file, f"{package}/{file.name}")
            for file in importlib.metadata.distribution(dist).files or []:
                if "LICENSE" in file.name.upper() or "COPYING" in file.name.upper():
                    z.write(file.locate(), f"{package}/{file.name}")
