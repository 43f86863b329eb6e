"""parallel: every combine mode's gradients, grid_scatter placement, filter (mixture of experts)
routing and training, shape errors and parameter names."""
import gradcheck
import numpy as np
import pytest

import loom
from loom.nn.layers import ForwardContext


def dense(units, act="tanh"):
    return {"type": "dense", "units": units, "activation": act}


def par(branches, combine, **keys):
    return {"type": "parallel", "branches": branches, "combine": combine, **keys}


def layer0(net):
    return net.root.children["layers.0"]


def gate_scores(net, x):
    return layer0(net).children["gate"].forward(x, ForwardContext())


def branch_outputs(net, x):
    p = layer0(net)
    return [p.children[f"branches.{i}"].forward(x, ForwardContext()) for i in range(len(p.branches))]


# --- gradients of every combine mode -----------------------------------------------------------------

def test_concat_gradients_different_widths():
    net = gradcheck.check([par([dense(3), dense(5, "relu"), {"type": "activation", "fn": "sigmoid"}], "concat")],
                          [4], batch=3)
    assert net.output_spec.shape == (12,)


def test_concat_gradients_rank2_input():
    net = gradcheck.check([par([dense(2), {"type": "sequential", "layers": [dense(3), dense(1)]}], "concat")],
                          [3, 4], batch=2, seed=1)
    assert net.output_spec.shape == (3, 3)


@pytest.mark.parametrize("combine", ["add", "avg", "multiply"])
def test_elementwise_gradients(combine):
    net = gradcheck.check([par([dense(4), dense(4, "sigmoid"), {"type": "activation", "fn": "tanh"}], combine)],
                          [4], batch=3, seed=2)
    assert net.output_spec.shape == (4,)


def test_elementwise_forward_values():
    x = np.random.default_rng(0).normal(size=(2, 4))
    outs = {}
    for combine in ("add", "avg", "multiply"):
        net = gradcheck.make_net([par([dense(4), dense(4, "sigmoid"), dense(4, "relu")], combine)], [4])
        outs[combine] = net(x)
        a, b, c = branch_outputs(net, x)
    np.testing.assert_allclose(outs["add"], a + b + c, rtol=1e-14)
    np.testing.assert_allclose(outs["avg"], (a + b + c) / 3, rtol=1e-14)
    np.testing.assert_allclose(outs["multiply"], a * b * c, rtol=1e-14)


def test_multiply_gradient_with_zero_branch_output():
    # relu branches are exactly 0 for some entries: the product backward must not divide by them
    layers = [par([dense(5, "relu"), dense(5, "relu"), dense(5)], "multiply")]
    x = np.random.default_rng(4).normal(size=(3, 4))
    net = gradcheck.make_net(layers, [4])
    assert np.any(np.stack(branch_outputs(net, x)) == 0)
    net.zero_grad()
    y = net(x)
    dx = net.backward(np.ones_like(y))
    assert np.all(np.isfinite(dx))
    assert all(np.all(np.isfinite(g)) for g in net.gradients().values())
    gradcheck.check(layers, [4], x=x, batch=3, seed=4)


def grid(rows, cols, layers, positions):
    return {"rows": rows, "cols": cols, "layers": layers, "positions": positions}


def test_grid_scatter_gradients_with_empty_cell():
    layers = [par([dense(3), dense(3, "sigmoid"), {"type": "sequential", "layers": [dense(3), dense(3)]}],
                  "grid_scatter", grid=grid(2, 2, 1, [[0, 0, 0], [1, 1, 0], [0, 1, 0]]))]
    net = gradcheck.check(layers, [4], batch=3)
    assert net.output_spec.shape == (2, 2, 1, 3)


def test_grid_scatter_gradients_3d_grid():
    # branch outputs of different shapes but one size: [6], [2, 3] and [3, 2]
    branches = [dense(6), {"type": "sequential", "layers": [dense(6), {"type": "reshape", "shape": [2, 3]}]},
                {"type": "reshape", "shape": [3, 2]}]
    layers = [par(branches, "grid_scatter", grid=grid(2, 1, 2, [[0, 0, 1], [1, 0, 0], [1, 0, 1]]))]
    net = gradcheck.check(layers, [6], batch=2, seed=5)
    assert net.output_spec.shape == (2, 1, 2, 6)


