"""Network.freeze / unfreeze: frozen parameters have no gradient buffers, get no gradient and no
update from any optimizer, and input gradients still flow through their layers; the grafting recipe
(a filter mixture whose experts are frozen, only the gate learns) keeps the experts' bits."""
import numpy as np
import pytest
from catalogue import SAMPLES, config

import loom
from loom.errors import ConfigError, ShapeError
from loom.nn import optim

MLP = {"loom": 1, "dtype": "float64", "input": {"shape": [5]},
       "layers": [{"type": "dense", "units": 6, "activation": "tanh"},
                  {"type": "layer_norm"},
                  {"type": "dense", "units": 4, "activation": "tanh"},
                  {"type": "dense", "units": 3}]}
NAMES = ["layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias",
         "layers.2.weight", "layers.2.bias", "layers.3.weight", "layers.3.bias"]


def _data(n=8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 5)), rng.normal(size=(n, 3))


def _copies(params):
    return {k: np.array(v, copy=True) for k, v in params.items()}


def test_freeze_and_unfreeze_by_glob():
    net = loom.Network.from_config(MLP)
    assert list(net.parameters()) == NAMES and net.frozen == []
    assert net.freeze("layers.0.*") == ["layers.0.weight", "layers.0.bias"]
    assert net.frozen == ["layers.0.weight", "layers.0.bias"]
    params = net.parameters()
    assert list(params) == NAMES                             # frozen parameters are still parameters
    assert params.frozen == {"layers.0.weight", "layers.0.bias"}
    assert list(net.gradients()) == NAMES[2:]
    assert net.freeze("layers.0.*") == []                    # already frozen: nothing changes
    assert net.freeze("*.bias") == ["layers.1.bias", "layers.2.bias", "layers.3.bias"]
    assert net.freeze("layers.*.weight", "layers.3.*") == ["layers.1.weight", "layers.2.weight", "layers.3.weight"]
    assert net.frozen == NAMES and net.gradients() == {}
    assert net.unfreeze("layers.2.*") == ["layers.2.weight", "layers.2.bias"]
    grads = net.gradients()
    assert list(grads) == ["layers.2.weight", "layers.2.bias"]
    assert all(not g.any() for g in grads.values())          # a fresh, zeroed buffer
    assert net.unfreeze("*") == [n for n in NAMES if not n.startswith("layers.2.")]
    assert net.frozen == [] and list(net.gradients()) == NAMES


def test_a_pattern_that_matches_nothing_is_an_error_naming_it():
    net = loom.Network.from_config(MLP)
    with pytest.raises(ConfigError, match=r"^freeze\[1\]: pattern 'experts\.\*' matches no parameter name") as e:
        net.freeze("layers.0.*", "experts.*")
    assert e.value.path == "freeze[1]" and "layers.0.weight" in str(e.value)
    assert net.frozen == []                                  # every pattern is checked before anything changes
    with pytest.raises(ConfigError, match=r"^freeze\[0\]: pattern 'LAYERS\.0\.\*'"):
        net.freeze("LAYERS.0.*")                             # case-sensitive, like optimizer groups
    with pytest.raises(ConfigError, match=r"^unfreeze\[0\]: pattern 'bias' matches no parameter name"):
        net.unfreeze("bias")
    with pytest.raises(ConfigError, match=r"^freeze: give at least one"):
        net.freeze()
    with pytest.raises(ConfigError, match=r"^freeze\[0\]: expected a glob pattern"):
        net.freeze(["layers.0.*"])
    net.freeze("layers.0.*")
    assert net.unfreeze("layers.1.*") == []                  # matches, but nothing was frozen there


def test_frozen_parameters_have_no_gradient_buffers():
    net = loom.Network.from_config(MLP).train()
    dense, norm = net.root.children["layers.0"], net.root.children["layers.1"]
    net.freeze("layers.0.weight", "layers.1.*")
    assert set(dense.grads) == {"bias"} and norm.grads == {}
    x, t = _data()
    for _ in range(2):
        net.zero_grad()
        y = net.forward(x)
        net.backward(y - t)
    assert set(dense.grads) == {"bias"} and norm.grads == {}
    assert "layers.0.weight" not in net.gradients() and "layers.1.weight" not in net.gradients()


SPEC = {"lr": 0.05, "weight_decay": 0.1, "clip_norm": 0.5, "accumulate": 2}


