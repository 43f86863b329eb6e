"""GPU tests run only where CuPy finds an NVIDIA GPU (the device machine); elsewhere they skip."""
import pytest

from loom import backend

REASON = backend.available()["cuda"]


def pytest_collection_modifyitems(config, items):
    if REASON == "ok":
        return
    skip = pytest.mark.skip(reason=f"no CUDA device: {REASON}")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
