"""The public Network API: parameters, gradients, modes, input checks, NaN handling, reproducible init."""
import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest

import loom

CFG = {"loom": 1, "name": "t", "seed": 3, "input": {"shape": [4]},
       "layers": [{"type": "dense", "units": 5, "activation": "tanh"},
                  {"type": "residual", "layers": [{"type": "dense", "units": 5}]},
                  {"type": "dense", "units": 2}]}


def x(batch=3, dtype=np.float32):
    return np.random.default_rng(0).normal(size=(batch, 4)).astype(dtype)


def test_parameters_are_live_and_named():
    net = loom.Network.from_config(CFG)
    params = net.parameters()
    assert list(params) == ["layers.0.weight", "layers.0.bias", "layers.1.layers.0.weight",
                            "layers.1.layers.0.bias", "layers.2.weight", "layers.2.bias"]
    assert params["layers.0.weight"].shape == (5, 4)      # PyTorch layout [out, in]
    y = net(x())
    params["layers.2.bias"][...] += 1
    assert np.allclose(net(x()), y + 1)
    assert list(net.gradients()) == list(params)


def test_backward_accumulates_until_zero_grad():
    net = loom.Network.from_config(CFG)
    dy = np.ones((3, 2), np.float32)
    net(x())
    net.backward(dy)
    once = {k: v.copy() for k, v in net.gradients().items()}
    net(x())
    net.backward(dy)
    for k, g in net.gradients().items():
        np.testing.assert_allclose(g, 2 * once[k], rtol=1e-6)
    net.zero_grad()
    assert all(not g.any() for g in net.gradients().values())


def test_call_is_forward_and_config_is_a_copy():
    net = loom.Network.from_config(CFG)
    assert np.array_equal(net(x()), net.forward(x()))
    cfg = net.config
    cfg["layers"][0]["units"] = 99
    assert net.config["layers"][0]["units"] == 5


def test_seed_argument_overrides_config():
    a = loom.Network.from_config(CFG)
    b = loom.Network.from_config(CFG, seed=4)
    assert b.config["seed"] == 4
    assert not np.array_equal(a.parameters()["layers.0.weight"], b.parameters()["layers.0.weight"])
    c = loom.Network.from_config({**CFG, "seed": 4})
    assert all(np.array_equal(v, c.parameters()[k]) for k, v in b.parameters().items())


def test_wrong_input_shape_or_dtype():
    net = loom.Network.from_config(CFG)
    with pytest.raises(loom.ShapeError, match=r"input has shape \[3, 5\], expected \[batch, 4\]"):
        net(np.zeros((3, 5), np.float32))
    with pytest.raises(loom.ShapeError, match=r"expected \[batch, 4\]"):
        net(np.zeros(4, np.float32))
    with pytest.raises(loom.ShapeError, match="input has dtype float64, expected float32"):
        net(np.zeros((3, 4)))
    with pytest.raises(loom.ShapeError, match="backward: dy has shape"):
        net(x())
        net.backward(np.zeros((3, 3), np.float32))
    with pytest.raises(loom.ShapeError, match="backward\\(\\) needs a forward"):
        loom.Network.from_config(CFG).backward(np.zeros((3, 2), np.float32))


@pytest.mark.filterwarnings("ignore:overflow encountered", "ignore:invalid value encountered")
def test_nan_and_inf_propagate_and_check_finite_finds_the_first_layer():
    net = loom.Network.from_config(CFG)
    bad = x()
    bad[1, 2] = np.nan
    y = net(bad)
    assert np.isnan(y[1]).all() and np.isfinite(y[[0, 2]]).all()     # no clamping, no spreading across samples
    assert net.check_finite(x()) is None
    report = net.check_finite(bad)
    assert (report.where, report.type) == ("input", "input")
    net.parameters()["layers.1.layers.0.weight"][0, 0] = np.inf
    report = net.check_finite(x())
    assert (report.where, report.type) == ("layers.1.layers.0.weight", "parameter")


