import pytest

from loom.backend.cpu import jit as cpu_jit


@pytest.fixture(params=["compiled", "numpy"])
def cpu_path(request, monkeypatch):
    """Both CPU forms of the exact products: the compiled loops (numba: exact_jit, rounded_jit) and
    the NumPy passes."""
    monkeypatch.setenv("LOOM_JIT", "1" if request.param == "compiled" else "0")
    if request.param == "compiled" and not cpu_jit.available():
        pytest.skip("numba is not installed (the loom[cpu] extra)")
    return request.param
