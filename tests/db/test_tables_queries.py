"""loom.db.tables (OctoDB), rows in and out: insert, get, update and delete, select with the where
language (checked against the same language evaluated in plain Python over the same rows), order_by,
limit, offset and distinct, and aggregates with group_by; bad arguments name the place that is wrong."""
import re
import sqlite3

import pytest
from test_tables_schema_and_transactions import db_fixture, filled_fixture  # noqa: F401  (the fixtures db and filled)

from loom.db.tables import ConstraintError
from loom.errors import ConfigError, LoomError

# --- helpers ----------------------------------------------------------------------------------------------

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
