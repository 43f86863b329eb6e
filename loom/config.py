"""Network config format v1: parse, validate, normalize and dump canonically.

`loads` checks every key of every layer against the schema below and returns the normalized config:
defaults filled in, keys in canonical order, numbers in their canonical type. `dumps` writes that
form; `dumps(loads(s)) == s` holds for every canonical `s`. Errors are `ConfigError`s naming the JSON
path of the bad value. Shapes are checked later, when a `Network` is built from the config. A core layer
carrying an openfluke switch, as configs were written before the openfluke compatibility types, is read
as that type (`_migrate_openfluke`).
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Collection, Sequence
from typing import Any

from . import dtypes
from .errors import ConfigError

VERSION = 1

ACTIVATIONS = ("linear", "relu", "leaky_relu", "elu", "selu", "gelu", "gelu_tanh", "silu", "mish",
               "softplus", "sigmoid", "tanh", "hard_sigmoid")
SOFTMAX_VARIANTS = ("standard", "temperature", "grid", "hierarchical", "gumbel", "masked", "sparsemax",
                    "entmax", "adaptive", "mixture")
DEFAULT_SOFTMAX_VARIANT = "standard"  # of a softmax layer without a "variant"
COMBINE_MODES = ("concat", "add", "avg", "multiply", "grid_scatter", "filter")

REQUIRED = object()  # marks a key with no default


# --- the JSON Schema of each checker -----------------------------------------------------------------
# loom.config_schema builds docs/loom-config.schema.json from the key tables below. For that, every
# checker carries the schema of what it accepts, written next to its code so that a change to one is
# seen beside the other. Three attributes, set by `_schema` and `_named`:
#   json_schema       a JSON Schema fragment in which a nested checker stands for its own schema;
#   json_schema_keys  instead of a fragment: the key table of a closed object (records);
#   json_schema_name  the schema goes under this name in $defs and each use refers to it.

def _schema(fragment: dict | None = None, *, keys: dict | None = None,
            name: str | None = None) -> Callable[[Callable], Callable]:
    """Decorator attaching a checker's JSON Schema (a fragment or a key table) and its $defs name."""
    def attach(check: Callable) -> Callable:
        if fragment is not None:
            check.json_schema = fragment
        if keys is not None:
            check.json_schema_keys = keys
        if name is not None:
            check.json_schema_name = name
        return check
    return attach


def _named(name: str, check: Callable) -> Callable:
    """`check`, its schema put under $defs as `name` (the tables share this one checker)."""
    return _schema(name=name)(check)


# --- value checkers: each takes (value, path) and returns the canonical value or raises ----------

def _describe(v: Any) -> str:
    return json.dumps(v) if _jsonable(v) else repr(v)


def _jsonable(v: Any) -> bool:
    try:
        json.dumps(v)
        return True
    except (TypeError, ValueError):
        return False


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@_schema({"type": "integer", "minimum": 1}, name="positiveInt")
def positive_int(v: Any, path: str) -> int:
    if not _is_int(v) or v <= 0:
        raise ConfigError(path, f"expected a positive integer, got {_describe(v)}")
    return v


@_schema({"type": "integer", "minimum": 0}, name="nonNegativeInt")
def nonneg_int(v: Any, path: str) -> int:
    if not _is_int(v) or v < 0:
        raise ConfigError(path, f"expected a non-negative integer, got {_describe(v)}")
    return v


@_schema({"type": "boolean"})
def boolean(v: Any, path: str) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(path, f"expected true or false, got {_describe(v)}")
    return v


@_schema({"type": "string"})
def string(v: Any, path: str) -> str:
    if not isinstance(v, str):
        raise ConfigError(path, f"expected a string, got {_describe(v)}")
    return v


def number(lo: float = -math.inf, hi: float = math.inf, lo_open: bool = False,
           hi_open: bool = False) -> Callable[[Any, str], float]:
    """A finite float in a range; ints are accepted and stored as floats."""
    lb = "(" if lo_open else "["
    rb = ")" if hi_open else "]"
    what = f"a number in {lb}{lo}, {hi}{rb}"
    bounds = {}
    if lo > -math.inf:
        bounds["exclusiveMinimum" if lo_open else "minimum"] = lo
    if hi < math.inf:
        bounds["exclusiveMaximum" if hi_open else "maximum"] = hi

    @_schema({"type": "number", **bounds})
    def check(v, path):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not _finite_float(v):
            raise ConfigError(path, f"expected {what}, got {_describe(v)}")
        if v < lo or v > hi or (lo_open and v == lo) or (hi_open and v == hi):
            raise ConfigError(path, f"expected {what}, got {_describe(v)}")
        return float(v)
    return check


