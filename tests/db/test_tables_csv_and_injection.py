"""loom.db.tables (OctoDB), files and hostile input: CSV export and import (checked against Python's csv
module where the format agrees with it; malformed and truncated files name the line and change nothing;
exports are atomic) and SQL injection payloads through every name, value and CSV header, which raise
typed errors or are stored literally, leaving the database intact."""
import csv
import json
import os

import pytest
from test_tables_schema_and_transactions import db_fixture, filled_fixture  # noqa: F401  (the fixtures db and filled)

from loom.atomic import FileError
from loom.db.tables import ConstraintError
from loom.errors import ConfigError, FormatError

# --- helpers ----------------------------------------------------------------------------------------------

def assert_intact(db, rows, table="p"):
    assert db.tables() == [table]
    assert db.select(table) == rows
    assert db._conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


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
