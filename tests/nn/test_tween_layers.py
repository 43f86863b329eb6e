"""Tweening runs on every layer type of the catalogue (each sample between a tanh layer and a
flatten + dense head, so that the sample's own rule both updates it and hands a target down), in
both modes, on the CPU in deterministic and fast mode, in float32 and float64."""
import numpy as np
import pytest
from catalogue import SAMPLES, D, config

import loom
from loom.nn.tween import Tween

HEAD = {"type": "sequential", "layers": [{"type": "flatten"}, D]}


def network(layers, shape, idt, dtype="float32"):
    front = [] if idt else [{"type": "activation", "fn": "tanh"}]
    return loom.Network.from_config(config(front + layers + [HEAD], shape, idt, dtype=dtype))


def batch(net, shape, idt, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 10, size=(3, *shape)) if idt else rng.normal(size=(3, *shape)).astype(dtype)
    return x, rng.normal(size=(3, 4)).astype(dtype)


@pytest.mark.parametrize("mode", ["chain", "gap"])
@pytest.mark.parametrize("name, layers, shape, idt", SAMPLES, ids=[s[0] for s in SAMPLES])
def test_every_layer_type_tweens(name, layers, shape, idt, mode):
    net = network(layers, shape, idt).train()
    before = {k: np.array(v) for k, v in net.parameters().items()}
    tw = Tween(net, {"mode": mode, "momentum": 0.5, "clip_norm": 1.0})
    for seed in range(3):
        x, y = batch(net, shape, idt, "float32", seed)
        report = tw.update(x, y)
        assert np.isfinite(float(report)), name
    after = net.parameters()
    assert all(np.isfinite(np.asarray(v)).all() for v in after.values()), name
    sample_params = [k for k in after if k.startswith(f"layers.{0 if idt else 1}.")]
    changed = [k for k in sample_params if not np.array_equal(before[k], np.asarray(after[k]))]
    assert changed or not sample_params, f"{name}: none of {sample_params} moved"


@pytest.mark.parametrize("deterministic", [True, False])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_modes_and_dtypes(dtype, deterministic):
    name, layers, shape, idt = next(s for s in SAMPLES if s[0] == "conv2d")
    with loom.deterministic(deterministic):
        for mode in ("chain", "gap"):
            net = network(layers, shape, idt, dtype)
            tw = Tween(net, mode)
            x, y = batch(net, shape, idt, dtype)
            first = float(tw.update(x, y))
            for _ in range(20):
                last = float(tw.update(x, y))
            assert last < first
            assert all(p.dtype == np.dtype(dtype) for p in net.parameters().values())
