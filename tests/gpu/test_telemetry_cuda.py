"""Telemetry on the GPU: recorded steps run eagerly between replayed graphs, the weights keep their bits,
and the statistics (exact sums in deterministic mode) are the CPU's."""
import numpy as np
import pytest

import loom
from loom.nn.train import train

pytestmark = pytest.mark.gpu

CFG = {"loom": 1, "input": {"shape": [6]},
       "layers": [{"type": "dense", "units": 16, "activation": "relu"}, {"type": "dropout", "rate": 0.2},
                  {"type": "dense", "units": 3}]}


def run(device, telemetry):
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(48, 6)).astype(np.float32), rng.integers(0, 3, size=48)
    net = loom.Network.from_config(CFG)
    history = train(net, X, Y, device=device, telemetry=telemetry, epochs=2, batch_size=8, verbose=False)
    state = {k: net.backend.to_numpy(v) for k, v in net.state_dict().items()}
    return state, history


@pytest.mark.smoke
def test_gpu_telemetry_is_the_cpus_and_keeps_the_bits():
    with loom.deterministic(True):
        cpu, hc = run("cpu", 2)
        gpu, hg = run("cuda", 2)            # odd steps replay graphs, even steps run eagerly with hooks
        plain, _ = run("cuda", None)
    assert hc.telemetry.to_dict() == hg.telemetry.to_dict()
    assert hg.telemetry.to_dict()["steps"] == list(range(0, 12, 2))
    for name in cpu:
        assert cpu[name].tobytes() == gpu[name].tobytes() == plain[name].tobytes(), name
