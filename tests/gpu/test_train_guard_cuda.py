"""Training on the GPU stops at the first non-finite loss like the CPU does: the running total is read
every half second and at the epoch's end, the epoch replays from its start, and the batch and layer
named are the CPU's (deterministic mode has the CPU's bits). The default loss is chosen the same way."""
import numpy as np
import pytest

import loom
from loom.errors import NumericError
from loom.nn import finite_guard
from loom.nn.train import train

pytestmark = pytest.mark.gpu

CFG = {"loom": 1, "input": {"shape": [4]},
       "layers": [{"type": "dense", "units": 16, "activation": "relu"}, {"type": "dense", "units": 1}]}


def data(n=256):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, 4))
    return X, (X @ np.array([1.0, -2.0, 0.5, 3.0]))[:, None] * 10


def failure(device, every=None, monkeypatch=None):
    X, Y = data()
    if every is not None:
        monkeypatch.setattr(finite_guard, "_EVERY", every)
    with pytest.raises(NumericError) as info:
        train(loom.Network.from_config(CFG), X, Y, device=device, optimizer={"type": "sgd", "lr": 300.0},
              epochs=3, batch_size=16, shuffle=False, verbose=False)
    return str(info.value)


@pytest.mark.parametrize("every", [0.0, 3600.0])
def test_gpu_names_the_cpus_batch_and_layer(monkeypatch, every):
    """every=0: the total is read after each batch; 3600: only at the epoch's end, so the replay has
    to search the whole epoch for the first bad batch."""
    with loom.deterministic(True):
        assert failure("cuda", every, monkeypatch) == failure("cpu")


@pytest.mark.smoke
def test_default_loss_on_gpu_matches_cpu():
    X, Y = data(64)
    with loom.deterministic(True):
        cpu = train(loom.Network.from_config(CFG), X, Y, epochs=2, verbose=False)
        gpu = train(loom.Network.from_config(CFG), X, Y, device="cuda", epochs=2, verbose=False)
    assert cpu["loss"] == gpu["loss"] and np.isfinite(cpu["loss"]).all()


def test_gpu_catches_an_overflowing_last_update():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(32, 4))
    Y = (X @ np.array([1.0, 2.0, 3.0, 4.0]))[:, None] * 1e10
    messages = []
    for device in ("cpu", "cuda"):
        with pytest.raises(NumericError, match=r"after epoch 1 parameter layers\.0\.weight holds") as info:
            train(loom.Network.from_config(CFG), X, Y, device=device, optimizer={"type": "sgd", "lr": 1e30},
                  epochs=1, batch_size=32, verbose=False)
        messages.append(str(info.value))
    assert messages[0] == messages[1]


@pytest.mark.parametrize("copy_ratio", [0, 10**9])
def test_gpu_replays_from_an_older_copy(monkeypatch, copy_ratio):
    """The state copied at every epoch, or only at the first (the replay reruns finished epochs)."""
    monkeypatch.setattr(finite_guard, "_COPY_RATIO", copy_ratio)
    X, Y = data()
    with loom.deterministic(True), pytest.raises(NumericError) as gpu:
        train(loom.Network.from_config(CFG), X, Y, device="cuda", optimizer={"type": "sgd", "lr": 0.01, "momentum": 0.9},
              epochs=8, batch_size=16, verbose=False)
    with loom.deterministic(True), pytest.raises(NumericError) as cpu:
        train(loom.Network.from_config(CFG), X, Y, optimizer={"type": "sgd", "lr": 0.01, "momentum": 0.9},
              epochs=8, batch_size=16, verbose=False)
    assert str(gpu.value) == str(cpu.value) and "epoch 3, batch 6" in str(cpu.value)