@pytest.mark.parametrize("kind", sorted(optim.TYPES))
def test_every_optimizer_leaves_frozen_parameters_bit_identical(kind):
    spec = {"type": kind, **SPEC}
    x, t = _data()
    net = loom.Network.from_config(MLP).train()
    net.freeze("layers.0.*", "layers.1.*")
    frozen = net.frozen
    before = _copies(net.parameters())
    opt = optim.build(spec, net.parameters())
    # reference: an unfrozen copy whose optimizer holds only the trainable parameters and is fed
    # only their gradients, so decay, clipping norm and updates must come out the same bits
    ref = loom.Network.from_config(MLP).train()
    ref_opt = optim.build(spec, {k: v for k, v in ref.parameters().items() if k not in frozen})
    for _ in range(8):
        for n in (net, ref):
            n.zero_grad()
            y = n.forward(x)
            n.backward(y - t)
        net.apply_gradients(opt)
        ref_opt.step({k: v for k, v in ref.gradients().items() if k not in frozen})
    after = net.parameters()
    for name in NAMES:
        if name in frozen:
            assert after[name].tobytes() == before[name].tobytes(), name
        else:
            assert not np.array_equal(after[name], before[name]), name
            assert after[name].tobytes() == ref.parameters()[name].tobytes(), name
    state = opt.state_dict()
    assert opt.steps == 4 and not [k for k in state if any(f".{name}" in k for name in frozen)]
    assert set(state) == set(ref_opt.state_dict())


def test_optimizer_patterns_may_name_frozen_parameters():
    net = loom.Network.from_config(MLP)
    net.freeze("layers.0.*")
    opt = optim.build({"type": "adamw", "no_decay": ["layers.0.*"], "groups": [{"params": ["layers.0.*"], "lr": 1}]},
                      net.parameters())
    assert opt.hyperparameters("layers.2.weight")["weight_decay"] == 0.01
    with pytest.raises(ConfigError, match=r"no_decay\[0\]: pattern 'nothing\.\*' matches no parameter name"):
        optim.build({"type": "adamw", "no_decay": ["nothing.*"]}, net.parameters())


def test_changing_the_freezing_after_building_the_optimizer_is_an_error():
    x, t = _data()
    net = loom.Network.from_config(MLP).train()
    opt = optim.build("sgd", net.parameters())
    net.freeze("layers.3.*")
    net.backward(net.forward(x) - t)
    with pytest.raises(ShapeError, match=r"layers\.3\.weight is missing \(frozen after the optimizer was built"):
        net.apply_gradients(opt)
    opt = optim.build("sgd", net.parameters())
    net.unfreeze("layers.3.*")
    net.backward(net.forward(x) - t)
    with pytest.raises(ShapeError, match=r"layers\.3\.weight, which was frozen when the optimizer was built"):
        net.apply_gradients(opt)


def _input(shape, idt, batch=3):
    rng = np.random.default_rng(5)
    return rng.integers(0, 10, size=(batch, *shape)) if idt else rng.normal(size=(batch, *shape))


def _run(net, x, dy):
    net.zero_grad()
    net.rng_counter = 0
    net.forward(x)
    dx = net.backward(dy)
    return None if dx is None else dx.copy(), {k: g.copy() for k, g in net.gradients().items()}


WITH_PARAMS = [s for s in SAMPLES if loom.Network.from_config(config(s[1], s[2], s[3])).parameters()]


@pytest.mark.parametrize("name, layers, shape, idt", WITH_PARAMS, ids=[s[0] for s in WITH_PARAMS])
def test_freezing_changes_no_other_gradient(name, layers, shape, idt):
    """Every layer type, every parameter frozen alone, then all of them: the other parameters'
    gradients and the input gradient keep their bits, and the frozen one gets no buffer."""
    net = loom.Network.from_config(config(layers, shape, idt, dtype="float64")).train()
    x = _input(shape, idt)
    y = net.forward(x)
    dy = np.random.default_rng(6).normal(size=y.shape)
    dx_ref, ref = _run(net, x, dy)
    for pname in list(net.parameters()):
        assert net.freeze(pname) == [pname]
        dx, grads = _run(net, x, dy)
        assert set(grads) == set(ref) - {pname}, pname
        for k, g in grads.items():
            assert g.tobytes() == ref[k].tobytes(), (pname, k)
        assert (dx is None) == (dx_ref is None) and (dx is None or dx.tobytes() == dx_ref.tobytes()), pname
        net.unfreeze("*")
    net.freeze("*")
    dx, grads = _run(net, x, dy)
    assert grads == {} and all(not layer.grads for _, layer in net.root.walk())
    assert (dx is None) == (dx_ref is None) and (dx is None or dx.tobytes() == dx_ref.tobytes())