def _finite_float(v) -> bool:
    try:
        return math.isfinite(float(v))
    except OverflowError:          # an integer beyond the float range
        return False


def one_of(*choices: Any) -> Callable[[Any, str], Any]:
    @_schema({"enum": list(choices)})
    def check(v, path):
        if isinstance(v, (bool, list, dict)) or v not in choices:
            raise ConfigError(path, f"expected one of {', '.join(map(str, choices))}, got {_describe(v)}")
        return v
    return check


def optional(inner: Callable[[Any, str], Any]) -> Callable[[Any, str], Any]:
    @_schema({"anyOf": [{"type": "null"}, inner]})
    def check(v, path):
        return None if v is None else inner(v, path)
    return check


def list_of(inner: Callable[[Any, str], Any], min_len: int = 0) -> Callable[[Any, str], list]:
    @_schema({"type": "array", **({"minItems": min_len} if min_len else {}), "items": inner})
    def check(v, path):
        if not isinstance(v, list):
            raise ConfigError(path, f"expected a list, got {_describe(v)}")
        if len(v) < min_len:
            raise ConfigError(path, f"expected at least {min_len} entries, got {len(v)}")
        return [inner(item, f"{path}[{i}]") for i, item in enumerate(v)]
    return check


def int_or_list(item: Callable[[Any, str], Any]) -> Callable[[Any, str], Any]:
    """An integer applied to every spatial dimension, or one integer per dimension."""
    @_schema({"description": "one integer for every spatial dimension, or one per dimension",
              "anyOf": [item, {"type": "array", "minItems": 1, "items": item}]})
    def check(v, path):
        if isinstance(v, list):
            if not v:
                raise ConfigError(path, "expected an integer or a non-empty list of integers, got []")
            return [item(x, f"{path}[{i}]") for i, x in enumerate(v)]
        return item(v, path)
    return check


# Shared by many keys, so the schema names them once.
positive_ints = _named("positiveIntOrList", int_or_list(positive_int))
nonneg_ints = _named("nonNegativeIntOrList", int_or_list(nonneg_int))
positive_number = _named("positiveNumber", number(0, lo_open=True))
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


def _record(schema: dict[str, tuple[Callable, Any]], what: str):
    """A JSON object with exactly the keys of `schema` (missing ones take their default)."""
    @_schema(keys=schema)
    def check(v, path):
        if not isinstance(v, dict):
            raise ConfigError(path, f"expected an object ({what}), got {_describe(v)}")
        return _apply_schema(v, schema, path, what)
    return check


def _apply_schema(obj: dict, schema: dict, path: str, what: str) -> dict:
    for key in obj:
        if key not in schema:
            raise ConfigError(_join(path, key), f"unknown key for {what}; expected one of {', '.join(schema)}")
    out = {}
    for key, (check, default) in schema.items():
        p = _join(path, key)
        if key in obj:
            out[key] = check(obj[key], p)
        elif default is REQUIRED:
            raise ConfigError(p, f"missing required key for {what}")
        else:
            out[key] = default
    return out


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


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


# --- specs of pluggable parts (losses, optimizers, schedules) --------------------------------------

def resolve_type(spec: Any, path: str, types: Collection[str], what: str) -> tuple[dict, str]:
    """(spec as a dict, its type name) for a spec given as a type name or an object with a "type";
    ConfigError at `path` when the type is missing or not one of `types`."""
    if isinstance(spec, str):
        spec = {"type": spec}
    if not isinstance(spec, dict):
        article = "an" if what[0] in "aeiou" else "a"
        raise ConfigError(path, f"expected {article} {what} object or type name, got {_describe(spec)}")
    if "type" not in spec:
        raise ConfigError(_join(path, "type"), f"missing required key; expected one of {', '.join(types)}")
    kind = spec["type"]
    if not isinstance(kind, str) or kind not in types:
        raise ConfigError(_join(path, "type"), f"unknown {what} type {_describe(kind)}; expected one of {', '.join(types)}")
    return spec, kind


# --- whole networks ---------------------------------------------------------------------------------

_input_spec = _named("input", _record({"shape": (list_of(positive_int, min_len=1), REQUIRED),
                                      "dtype": (optional(one_of(*dtypes.INPUT)), None)}, "input spec"))


