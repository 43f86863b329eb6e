"""Network.blueprint() and activity telemetry (loom/nn/blueprint.py, loom/nn/telemetry.py): the
blueprint agrees with parameters() and the layer specs, nested branches and grid cells included;
telemetry's statistics are NumPy's on the same activations, its gradient norms NumPy's on the same
gradients; recording leaves the training bits alone; the JSON round-trips; bad input is a typed error."""
import json
import math

import numpy as np
import pytest

import loom
from loom.errors import ConfigError, FormatError, LoomError
from loom.nn import blueprint as bp
from loom.nn import hooks
from loom.nn import telemetry as tm
from loom.nn.telemetry import Telemetry

GRID = {"rows": 2, "cols": 3, "layers": 2, "positions": [[0, 0, 0], [1, 2, 1], [0, 1, 1]]}
CFG = {"loom": 1, "name": "nested", "seed": 5, "input": {"shape": [2, 3]},
       "layers": [{"type": "parallel", "combine": "grid_scatter", "grid": GRID,
                   "branches": [{"type": "sequential", "layers": [{"type": "flatten"},
                                                                  {"type": "dense", "units": 4, "activation": "relu"}]},
                                {"type": "lstm", "hidden": 4},
                                {"type": "sequential", "layers": [{"type": "flatten"}, {"type": "dense", "units": 4}]}]},
                  {"type": "flatten"},
                  {"type": "batch_norm"},
                  {"type": "dropout", "rate": 0.25},
                  {"type": "parallel", "combine": "filter", "top_k": 1,
                   "branches": [{"type": "dense", "units": 6, "activation": "relu"},
                                {"type": "residual", "layers": [{"type": "dense", "units": 48, "activation": "tanh"}]}]},
                  {"type": "dense", "units": 3}]}
CFG["layers"][4]["branches"][0]["units"] = 48          # filter branches share one shape


def data(n=40):
    rng = np.random.default_rng(1)
    return rng.normal(size=(n, 2, 3)).astype(np.float32), rng.integers(0, 3, size=n)


# --- blueprint ---------------------------------------------------------------------------------------

def test_blueprint_matches_parameters_specs_and_grid():
    net = loom.Network.from_config(CFG)
    doc = net.blueprint()
    assert json.loads(json.dumps(doc)) == doc                       # plain JSON types only
    assert doc["loom_blueprint"] == 1 and doc["name"] == "nested" and doc["dtype"] == "float32"
    assert doc["input"] == {"shape": [2, 3], "dtype": "float32"} and doc["output"] == {"shape": [3], "dtype": "float32"}
    flat = bp.layers(doc)
    walked = {p: layer for p, layer in net.root.walk() if p}
    assert [e["path"] for e in flat] == list(walked)               # every nested layer, in build order
    for e in flat:
        layer = walked[e["path"]]
        assert e["type"] == layer.type
        assert e["input"] == {"shape": list(layer.in_spec.shape), "dtype": layer.in_spec.dtype}
        assert e["output"] == {"shape": list(layer.out_spec.shape), "dtype": layer.out_spec.dtype}
        assert e["param_count"] == layer.param_count()
    params = net.parameters()
    listed = {t["name"]: t for e in flat for t in e["params"]}
    assert list(listed) == list(params)                             # the same names, in the same order
    for name, t in listed.items():
        assert t["shape"] == list(params[name].shape) and t["dtype"] == str(params[name].dtype)
        assert t["count"] == params[name].size and t["trainable"] is True
    assert doc["param_count"] == doc["trainable_count"] == sum(p.size for p in params.values())
    assert doc["param_bytes"] == sum(p.nbytes for p in params.values())
    grid = next(e for e in flat if e["path"] == "layers.0")
    assert grid["grid"] == {"rows": 2, "cols": 3, "layers": 2}
    assert [c["grid_position"] for c in grid["children"]] == GRID["positions"]
    assert [c["path"] for c in grid["children"]] == ["layers.0.branches.0", "layers.0.branches.1", "layers.0.branches.2"]
    assert not any("grid_position" in e for e in flat if not e["path"].startswith("layers.0.branches."))
    gate = next(e for e in flat if e["path"] == "layers.4.gate")    # the default gate, built by the filter
    assert [c["type"] for c in gate["children"]] == ["flatten", "dense"]
    norm = next(e for e in flat if e["path"] == "layers.2")
    assert [b["name"] for b in norm["buffers"]] == ["layers.2.running_mean", "layers.2.running_var",
                                                    "layers.2.num_batches_tracked"]
    assert loom.Network.from_config(CFG).blueprint() == doc        # deterministic