@pytest.mark.filterwarnings("ignore:overflow encountered", "ignore:invalid value encountered")
def test_check_finite_names_the_layer_that_overflowed():
    net = loom.Network.from_config(CFG)
    net.parameters()["layers.1.layers.0.weight"][...] = 3e38
    big = np.full((2, 4), 5.0, np.float32)
    report = net.check_finite(big)
    assert report.where == "layers.1.layers.0" and report.type == "dense" and report.inf > 0
    assert "layers.1.layers.0 (dense) produced" in str(report)
    assert not hasattr(net.root.children["layers.0"], "__dict__") or "forward" not in net.root.children["layers.0"].__dict__


def test_summary_and_repr():
    net = loom.Network.from_config(CFG)
    s = net.summary()
    assert "layers.1.layers.0" in s and "residual" in s and "total parameters: 67" in s
    assert "params=67" in repr(net)


def test_state_dict_round_trip_and_errors():
    a = loom.Network.from_config(CFG)
    b = loom.Network.from_config(CFG, seed=9)
    b.load_state_dict(a.state_dict())
    assert np.array_equal(a(x()), b(x()))
    with pytest.raises(loom.ShapeError, match="missing"):
        b.load_state_dict({"layers.0.weight": a.parameters()["layers.0.weight"]})
    with pytest.raises(loom.ShapeError, match=r"layers.0.bias: shape \[4\] does not match the network's \[5\]"):
        b.load_state_dict({**a.state_dict(), "layers.0.bias": np.zeros(4)})


def test_cuda_is_reported_unavailable_clearly():
    net = loom.Network.from_config(CFG)
    with pytest.raises(loom.BackendError, match="cuda"):
        net.to("cuda")
    assert net.to("cpu") is net


def test_info():
    info = loom.info()
    assert info["loom"] == loom.__version__ and info["devices"]["cpu"] == "ok"
    assert "dense" in info["layer_types"] and len(info["softmax_variants"]) == 10


def _weights_digest(cfg_json: str) -> str:
    net = loom.Network.from_config(cfg_json)
    h = hashlib.sha256()
    for name, p in net.state_dict().items():
        h.update(name.encode())
        h.update(np.ascontiguousarray(p).tobytes())
    return h.hexdigest()


def test_same_config_and_seed_give_identical_weights_in_another_process():
    from catalogue import SAMPLES, config
    cfgs = [json.dumps(config(layers, shape, idt)) for _, layers, shape, idt in SAMPLES]
    here = [_weights_digest(c) for c in cfgs]
    code = ("import json, sys; sys.path.insert(0, 'tests'); from nn.test_network import _weights_digest;"
            "print(json.dumps([_weights_digest(c) for c in json.load(sys.stdin)]))")
    out = subprocess.run([sys.executable, "-c", code], input=json.dumps(cfgs), capture_output=True, text=True,
                         check=True, cwd=__file__.rsplit("/tests/", 1)[0])
    assert json.loads(out.stdout) == here


@pytest.mark.parametrize("first", [{"type": "dense", "units": 4, "activation": "relu"},
                                   {"type": "conv1d", "filters": 2, "kernel_size": 2}])
def test_backward_without_input_grad_gives_the_same_parameter_gradients(first):
    shape = [4] if first["type"] == "dense" else [2, 4]
    net = loom.Network.from_config({"loom": 1, "input": {"shape": shape},
                                    "layers": [first, {"type": "flatten"}, {"type": "dense", "units": 3}]})
    x = np.random.default_rng(0).normal(size=(5, *shape)).astype(np.float32)
    dy = np.ones((5, 3), np.float32)
    net(x)
    assert net.backward(dy).shape == x.shape
    full = {k: g.copy() for k, g in net.gradients().items()}
    net.zero_grad()
    net(x)
    assert net.backward(dy, input_grad=False) is None
    assert all(np.array_equal(g, full[k]) for k, g in net.gradients().items())
    net(x)
    assert net.backward(dy) is not None          # the switch applies to one call only
