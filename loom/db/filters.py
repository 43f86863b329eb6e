"""Metadata filters for VectorStore.search: a predicate on each vector's JSON metadata, translated to a
parameterized SQL condition on the catalog (SQLite's json_extract), evaluated before the top-k.

    {"genre": "drama"}                              equality
    {"year": {">=": 1600, "<": 1610}}               comparisons: == != < <= > >=, all must hold
    {"act": {"in": [1, 2]}, "tag": {"not in": ["x"]}}
    {"$or": [{"genre": "drama"}, {"year": {"<": 1590}}]}, {"$and": [...]}, {"$not": {...}}

Several keys in one dict must all hold. A vector without metadata, or without the field, matches no
comparison, "!=" and "not in" included (SQL's NULL rule), and so it does match a "$not" of one.
Field names are identifiers (letters, digits, _ and dots for nested objects); values are JSON scalars
(str, int, float, bool, None for "== None" / "!= None").
"""
from __future__ import annotations

import re
from typing import Any

from ..errors import ConfigError

_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}(\.[A-Za-z_][A-Za-z0-9_]{0,63})*$")
_COMPARE = {"==": "=", "!=": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">="}


def to_sql(predicate: Any, where: str = "filter") -> tuple[str, list]:
    """(SQL condition over the catalog's vectors table, its parameters)."""
    if not isinstance(predicate, dict) or not predicate:
        raise ConfigError(where, f"expected a non-empty dict of field conditions, got {predicate!r}")
    parts, params = [], []
    for key, cond in predicate.items():
        if key in ("$or", "$and"):
            if not isinstance(cond, (list, tuple)) or not cond:
                raise ConfigError(f"{where}.{key}", f"expected a non-empty list of filters, got {cond!r}")
            subs = [to_sql(c, f"{where}.{key}[{i}]") for i, c in enumerate(cond)]
            parts.append("(" + (" OR " if key == "$or" else " AND ").join(s for s, _ in subs) + ")")
            params += [p for _, ps in subs for p in ps]
        elif key == "$not":
            sql, ps = to_sql(cond, f"{where}.$not")
            parts.append(f"NOT COALESCE({sql}, 0)")
            params += ps
        else:
            sql, ps = _field(key, cond, f"{where}.{key}")
            parts.append(sql)
            params += ps
    return "(" + " AND ".join(parts) + ")", params


def _field(name: Any, cond: Any, where: str) -> tuple[str, list]:
    if not isinstance(name, str) or not _FIELD.match(name):
        raise ConfigError(where, f"not a field name (letters, digits, _ and dots): {name!r}")
    column = "json_extract(metadata, ?)"
    path = "$." + ".".join(f'"{part}"' for part in name.split("."))
    if not isinstance(cond, dict):
        cond = {"==": cond}
    if not cond:
        raise ConfigError(where, "expected at least one condition, got {}")
    parts, params = [], []
    for op, value in cond.items():
        if op in ("in", "not in"):
            if not isinstance(value, (list, tuple)) or not value:
                raise ConfigError(f"{where}.{op}", f"expected a non-empty list, got {value!r}")
            for i, v in enumerate(value):
                _scalar(v, f"{where}.{op}[{i}]")
            marks = ",".join("?" * len(value))
            if op == "in":
                parts.append(f"{column} IN ({marks})")
            else:
                parts.append(f"({column} IS NOT NULL AND {column} NOT IN ({marks}))")
                params.append(path)
            params += [path, *value]
        elif op in _COMPARE:
            _scalar(value, f"{where}.{op}")
            if value is None and op in ("==", "!="):
                parts.append(f"{column} IS {'NOT ' if op == '!=' else ''}NULL")
                params.append(path)
            elif value is None:
                raise ConfigError(f"{where}.{op}", "None compares only with == and !=")
            else:
                parts.append(f"{column} {_COMPARE[op]} ?")
                params += [path, value]
        else:
            raise ConfigError(where, f"unknown operator {op!r}; expected one of "
                                     f"{', '.join([*_COMPARE, 'in', 'not in'])}")
    return "(" + " AND ".join(parts) + ")", params


def _scalar(value: Any, where: str) -> None:
    if value is not None and not isinstance(value, (str, int, float, bool)):
        raise ConfigError(where, f"expected a JSON scalar (str, number, bool, None), got {type(value).__name__}")
