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


def test_default_loss_on_gpu_matches_cpu():
    X, Y = data(64)
    with loom.deterministic(True):
        cpu = train(loom.Network.from_config(CFG), X, Y, epochs=2, verbose=False)
        gpu = train(loom.Network.from_config(CFG), X, Y, device="cuda", epochs=2, verbose=False)
    assert cpu["loss"] == gpu["loss"] and np.isfinite(cpu["loss"]).all()
