"""The column types and names of OctoDB tables (loom/db/tables.py).

The Loom types (`TYPES`) and how a Python value of each is checked and stored in SQLite (`_to_sql`)
and read back (`_from_sql`); the type of a column another tool declared (`_affinity`); the rule for
table and column names (`IDENTIFIER`) and their quoting; `_Table`, one table's columns and key as
read from the file.
"""
from __future__ import annotations

import json
import math
import numbers
import re
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError

# fullmatch, never match + "$": "$" also matches before a final newline, which would let "t\n" through.
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
TYPES = ("int", "float", "text", "bool", "blob", "json")

_RULE = "letters, digits and _, not starting with a digit, at most 64 characters"
_RESERVED_TABLES = ("sqlite_", "_octo_")
_RESERVED_COLUMNS = ("rowid", "oid", "_rowid_")   # SQLite's names for the row id; a column would hide it
_I64 = (-2**63, 2**63 - 1)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _quote(name: str) -> str:
    # Names are validated before they get here; doubling quotes keeps even a foreign table's odd names safe.
    return '"' + name.replace('"', '""') + '"'


def _identifier(value: Any, path: str, what: str) -> str:
    if not isinstance(value, str) or not IDENTIFIER.fullmatch(value):
        raise ConfigError(path, f"{_show(value)} is not a valid {what} name: {_RULE}")
    return value


def _table_name(value: Any, path: str = "table") -> str:
    name = _identifier(value, path, "table")
    if name.lower().startswith(_RESERVED_TABLES):
        raise ConfigError(path, f"{name!r}: names starting with sqlite_ or _octo_ are reserved")
    return name


def _to_sql(kind: str, value: Any, path: str) -> Any:
    """value checked against a column of Loom type `kind`, as SQLite stores it (None is NULL)."""
    if value is None:
        return None
    if kind == "int" and isinstance(value, numbers.Integral) and not isinstance(value, bool):
        if not _I64[0] <= int(value) <= _I64[1]:
            raise ConfigError(path, f"{value} is outside the 64-bit integer range of an int column")
        return int(value)
    if kind == "float" and isinstance(value, numbers.Real) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:
            raise ConfigError(path, f"{_show(value)} is too large for a float column") from None
        if math.isnan(number):       # SQLite would store a NaN as NULL
            raise ConfigError(path, "NaN cannot be stored in a float column (SQLite turns it into NULL)")
        return number
    if kind == "bool" and isinstance(value, bool):
        return int(value)
    if kind == "blob" and isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if kind == "json":
        try:
            value = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ConfigError(path, f"{_show(value)} cannot be stored in a json column: {exc}") from None
        kind = "text"
    if kind == "any":                           # a column of a table made by another tool
        for sub, accepted in (("int", numbers.Integral), ("float", numbers.Real), ("text", str),
                              ("blob", (bytes, bytearray, memoryview))):
            if isinstance(value, accepted) and not isinstance(value, bool):
                return _to_sql(sub, value, path)
    if kind == "text" and isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ConfigError(path, f"{_show(value)} is not valid Unicode (a lone surrogate)") from None
        return value
    raise ConfigError(path, f"expected {kind}, got {_show(value)} ({type(value).__name__})")


def _from_sql(kind: str, value: Any) -> Any:
    if value is None:
        return None
    if kind == "bool":
        return bool(value)
    if kind == "json":
        return json.loads(value)
    if kind == "float":
        return float(value)
    return value


def _affinity(declared: str) -> str:
    """The Loom type of a column another tool declared (SQLite's affinity rules); "any" if none fits."""
    upper = declared.upper()
    if "INT" in upper:
        return "int"
    if any(word in upper for word in ("CHAR", "CLOB", "TEXT")):
        return "text"
    if "BLOB" in upper:
        return "blob"
    if any(word in upper for word in ("REAL", "FLOA", "DOUB")):
        return "float"
    return "any"


@dataclass(frozen=True)
class _Table:
    name: str
    columns: dict[str, str]            # name -> Loom type, in table order
    primary_key: tuple[str, ...]
    rowid: bool

    def column(self, name: Any, path: str, pseudo: bool = True) -> tuple[str, str]:
        """(the column's name as created, its type); "rowid" too where `pseudo`."""
        _identifier(name, path, "column")
        for column, kind in self.columns.items():
            if column.lower() == name.lower():       # SQLite names are ASCII case-insensitive
                return column, kind
        if pseudo and self.rowid and name.lower() == "rowid":
            return "rowid", "int"
        raise ConfigError(path, f"table {self.name} has no column {name!r}; columns: {', '.join(self.columns)}")

    def order_key(self) -> tuple[str, ...]:
        return self.primary_key or (("rowid",) if self.rowid else tuple(self.columns))
