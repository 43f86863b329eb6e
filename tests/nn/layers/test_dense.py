import gradcheck
import numpy as np
import pytest

from loom.config import ACTIVATIONS


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_dense_gradients_every_activation(act):
    gradcheck.check([{"type": "dense", "units": 4, "activation": act}], [5], batch=3, seed=1)


def test_dense_without_bias_and_sequence_input():
    net = gradcheck.check([{"type": "dense", "units": 3, "bias": False}], [4, 5], batch=2)
    assert set(net.parameters()) == {"layers.0.weight"}


def test_dense_matches_torch():
    torch = pytest.importorskip("torch")
    net = gradcheck.make_net([{"type": "dense", "units": 7, "activation": "relu"}], [5])
    lin = torch.nn.Linear(5, 7).double()
    net.load_state_dict({"layers.0." + k: v for k, v in lin.state_dict().items()})
    x = np.random.default_rng(0).normal(size=(4, 5))
    ref = torch.relu(lin(torch.from_numpy(x))).detach().numpy()
    assert np.max(np.abs(net(x) - ref)) < 1e-12
