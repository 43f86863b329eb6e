"""TweenConfig: every setting round-trips through JSON; bad settings are ConfigErrors naming the key."""
import json

import numpy as np
import pytest

import loom
from loom.errors import ConfigError
from loom.nn.tween import Tween
from loom.nn.tween_config import DEFAULT_RATES, TweenConfig, resolve

MLP = {"loom": 1, "seed": 0, "input": {"shape": [3]},
       "layers": [{"type": "dense", "units": 4, "activation": "relu"}, {"type": "dense", "units": 2}]}


def test_defaults_are_complete_and_round_trip_through_json():
    cfg = TweenConfig()
    d = cfg.to_dict()
    assert set(d) == {"mode", "rate", "momentum", "depth_decay", "layer_rates", "type_rates", "clip_norm",
                      "clip_value", "loss", "normalize", "projection", "min_weight_sum", "budget_threshold",
                      "clamp_to_activation", "target_clamp"}
    assert d["mode"] == "chain" and d["rate"] == DEFAULT_RATES["chain"]
    assert d["loss"] == {"type": "mse", "reduction": "mean"}
    assert TweenConfig.from_dict(json.loads(json.dumps(d))) == cfg
    assert TweenConfig(mode="gap").rate == DEFAULT_RATES["gap"]


def test_custom_settings_round_trip():
    cfg = TweenConfig(mode="gap", rate=0.3, momentum=0.5, depth_decay=0.8, layer_rates=[1, 0.5],
                      type_rates={"dense": 2, "conv2d": 0.5}, clip_norm=1.0, clip_value=0.25,
                      loss={"type": "cross_entropy", "label_smoothing": 0.1}, normalize=False,
                      projection="target", min_weight_sum=1e-3, budget_threshold=0.2,
                      clamp_to_activation=False, target_clamp=5)
    text = json.dumps(cfg.to_dict())
    back = TweenConfig.from_dict(text)
    assert back == cfg and back.to_dict() == cfg.to_dict()
    assert back.layer_rates == [1.0, 0.5] and back.target_clamp == 5.0
    assert cfg.replace(momentum=0.0).momentum == 0.0 and cfg.momentum == 0.5


def test_resolve_accepts_configs_dicts_mode_names_and_none():
    assert resolve(None) == TweenConfig()
    assert resolve("gap") == TweenConfig(mode="gap")
    assert resolve({"mode": "gap", "rate": 0.2}).rate == 0.2
    cfg = TweenConfig(rate=0.5)
    assert resolve(cfg) is cfg


@pytest.mark.parametrize("settings, path, words", [
    ({"mode": "gapp"}, "tween.mode", "gapp"),
    ({"mode": 3}, "tween.mode", "3"),
    ({"bogus": 1}, "tween.bogus", "unknown tween setting"),
    ({"rate": -0.1}, "tween.rate", "-0.1"),
    ({"rate": "fast"}, "tween.rate", "fast"),
    ({"momentum": 1.0}, "tween.momentum", "1.0"),
    ({"depth_decay": 0}, "tween.depth_decay", "0"),
    ({"layer_rates": []}, "tween.layer_rates", "at least 1"),
    ({"layer_rates": [1, -2]}, "tween.layer_rates[1]", "-2"),
    ({"type_rates": {"densee": 2}}, "tween.type_rates.densee", "densee"),
    ({"type_rates": {"dense": -1}}, "tween.type_rates.dense", "-1"),
    ({"type_rates": [1]}, "tween.type_rates", "[1]"),
    ({"clip_norm": 0}, "tween.clip_norm", "0"),
    ({"clip_value": float("nan")}, "tween.clip_value", "NaN"),
    ({"loss": "msee"}, "tween.loss.type", "msee"),
    ({"loss": {"type": "mse", "smooth": 1}}, "tween.loss.smooth", "unknown key"),
    ({"normalize": 1}, "tween.normalize", "1"),
    ({"projection": "both"}, "tween.projection", "both"),
    ({"budget_threshold": -1}, "tween.budget_threshold", "-1"),
    ({"clamp_to_activation": "yes"}, "tween.clamp_to_activation", "yes"),
    ({"target_clamp": 0}, "tween.target_clamp", "0"),
])
def test_bad_settings_name_the_key_and_value(settings, path, words):
    with pytest.raises(ConfigError) as info:
        TweenConfig.from_dict(settings)
    assert info.value.path == path
    assert words in str(info.value)


def test_bad_documents_and_keyword_construction():
    with pytest.raises(ConfigError, match="tween: expected an object"):
        TweenConfig.from_dict([1, 2])
    with pytest.raises(ConfigError, match="tween: not valid JSON"):
        TweenConfig.from_dict("{mode: gap}")
    with pytest.raises(ConfigError) as info:
        TweenConfig(mode="hebbian")            # keyword construction validates too
    assert info.value.path == "tween.mode" and "hebbian" in str(info.value)


def test_layer_rates_must_match_the_network():
    with pytest.raises(ConfigError) as info:
        Tween(loom.Network.from_config(MLP), {"layer_rates": [1, 1, 1]})
    assert info.value.path == "tween.layer_rates" and "3 entries" in str(info.value) and "2 top-level" in str(info.value)


def test_a_quantized_network_cannot_be_tweened():
    net = loom.Network.from_config(MLP).quantize("int8")
    with pytest.raises(ConfigError) as info:
        Tween(net, "gap")
    assert info.value.path == "quantization" and "int8" in str(info.value)


def test_rates_combine_rate_depth_layer_and_type_multipliers():
    cfg = {"loom": 1, "input": {"shape": [3]},
           "layers": [{"type": "dense", "units": 4}, {"type": "layer_norm"}, {"type": "dense", "units": 2}]}
    tw = Tween(loom.Network.from_config(cfg), {"rate": 0.1, "depth_decay": 0.5, "layer_rates": [2, 1, 1],
                                                "type_rates": {"layer_norm": 3}})
    rates = tw.rates()
    assert rates["layers.2.weight"] == 0.1
    assert rates["layers.1.weight"] == 0.1 * 0.5 * 3
    assert rates["layers.0.bias"] == 0.1 * 0.25 * 2
    assert np.isclose(sum(rates.values()), 2 * 0.1 + 2 * 0.15 + 2 * 0.05)