def test_grid_scatter_places_each_branch_and_zeros_elsewhere():
    positions = [[0, 0, 0], [1, 1, 0], [1, 0, 0]]
    net = gradcheck.make_net([par([dense(3), dense(3, "sigmoid"), dense(3, "tanh")], "grid_scatter",
                                  grid=grid(2, 2, 1, positions))], [4])
    x = np.random.default_rng(1).normal(size=(5, 4))
    y = net(x)
    outs = branch_outputs(net, x)
    filled = np.zeros((2, 2, 1), dtype=bool)
    for (r, c, l), o in zip(positions, outs):
        assert np.array_equal(y[:, r, c, l], o)
        filled[r, c, l] = True
    assert np.array_equal(y[:, 0, 1, 0], np.zeros((5, 3)))
    assert np.all(y[:, ~filled] == 0) and np.all(y[:, filled] != 0)


# --- filter (soft mixture of experts) --------------------------------------------------------------------

EXPERTS = [dense(3), dense(3, "sigmoid"), {"type": "sequential", "layers": [dense(3, "relu"), dense(3)]}]


def assert_gate_trains(net, prefix="layers.0.gate."):
    grads = {k: g for k, g in net.gradients().items() if k.startswith(prefix)}
    assert grads, f"no gate parameters under {prefix}"
    assert all(np.any(g != 0) for g in grads.values()), {k: float(np.abs(g).max()) for k, g in grads.items()}


def test_filter_default_gate_gradients():
    net = gradcheck.check([par(EXPERTS, "filter")], [4], batch=3, seed=1)
    assert {"layers.0.gate.layers.1.weight", "layers.0.gate.layers.1.bias"} <= set(net.gradients())
    assert_gate_trains(net)
    assert net.config["layers"][0]["gate"] is None  # the default gate is never written back


def test_filter_default_gate_on_rank2_input():
    net = gradcheck.check([par([dense(2), dense(2, "relu")], "filter")], [3, 4], batch=2, seed=2)
    assert net.output_spec.shape == (3, 2)
    assert_gate_trains(net)


def test_filter_custom_gate_gradients():
    gate = {"type": "sequential", "layers": [{"type": "flatten"}, dense(5, "tanh"), dense(3)]}
    net = gradcheck.check([par(EXPERTS, "filter", gate=gate)], [4], batch=3, seed=2)
    assert {"layers.0.gate.layers.1.weight", "layers.0.gate.layers.2.weight"} <= set(net.gradients())
    assert_gate_trains(net)


@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("renormalize", [None, True])
def test_filter_top_k_gradients(k, renormalize):
    net = gradcheck.check([par(EXPERTS, "filter", top_k=k, renormalize=renormalize)], [4], batch=4, seed=3)
    assert {"layers.0.gate.layers.1.weight", "layers.0.gate.layers.1.bias"} <= set(net.gradients())
    if k == 1 and renormalize:
        # renormalized top-1 weighs the winner softmax([s]) = 1 whatever s is: no gradient reaches the gate
        assert all(np.all(g == 0) for k_, g in net.gradients().items() if ".gate." in k_)
    else:
        assert_gate_trains(net)


def _softmax(v):
    e = np.exp(v - v.max())
    return e / e.sum()


@pytest.mark.parametrize("renormalize", [None, True])
def test_filter_top_2_routes_only_to_selected_experts(renormalize):
    net = gradcheck.make_net([par(EXPERTS, "filter", top_k=2, renormalize=renormalize)], [4], seed=3)
    x = np.random.default_rng(7).normal(size=(6, 4))
    y = net(x)
    s = gate_scores(net, x)
    outs = branch_outputs(net, x)
    for b in range(6):
        top = np.argsort(-s[b], kind="stable")[:2]
        # Switch style (default): the kept experts weigh their full-softmax probability; Mixtral style:
        # a softmax over the kept scores only.
        w = _softmax(s[b, top]) if renormalize else _softmax(s[b])[top]
        np.testing.assert_allclose(y[b], w[0] * outs[top[0]][b] + w[1] * outs[top[1]][b], rtol=1e-12)


