"""GPU tests run only where CuPy finds an NVIDIA GPU (the device machine); elsewhere they skip."""
import pytest

import loom
from loom import backend

REASON = backend.available()["cuda"]


def pytest_collection_modifyitems(config, items):
    if REASON == "ok":
        return
    skip = pytest.mark.skip(reason=f"no CUDA device: {REASON}")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def spy(monkeypatch):
    """spy(module, names): a list that records, in order, which of module's functions `names` are
    called during the test (they still run). Proves a fused kernel ran rather than a fallback."""
    def install(module, names):
        called = []
        for name in names:
            real = getattr(module, name)

            def wrapper(*args, _real=real, _name=name, **kwargs):
                called.append(_name)
                return _real(*args, **kwargs)
            monkeypatch.setattr(module, name, wrapper)
        return called
    return install


@pytest.fixture
def deterministic_mode():
    """Deterministic mode for the whole test, whatever an earlier test left set (modules that prove
    CPU == GPU bits name it in their pytestmark)."""
    with loom.deterministic(True):
        yield
