"""loom.db.tables (OctoDB): typed SQLite tables. Expected values are computed in Python over the same
rows; injection payloads go through every string argument; CSV files are checked against Python's csv
module where the format agrees with it."""
import csv
import json
import math
import os
import random
import re
import sqlite3
import subprocess
import sys

import pytest

from loom.atomic import FileError
from loom.db import tables as tables_module
from loom.db.tables import ConstraintError, Tables
from loom.errors import ConfigError, FormatError, LoomError, StoreError

# --- helpers ----------------------------------------------------------------------------------------------

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


@pytest.fixture
def db(tmp_path):
    with Tables(tmp_path / "t.db") as d:
        yield d


@pytest.fixture
def filled(db):
    rows = people()
    db.create("p", SCHEMA, primary_key="id")
    db.insert("p", rows)
    return db, rows


def matches(row, cond):
    """The where language evaluated in plain Python (the reference)."""
    if isinstance(cond, dict):
        return all(matches(row, (k, "==", v)) for k, v in cond.items())
    head = cond[0]
    if head in ("and", "or", "not") and not isinstance(cond[1], str):
        results = [matches(row, c) for c in cond[1:]]
        return all(results) if head == "and" else any(results) if head == "or" else not results[0]
    column, op, value = cond
    x = row[column]
    if op == "==":
        return x == value
    if op == "!=":
        return x != value
    if op == "in":
        return x in value
    if x is None:
        return False
    if op == "contains":
        return value in x
    if op == "startswith":
        return x.startswith(value)
    if op == "like":
        pattern = "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in value)
        return re.fullmatch(pattern, x, re.IGNORECASE | re.DOTALL) is not None
    return {"<": x < value, "<=": x <= value, ">": x > value, ">=": x >= value}[op]


def ordered(rows, order_by, key=("id",)):
    """rows sorted as SQLite sorts them: NULL below every value, ties by the primary key."""
    terms = [order_by] if isinstance(order_by, str) else list(order_by)
    out = sorted(rows, key=lambda r: tuple(r[k] for k in key))
    for term in reversed(terms):
        desc = term.startswith("-")
        column = term.lstrip("-")
        out.sort(key=lambda r: (r[column] is not None, r[column] if r[column] is not None else 0), reverse=desc)
    return out


def assert_intact(db, rows, table="p"):
    assert db.tables() == [table]
    assert db.select(table) == rows
    assert db._conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


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


# --- CRUD ------------------------------------------------------------------------------------------------

def test_insert_returns_rowids_and_get_finds_rows(db):
    db.create("auto", {"id": "int", "v": "text"}, primary_key="id")
    assert db.insert("auto", {"v": "a"}) == 1
    assert db.insert("auto", [{"v": "b"}, {"id": 10, "v": "c"}, {"v": "d"}]) == [2, 10, 11]
    assert db.insert("auto", []) == []
    assert db.get("auto", 10) == {"id": 10, "v": "c"}
    assert db.get("auto", 3) is None
    db.create("plain", {"v": "int"})
    assert db.insert("plain", [{"v": 5}, {}]) == [1, 2]
    assert db.get("plain", 2) == {"v": None}
    assert db.select("plain", columns=["rowid", "v"]) == [{"rowid": 1, "v": 5}, {"rowid": 2, "v": None}]
    db.create("pair", {"a": "text", "b": "int", "v": "float"}, primary_key=["a", "b"])
    db.insert("pair", [{"a": "x", "b": 1, "v": 1.0}, {"a": "x", "b": 2, "v": 2.0}])
    assert db.get("pair", ("x", 2)) == {"a": "x", "b": 2, "v": 2.0}
    assert db.get("pair", ["x", 3]) is None
    with pytest.raises(ConfigError) as err:
        db.get("pair", "x")
    assert err.value.path == "key"
    with pytest.raises(ConfigError, match="expected int") as err:
        db.get("auto", "1")
    assert err.value.path == "key"


def test_a_bad_row_in_a_list_inserts_nothing(db):
    db.create("t", {"id": "int", "v": "int"}, primary_key="id")
    db.insert("t", {"id": 1, "v": 1})
    with pytest.raises(ConfigError):
        db.insert("t", [{"id": 2, "v": 2}, {"id": 3, "v": "three"}])
    with pytest.raises(ConstraintError, match=r"t\[1\].*UNIQUE"):
        db.insert("t", [{"id": 4, "v": 4}, {"id": 1, "v": 5}])
    assert db.select("t") == [{"id": 1, "v": 1}]
    with pytest.raises(ConfigError):
        db.insert("t", [{"id": 5}, ["not", "a", "dict"]])
    with pytest.raises(ConfigError, match="dict"):
        db.insert("t", "id")
    assert db.count("t") == 1


