"""OctoDB: typed tables in one SQLite file, on Python's standard sqlite3 (reference: docs/db_tables.md).

    with Tables("shop.db") as db:
        db.create("items", {"id": "int", "name": "text", "price": "float"}, primary_key="id")
        db.insert("items", [{"name": "pen", "price": 1.5}, {"name": "ink", "price": 4.0}])
        db.select("items", where=("price", "<", 2.0), order_by="-price")

Every value reaches SQL as a bound parameter; every table and column name is checked against
`IDENTIFIER` and quoted. Bad arguments raise ConfigError naming where they are (`where[1]`,
`items[2].price`); a malformed CSV or database file raises FormatError; a violated constraint (a
duplicate primary key) raises ConstraintError; a file that cannot be read or written, FileError.
"""
from __future__ import annotations

import json
import math
import numbers
import os
import re
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, overload

from ..atomic import FileError, read_bytes, write_bytes
from ..errors import ConfigError, FormatError, LoomError, StoreError

# fullmatch, never match + "$": "$" also matches before a final newline, which would let "t\n" through.
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
TYPES = ("int", "float", "text", "bool", "blob", "json")
OPERATORS = ("==", "!=", "<", "<=", ">", ">=", "in", "contains", "startswith", "like")
AGGREGATES = ("count", "sum", "avg", "min", "max")

_RULE = "letters, digits and _, not starting with a digit, at most 64 characters"
_META = "_octo_columns"                  # the Loom type of each column: SQLite has no bool or json type
_RESERVED_TABLES = ("sqlite_", "_octo_")
_RESERVED_COLUMNS = ("rowid", "oid", "_rowid_")   # SQLite's names for the row id; a column would hide it
_I64 = (-2**63, 2**63 - 1)
# STRICT tables (SQLite 3.37+) make SQLite itself refuse wrong types; older versions get CHECK constraints.
_STRICT = sqlite3.sqlite_version_info >= (3, 37, 0)
_DECLARED = {"int": "INTEGER", "float": "REAL", "text": "TEXT", "bool": "INTEGER", "blob": "BLOB", "json": "TEXT"}
_TYPEOF = {"int": "integer", "float": "real", "text": "text", "blob": "blob", "json": "text"}
_ORDERED = ("int", "float", "text", "bool", "blob", "any")
_NUMERIC = ("int", "float", "bool", "any")
_INT_TEXT = re.compile(r"[+-]?[0-9]+")
_FLOAT_TEXT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?|[+-]?(inf|infinity)", re.IGNORECASE)
_HEX_TEXT = re.compile(r"([0-9a-fA-F]{2})*")
_UNQUOTED = re.compile(r'[^,"\r\n]*')
_WHERE_HELP = ("a condition is (column, operator, value), ('and', cond, ...), ('or', cond, ...), ('not', cond) "
               "or a dict {column: value, ...}")

Where = tuple[Any, ...] | list[Any] | Mapping[str, Any]
OrderBy = str | list[str] | tuple[str, ...]
Key = str | list[str] | tuple[str, ...]


class ConstraintError(LoomError, sqlite3.IntegrityError):
    """A write breaks a constraint of the table (a duplicate primary key, a NOT NULL or CHECK constraint,
    a foreign key): the message names the table, the row or CSV line, and SQLite's reason."""


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


