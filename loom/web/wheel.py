"""A wheel of this installation of Loom (pure Python: the package's files as installed), for Pyodide.

The page's worker unpacks it with pyodide.unpackArchive into Pyodide's working directory, which is
on sys.path. Compiled caches (__pycache__, numba's) are left out; the package data (the digits, the
example configs, the page) goes in.
"""
from __future__ import annotations

import base64
import hashlib
import io
import zipfile
from pathlib import Path

from ..version import __version__

_SKIP_DIRS = {"__pycache__"}
_SKIP_SUFFIXES = {".pyc", ".nbi", ".nbc", ".so"}


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def name() -> str:
    return f"loom-{__version__}-py3-none-any.whl"


def build() -> bytes:
    """The wheel's bytes (deterministic: sorted members, fixed timestamps)."""
    root = Path(__file__).resolve().parent.parent          # the loom package
    files = sorted(p for p in root.rglob("*") if p.is_file() and not (_SKIP_DIRS & set(p.relative_to(root).parts))
                   and p.suffix not in _SKIP_SUFFIXES)
    info = f"loom-{__version__}.dist-info"
    members = [(f"loom/{p.relative_to(root).as_posix()}", p.read_bytes()) for p in files]
    members.append((f"{info}/METADATA", f"Metadata-Version: 2.1\nName: loom\nVersion: {__version__}\n"
                                        f"Requires-Dist: numpy\n".encode()))
    members.append((f"{info}/WHEEL", b"Wheel-Version: 1.0\nGenerator: loom.web.wheel\nRoot-Is-Purelib: true\n"
                                     b"Tag: py3-none-any\n"))
    record = "".join(f"{n},{_record_hash(d)},{len(d)}\n" for n, d in members) + f"{info}/RECORD,,\n"
    members.append((f"{info}/RECORD", record.encode()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for member, data in members:
            z.writestr(zipfile.ZipInfo(member, date_time=(1980, 1, 1, 0, 0, 0)), data,
                       compress_type=zipfile.ZIP_DEFLATED)
    return out.getvalue()