def test_constraint_errors_are_loom_and_sqlite_errors(db):
    db.create("t", {"k": "text", "v": "int"}, primary_key="k")
    with pytest.raises(ConstraintError, match="NOT NULL") as err:
        db.insert("t", {"v": 1})
    assert isinstance(err.value, LoomError) and isinstance(err.value, sqlite3.IntegrityError)


def test_update_and_delete_count_what_they_change(filled):
    db, rows = filled
    where = ("or", ("age", ">=", 50), ("name", "==", None))
    want = [r for r in rows if matches(r, where)]
    assert want and len(want) < len(rows)
    assert db.update("p", {"score": 9.5, "active": True}, where=where) == len(want)
    expected = [dict(r, score=9.5, active=True) if matches(r, where) else r for r in rows]
    assert db.select("p") == expected
    gone = ("active", "==", True)
    assert db.delete("p", where=gone) == sum(matches(r, gone) for r in expected)
    assert db.select("p") == [r for r in expected if not matches(r, gone)]
    assert db.update("p", {"age": 1}, where=("id", "==", 10**6)) == 0
    with pytest.raises(TypeError):
        db.delete("p")                                   # every row only when said: where=None
    with pytest.raises(TypeError):
        db.update("p", {"age": 1})
    assert db.update("p", {"age": 1}, where=None) == db.count("p")
    assert db.delete("p", where=None) == len([r for r in expected if not matches(r, gone)])
    assert db.count("p") == 0
    with pytest.raises(ConfigError) as err:
        db.update("p", {}, where=None)
    assert err.value.path == "values"


# --- select and the where language ---------------------------------------------------------------------

WHERES = [
    ("age", ">=", 30),
    ("age", "<", 30),
    ("age", "<=", 0),
    ("age", ">", 84),
    ("age", "==", 14),
    ("age", "!=", 14),
    ("age", "==", None),
    ("age", "!=", None),
    ("score", ">", 0.0),
    ("score", "==", float("inf")),
    ("active", "==", True),
    ("active", "!=", False),
    ("name", "==", "ann"),
    ("name", "<", "b"),
    ("name", "contains", "an"),
    ("name", "contains", "%"),
    ("name", "contains", "\x00"),
    ("name", "contains", ""),
    ("name", "contains", "☃"),
    ("name", "startswith", "a"),
    ("name", "startswith", "50%"),
    ("name", "like", "a%"),
    ("name", "like", "_nn"),
    ("name", "in", ["ann", "bob", "nope"]),
    ("name", "in", []),
    ("name", "in", ("ann", None)),
    ("age", "in", {0, 7, 14}),
    {"name": "bob", "active": True},
    ("and", ("age", ">", 10), ("age", "<", 60)),
    ("or", ("name", "==", "ann"), ("age", "==", None), ("score", "<", 0)),
    ("not", ("age", ">", 40)),
    ("not", ("name", "contains", "a")),
    ("not", ("and", ("age", ">", 10), ("active", "==", True))),
    ("and", ("not", ("age", "in", [7, 14])), ("or", ("score", ">=", 3.0), ("name", "startswith", "A"))),
    ["or", ["age", "==", 7], ["age", "==", 21]],
    ("rowid", "<=", 5),
]


@pytest.mark.parametrize("where", WHERES, ids=[str(w) for w in WHERES])
def test_where_matches_the_python_reference(filled, where):
    db, rows = filled
    want = [r for r in rows if matches(dict(r, rowid=r["id"]), where)]
    assert db.select("p", where=where) == want
    assert db.count("p", where=where) == len(want)


def test_the_reference_is_not_vacuous(filled):
    _, rows = filled
    empty_or_all = [("age", ">", 84), ("name", "in", []), ("name", "contains", "")]
    for where in [w for w in WHERES if w not in empty_or_all]:
        hits = sum(matches(dict(r, rowid=r["id"]), where) for r in rows)
        assert 0 < hits < len(rows), where


def test_null_semantics(db):
    db.create("t", {"id": "int", "v": "int"}, primary_key="id")
    db.insert("t", [{"id": 1, "v": 1}, {"id": 2, "v": None}, {"id": 3, "v": 3}])
    ids = lambda where: [r["id"] for r in db.select("t", where=where)]
    assert ids(("v", "==", None)) == [2]
    assert ids(("v", "!=", 1)) == [2, 3]                     # NULL differs from 1, as None != 1
    assert ids(("v", ">", 0)) == [1, 3]                      # NULL is never ordered
    assert ids(("not", ("v", ">", 2))) == [1, 2]             # "not" is the complement
    assert ids(("v", "in", [1, None])) == [1, 2]
    assert ids(("not", ("v", "in", [1]))) == [2, 3]