def test_blueprint_of_a_quantized_network_names_storage_dtypes():
    cfg = {"loom": 1, "input": {"shape": [8]}, "layers": [{"type": "dense", "units": 4}]}
    q = loom.Network.from_config(cfg).quantize("int8")
    doc = q.blueprint()
    weight, bias = doc["layers"][0]["params"]
    assert weight["dtype"] == "int8" and weight["trainable"] is False and weight["shape"] == [4, 8]
    assert bias["dtype"] == "float32"
    assert doc["quantization"] == {"dtype": "int8", "per": "channel"}
    assert doc["param_count"] == 36 and doc["param_bytes"] == sum(p.nbytes for p in q.parameters().values())


# --- telemetry values ----------------------------------------------------------------------------------

def _captured(net, x):
    """Each layer's output of one forward of x, copied (through the same hook mechanism)."""
    seen = {}

    def keep(path, layer, inp, out):
        seen.setdefault(path, np.array(out, copy=True))
    with hooks.forward_hooks([(p, layer) for p, layer in net.root.walk() if p], keep):
        y = net(x)
    return seen, y


def test_statistics_and_gradient_norms_are_numpys():
    net = loom.Network.from_config(CFG)
    x, _ = data(8)
    tel = Telemetry(net)
    with tel.step():
        y = net(x)
        net.backward(np.ones_like(y))
    outs, y2 = _captured(net, x)                     # eval mode: the same forward again
    assert np.array_equal(y, y2)
    doc = tel.to_dict()
    assert doc["steps"] == [0] and doc["epoch"] == [None]
    for path, out in outs.items():
        entry = doc["activations"][path]
        v = out.astype(np.float64).ravel()
        assert entry["type"] == dict(net.root.walk())[path].type and entry["count"] == [v.size]
        mean = math.fsum(v.tolist()) / v.size                          # exact sums: correctly rounded
        assert entry["mean"][0] == mean
        assert entry["std"][0] == pytest.approx(float(np.std(v)), rel=1e-12, abs=1e-15)
        assert entry["min"][0] == float(v.min()) and entry["max"][0] == float(v.max())
        assert entry["zero_fraction"][0] == np.count_nonzero(v == 0) / v.size
    assert doc["activations"]["layers.0.branches.0.layers.1"]["zero_fraction"][0] > 0   # relu
    grads = net.gradients()
    assert list(doc["gradients"]) == list(grads)
    for name, g in grads.items():
        g64 = g.astype(np.float64).ravel()
        assert doc["gradients"][name][0] == math.sqrt(math.fsum((g64 * g64).tolist()))
        assert doc["gradients"][name][0] == pytest.approx(float(np.linalg.norm(g64)), rel=1e-12)


