"""The bundled UCI digits set: contents, the deterministic stratified split, damage detection."""
import hashlib
import shutil
import subprocess
import sys
from importlib import resources

import numpy as np
import pytest

import loom
from loom import datasets
from loom.datasets import digits

EXPECTED_COUNTS = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
# SHA-256 of the sorted test indices of digits_split(0.2, seed=0), as little-endian int64.
# Pins the split bit for bit: it must never change between machines or releases.
SPLIT_0_2_SEED_0 = "87408cebe6f9a9e53526170ae7924e760e56c667e9a9b5ee987bc4d3d68b5cf5"


def _split_digest(test_fraction=0.2, seed=0):
    _, labels = digits._bundled()
    idx = digits._split_indices(labels, test_fraction, seed).astype("<i8")
    return hashlib.sha256(idx.tobytes()).hexdigest()


def _bundled_path(tmp_path):
    dst = tmp_path / "digits.npz"
    with resources.as_file(resources.files("loom.datasets").joinpath("digits.npz")) as src:
        shutil.copyfile(src, dst)
    return dst


def _resave(path, **arrays):
    np.savez_compressed(path, **arrays)
    return path


# ---------------------------------------------------------------- contents

def test_load_digits_shapes_dtypes_ranges():
    X, y = datasets.load_digits()
    assert X.shape == (1797, 1, 8, 8) and X.dtype == np.float32
    assert y.shape == (1797,) and y.dtype == np.int64
    assert X.min() == 0.0 and X.max() == 1.0
    pixels = X * 16
    assert np.array_equal(pixels, np.round(pixels))        # exactly k / 16
    assert set(np.unique(y).tolist()) == set(range(10))


def test_class_counts():
    _, y = datasets.load_digits()
    counts = np.bincount(y, minlength=10)
    assert counts.tolist() == EXPECTED_COUNTS
    assert counts.sum() == 1797
    assert counts.min() >= 174 and counts.max() <= 183


def test_load_returns_fresh_arrays():
    X1, y1 = datasets.load_digits()
    X1[0] = 5.0
    y1[0] = 99
    X2, y2 = datasets.load_digits()
    assert X2.max() == 1.0 and y2[0] != 99


def test_bundled_file_matches_recorded_hash_and_licence():
    data = resources.files("loom.datasets").joinpath("digits.npz").read_bytes()
    assert hashlib.sha256(data).hexdigest() == digits.DIGITS_SHA256
    assert len(data) < 100_000
    licence = resources.files("loom.datasets").joinpath("LICENSE-digits.txt").read_text()
    assert digits.DIGITS_SHA256 in licence
    assert "https://creativecommons.org/licenses/by/4.0/" in licence
    assert "https://doi.org/10.24432/C50P49" in licence


def test_first_image_is_known():
    # Row 0 of sklearn's digits.csv.gz (a zero).
    X, y = datasets.load_digits()
    assert y[0] == 0
    assert (X[0, 0] * 16).astype(int)[0].tolist() == [0, 0, 5, 13, 9, 1, 0, 0]


# ---------------------------------------------------------------- split

def test_split_shapes_and_stratification():
    (Xtr, ytr), (Xte, yte) = datasets.digits_split(test_fraction=0.2, seed=0)
    assert Xtr.dtype == Xte.dtype == np.float32 and ytr.dtype == yte.dtype == np.int64
    assert Xtr.shape[1:] == Xte.shape[1:] == (1, 8, 8)
    assert len(Xtr) == len(ytr) and len(Xte) == len(yte)
    assert len(ytr) + len(yte) == 1797
    test_counts = np.bincount(yte, minlength=10)
    train_counts = np.bincount(ytr, minlength=10)
    for c, n in enumerate(EXPECTED_COUNTS):
        assert test_counts[c] == int(np.floor(0.2 * n + 0.5))   # per class, not just overall
        assert train_counts[c] + test_counts[c] == n


@pytest.mark.parametrize("fraction", [0.2, 0.5, 0.01, 0.99])
def test_split_is_disjoint_and_covers_everything(fraction):
    X, y = datasets.load_digits()
    _, labels = digits._bundled()
    test_idx = digits._split_indices(labels, fraction, 3)
    assert np.all(np.diff(test_idx) > 0)                     # sorted, no repeats
    mask = np.zeros(1797, dtype=bool)
    mask[test_idx] = True
    (Xtr, ytr), (Xte, yte) = datasets.digits_split(test_fraction=fraction, seed=3)
    assert np.array_equal(Xte, X[mask]) and np.array_equal(yte, y[mask])
    assert np.array_equal(Xtr, X[~mask]) and np.array_equal(ytr, y[~mask])
    # every class keeps at least one sample on each side, even at extreme fractions
    assert np.bincount(ytr, minlength=10).min() >= 1 and np.bincount(yte, minlength=10).min() >= 1
    # together the two parts are exactly the data set (as a multiset of rows)
    rows = lambda A, b: sorted(map(bytes, np.concatenate([A.reshape(len(A), -1), b[:, None]], 1)))
    assert rows(np.concatenate([Xtr, Xte]), np.concatenate([ytr, yte])) == rows(X, y)


def test_split_is_deterministic_in_process():
    a = datasets.digits_split(test_fraction=0.2, seed=7)
    b = datasets.digits_split(test_fraction=0.2, seed=7)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert np.array_equal(xa, xb) and np.array_equal(ya, yb)


