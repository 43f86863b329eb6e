"""Tweening on the GPU gives the CPU's bits in deterministic mode: both modes, whole-network and
stepwise updates, dense, conv, recurrent and attention networks, a Tween that follows its network
from the CPU to the GPU (momentum included)."""
import numpy as np
import pytest

import loom
from loom.nn.tween import Tween

from .cpu_gpu import same_bits

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("deterministic_mode")]

NETS = {
    "mlp": ([{"type": "dense", "units": 16, "activation": "relu"},
             {"type": "dense", "units": 16, "activation": "tanh"}, {"type": "dense", "units": 3}], [4]),
    "conv2d": ([{"type": "conv2d", "filters": 4, "kernel_size": 3, "activation": "relu"},
                {"type": "flatten"}, {"type": "dense", "units": 3}], [1, 6, 6]),
    "lstm": ([{"type": "lstm", "hidden": 8}, {"type": "dense", "units": 3}], [5, 3]),
    "attention": ([{"type": "multi_head_attention", "heads": 2}, {"type": "layer_norm"}, {"type": "flatten"},
                   {"type": "dense", "units": 3}], [4, 4]),
}
SETTINGS = {"chain": {"mode": "chain", "rate": 0.05, "momentum": 0.9, "clip_norm": 0.5, "depth_decay": 0.8},
            "gap": {"mode": "gap", "rate": 0.2, "momentum": 0.5, "budget_threshold": 2.0}}


def data(shape, n=24):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, *shape)).astype(np.float32)
    return X, rng.normal(size=(n, 3)).astype(np.float32), rng.integers(0, 3, n)


def run(net, settings, X, Y, ids):
    tw = Tween(net, settings)
    out = []
    for i in range(0, len(X), 4):
        out.append(tw.update(X[i:i + 4], Y[i:i + 4]).loss)
    ce = Tween(net, {**settings, "loss": "cross_entropy"})
    for i in range(0, len(X), 4):
        out.append(ce.update(X[i:i + 4], ids[i:i + 4]).loss)
    return out


@pytest.mark.parametrize("mode", sorted(SETTINGS))
@pytest.mark.parametrize("name", sorted(NETS))
def test_updates_match_the_cpu_bits(name, mode):
    layers, shape = NETS[name]
    cfg = {"loom": 1, "seed": 5, "input": {"shape": shape}, "layers": layers}
    X, Y, ids = data(shape)
    cpu, gpu = loom.Network.from_config(cfg), loom.Network.from_config(cfg).to("cuda")
    for i, (a, b) in enumerate(zip(run(gpu, SETTINGS[mode], X, Y, ids), run(cpu, SETTINGS[mode], X, Y, ids))):
        same_bits(a, b, f"{name} {mode} loss {i}")
    for k, p in cpu.parameters().items():
        same_bits(gpu.parameters()[k], p, f"{name} {mode} {k}")


@pytest.mark.parametrize("mode", sorted(SETTINGS))
def test_step_updates_match_the_cpu_bits(mode):
    layers, shape = NETS["mlp"]
    cfg = {"loom": 1, "seed": 5, "input": {"shape": shape}, "layers": layers}
    X, Y, _ = data(shape, 40)
    nets = [loom.Network.from_config(cfg), loom.Network.from_config(cfg).to("cuda")]
    for net in nets:
        tw, state = Tween(net, SETTINGS[mode]), net.step_state()
        for i in range(len(X)):
            state.set_input(X[i:i + 1])
            state.step()
            if state.output() is not None:
                tw.step_update(state, Y[i:i + 1])
    for k, p in nets[0].parameters().items():
        same_bits(nets[1].parameters()[k], p, f"step {mode} {k}")


@pytest.mark.smoke
def test_a_tween_follows_its_network_to_the_gpu():
    layers, shape = NETS["mlp"]
    cfg = {"loom": 1, "seed": 5, "input": {"shape": shape}, "layers": layers}
    X, Y, _ = data(shape)
    stay, move = loom.Network.from_config(cfg), loom.Network.from_config(cfg)
    t_stay, t_move = Tween(stay, SETTINGS["chain"]), Tween(move, SETTINGS["chain"])
    for i in range(0, 12, 4):
        t_stay.update(X[i:i + 4], Y[i:i + 4])
        t_move.update(X[i:i + 4], Y[i:i + 4])
    move.to("cuda")
    for i in range(12, 24, 4):
        t_stay.update(X[i:i + 4], Y[i:i + 4])
        t_move.update(X[i:i + 4], Y[i:i + 4])
    for k, p in stay.parameters().items():
        same_bits(move.parameters()[k], p, f"moved {k}")
