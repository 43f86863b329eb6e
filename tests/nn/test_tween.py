"""Tweening (loom.nn.tween): chain mode is SGD on the true gradients with per-layer rates, clipping and
momentum; gap mode closes each layer's gap; both learn on every layer family, stepwise too, and
give the same bits twice."""
import numpy as np
import pytest

import loom
from loom.errors import ShapeError
from loom.nn import losses, optim, tween_rules
from loom.nn.tween import Tween, TweenConfig

MLP = {"loom": 1, "seed": 3, "input": {"shape": [4]},
       "layers": [{"type": "dense", "units": 16, "activation": "relu"},
                  {"type": "dense", "units": 16, "activation": "tanh"},
                  {"type": "dense", "units": 2}]}


def regression(n=1200, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4)).astype(np.float32)
    return X, np.tanh(X @ rng.normal(size=(4, 2))).astype(np.float32)


def mse(net, X, Y):
    return float(np.mean((net(X) - Y) ** 2))


def params(net):
    return {k: np.array(v) for k, v in net.parameters().items()}


def line(*weights, bias=False, dtype="float64"):
    """Dense 1 -> 1 layers with linear activations and the given weights."""
    cfg = {"loom": 1, "dtype": dtype, "input": {"shape": [1]},
           "layers": [{"type": "dense", "units": 1, "bias": bias} for _ in weights]}
    net = loom.Network.from_config(cfg)
    for i, w in enumerate(weights):
        net.parameters()[f"layers.{i}.weight"][...] = w
    return net


# --- chain mode -------------------------------------------------------------------------------------

@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_chain_mode_is_sgd_bit_for_bit(momentum):
    """Uniform rates and no clipping: the same bits as optim.SGD on net.backward's gradients."""
    X, Y = regression(40)
    a, b = loom.Network.from_config(MLP), loom.Network.from_config(MLP)
    tw = Tween(a, {"mode": "chain", "rate": 0.05, "momentum": momentum})
    opt = optim.build({"type": "sgd", "lr": 0.05, "momentum": momentum}, b.parameters())
    loss = losses.build("mse")
    for i in range(0, 40, 2):
        report = tw.update(X[i:i + 2], Y[i:i + 2])
        value, dy = loss(b.forward(X[i:i + 2]), Y[i:i + 2])
        b.backward(dy, input_grad=False)
        b.apply_gradients(opt)
        assert float(report) == float(value)
    pa, pb = params(a), params(b)
    assert all(pa[k].tobytes() == pb[k].tobytes() for k in pa)
    assert any(not np.array_equal(pa[k], np.asarray(loom.Network.from_config(MLP).parameters()[k])) for k in pa)


def test_chain_rates_per_depth_and_type_by_hand():
    """x = 1, y = w1 w0 x, mse to 0: dL/dy = 2 y = 12, g1 = 12 w0 = 24, g0 = 12 w1 = 36."""
    net = line(2.0, 3.0)
    tw = Tween(net, {"rate": 0.01, "depth_decay": 0.5, "type_rates": {"dense": 2.0}})
    report = tw.update(np.ones((1, 1)), np.zeros((1, 1)))
    assert float(report) == 36.0
    w = params(net)
    assert w["layers.1.weight"][0, 0] == pytest.approx(3.0 - 0.02 * 24)          # rate * type
    assert w["layers.0.weight"][0, 0] == pytest.approx(2.0 - 0.02 * 0.5 * 36)    # ... * decay^1
    assert net.gradients()["layers.0.weight"][0, 0] == 36.0     # left in the buffers for inspection


def test_chain_clipping_per_layer_by_hand():
    net = line(2.0, 3.0)
    Tween(net, {"rate": 0.01, "clip_norm": 10.0}).update(np.ones((1, 1)), np.zeros((1, 1)))
    w = params(net)
    assert w["layers.1.weight"][0, 0] == pytest.approx(3.0 - 0.01 * 24 * 10 / (24 + 1e-6), abs=1e-12)
    assert w["layers.0.weight"][0, 0] == pytest.approx(2.0 - 0.01 * 36 * 10 / (36 + 1e-6), abs=1e-12)
    net = line(2.0, 3.0)
    Tween(net, {"rate": 0.01, "clip_value": 5.0}).update(np.ones((1, 1)), np.zeros((1, 1)))
    w = params(net)
    assert (w["layers.1.weight"][0, 0], w["layers.0.weight"][0, 0]) == (pytest.approx(2.95), pytest.approx(1.95))


