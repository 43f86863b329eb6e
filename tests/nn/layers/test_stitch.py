"""stitch: heterogeneous experts (a 5-wide and a 7-wide branch) projected to one width and combined by
every combine mode: gradients, training, bit-identical save/load, parameter names, config errors.
The catalogue samples ("stitch", "stitch/filter") take it through the generic layer tests too."""
import gradcheck
import numpy as np
import pytest

import loom
from loom import config as C

FIVE = {"type": "dense", "units": 5, "activation": "tanh"}
SEVEN = {"type": "sequential", "layers": [{"type": "dense", "units": 6, "activation": "tanh"},
                                          {"type": "dense", "units": 7}]}
WIDTH = 4
COMBINE_KEYS = {"concat": {}, "add": {}, "avg": {}, "multiply": {},
                "grid_scatter": {"grid": {"rows": 2, "cols": 1, "positions": [[1, 0, 0], [0, 0, 0]]}},
                "filter": {"top_k": 1}}


def stitch(combine, branches=(FIVE, SEVEN), **keys):
    return {"type": "stitch", "width": WIDTH, "combine": combine, "branches": list(branches),
            **COMBINE_KEYS[combine], **keys}


def net_of(layers, shape=(6,), dtype="float64", seed=0):
    return loom.Network.from_config({"loom": 1, "dtype": dtype, "seed": seed, "input": {"shape": list(shape)},
                                     "layers": layers})


def test_combine_keys_cover_every_mode():
    assert set(COMBINE_KEYS) == set(C.COMBINE_MODES)


# --- gradients ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("combine", C.COMBINE_MODES)
def test_gradients_of_every_combine_mode(combine):
    keys = {"top_k": 2} if combine == "filter" else {}
    gradcheck.check([stitch(combine, **keys)], [6], batch=3, seed=1)


@pytest.mark.parametrize("bias", [True, False])
def test_gradients_over_a_sequence_without_bias(bias):
    lstm = {"type": "lstm", "hidden": 5, "return_sequences": True}
    net = gradcheck.check([stitch("avg", (lstm, {"type": "dense", "units": 7}), bias=bias)], [3, 2], batch=2)
    assert net.output_spec.shape == (3, WIDTH)
    assert ("layers.0.projections.0.bias" in net.parameters()) == bias


@pytest.mark.parametrize("input_grad", [True, False])
def test_frozen_experts_leave_the_projection_gradients_unchanged(input_grad):
    """With the experts frozen only the projections (and gate) get gradients, the same as unfrozen."""
    x = np.random.default_rng(4).normal(size=(3, 6))
    grads = []
    for freeze in (False, True):
        net = net_of([stitch("filter")])
        if freeze:
            net.freeze("layers.0.branches.*")
        y = net(x)
        net.zero_grad()
        dx = net.backward(np.cos(y), input_grad=input_grad)
        assert (dx is not None) == input_grad
        grads.append(net.gradients())
    assert set(grads[1]) == {k for k in grads[0] if ".branches." not in k}
    for k, g in grads[1].items():
        assert np.array_equal(g, grads[0][k]), k


def test_forward_is_each_branch_projected_then_combined():
    net = net_of([stitch("add")])
    x = np.random.default_rng(0).normal(size=(3, 6))
    p = net.parameters()
    h = np.tanh(x @ p["layers.0.branches.0.weight"].T + p["layers.0.branches.0.bias"])
    g = np.tanh(x @ p["layers.0.branches.1.layers.0.weight"].T + p["layers.0.branches.1.layers.0.bias"])
    g = g @ p["layers.0.branches.1.layers.1.weight"].T + p["layers.0.branches.1.layers.1.bias"]
    want = (h @ p["layers.0.projections.0.weight"].T + p["layers.0.projections.0.bias"]
            + g @ p["layers.0.projections.1.weight"].T + p["layers.0.projections.1.bias"])
    np.testing.assert_allclose(net(x), want, rtol=1e-12, atol=1e-12)


# --- output shapes, parameter names, config -----------------------------------------------------------

@pytest.mark.parametrize("combine, shape", [("concat", (8,)), ("add", (4,)), ("avg", (4,)), ("multiply", (4,)),
                                            ("grid_scatter", (2, 1, 1, 4)), ("filter", (4,))])
def test_output_shapes(combine, shape):
    assert net_of([stitch(combine)]).output_spec.shape == shape


def test_parameter_names_and_shapes_follow_torch_linear():
    shapes = {k: tuple(v.shape) for k, v in net_of([stitch("filter")]).parameters().items()}
    assert shapes["layers.0.projections.0.weight"] == (WIDTH, 5)
    assert shapes["layers.0.projections.1.weight"] == (WIDTH, 7)
    assert shapes["layers.0.projections.1.bias"] == (WIDTH,)
    names = list(shapes)
    # branches, then projections, then the gate: PyTorch's registration order
    assert names.index("layers.0.branches.1.layers.1.bias") < names.index("layers.0.projections.0.weight")
    assert names.index("layers.0.projections.1.bias") < names.index("layers.0.gate.layers.1.weight")


def test_config_keeps_the_stitch_as_written():
    cfg = net_of([stitch("add", bias=False)]).config["layers"][0]
    assert list(cfg) == ["type", "branches", "width", "bias", "combine", "grid", "gate", "top_k", "renormalize"]
    assert cfg["width"] == WIDTH and cfg["bias"] is False


