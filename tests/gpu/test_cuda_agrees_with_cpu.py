"""Every layer sample, loss, optimizer and a whole training run on the GPU agree with the CPU in
fast mode: forward, input gradient and parameter gradients within relative 1e-5 (TF32 off)."""
import numpy as np
import pytest
from catalogue import SAMPLES, config

import loom
from loom import backend
from loom.nn import losses, optim

from .cpu_gpu import layer_results, loss_results, optimizer_results

pytestmark = pytest.mark.gpu
RTOL = 1e-5


@pytest.fixture(autouse=True)
def fast_mode():
    """These are fast mode's tolerances; deterministic mode's bits: test_deterministic_bits.py."""
    with loom.deterministic(False):
        yield


def _close(gpu, cpu, what):
    gpu = backend.get("cuda").to_numpy(gpu) if not isinstance(gpu, np.ndarray) else gpu
    scale = max(1.0, float(np.max(np.abs(cpu)))) if cpu.size else 1.0
    err = float(np.max(np.abs(gpu - cpu))) if cpu.size else 0.0
    assert err <= RTOL * scale, f"{what}: max abs difference {err:.3g} (scale {scale:.3g})"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("name, layers, shape, idt", SAMPLES, ids=[s[0] for s in SAMPLES])
def test_layer_forward_and_backward(name, layers, shape, idt, training, dtype):
    for what, gpu, cpu in layer_results(name, layers, shape, idt, training, dtype):
        _close(gpu, cpu, what)


@pytest.mark.parametrize("name", losses.NAMES)
def test_losses(name):
    for what, gpu, cpu in loss_results(name, np.float64):
        _close(gpu, np.asarray(cpu), what)


@pytest.mark.parametrize("kind", [pytest.param(k, marks=pytest.mark.smoke) if k == "adam" else k
                                  for k in sorted(optim.TYPES)])
def test_optimizer_steps(kind):
    for what, gpu, cpu in optimizer_results(kind, np.float64):
        _close(gpu, cpu, what)


def test_training_the_demo_model_on_the_gpu():
    from loom import datasets
    from loom.cli.demo import demo_config
    (x, y), (xt, yt) = datasets.digits_split(test_fraction=0.2, seed=0)
    cpu = loom.Network.from_config(demo_config())
    gpu = loom.Network.from_config(demo_config())
    h_cpu = loom.train(cpu, x, y, epochs=2, verbose=False)
    h_gpu = loom.train(gpu, x, y, epochs=2, verbose=False, device="cuda")
    assert gpu.device == "cuda"
    assert abs(h_gpu["loss"][-1] - h_cpu["loss"][-1]) <= 1e-4 * abs(h_cpu["loss"][-1])
    for k, v in cpu.state_dict().items():
        _close(gpu.state_dict()[k], v, f"demo {k}")
    acc = (loom.predict(gpu, xt).argmax(1) == yt).mean()
    assert acc > 0.8


def test_moving_back_and_forth_keeps_the_bits():
    cfg = config([{"type": "dense", "units": 4, "activation": "relu"}, {"type": "layer_norm"}], [5], None)
    net = loom.Network.from_config(cfg)
    before = {k: v.copy() for k, v in net.state_dict().items()}
    net.to("cuda").to("cpu")
    assert net.device == "cpu"
    for k, v in before.items():
        assert np.array_equal(net.state_dict()[k], v)


def test_out_of_memory_is_a_backend_error_and_the_network_survives():
    cfg = config([{"type": "dense", "units": 4}], [8], None)
    net = loom.Network.from_config(cfg).to("cuda")
    cuda = backend.get("cuda")
    a, b = cuda.xp.ones((1 << 19, 1), np.float32), cuda.xp.ones((1, 1 << 19), np.float32)   # 1 TiB result
    with pytest.raises(loom.BackendError, match=r"CUDA matmul failed on \[524288, 1\] float32"):
        cuda.matmul(a, b)
    x = np.ones((2, 8), np.float32)
    assert net(x).shape == (2, 4)
    assert net.to("cpu")(x).shape == (2, 4)


@pytest.mark.parametrize("shape, axis", [((300, 17), 0), ((4, 80, 33), (0, 1)), ((4, 80, 33), (1, 0)),
                                         ((70, 5), -2), ((10, 7), 0), ((4, 80, 33), 1)])
@pytest.mark.parametrize("keepdims", [False, True])
def test_column_sums(shape, axis, keepdims):
    """Sums over every leading axis run as ones @ x on cuBLAS; the others stay CuPy reductions."""
    cuda = backend.get("cuda")
    for dtype in ("float32", "float64"):
        x = np.random.default_rng(11).normal(size=shape).astype(dtype)
        got = cuda.sum(cuda.asarray(x), axis=axis, keepdims=keepdims)
        want = np.sum(x.astype(np.float64), axis=axis, keepdims=keepdims)
        assert got.shape == want.shape and got.dtype == x.dtype
        _close(got, want, f"sum {shape} axis {axis} {dtype}")
