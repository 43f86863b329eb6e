"""loom.db.tables (OctoDB), the database and its tables: opening a file (WAL, full sync, foreign keys;
files that are not databases), creating and dropping tables (names, keys, case, SQL keywords, tables
another tool made), the typed columns (what each type stores and refuses, SQLite enforcing them too) and
transactions (rollback, savepoints, commits other connections and a killed process see).

The rows and the `db` and `filled` fixtures at the top are shared: test_tables_queries and
test_tables_csv_and_injection import them from here."""
import math
import random
import sqlite3
import subprocess
import sys

import pytest

from loom.atomic import FileError
from loom.db import tables as tables_module
from loom.db.tables import Tables
from loom.errors import ConfigError, FormatError, StoreError

# --- shared rows and fixtures ----------------------------------------------------------------------------

NAMES = ["ann", "Anna", "bob", "", "o'neil", 'say "hi"', "a,b", "line\nbreak", "50%_off", "naïve ☃", "名前",
         "nul\x00byte", "x; DROP TABLE t; --", None]


def people(seed=0, n=60):
    rng = random.Random(seed)
    rows = []
    for i in range(1, n + 1):
        rows.append({"id": i, "name": rng.choice(NAMES),
                     "age": rng.choice([None, *range(0, 90, 7)]),
                     "score": rng.choice([None, -1.5, 0.0, 0.25, 3.0, 1e10, float("inf")]),
                     "active": rng.choice([None, True, False])})
    return rows


SCHEMA = {"id": "int", "name": "text", "age": "int", "score": "float", "active": "bool"}


# The fixtures are named with name= so that a module importing them (db_fixture, filled_fixture) has no
# module-level `db` or `filled` for its tests' parameters to shadow (ruff F811).
@pytest.fixture(name="db")
def db_fixture(tmp_path):
    with Tables(tmp_path / "t.db") as d:
        yield d


@pytest.fixture(name="filled")
def filled_fixture(db):
    rows = people()
    db.create("p", SCHEMA, primary_key="id")
    db.insert("p", rows)
    return db, rows


# --- opening ---------------------------------------------------------------------------------------------

def test_open_sets_wal_full_sync_and_foreign_keys(db):
    conn = db._conn
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2          # FULL
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1


def test_memory_database_and_close(tmp_path):
    db = Tables(":memory:")
    db.create("t", {"v": "int"})
    assert db.insert("t", {"v": 7}) == 1
    assert db.select("t") == [{"v": 7}]
    db.close()
    db.close()                                          # twice is fine
    with pytest.raises(StoreError, match="closed"):
        db.select("t")
    with Tables(tmp_path / "x.db") as other:
        other.create("t", {"v": "int"})
    with pytest.raises(StoreError, match="closed"):
        other.tables()


def test_a_file_that_is_not_a_database_is_a_format_error(tmp_path):
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"this is not sqlite" * 300)
    with pytest.raises(FormatError, match="bad.db"):
        Tables(bad)


def test_a_missing_folder_is_a_file_error(tmp_path):
    with pytest.raises(FileError, match="nope"):
        Tables(tmp_path / "nope" / "t.db")


# --- schema ----------------------------------------------------------------------------------------------

def test_create_schema_tables_drop(db):
    assert db.tables() == []
    db.create("b", {"x": "int"})
    db.create("a", {"id": "int", "k": "text", "doc": "json", "blob": "blob", "f": "float", "ok": "bool"},
              primary_key=["k", "id"])
    assert db.tables() == ["a", "b"]
    assert db.schema("a") == {"id": "int", "k": "text", "doc": "json", "blob": "blob", "f": "float", "ok": "bool"}
    assert list(db.schema("a")) == ["id", "k", "doc", "blob", "f", "ok"]
    assert db.primary_key("a") == ["k", "id"] and db.primary_key("b") == []
    db.drop("b")
    assert db.tables() == ["a"]
    with pytest.raises(ConfigError, match="no table 'b'"):
        db.drop("b")
    db.drop("b", if_exists=True)
    db.create("b", {"y": "text"})                       # a new table of the old name: the new schema
    assert db.schema("b") == {"y": "text"}


def test_create_if_not_exists(db):
    db.create("t", {"id": "int", "v": "text"}, primary_key="id")
    with pytest.raises(ConfigError, match="exists"):
        db.create("t", {"id": "int", "v": "text"}, primary_key="id")
    db.create("t", {"id": "int", "v": "text"}, primary_key="id", if_not_exists=True)
    with pytest.raises(ConfigError, match="exists with columns"):
        db.create("t", {"id": "int", "v": "int"}, primary_key="id", if_not_exists=True)
    with pytest.raises(ConfigError, match="exists"):
        db.create("T", {"x": "int"})                     # SQLite names are case-insensitive