def test_filter_top_1_output_is_the_selected_branch():
    x = np.random.default_rng(8).normal(size=(16, 4))
    exact = gradcheck.make_net([par(EXPERTS, "filter", top_k=1, renormalize=True)], [4], seed=3)
    switch = gradcheck.make_net([par(EXPERTS, "filter", top_k=1)], [4], seed=3)
    s = gate_scores(exact, x)
    choice = np.argmax(s, axis=1)
    assert len(set(choice.tolist())) > 1  # the batch really exercises more than one expert
    outs = branch_outputs(exact, x)
    y_exact, y_switch = exact(x), switch(x)
    for b, i in enumerate(choice):
        assert np.array_equal(y_exact[b], outs[i][b])
        np.testing.assert_allclose(y_switch[b], _softmax(s[b])[i] * outs[i][b], rtol=1e-12)


def test_filter_top_k_ties_go_to_lower_index():
    # a zero-weight gate scores every branch 0: top_k=1 must pick branch 0 for every sample
    net = gradcheck.make_net([par([dense(3), dense(3, "relu"), dense(3, "sigmoid")], "filter", top_k=1,
                                  renormalize=True)], [4])
    for name, p in net.parameters().items():
        if ".gate." in name:
            p[...] = 0
    x = np.random.default_rng(2).normal(size=(4, 4))
    assert np.array_equal(net(x), branch_outputs(net, x)[0])


def test_filter_unselected_branch_gets_zero_gradient():
    net = gradcheck.make_net([par([dense(3), dense(3), dense(3)], "filter", top_k=1)], [4])
    gate = {k: p for k, p in net.parameters().items() if ".gate." in k}
    gate["layers.0.gate.layers.1.weight"][...] = 0
    gate["layers.0.gate.layers.1.bias"][...] = [0.0, 5.0, 1.0]  # branch 1 always wins
    x = np.random.default_rng(3).normal(size=(5, 4))
    net.zero_grad()
    y = net(x)
    net.backward(np.ones_like(y))
    g = net.gradients()
    assert np.all(g["layers.0.branches.0.weight"] == 0) and np.all(g["layers.0.branches.2.weight"] == 0)
    assert np.any(g["layers.0.branches.1.weight"] != 0)


def test_filter_gate_learns_the_right_branch():
    # branch 0 is the identity, the target; the others are fixed wrong maps. Only the gate trains.
    branches = [{"type": "activation", "fn": "linear"}, {"type": "activation", "fn": "sigmoid"},
                {"type": "activation", "fn": "hard_sigmoid"}]
    net = gradcheck.make_net([par(branches, "filter")], [4], seed=1)
    rng = np.random.default_rng(0)
    x = rng.normal(scale=2.0, size=(32, 4))

    def step():
        net.zero_grad()
        y = net(x)
        loss = float(np.mean((y - x) ** 2))
        net.backward(2 * (y - x) / y.size)
        return loss, float(np.mean(layer0(net).combine.w[:, 0]))

    params, grads = net.parameters(), net.gradients()
    assert set(params) == {"layers.0.gate.layers.1.weight", "layers.0.gate.layers.1.bias"}
    first, w_first = step()
    for _ in range(40):
        loss, w0 = step()
        for name, p in params.items():
            p -= 0.5 * grads[name]
    last, w_last = step()
    assert last < 0.1 * first, (first, last)
    assert w_first < 0.5 and w_last > 0.8, (w_first, w_last)


# --- nesting ---------------------------------------------------------------------------------------------

def test_parallel_inside_residual():
    inner = par([dense(4), {"type": "sequential", "layers": [dense(3, "relu"), dense(4)]}], "add")
    net = gradcheck.check([{"type": "residual", "layers": [inner]}], [4], batch=2, seed=6)
    assert "layers.0.layers.0.branches.1.layers.1.weight" in net.parameters()


def test_parallel_branch_containing_a_parallel():
    inner = par([dense(2), dense(3, "sigmoid")], "concat")
    outer = par([{"type": "sequential", "layers": [dense(5, "tanh"), inner]}, dense(5)], "filter", top_k=2)
    net = gradcheck.check([outer], [4], batch=3, seed=7)
    names = set(net.parameters())
    assert {"layers.0.branches.0.layers.1.branches.1.weight", "layers.0.gate.layers.1.weight"} <= names


