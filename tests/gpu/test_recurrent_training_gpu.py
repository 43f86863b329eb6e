"""Recurrent networks train on the GPU in the default (deterministic) mode (issue 61): every train step
of an rnn, lstm or gru network records as a dispatch chain (nothing in the step copies from the host:
the backward writes its per-step gate gradients into one array instead of stacking them) and the
trained weights have the CPU's bits."""
import numpy as np
import pytest

import loom

from .cpu_gpu import same_bits

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("sequences", [False, True])
@pytest.mark.parametrize("kind", [pytest.param("lstm", marks=pytest.mark.smoke), "gru", "rnn"])
def test_recurrent_network_trains_with_the_cpus_bits(kind, sequences):
    cfg = {"loom": 1, "input": {"shape": [12, 5]},
           "layers": [{"type": kind, "hidden": 16, "return_sequences": sequences}, {"type": "flatten"},
                      {"type": "dense", "units": 3}]}
    rng = np.random.default_rng(len(kind) + sequences)
    X = rng.standard_normal((64, 12, 5)).astype(np.float32)
    Y = rng.integers(0, 3, 64)
    trained = {}
    with loom.deterministic(True):
        for device in ("cpu", "cuda"):
            net = loom.Network.from_config(cfg)
            # strict (the default): a step that cannot be recorded raises DeterminismError
            loom.train(net, X, Y, device=device, epochs=2, batch_size=16, shuffle=False, verbose=False)
            trained[device] = net.to("cpu").state_dict()
    assert trained["cpu"].keys() == trained["cuda"].keys()
    for name, value in trained["cpu"].items():
        same_bits(trained["cuda"][name], value, f"{kind} {name}")
