"""CSV files of OctoDB tables (loom/db/tables.py's import_csv and export_csv; the rules are in
docs/db_tables.md).

An RFC 4180 reader that tells an empty unquoted field (NULL) from a quoted one (""), which csv.reader
cannot; the header's checks; each field parsed as the value its column's type stores; the type of a
column a CSV file creates, inferred from its values; and the field text export_csv writes.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from typing import Any

from ..atomic import read_bytes, write_bytes
from ..errors import ConfigError, FormatError
from .table_types import _I64, _RESERVED_COLUMNS, _RULE, IDENTIFIER, TYPES, _show, _to_sql

_INT_TEXT = re.compile(r"[+-]?[0-9]+")
_FLOAT_TEXT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?|[+-]?(inf|infinity)", re.IGNORECASE)
_HEX_TEXT = re.compile(r"([0-9a-fA-F]{2})*")
_UNQUOTED = re.compile(r'[^,"\r\n]*')


def read_csv(path: str | os.PathLike[str], types: Mapping[str, str] | None
             ) -> tuple[str, list[str], list[tuple[int, list[str | None]]]]:
    """(the path as text, the header's column names, the records after the header) of the CSV file
    `path`, whose header names valid, distinct columns; ConfigError for a `types` entry ({column:
    type}) that names no header column or no type."""
    where = os.fspath(path)
    data = read_bytes(where)
    records = _csv_records(_csv_text(data, where), where)
    if not records:
        raise FormatError(f"{where}: the file is empty; the first line must name the columns")
    header = records[0][1]
    for i, field in enumerate(header):
        if field is None or not IDENTIFIER.fullmatch(field) or field.lower() in _RESERVED_COLUMNS:
            raise FormatError(f"{where}: line 1, field {i + 1}: {_show(field or '')} is not a valid column "
                              f"name ({_RULE})")
        if any(field.lower() == other.lower() for other in header[:i]):
            raise FormatError(f"{where}: line 1: column {field!r} is named twice")
    for column, kind in (types or {}).items():
        if not isinstance(column, str) or column not in header:
            raise ConfigError(f"types.{column}", f"not a column of the CSV header ({', '.join(header)})")
        if kind not in TYPES:
            raise ConfigError(f"types.{column}", f"unknown type {_show(kind)}; types: {', '.join(TYPES)}")
    return where, header, records[1:]


def write_csv(path: str | os.PathLike[str], kinds: Mapping[str, str], rows: list[tuple[Any, ...]]) -> None:
    """`rows` (values as SQLite returns them, of columns {name: type}) to the CSV file `path`, atomically."""
    lines = [",".join(kinds)]
    lines += [",".join(_csv_field(kind, value) for kind, value in zip(kinds.values(), row)) for row in rows]
    write_bytes(path, ("\n".join(lines) + "\n").encode("utf-8"))


def _csv_field(kind: str, value: Any) -> str:
    if value is None:
        return ""
    if kind == "bool":
        return "true" if value else "false"
    if isinstance(value, bytes):
        return value.hex() or '""'             # quoted: an empty blob, not NULL
    if isinstance(value, float):
        return repr(value)           # the shortest text that reads back as the same float
    text = str(value)
    # Text is always quoted, so that "" (an empty string) differs from an empty field (NULL).
    if kind == "text" or isinstance(value, str) and kind == "any" or any(c in text for c in ',"\r\n'):
        return '"' + text.replace('"', '""') + '"'
    return text


def _csv_text(data: bytes, where: str) -> str:
    if data.startswith(b"\xef\xbb\xbf"):       # a byte-order mark, as spreadsheets write
        data = data[3:]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise FormatError(f"{where}: line {line}: not UTF-8 text (byte {exc.start})") from None


def _csv_records(text: str, where: str) -> list[tuple[int, list[str | None]]]:
    """[(line number where the record starts, fields)], RFC 4180: fields separated by commas, a
    quoted field may hold commas, newlines and doubled quotes. An empty unquoted field is None (NULL),
    a quoted one "". csv.reader cannot tell those apart, hence this reader."""
    records: list[tuple[int, list[str | None]]] = []
    i, n, line = 0, len(text), 1
    while i < n:
        start = line
        fields: list[str | None] = []
        while True:
            if i < n and text[i] == '"':
                opened, parts = line, []
                i += 1
                while True:
                    j = text.find('"', i)
                    if j < 0:
                        raise FormatError(f"{where}: line {opened}: a quoted field is not closed (the file ends "
                                          f"inside it: truncated?)")
                    parts.append(text[i:j])
                    line += text.count("\n", i, j)
                    if text.startswith('""', j):
                        parts.append('"')
                        i = j + 2
                        continue
                    i = j + 1
                    break
                fields.append("".join(parts))
                if i < n and text[i] not in ',\r\n':
                    raise FormatError(f"{where}: line {line}: {_show(text[i])} after a closing quote (a quote inside "
                                      f"a field is written as two quotes)")
            else:
                match = _UNQUOTED.match(text, i)
                i = match.end()
                if i < n and text[i] == '"':
                    raise FormatError(f"{where}: line {line}: a quote inside an unquoted field (quote the field and "
                                      f"double the quote)")
                fields.append(match.group() or None)
            if i < n and text[i] == ",":
                i += 1
                continue
            if i < n:                               # a line end: \n, \r\n or \r
                i += 2 if text.startswith("\r\n", i) else 1
                line += 1
            break
        records.append((start, fields))
    return records


def csv_value(kind: str, field: str | None, where: str) -> Any:
    """A CSV field as the value to store in a column of type `kind`."""
    if field is None:
        return None
    if kind in ("text", "any"):
        return field
    if field == "":                             # quoted: an empty blob; NULL in the other types
        return b"" if kind == "blob" else None
    value: Any = None
    if kind == "int" and _INT_TEXT.fullmatch(field):
        value = int(field)
    elif kind == "float" and _FLOAT_TEXT.fullmatch(field):
        value = float(field)
    elif kind == "bool" and field.lower() in ("true", "false", "1", "0"):
        value = field.lower() in ("true", "1")
    elif kind == "blob" and _HEX_TEXT.fullmatch(field):
        value = bytes.fromhex(field)
    elif kind == "json":
        try:
            value = json.loads(field)
        except ValueError:
            raise FormatError(f"{where}: {_show(field)} is not JSON") from None
    else:
        raise FormatError(f"{where}: expected {kind}{' (hex)' if kind == 'blob' else ''}, got {_show(field)}")
    try:
        return _to_sql(kind, value, "")
    except ConfigError as exc:
        raise FormatError(f"{where}: {exc.reason}") from None


def infer_type(fields: list[str | None]) -> str:
    values = [f for f in fields if f is not None]
    if not values:
        return "text"
    if all(_INT_TEXT.fullmatch(f) and _I64[0] <= int(f) <= _I64[1] for f in values):
        return "int"
    if all(_FLOAT_TEXT.fullmatch(f) for f in values):
        return "float"
    return "text"
