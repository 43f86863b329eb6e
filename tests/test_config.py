"""Config format v1: canonical round trip of every sample, defaults, and one test per error class."""
import json

import pytest
from catalogue import SAMPLES, config

import loom
from loom import config as C
from loom.nn.layers import REGISTRY


def test_catalogue_covers_every_type_variant_and_mode():
    names = {name for name, *_ in SAMPLES}
    assert {n for n in names if "/" not in n} | {"softmax", "parallel"} == set(C.LAYER_KEYS)
    assert set(REGISTRY) == set(C.LAYER_KEYS)
    assert {n.split("/")[1] for n in names if n.startswith("softmax/")} == set(C.SOFTMAX_VARIANTS)
    assert {n.split("/")[1] for n in names if n.startswith("parallel/")} == set(C.COMBINE_MODES)


@pytest.mark.parametrize("name, layers, shape, idt", SAMPLES, ids=[s[0] for s in SAMPLES])
def test_round_trip_is_canonical(name, layers, shape, idt):
    cfg = config(layers, shape, idt)
    text = C.dumps(cfg)
    assert C.dumps(C.loads(text)) == text
    assert C.loads(text) == C.validate(cfg) == C.validate(C.validate(cfg))
    net = loom.Network.from_config(text)
    assert C.dumps(net.config) == text
    assert loom.Network.from_config(net.config).config == net.config


def test_defaults_are_filled_and_keys_ordered():
    cfg = C.validate({"loom": 1, "input": {"shape": [4]}, "layers": [{"units": 3, "type": "dense"}]})
    assert cfg == {"loom": 1, "name": "network", "seed": 0, "dtype": "float32",
                   "input": {"shape": [4], "dtype": "float32"},
                   "layers": [{"type": "dense", "units": 3, "activation": "linear", "bias": True}]}
    assert list(cfg["layers"][0]) == ["type", "units", "activation", "bias"]
    assert C.validate({"loom": 1, "input": {"shape": [4]},
                       "layers": [{"type": "softmax", "temperature": 2}]})["layers"][0] == \
        {"type": "softmax", "variant": "standard", "temperature": 2.0}


def test_load_accepts_dict_string_and_path(tmp_path):
    cfg = config([{"type": "dense", "units": 2}], [3])
    path = tmp_path / "net.json"
    path.write_text(C.dumps(cfg))
    assert C.load(cfg) == C.load(C.dumps(cfg)) == C.load(str(path)) == C.load(path)
    with pytest.raises(loom.ConfigError, match="cannot read config file"):
        C.load(str(tmp_path / "missing.json"))


def _layers(*layers):
    return {"loom": 1, "input": {"shape": [4]}, "layers": list(layers)}


D = {"type": "dense", "units": 2}


@pytest.mark.parametrize("cfg, message", [
    # non-positive and mistyped sizes
    (_layers(D, D, D, {"type": "dense", "units": -4}), "layers[3].units: expected a positive integer, got -4"),
    (_layers({"type": "dense", "units": 0}), "layers[0].units: expected a positive integer, got 0"),
    (_layers({"type": "dense", "units": "8"}), 'layers[0].units: expected a positive integer, got "8"'),
    (_layers({"type": "dense", "units": True}), "layers[0].units: expected a positive integer, got true"),
    (_layers({"type": "dense", "units": 2.5}), "layers[0].units: expected a positive integer, got 2.5"),
    (_layers({"type": "dropout", "rate": 1.0}), "layers[0].rate: expected a number in [0, 1)"),
    (_layers({"type": "conv1d", "filters": 2, "kernel_size": [3, 0]}), "layers[0].kernel_size[1]: expected a positive integer, got 0"),
    # unknown keys and types
    (_layers({"type": "dense", "units": 2, "unitz": 3}), "layers[0].unitz: unknown key for layer type dense"),
    (_layers({"type": "denser", "units": 2}), 'layers[0].type: unknown layer type "denser"'),
    (_layers({"type": "softmax", "variant": "fancy"}), 'layers[0].variant: unknown softmax variant "fancy"'),
    (_layers({"type": "softmax", "rows": 2}), "layers[0].rows: unknown key for softmax variant standard"),
    (_layers({"type": "activation", "fn": "swishy"}), 'layers[0].fn: expected one of'),
    ({"loom": 1, "input": {"shape": [4]}, "layers": [D], "extra": 1}, "extra: unknown key for a network config"),
    # missing keys, bad nesting
    (_layers({"units": 2}), "layers[0].type: missing required key"),
    (_layers({"type": "dense"}), "layers[0].units: missing required key for layer type dense"),
    ({"loom": 1, "input": {"shape": [4]}}, "layers: missing required key"),
    (_layers(), "layers: expected at least 1 entries, got 0"),
    ({"loom": 1, "input": {"shape": [4]}, "layers": D}, "layers: expected a list"),
    (_layers({"type": "residual", "layers": [D, 3]}), "layers[0].layers[1]: expected a layer object, got 3"),
    (_layers({"type": "parallel", "branches": [{"type": "sequential", "layers": [{"type": "dense", "units": -1}]}]}),
     "layers[0].branches[0].layers[0].units: expected a positive integer, got -1"),
    (_layers({"type": "parallel", "combine": "grid_scatter", "branches": [D]}), "layers[0].grid: combine grid_scatter needs a grid"),
    (_layers({"type": "parallel", "combine": "grid_scatter", "branches": [D, D],
              "grid": {"rows": 1, "cols": 2, "positions": [[0, 0, 0], [0, 0, 0]]}}),
     "layers[0].grid.positions[1]: cell [0, 0, 0] is already taken by branch 0"),
    (_layers({"type": "parallel", "combine": "add", "branches": [D], "top_k": 1}), "layers[0].top_k: only combine filter takes top_k"),
    (_layers({"type": "multi_head_attention", "heads": 4, "kv_heads": 3}), "layers[0].kv_heads: heads (4) must be a multiple of kv_heads, got 3"),
    # top level
    ({"loom": 2, "input": {"shape": [4]}, "layers": [D]}, "loom: unsupported format version 2"),
    ({"input": {"shape": [4]}, "layers": [D]}, "loom: missing required key"),
    ({"loom": 1, "dtype": "float8", "input": {"shape": [4]}, "layers": [D]}, "dtype: expected one of float32, float64"),
    ({"loom": 1, "input": {"shape": [4, -1]}, "layers": [D]}, "input.shape[1]: expected a positive integer, got -1"),
    ({"loom": 1, "seed": -1, "input": {"shape": [4]}, "layers": [D]}, "seed: expected a non-negative integer, got -1"),
    ([1, 2], "expected a JSON object for the network config"),
])
def test_malformed_configs_name_path_and_value(cfg, message):
    with pytest.raises(loom.ConfigError) as err:
        C.validate(cfg)
    assert str(err.value).startswith(message) or message in str(err.value), str(err.value)
    assert err.value.path == str(err.value).split(":")[0] or not err.value.path