def test_only_the_steps_inside_a_block_are_recorded_and_hooks_are_removed():
    net = loom.Network.from_config(CFG)
    x, _ = data(4)
    tel = Telemetry(net, layers=["layers.5", "layers.0.branches.1"], gradients=False)
    net(x)                                             # outside a step: nothing
    with tel.step(7, epoch=1, batch=2):
        net(x)
        net(x * 2)                                     # a second forward: the first one is kept
    assert all("forward" not in layer.__dict__ for _, layer in net.root.walk())
    assert "backward" not in net.__dict__
    doc = tel.to_dict()
    assert doc["steps"] == [7] and doc["epoch"] == [1] and doc["batch"] == [2]
    assert list(doc["activations"]) == ["layers.0.branches.1", "layers.5"]       # build order
    assert doc["gradients"] == {}
    outs, _ = _captured(net, x)
    assert doc["activations"]["layers.5"]["max"] == [float(outs["layers.5"].max())]
    with pytest.raises(RuntimeError):
        with tel.step():
            net(x)
            raise RuntimeError("boom")
    assert len(tel) == 1 and all("forward" not in layer.__dict__ for _, layer in net.root.walk())
    with tel.step():                                   # default index: one past the last
        net(x)
    assert tel.to_dict()["steps"] == [7, 8]


def test_check_finite_inside_a_recorded_step_keeps_both_hooks():
    net = loom.Network.from_config(CFG)
    x, _ = data(4)
    tel = Telemetry(net)
    with tel.step():
        assert net.check_finite(x) is None            # its own hooks come and go inside ours
        assert all("forward" in layer.__dict__ for p, layer in net.root.walk() if p)
        net(x)
    assert all("forward" not in layer.__dict__ for _, layer in net.root.walk())
    assert tel.to_dict()["activations"]["layers.5"]["count"] == [12]


def test_integer_outputs_are_not_summarized():
    cfg = {"loom": 1, "input": {"shape": [3], "dtype": "int64"},
           "layers": [{"type": "flatten"}, {"type": "embedding", "vocab_size": 5, "dim": 2}, {"type": "dense", "units": 1}]}
    net = loom.Network.from_config(cfg)
    tel = Telemetry(net)
    with tel.step():
        net(np.array([[0, 1, 4]]))
    acts = tel.to_dict()["activations"]
    assert acts["layers.0"]["mean"] == [None] and acts["layers.0"]["count"] == [None]
    assert acts["layers.1"]["count"] == [6]


# --- training -----------------------------------------------------------------------------------------

def _train(telemetry, **kw):
    net = loom.Network.from_config(CFG)
    X, Y = data()
    history = loom.train(net, X, Y, epochs=2, batch_size=8, verbose=False, telemetry=telemetry, **kw)
    return net, history


def test_training_bits_are_the_same_with_telemetry():
    plain, h0 = _train(None, optimizer={"type": "adam", "lr": 0.01, "clip_norm": 0.5})
    watched, h1 = _train(True, optimizer={"type": "adam", "lr": 0.01, "clip_norm": 0.5})
    assert h0.telemetry is None and h0["loss"] == h1["loss"]
    for name, value in plain.state_dict().items():
        assert value.tobytes() == watched.state_dict()[name].tobytes(), name
    assert plain.rng_counter == watched.rng_counter
    doc = h1.telemetry.to_dict()
    assert doc["steps"] == list(range(10)) and doc["epoch"] == [0] * 5 + [1] * 5 and doc["batch"] == [0, 1, 2, 3, 4] * 2
    norms = np.array(doc["gradients"]["layers.5.weight"])
    assert np.all(norms > 0)


def test_every_n_steps_and_the_json_file(tmp_path):
    path = tmp_path / "telemetry.json"
    _, history = _train({"every": 3, "path": str(path), "layers": ["layers.5"]})
    on_disk = json.loads(path.read_text())
    assert on_disk == history.telemetry.to_dict()
    assert on_disk["steps"] == [0, 3, 6, 9] and on_disk["every"] == 3 and on_disk["network"] == "nested"
    assert list(on_disk["activations"]) == ["layers.5"]
    assert tm.check(on_disk) is on_disk
    steps, values = tm.series(on_disk, "layers.5", "std")
    assert steps.tolist() == [0, 3, 6, 9] and values.dtype == np.float64 and np.all(values > 0)
    _, norms = tm.series(on_disk, "layers.5.bias", "norm")
    assert norms.shape == (4,)
    assert Telemetry(loom.Network.from_config(CFG), every=3).due(6) and not Telemetry(
        loom.Network.from_config(CFG), every=3).due(7)