@pytest.mark.parametrize("where, path", [
    ("age > 3", "where"),
    (42, "where"),
    ((), "where"),
    ({}, "where"),
    (("age", "=", 1), "where[1]"),
    (("age", "==>", 1), "where[1]"),
    (("age", None, 1), "where[1]"),
    (("age", "==",), "where"),
    (("age", "==", 1, 2), "where"),
    (("age", ">", None), "where[2]"),
    (("age", ">", "30"), "where[2]"),
    (("age", "==", 1.5), "where[2]"),
    (("age", "contains", "1"), "where[1]"),
    (("name", "contains", 1), "where[2]"),
    (("name", "like", None), "where[2]"),
    (("age", "in", "abc"), "where[2]"),
    (("age", "in", 3), "where[2]"),
    (("age", "in", [1, "x"]), "where[2][1]"),
    (("active", "==", 1), "where[2]"),
    (("and",), "where"),
    (("not", ("age", ">", 1), ("age", "<", 5)), "where"),
    (("and", ("age", ">", 1), ("nme", "==", "x")), "where[2][0]"),
    (("or", ("age", ">", 1), "oops"), "where[2]"),
    (("or", ("age", ">", 1), ("not", ("age", "=", 2))), "where[2][1][1]"),
    ({"age": "x"}, "where[1][2]"),
    ((3, "==", 1), "where[0]"),
])
def test_bad_where_names_the_place(filled, where, path):
    db, rows = filled
    with pytest.raises(ConfigError) as err:
        db.select("p", where=where)
    assert err.value.path == path, str(err.value)
    assert db.select("p") == rows


def test_ordering_a_json_column_is_refused(db):
    db.create("t", {"doc": "json"})
    db.insert("t", [{"doc": {"b": 1, "a": [2]}}, {"doc": [1]}])
    assert db.select("t", where=("doc", "==", {"a": [2], "b": 1})) == [{"doc": {"a": [2], "b": 1}}]
    with pytest.raises(ConfigError) as err:
        db.select("t", where=("doc", "<", [2]))
    assert err.value.path == "where[1]"


@pytest.mark.parametrize("order_by", ["age", "-age", "name", "-score", ["active", "-age"], ("-name", "score"),
                                      ["-id"], []])
def test_order_by_matches_python_sorting(filled, order_by):
    db, rows = filled
    got = db.select("p", order_by=order_by)
    assert got == ordered(rows, order_by)


def test_default_order_is_the_primary_key(db):
    db.create("t", {"k": "text", "n": "int"}, primary_key="k")
    db.insert("t", [{"k": k, "n": i} for i, k in enumerate(["m", "b", "z", "a", "é", "B"])])
    assert [r["k"] for r in db.select("t")] == sorted(["m", "b", "z", "a", "é", "B"])


@pytest.mark.parametrize("order_by, path", [("agee", "order_by"), ("-", "order_by"), ("--age", "order_by"),
                                            ("age DESC", "order_by"), (5, "order_by"), (["age", "-age"], "order_by[1]"),
                                            (["age", 3], "order_by[1]"), ({"age": 1}, "order_by")])
def test_bad_order_by(filled, order_by, path):
    db, _ = filled
    with pytest.raises(ConfigError) as err:
        db.select("p", order_by=order_by)
    assert err.value.path == path


def test_columns_limit_offset_distinct(filled):
    db, rows = filled
    by_age = ordered(rows, ["-age"])
    assert db.select("p", columns=["name", "id"], order_by="-age", limit=5, offset=3) == \
        [{"name": r["name"], "id": r["id"]} for r in by_age[3:8]]
    assert db.select("p", offset=55) == rows[55:]
    assert db.select("p", limit=0) == []
    assert db.select("p", limit=1000) == rows
    assert db.select("p", where=("id", ">", 10**6)) == []
    assert list(db.select("p", columns=["score", "age"])[0]) == ["score", "age"]
    names = db.select("p", columns=["name"], distinct=True)
    assert names == [{"name": n} for n in sorted({r["name"] for r in rows}, key=lambda n: (n is not None, n or ""))]
    pairs = db.select("p", columns=["active", "age"], distinct=True, order_by="-age")
    want = sorted({(r["active"], r["age"]) for r in rows}, key=lambda p: (p[1] is not None, p[1] or 0), reverse=True)
    assert [(r["active"], r["age"]) for r in pairs][:1] == want[:1]
    assert len(pairs) == len(want)
    with pytest.raises(ConfigError, match="selected"):
        db.select("p", columns=["name"], distinct=True, order_by="age")


@pytest.mark.parametrize("kwargs, path", [({"limit": -1}, "limit"), ({"offset": -1}, "offset"),
                                          ({"limit": 1.5}, "limit"), ({"limit": True}, "limit"),
                                          ({"limit": "3"}, "limit"), ({"columns": []}, "columns"),
                                          ({"columns": "name"}, "columns"), ({"columns": ["id", "ID"]}, "columns[1]"),
                                          ({"distinct": 1}, "distinct")])