def test_input_gradient_flows_through_frozen_layers():
    net = loom.Network.from_config(MLP).train()
    ref = loom.Network.from_config(MLP).train()
    net.freeze("layers.1.*", "layers.2.*")
    x, _ = _data(4)
    dy = np.random.default_rng(9).normal(size=(4, 3))
    net.forward(x)
    dx = net.backward(dy)
    ref.forward(x)
    assert dx.tobytes() == ref.backward(dy).tobytes()
    for k in ("layers.0.weight", "layers.0.bias", "layers.3.weight"):   # trainable on both sides of the frozen ones
        assert net.gradients()[k].tobytes() == ref.gradients()[k].tobytes(), k
    eps, numeric = 1e-6, np.zeros_like(x)
    for i in np.ndindex(x.shape):
        plus, minus = x.copy(), x.copy()
        plus[i] += eps
        minus[i] -= eps
        numeric[i] = (np.sum(net.forward(plus) * dy) - np.sum(net.forward(minus) * dy)) / (2 * eps)
    np.testing.assert_allclose(dx, numeric, rtol=1e-6, atol=1e-8)


def _spy(layers, monkeypatch):
    called = []
    for name, layer in layers.items():
        def wrapped(dy, _real=layer.backward, _name=name):
            called.append(_name)
            return _real(dy)
        monkeypatch.setattr(layer, "backward", wrapped)
    return called


def test_leading_frozen_layers_are_skipped_when_nobody_needs_the_input_gradient(monkeypatch):
    x, t = _data()
    net = loom.Network.from_config(MLP).train()
    ref = loom.Network.from_config(MLP).train()
    net.freeze("layers.0.*", "layers.1.*")
    called = _spy(net.root.children, monkeypatch)
    net.forward(x)
    assert net.backward(net.forward(x) - t, input_grad=False) is None
    assert called == ["layers.3", "layers.2"]
    ref.forward(x)
    ref.backward(ref.forward(x) - t)
    for k, g in net.gradients().items():
        assert g.tobytes() == ref.gradients()[k].tobytes(), k
    called.clear()
    net.forward(x)
    assert net.backward(net.forward(x) - t) is not None     # an input gradient asked for: every layer runs
    assert called == ["layers.3", "layers.2", "layers.1", "layers.0"]


# --- the grafting recipe -------------------------------------------------------------------------

EXPERT = {"type": "sequential", "layers": [{"type": "dense", "units": 3}]}
MOE = {"loom": 1, "name": "graft", "input": {"shape": [4]},
       "layers": [{"type": "parallel", "combine": "filter", "branches": [EXPERT, EXPERT]}]}