@pytest.mark.parametrize("columns, primary_key, path", [
    ({}, None, "columns"),
    ({"a": "integer"}, None, "columns.a"),
    ({"a": "INT"}, None, "columns.a"),
    ({"a": "int", "A": "text"}, None, "columns"),
    ({"rowid": "int"}, None, "columns"),
    ({"a b": "int"}, None, "columns"),
    ({"1a": "int"}, None, "columns"),
    ({"a" * 65: "int"}, None, "columns"),
    ({"a": "int"}, "b", "primary_key"),
    ({"a": "int"}, [], "primary_key"),
    ({"a": "int", "b": "int"}, ["a", "A"], "primary_key[1]"),
    (["a"], None, "columns"),
])
def test_create_rejects_bad_columns(db, columns, primary_key, path):
    with pytest.raises(ConfigError) as err:
        db.create("t", columns, primary_key=primary_key)
    assert err.value.path == path
    assert db.tables() == []


@pytest.mark.parametrize("name", ["sqlite_x", "SQLITE_master", "_octo_columns", "1t", "t-1", "", "t\n", None, 3])
def test_create_rejects_bad_or_reserved_table_names(db, name):
    with pytest.raises(ConfigError) as err:
        db.create(name, {"a": "int"})
    assert err.value.path == "table"


def test_64_character_names_are_the_limit(db):
    db.create("t" * 64, {"c" * 64: "int"})
    db.insert("t" * 64, {"c" * 64: 1})
    assert db.select("T" * 64) == [{"c" * 64: 1}]


def test_names_are_case_insensitive_and_come_back_as_created(db):
    db.create("People", {"Name": "text", "Age": "int"})
    db.insert("people", {"NAME": "ann", "age": 3})
    assert db.select("PEOPLE", columns=["name"], where=("AGE", "==", 3)) == [{"Name": "ann"}]
    assert db.tables() == ["People"]
    with pytest.raises(ConfigError, match="twice"):
        db.insert("people", {"name": "a", "NAME": "b"})


def test_sql_keywords_are_fine_names(db, tmp_path):
    """Names are quoted: SQL keywords are ordinary table and column names."""
    db.create("order", {"select": "int", "from": "text", "group": "bool", "where": "float"}, primary_key="select")
    db.insert("order", [{"select": 2, "from": "b", "group": True, "where": 1.0},
                        {"select": 1, "from": "a", "group": True, "where": None}])
    assert db.select("order", columns=["from"], where=("and", ("group", "==", True), ("where", "==", None))) == \
        [{"from": "a"}]
    assert db.select("order", order_by="-from", limit=1)[0]["select"] == 2
    assert db.aggregate("order", {"n": ("count", "select")}, group_by="group") == [{"group": True, "n": 2}]
    assert db.update("order", {"from": "c"}, where={"select": 1}) == 1
    db.export_csv("order", tmp_path / "o.csv")
    db.create("table", db.schema("order"), primary_key=db.primary_key("order"))
    assert db.import_csv("table", tmp_path / "o.csv") == 2
    assert db.select("table") == db.select("order")
    assert db.delete("table", where=("from", "in", ["b", "c"])) == 2


def test_unknown_table_and_column(filled):
    db, _ = filled
    with pytest.raises(ConfigError, match="no table 'q'; tables: p") as err:
        db.select("q")
    assert err.value.path == "table"
    with pytest.raises(ConfigError, match="no column 'agee'") as err:
        db.insert("p", {"agee": 3})
    assert err.value.path == "p"
    with pytest.raises(ConfigError, match="no column 'agee'") as err:
        db.insert("p", [{"age": 3}, {"agee": 3}])
    assert err.value.path == "p[1]"
    with pytest.raises(ConfigError, match="no column 'x'"):
        db.update("p", {"x": 1}, where=None)
    with pytest.raises(ConfigError, match="no column 'x'") as err:
        db.select("p", columns=["name", "x"])
    assert err.value.path == "columns[1]"
    with pytest.raises(ConfigError, match="no column 'x'") as err:
        db.count("p", where=("x", "==", 1))
    assert err.value.path == "where[0]"