def test_split_depends_on_seed():
    assert _split_digest(seed=0) != _split_digest(seed=1)


def test_split_is_deterministic_across_processes():
    code = ("import hashlib, numpy as np\n"
            "from loom import datasets\n"
            "(a, b), (c, d) = datasets.digits_split(test_fraction=0.2, seed=0)\n"
            "h = hashlib.sha256()\n"
            "for arr in (a, b, c, d): h.update(np.ascontiguousarray(arr).tobytes())\n"
            "print(h.hexdigest())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    h = hashlib.sha256()
    for part in datasets.digits_split(test_fraction=0.2, seed=0):
        for arr in part:
            h.update(np.ascontiguousarray(arr).tobytes())
    assert out.stdout.strip() == h.hexdigest()


def test_split_is_pinned():
    # loom.rng is machine-independent, so the split itself is a constant.
    assert _split_digest(0.2, 0) == SPLIT_0_2_SEED_0


@pytest.mark.parametrize("bad", [0, 0.0, 1, 1.0, -0.1, 1.5, float("nan")])
def test_split_rejects_bad_fraction(bad):
    with pytest.raises(ValueError, match="test_fraction"):
        datasets.digits_split(test_fraction=bad)


@pytest.mark.parametrize("bad", ["0.2", None, True])
def test_split_rejects_non_numeric_fraction(bad):
    with pytest.raises(TypeError, match="test_fraction"):
        datasets.digits_split(test_fraction=bad)


def test_split_rejects_non_int_seed():
    with pytest.raises(TypeError, match="seed"):
        datasets.digits_split(seed=1.5)


# ---------------------------------------------------------------- damage

def test_intact_copy_loads(tmp_path):
    images, labels = digits._load_digits_file(_bundled_path(tmp_path))
    assert images.shape == (1797, 8, 8) and labels.shape == (1797,)


@pytest.mark.parametrize("keep", [0, 10, 1000, 0.5, -1])
def test_truncated_file(tmp_path, keep):
    path = _bundled_path(tmp_path)
    data = path.read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else (keep if keep >= 0 else len(data) + keep)
    path.write_bytes(data[:n])
    with pytest.raises(loom.FormatError, match="digits.npz"):
        digits._load_digits_file(path)


def test_flipped_byte_in_compressed_data(tmp_path):
    path = _bundled_path(tmp_path)
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(loom.FormatError):
        digits._load_digits_file(path)


def test_not_a_zip(tmp_path):
    path = tmp_path / "digits.npz"
    path.write_bytes(b"this is not an npz file" * 10)
    with pytest.raises(loom.FormatError, match="not a readable npz"):
        digits._load_digits_file(path)


def test_missing_file(tmp_path):
    with pytest.raises(loom.FormatError, match="cannot read"):
        digits._load_digits_file(tmp_path / "absent.npz")


def _arrays():
    images, labels = digits._bundled()
    return images.copy(), labels.copy()


def test_valid_looking_but_altered_values_fail_the_hash(tmp_path):
    images, labels = _arrays()
    images[100, 3, 4] = (images[100, 3, 4] + 1) % 17
    path = _resave(tmp_path / "digits.npz", images=images, labels=labels)
    with pytest.raises(loom.FormatError, match="SHA-256"):
        digits._load_digits_file(path)
    digits._load_digits_file(path, expected_sha256=None)     # structurally fine


def test_pixel_out_of_range(tmp_path):
    images, labels = _arrays()
    images[5, 2, 1] = 17
    path = _resave(tmp_path / "digits.npz", images=images, labels=labels)
    with pytest.raises(loom.FormatError, match=r"'images'\[5, 2, 1\] = 17"):
        digits._load_digits_file(path, expected_sha256=None)


def test_label_out_of_range(tmp_path):
    images, labels = _arrays()
    labels[42] = 10
    path = _resave(tmp_path / "digits.npz", images=images, labels=labels)
    with pytest.raises(loom.FormatError, match=r"'labels'\[42\] = 10"):
        digits._load_digits_file(path, expected_sha256=None)


def test_wrong_dtype(tmp_path):
    images, labels = _arrays()
    path = _resave(tmp_path / "digits.npz", images=images, labels=labels.astype(np.int64))
    with pytest.raises(loom.FormatError, match="'labels' has dtype int64"):
        digits._load_digits_file(path, expected_sha256=None)


def test_wrong_shape(tmp_path):
    images, labels = _arrays()
    path = _resave(tmp_path / "digits.npz", images=images[:-1], labels=labels)
    with pytest.raises(loom.FormatError, match=r"'images' has shape \(1796, 8, 8\)"):
        digits._load_digits_file(path, expected_sha256=None)


def test_missing_array(tmp_path):
    images, _ = _arrays()
    path = _resave(tmp_path / "digits.npz", images=images)
    with pytest.raises(loom.FormatError, match="expected arrays"):
        digits._load_digits_file(path, expected_sha256=None)


def test_pickled_object_array_is_refused(tmp_path):
    images, labels = _arrays()
    path = _resave(tmp_path / "digits.npz", images=images, labels=np.array([object()] * 1797))
    with pytest.raises(loom.FormatError):
        digits._load_digits_file(path, expected_sha256=None)