def _task():
    """Two linear maps, each right on one half of the input space (split by the sign of x[0])."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(256, 4)).astype(np.float32)
    A, B = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    left = X[:, 0] < 0
    return X, np.where(left[:, None], X @ A.T, X @ B.T).astype(np.float32), left


def _graft():
    """Train one expert per half on its own, then graft both into a filter mixture."""
    X, Y, left = _task()
    experts = []
    for rows in (left, ~left):
        e = loom.Network.from_config({"loom": 1, "input": {"shape": [4]}, "layers": EXPERT["layers"]}, seed=1)
        loom.train(e, X[rows], Y[rows], loss="mse", optimizer={"type": "adam", "lr": 0.05}, epochs=30,
                   batch_size=32, verbose=False)
        experts.append(e)
    moe = loom.Network.from_config(MOE, seed=2)
    params = moe.parameters()
    for i, e in enumerate(experts):
        for name, w in e.parameters().items():
            params[f"layers.0.branches.{i}.{name}"][...] = w
    return moe, X, Y


def test_grafting_trains_only_the_gate(monkeypatch):
    moe, X, Y = _graft()
    assert moe.freeze("layers.0.branches.*") == ["layers.0.branches.0.layers.0.weight",
                                                 "layers.0.branches.0.layers.0.bias",
                                                 "layers.0.branches.1.layers.0.weight",
                                                 "layers.0.branches.1.layers.0.bias"]
    assert list(moe.gradients()) == ["layers.0.gate.layers.1.weight", "layers.0.gate.layers.1.bias"]
    before = _copies(moe.parameters())
    called = _spy({p: layer for p, layer in moe.root.walk() if ".branches." in p}, monkeypatch)
    loss0 = loom.evaluate(moe, X, Y, loss="mse", metrics_names=())["loss"]
    history = loom.train(moe, X, Y, loss="mse", optimizer={"type": "adam", "lr": 0.1}, epochs=4, batch_size=32,
                         verbose=False)                     # 32 steps
    loss1 = loom.evaluate(moe, X, Y, loss="mse", metrics_names=())["loss"]
    after = moe.parameters()
    for name in before:
        if ".branches." in name:
            assert after[name].tobytes() == before[name].tobytes(), name
        else:
            assert not np.array_equal(after[name], before[name]), name
    assert loss1 < 0.25 * loss0
    assert all(b < a for a, b in zip(history["loss"], history["loss"][1:]))
    assert called == []              # the frozen experts never ran backward: no input gradient is needed
    assert all(not layer.grads for p, layer in moe.root.walk() if ".branches." in p)


def test_training_block_freeze():
    X, Y, _ = _task()
    cfg = {**MOE, "training": {"freeze": ["layers.0.branches.*"], "loss": "mse", "epochs": 1, "batch_size": 64,
                               "optimizer": {"type": "sgd", "lr": 0.1}}}
    net = loom.Network.from_config(cfg)
    assert net.config["training"]["freeze"] == ["layers.0.branches.*"]
    before = _copies(net.parameters())
    loom.train(net, X, Y, verbose=False)
    assert net.frozen == [n for n in before if ".branches." in n]   # the network stays frozen afterwards
    assert all(net.parameters()[n].tobytes() == before[n].tobytes() for n in net.frozen)
    # the argument adds to it; a string is one pattern
    loom.train(net, X, Y, freeze="*.bias", verbose=False)
    assert "layers.0.gate.layers.1.bias" in net.frozen
    bad = {**cfg, "training": {**cfg["training"], "freeze": ["layers.0.experts.*"]}}
    with pytest.raises(ConfigError, match=r"^training\.freeze\[0\]: pattern 'layers\.0\.experts\.\*' matches no"):
        loom.train(loom.Network.from_config(bad), X, Y, verbose=False)
    with pytest.raises(ConfigError, match=r"^freeze\[1\]: pattern 'gate' matches no"):
        loom.train(loom.Network.from_config(MOE), X, Y, loss="mse", freeze=["*.bias", "gate"], verbose=False)
    with pytest.raises(ConfigError, match=r"^training\.freeze: expected a list"):
        loom.Network.from_config({**cfg, "training": {"freeze": "layers.0.*"}})
    with pytest.raises(ConfigError, match=r"^freeze: every parameter of the network is frozen"):
        loom.train(loom.Network.from_config(MOE), X, Y, loss="mse", freeze="*", verbose=False)


def test_freezing_is_not_saved_with_the_weights(tmp_path):
    net = loom.Network.from_config(MLP)
    net.freeze("layers.0.*")
    net.save(tmp_path / "m.loom")
    back = loom.load(tmp_path / "m.loom")
    assert back.frozen == [] and list(back.gradients()) == NAMES        # as PyTorch's state_dict: no requires_grad
    assert all(back.parameters()[k].tobytes() == v.tobytes() for k, v in net.parameters().items())


def test_resume_needs_the_same_freezing(tmp_path):
    X, Y, _ = _task()
    kw = dict(loss="mse", optimizer={"type": "adam", "lr": 0.05}, batch_size=64, verbose=False)
    straight = loom.Network.from_config(MOE)
    loom.train(straight, X, Y, epochs=2, freeze="layers.0.branches.*", **kw)
    first = loom.Network.from_config(MOE)
    loom.train(first, X, Y, epochs=1, freeze="layers.0.branches.*", checkpoint=tmp_path / "c.loom", **kw)
    with pytest.raises(ConfigError, match=r"^resume: .* was trained with frozen parameters \['layers\.0\.branches"):
        loom.train(loom.Network.from_config(MOE), X, Y, epochs=2, resume=tmp_path / "c.loom", **kw)
    resumed = loom.Network.from_config(MOE)
    loom.train(resumed, X, Y, epochs=2, freeze="layers.0.branches.*", resume=tmp_path / "c.loom", **kw)
    for k, v in straight.parameters().items():
        assert resumed.parameters()[k].tobytes() == v.tobytes(), k


def test_a_quantized_network_has_nothing_to_freeze():
    q = loom.Network.from_config({**MLP, "dtype": "float32"}).quantize("int8")
    assert q.frozen == []
    with pytest.raises(ConfigError, match=r"^quantization: freeze: a network quantized to int8 runs inference only"):
        q.freeze("*")