def test_a_telemetry_object_and_a_path_are_taken(tmp_path):
    net = loom.Network.from_config(CFG)
    X, Y = data()
    tel = Telemetry(net, every=4, gradients=False)
    history = loom.train(net, X, Y, epochs=1, batch_size=8, verbose=False, telemetry=tel)
    assert history.telemetry is tel and tel.to_dict()["steps"] == [0, 4]
    _, history = _train(tmp_path / "t.json")
    assert json.loads((tmp_path / "t.json").read_text())["steps"] == list(range(10))


def test_json_round_trip_keeps_nan_as_null(tmp_path):
    net = loom.Network.from_config({"loom": 1, "input": {"shape": [2]}, "layers": [{"type": "dense", "units": 2}]})
    tel = Telemetry(net)
    with tel.step():
        net(np.array([[np.nan, 1.0]], np.float32))
    tel.to_json(tmp_path / "t.json")
    loaded = json.loads((tmp_path / "t.json").read_text())
    assert loaded == tel.to_dict() and loaded["activations"]["layers.0"]["mean"] == [None]
    assert np.isnan(tm.series(loaded, "layers.0")[1][0])


# --- errors -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, where", [
    ({"layers": ["layers.0", "layers.9"]}, "telemetry.layers[1]"),
    ({"layers": "layers.0"}, "telemetry.layers"),
    ({"every": 0}, "telemetry.every"),
    ({"every": True}, "telemetry.every"),
    ({"gradients": "yes"}, "telemetry.gradients"),
])
def test_bad_options_name_the_option(kwargs, where):
    with pytest.raises(ConfigError) as info:
        Telemetry(loom.Network.from_config(CFG), **kwargs)
    assert info.value.path == where


@pytest.mark.parametrize("setting, where", [
    ({"every": 2, "bogus": 1}, "telemetry.bogus"),
    (1.5, "telemetry"),
    ({"path": 3}, "telemetry.path"),
    ({"layers": ["nope"]}, "telemetry.layers[0]"),
    (-1, "telemetry.every"),
])
def test_bad_train_settings_are_config_errors(setting, where):
    with pytest.raises(ConfigError) as info:
        _train(setting)
    assert info.value.path == where


def test_misuse_is_a_typed_error():
    net = loom.Network.from_config(CFG)
    with pytest.raises(ConfigError, match="another network"):
        _train(Telemetry(net))
    tel = Telemetry(net)
    with tel.step():
        with pytest.raises(ConfigError, match="still being recorded"):
            with tel.step():
                pass
    with pytest.raises(ConfigError):
        with tel.step(-1):
            pass
    doc = tel.to_dict()
    with pytest.raises(ConfigError):
        tm.series(doc, "layers.9")
    with pytest.raises(ConfigError):
        tm.series(doc, "layers.0", "median")
    for bad in ([1, 2], {"loom_telemetry": 2}, {**doc, "steps": "0"},
                {**doc, "activations": {"layers.0": {"mean": [1.0]}}}, {**doc, "gradients": {"w": ["a"]}}):
        with pytest.raises(FormatError):
            tm.check(bad)


def test_plot_writes_a_png_or_names_the_extra(tmp_path):
    net = loom.Network.from_config(CFG)
    tel = Telemetry(net)
    x, _ = data(4)
    for _ in range(2):
        with tel.step():
            y = net(x)
            net.backward(np.ones_like(y))
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        with pytest.raises(LoomError, match=r"loom\[plot\]"):
            tm.plot(tel.to_dict(), tmp_path / "a.png")
        return
    tm.plot(tel.to_dict(), tmp_path / "a.png")
    assert (tmp_path / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(FormatError, match="no recorded steps"):
        tm.plot(Telemetry(net).to_dict(), tmp_path / "b.png")