def test_chain_momentum_by_hand():
    """One weight, x = 1, target 0: g = 2 w; buf = g, then buf = m buf + g."""
    net = line(1.0)
    tw = Tween(net, {"rate": 0.1, "momentum": 0.5})
    tw.update(np.ones((1, 1)), np.zeros((1, 1)))            # g = 2, buf = 2, w = 0.8
    tw.update(np.ones((1, 1)), np.zeros((1, 1)))            # g = 1.6, buf = 2.6, w = 0.54
    assert params(net)["layers.0.weight"][0, 0] == pytest.approx(0.54)


def test_frozen_parameters_are_not_updated():
    net = loom.Network.from_config(MLP)
    net.freeze("layers.0.weight")
    before = params(net)
    X, Y = regression(8)
    for mode in ("chain", "gap"):
        Tween(net, mode).update(X, Y)
    after = params(net)
    assert np.array_equal(after["layers.0.weight"], before["layers.0.weight"])
    assert not np.array_equal(after["layers.0.bias"], before["layers.0.bias"])


# --- gap mode ---------------------------------------------------------------------------------------

def test_rate_is_the_fraction_of_a_linear_gap_closed():
    net = loom.Network.from_config({"loom": 1, "dtype": "float64", "input": {"shape": [3]},
                                    "layers": [{"type": "dense", "units": 2}]})
    x, t = np.array([[0.5, -1.0, 2.0]]), np.array([[1.0, -3.0]])
    gap = t - net(x)
    Tween(net, {"mode": "gap", "rate": 0.25}).update(x, t)
    np.testing.assert_allclose(t - net(x), 0.75 * gap, rtol=1e-12)
    Tween(net, {"mode": "gap", "rate": 1.0}).update(x, t)
    np.testing.assert_allclose(net(x), t, rtol=1e-12)


@pytest.mark.parametrize("projection", ["gap", "target"])
def test_back_projection_of_a_dense_layer(projection):
    net = loom.Network.from_config({"loom": 1, "dtype": "float64", "input": {"shape": [3]},
                                    "layers": [{"type": "dense", "units": 2, "bias": False}]})
    layer = net.root.children["layers.0"]
    w = np.array([[1.0, -2.0, 0.0], [3.0, 1.0, 0.0]])     # input 2 feeds nothing: its estimate is x
    layer.params["weight"][...] = w
    x = np.array([[0.5, 1.0, 7.0]])
    y = net(x)
    t = y + np.array([[1.0, -1.0]])
    cfg = TweenConfig(mode="gap", projection=projection)
    est = tween_rules.matrix_rule(layer, x, y, t, cfg, need_estimate=True)
    src = t - y if projection == "gap" else t
    share = (src @ w)[0, :2] / np.abs(w).sum(axis=0)[:2]
    expected = x[0, :2] + share if projection == "gap" else share
    np.testing.assert_allclose(est[0, :2], expected, rtol=1e-12)
    assert est[0, 2] == 7.0


def test_gap_mode_learns_a_regression():
    X, Y = regression()
    net = loom.Network.from_config(MLP)
    before = mse(net, X[:300], Y[:300])
    tw = Tween(net, {"mode": "gap", "momentum": 0.5})
    for i in range(300, 1200):
        tw.update(X[i:i + 1], Y[i:i + 1])
    assert mse(net, X[:300], Y[:300]) < 0.1 * before


def test_gap_mode_learns_classes_from_ids():
    rng = np.random.default_rng(1)
    centers = rng.normal(size=(3, 8)) * 1.5
    ids = rng.integers(0, 3, 1500)
    X = (centers[ids] + rng.normal(size=(1500, 8))).astype(np.float32)
    net = loom.Network.from_config({"loom": 1, "seed": 1, "input": {"shape": [8]},
                                    "layers": [{"type": "dense", "units": 32, "activation": "relu"},
                                               {"type": "dense", "units": 3}]})
    tw = Tween(net, {"mode": "gap", "loss": "cross_entropy"})
    for i in range(300, 1500):
        tw.update(X[i:i + 1], ids[i:i + 1])
    assert np.mean(np.argmax(net(X[:300]), axis=-1) == ids[:300]) > 0.85


def test_link_budgets_and_their_gate():
    cfg = {**MLP, "dtype": "float64"}
    X, Y = (a.astype(np.float64) for a in regression(4))
    net, ungated = loom.Network.from_config(cfg), loom.Network.from_config(cfg)
    h = net.root.children["layers.0"].forward(X, loom.nn.layers.ForwardContext())
    Tween(ungated, {"mode": "gap", "budget_threshold": 0}).update(X, Y)
    report = Tween(net, {"mode": "gap", "budget_threshold": 10.0}).update(X, Y)
    assert len(report.budgets) == 3
    assert float(report.budgets[0]) == pytest.approx(np.sqrt(np.mean(h ** 2)) / np.sqrt(np.mean(X ** 2)), rel=1e-9)
    start = params(loom.Network.from_config(cfg))
    moved, full = params(net), params(ungated)
    for i in range(3):
        k = f"layers.{i}.weight"
        gate = float(report.budgets[i]) / 10.0       # every budget here is below 10
        assert 0 < gate < 1
        np.testing.assert_allclose(moved[k] - start[k], gate * (full[k] - start[k]), rtol=1e-9, atol=1e-15)


