"""The SQL of OctoDB's reads (loom/db/tables.py): the where language, ordering, and the SELECT and
aggregate statements, built against a `_Table` and checked as they are built.

Every value becomes a bound parameter and every name a checked, quoted identifier, so nothing a caller
passes reaches the SQL text as SQL. Each builder returns the SQL, its parameters and, for statements
that return rows, the Loom type of each output column; tables.py runs them.
"""
from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError
from .table_types import _identifier, _quote, _show, _Table, _to_sql

OPERATORS = ("==", "!=", "<", "<=", ">", ">=", "in", "contains", "startswith", "like")
AGGREGATES = ("count", "sum", "avg", "min", "max")

_ORDERED = ("int", "float", "text", "bool", "blob", "any")
_NUMERIC = ("int", "float", "bool", "any")
_WHERE_HELP = ("a condition is (column, operator, value), ('and', cond, ...), ('or', cond, ...), ('not', cond) "
               "or a dict {column: value, ...}")


# --- the where language ------------------------------------------------------------------------------

def where_sql(t: _Table, where: Any) -> tuple[str, list[Any]]:
    """(" WHERE ..." or "" for None, its parameters)."""
    if where is None:
        return "", []
    sql, params = _condition(t, where, "where")
    return f" WHERE {sql}", params


def _condition(t: _Table, cond: Any, path: str) -> tuple[str, list[Any]]:
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
            sql, more = _condition(t, sub, f"{path}[{i}]")
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


# --- reads -------------------------------------------------------------------------------------------

def select_sql(t: _Table, columns: Any, where: Any, order_by: Any, limit: Any, offset: Any,
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
    clause, params = where_sql(t, where)
    terms = order_terms(order_by, lambda name, path: t.column(name, path)[0])
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


def order_terms(order_by: Any, resolve: Any) -> list[tuple[str, bool]]:
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


def aggregate_sql(t: _Table, aggregates: Any, where: Any, group_by: Any, order_by: Any
                  ) -> tuple[str, list[Any], dict[str, str]]:
    """(SQL, parameters, {output name: type}) of Tables.aggregate: the group columns, then the aggregates."""
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
    clause, params = where_sql(t, where)
    names = list(kinds)

    def resolve(name: str, path: str) -> str:
        _identifier(name, path, "column")
        for known in names:
            if known.lower() == name.lower():
                return known
        raise ConfigError(path, f"order by a group column or an output name: {', '.join(names)}")

    terms = order_terms(order_by, resolve) + [(name, False) for name in groups]
    # ORDER BY output positions: an output name may also be a column of the table, and SQL would be
    # ambiguous about which one "name" means.
    order = ", ".join(f"{names.index(name) + 1}{' DESC' if desc else ''}" for name, desc in terms)
    sql = (f"SELECT {', '.join(exprs)} FROM {_quote(t.name)}{clause}"
           + (f" GROUP BY {', '.join(map(_quote, groups))}" if groups else "")
           + (f" ORDER BY {order}" if order else ""))
    return sql, params, kinds


def _count_arg(value: Any, path: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ConfigError(path, f"expected an integer >= 0 (or None), got {_show(value)}")
    return int(value)
