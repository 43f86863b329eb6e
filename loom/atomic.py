"""Atomic file writes: a temp file in the same folder, fsync, rename over the target, fsync the
folder. Readers (and a process killed mid-save) see the old file or the whole new one, never a part.

Files get the mode other tools give them: an existing target keeps its mode, a new one gets
0666 less the umask (0644 by default), not the 0600 of the temporary file. JSON is written as
valid JSON: NaN and infinities become null (`json_text` says which values were replaced).
"""
from __future__ import annotations

import json
import math
import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .errors import LoomError


class FileError(LoomError, OSError):
    """A file or folder cannot be read or written (missing, permission denied, a folder where a file
    is expected, disk full): the message names the user's path."""


def describe(exc: OSError, path: str | os.PathLike[str] | None = None) -> FileError:
    """exc (an OSError from the OS) as a FileError naming `path` (else the path the OS reported)."""
    where = os.fspath(path) if path is not None else (exc.filename or "")
    reason = exc.strerror or str(exc)
    if isinstance(exc, IsADirectoryError):
        reason = "is a directory, not a file"
    elif isinstance(exc, NotADirectoryError):
        reason = "a part of the path is a file, not a directory"
    return FileError(f"{where}: {reason[0].lower() + reason[1:] if reason else type(exc).__name__}")


def umask() -> int:
    """The process umask (read without changing it where /proc allows)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def file_mode(path: str) -> int:
    """The mode a write to `path` should leave: the existing file's, else 0666 less the umask."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return 0o666 & ~umask()


def folder_mode() -> int:
    """The mode of a new folder: 0777 less the umask (what mkdir gives)."""
    return 0o777 & ~umask()


def read_bytes(path: str | os.PathLike[str]) -> bytes:
    """The whole file; an OSError (missing, a folder, no permission) as a FileError naming the path."""
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise describe(exc, path) from None


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    path = os.fspath(path)
    if os.path.isdir(path):
        raise FileError(f"{path}: is a directory; give a file name")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileError(f"{path}: folder {folder} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise describe(exc, path) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            try:
                os.fchmod(fh.fileno(), file_mode(path))
            except OSError:                    # file systems without modes (vfat, some network mounts)
                pass
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise describe(exc, path) from None
        raise
    try:  # make the rename itself durable
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def json_text(value: Any, indent: int | None = 2) -> tuple[str, list[str]]:
    """(JSON text of value, the places where a NaN or infinity was written as null). Python's json
    writes them as bare NaN / Infinity, which no other JSON reader accepts."""
    notes: list[str] = []

    def clean(v, where):
        if isinstance(v, float) and not math.isfinite(v):
            notes.append(f"{where}: {v}")
            return None
        if isinstance(v, dict):
            return {k: clean(x, f"{where}.{k}" if where else str(k)) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x, f"{where}[{i}]") for i, x in enumerate(v)]
        return v

    return json.dumps(clean(value, ""), indent=indent, allow_nan=False), notes


def write_json(path: str | os.PathLike[str], value: Any, indent: int | None = 2) -> list[str]:
    """Write value as valid JSON, atomically; returns json_text's notes (values written as null)."""
    text, notes = json_text(value, indent)
    write_bytes(path, (text + "\n").encode("utf-8"))
    return notes


@contextmanager
def new_folder(path: str | os.PathLike[str],
               keep_on: tuple[type[BaseException], ...] = (KeyboardInterrupt,)) -> Iterator[str]:
    """Create the folder `path` (and its parents) for outputs. If the block fails, the files it added
    are removed and so are the folders this created; files there before are kept. On Ctrl-C the
    files written so far stay (a training checkpoint is worth keeping), as on the exceptions in
    `keep_on`, and only empty folders go.
    Raises FileError when path is an existing file."""
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise FileError(f"{path}: exists and is not a folder")
    created = []
    head = os.path.abspath(path)
    while not os.path.exists(head):
        created.append(head)
        head = os.path.dirname(head)
    before = set(os.listdir(path)) if not created else set()
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise describe(exc, path) from None
    try:
        yield path
    except BaseException as exc:
        for name in set(os.listdir(path)) - before if not isinstance(exc, keep_on) else ():
            target = os.path.join(path, name)
            if os.path.isfile(target) or os.path.islink(target):
                os.unlink(target)
        for folder in created:                     # innermost first; only if still empty
            try:
                os.rmdir(folder)
            except OSError:
                break
        raise
