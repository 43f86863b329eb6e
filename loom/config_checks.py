"""The checker vocabulary of the config format: value checkers and the machinery of key tables.

A checker takes (value, JSON path) and returns the canonical value or raises a `ConfigError` naming the
path. A key table maps each key to (checker, default), `REQUIRED` marking keys without a default;
`_record` turns a table into the checker of a closed JSON object and `_apply_schema` applies one.
Every checker carries the JSON Schema of what it accepts (`_schema`), from which loom.config_schema
builds docs/loom-config.schema.json. The layer tables are in loom/config_layers.py, the network's in
loom/config.py, which re-exports this module's names.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable, Collection
from typing import Any

from .errors import ConfigError

REQUIRED = object()  # marks a key with no default


# --- the JSON Schema of each checker -----------------------------------------------------------------
# loom.config_schema builds docs/loom-config.schema.json from the key tables. For that, every
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
