import numpy as np
import pytest

import loom
from loom import backend


def test_cpu_backend_and_ownership():
    cpu = backend.get("cpu")
    assert cpu.name == "cpu" and cpu.xp is np
    assert backend.of(np.zeros(3)) is cpu and backend.of(1.5) is cpu
    a, b = np.arange(6.0).reshape(2, 3), np.arange(12.0).reshape(3, 4)
    assert np.array_equal(cpu.matmul(a, b), a @ b)
    assert cpu.sum(a, axis=1, keepdims=True).shape == (2, 1)


def test_unknown_and_unavailable_devices_are_backend_errors():
    with pytest.raises(loom.BackendError, match="unknown device 'tpu'"):
        backend.get("tpu")
    with pytest.raises(loom.BackendError, match="'cuda' is not available"):
        backend.get("cuda")
    with pytest.raises(loom.BackendError, match="no backend owns arrays of type builtins.list"):
        backend.of([1, 2])
    assert backend.available()["cpu"] == "ok" and backend.available()["cuda"] != "ok"
