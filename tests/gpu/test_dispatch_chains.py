"""Dispatch chains on the GPU: a recorded-and-replayed train step (or forward) gives the same bits
as the eager path, every layer sample records, new shapes record new chains, steps after warm-up
allocate nothing, and a step that cannot be recorded runs eagerly instead of wrongly."""
import numpy as np
import pytest
from catalogue import SAMPLES, config

import loom
from loom import backend
from loom.nn import losses, optim
from loom.nn.chain import TrainStep

pytestmark = pytest.mark.gpu
STEPS = 4            # eager warm-up, record + launch, then two replays


@pytest.fixture(autouse=True, params=["deterministic", "fast"])
def mode(request):
    """Both modes record and replay (they record different kernels: exact sums or cuBLAS SGEMMs)."""
    with loom.deterministic(request.param == "deterministic"):
        yield request.param


def _host(a):
    return backend.get("cuda").to_numpy(a)


def _batch(net, shape, idt, batch, seed, dtype="float32"):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 10, size=(batch, *shape)) if idt else rng.normal(size=(batch, *shape)).astype(dtype)
    y = rng.normal(size=(batch, *net.output_spec.shape)).astype(dtype)
    return x, y


def _pair(cfg, opt_spec, training=True):
    nets = [loom.Network.from_config(cfg).to("cuda").train(training) for _ in range(2)]
    opts = [optim.build(opt_spec, n.parameters()) for n in nets]
    return nets, opts


def _eager_step(net, loss, opt, x, y):
    cuda = backend.get("cuda")
    value, grad = loss(net(cuda.asarray(x)), cuda.asarray(y))
    net.zero_grad()
    net.backward(grad, input_grad=False)
    opt.step(net.gradients())
    return value


def _same(a, b, what):
    a, b = _host(a), _host(b)
    assert a.dtype == b.dtype and a.shape == b.shape, what
    assert np.array_equal(a, b, equal_nan=True), f"{what}: max difference {np.max(np.abs(a - b)):.3g}"


def _same_state(n1, o1, n2, o2, what):
    for k, v in n1.state_dict().items():
        _same(v, n2.state_dict()[k], f"{what}: {k}")
    s1, s2 = o1.state_dict(), o2.state_dict()
    for k, v in s1.items():
        if isinstance(v, np.ndarray):
            _same(v, s2[k], f"{what}: optimizer {k}")
        else:
            assert v == s2[k], f"{what}: optimizer {k}"
    assert n1.rng_counter == n2.rng_counter


@pytest.mark.parametrize("name, layers, shape, idt", SAMPLES, ids=[s[0] for s in SAMPLES])
def test_every_sample_records_and_replays_bit_identically(name, layers, shape, idt):
    cfg = config(layers, shape, idt)
    (eager, chained), (o1, o2) = _pair(cfg, {"type": "adam", "lr": 1e-3, "clip_norm": 1.0})
    loss = losses.build("mse")
    step = TrainStep(chained, loss, o2)
    for i in range(STEPS):
        x, y = _batch(eager, shape, idt, 3, seed=i)
        v1 = _eager_step(eager, loss, o1, x, y)
        v2 = step(x, y)
        _same(v1, v2, f"{name} loss at step {i}")
    assert step.eager_reasons == {}, f"{name} was not recorded: {step.eager_reasons}"
    assert len(step.cache.entries) == 1
    _same_state(eager, o1, chained, o2, name)


@pytest.mark.parametrize("kind", sorted(optim.TYPES))
@pytest.mark.parametrize("extra", [{}, {"accumulate": 2}, {"clip_value": 0.01, "schedule": {"type": "cosine", "steps": 8}},
                                   {"groups": [{"params": ["*.bias"], "lr": 0.1}]}],
                         ids=["plain", "accumulate", "clip+schedule", "groups"])
def test_every_optimizer_replays_bit_identically(kind, extra):
    cfg = {"loom": 1, "input": {"shape": [12]}, "layers": [{"type": "dense", "units": 16, "activation": "gelu"},
                                                          {"type": "dropout", "rate": 0.25},
                                                          {"type": "dense", "units": 5}]}
    spec = {"type": kind, "lr": 0.01, **extra}
    if kind == "sgd":
        spec.update(momentum=0.9, dampening=0.1)
    (eager, chained), (o1, o2) = _pair(cfg, spec)
    loss = losses.build("cross_entropy")
    step = TrainStep(chained, loss, o2)
    rng = np.random.default_rng(5)
    for i in range(8):
        x = rng.normal(size=(32, 12)).astype(np.float32)
        y = rng.integers(0, 5, 32)
        _same(_eager_step(eager, loss, o1, x, y), step(x, y), f"{kind} loss at step {i}")
    assert step.eager_reasons == {}
    _same_state(eager, o1, chained, o2, kind)


@pytest.mark.smoke
def test_new_shapes_record_new_chains_and_the_cache_evicts():
    cfg = config([{"type": "dense", "units": 6, "activation": "tanh"}], [7], False)
    (eager, chained), (o1, o2) = _pair(cfg, {"type": "sgd", "lr": 0.05})
    loss = losses.build("mse")
    step = TrainStep(chained, loss, o2, cache_size=2)
    for i, batch in enumerate([8, 8, 8, 5, 5, 5, 8, 3, 3, 3, 8, 8]):
        x, y = _batch(eager, [7], False, batch, seed=i)
        _same(_eager_step(eager, loss, o1, x, y), step(x, y), f"step {i} (batch {batch})")
    assert len(step.cache.entries) == 2
    _same_state(eager, o1, chained, o2, "alternating shapes")


