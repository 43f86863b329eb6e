"""Dispatch chains on the CPU (no graphs: every step eager) and the host bookkeeping they rely on,
and what happens when a step cannot be recorded (on a stand-in backend whose recording fails).
The recorded path itself is tested on the GPU (tests/gpu/test_dispatch_chains.py)."""
import numpy as np
import pytest

import loom
from loom.backend.recorder import GraphCache
from loom.nn import losses, optim
from loom.nn.chain import TrainStep, _bind_plan

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
    values = opt.plan_values(plan)
    assert [d for d, _ in values] == [np.dtype(np.float32)] * 3 + [np.dtype(np.float64)] * 3
    bound = _bind_plan(plan, list(range(len(values))))
    assert bound == {"w": {"decay": 0, "step_size": 1, "bc2_sqrt": 2}, "b": {"decay": 3, "step_size": 4, "bc2_sqrt": 5}}


def test_cache_records_on_the_second_sighting_and_evicts_the_oldest():
    cache = GraphCache(2)
    assert not cache.wants_recording("a") and cache.wants_recording("a")
    for key in "abc":
        cache.put(key, key.upper())
    assert list(cache.entries) == ["b", "c"]
    assert not cache.wants_recording("a") and cache.wants_recording("a")     # evicted: two sightings again
    with loom.deterministic(False):
        cache.refuse(("x",), RuntimeError("no"))
    assert not cache.wants_recording(("x",)) and cache.eager_reasons == {("x",): "RuntimeError: no"}
    with pytest.raises(ValueError):
        GraphCache(0)
    with pytest.raises(loom.ConfigError, match="strict: expected True or False, got 'no'"):
        GraphCache(2, strict="no")


def test_a_cache_recording_from_the_first_sighting_records_at_once_and_keeps_what_it_refused():
    cache = GraphCache(2, describe=lambda key: f"step {key}", strict=False, record_from=1)
    assert cache.wants_recording("a")
    assert cache.lookup("a", lambda: "A") == "A" and cache.get("a") == "A"

    def fails():
        raise RuntimeError("a host read while capturing")
    assert cache.lookup("b", fails) is None           # lenient: logged, then eager for good
    assert cache.eager_reasons == {"b": "RuntimeError: a host read while capturing"}
    assert cache.lookup("b", lambda: "B") is None
    with pytest.raises(ValueError):
        GraphCache(2, record_from=3)


def test_recording_hooks_put_the_counters_back():
    net = loom.Network.from_config(CFG)
    opt = optim.build({"type": "adam"}, net.parameters())
    net.rng_counter, before = 7, (opt.steps, opt._count)
    with net.recording(), opt.recording():
        net.rng_counter += 3
        opt.advance()
    assert net.rng_counter == 7 and (opt.steps, opt._count) == before


def test_compile_on_the_cpu_changes_nothing():
    net = loom.Network.from_config(CFG)
    x = np.random.default_rng(1).normal(size=(3, 6)).astype(np.float32)
    y = net(x)
    assert net.compile() is net
    assert np.array_equal(net(x), y)


class _Unrecordable:
    """The CPU backend claiming graphs, whose record() fails as CuPy's capture does on a host read."""
    graphs = True

    def __init__(self, cpu):
        self._cpu = cpu

    def __getattr__(self, name):
        return getattr(self._cpu, name)

    def record(self, fn):
        raise RuntimeError("operation not permitted when stream is capturing (D2H copy)")


def _unrecordable_step(strict=True):
    a, b = (loom.Network.from_config(CFG).train() for _ in range(2))
    b.backend = _Unrecordable(b.backend)
    loss = losses.build("cross_entropy")
    oa, ob = (optim.build({"type": "sgd", "lr": 0.1}, n.parameters()) for n in (a, b))
    return a, oa, TrainStep(b, loss, ob, strict=strict), loss