def test_bad_select_arguments(filled, kwargs, path):
    db, _ = filled
    with pytest.raises(ConfigError) as err:
        db.select("p", **kwargs)
    assert err.value.path == path


# --- aggregates ------------------------------------------------------------------------------------------

def test_aggregate_matches_python(filled):
    db, rows = filled
    spec = {"n": ("count", "*"), "n_age": ("count", "age"), "total": ("sum", "age"), "mean": ("avg", "score"),
            "lo": ("min", "name"), "hi": ("max", "age"), "yes": ("sum", "active"), "any_yes": ("max", "active")}
    where = ("score", "!=", float("inf"))
    got = db.aggregate("p", spec, where=where, group_by="active")

    def summary(group):
        ages = [r["age"] for r in group if r["age"] is not None]
        scores = [r["score"] for r in group if r["score"] is not None]
        names = [r["name"] for r in group if r["name"] is not None]
        flags = [r["active"] for r in group if r["active"] is not None]
        return {"n": len(group), "n_age": len(ages), "total": sum(ages) if ages else None,
                "mean": sum(scores) / len(scores) if scores else None, "lo": min(names) if names else None,
                "hi": max(ages) if ages else None, "yes": sum(flags) if flags else None,
                "any_yes": max(flags) if flags else None}

    kept = [r for r in rows if matches(r, where)]
    want = [{"active": a, **summary([r for r in kept if r["active"] is a])} for a in (None, False, True)]
    assert len(got) == 3
    for g, w in zip(got, want):
        assert g.keys() == w.keys()
        assert g["mean"] == pytest.approx(w["mean"], rel=1e-12)
        assert {k: v for k, v in g.items() if k != "mean"} == {k: v for k, v in w.items() if k != "mean"}
    assert type(got[2]["any_yes"]) is bool and type(got[2]["yes"]) is int
    whole = db.aggregate("p", {"n": ("count", "*"), "s": ("sum", "age")})
    assert whole == [{"n": len(rows), "s": sum(r["age"] for r in rows if r["age"] is not None)}]


def test_aggregate_groups_and_order(filled):
    db, rows = filled
    got = db.aggregate("p", {"n": ("count", "*")}, group_by=["name"], order_by=["-n", "-name"])
    counts = {}
    for r in rows:
        counts[r["name"]] = counts.get(r["name"], 0) + 1
    want = sorted(counts.items(), key=lambda kv: (kv[0] is not None, kv[0] or ""), reverse=True)
    want.sort(key=lambda kv: kv[1], reverse=True)
    assert [(g["name"], g["n"]) for g in got] == want
    assert db.aggregate("p", {}, group_by="active") == [{"active": None}, {"active": False}, {"active": True}]
    # An output named like a table column orders by the output, not by the column.
    by_total = db.aggregate("p", {"age": ("sum", "age")}, group_by="active", order_by="-age")
    assert [g["age"] for g in by_total] == sorted((g["age"] for g in by_total), reverse=True)


def test_aggregate_of_nothing(db):
    db.create("t", {"g": "text", "v": "float"})
    assert db.aggregate("t", {"n": ("count", "*"), "s": ("sum", "v"), "a": ("avg", "v"), "m": ("min", "v")}) == \
        [{"n": 0, "s": None, "a": None, "m": None}]
    assert db.aggregate("t", {"n": ("count", "*")}, group_by="g") == []
    assert db.count("t") == 0


@pytest.mark.parametrize("spec, group_by, order_by, path", [
    ({"n": ("COUNT", "*")}, None, None, "aggregates.n[0]"),
    ({"n": ("median", "age")}, None, None, "aggregates.n[0]"),
    ({"n": ("sum", "*")}, None, None, "aggregates.n[1]"),
    ({"n": ("sum", "name")}, None, None, "aggregates.n[1]"),
    ({"n": ("sum", "agee")}, None, None, "aggregates.n[1]"),
    ({"n": "count"}, None, None, "aggregates.n"),
    ({"n": ("count",)}, None, None, "aggregates.n"),
    ({"active": ("count", "*")}, "active", None, "aggregates.active"),
    ({"bad name": ("count", "*")}, None, None, "aggregates"),
    ({}, None, None, "aggregates"),
    ({"n": ("count", "*")}, "agee", None, "group_by"),
    ({"n": ("count", "*")}, ["age", "age"], None, "group_by[1]"),
    ({"n": ("count", "*")}, [], None, "group_by"),
    ({"n": ("count", "*")}, "age", "score", "order_by"),
    ({"n": ("count", "*")}, "age", ["n", "-x"], "order_by[1]"),
])
def test_bad_aggregates(filled, spec, group_by, order_by, path):
    db, _ = filled
    with pytest.raises(ConfigError) as err:
        db.aggregate("p", spec, group_by=group_by, order_by=order_by)
    assert err.value.path == path


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