def test_a_table_made_by_another_tool(tmp_path):
    path = tmp_path / "t.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE f (a INTEGER PRIMARY KEY, b VARCHAR(10), c, d DOUBLE, e NUMERIC)")
    conn.commit()
    conn.close()
    with Tables(path) as db:
        assert db.schema("f") == {"a": "int", "b": "text", "c": "any", "d": "float", "e": "any"}
        db.insert("f", {"b": "x", "c": b"\x01", "d": 2, "e": 1.5})
        assert db.get("f", 1) == {"a": 1, "b": "x", "c": b"\x01", "d": 2.0, "e": 1.5}
        with pytest.raises(ConfigError, match="expected int"):
            db.insert("f", {"a": "1"})


# --- types -----------------------------------------------------------------------------------------------

TYPE_CASES = {
    "int": ([0, -2**63, 2**63 - 1, 12], ["1", 1.0, True, 2**63, -2**63 - 1, b"1", [1]]),
    "float": ([1.5, -0.0, float("inf"), float("-inf"), 1e-300], ["1.5", True, float("nan"), b"", 10**400]),
    "text": (["", "x", "naïve ☃", "nul\x00", "'; DROP TABLE t; --"], [1, b"x", "\ud800", ["x"]]),
    "bool": ([True, False], [1, 0, "true", None.__class__]),
    "blob": ([b"", b"\x00\xff", bytearray(b"ab"), memoryview(b"cd")], ["ab", 1, [1]]),
    "json": ([{"a": [1, 2.5, None]}, [1, "x"], "s", 3, True, {"é": {"k": []}}], [{1, 2}, float("nan"), object(),
                                                                                  {"a": float("inf")}]),
}


@pytest.mark.parametrize("kind", TYPE_CASES)
def test_typed_columns_store_and_return_their_type(db, kind):
    good, _ = TYPE_CASES[kind]
    db.create("t", {"v": kind})
    ids = db.insert("t", [{"v": v} for v in good] + [{"v": None}])
    got = [db.get("t", i)["v"] for i in ids]
    want = [bytes(v) if isinstance(v, (bytearray, memoryview)) else float(v) if kind == "float" else v
            for v in good] + [None]
    assert got == want
    assert [type(v) for v in got[:-1]] == [type(v) for v in want[:-1]]
    if kind == "float":
        assert math.copysign(1, got[1]) == 1.0            # SQLite stores -0.0 as 0.0 (documented)


def test_numpy_numbers_are_accepted(db):
    np = pytest.importorskip("numpy")
    db.create("t", {"i": "int", "f": "float"})
    db.insert("t", {"i": np.int64(-3), "f": np.float32(0.5)})
    assert db.select("t", where=("i", "==", np.int32(-3))) == [{"i": -3, "f": 0.5}]
    with pytest.raises(ConfigError):
        db.insert("t", {"f": np.float64("nan")})


def test_float_column_takes_ints_as_floats(db):
    db.create("t", {"v": "float"})
    db.insert("t", {"v": 3})
    assert db.select("t") == [{"v": 3.0}] and isinstance(db.select("t")[0]["v"], float)


@pytest.mark.parametrize("kind", TYPE_CASES)
def test_wrong_typed_values_name_table_column_and_value(db, kind):
    _, bad = TYPE_CASES[kind]
    db.create("tab", {"id": "int", "col": kind}, primary_key="id")
    for value in bad:
        with pytest.raises(ConfigError) as err:
            db.insert("tab", {"col": value})
        assert err.value.path == "tab.col"
        shown = repr(value)
        assert shown[:40] in str(err.value) or "NaN" in str(err.value) or "range" in str(err.value)
        with pytest.raises(ConfigError) as err:
            db.insert("tab", [{"col": None}, {"col": value}])
        assert err.value.path == "tab[1].col"
        with pytest.raises(ConfigError) as err:
            db.update("tab", {"col": value}, where=None)
        assert err.value.path == "tab.col"
    assert db.count("tab") == 0


@pytest.mark.parametrize("strict", [True, False])
def test_sqlite_itself_enforces_the_types(tmp_path, monkeypatch, strict):
    """Another program writing to the file with plain SQL gets the types checked too: STRICT tables,
    or CHECK constraints where SQLite is older than 3.37."""
    monkeypatch.setattr(tables_module, "_STRICT", strict)
    path = tmp_path / "t.db"
    with Tables(path) as db:
        db.create("t", {"i": "int", "f": "float", "s": "text", "b": "bool", "x": "blob"})
        db.insert("t", {"i": 1, "f": 2.0, "s": "s", "b": True, "x": b"x"})
        assert db.schema("t") == {"i": "int", "f": "float", "s": "text", "b": "bool", "x": "blob"}
    conn = sqlite3.connect(path)
    assert (" STRICT" in conn.execute("SELECT sql FROM sqlite_master WHERE name = 't'").fetchone()[0]) == strict
    # Values SQLite cannot convert without loss (it converts "12" to 12 for an INTEGER column, as STRICT allows).
    for column, value in [("i", "abc"), ("i", 1.5), ("f", "abc"), ("s", b"x"), ("b", 2), ("x", "x"), ("x", 1)]:
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute(f"INSERT INTO t ({column}) VALUES (?)", [value])
    conn.close()