# --- every layer family, step mode, determinism -------------------------------------------------------

FAMILIES = {    # layers, input shape, rate in chain mode, rate in gap mode
    "conv2d": ([{"type": "conv2d", "filters": 4, "kernel_size": 3, "activation": "relu"},
                {"type": "flatten"}, {"type": "dense", "units": 1}], [1, 6, 6], 0.05, 0.3),
    "rnn": ([{"type": "rnn", "hidden": 8}, {"type": "dense", "units": 1}], [5, 3], 0.1, 0.2),
    "lstm": ([{"type": "lstm", "hidden": 8}, {"type": "dense", "units": 1}], [5, 3], 0.3, 0.3),
    "attention": ([{"type": "multi_head_attention", "heads": 2}, {"type": "layer_norm"}, {"type": "flatten"},
                   {"type": "dense", "units": 1}], [4, 4], 0.1, 0.2),
    "residual": ([{"type": "dense", "units": 6, "activation": "tanh"},
                  {"type": "residual", "layers": [{"type": "dense", "units": 6, "activation": "tanh"}]},
                  {"type": "dense", "units": 1}], [3], 0.1, 0.2),
}


def family_data(shape, n, seed):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, *shape)).astype(np.float32)
    flat = X.reshape(n, -1)
    Y = np.tanh(flat[:, : flat.shape[1] // 2].mean(axis=1, keepdims=True) * 3)
    return X, Y.astype(np.float32)


@pytest.mark.parametrize("mode", ["chain", "gap"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_layer_family_learns(family, mode):
    layers, shape, chain_rate, gap_rate = FAMILIES[family]
    net = loom.Network.from_config({"loom": 1, "seed": 2, "input": {"shape": shape}, "layers": layers})
    X, Y = family_data(shape, 64, 0)
    Xt, Yt = family_data(shape, 8 * 40, 1)
    before = mse(net, X, Y)
    tw = Tween(net, {"mode": mode, "rate": chain_rate if mode == "chain" else gap_rate, "momentum": 0.5})
    for i in range(0, len(Xt), 8):
        tw.update(Xt[i:i + 8], Yt[i:i + 8])
    assert mse(net, X, Y) < 0.7 * before


@pytest.mark.parametrize("mode", ["chain", "gap"])
def test_step_update_after_a_held_input_equals_update(mode):
    X, Y = regression(6)
    a, b = loom.Network.from_config(MLP), loom.Network.from_config(MLP)
    ta, tb = Tween(a, {"mode": mode, "momentum": 0.5}), Tween(b, {"mode": mode, "momentum": 0.5})
    state = b.step_state()
    with pytest.raises(ShapeError, match="step_update needs an output"):
        tb.step_update(state, Y[:1])
    for i in range(6):
        ra = ta.update(X[i:i + 1], Y[i:i + 1])
        state.set_input(X[i:i + 1])
        for _ in range(state.depth):
            state.step()
        rb = tb.step_update(state, Y[i:i + 1])
        assert float(ra) == float(rb)
    pa, pb = params(a), params(b)
    assert all(pa[k].tobytes() == pb[k].tobytes() for k in pa)
    with pytest.raises(ShapeError, match="another network"):
        ta.step_update(state, Y[:1])


@pytest.mark.parametrize("mode", ["chain", "gap"])
def test_pipelined_stream_learns(mode):
    """One new sample per tick, the target of the sample now at the output."""
    X, Y = regression(1500, seed=4)
    net = loom.Network.from_config(MLP)
    before = mse(net, X[:300], Y[:300])
    tw = Tween(net, {"mode": mode, "rate": 0.02 if mode == "chain" else 0.1, "momentum": 0.5})
    state = net.step_state()
    for i in range(300, 1500):
        state.set_input(X[i:i + 1])
        state.step()
        if state.output() is not None:
            tw.step_update(state, Y[i - state.depth + 1:i - state.depth + 2])
    assert mse(net, X[:300], Y[:300]) < 0.5 * before


@pytest.mark.parametrize("mode", ["chain", "gap"])
def test_two_runs_give_the_same_bits(mode):
    X, Y = regression(64, seed=5)
    runs = []
    for _ in range(2):
        net = loom.Network.from_config(MLP)
        tw = Tween(net, {"mode": mode, "momentum": 0.9, "clip_norm": 0.5, "depth_decay": 0.7})
        losses_seen = [float(tw.update(X[i:i + 4], Y[i:i + 4])) for i in range(0, 64, 4)]
        runs.append((params(net), losses_seen, tw.state_dict()))
    (p1, l1, s1), (p2, l2, s2) = runs
    assert l1 == l2
    assert all(p1[k].tobytes() == p2[k].tobytes() for k in p1)
    assert all(np.asarray(s1[k]).tobytes() == np.asarray(s2[k]).tobytes() for k in s1)


def test_momentum_state_round_trips():
    X, Y = regression(20, seed=6)
    a, b = loom.Network.from_config(MLP), loom.Network.from_config(MLP)
    ta = Tween(a, {"mode": "gap", "momentum": 0.8})
    for i in range(10):
        ta.update(X[i:i + 1], Y[i:i + 1])
    b.load_state_dict(a.state_dict())
    tb = Tween(b, {"mode": "gap", "momentum": 0.8})
    tb.load_state_dict(ta.state_dict())
    assert tb.steps == 10
    for i in range(10, 20):
        ta.update(X[i:i + 1], Y[i:i + 1])
        tb.update(X[i:i + 1], Y[i:i + 1])
    pa, pb = params(a), params(b)
    assert all(pa[k].tobytes() == pb[k].tobytes() for k in pa)
    with pytest.raises(ShapeError, match="momentum.layers.9.weight"):
        tb.load_state_dict({"momentum.layers.9.weight": np.zeros(3)})


def test_a_target_of_the_wrong_shape_is_a_shape_error():
    X, Y = regression(2)
    with pytest.raises(ShapeError, match=r"target has shape \[2, 3\]"):
        Tween(loom.Network.from_config(MLP), "gap").update(X, np.zeros((2, 3), np.float32))


@pytest.mark.parametrize("mode", ["chain", "gap"])
def test_forward_then_learn_is_update(mode):
    """The two halves give update's bits, and the answer exists before anything is learned."""
    X, Y = regression(12, seed=6)
    a, b = loom.Network.from_config(MLP), loom.Network.from_config(MLP)
    ta, tb = Tween(a, {"mode": mode, "momentum": 0.5}), Tween(b, {"mode": mode, "momentum": 0.5})
    for i in range(0, 12, 3):
        p = tb.forward(X[i:i + 3])
        assert p.output.tobytes() == np.asarray(b(X[i:i + 3])).tobytes()
        p = tb.forward(X[i:i + 3])                        # the latest forward is the one learned from
        assert float(ta.update(X[i:i + 3], Y[i:i + 3])) == float(tb.learn(p, Y[i:i + 3]))
    pa, pb = params(a), params(b)
    assert all(pa[k].tobytes() == pb[k].tobytes() for k in pa)
    with pytest.raises(ShapeError, match="another network"):
        ta.learn(p, Y[:3])


def test_a_pipeline_hands_the_gap_down_not_another_samples_target():
    """Two linear dense layers in a pipeline tick: layer 1 reads x1 (an older sample's hidden output)
    while layer 0 wrote y0 from a newer one. Layer 0's gap is layer 1's back-projected gap
    A^T gap / |A|^T 1, whatever y0 is: the difference between the two samples is not a gap."""
    cfg = {"loom": 1, "seed": 2, "dtype": "float64", "input": {"shape": [3]},
           "layers": [{"type": "dense", "units": 4, "bias": False}, {"type": "dense", "units": 2, "bias": False}]}
    net = loom.Network.from_config(cfg)
    w0, w1 = (np.array(net.parameters()[f"layers.{i}.weight"]) for i in (0, 1))
    tw = Tween(net, {"mode": "gap", "rate": 1.0, "normalize": False, "budget_threshold": 0})
    rng = np.random.default_rng(1)
    state = net.step_state()
    xa, xb, t = rng.normal(size=(1, 3)), rng.normal(size=(1, 3)), rng.normal(size=(1, 2))
    for x in (xa, xb):
        state.set_input(x)
        state.step()
    x1 = xa @ w0.T                          # what layer 1 read this tick: sample a's hidden output
    y1 = x1 @ w1.T
    gap1 = t - y1
    gap0 = (gap1 @ w1) / np.abs(w1).sum(axis=0)      # handed down: no y0 (sample b) in it
    tw.step_update(state, t)
    np.testing.assert_allclose(np.array(net.parameters()["layers.1.weight"]), w1 + gap1.T @ x1, rtol=1e-12)
    np.testing.assert_allclose(np.array(net.parameters()["layers.0.weight"]), w0 + gap0.T @ xb, rtol=1e-12)
