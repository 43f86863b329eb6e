"""OctoDB: typed tables in one SQLite file, on Python's standard sqlite3 (reference: docs/db_tables.md).

    with Tables("shop.db") as db:
        db.create("items", {"id": "int", "name": "text", "price": "float"}, primary_key="id")
        db.insert("items", [{"name": "pen", "price": 1.5}, {"name": "ink", "price": 4.0}])
        db.select("items", where=("price", "<", 2.0), order_by="-price")

Every value reaches SQL as a bound parameter; every table and column name is checked against
`IDENTIFIER` and quoted. Bad arguments raise ConfigError naming where they are (`where[1]`,
`items[2].price`); a malformed CSV or database file raises FormatError; a violated constraint (a
duplicate primary key) raises ConstraintError; a file that cannot be read or written, FileError.

This module holds the `Tables` API: the connection and the one place SQL runs, transactions, the
schema (creating, dropping and reading tables) and the writes. The column types and names are in
table_types.py, the SQL of reads (the where language, select, aggregate) in table_query.py and the
CSV files in table_csv.py.
"""
from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, overload

from ..atomic import FileError
from ..errors import ConfigError, FormatError, LoomError, StoreError
from .table_csv import csv_value, infer_type, read_csv, write_csv
from .table_query import AGGREGATES, OPERATORS, aggregate_sql, select_sql, where_sql  # noqa: F401 - re-exported
from .table_types import (
    _RESERVED_COLUMNS,
    _RESERVED_TABLES,
    IDENTIFIER,
    TYPES,
    _affinity,
    _from_sql,
    _identifier,
    _quote,
    _show,
    _Table,
    _table_name,
    _to_sql,
)

_META = "_octo_columns"                  # the Loom type of each column: SQLite has no bool or json type
# STRICT tables (SQLite 3.37+) make SQLite itself refuse wrong types; older versions get CHECK constraints.
_STRICT = sqlite3.sqlite_version_info >= (3, 37, 0)
_DECLARED = {"int": "INTEGER", "float": "REAL", "text": "TEXT", "bool": "INTEGER", "blob": "BLOB", "json": "TEXT"}
_TYPEOF = {"int": "integer", "float": "real", "text": "text", "blob": "blob", "json": "text"}

Where = tuple[Any, ...] | list[Any] | Mapping[str, Any]
OrderBy = str | list[str] | tuple[str, ...]
Key = str | list[str] | tuple[str, ...]


class ConstraintError(LoomError, sqlite3.IntegrityError):
    """A write breaks a constraint of the table (a duplicate primary key, a NOT NULL or CHECK constraint,
    a foreign key): the message names the table, the row or CSV line, and SQLite's reason."""


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
        clause, where_params = where_sql(t, where)
        sets = ", ".join(f"{_quote(name)} = ?" for name in names)
        return self._execute(f"UPDATE {_quote(t.name)} SET {sets}{clause}", params + where_params, t.name).rowcount

    def delete(self, table: str, *, where: Where | None) -> int:
        """Delete the rows that match `where` (None: every row, said explicitly); returns how many."""
        t = self._table(table)
        clause, params = where_sql(t, where)
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
        sql, params, kinds = select_sql(t, columns, where, order_by, limit, offset, distinct)
        names = list(kinds)
        return [{name: _from_sql(kinds[name], value) for name, value in zip(names, row)}
                for row in self._query(sql, params)]

    def count(self, table: str, where: Where | None = None) -> int:
        """How many rows match `where` (all rows for None)."""
        t = self._table(table)
        clause, params = where_sql(t, where)
        return self._query(f"SELECT count(*) FROM {_quote(t.name)}{clause}", params)[0][0]

    def aggregate(self, table: str, aggregates: Mapping[str, tuple[str, str]], where: Where | None = None,
                  group_by: str | list[str] | tuple[str, ...] | None = None, order_by: OrderBy | None = None
                  ) -> list[dict[str, Any]]:
        """Aggregates ({output name: (function, column)}, functions in AGGREGATES, column "*" for
        count(*)) over the rows that match `where`: one dict per group of equal `group_by` values (its
        group columns, then the aggregates), or a single dict without group_by. NULLs are skipped;
        sum, avg, min and max of no values are None. Groups come in group_by order unless `order_by`
        (group columns and output names, "-name" descending) says otherwise."""
        t = self._table(table)
        sql, params, kinds = aggregate_sql(t, aggregates, where, group_by, order_by)
        names = list(kinds)
        return [{name: _from_sql(kinds[name], value) for name, value in zip(names, row)}
                for row in self._query(sql, params)]

    # --- CSV ---------------------------------------------------------------------------------------------

    def export_csv(self, table: str, path: str | os.PathLike[str], where: Where | None = None,
                   columns: list[str] | tuple[str, ...] | None = None, order_by: OrderBy | None = None) -> int:
        """Write the rows that match `where` to the CSV file `path` (UTF-8, a header line of column
        names, "\\n" line ends), atomically: readers see the old file or the whole new one. Returns the
        number of rows. Text is always quoted; NULL is an empty unquoted field (docs/db_tables.md)."""
        t = self._table(table)
        sql, params, kinds = select_sql(t, columns, where, order_by, None, None, False)
        rows = self._query(sql, params)
        write_csv(path, kinds, rows)
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
        where, header, records = read_csv(path, types)
        with self.transaction():
            if not exists:
                spec = {column: (types or {}).get(column) or infer_type([r[i] for _, r in records if i < len(r)])
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
            for line, fields in records:
                if len(fields) != len(columns):
                    raise FormatError(f"{where}: line {line}: {len(fields)} field{'s' * (len(fields) != 1)}, "
                                      f"the header has {len(columns)}")
                values = [csv_value(kind, field, f"{where}: line {line}, column {column}")
                          for (column, kind), field in zip(columns, fields)]
                self._execute(sql, values, f"{where}: line {line}")
        return len(records)