# --- dtypes, errors, names, summary ------------------------------------------------------------------------

@pytest.mark.parametrize("combine,extra", [("concat", {}), ("add", {}), ("avg", {}), ("multiply", {}),
                                           ("grid_scatter", {"grid": grid(1, 2, 1, [[0, 1, 0], [0, 0, 0]])}),
                                           ("filter", {"top_k": 1})])
def test_float32_forward_backward(combine, extra):
    cfg = {"loom": 1, "dtype": "float32", "input": {"shape": [2, 4]},
           "layers": [par([dense(3), dense(3, "relu")], combine, **extra)]}
    net = loom.Network.from_config(cfg)
    x = np.random.default_rng(0).normal(size=(3, 2, 4)).astype(np.float32)
    y = net(x)
    assert y.dtype == np.float32 and y.shape == (3,) + net.output_spec.shape
    dx = net.backward(np.ones_like(y))
    assert dx.dtype == np.float32 and dx.shape == x.shape
    assert all(g.dtype == np.float32 for g in net.gradients().values())


def config_error(layers, shape=(4,)):
    with pytest.raises(loom.ConfigError) as err:
        gradcheck.make_net(layers, list(shape))
    return str(err.value)


def test_concat_mismatched_shapes_is_a_config_error():
    msg = config_error([dense(2), par([dense(3), {"type": "reshape", "shape": [1, 2]}], "concat")], (4,))
    assert msg.startswith("layers[1].branches:") and "[[3], [1, 2]]" in msg
    msg = config_error([par([dense(3), {"type": "reshape", "shape": [4, 2]}], "concat")], (2, 4))
    assert msg.startswith("layers[0].branches:") and "[[2, 3], [4, 2]]" in msg


def test_add_different_shapes_is_a_config_error():
    msg = config_error([par([dense(3), dense(4)], "add")])
    assert msg.startswith("layers[0].branches:") and "[[3], [4]]" in msg


def test_grid_scatter_different_sizes_is_a_config_error():
    msg = config_error([par([dense(3), dense(2)], "grid_scatter", grid=grid(1, 2, 1, [[0, 0, 0], [0, 1, 0]]))])
    assert msg.startswith("layers[0].branches:") and "branch 0: [3] = 3" in msg and "branch 1: [2] = 2" in msg


def test_filter_gate_of_wrong_size_is_a_config_error():
    msg = config_error([par([dense(3), dense(3)], "filter", gate=dense(3))])
    assert msg.startswith("layers[0].gate:") and "[2]" in msg and "[3]" in msg


def test_error_inside_a_branch_names_its_path():
    msg = config_error([par([dense(3), {"type": "reshape", "shape": [5]}], "add")])
    assert msg.startswith("layers[0].branches[1].shape:")


def test_parameter_names():
    net = gradcheck.make_net([dense(4), par([dense(2), {"type": "sequential", "layers": [dense(3), dense(2)]}],
                                            "filter")], [3])
    assert list(net.parameters()) == [
        "layers.0.weight", "layers.0.bias",
        "layers.1.branches.0.weight", "layers.1.branches.0.bias",
        "layers.1.branches.1.layers.0.weight", "layers.1.branches.1.layers.0.bias",
        "layers.1.branches.1.layers.1.weight", "layers.1.branches.1.layers.1.bias",
        "layers.1.gate.layers.1.weight", "layers.1.gate.layers.1.bias"]
    assert net.parameters()["layers.1.gate.layers.1.weight"].shape == (2, 4)
    assert set(net.gradients()) == set(net.parameters())


def test_describe():
    net = gradcheck.make_net([par([dense(3), dense(3)], "filter", top_k=1)], [4])
    assert layer0(net).describe() == "combine=filter, 2 branches, gate=default (flatten, dense), top_k=1"
    net = gradcheck.make_net([par([dense(3)], "grid_scatter", grid=grid(2, 3, 1, [[1, 2, 0]]))], [4])
    assert layer0(net).describe() == "combine=grid_scatter, 1 branch, grid=2x3x1"