def _batches(n):
    rng = np.random.default_rng(3)
    return [(rng.normal(size=(4, 6)).astype(np.float32), rng.integers(0, 3, 4)) for _ in range(n)]


def test_deterministic_mode_refuses_a_step_that_cannot_be_recorded(loom_log):
    _, _, step, _ = _unrecordable_step()
    (x, y), (x2, y2), (x3, y3) = _batches(3)
    step(x, y)                                   # the first update: a key of its own, seen once
    step(x2, y2)                                 # first sighting of the later updates' key: eager
    with pytest.raises(loom.DeterminismError) as err:
        step(x3, y3)                             # second: recording fails
    message = str(err.value)
    for part in ("a train step on input [4, 6] float32 and targets [4] int64", "dispatch chain",
                 "RuntimeError: operation not permitted when stream is capturing", "strict=False"):
        assert part in message, part
    assert step.eager_reasons == {} and loom_log() == []


@pytest.mark.parametrize("deterministic, strict", [(True, False), (False, True)])
def test_strict_false_or_fast_mode_runs_eagerly_and_logs_once(loom_log, deterministic, strict):
    a, oa, step, loss = _unrecordable_step(strict)
    with loom.deterministic(deterministic):
        for x, y in _batches(5):
            value, grad = loss(a(x), y)
            a.zero_grad()
            a.backward(grad, input_grad=False)
            oa.step(a.gradients())
            assert step(x, y) == value               # the eager step's bits
    assert len(step.eager_reasons) == 1
    assert loom_log() == [("a train step on input [4, 6] float32 and targets [4] int64 cannot be recorded as "
                           "a dispatch chain and runs eagerly (RuntimeError: operation not permitted when "
                           "stream is capturing (D2H copy))")]


def test_compile_strict_false_falls_back_and_survives_a_move(loom_log):
    net = loom.Network.from_config(CFG)
    x = np.random.default_rng(1).normal(size=(3, 6)).astype(np.float32)
    want = net(x)
    net.backend = _Unrecordable(net.backend)
    net.compile()
    net(x)
    with pytest.raises(loom.DeterminismError, match=r"a forward pass on input \[3, 6\] float32 cannot be"):
        net(x)
    net.compile(strict=False)
    for _ in range(3):
        assert np.array_equal(net(x), want)
    assert len(loom_log()) == 1 and "a forward pass on input [3, 6] float32" in loom_log()[0]
    assert net._compiled.strict is False


def test_train_passes_strict_to_its_step(loom_log):
    rng = np.random.default_rng(4)
    X, Y = rng.normal(size=(24, 6)).astype(np.float32), rng.integers(0, 3, 24)
    net = loom.Network.from_config(CFG)
    net.backend = _Unrecordable(net.backend)
    with pytest.raises(loom.DeterminismError, match="a train step on input"):
        loom.train(net, X, Y, epochs=1, batch_size=4, optimizer="sgd", verbose=False)
    history = loom.train(net, X, Y, epochs=2, batch_size=4, optimizer="sgd", verbose=False, strict=False)
    assert history.epochs == 2
    assert len(loom_log()) == 1


def test_running_out_of_memory_while_recording_refuses_nothing():
    """A MemoryError (CuPy's OutOfMemoryError) runs this call eagerly and leaves the key to a later
    sighting; a strict cache in deterministic mode passes it on."""
    def no_memory():
        raise MemoryError("out of memory allocating 1073741824 bytes")
    lenient = GraphCache(2, strict=False, record_from=1)
    assert lenient.lookup("a", no_memory) is None and lenient.eager_reasons == {}
    assert lenient.lookup("a", lambda: "A") == "A"
    strict = GraphCache(2, record_from=1)
    with loom.deterministic(True), pytest.raises(MemoryError):
        strict.lookup("b", no_memory)
    with loom.deterministic(False):
        assert strict.lookup("b", no_memory) is None and strict.eager_reasons == {}
