"""Network config format v1: parse, validate, normalize and dump canonically.

`loads` checks every key of every layer against the key tables and returns the normalized config:
defaults filled in, keys in canonical order, numbers in their canonical type. `dumps` writes that
form; `dumps(loads(s)) == s` holds for every canonical `s`. Errors are `ConfigError`s naming the JSON
path of the bad value. Shapes are checked later, when a `Network` is built from the config.

This module holds the top level: the network's keys (`NETWORK_KEYS`, the training and quantization
blocks, labels, metadata), `validate` and the text and file entry points. The checkers are in
loom/config_checks.py and the layer types' key tables, with `parse_layer`, in loom/config_layers.py;
loom.config re-exports both, so callers and loom.config_schema find every table and checker here.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from . import dtypes, mixed_precision
from .config_checks import (  # noqa: F401 - re-exported
    REQUIRED,
    _apply_schema,
    _describe,
    _is_int,
    _named,
    _record,
    _schema,
    boolean,
    int_or_list,
    list_of,
    nonneg_int,
    nonneg_ints,
    number,
    one_of,
    optional,
    positive_int,
    positive_ints,
    positive_number,
    resolve_type,
    string,
)
from .config_layers import (  # noqa: F401 - re-exported
    ACTIVATIONS,
    COMBINE_MODES,
    CROSS_KEY_SCHEMA,
    DEFAULT_SOFTMAX_VARIANT,
    LAYER_KEYS,
    OPENFLUKE_CORE,
    OPENFLUKE_KEYS,
    OPENFLUKE_SOFTMAX_KEYS,
    SOFTMAX_KEYS,
    SOFTMAX_VARIANTS,
    VARIANT_KEYS,
    activation_name,
    grid,
    grid_position,
    layer,
    layer_list,
    mask_list,
    padding,
    parse_layer,
    reshape_shape,
    rope,
)
from .errors import ConfigError

VERSION = 1


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
    "precision": (optional(one_of(*mixed_precision.PRECISIONS)), None),     # None: the precision in effect
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
