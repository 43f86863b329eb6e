"""The UCI optical-recognition-of-handwritten-digits set, as scikit-learn bundles it.

1,797 grey-scale 8x8 images with integer pixels 0..16 and labels 0..9 (the UCI "optdigits" test
set). Shipped inside the package as ``digits.npz``; see ``LICENSE-digits.txt`` beside this file
for the source, the licence (CC BY 4.0) and the citation.

The train/test split draws from ``loom.rng`` (Philox keyed by seed and stream name), never from
NumPy's generators, so ``digits_split(seed=s)`` is the same on every machine and NumPy version.
"""
from __future__ import annotations

import functools
import hashlib
import io
import math
import os
from importlib import resources

import numpy as np

from ..errors import FormatError
from ..rng import Generator

N_SAMPLES = 1797
N_CLASSES = 10
MAX_PIXEL = 16
# SHA-256 of loom/datasets/digits.npz (also recorded in LICENSE-digits.txt).
DIGITS_SHA256 = "b2dab7b501728c22e9119ad76740b2e17c77a231e42d1e592380d90886f1a05e"
SPLIT_STREAM = "datasets.digits.split"

_RESOURCE = "digits.npz"


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 samples: X float32 [1797, 1, 8, 8] in [0, 1] (pixels / 16), y int64 [1797].

    Returns fresh arrays on every call. Raises FormatError if the bundled file is damaged.
    """
    images, labels = _bundled()
    return _to_float(images), labels.astype(np.int64)


def digits_split(test_fraction: float = 0.2,
                 seed: int = 0) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """A deterministic stratified split: ``(X_train, y_train), (X_test, y_test)``.

    Within each class the samples are ordered by a 32-bit ``loom.rng`` draw (stream
    "datasets.digits.split", one draw per sample, ties broken by index) and the first
    ``round_half_up(test_fraction * class_size)`` go to the test set, clamped so every class
    keeps at least one sample on each side. Both parts are returned in ascending sample order
    (the file's order); shuffle for training. Arrays are as in ``load_digits``.
    """
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float, np.floating)):
        raise TypeError(f"test_fraction must be a float in (0, 1), got {test_fraction!r}")
    test_fraction = float(test_fraction)
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie strictly between 0 and 1, got {test_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {seed!r}")

    images, labels = _bundled()
    test_idx = _split_indices(labels, test_fraction, int(seed))
    is_test = np.zeros(labels.shape[0], dtype=bool)
    is_test[test_idx] = True
    X, y = _to_float(images), labels.astype(np.int64)
    return (X[~is_test], y[~is_test]), (X[is_test], y[is_test])


def _split_indices(labels: np.ndarray, test_fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of the test samples (see digits_split)."""
    keys = Generator(seed, SPLIT_STREAM).bits(labels.shape[0])
    picked = []
    for c in range(N_CLASSES):
        idx = np.flatnonzero(labels == c)
        order = idx[np.lexsort((idx, keys[idx]))]
        n_test = math.floor(test_fraction * idx.size + 0.5)
        n_test = min(max(n_test, 1), idx.size - 1)
        picked.append(order[:n_test])
    return np.sort(np.concatenate(picked))


def _to_float(images: np.ndarray) -> np.ndarray:
    # x / 16 is exact in float32.
    return (images.astype(np.float32) / np.float32(MAX_PIXEL)).reshape(-1, 1, 8, 8)


@functools.lru_cache(maxsize=1)
def _bundled() -> tuple[np.ndarray, np.ndarray]:
    try:
        data = resources.files(__package__).joinpath(_RESOURCE).read_bytes()
    except (FileNotFoundError, OSError) as exc:
        raise FormatError(f"loom.datasets/{_RESOURCE}: cannot read the bundled file ({exc}); "
                          "the package was installed without its data") from exc
    images, labels = _parse(data, f"loom.datasets/{_RESOURCE}", DIGITS_SHA256)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def _load_digits_file(path: str | os.PathLike, expected_sha256: str | None = DIGITS_SHA256):
    """Read and validate a digits npz at `path`: (images uint8 [1797, 8, 8], labels uint8 [1797]).

    Internal: lets tests point the validation at a damaged copy. `expected_sha256=None` skips
    the hash check (the structural checks still run).
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise FormatError(f"{os.fspath(path)}: cannot read ({exc})") from exc
    return _parse(data, os.fspath(path), expected_sha256)


def _parse(data: bytes, where: str, expected_sha256: str | None):
    """Structural checks first (they name the specific problem), then the SHA-256."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            names = sorted(npz.files)
            if names != ["images", "labels"]:
                raise FormatError(f"{where}: expected arrays ['images', 'labels'], found {names}")
            images, labels = npz["images"], npz["labels"]
    except FormatError:
        raise
    except Exception as exc:   # BadZipFile, zlib.error, EOFError, ValueError...: all mean damaged
        raise FormatError(f"{where}: not a readable npz archive ({type(exc).__name__}: {exc})") from exc

    for name, arr, shape in (("images", images, (N_SAMPLES, 8, 8)), ("labels", labels, (N_SAMPLES,))):
        if arr.dtype != np.uint8:
            raise FormatError(f"{where}: '{name}' has dtype {arr.dtype}, expected uint8")
        if arr.shape != shape:
            raise FormatError(f"{where}: '{name}' has shape {arr.shape}, expected {shape}")
    if images.max(initial=0) > MAX_PIXEL:
        bad = tuple(int(i) for i in np.argwhere(images > MAX_PIXEL)[0])
        raise FormatError(f"{where}: 'images'{list(bad)} = {int(images[bad])}, pixels must lie in 0..{MAX_PIXEL}")
    if labels.max(initial=0) >= N_CLASSES:
        bad = int(np.argmax(labels >= N_CLASSES))
        raise FormatError(f"{where}: 'labels'[{bad}] = {int(labels[bad])}, labels must lie in 0..{N_CLASSES - 1}")
    if expected_sha256 is not None:
        digest = hashlib.sha256(data).hexdigest()
        if digest != expected_sha256:
            raise FormatError(f"{where}: SHA-256 is {digest}, expected {expected_sha256} "
                              "(the file differs from the one Loom ships)")
    return images, labels
