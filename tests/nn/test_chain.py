"""Dispatch chains on the CPU (no graphs: every step eager) and the host bookkeeping they rely on.
The recorded path itself is tested on the GPU (tests/gpu/test_dispatch_chains.py)."""
import numpy as np
import pytest

import loom
from loom.nn import losses, optim
from loom.nn.chain import TrainStep, _bind_plan, _Cache, _plan_values

CFG = {"loom": 1, "input": {"shape": [6]}, "layers": [{"type": "dense", "units": 8, "activation": "relu"},
                                                     {"type": "dropout", "rate": 0.2},
                                                     {"type": "dense", "units": 3}]}


def test_train_step_on_the_cpu_is_the_eager_loop():
    a, b = (loom.Network.from_config(CFG).train() for _ in range(2))
    oa, ob = (optim.build({"type": "adam", "lr": 0.01, "clip_norm": 0.5}, n.parameters()) for n in (a, b))
    loss = losses.build("cross_entropy")
    step = TrainStep(b, loss, ob)
    rng = np.random.default_rng(0)
    total = 0.0
    for _ in range(5):
        x, y = rng.normal(size=(4, 6)).astype(np.float32), rng.integers(0, 3, 4)
        value, grad = loss(a(x), y)
        a.zero_grad()
        a.backward(grad, input_grad=False)
        oa.step(a.gradients())
        total += float(value) * 4
        assert step(x, y) == value
    assert float(step.total) == total
    for k, v in a.state_dict().items():
        assert np.array_equal(v, b.state_dict()[k]), k
    assert a.rng_counter == b.rng_counter == 5 and ob.steps == 5


def test_train_step_checks_its_batch():
    net = loom.Network.from_config(CFG).train()
    step = TrainStep(net, losses.build("cross_entropy"), optim.build("sgd", net.parameters()))
    x = np.zeros((4, 6), np.float32)
    with pytest.raises(loom.ShapeError, match="class id 3"):
        step(x, np.array([0, 1, 2, 3]))
    with pytest.raises(loom.ShapeError, match="rows"):
        step(x, np.array([0, 1]))
    with pytest.raises(loom.ShapeError, match="dtype"):
        step(x.astype(np.float64), np.array([0, 1, 2, 0]))


@pytest.mark.parametrize("spec", [{"type": "sgd", "momentum": 0.9}, {"type": "adam", "accumulate": 3},
                                  {"type": "lion", "weight_decay": 0.1}])
def test_advance_does_the_bookkeeping_of_step(spec):
    params = {"w": np.ones((2, 2), np.float32)}
    stepped, advanced = optim.build(spec, params), optim.build(spec, {"w": np.ones((2, 2), np.float32)})
    for _ in range(7):
        assert stepped.phase() == advanced.phase()
        assert stepped.plan() == advanced.plan()
        stepped.step({"w": np.full((2, 2), 0.5, np.float32)})
        advanced.advance()
    assert (stepped.steps, stepped._count) == (advanced.steps, advanced._count)


def test_plan_floats_bind_in_order():
    opt = optim.build({"type": "adam", "groups": [{"params": ["b"], "lr": 0.5}]},
                      {"w": np.ones(2, np.float32), "b": np.ones(1, np.float64)})
    plan = opt.plan()
    values = _plan_values(opt, plan)
    assert [d for d, _ in values] == [np.dtype(np.float32)] * 3 + [np.dtype(np.float64)] * 3
    bound = _bind_plan(plan, list(range(len(values))))
    assert bound == {"w": {"decay": 0, "step_size": 1, "bc2_sqrt": 2}, "b": {"decay": 3, "step_size": 4, "bc2_sqrt": 5}}


def test_cache_records_on_the_second_sighting_and_evicts_the_oldest():
    cache = _Cache(2)
    assert not cache.wants_recording("a") and cache.wants_recording("a")
    for key in "abc":
        cache.put(key, key.upper())
    assert list(cache.entries) == ["b", "c"]
    with pytest.warns(RuntimeWarning, match="runs eagerly"):
        cache.refuse(("x",), RuntimeError("no"), "a step")
    assert not cache.wants_recording(("x",))
    with pytest.raises(ValueError):
        _Cache(0)


def test_compile_on_the_cpu_changes_nothing():
    net = loom.Network.from_config(CFG)
    x = np.random.default_rng(1).normal(size=(3, 6)).astype(np.float32)
    y = net(x)
    assert net.compile() is net
    assert np.array_equal(net(x), y)
