"""The stepping API: a pipeline of layers advancing one tick at a time."""
import numpy as np
import pytest

import loom
from loom.nn import optim

CFG = {"loom": 1, "seed": 1, "dtype": "float64", "input": {"shape": [3]},
       "layers": [{"type": "dense", "units": 8, "activation": "tanh"},
                  {"type": "layer_norm"},
                  {"type": "dense", "units": 8, "activation": "relu"},
                  {"type": "dense", "units": 1}]}


def test_constant_input_reaches_the_output_after_depth_ticks():
    net = loom.Network.from_config(CFG)
    x = np.random.default_rng(0).normal(size=(4, 3))
    state = net.step_state()
    state.set_input(x)
    for tick in range(state.depth - 1):
        state.step()
        assert state.output() is None, f"output appeared after {tick + 1} ticks"
    state.step()
    assert np.array_equal(state.output(), net.forward(x))
    state.step()                                   # steady state: the same value every tick
    assert np.array_equal(state.output(), net.forward(x))


def test_pipeline_holds_several_inputs_in_flight():
    net = loom.Network.from_config(CFG)
    xs = np.random.default_rng(1).normal(size=(6, 2, 3))
    state = net.step_state()
    outs = []
    for x in xs:
        state.set_input(x)
        state.step()
        outs.append(state.output())
    for t in range(state.depth - 1, len(xs)):      # input t arrives at tick t + depth - 1
        assert np.array_equal(outs[t], net.forward(xs[t - state.depth + 1]))


def test_backward_after_a_held_input_equals_network_backward():
    net = loom.Network.from_config(CFG)
    x = np.random.default_rng(2).normal(size=(5, 3))
    dy = np.random.default_rng(3).normal(size=(5, 1))
    net.forward(x)
    dx_ref = net.backward(dy)
    ref = {k: g.copy() for k, g in net.gradients().items()}
    net.zero_grad()
    state = net.step_state()
    state.set_input(x)
    for _ in range(state.depth):
        state.step()
    assert np.array_equal(state.backward(dy), dx_ref)
    assert all(np.array_equal(g, ref[k]) for k, g in net.gradients().items())


def test_online_training_with_step_backward_apply_learns():
    net = loom.Network.from_config(CFG)
    opt = optim.build({"type": "adam", "lr": 0.01}, net.parameters())
    rng = np.random.default_rng(4)
    w = np.array([[0.5, -1.0, 2.0]])

    def loss_at(x):
        return float(np.mean((net.forward(x) - x @ w.T) ** 2))

    probe = rng.normal(size=(64, 3))
    before = loss_at(probe)
    state = net.step_state()
    for _ in range(300):                           # one sample at a time, held for depth ticks
        x = rng.normal(size=(1, 3))
        state.set_input(x)
        for _ in range(state.depth):
            state.step()
        state.backward(2 * (state.output() - x @ w.T))
        net.apply_gradients(opt)
    assert loss_at(probe) < 0.2 * before
    assert all(not g.any() for g in net.gradients().values())   # apply_gradients zeroes them


def test_errors():
    state = loom.Network.from_config(CFG).step_state()
    with pytest.raises(loom.ShapeError, match="set_input"):
        state.step()
    state.set_input(np.zeros((1, 3)))
    with pytest.raises(loom.ShapeError, match="step\\(\\) 4 times"):
        state.backward(np.zeros((1, 1)))
    with pytest.raises(loom.ShapeError, match="input has shape"):
        state.set_input(np.zeros((1, 4)))