# --- CSV -------------------------------------------------------------------------------------------------

TRICKY = ["plain", "", None, "a,b", 'say "hi"', "line\nbreak", "crlf\r\nend", "cr\ronly", "naïve ☃ 名前",
          "nul\x00byte", " lead", "trail ", '"', '""', ",", "x; DROP TABLE t; --", "') OR 1=1 --", "`tick`",
          "\\N", "null", "NULL"]


def test_csv_round_trip(db, tmp_path):
    schema = {"id": "int", "s": "text", "i": "int", "f": "float", "b": "bool", "x": "blob", "j": "json"}
    db.create("t", schema, primary_key="id")
    floats = [0.1, -0.0, float("inf"), float("-inf"), 1e300, 5e-324, None, 2.0, 123456.789]
    ints = [0, -2**63, 2**63 - 1, None, 7]
    blobs = [b"", b"\x00\xff,\"", None, b"abc"]
    docs = [{"a": [1, "x,\"y\""]}, None, "text", 3.5, [], {"k": None}]
    rows = [{"id": n + 1, "s": s, "i": ints[n % len(ints)], "f": floats[n % len(floats)],
             "b": [True, False, None][n % 3],
             "x": blobs[n % len(blobs)], "j": docs[n % len(docs)]} for n, s in enumerate(TRICKY)]
    db.insert("t", rows)
    path = tmp_path / "out.csv"
    assert db.export_csv("t", path) == len(rows)
    db.create("back", schema, primary_key="id")
    assert db.import_csv("back", path) == len(rows)
    back = db.select("back")
    assert back == db.select("t")
    # Python's csv module reads the same fields (it cannot tell NULL from "": both are '').
    with open(path, newline="", encoding="utf-8") as fh:
        parsed = list(csv.reader(fh))
    assert parsed[0] == list(schema)
    assert [p[1] for p in parsed[1:]] == [s if s is not None else "" for s in TRICKY]
    text = path.read_text(encoding="utf-8")
    assert text.startswith("id,s,i,f,b,x,j\n1,\"plain\",0,0.1,true,\"\",")   # text quoted; an empty blob is ""
    assert '\n3,,9223372036854775807,inf,,,"""text"""\n' in text       # NULL: empty and unquoted
    assert '\n2,"",-9223372036854775808,0.0,false,00ff2c22,\n' in text


def test_csv_null_and_empty_string_rules(db, tmp_path):
    path = tmp_path / "in.csv"
    path.write_text('s,i,b\n"",,\n,"",""\n"x",1,TRUE\n"y",-2,0\n', encoding="utf-8")
    db.create("t", {"s": "text", "i": "int", "b": "bool"})
    assert db.import_csv("t", path) == 4
    assert db.select("t") == [{"s": "", "i": None, "b": None}, {"s": None, "i": None, "b": None},
                              {"s": "x", "i": 1, "b": True}, {"s": "y", "i": -2, "b": False}]


def test_csv_line_ends(db, tmp_path):
    path = tmp_path / "in.csv"
    path.write_bytes(b'a,b\r1,"x\ry"\r2,"z"\r\n3,"w"\n')            # \r, \r\n and \n; \r inside quotes is data
    db.create("t", {"a": "int", "b": "text"})
    assert db.import_csv("t", path) == 3
    assert db.select("t") == [{"a": 1, "b": "x\ry"}, {"a": 2, "b": "z"}, {"a": 3, "b": "w"}]


def test_import_creates_a_table_and_infers_types(db, tmp_path):
    path = tmp_path / "in.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:       # as another program writes CSV
        w = csv.writer(fh)
        w.writerow(["id", "name", "price", "qty", "note", "tags"])
        w.writerow([1, "pen, blue", 1.5, 3, "", '["a"]'])
        w.writerow([2, 'say "hi"', 2, -4, "multi\nline", "[]"])
        w.writerow([3, "ink", "1e3", "", "x", "[1]"])
    with pytest.raises(ConfigError, match="create=True"):
        db.import_csv("items", path)
    assert db.import_csv("items", path, create=True, types={"tags": "json"}, primary_key="id") == 3
    assert db.schema("items") == {"id": "int", "name": "text", "price": "float", "qty": "int", "note": "text",
                                  "tags": "json"}
    assert db.primary_key("items") == ["id"]
    assert db.select("items") == [
        {"id": 1, "name": "pen, blue", "price": 1.5, "qty": 3, "note": None, "tags": ["a"]},
        {"id": 2, "name": 'say "hi"', "price": 2.0, "qty": -4, "note": "multi\nline", "tags": []},
        {"id": 3, "name": "ink", "price": 1000.0, "qty": None, "note": "x", "tags": [1]}]
    with pytest.raises(ConfigError) as err:
        db.import_csv("items2", path, create=True, types={"nope": "int"})
    assert err.value.path == "types.nope"
    with pytest.raises(ConfigError) as err:
        db.import_csv("items2", path, create=True, types={"qty": "integer"})
    assert err.value.path == "types.qty"
    with pytest.raises(ConfigError) as err:
        db.import_csv("items", path, types={"qty": "text"})
    assert err.value.path == "types.qty"
    assert db.tables() == ["items"]


