"""Fuzzing the config parser and the network builder: whatever JSON arrives, the only error is a
ConfigError (never a TypeError, KeyError, ZeroDivisionError ... from deep inside a layer)."""
import copy

from catalogue import SAMPLES, config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import loom

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 40) | st.floats(-3, 3, allow_nan=False) | st.sampled_from(
        ["same", "relu", "grid", "concat", "x", "float64", "int64"]),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from(["type", "units", "layers", "a"]), inner, max_size=3),
    max_leaves=8)
# Mostly values that pass validation, so that the shape checks of the layers get exercised too.
plausible = st.integers(1, 12) | st.lists(st.integers(1, 6), min_size=1, max_size=4) | st.booleans()
values = st.one_of(plausible, plausible, plausible, json_values)


def _mutations(cfg):
    """Every (container, key) inside the layers of cfg, for replacing one value."""
    out = []

    def walk(node):
        if isinstance(node, dict):
            for k in node:
                out.append((node, k))
                walk(node[k])
        elif isinstance(node, list):
            for i in range(len(node)):
                out.append((node, i))
                walk(node[i])
    walk(cfg["layers"])
    return out


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sample=st.sampled_from(SAMPLES), pick=st.integers(0, 10 ** 6), value=values)
def test_mutated_configs_raise_only_config_errors(sample, pick, value):
    _, layers, shape, idt = sample
    cfg = copy.deepcopy(config(layers, shape, idt))
    spots = _mutations(cfg)
    container, key = spots[pick % len(spots)]
    container[key] = value
    try:
        loom.Network.from_config(cfg)
    except loom.ConfigError as exc:
        assert exc.path is not None and str(exc)


@settings(max_examples=200, deadline=None)
@given(shape=st.lists(st.integers(1, 6), min_size=1, max_size=4), layer=st.sampled_from(SAMPLES))
def test_any_input_shape_builds_or_raises_config_error(shape, layer):
    try:
        loom.Network.from_config(config(layer[1], shape, layer[3]))
    except loom.ConfigError:
        pass