# --- transactions ----------------------------------------------------------------------------------------

def test_rollback_leaves_no_trace(filled):
    db, rows = filled
    with pytest.raises(RuntimeError, match="boom"):
        with db.transaction():
            db.insert("p", {"id": 1000, "name": "new"})
            db.update("p", {"age": 1}, where=None)
            db.delete("p", where=("id", "<", 10))
            db.create("q", {"v": "int"})
            db.insert("q", {"v": 1})
            raise RuntimeError("boom")
    assert db.select("p") == rows
    assert db.tables() == ["p"]
    with pytest.raises(ConfigError, match="no table 'q'"):
        db.select("q")
    db.create("q", {"w": "text"})                        # the rolled-back schema is not remembered
    assert db.schema("q") == {"w": "text"}


def test_commit_persists_and_other_connections_see_it(tmp_path):
    path = tmp_path / "t.db"
    a, b = Tables(path), Tables(path)
    a.create("t", {"v": "int"})
    with a.transaction():
        a.insert("t", [{"v": 1}, {"v": 2}])
        assert b.select("t") == []                       # not committed yet
        assert a.count("t") == 2
    assert b.select("t") == [{"v": 1}, {"v": 2}]
    b.insert("t", {"v": 3})
    assert a.count("t") == 3
    a.close()
    b.close()
    with Tables(path) as c:
        assert c.select("t") == [{"v": 1}, {"v": 2}, {"v": 3}]


def test_nested_transactions_are_savepoints(db):
    db.create("t", {"v": "int"})
    with db.transaction():
        db.insert("t", {"v": 1})
        with pytest.raises(ValueError):
            with db.transaction():
                db.insert("t", {"v": 2})
                raise ValueError
        with db.transaction():
            db.insert("t", {"v": 3})
            with db.transaction():
                db.insert("t", {"v": 4})
    assert [r["v"] for r in db.select("t")] == [1, 3, 4]
    with pytest.raises(ValueError):
        with db.transaction():
            with db.transaction():
                db.insert("t", {"v": 5})
            raise ValueError                             # the outer block undoes the inner one too
    assert [r["v"] for r in db.select("t")] == [1, 3, 4]
    with db.transaction():                               # a failed list insert inside: its own rows only
        db.insert("t", {"v": 6})
        with pytest.raises(ConfigError):
            db.insert("t", [{"v": 7}, {"v": "x"}])
    assert [r["v"] for r in db.select("t")] == [1, 3, 4, 6]


def test_a_rolled_back_schema_is_forgotten(tmp_path):
    path = tmp_path / "t.db"
    with Tables(path) as a, Tables(path) as b:
        with pytest.raises(RuntimeError):
            with a.transaction():
                a.create("q", {"v": "int"})
                a.insert("q", {"v": 1})
                raise RuntimeError
        b.create("q", {"w": "text"})      # the schema version is again the one `a` saw inside the transaction
        assert a.schema("q") == {"w": "text"}
        a.insert("q", {"w": "x"})


def test_another_connection_changing_the_schema_is_seen(tmp_path):
    path = tmp_path / "t.db"
    with Tables(path) as a, Tables(path) as b:
        a.create("t", {"v": "int"})
        assert b.schema("t") == {"v": "int"}
        a.drop("t")
        a.create("t", {"w": "text", "flag": "bool"})
        assert b.schema("t") == {"w": "text", "flag": "bool"}
        b.insert("t", {"w": "x", "flag": True})
        assert a.select("t") == [{"w": "x", "flag": True}]


def test_a_committed_write_survives_the_process_dying(tmp_path):
    path = tmp_path / "t.db"
    with Tables(path) as db:
        db.create("t", {"v": "text"})
    code = ("import os, sys\nfrom loom.db.tables import Tables\ndb = Tables(sys.argv[1])\n"
            "db.insert('t', {'v': 'kept'})\nwith db.transaction():\n    db.insert('t', {'v': 'also kept'})\n"
            "db._conn.execute('BEGIN')\ndb._conn.execute(\"INSERT INTO t VALUES ('lost')\")\nos._exit(0)\n")
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, timeout=60)
    with Tables(path) as db:
        assert db.select("t") == [{"v": "kept"}, {"v": "also kept"}]