def test_import_into_a_subset_of_columns_and_export_with_where(db, tmp_path):
    db.create("t", {"id": "int", "a": "text", "b": "int"}, primary_key="id")
    path = tmp_path / "in.csv"
    path.write_bytes(b'\xef\xbb\xbfb,a\r\n1,"x"\r\n2,"y"\r\n3,"z"')      # BOM, CRLF, no final newline
    assert db.import_csv("t", path) == 3
    assert db.select("t") == [{"id": 1, "a": "x", "b": 1}, {"id": 2, "a": "y", "b": 2}, {"id": 3, "a": "z", "b": 3}]
    out = tmp_path / "out.csv"
    assert db.export_csv("t", out, where=("b", ">=", 2), columns=["a", "id"], order_by="-b") == 2
    assert out.read_text(encoding="utf-8") == 'a,id\n"z",3\n"y",2\n'
    assert db.export_csv("t", out, where=("b", ">", 9)) == 0
    assert out.read_text(encoding="utf-8") == "id,a,b\n"


def test_a_one_column_table_keeps_its_null_rows(db, tmp_path):
    db.create("t", {"v": "text"})
    db.insert("t", [{"v": None}, {"v": ""}, {"v": None}])
    db.export_csv("t", tmp_path / "o.csv")
    db.create("u", {"v": "text"})
    db.import_csv("u", tmp_path / "o.csv")
    assert db.select("u") == [{"v": None}, {"v": ""}, {"v": None}]


BAD_CSV = [
    ('id,v\n1,"ok"\n2,"never closed\n3,x\n', r"line 3: a quoted field is not closed"),
    ('id,v\n1,"ok"\n2,"closed "x early"\n3,"x"\n', r"line 3: 'x' after a closing quote"),
    ('id,v\n1,"ok"\n2\n', r"line 3: 1 field, the header has 2"),
    ('id,v\n1,"ok"\n2,"a",3\n', r"line 3: 3 fields, the header has 2"),
    ('id,v\n1,"ok"\n\n', r"line 3: 1 field"),
    ('id,v\n1,"ok"\nx2,"b"\n', r"line 3, column id: expected int, got 'x2'"),
    ('id,v\n1,"ok"\n99999999999999999999,"b"\n', r"line 3, column id: .*64-bit"),
    ('id,v\n1,"o"k"\n', r"line 2: 'k' after a closing quote"),
    ('id,v\n1,o"k\n', r"line 2: a quote inside an unquoted field"),
    ('id,v\n1,"a\nb\nc"\n2,"d\ne"\n3,"x",\n', r"line 7: 3 fields"),
    ('id,v,w\n', r"line 1, field 3: table t has no column 'w'"),
    ('id,"v;DROP TABLE t"\n', r"line 1, field 2: 'v;DROP TABLE t' is not a valid column name"),
    ('id,,v\n', r"line 1, field 2"),
    ('id,v,ID\n', r"line 1: column 'ID' is named twice"),
    ('', r"empty"),
]


@pytest.mark.parametrize("content, message", BAD_CSV, ids=[m for _, m in BAD_CSV])
def test_malformed_csv_names_the_line_and_changes_nothing(db, tmp_path, content, message):
    db.create("t", {"id": "int", "v": "text"}, primary_key="id")
    db.insert("t", {"id": 100, "v": "before"})
    path = tmp_path / "bad.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(FormatError, match=message) as err:
        db.import_csv("t", path)
    assert "bad.csv" in str(err.value)
    assert db.select("t") == [{"id": 100, "v": "before"}]
    if "no column" not in message:                      # a new table gets every column of the header
        with pytest.raises(FormatError, match=message):
            db.import_csv("fresh", path, create=True, types={"id": "int"})
    assert db.tables() == ["t"]


def test_a_truncated_export_fails_to_import(db, tmp_path):
    db.create("t", {"id": "int", "v": "text"}, primary_key="id")
    db.insert("t", [{"id": i, "v": f"row {i}\nsecond line, with a comma"} for i in range(1, 6)])
    full = tmp_path / "full.csv"
    db.export_csv("t", full)
    data = full.read_bytes()
    cut = tmp_path / "cut.csv"
    cut.write_bytes(data[:data.index(b"row 4") + 3])                  # inside row 4's quoted field
    db.create("u", {"id": "int", "v": "text"}, primary_key="id")
    with pytest.raises(FormatError, match="line 8: a quoted field is not closed"):
        db.import_csv("u", cut)
    cut.write_bytes(data[:data.index(b"4,")] + b"4")                  # cut after a field
    with pytest.raises(FormatError, match="line 8: 1 field"):
        db.import_csv("u", cut)
    assert db.count("u") == 0


