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
    if backend.available()["cuda"] != "ok":
        with pytest.raises(loom.BackendError, match="device 'cuda'"):
            backend.get("cuda")
    with pytest.raises(loom.BackendError, match="no backend owns arrays of type builtins.list"):
        backend.of([1, 2])
    assert backend.available()["cpu"] == "ok"


def test_without_a_gpu_moving_to_cuda_is_one_clear_error():
    if backend.available()["cuda"] == "ok":
        pytest.skip("this machine has a GPU")
    net = loom.Network.from_config({"loom": 1, "input": {"shape": [3]}, "layers": [{"type": "dense", "units": 2}]})
    with pytest.raises(loom.BackendError, match="device 'cuda'"):
        net.to("cuda")
    assert net.device == "cpu" and net(np.ones((1, 3), np.float32)).shape == (1, 2)