def test_a_mismatched_batch_is_an_error_not_a_replay():
    cfg = config([{"type": "dense", "units": 3}], [4], False)
    (net, _), (opt, _) = _pair(cfg, {"type": "sgd", "lr": 0.1})
    step = TrainStep(net, losses.build("mse"), opt)
    x, y = _batch(net, [4], False, 6, seed=0)
    for _ in range(3):
        step(x, y)
    with pytest.raises(loom.ShapeError, match="dtype"):
        step(x.astype(np.float64), y)
    with pytest.raises(loom.ShapeError, match="shape"):
        step(x[:, :3], y)
    with pytest.raises(loom.ShapeError, match="rows"):
        step(x, y[:5])
    with pytest.raises(loom.ShapeError, match="class id"):
        TrainStep(net, losses.build("cross_entropy"), opt)(x, np.array([0, 1, 2, 3, 0, 1]))


def test_no_allocations_per_step_after_warm_up():
    import cupy
    cfg = {"loom": 1, "input": {"shape": [784]}, "layers": [{"type": "dense", "units": 256, "activation": "relu"},
                                                           {"type": "dense", "units": 10}]}
    (net, _), (opt, _) = _pair(cfg, {"type": "adam", "lr": 1e-3})
    step = TrainStep(net, losses.build("mse"), opt)
    cuda = backend.get("cuda")
    x, y = (cuda.asarray(a) for a in _batch(net, [784], False, 32, seed=1))
    for _ in range(3):
        step(x, y)
    pool = cupy.get_default_memory_pool()
    calls = []

    def counting(size):
        calls.append(size)
        return pool.malloc(size)
    cupy.cuda.set_allocator(counting)
    try:
        for _ in range(20):
            step(x, y)
        cuda.synchronize()
    finally:
        cupy.cuda.set_allocator(pool.malloc)
    assert calls == [], f"{len(calls)} allocations in 20 replayed steps: {calls[:5]}"


def _syncing_pair(monkeypatch):
    """Two networks and optimizers; the second's dense layer reads a device value on the host, which
    recording forbids."""
    cfg = config([{"type": "dense", "units": 3}], [4], False)
    (eager, chained), (o1, o2) = _pair(cfg, {"type": "sgd", "lr": 0.1})
    dense = chained.root.children["layers.0"]
    original = dense.forward

    def syncing(x, fc):
        float(x.sum())
        return original(x, fc)
    monkeypatch.setattr(dense, "forward", syncing)
    return eager, chained, o1, o2


def test_a_step_that_cannot_be_recorded_runs_eagerly_and_says_so_once(monkeypatch, mode, loom_log):
    """strict=False (in fast mode the default too): eager steps, the eager bits, one log line."""
    eager, chained, o1, o2 = _syncing_pair(monkeypatch)
    loss = losses.build("mse")
    step = TrainStep(chained, loss, o2, strict=mode == "fast")
    for i in range(4):
        x, y = _batch(eager, [4], False, 5, seed=i)
        _same(_eager_step(eager, loss, o1, x, y), step(x, y), f"step {i}")
    assert len(step.eager_reasons) == 1 and "D2H" in next(iter(step.eager_reasons.values()))
    logged = loom_log()
    assert len(logged) == 1 and "runs eagerly" in logged[0], logged
    _same_state(eager, o1, chained, o2, "fallback")


def test_deterministic_mode_refuses_a_step_that_cannot_be_recorded(monkeypatch, mode):
    if mode == "fast":
        pytest.skip("fast mode falls back (the test above)")
    eager, chained, _, o2 = _syncing_pair(monkeypatch)
    step = TrainStep(chained, losses.build("mse"), o2)
    with pytest.raises(loom.DeterminismError, match=r"a train step on input \[5, 4\] float32 .* strict=False"):
        for i in range(4):
            step(*_batch(eager, [4], False, 5, seed=i))


@pytest.mark.parametrize("name, layers, shape, idt", SAMPLES, ids=[s[0] for s in SAMPLES])
def test_compiled_inference_is_bit_identical(name, layers, shape, idt):
    cfg = config(layers, shape, idt)
    eager = loom.Network.from_config(cfg).to("cuda")
    compiled = loom.Network.from_config(cfg).to("cuda").compile()
    outs = []
    for i in range(4):
        x, _ = _batch(eager, shape, idt, 3, seed=i)
        y = compiled(x)
        _same(eager(x), y, f"{name} forward {i}")
        outs.append(y)
    assert compiled._compiled.eager_reasons == {}, compiled._compiled.eager_reasons
    _same(outs[2], eager(_batch(eager, shape, idt, 3, seed=2)[0]), f"{name}: an earlier result changed")


def test_train_on_cuda_matches_the_eager_loop():
    cfg = {"loom": 1, "input": {"shape": [20]}, "layers": [{"type": "dense", "units": 32, "activation": "relu"},
                                                          {"type": "dropout", "rate": 0.1},
                                                          {"type": "dense", "units": 4}]}
    rng = np.random.default_rng(9)
    X = rng.normal(size=(200, 20)).astype(np.float32)
    Y = rng.integers(0, 4, 200)
    a = loom.Network.from_config(cfg).to("cuda")
    hist = loom.train(a, X, Y, epochs=2, batch_size=32, verbose=False, shuffle=False)
    b = loom.Network.from_config(cfg).to("cuda").train()
    opt = optim.build({"type": "adam", "lr": 1e-3}, b.parameters())
    loss = losses.build("cross_entropy")
    for _ in range(2):
        total = 0.0
        for i in range(0, 200, 32):
            total += float(_eager_step(b, loss, opt, X[i:i + 32], Y[i:i + 32])) * len(X[i:i + 32])
    assert hist["loss"][-1] == total / 200
    for k, v in a.state_dict().items():
        _same(v, b.state_dict()[k], k)
