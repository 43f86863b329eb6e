"""Freezing on the GPU: it survives net.to("cuda"), and training a filter mixture with frozen experts
(recorded train steps that skip the experts' backward) gives the CPU's bits."""
import numpy as np
import pytest

import loom

pytestmark = pytest.mark.gpu

EXPERT = {"type": "sequential", "layers": [{"type": "dense", "units": 8, "activation": "tanh"},
                                           {"type": "dense", "units": 3}]}
MOE = {"loom": 1, "input": {"shape": [4]},
       "layers": [{"type": "parallel", "combine": "filter", "top_k": 2, "branches": [EXPERT, EXPERT, EXPERT]}]}


def test_freezing_survives_moving_to_the_gpu():
    net = loom.Network.from_config(MOE)
    frozen = net.freeze("layers.0.branches.*")
    net.to("cuda")
    assert net.device == "cuda" and net.frozen == frozen
    assert list(net.gradients()) == ["layers.0.gate.layers.1.weight", "layers.0.gate.layers.1.bias"]
    net.to("cpu")
    assert net.frozen == frozen


@pytest.mark.smoke
def test_gate_only_training_matches_the_cpu_bits():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(128, 4)).astype(np.float32)
    Y = rng.normal(size=(128, 3)).astype(np.float32)
    out = {}
    for device in ("cpu", "cuda"):
        net = loom.Network.from_config(MOE)
        before = {k: np.array(v, copy=True) for k, v in net.parameters().items()}
        loom.train(net, X, Y, loss="mse", optimizer={"type": "adam", "lr": 0.05}, epochs=2, batch_size=32,
                   freeze="layers.0.branches.*", device=device, verbose=False)
        net.to("cpu")
        out[device] = {k: np.array(v, copy=True) for k, v in net.parameters().items()}
        for k in net.frozen:
            assert out[device][k].tobytes() == before[k].tobytes(), k
    for k, v in out["cpu"].items():
        assert out["cuda"][k].tobytes() == v.tobytes(), k
