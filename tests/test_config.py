"""Config format v1: canonical round trip of every sample, defaults, and one test per error class."""
import json

import numpy as np
import pytest
from catalogue import SAMPLES, config

import loom
from loom import config as C
from loom.nn.layers import REGISTRY


def _types(layers):
    for layer in layers:
        yield layer["type"]
        yield from _types(layer.get("layers", []) + layer.get("branches", []))


def test_catalogue_covers_every_type_variant_and_mode():
    names = {name for name, *_ in SAMPLES}
    assert {n for n in names if "/" not in n} | {"softmax", "parallel"} == set(C.LAYER_KEYS) - set(C.OPENFLUKE_KEYS)
    assert {t for _, layers, *_ in SAMPLES for t in _types(layers)} == set(C.LAYER_KEYS)
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


# --- the openfluke switches of the core types, read as the openfluke compatibility types ------------

LEGACY = [  # (a layer as configs spelled it before the openfluke types, the same layer today, input shape)
    ({"type": "dense", "units": 3, "activation": "tanh", "accumulate_block": 2},
     {"type": "openfluke_dense", "units": 3, "activation": "tanh", "accumulate_block": 2}, [5]),
    ({"type": "layer_norm", "compute_dtype": "float64"}, {"type": "openfluke_layer_norm"}, [3, 4]),
    ({"type": "rms_norm", "eps": 1e-5, "compute_dtype": "float64"}, {"type": "openfluke_rms_norm", "eps": 1e-5}, [4]),
    ({"type": "multi_head_attention", "heads": 2, "causal": True, "span": "batch"},
     {"type": "openfluke_attention", "heads": 2, "causal": True}, [3, 4]),
    ({"type": "softmax", "temperature": 0.5, "normalize": "batch"},
     {"type": "openfluke_softmax", "temperature": 0.5}, [2, 3]),
    ({"type": "softmax", "variant": "grid", "rows": 2, "cols": 3, "normalize": "batch"},
     {"type": "openfluke_softmax", "variant": "grid", "rows": 2, "cols": 3}, [6]),
    # a switch left out keeps its core value, not the openfluke default
    ({"type": "softmax", "variant": "entmax", "alpha": 1.3, "form": "blend"},
     {"type": "openfluke_softmax", "variant": "entmax", "alpha": 1.3, "normalize": "row"}, [5]),
    ({"type": "softmax", "variant": "entmax", "alpha": 2.5, "normalize": "batch"},
     {"type": "openfluke_softmax", "variant": "entmax", "alpha": 2.5, "form": "exact"}, [4]),
    # a switch at its core value is dropped: the core type
    ({"type": "dense", "units": 3, "accumulate_block": None}, {"type": "dense", "units": 3}, [5]),
    ({"type": "rms_norm", "compute_dtype": None}, {"type": "rms_norm"}, [4]),
    ({"type": "multi_head_attention", "heads": 2, "span": "sample"}, {"type": "multi_head_attention", "heads": 2}, [3, 4]),
    ({"type": "softmax", "variant": "sparsemax", "normalize": "row"}, {"type": "softmax", "variant": "sparsemax"}, [5]),
    ({"type": "softmax", "variant": "entmax", "form": "exact", "normalize": "row"}, {"type": "softmax", "variant": "entmax"},
     [5]),
]


@pytest.mark.parametrize("old, new, shape", LEGACY, ids=[f"{a['type']}-{i}" for i, (a, _, _) in enumerate(LEGACY)])
def test_core_layers_with_openfluke_switches_load_as_the_openfluke_types(old, new, shape):
    """A config saved before the openfluke types existed loads as the type that now holds its switch,
    computes the same bits, and is written back under that type."""
    legacy, today = config([old], shape), config([new], shape)
    assert C.validate(legacy) == C.validate(today)
    assert C.dumps(legacy) == C.dumps(today) and C.loads(C.dumps(legacy)) == C.validate(today)
    a, b = loom.Network.from_config(legacy), loom.Network.from_config(today)
    assert a.config == b.config and [type(x) for _, x in a.root.walk()] == [type(x) for _, x in b.root.walk()]
    x = np.random.default_rng(0).normal(size=(3, *shape)).astype(np.float32)
    assert np.array_equal(a(x), b(x))


def test_a_model_file_saved_with_the_old_spelling_loads(monkeypatch):
    from loom.formats import loomfile
    legacy = config([{"type": "dense", "units": 3, "accumulate_block": 2},
                     {"type": "softmax", "normalize": "batch"}], [5])
    net = loom.Network.from_config(legacy)
    assert [layer["type"] for layer in net.config["layers"]] == ["openfluke_dense", "openfluke_softmax"]
    monkeypatch.setattr(loomfile.configs, "dumps", lambda cfg: json.dumps(legacy))   # as older Looms wrote it
    data = net.to_bytes()
    monkeypatch.undo()
    again = loom.from_bytes(data)
    assert again.config == net.config
    x = np.random.default_rng(1).normal(size=(2, 5)).astype(np.float32)
    assert np.array_equal(again(x), net(x))


@pytest.mark.parametrize("layer, message", [
    ({"type": "softmax", "variant": "gumbel", "normalize": "batch"}, "layers[0].normalize: unknown key for softmax variant gumbel"),
    ({"type": "softmax", "normalize": "rows"}, 'layers[0].normalize: expected one of row, batch, got "rows"'),
    ({"type": "dense", "units": 2, "accumulate_block": 0}, "layers[0].accumulate_block: expected a positive integer, got 0"),
    ({"type": "softmax", "variant": "entmax", "alpha": 2.5, "form": "blend"}, "layers[0].alpha: form blend needs alpha below 2"),
    ({"type": "openfluke_softmax", "variant": "gumbel"}, 'layers[0].variant: unknown openfluke_softmax variant "gumbel"'),
    ({"type": "openfluke_rms_norm", "compute_dtype": None}, "layers[0].compute_dtype: expected one of float64, got null"),
])
def test_openfluke_switches_are_checked_as_before(layer, message):
    with pytest.raises(loom.ConfigError) as err:
        C.validate(_layers(layer))
    assert str(err.value).startswith(message), str(err.value)
