"""The layer types of the config format: their key tables, the checkers only layers use, and
`parse_layer`, which validates one layer config (recursively) into its canonical form.

`LAYER_KEYS` maps each type to its ordered key table; types whose keys depend on a "variant" (softmax)
take theirs from `VARIANT_KEYS`. A core layer carrying an openfluke switch, as configs were written
before the openfluke compatibility types, is read as that type (`_migrate_openfluke`). Rules that
involve several keys of one layer are `_check_cross_keys`, and the part of them JSON Schema can state
is `CROSS_KEY_SCHEMA`. loom/config.py re-exports these names.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .config_checks import (
    REQUIRED,
    _apply_schema,
    _describe,
    _is_int,
    _join,
    _named,
    _record,
    _schema,
    boolean,
    list_of,
    nonneg_int,
    nonneg_ints,
    number,
    one_of,
    optional,
    positive_int,
    positive_ints,
    positive_number,
)
from .errors import ConfigError

ACTIVATIONS = ("linear", "relu", "leaky_relu", "elu", "selu", "gelu", "gelu_tanh", "silu", "mish",
               "softplus", "sigmoid", "tanh", "hard_sigmoid")
SOFTMAX_VARIANTS = ("standard", "temperature", "grid", "hierarchical", "gumbel", "masked", "sparsemax",
                    "entmax", "adaptive", "mixture")
DEFAULT_SOFTMAX_VARIANT = "standard"  # of a softmax layer without a "variant"
COMBINE_MODES = ("concat", "add", "avg", "multiply", "grid_scatter", "filter")


# --- value checkers only layers use ---------------------------------------------------------------

activation_name = _named("activation", one_of(*ACTIVATIONS))


@_schema({"anyOf": [{"const": "same"}, nonneg_ints]})
def padding(v: Any, path: str) -> str | int | list[int]:
    if v == "same":
        return v
    if isinstance(v, str):
        raise ConfigError(path, f'expected a non-negative integer, a list of them or "same", got {_describe(v)}')
    return nonneg_ints(v, path)


# JSON Schema counts matches of `contains`: minContains 0 with maxContains 1 is "at most one -1".
@_schema({"type": "array", "minItems": 1, "items": {"type": "integer", "anyOf": [{"minimum": 1}, {"const": -1}]},
          "contains": {"const": -1}, "minContains": 0, "maxContains": 1})
def reshape_shape(v: Any, path: str) -> list[int]:
    def dim(x, p):
        if not _is_int(x) or (x <= 0 and x != -1):
            raise ConfigError(p, f"expected a positive integer or -1, got {_describe(x)}")
        return x
    dims = list_of(dim, min_len=1)(v, path)
    if dims.count(-1) > 1:
        raise ConfigError(path, f"at most one dimension may be -1, got {_describe(v)}")
    return dims


@_schema({"type": "array", "minItems": 1, "items": {"type": "integer", "enum": [0, 1]}, "contains": {"const": 1}})
def mask_list(v: Any, path: str) -> list[int]:
    def bit(x, p):
        if not _is_int(x) or x not in (0, 1):
            raise ConfigError(p, f"expected 0 or 1, got {_describe(x)}")
        return x
    bits = list_of(bit, min_len=1)(v, path)
    if not any(bits):
        raise ConfigError(path, "a mask must keep at least one position (all entries are 0)")
    return bits


# --- nested layers --------------------------------------------------------------------------------

# The "layer" definition is built from LAYER_KEYS and VARIANT_KEYS by loom.config_schema.
@_schema({"$ref": "#/$defs/layer"})
def layer(v: Any, path: str) -> dict:
    return parse_layer(v, path)


layer_list = _named("layerList", list_of(layer, min_len=1))


rope = _named("rope", _record({"theta": (positive_number, 10000.0),
                               "scaling": (optional(number(1.0)), None)}, "rope settings"))


@_schema({"type": "array", "minItems": 3, "maxItems": 3, "items": nonneg_int})
def grid_position(v: Any, path: str) -> list[int]:
    coords = list_of(nonneg_int)(v, path)
    if len(coords) != 3:
        raise ConfigError(path, f"expected [row, col, layer], got {_describe(v)}")
    return coords


grid = _named("grid", _record({"rows": (positive_int, REQUIRED), "cols": (positive_int, REQUIRED),
                               "layers": (positive_int, 1),
                               "positions": (list_of(grid_position, min_len=1), REQUIRED)}, "grid_scatter grid"))


# --- the layer schema: type -> ordered {key: (check, default)} --------------------------------------

def _conv(transpose: bool):
    keys = {"filters": (positive_int, REQUIRED), "kernel_size": (positive_ints, REQUIRED),
            "stride": (positive_ints, 1), "padding": (nonneg_ints if transpose else padding, 0)}
    if transpose:
        keys["output_padding"] = (nonneg_ints, 0)
    keys.update({"dilation": (positive_ints, 1), "groups": (positive_int, 1),
                 "activation": (activation_name, "linear"), "bias": (boolean, True)})
    return keys


_POOL = {"pool_size": (positive_ints, REQUIRED), "stride": (optional(positive_ints), None),
         "padding": (nonneg_ints, 0)}
_RECURRENT = {"hidden": (positive_int, REQUIRED), "return_sequences": (boolean, False), "bias": (boolean, True)}
_PARALLEL = {"branches": (layer_list, REQUIRED), "combine": (one_of(*COMBINE_MODES), "concat"),
             "grid": (optional(grid), None), "gate": (optional(layer), None),
             "top_k": (optional(positive_int), None), "renormalize": (optional(boolean), None)}

LAYER_KEYS: dict[str, dict[str, tuple[Callable, Any]]] = {
    "dense": {"units": (positive_int, REQUIRED), "activation": (activation_name, "linear"),
              "bias": (boolean, True)},
    **{f"conv{n}d": _conv(False) for n in (1, 2, 3)},
    **{f"conv_transpose{n}d": _conv(True) for n in (1, 2, 3)},
    **{f"{kind}_pool{n}d": _POOL for kind in ("max", "avg") for n in (1, 2, 3)},
    "embedding": {"vocab_size": (positive_int, REQUIRED), "dim": (positive_int, REQUIRED)},
    "layer_norm": {"eps": (positive_number, 1e-5), "affine": (boolean, True)},
    "rms_norm": {"eps": (positive_number, 1e-6)},
    "batch_norm": {"eps": (positive_number, 1e-5), "momentum": (number(0, 1), 0.1)},
    "dropout": {"rate": (number(0, 1, hi_open=True), REQUIRED)},
    "rnn": _RECURRENT, "lstm": _RECURRENT, "gru": _RECURRENT,
    "multi_head_attention": {
        "heads": (positive_int, REQUIRED), "kv_heads": (optional(positive_int), None),
        "head_dim": (optional(positive_int), None), "causal": (boolean, False),
        "rope": (optional(rope), None), "qk_norm": (boolean, False), "bias": (boolean, True)},
    "swiglu": {"hidden": (positive_int, REQUIRED), "bias": (boolean, False)},
    "activation": {"fn": (activation_name, REQUIRED)},
    "softmax": None,  # per-variant keys, see SOFTMAX_KEYS
    "flatten": {},
    "reshape": {"shape": (reshape_shape, REQUIRED)},
    "residual": {"layers": (layer_list, REQUIRED)},
    "sequential": {"layers": (layer_list, REQUIRED)},
    "parallel": _PARALLEL,
    # stitch: parallel whose every branch output is projected (dense, linear) to `width` before combining
    "stitch": {"branches": _PARALLEL["branches"], "width": (positive_int, REQUIRED), "bias": (boolean, True),
               **{k: v for k, v in _PARALLEL.items() if k != "branches"}},
    "kmeans": {"clusters": (positive_int, REQUIRED),
               "output": (one_of("probabilities", "features"), "probabilities"),
               "temperature": (positive_number, 1.0)},
}

_TEMPERATURE = {"temperature": (positive_number, 1.0)}
SOFTMAX_KEYS: dict[str, dict] = {
    "standard": _TEMPERATURE,
    "temperature": _TEMPERATURE,
    "grid": {**_TEMPERATURE, "rows": (positive_int, REQUIRED), "cols": (positive_int, REQUIRED)},
    "hierarchical": {**_TEMPERATURE, "levels": (list_of(positive_int, min_len=1), REQUIRED)},
    "gumbel": _TEMPERATURE,
    "masked": {**_TEMPERATURE, "mask": (mask_list, REQUIRED)},
    "sparsemax": _TEMPERATURE,
    "entmax": {**_TEMPERATURE, "alpha": (number(1, lo_open=True), 1.5)},
    "adaptive": {**_TEMPERATURE, "classes": (positive_int, REQUIRED),
                 "cutoffs": (list_of(positive_int, min_len=1), REQUIRED),
                 "div_value": (number(1), 4.0), "head_bias": (boolean, False)},
    "mixture": {**_TEMPERATURE, "components": (positive_int, 2)},
}


# --- openfluke compatibility types (emitted by loom/formats/openfluke.py) -----------------------------
# Each computes as openfluke welvet computes (docs/interop.md): a core type plus the keys that switch its
# arithmetic to welvet's, defaulting to welvet's behaviour; loom/nn/layers/openfluke.py implements them
# as subclasses of the core layers.
_NORMALIZE = {"normalize": (one_of("row", "batch"), "batch")}  # batch: the whole batch tensor is one vector
OPENFLUKE_SOFTMAX_KEYS: dict[str, dict] = {
    "standard": {**SOFTMAX_KEYS["standard"], **_NORMALIZE},
    "temperature": {**SOFTMAX_KEYS["temperature"], **_NORMALIZE},
    "grid": {**SOFTMAX_KEYS["grid"], **_NORMALIZE},
    "sparsemax": {**SOFTMAX_KEYS["sparsemax"], **_NORMALIZE},
    "entmax": {**SOFTMAX_KEYS["entmax"], "form": (one_of("exact", "blend"), "blend"), **_NORMALIZE},
}
OPENFLUKE_KEYS: dict[str, dict[str, tuple[Callable, Any]] | None] = {
    "openfluke_dense": {**LAYER_KEYS["dense"], "accumulate_block": (positive_int, 8)},
    "openfluke_layer_norm": {**LAYER_KEYS["layer_norm"], "compute_dtype": (one_of("float64"), "float64")},
    "openfluke_rms_norm": {**LAYER_KEYS["rms_norm"], "compute_dtype": (one_of("float64"), "float64")},
    "openfluke_attention": {**LAYER_KEYS["multi_head_attention"], "span": (one_of("batch"), "batch")},
    "openfluke_softmax": None,  # per-variant keys, see OPENFLUKE_SOFTMAX_KEYS
}
LAYER_KEYS.update(OPENFLUKE_KEYS)

# The core type each openfluke type extends, and the value each added key had as a key of that core type
# (its core behaviour: no blocks, the network dtype, per sample, per row, exact entmax).
OPENFLUKE_CORE: dict[str, tuple[str, dict[str, Any]]] = {
    "openfluke_dense": ("dense", {"accumulate_block": None}),
    "openfluke_layer_norm": ("layer_norm", {"compute_dtype": None}),
    "openfluke_rms_norm": ("rms_norm", {"compute_dtype": None}),
    "openfluke_attention": ("multi_head_attention", {"span": "sample"}),
    "openfluke_softmax": ("softmax", {"normalize": "row", "form": "exact"}),
}

# Layer types whose keys depend on their "variant": type -> variant -> key table.
VARIANT_KEYS: dict[str, dict[str, dict]] = {"softmax": SOFTMAX_KEYS, "openfluke_softmax": OPENFLUKE_SOFTMAX_KEYS}


def _migrate_openfluke(kind: str, variant: str | None, rest: dict) -> tuple[str, dict]:
    """A config migration, like a state-dict key migration: before the openfluke types existed, their
    switches were keys of the core types ({"type": "softmax", "normalize": "batch"}). A core layer that
    sets a switch to anything but its core value is read as the openfluke type, the switches it leaves
    out taking their core values (so it computes as before and is written back under the new type); a
    switch given its core value is dropped. Returns the (type, keys) to validate."""
    compat = next((name for name, (core, _) in OPENFLUKE_CORE.items() if core == kind), None)
    if compat is None:
        return kind, rest
    core_values = OPENFLUKE_CORE[compat][1]
    keys = VARIANT_KEYS[compat].get(variant, {}) if variant is not None else LAYER_KEYS[compat]
    switches = [k for k in core_values if k in keys]        # the switches this core layer (variant) had
    given = [k for k in switches if k in rest]
    if all(_same(rest[k], core_values[k]) for k in given):
        return kind, {k: v for k, v in rest.items() if k not in given}
    return compat, {**{k: core_values[k] for k in switches}, **rest}


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


def parse_layer(obj: Any, path: str) -> dict:
    """Validate one layer config (recursively) and return its canonical form."""
    if not isinstance(obj, dict):
        raise ConfigError(path, f"expected a layer object, got {_describe(obj)}")
    if "type" not in obj:
        raise ConfigError(_join(path, "type"), "missing required key")
    kind = obj["type"]
    if not isinstance(kind, str) or kind not in LAYER_KEYS:
        raise ConfigError(_join(path, "type"),
                          f"unknown layer type {_describe(kind)}; expected one of {', '.join(LAYER_KEYS)}")
    rest = {k: v for k, v in obj.items() if k != "type"}
    variant = None
    if kind in VARIANT_KEYS:
        variant = rest.pop("variant", DEFAULT_SOFTMAX_VARIANT)
        if not isinstance(variant, str) or variant not in VARIANT_KEYS[kind]:
            raise ConfigError(_join(path, "variant"), f"unknown {kind} variant {_describe(variant)}; "
                              f"expected one of {', '.join(VARIANT_KEYS[kind])}")
    kind, rest = _migrate_openfluke(kind, variant, rest)
    if variant is not None:
        body = _apply_schema(rest, VARIANT_KEYS[kind][variant], path, f"{kind} variant {variant}")
        out = {"type": kind, "variant": variant, **body}
    else:
        out = {"type": kind, **_apply_schema(rest, LAYER_KEYS[kind], path, f"layer type {kind}")}
    _check_cross_keys(out, path)
    return out


def _check_cross_keys(cfg: dict, path: str) -> None:
    """Rules that involve more than one key of the same layer (shape-free)."""
    kind = cfg["type"]
    if kind in ("parallel", "stitch"):
        mode, n = cfg["combine"], len(cfg["branches"])
        if mode == "grid_scatter" and cfg["grid"] is None:
            raise ConfigError(_join(path, "grid"), "combine grid_scatter needs a grid {rows, cols, layers, positions}")
        if mode != "grid_scatter" and cfg["grid"] is not None:
            raise ConfigError(_join(path, "grid"), f"only combine grid_scatter takes a grid (combine is {mode})")
        for key in ("gate", "top_k", "renormalize"):
            if mode != "filter" and cfg[key] is not None:
                    raise ConfigError(_join(path, key), f"only combine filter takes {key} (combine is {mode})")
        if cfg["top_k"] is not None and cfg["top_k"] > n:
            raise ConfigError(_join(path, "top_k"), f"top_k {cfg['top_k']} exceeds the {n} branches")
        if mode == "grid_scatter":
            g = cfg["grid"]
            if len(g["positions"]) != n:
                raise ConfigError(_join(path, "grid.positions"),
                                  f"expected one position per branch ({n}), got {len(g['positions'])}")
            seen = {}
            for i, (r, c, l) in enumerate(g["positions"]):
                p = f"{path}.grid.positions[{i}]"
                if r >= g["rows"] or c >= g["cols"] or l >= g["layers"]:
                    raise ConfigError(p, f"cell {[r, c, l]} is outside the {g['rows']}x{g['cols']}x{g['layers']} grid")
                if (r, c, l) in seen:
                    raise ConfigError(p, f"cell {[r, c, l]} is already taken by branch {seen[(r, c, l)]}")
                seen[(r, c, l)] = i
    elif kind in ("multi_head_attention", "openfluke_attention"):
        kv = cfg["kv_heads"]
        if kv is not None and cfg["heads"] % kv:
            raise ConfigError(_join(path, "kv_heads"), f"heads ({cfg['heads']}) must be a multiple of kv_heads, got {kv}")
    elif kind == "openfluke_softmax" and cfg["variant"] == "entmax" and cfg["form"] == "blend" and cfg["alpha"] >= 2:
        raise ConfigError(_join(path, "alpha"), f"form blend needs alpha below 2, got {cfg['alpha']}")
    elif kind == "softmax" and cfg["variant"] == "adaptive":
        cuts, classes = cfg["cutoffs"], cfg["classes"]
        if any(b <= a for a, b in zip(cuts, cuts[1:])) or cuts[-1] >= classes:
            raise ConfigError(_join(path, "cutoffs"),
                              f"expected increasing cutoffs below classes ({classes}), got {_describe(cuts)}")
    elif kind.startswith("conv_transpose"):
        pass  # output_padding < stride is a per-dimension rule, checked with the shapes


# The part of the rules above that JSON Schema can state, per layer type (loom.config_schema adds it to
# the type's definition; the schema's description lists the rest).
CROSS_KEY_SCHEMA: dict[str, dict] = {
    "parallel": {"allOf": [
        {"if": {"properties": {"combine": {"const": "grid_scatter"}}, "required": ["combine"]},
         "then": {"required": ["grid"],
                  "properties": {"grid": {"type": "object", "properties": {"positions": {"uniqueItems": True}}}}},
         "else": {"properties": {"grid": {"type": "null"}}}},
        {"if": {"properties": {"combine": {"const": "filter"}}, "required": ["combine"]},
         "then": True,
         "else": {"properties": {key: {"type": "null"} for key in ("gate", "top_k", "renormalize")}}},
    ]},
}
CROSS_KEY_SCHEMA["stitch"] = CROSS_KEY_SCHEMA["parallel"]    # the same combine keys, the same rules