@pytest.mark.parametrize("width", [0, -3, 2.5, "4", True, None])
def test_bad_width_is_a_config_error_naming_the_value(width):
    with pytest.raises(loom.ConfigError, match=r"expected a positive integer, got") as exc:
        net_of([{**stitch("add"), "width": width}])
    assert exc.value.path == "layers[0].width"


@pytest.mark.parametrize("missing", ["branches", "width"])
def test_missing_key_is_a_config_error(missing):
    layer = {k: v for k, v in stitch("add").items() if k != missing}
    with pytest.raises(loom.ConfigError, match="missing required key for layer type stitch") as exc:
        net_of([layer])
    assert exc.value.path == f"layers[0].{missing}"


@pytest.mark.parametrize("layer, path, match", [
    ({"type": "stitch", "width": 2, "branches": []}, "layers[0].branches", "at least 1"),
    ({"type": "stitch", "width": 2, "combine": "add", "branches": [FIVE], "gate": FIVE}, "layers[0].gate",
     "only combine filter takes gate"),
    ({"type": "stitch", "width": 2, "combine": "filter", "branches": [FIVE], "top_k": 2}, "layers[0].top_k",
     "exceeds the 1 branches"),
    ({"type": "stitch", "width": 2, "combine": "grid_scatter", "branches": [FIVE]}, "layers[0].grid", "needs a grid"),
    ({"type": "stitch", "width": 2, "branches": [FIVE], "units": 3}, "layers[0].units", "unknown key"),
])
def test_combine_rules_are_parallels(layer, path, match):
    with pytest.raises(loom.ConfigError, match=match) as exc:
        net_of([layer])
    assert exc.value.path == path


def test_branches_whose_other_axes_differ_are_a_config_error():
    flat = {"type": "sequential", "layers": [{"type": "flatten"}, FIVE]}
    with pytest.raises(loom.ConfigError, match=r"other axes.*\[\[3, 5\], \[5\]\]") as exc:
        net_of([stitch("add", (FIVE, flat))], shape=(3, 2))
    assert exc.value.path == "layers[0].branches"


def test_integer_branch_output_is_a_config_error_naming_the_branch():
    ids = {"type": "flatten"}
    with pytest.raises(loom.ConfigError, match="branch 1 outputs int64") as exc:
        loom.Network.from_config({"loom": 1, "input": {"shape": [3], "dtype": "int64"}, "layers": [
            stitch("add", ({"type": "embedding", "vocab_size": 10, "dim": 2}, ids))]})
    assert exc.value.path == "layers[0].branches[1]"


def test_description_names_the_width_and_the_mode():
    layer = net_of([stitch("filter", bias=False)]).root.children["layers.0"]
    assert layer.describe() == "width=4 (no bias), combine=filter, 2 branches, gate=default (flatten, dense), top_k=1"


# --- heterogeneous experts trained, saved and loaded ---------------------------------------------------

def _data(n=64):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    y = np.stack([np.sin(x[:, 0] + x[:, 1]), x[:, 2] * x[:, 3] - x[:, 4]], axis=1).astype(np.float32)
    return x, y


@pytest.mark.parametrize("combine", C.COMBINE_MODES)
def test_five_and_seven_wide_experts_train_and_reload_bit_identically(tmp_path, combine):
    layers = [stitch(combine), {"type": "flatten"}, {"type": "dense", "units": 2}]
    net = net_of(layers, dtype="float32", seed=2)
    x, y = _data()
    history = loom.train(net, x, y, loss="mse", optimizer={"type": "adam", "lr": 0.01}, epochs=6, batch_size=16,
                         verbose=False)
    losses = history["loss"]
    assert losses[-1] < 0.8 * losses[0], losses
    net.save(tmp_path / "stitch.loom")
    back = loom.load(tmp_path / "stitch.loom")
    assert back.config == net.config
    for k, v in net.state_dict().items():
        assert back.state_dict()[k].tobytes() == v.tobytes(), k
    assert np.array_equal(back(x), net(x))
    # the loaded network trains on exactly as the original does
    for n in (net, back):
        n.zero_grad()
        n.backward(n(x[:8]) - y[:8])
    for k, g in net.gradients().items():
        assert back.gradients()[k].tobytes() == g.tobytes(), k


def test_projections_are_quantized_and_qat_trained_like_dense():
    layers = [stitch("avg"), {"type": "dense", "units": 2}]
    cfg = {"loom": 1, "input": {"shape": [6]}, "layers": layers, "qat": {"dtype": "int8"}}
    net = loom.Network.from_config(cfg)
    x, y = _data()
    history = loom.train(net, x, y, loss="mse", optimizer={"type": "adam", "lr": 0.01}, epochs=4, batch_size=16,
                         verbose=False)
    assert history["loss"][-1] < history["loss"][0]
    q = net.quantize("int8")
    assert q.state_dict()["layers.0.projections.1.weight"].dtype == "int8"
    # the same integer arithmetic as the QAT forward: only the final scaling's float rounding differs
    np.testing.assert_allclose(q(x), net(x), rtol=1e-4, atol=1e-4)