@_schema({"type": "integer", "const": VERSION})
def _version(v, path):
    if not _is_int(v) or v != VERSION:
        raise ConfigError(path, f"unsupported format version {_describe(v)}; this Loom reads version {VERSION}")
    return v


@_schema({"type": "object"})
def _metadata(v, path):
    """Free-form user data: any JSON object of finite numbers, stored as a copy."""
    if not isinstance(v, dict):
        raise ConfigError(path, f"expected an object, got {_describe(v)}")
    try:
        return json.loads(json.dumps(v, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ConfigError(path, f"metadata must be plain JSON with finite numbers ({exc})") from None


@_schema({"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}, "uniqueItems": True})
def _labels(v, path):
    """Class names: output i of the network is class labels[i]; unique, non-empty strings."""
    if not isinstance(v, list) or not v:
        raise ConfigError(path, f"expected a non-empty list of class names (strings), got {_describe(v)}")
    seen: dict[str, int] = {}
    for i, name in enumerate(v):
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{path}[{i}]", f"expected a non-empty string, got {_describe(name)}")
        if name in seen:
            raise ConfigError(f"{path}[{i}]", f"{_describe(name)} repeats {path}[{seen[name]}]; class names are unique")
        seen[name] = i
    return list(v)


def check_labels(labels: list[str] | None, output_shape: tuple[int, ...] | list[int], source: str = "") -> None:
    """ConfigError naming `labels` unless the network's output (one sample's shape) is a vector of
    len(labels) class scores. `source` says where the names came from, for the message. None passes."""
    if labels is None:
        return
    shape = list(output_shape)
    names = f"{len(labels)} class names ({preview(labels)})" + (f" from {source}" if source else "")
    if len(shape) != 1:
        raise ConfigError("labels", f"{names}, but the network's output has shape {shape}, not a vector of "
                          f"class scores")
    if shape[0] != len(labels):
        raise ConfigError("labels", f"{names}, but the network outputs {shape[0]} classes; \"labels\" names "
                          f"every output, in order")


def preview(names: Sequence[str], most: int = 10) -> str:
    """The first `most` names, comma-separated, and how many more there are."""
    shown = ", ".join(names[:most])
    return shown + (f", ... ({len(names) - most} more)" if len(names) > most else "")


def _spec(kinds: str):
    """A loss/optimizer/schedule spec: a type name or an object with a "type"; its keys are checked
    by the builder in loom.nn when training starts."""
    typed = {"type": "object", "required": ["type"], "properties": {"type": {"type": "string"}}}

    @_schema({"anyOf": [{"type": "string"}, typed]} if "name" in kinds else typed)
    def check(v, path):
        if isinstance(v, str) and "name" in kinds:
            return v
        if isinstance(v, dict) and isinstance(v.get("type"), str):
            return json.loads(json.dumps(v))
        raise ConfigError(path, f"expected {kinds}, got {_describe(v)}")
    return check


_early_stopping_settings = _record({"monitor": (string, "val_loss"), "patience": (positive_int, 3),
                                    "min_delta": (number(0), 0.0), "mode": (one_of("min", "max"), "min"),
                                    "restore_best": (boolean, True)}, "early stopping settings")


@_schema({"anyOf": [{"type": "boolean"}, _early_stopping_settings]})
def _early_stopping(v, path):
    if isinstance(v, bool):
        return v
    return _early_stopping_settings(v, path)


training_block = _named("training", _record({
    "loss": (optional(_spec("a loss name or an object with a type")), None),   # None: chosen from the targets
    "optimizer": (_spec("an object with a type"), {"type": "adam", "lr": 0.001}),
    "schedule": (optional(_spec("an object with a type")), None),
    "epochs": (positive_int, 10), "batch_size": (positive_int, 32), "seed": (nonneg_int, 0),
    "metrics": (optional(list_of(string)), None),
    "validation": (optional(number(0, 1, lo_open=True, hi_open=True)), None),
    "early_stopping": (optional(_early_stopping), None),
    "shuffle": (boolean, True),
    "deterministic": (optional(boolean), None),
    "freeze": (optional(list_of(string, min_len=1)), None)}, "training settings"))   # parameter-name globs

_QUANT_TYPES = tuple(n for n in dtypes.TABLE if n not in dtypes.COMPUTE)


@_schema({"enum": list(_QUANT_TYPES)})
def _quant_type(v, path):
    """A storage type for weights: any table type but the compute types."""
    if not isinstance(v, str) or v not in _QUANT_TYPES:
        raise ConfigError(path, f"expected one of {', '.join(_QUANT_TYPES)}, got {_describe(v)}")
    return v


# "quantization": the network's GEMM weights are stored and run in `dtype` (inference only);
# "qat": quantization-aware training, the float weights are fake-quantized to `dtype` in every forward.
QUANT_KEYS = {
    "dtype": (_quant_type, REQUIRED),
    "per": (one_of("channel", "tensor"), "channel"),
}


NETWORK_KEYS = {
    "loom": (_version, REQUIRED),
    "name": (string, "network"),
    "seed": (nonneg_int, 0),
    "dtype": (one_of(*dtypes.COMPUTE), "float32"),
    "input": (_input_spec, REQUIRED),
    "layers": (layer_list, REQUIRED),
    # two records (their errors name the block), one schema definition
    "quantization": (optional(_named("quantization", _record(QUANT_KEYS, "a quantization block"))), None),
    "qat": (optional(_named("quantization", _record(QUANT_KEYS, "a qat block"))), None),
    "training": (optional(training_block), None),
    "metadata": (_metadata, None),
    "labels": (_labels, None),
}
# Keys left out of the normalized config while they are None (given as null or absent).
DROPPED_WHEN_NONE = ("quantization", "qat", "training", "metadata", "labels")


def _float_input_rule(dtype: str) -> dict:
    """JSON Schema of validate()'s rule "a float input has the network's dtype", for networks of `dtype`."""
    when = {"properties": {"dtype": {"const": dtype}}}
    if dtype != NETWORK_KEYS["dtype"][1]:
        when["required"] = ["dtype"]  # an absent dtype is the default one
    others = [t for t in dtypes.INPUT if t.startswith("float") and t != dtype]
    return {"if": when, "then": {"properties": {"input": {"properties": {"dtype": {"not": {"enum": others}}}}}}}


# The rules of validate() below as JSON Schema (loom.config_schema adds them to the top level).
NETWORK_CROSS_KEY_SCHEMA = {"allOf": [
    *(_float_input_rule(t) for t in dtypes.COMPUTE),
    {"not": {"required": ["quantization", "qat"],
             "properties": {"quantization": {"type": "object"}, "qat": {"type": "object"}}}},
]}


def validate(cfg: Any) -> dict:
    """Validate a config dict and return its normalized form (a new dict)."""
    if not isinstance(cfg, dict):
        raise ConfigError("", f"expected a JSON object for the network config, got {type(cfg).__name__}")
    out = _apply_schema(cfg, NETWORK_KEYS, "", "a network config")
    input_dtype = out["input"]["dtype"]
    if input_dtype is None:
        out["input"]["dtype"] = out["dtype"]
    elif input_dtype.startswith("float") and input_dtype != out["dtype"]:
        raise ConfigError("input.dtype", f"a float input must have the network's dtype {out['dtype']}, "
                          f"got {input_dtype} (integer ids may differ)")
    if out["quantization"] is not None and out["qat"] is not None:
        raise ConfigError("qat", "a quantized network runs inference only; drop qat (quantize the qat-trained "
                          "float network instead)")
    for key in DROPPED_WHEN_NONE:
        if out[key] is None:
            del out[key]
    return out


def loads(text: str) -> dict:
    """Parse JSON text into a validated, normalized config."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError("", f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    return validate(obj)


def dumps(cfg: dict) -> str:
    """Canonical JSON text of a config (validated first): two-space indent, schema key order."""
    return json.dumps(validate(cfg), indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def load(source: Any) -> dict:
    """A config from a dict, a JSON string, or a path to a JSON file."""
    if isinstance(source, dict):
        return validate(source)
    if isinstance(source, os.PathLike) or (isinstance(source, str) and not source.lstrip().startswith("{")):
        try:
            with open(source, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as exc:
            raise ConfigError("", f"cannot read config file {os.fspath(source)!r}: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError("", f"{os.fspath(source)}: not a JSON text file (byte {exc.start} is not UTF-8)") from None
        try:
            return loads(text)
        except ConfigError as exc:
            if exc.path:                  # a JSON path inside the config: the message is already precise
                raise
            raise ConfigError("", f"{os.fspath(source)}: {exc.reason}") from None
    if isinstance(source, str):
        return loads(source)
    raise ConfigError("", f"expected a config dict, JSON string or path, got {type(source).__name__}")