def test_invalid_json_text():
    with pytest.raises(loom.ConfigError, match="invalid JSON at line 1 column 2"):
        C.loads("{oops")
    with pytest.raises(loom.ConfigError, match="invalid JSON"):
        loom.Network.from_config('{"loom": 1,')


@pytest.mark.parametrize("layers, shape, message", [
    ([{"type": "conv2d", "filters": 2, "kernel_size": 3}], [4], r"^layers\[0\]"),
    ([D, {"type": "conv1d", "filters": 2, "kernel_size": 5}], [3, 2], r"^layers\[1\]"),
    ([{"type": "max_pool2d", "pool_size": 4}], [1, 3, 3], r"^layers\[0\]"),
    ([{"type": "multi_head_attention", "heads": 3}], [4, 8], r"^layers\[0\]"),
    ([{"type": "softmax", "variant": "grid", "rows": 2, "cols": 2}], [5], r"^layers\[0\]"),
    ([{"type": "parallel", "combine": "add", "branches": [D, {"type": "dense", "units": 3}]}], [4], r"^layers\[0\]"),
])
def test_impossible_shapes_are_config_errors(layers, shape, message):
    with pytest.raises(loom.ConfigError, match=message):
        loom.Network.from_config(config(layers, shape))


def test_dumps_is_stable_json():
    cfg = config([{"type": "dense", "units": 3}], [2])
    text = C.dumps(cfg)
    assert text.endswith("\n") and json.loads(text) == C.validate(cfg)
    assert '"eps": 1e-05' in C.dumps(config([{"type": "layer_norm"}], [2]))


@pytest.mark.parametrize("cfg, message", [
    ({"loom": 1, "dtype": "float32", "input": {"shape": [4], "dtype": "float64"}, "layers": [D]},
     "input.dtype: a float input must have the network's dtype float32, got float64"),
    ({"loom": 1, "input": {"shape": [4]}, "layers": [D], "metadata": {"x": float("nan")}},
     "metadata: metadata must be plain JSON"),
    (_layers({"type": "activation", "fn": ["relu"]}), 'layers[0].fn: expected one of'),
    (_layers({"type": "softmax", "variant": {"a": 1}}), "layers[0].variant: unknown softmax variant"),
    (_layers({"type": "layer_norm", "eps": 10 ** 400}), "layers[0].eps: expected a number"),
])
def test_odd_values_are_config_errors(cfg, message):
    with pytest.raises(loom.ConfigError) as err:
        C.validate(cfg)
    assert str(err.value).startswith(message), str(err.value)


def test_metadata_is_copied():
    meta = {"author": "me", "tags": ["a"]}
    cfg = C.validate({"loom": 1, "input": {"shape": [4]}, "layers": [D], "metadata": meta})
    cfg["metadata"]["tags"].append("b")
    assert meta == {"author": "me", "tags": ["a"]}