def test_csv_value_errors_and_constraints_roll_back(db, tmp_path):
    db.create("t", {"id": "int", "f": "float", "b": "bool", "x": "blob", "j": "json"}, primary_key="id")
    cases = [("id,f\n1,1.5\n2,nan\n", "line 3, column f: expected float"),
             ("id,f\n1,1_0\n", "line 2, column f: expected float"),
             ("id,b\n1,yes\n", "line 2, column b: expected bool"),
             ("id,x\n1,0g\n", "line 2, column x: expected blob"),
             ("id,j\n1,{bad\n", "line 2, column j: '{bad' is not JSON"),
             ("id,j\n1,NaN\n", "line 2, column j: .*cannot be stored"),
             ("id,f\n1,1\n2,2\n\xff\n", None)]
    for content, message in cases:
        path = tmp_path / "in.csv"
        if message is None:
            path.write_bytes(content.encode("latin-1"))
            message = "line 4: not UTF-8"
        else:
            path.write_text(content, encoding="utf-8")
        with pytest.raises(FormatError, match=message):
            db.import_csv("t", path)
    path.write_text("id,f\n1,1\n2,2\n1,3\n", encoding="utf-8")
    with pytest.raises(ConstraintError, match="line 4: UNIQUE"):
        db.import_csv("t", path)
    assert db.count("t") == 0
    with pytest.raises(FileError, match="missing.csv"):
        db.import_csv("t", tmp_path / "missing.csv")