class Tables:
    """Typed tables in the SQLite file at `path` (created if missing; ":memory:" for a private one).

    The file is opened in WAL mode with synchronous=FULL (a write is on disk once the call, or the
    outermost `transaction()`, returns) and foreign keys on. Other processes and other `Tables` on the
    same file see committed writes; a writer waits up to `timeout` seconds for another's lock."""

    def __init__(self, path: str | os.PathLike[str], timeout: float = 5.0):
        self.path = os.fspath(path)
        self._depth = 0                                 # transaction() nesting
        self._cache: dict[str, _Table] = {}
        self._version: int | None = None                # PRAGMA schema_version the cache was read at
        self._conn: sqlite3.Connection | None = None
        try:
            # isolation_level=None: no implicit BEGIN; transaction() says where transactions start and end.
            conn = sqlite3.connect(self.path, timeout=timeout, isolation_level=None)
        except sqlite3.Error as exc:
            raise FileError(f"{self.path}: cannot open the database ({exc})") from None
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
        except sqlite3.Error as exc:
            conn.close()
            if type(exc) is sqlite3.DatabaseError:       # "file is not a database", "malformed"
                raise FormatError(f"{self.path}: not a readable SQLite database ({exc})") from None
            raise FileError(f"{self.path}: cannot open the database ({exc})") from None
        self._conn = conn

    def __repr__(self) -> str:
        return f"Tables({self.path!r}{'' if self._conn else ', closed'})"

    def close(self) -> None:
        """Close the file (an open transaction() is rolled back). Closing twice is allowed."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Tables:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the one place SQL runs --------------------------------------------------------------------------

    def _execute(self, sql: str, params: Iterable[Any] = (), where: str = "") -> sqlite3.Cursor:
        if self._conn is None:
            raise StoreError(f"{self.path}: the database is closed")
        try:
            return self._conn.execute(sql, tuple(params))
        except sqlite3.IntegrityError as exc:
            raise ConstraintError(f"{where}: {exc}" if where else str(exc)) from None
        except sqlite3.DatabaseError as exc:
            if type(exc) is sqlite3.DatabaseError:
                raise FormatError(f"{self.path}: the database file is damaged ({exc})") from None
            raise

    def _query(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        cursor = self._execute(sql, params)
        try:
            return cursor.fetchall()
        except sqlite3.DatabaseError as exc:
            if type(exc) is sqlite3.DatabaseError:
                raise FormatError(f"{self.path}: the database file is damaged ({exc})") from None
            raise

    # --- transactions ------------------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[Tables]:
        """`with db.transaction():` the writes in the block are committed together when it ends, or
        all rolled back if it raises. Nested blocks are savepoints: an inner block that raises undoes
        its own writes only (if the outer block catches the error). Other connections see nothing
        until the outermost block commits."""
        depth = self._depth
        savepoint = f"octo_{depth}"
        # IMMEDIATE takes the write lock now: a deferred transaction that reads, then writes, can fail
        # with "database is locked" at the write, without waiting, when another connection wrote meanwhile.
        self._execute("BEGIN IMMEDIATE" if depth == 0 else f"SAVEPOINT {savepoint}")
        self._depth += 1
        try:
            yield self
        except BaseException:
            self._depth = depth
            self._cache.clear()                  # a rolled-back create or drop
            if self._conn is not None and self._conn.in_transaction:
                self._execute("ROLLBACK" if depth == 0 else f"ROLLBACK TO {savepoint}")
                if depth:
                    self._execute(f"RELEASE {savepoint}")
            raise
        self._depth = depth
        if depth:
            self._execute(f"RELEASE {savepoint}")
            return
        try:
            self._execute("COMMIT")
        except BaseException:
            if self._conn is not None and self._conn.in_transaction:
                self._execute("ROLLBACK")
            self._cache.clear()
            raise

    # --- schema ------------------------------------------------------------------------------------------

    def tables(self) -> list[str]:
        """The names of the tables, sorted (SQLite's own and Loom's bookkeeping table left out)."""
        rows = self._query("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        return [name for (name,) in rows
                if IDENTIFIER.fullmatch(name) and not name.lower().startswith(_RESERVED_TABLES)]

    def schema(self, table: str) -> dict[str, str]:
        """{column: type} in table order; the types of create() (a table made by another tool may
        have columns of type "any": no declared type, or one that maps to none of these)."""
        return dict(self._table(table).columns)

    def primary_key(self, table: str) -> list[str]:
        """The primary key's columns; [] for a table keyed by its rowid."""
        return list(self._table(table).primary_key)

    def create(self, table: str, columns: Mapping[str, str], primary_key: Key | None = None,
               if_not_exists: bool = False) -> None:
        """Create `table` with `columns` ({name: type}, types in TYPES) and an optional primary key
        (a column or a list of columns; their values must then be given and be unique). Without one,
        rows are keyed by SQLite's rowid. A single "int" primary key *is* the rowid: insert() fills it
        when the row leaves it out. if_not_exists: do nothing when the table exists with these columns
        and key (ConfigError if it exists with others)."""
        name = _table_name(table)
        if not isinstance(columns, Mapping) or not columns:
            raise ConfigError("columns", "give a dict {column: type}, e.g. {'id': 'int', 'name': 'text'}")
        spec: dict[str, str] = {}
        for column, kind in columns.items():
            _identifier(column, "columns", "column")
            if column.lower() in _RESERVED_COLUMNS:
                raise ConfigError("columns", f"{column!r} is SQLite's name for the row id; choose another name")
            if any(column.lower() == other.lower() for other in spec):
                raise ConfigError("columns", f"{column!r} is given twice (names are case-insensitive)")
            if kind not in TYPES:
                raise ConfigError(f"columns.{column}", f"unknown type {_show(kind)}; types: {', '.join(TYPES)}")
            spec[column] = kind
        key = self._key_columns(spec, primary_key)
        if self._exists(name):
            if if_not_exists:
                have = self._table(name)
                if list(have.columns.items()) == list(spec.items()) and have.primary_key == key:
                    return
                raise ConfigError("table", f"table {have.name} exists with columns {have.columns} and primary key "
                                           f"{list(have.primary_key)}, not {spec} and {list(key)}")
            raise ConfigError("table", f"table {name!r} exists; drop() it first or pass if_not_exists=True")
        rowid_alias = len(key) == 1 and spec[key[0]] == "int"
        defs = []
        for column, kind in spec.items():
            checks = [f"{_quote(column)} IN (0, 1)"] if kind == "bool" else []
            if not _STRICT and kind in _TYPEOF:
                checks.append(f"typeof({_quote(column)}) IN ('{_TYPEOF[kind]}', 'null')")
            not_null = " NOT NULL" if column in key and not rowid_alias else ""
            defs.append(f"{_quote(column)} {_DECLARED[kind]}{not_null}" + "".join(f" CHECK ({c})" for c in checks))
        if key:
            defs.append(f"PRIMARY KEY ({', '.join(map(_quote, key))})")
        strict = " STRICT" if _STRICT else ""
        with self.transaction():
            self._execute(f"CREATE TABLE {_quote(name)} ({', '.join(defs)}){strict}")
            self._execute(f"CREATE TABLE IF NOT EXISTS {_META} (tbl TEXT NOT NULL, col TEXT NOT NULL, "
                          f"type TEXT NOT NULL, PRIMARY KEY (tbl, col)){strict}")
            self._execute(f"DELETE FROM {_META} WHERE tbl = ? COLLATE NOCASE", [name])
            for column, kind in spec.items():
                self._execute(f"INSERT INTO {_META} (tbl, col, type) VALUES (?, ?, ?)", [name, column, kind])
        self._cache.clear()

    def drop(self, table: str, if_exists: bool = False) -> None:
        """Delete `table` and its rows (ConfigError if there is none, unless if_exists)."""
        name = _table_name(table)
        if if_exists and not self._exists(name):
            return
        name = self._table(name).name
        with self.transaction():
            self._execute(f"DROP TABLE {_quote(name)}")
            if self._exists(_META):
                self._execute(f"DELETE FROM {_META} WHERE tbl = ?", [name])
        self._cache.clear()

    @staticmethod
    def _key_columns(spec: Mapping[str, str], primary_key: Any) -> tuple[str, ...]:
        if primary_key is None:
            return ()
        names = [primary_key] if isinstance(primary_key, str) else primary_key
        if not isinstance(names, (list, tuple)) or not names:
            raise ConfigError("primary_key", "give a column name or a list of column names")
        key: list[str] = []
        for i, column in enumerate(names):
            path = "primary_key" if isinstance(primary_key, str) else f"primary_key[{i}]"
            _identifier(column, path, "column")
            match = [c for c in spec if c.lower() == column.lower()]
            if not match:
                raise ConfigError(path, f"{column!r} is not one of the columns {', '.join(spec)}")
            if match[0] in key:
                raise ConfigError(path, f"{column!r} is named twice")
            key.append(match[0])
        return tuple(key)

    def _exists(self, name: str) -> bool:
        return bool(self._query("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ? COLLATE NOCASE",
                                [name]))

    def _table(self, table: Any, path: str = "table") -> _Table:
        """The schema of `table`, cached until the database's schema version changes (any connection's
        CREATE, DROP or ALTER changes it)."""
        name = _table_name(table, path)
        version = self._query("PRAGMA schema_version")[0][0]
        if version != self._version:
            self._cache.clear()
            self._version = version
        if name.lower() in self._cache:
            return self._cache[name.lower()]
        found = self._query("SELECT name FROM sqlite_master WHERE type = 'table' AND name = ? COLLATE NOCASE",
                            [name])
        if not found:
            raise ConfigError(path, f"no table {name!r}; tables: {', '.join(self.tables()) or '(none)'}")
        name = found[0][0]
        info = self._query("SELECT name, type, pk FROM pragma_table_info(?)", [name])
        types = dict(self._query(f"SELECT col, type FROM {_META} WHERE tbl = ?", [name])) if self._exists(_META) else {}
        columns = {column: types[column] if types.get(column) in TYPES else _affinity(declared)
                   for column, declared, _ in info}
        key = tuple(column for column, _, position in sorted(info, key=lambda r: r[2]) if position)
        try:
            self._query(f"SELECT rowid FROM {_quote(name)} LIMIT 0")
            rowid = True
        except sqlite3.OperationalError:            # a WITHOUT ROWID table made by another tool
            rowid = False
        self._cache[name.lower()] = _Table(name, columns, key, rowid)
        return self._cache[name.lower()]

    # --- writes ------------------------------------------------------------------------------------------

    @overload
    def insert(self, table: str, rows: Mapping[str, Any]) -> int: ...

    @overload
    def insert(self, table: str, rows: Iterable[Mapping[str, Any]]) -> list[int]: ...

    def insert(self, table: str, rows: Mapping[str, Any] | Iterable[Mapping[str, Any]]) -> int | list[int]:
        """Insert one row (a dict {column: value}; columns left out are NULL) and return its rowid, or
        a list of rows in one transaction (all or none) and return their rowids."""
        t = self._table(table)
        if isinstance(rows, Mapping):
            return self._insert(t, rows, t.name)
        if isinstance(rows, (str, bytes)) or not isinstance(rows, Iterable):
            raise ConfigError("rows", f"give a dict or a list of dicts, not {type(rows).__name__}")
        with self.transaction():
            return [self._insert(t, row, f"{t.name}[{i}]") for i, row in enumerate(rows)]

    def _insert(self, t: _Table, row: Any, path: str) -> int:
        if not isinstance(row, Mapping):
            raise ConfigError(path, f"a row is a dict {{column: value}}, not {type(row).__name__}")
        names, values = self._assignments(t, row, path)
        if names:
            sql = (f"INSERT INTO {_quote(t.name)} ({', '.join(map(_quote, names))}) "
                   f"VALUES ({', '.join('?' * len(names))})")
        else:
            sql = f"INSERT INTO {_quote(t.name)} DEFAULT VALUES"
        return self._execute(sql, values, path).lastrowid

    @staticmethod
    def _assignments(t: _Table, row: Mapping[str, Any], path: str) -> tuple[list[str], list[Any]]:
        names: list[str] = []
        values = []
        for key, value in row.items():
            column, kind = t.column(key, path, pseudo=False)
            if column in names:
                raise ConfigError(path, f"column {column!r} is given twice (names are case-insensitive)")
            names.append(column)
            values.append(_to_sql(kind, value, f"{path}.{column}"))
        return names, values

    def update(self, table: str, values: Mapping[str, Any], *, where: Where | None) -> int:
        """Set `values` ({column: value}) in the rows that match `where` (None: every row, said
        explicitly); returns how many rows matched."""
        t = self._table(table)
        if not isinstance(values, Mapping) or not values:
            raise ConfigError("values", "give a non-empty dict {column: new value}")
        names, params = self._assignments(t, values, t.name)
        clause, where_params = self._where(t, where)
        sets = ", ".join(f"{_quote(name)} = ?" for name in names)
        return self._execute(f"UPDATE {_quote(t.name)} SET {sets}{clause}", params + where_params, t.name).rowcount

    def delete(self, table: str, *, where: Where | None) -> int:
        """Delete the rows that match `where` (None: every row, said explicitly); returns how many."""
        t = self._table(table)
        clause, params = self._where(t, where)
        return self._execute(f"DELETE FROM {_quote(t.name)}{clause}", params, t.name).rowcount

    # --- reads -------------------------------------------------------------------------------------------

    def get(self, table: str, key: Any) -> dict[str, Any] | None:
        """The row whose primary key is `key` (a tuple for a key of several columns; the rowid for a
        table without a primary key), or None."""
        t = self._table(table)
        columns = t.primary_key or ("rowid",)
        if len(columns) == 1:
            keys = [key]
        elif isinstance(key, (tuple, list)) and len(key) == len(columns):
            keys = list(key)
        else:
            raise ConfigError("key", f"table {t.name} has the primary key ({', '.join(columns)}): give a tuple "
                                     f"of {len(columns)} values, not {_show(key)}")
        where = [(column, "==", value) for column, value in zip(columns, keys)]
        try:
            rows = self.select(t.name, where=("and", *where), limit=1)
        except ConfigError as exc:
            raise ConfigError("key", exc.reason) from None
        return rows[0] if rows else None

    def select(self, table: str, columns: list[str] | tuple[str, ...] | None = None, where: Where | None = None,
               order_by: OrderBy | None = None, limit: int | None = None, offset: int | None = None,
               distinct: bool = False) -> list[dict[str, Any]]:
        """The rows that match `where`, as dicts {column: value} with the `columns` asked for (all by
        default, "rowid" allowed). Rows come in primary-key order (rowid order without a key; with
        distinct, in the order of the columns) unless `order_by` ("col", "-col" descending, or a
        list) says otherwise; its ties are broken the same way. `limit` and `offset` are integers >= 0."""
        t = self._table(table)
        sql, params, kinds = self._select_sql(t, columns, where, order_by, limit, offset, distinct)
        names = list(kinds)
        return [{name: _from_sql(kinds[name], value) for name, value in zip(names, row)}
                for row in self._query(sql, params)]

    def count(self, table: str, where: Where | None = None) -> int:
        """How many rows match `where` (all rows for None)."""
        t = self._table(table)
        clause, params = self._where(t, where)
        return self._query(f"SELECT count(*) FROM {_quote(t.name)}{clause}", params)[0][0]

    def _select_sql(self, t: _Table, columns: Any, where: Any, order_by: Any, limit: Any, offset: Any,
                    distinct: Any) -> tuple[str, list[Any], dict[str, str]]:
        """(SQL, parameters, {output column: type})."""
        if not isinstance(distinct, bool):
            raise ConfigError("distinct", f"expected True or False, got {_show(distinct)}")
        if columns is None:
            kinds = dict(t.columns)
        elif isinstance(columns, (list, tuple)) and columns:
            kinds = {}
            for i, name in enumerate(columns):
                column, kind = t.column(name, f"columns[{i}]")
                if column in kinds:
                    raise ConfigError(f"columns[{i}]", f"column {column!r} is asked for twice")
                kinds[column] = kind
        else:
            raise ConfigError("columns", f"give a non-empty list of column names, not {_show(columns)}")
        clause, params = self._where(t, where)
        terms = self._order_terms(order_by, lambda name, path: t.column(name, path)[0])
        tie = list(kinds) if distinct else t.order_key()
        if distinct and any(name not in kinds for name, _ in terms):
            raise ConfigError("order_by", "with distinct=True, order by columns that are selected")
        order = terms + [(name, False) for name in tie if name not in {n for n, _ in terms}]
        sql = (f"SELECT {'DISTINCT ' if distinct else ''}{', '.join(map(_quote, kinds))} FROM {_quote(t.name)}"
               f"{clause} ORDER BY " + ", ".join(_quote(name) + (" DESC" if desc else "") for name, desc in order))
        limit, offset = _count_arg(limit, "limit"), _count_arg(offset, "offset")
        if limit is not None or offset is not None:
            sql += " LIMIT ? OFFSET ?"        # LIMIT -1: no limit (SQLite needs a LIMIT before an OFFSET)
            params += [-1 if limit is None else limit, offset or 0]
        return sql, params, kinds

    @staticmethod
    def _order_terms(order_by: Any, resolve: Any) -> list[tuple[str, bool]]:
        """[(column, descending)] from "col" / "-col" / a list of them; `resolve(name, path)` checks a name."""
        if order_by is None:
            return []
        single = isinstance(order_by, str)
        if not single and not isinstance(order_by, (list, tuple)):
            raise ConfigError("order_by", f"give a column, '-column' or a list of them, not {_show(order_by)}")
        terms: list[tuple[str, bool]] = []
        for i, item in enumerate([order_by] if single else order_by):
            path = "order_by" if single else f"order_by[{i}]"
            if not isinstance(item, str):
                raise ConfigError(path, f"give a column or '-column', not {_show(item)}")
            desc = item.startswith("-")
            name = resolve(item[1:] if desc else item, path)
            if any(name == other for other, _ in terms):
                raise ConfigError(path, f"{name!r} is named twice")
            terms.append((name, desc))
        return terms

    def aggregate(self, table: str, aggregates: Mapping[str, tuple[str, str]], where: Where | None = None,
                  group_by: str | list[str] | tuple[str, ...] | None = None, order_by: OrderBy | None = None
                  ) -> list[dict[str, Any]]:
        """Aggregates ({output name: (function, column)}, functions in AGGREGATES, column "*" for
        count(*)) over the rows that match `where`: one dict per group of equal `group_by` values (its
        group columns, then the aggregates), or a single dict without group_by. NULLs are skipped;
        sum, avg, min and max of no values are None. Groups come in group_by order unless `order_by`
        (group columns and output names, "-name" descending) says otherwise."""
        t = self._table(table)
        groups: list[str] = []
        kinds: dict[str, str] = {}
        if group_by is not None:
            single = isinstance(group_by, str)
            if not single and (not isinstance(group_by, (list, tuple)) or not group_by):
                raise ConfigError("group_by", f"give a column or a list of columns, not {_show(group_by)}")
            for i, name in enumerate([group_by] if single else group_by):
                path = "group_by" if single else f"group_by[{i}]"
                column, kind = t.column(name, path)
                if column in groups:
                    raise ConfigError(path, f"{column!r} is named twice")
                groups.append(column)
                kinds[column] = kind
        if not isinstance(aggregates, Mapping) or not (aggregates or groups):
            raise ConfigError("aggregates", "give a dict {name: (function, column)}, e.g. {'n': ('count', '*')}")
        exprs = [_quote(column) for column in groups]
        for out, spec in aggregates.items():
            path = f"aggregates.{out}"
            _identifier(out, "aggregates", "output")
            if any(out.lower() == other.lower() for other in kinds):
                raise ConfigError(path, f"{out!r} is already a group column or an output name")
            if not isinstance(spec, (tuple, list)) or len(spec) != 2:
                raise ConfigError(path, f"give (function, column), e.g. ('sum', 'price'), not {_show(spec)}")
            function, name = spec
            if not isinstance(function, str) or function not in AGGREGATES:
                raise ConfigError(f"{path}[0]", f"unknown function {_show(function)}; functions: "
                                                f"{', '.join(AGGREGATES)}")
            if function == "count" and name == "*":
                exprs.append("count(*)")
                kinds[out] = "int"
                continue
            column, kind = t.column(name, f"{path}[1]")
            if function in ("sum", "avg") and kind not in _NUMERIC:
                raise ConfigError(f"{path}[1]", f"{function} needs an int, float or bool column; {column} is {kind}")
            if function in ("min", "max") and kind not in _ORDERED:
                raise ConfigError(f"{path}[1]", f"{function} cannot order a {kind} column ({column})")
            exprs.append(f"{function}({_quote(column)})")
            kinds[out] = {"count": "int", "avg": "float", "sum": "int" if kind == "bool" else kind}.get(function, kind)
        clause, params = self._where(t, where)
        names = list(kinds)

        def resolve(name: str, path: str) -> str:
            _identifier(name, path, "column")
            for known in names:
                if known.lower() == name.lower():
                    return known
            raise ConfigError(path, f"order by a group column or an output name: {', '.join(names)}")

        terms = self._order_terms(order_by, resolve) + [(name, False) for name in groups]
        # ORDER BY output positions: an output name may also be a column of the table, and SQL would be
        # ambiguous about which one "name" means.
        order = ", ".join(f"{names.index(name) + 1}{' DESC' if desc else ''}" for name, desc in terms)
        sql = (f"SELECT {', '.join(exprs)} FROM {_quote(t.name)}{clause}"
               + (f" GROUP BY {', '.join(map(_quote, groups))}" if groups else "")
               + (f" ORDER BY {order}" if order else ""))
        return [{name: _from_sql(kinds[name], value) for name, value in zip(names, row)}
                for row in self._query(sql, params)]

    # --- the where language ------------------------------------------------------------------------------

    def _where(self, t: _Table, where: Any) -> tuple[str, list[Any]]:
        if where is None:
            return "", []
        sql, params = self._condition(t, where, "where")
        return f" WHERE {sql}", params

    def _condition(self, t: _Table, cond: Any, path: str) -> tuple[str, list[Any]]:
        if isinstance(cond, Mapping):
            if not cond:
                raise ConfigError(path, "an empty dict compares nothing; pass where=None for every row")
            cond = ("and", *((column, "==", value) for column, value in cond.items()))
        if not isinstance(cond, (tuple, list)) or not cond:
            raise ConfigError(path, f"{_WHERE_HELP}; got {_show(cond)}")
        head = cond[0]
        # ("not", "==", 1) compares a column named "not": a sub-condition is never a string.
        if isinstance(head, str) and head in ("and", "or", "not") and not (len(cond) > 1 and isinstance(cond[1], str)):
            if len(cond) == 1 or head == "not" and len(cond) != 2:
                raise ConfigError(path, f"({head!r}, ...) takes {'one condition' if head == 'not' else 'conditions'}")
            parts, params = [], []
            for i, sub in enumerate(cond[1:], 1):
                sql, more = self._condition(t, sub, f"{path}[{i}]")
                parts.append(f"({sql})")
                params += more
            if head == "not":
                # SQL's NOT of an unknown (a NULL compared) is unknown, matching no row; "not" here matches
                # exactly the rows its condition does not.
                return f"NOT coalesce({parts[0]}, 0)", params
            return f" {head.upper()} ".join(parts), params
        if len(cond) != 3:
            raise ConfigError(path, f"{_WHERE_HELP}; got {_show(cond)}")
        name, op, value = cond
        column, kind = t.column(name, f"{path}[0]")
        if not isinstance(op, str) or op not in OPERATORS:
            raise ConfigError(f"{path}[1]", f"unknown operator {_show(op)}; operators: {', '.join(OPERATORS)}")
        ident, vpath = _quote(column), f"{path}[2]"
        if op in ("==", "!="):
            if value is None:
                return f"{ident} IS {'' if op == '==' else 'NOT '}NULL", []
            # "!=" is IS NOT: a NULL differs from every value, as None != 3 in Python.
            return f"{ident} {'=' if op == '==' else 'IS NOT'} ?", [_to_sql(kind, value, vpath)]
        if op == "in":
            if not isinstance(value, (list, tuple, set, frozenset)):
                raise ConfigError(vpath, f"'in' takes a list of values, not {_show(value)}")
            values = [_to_sql(kind, v, f"{vpath}[{i}]") for i, v in enumerate(value)]
            known = [v for v in values if v is not None]
            parts = [f"{ident} IN ({', '.join('?' * len(known))})"] if known else []
            parts += [f"{ident} IS NULL"] if None in values else []
            return " OR ".join(parts) or "0", known
        if value is None:
            raise ConfigError(vpath, f"{op!r} cannot compare with None (NULL); use ('{column}', '==', None)")
        if op in ("contains", "startswith", "like"):
            if kind != "text":
                raise ConfigError(f"{path}[1]", f"{op!r} needs a text column; {column} is {kind}")
            text = _to_sql("text", value, vpath)
            # instr, not LIKE: % and _ in the text are plain characters, and the match is case-sensitive.
            sql = {"contains": f"instr({ident}, ?) > 0", "startswith": f"instr({ident}, ?) = 1",
                   "like": f"{ident} LIKE ?"}[op]
            return sql, [text]
        if kind not in _ORDERED:
            raise ConfigError(f"{path}[1]", f"{op!r} cannot order a {kind} column ({column})")
        return f"{ident} {op} ?", [_to_sql(kind, value, vpath)]

    # --- CSV ---------------------------------------------------------------------------------------------

    def export_csv(self, table: str, path: str | os.PathLike[str], where: Where | None = None,
                   columns: list[str] | tuple[str, ...] | None = None, order_by: OrderBy | None = None) -> int:
        """Write the rows that match `where` to the CSV file `path` (UTF-8, a header line of column
        names, "\\n" line ends), atomically: readers see the old file or the whole new one. Returns the
        number of rows. Text is always quoted; NULL is an empty unquoted field (docs/db_tables.md)."""
        t = self._table(table)
        sql, params, kinds = self._select_sql(t, columns, where, order_by, None, None, False)
        rows = self._query(sql, params)
        lines = [",".join(kinds)]
        lines += [",".join(_csv_field(kind, value) for kind, value in zip(kinds.values(), row)) for row in rows]
        write_bytes(path, ("\n".join(lines) + "\n").encode("utf-8"))
        return len(rows)

    def import_csv(self, table: str, path: str | os.PathLike[str], create: bool = False,
                   types: Mapping[str, str] | None = None,
                   primary_key: Key | None = None) -> int:
        """Insert the rows of the CSV file `path` (a header line naming columns of `table`, then one
        line per row) in one transaction: a bad line rolls back every row, and the error names the
        line and column. create=True makes the table first when it does not exist, with `types`
        ({column: type}) and `primary_key`; a column not in `types` is int if every value is an
        integer, else float if every value is a number, else text. Returns the number of rows."""
        name = _table_name(table)
        exists = self._exists(name)
        if not exists and not create:
            raise ConfigError("table", f"no table {name!r}; pass create=True to make it from the CSV")
        if types is not None and not isinstance(types, Mapping):
            raise ConfigError("types", f"give a dict {{column: type}}, not {_show(types)}")
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
        with self.transaction():
            if not exists:
                spec = {column: (types or {}).get(column) or _infer([r[i] for _, r in records[1:] if i < len(r)])
                        for i, column in enumerate(header)}
                self.create(name, spec, primary_key=primary_key)
            t = self._table(name)
            if exists and primary_key is not None and self._key_columns(t.columns, primary_key) != t.primary_key:
                raise ConfigError("primary_key", f"table {t.name} has the primary key {list(t.primary_key)}")
            columns = []
            for i, field in enumerate(header):
                try:
                    column, kind = t.column(field, "header", pseudo=False)
                except ConfigError as exc:
                    raise FormatError(f"{where}: line 1, field {i + 1}: {exc.reason}") from None
                if types and field in types and types[field] != kind:
                    raise ConfigError(f"types.{field}", f"table {t.name} has {column} as {kind}, not {types[field]}")
                columns.append((column, kind))
            sql = (f"INSERT INTO {_quote(t.name)} ({', '.join(_quote(c) for c, _ in columns)}) "
                   f"VALUES ({', '.join('?' * len(columns))})")
            for line, fields in records[1:]:
                if len(fields) != len(columns):
                    raise FormatError(f"{where}: line {line}: {len(fields)} field{'s' * (len(fields) != 1)}, "
                                      f"the header has {len(columns)}")
                values = [_csv_value(kind, field, f"{where}: line {line}, column {column}")
                          for (column, kind), field in zip(columns, fields)]
                self._execute(sql, values, f"{where}: line {line}")
        return len(records) - 1


def _count_arg(value: Any, path: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ConfigError(path, f"expected an integer >= 0 (or None), got {_show(value)}")
    return int(value)


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


def _csv_value(kind: str, field: str | None, where: str) -> Any:
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


def _infer(fields: list[str | None]) -> str:
    values = [f for f in fields if f is not None]
    if not values:
        return "text"
    if all(_INT_TEXT.fullmatch(f) and _I64[0] <= int(f) <= _I64[1] for f in values):
        return "int"
    if all(_FLOAT_TEXT.fullmatch(f) for f in values):
        return "float"
    return "text"
