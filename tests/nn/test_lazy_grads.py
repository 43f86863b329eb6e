"""zero_grad defers clearing dense gradients to the next backward, which overwrites them; every
read through the API must still see exactly what eager zeroing gives."""
import numpy as np

import loom

CFG = {"loom": 1, "input": {"shape": [6]},
       "layers": [{"type": "dense", "units": 5, "activation": "tanh"},
                  {"type": "layer_norm"},
                  {"type": "dense", "units": 3}]}


def _grads(net, x, dy, steps):
    for _ in range(steps):
        net.zero_grad()
        net.forward(x)
        net.backward(dy)
    return {k: v.copy() for k, v in net.gradients().items()}


def test_overwrite_matches_accumulate_into_zeros():
    rng = np.random.default_rng(1)
    x, dy = rng.standard_normal((4, 6)), rng.standard_normal((4, 3))
    net = loom.Network.from_config(CFG | {"dtype": "float64"}, seed=2).train()
    once = _grads(net, x, dy, 1)
    again = _grads(net, x, dy, 3)            # stale values from earlier steps must not leak in
    for k in once:
        np.testing.assert_array_equal(once[k], again[k])
    # two backwards without zero_grad in between accumulate
    net.forward(x)
    net.backward(dy)
    for k, v in net.gradients().items():
        np.testing.assert_allclose(v, 2 * once[k], rtol=1e-12)


def test_gradients_after_zero_grad_are_zero():
    rng = np.random.default_rng(3)
    net = loom.Network.from_config(CFG, seed=4).train()
    net.forward(rng.standard_normal((2, 6)).astype(np.float32))
    net.backward(np.ones((2, 3), np.float32))
    net.zero_grad()
    assert all(not g.any() for g in net.gradients().values())