def test_export_is_atomic(db, tmp_path, monkeypatch):
    db.create("t", {"v": "int"})
    db.insert("t", [{"v": 1}, {"v": 2}])
    out = tmp_path / "out.csv"
    out.write_text("old contents\n")
    db.export_csv("t", out)
    assert out.read_text() == "v\n1\n2\n"
    assert sorted(os.listdir(tmp_path)) == ["out.csv", "t.db", "t.db-shm", "t.db-wal"]
    import loom.atomic

    def fail(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(loom.atomic.os, "replace", fail)
    db.insert("t", {"v": 3})
    with pytest.raises(FileError, match="out.csv"):
        db.export_csv("t", out)
    assert out.read_text() == "v\n1\n2\n"                # the old file, whole
    assert sorted(os.listdir(tmp_path)) == ["out.csv", "t.db", "t.db-shm", "t.db-wal"]
    monkeypatch.undo()
    with pytest.raises(FileError):
        db.export_csv("t", tmp_path / "no" / "out.csv")
    with pytest.raises(FileError):
        db.export_csv("t", tmp_path)


# --- injection -------------------------------------------------------------------------------------------

PAYLOADS = ["x; DROP TABLE p; --", 'p"; DROP TABLE p; --', "p'; DROP TABLE p; --", ") OR 1=1 --", "' OR '1'='1",
            "`p`", "[p]", "p\x00", "p\x00; DROP TABLE p", "p\n", "p --", "pé", "名前", "p ", "p.id", "*", "",
            "main.p", "p/*", "1=1", "\ud800"]
RESERVED_TABLES = ["sqlite_master", "sqlite_sequence", "_octo_columns", "SQLite_Schema"]


@pytest.mark.parametrize("payload", PAYLOADS + RESERVED_TABLES, ids=ascii)
def test_injection_through_names_raises_typed_errors(filled, payload, tmp_path):
    db, rows = filled
    attempts = {
        "table/select": lambda: db.select(payload),
        "table/insert": lambda: db.insert(payload, {"id": 999}),
        "table/create": lambda: db.create(payload, {"a": "int"}),
        "table/drop": lambda: db.drop(payload),
        "table/count": lambda: db.count(payload),
        "table/aggregate": lambda: db.aggregate(payload, {"n": ("count", "*")}),
        "table/export": lambda: db.export_csv(payload, tmp_path / "o.csv"),
        "table/import": lambda: db.import_csv(payload, tmp_path / "o.csv", create=True),
        "column/create": lambda: db.create("q", {payload: "int"}),
        "type/create": lambda: db.create("q", {"a": payload}),
        "pk/create": lambda: db.create("q", {"a": "int"}, primary_key=payload),
        "column/insert": lambda: db.insert("p", {payload: 1}),
        "column/update": lambda: db.update("p", {payload: 1}, where=None),
        "column/select": lambda: db.select("p", columns=[payload]),
        "column/where": lambda: db.select("p", where=(payload, "==", 1)),
        "column/where-dict": lambda: db.delete("p", where={payload: 1}),
        "operator/where": lambda: db.delete("p", where=("id", payload, 1)),
        "logic/where": lambda: db.delete("p", where=(payload, ("id", "==", 1))),
        "order_by": lambda: db.select("p", order_by=payload),
        "order_by/desc": lambda: db.select("p", order_by="-" + payload),
        "order_by/list": lambda: db.select("p", order_by=["id", payload]),
        "group_by": lambda: db.aggregate("p", {"n": ("count", "*")}, group_by=payload),
        "aggregate/function": lambda: db.aggregate("p", {"n": (payload, "id")}),
        "aggregate/count-of": lambda: db.aggregate("p", {"n": ("count", payload if payload != "*" else "**")}),
        "aggregate/output": lambda: db.aggregate("p", {payload: ("count", "*")}),
        "aggregate/order_by": lambda: db.aggregate("p", {"n": ("count", "*")}, group_by="age", order_by=payload),
        "export/columns": lambda: db.export_csv("p", tmp_path / "o.csv", columns=[payload]),
    }
    if payload in RESERVED_TABLES:                      # valid names for a column, not for a table
        attempts = {what: attempt for what, attempt in attempts.items() if what.startswith("table/")}
    db.export_csv("p", tmp_path / "o.csv")
    for what, attempt in attempts.items():
        with pytest.raises(ConfigError):
            attempt()
            pytest.fail(f"{what} accepted {payload!r}")
    assert_intact(db, rows)


@pytest.mark.parametrize("payload", PAYLOADS[:-1], ids=ascii)
def test_injection_through_values_is_stored_literally(filled, payload):
    db, rows = filled
    rowid = db.insert("p", {"name": payload, "id": 1000})
    assert db.get("p", rowid) == {"id": 1000, "name": payload, "age": None, "score": None, "active": None}
    assert [r["id"] for r in db.select("p", where=("name", "==", payload))] == \
        [r["id"] for r in rows if r["name"] == payload] + [1000]
    assert 1000 in [r["id"] for r in db.select("p", where=("name", "contains", payload))]
    assert 1000 in [r["id"] for r in db.select("p", where=("name", "startswith", payload))]
    assert [r["id"] for r in db.select("p", where=("name", "in", [payload]))][-1] == 1000
    assert db.update("p", {"name": payload + "'"}, where={"id": 1000}) == 1
    assert db.select("p", columns=["name"], where=("id", "==", 1000)) == [{"name": payload + "'"}]
    assert db.delete("p", where=("name", "==", payload + "'")) == 1
    assert_intact(db, rows)


def test_a_lone_surrogate_value_is_refused(filled):
    db, rows = filled
    with pytest.raises(ConfigError, match="surrogate") as err:
        db.insert("p", {"name": "\ud800"})
    assert err.value.path == "p.name"
    with pytest.raises(ConfigError, match="surrogate"):
        db.select("p", where=("name", "==", "\ud800"))
    assert_intact(db, rows)


@pytest.mark.parametrize("payload", [p for p in PAYLOADS if p != "\ud800"], ids=ascii)
def test_injection_through_csv_headers_and_values(filled, payload, tmp_path):
    db, rows = filled
    header = tmp_path / "header.csv"
    quoted = '"' + payload.replace('"', '""') + '"'
    header.write_text(f"id,{quoted}\n1000,1\n", encoding="utf-8")
    with pytest.raises(FormatError, match="line 1"):
        db.import_csv("p", header)
    with pytest.raises(FormatError, match="line 1"):
        db.import_csv("fresh", header, create=True)
    values = tmp_path / "values.csv"
    values.write_text(f"id,name\n1000,{quoted}\n1001,\"{payload.replace(chr(34), chr(34) * 2)}x\"\n",
                      encoding="utf-8")
    assert db.import_csv("p", values) == 2
    assert db.select("p", columns=["name"], where=("id", ">=", 1000)) == [{"name": payload}, {"name": payload + "x"}]
    out = tmp_path / "out.csv"
    db.export_csv("p", out, where=("id", ">=", 1000))
    with open(out, newline="", encoding="utf-8") as fh:
        assert [r[1] for r in csv.reader(fh)][1:] == [payload, payload + "x"]
    db.delete("p", where=("id", ">=", 1000))
    assert_intact(db, rows)


def test_json_values_are_data(db):
    db.create("t", {"doc": "json"})
    doc = {"sql": "'); DROP TABLE t; --", "n": [1, 2.5, None, True], "é": "名前\x00"}
    db.insert("t", {"doc": doc})
    assert db.select("t") == [{"doc": doc}]
    assert db.select("t", where=("doc", "==", json.loads(json.dumps(doc)))) == [{"doc": doc}]
    assert db.tables() == ["t"]
