"""A JSON Schema, the subset structured output supports, compiled into the specs that
loom/llm/json_constraint.py's automaton runs.

Supported: type (one name or a list; "integer" is a number without fraction or exponent),
properties, required, additionalProperties (false, true, absent = true, or a schema), items (one
schema), enum, const, anyOf and oneOf (oneOf is read as anyOf: exclusivity is not enforced), allOf
with one schema, minItems/maxItems, minLength/maxLength (code points, as JSON Schema counts them),
$ref to a local JSON pointer ("#/$defs/x", "#/definitions/x", "#"; recursion allowed), boolean
schemas, and annotations (title, description, default, examples, $schema, $comment, deprecated,
readOnly, writeOnly; $id at the root), which are ignored. Any other keyword raises SchemaError
naming its JSON path.

The result is a graph: a node is a set of alternatives (specs), a spec is one of
    (OBJECT, props, required_mask, additional)  props: ((name bytes, node or -1), ...); -1: the name
                                                  may not be used; additional: node or -1 (none)
    (ARRAY, items, min, max)                     max -1: unbounded
    (STRING, min, max)                           max -1: unbounded
    (NUMBER, integer)
    (LITERAL, (bytes, ...))                      enum/const values, true/false/null, spelled canonically
Unsatisfiable parts are pruned (a property whose schema no value meets may not appear, an array
whose items cannot exist stays empty), so every prefix the automaton accepts can be completed.
"""
from __future__ import annotations

import json
import urllib.parse
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError

OBJECT, ARRAY, STRING, NUMBER, LITERAL = range(5)
TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")
ANNOTATIONS = frozenset({"title", "description", "default", "examples", "$schema", "$comment", "deprecated",
                         "readOnly", "writeOnly"})
KEYWORDS = frozenset({"type", "properties", "required", "additionalProperties", "items", "enum", "const", "anyOf",
                      "oneOf", "allOf", "minItems", "maxItems", "minLength", "maxLength", "$ref", "$defs",
                      "definitions"})
# keywords that constrain the value itself (the rest are annotations, combinators or containers)
_ASSERTIONS = KEYWORDS - {"anyOf", "oneOf", "allOf", "$ref", "$defs", "definitions"}


class SchemaError(ConfigError):
    """A schema uses a keyword or a value structured output does not support; `path` names it."""


@dataclass(frozen=True)
class CompiledSchema:
    nodes: tuple[tuple[int, ...], ...]     # node id -> its specs' ids
    specs: tuple[tuple, ...]
    root: int


def compile_schema(schema: Any, path: str = "schema") -> CompiledSchema:
    """The automaton's graph for a JSON Schema (a dict or a boolean); SchemaError names the JSON path
    (below `path`) of anything unsupported or unsatisfiable."""
    return _Compiler(schema, path).run()


def literal(value: Any, path: str) -> bytes:
    """A JSON value's canonical spelling: compact, non-ASCII characters as themselves."""
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as exc:       # NaN, infinity, a lone surrogate
        raise SchemaError(path, f"{value!r:.60} cannot be written as JSON ({exc})") from None


class _Compiler:
    def __init__(self, schema: Any, path: str):
        self.document, self.base = schema, path
        self.specs: list[tuple] = []
        self.spec_ids: dict[tuple, int] = {}
        self.own: list[list[int]] = []          # node -> its own spec ids
        self.includes: list[list[int]] = []     # node -> nodes whose alternatives it also has
        self.refs: dict[str, int] = {}
        self.enums: list[tuple[int, int, list, str]] = []    # (node, base node, values, path)
        self.any = self._node()
        self.own[self.any] = [self._spec((OBJECT, (), 0, self.any)), self._spec((ARRAY, self.any, 0, -1)),
                              self._spec((STRING, 0, -1)), self._spec((NUMBER, False)),
                              self._spec((LITERAL, (b"false", b"null", b"true")))]

    def run(self) -> CompiledSchema:
        if isinstance(self.document, dict):
            extra = self.document.get("$id")
            if extra is not None and not isinstance(extra, str):
                raise SchemaError(self.base + ".$id", "'$id' must be a string")
        root = self._ref("", self.base)
        for node, base, values, path in self.enums:      # inner enums come first: they were compiled first
            alts = self._flatten()
            kept = [literal(v, path) for v in values if self._fits(v, base, alts)]
            if not kept:
                raise SchemaError(path, "no value of it meets the rest of its schema")
            self.own[node] = [self._spec((LITERAL, tuple(dict.fromkeys(kept))))]
        alts = self._flatten()
        specs, nodes = self._prune(alts)
        if not nodes[root]:
            raise SchemaError(self.base, "no JSON value satisfies this schema")
        return CompiledSchema(tuple(nodes), tuple(specs), root)

    # --- building -----------------------------------------------------------------------------------
    def _node(self) -> int:
        self.own.append([])
        self.includes.append([])
        return len(self.own) - 1

    def _spec(self, spec: tuple) -> int:
        if spec not in self.spec_ids:
            self.spec_ids[spec] = len(self.specs)
            self.specs.append(spec)
        return self.spec_ids[spec]

    def _ref(self, pointer: str, ref_path: str) -> int:
        """The node of the subschema at a JSON pointer into the document (made once, so refs may recurse);
        ref_path: the $ref naming it, for the error when it points to nothing."""
        if pointer in self.refs:
            return self.refs[pointer]
        target, where = self.document, self.base
        for part in pointer.split("/")[1:]:
            part = part.replace("~1", "/").replace("~0", "~")
            if isinstance(target, dict) and part in target:
                target, where = target[part], f"{where}.{part}"
            elif isinstance(target, list) and part.isdigit() and int(part) < len(target):
                target, where = target[int(part)], f"{where}[{part}]"
            else:
                raise SchemaError(ref_path, f"'#{pointer}' points to nothing in the schema")
        node = self.refs[pointer] = self._node()
        self.includes[node].append(self._schema(target, where))
        return node

    def _schema(self, schema: Any, path: str) -> int:
        if schema is True:
            return self.any
        if schema is False:
            return self._node()
        if not isinstance(schema, dict):
            raise SchemaError(path, f"a schema must be an object or a boolean, got {schema!r:.60}")
        for key in schema:
            if key not in KEYWORDS and key not in ANNOTATIONS and not (key == "$id" and path == self.base):
                raise SchemaError(f"{path}.{key}", f"the keyword {key!r} is not supported in structured output")
        asserted = [k for k in schema if k in _ASSERTIONS]
        combinators = [k for k in ("$ref", "anyOf", "oneOf", "allOf") if k in schema]
        if len(combinators) > 1 or (combinators and asserted):
            second = combinators[1] if len(combinators) > 1 else asserted[0]
            raise SchemaError(f"{path}.{second}", f"{combinators[0]!r} together with {second!r} in one schema is not "
                                                  "supported; move the other keywords into each alternative")
        if combinators:
            return self._combinator(schema, combinators[0], path)
        if not asserted:
            return self.any
        node = self._node()
        self.own[node] = self._typed(schema, path)
        if "enum" in schema or "const" in schema:
            values = self._enum(schema, path)
            base, node = node, self._node()
            self.enums.append((node, base, values, f"{path}.{'enum' if 'enum' in schema else 'const'}"))
        return node

    def _combinator(self, schema: dict, key: str, path: str) -> int:
        value = schema[key]
        if key == "$ref":
            if not isinstance(value, str) or not value.startswith("#"):
                raise SchemaError(f"{path}.$ref", "only local references ('#/$defs/name') are supported, got "
                                                  f"{value!r:.60}")
            pointer = urllib.parse.unquote(value[1:])
            if pointer and not pointer.startswith("/"):
                raise SchemaError(f"{path}.$ref", f"{value!r} is not a JSON pointer ('#/...')")
            return self._ref(pointer, f"{path}.$ref")
        if not isinstance(value, list) or not value:
            raise SchemaError(f"{path}.{key}", f"'{key}' must be a non-empty list of schemas")
        if key == "allOf" and len(value) != 1:
            raise SchemaError(f"{path}.allOf", "'allOf' with more than one schema is not supported")
        node = self._node()
        self.includes[node] = [self._schema(s, f"{path}.{key}[{i}]") for i, s in enumerate(value)]
        return node

    def _typed(self, schema: dict, path: str) -> list[int]:
        """The spec ids of a schema without combinators: one per type it allows."""
        types = schema.get("type", [t for t in TYPES if t != "integer"])
        if isinstance(types, str):
            types = [types]
        if not isinstance(types, list) or not types or not all(isinstance(t, str) and t in TYPES for t in types):
            raise SchemaError(f"{path}.type", f"'type' must be one of {', '.join(TYPES)} or a list of them, "
                                              f"got {schema.get('type')!r:.60}")
        out = []
        for t in dict.fromkeys(types):
            if t == "object":
                out.append(self._object(schema, path))
            elif t == "array":
                out.append(self._array(schema, path))
            elif t == "string":
                low, high = self._bounds(schema, path, "minLength", "maxLength")
                out.append(self._spec((STRING, low, high)))
            elif t in ("number", "integer"):
                if t == "integer" and "number" in types:
                    continue
                out.append(self._spec((NUMBER, t == "integer")))
            else:
                out.append(self._spec((LITERAL, (b"false", b"true") if t == "boolean" else (b"null",))))
        return out

    def _object(self, schema: dict, path: str) -> int:
        props = schema.get("properties", {})
        if not isinstance(props, dict):
            raise SchemaError(f"{path}.properties", "'properties' must be an object of schemas")
        extra = schema.get("additionalProperties", True)
        additional = -1 if extra is False else self._schema(extra, f"{path}.additionalProperties")
        required = schema.get("required", [])
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            raise SchemaError(f"{path}.required", "'required' must be a list of property names")
        names = list(props)
        nodes = [self._schema(s, f"{path}.properties.{n}") for n, s in props.items()]
        for r in required:
            if r not in props:
                if additional < 0:
                    raise SchemaError(f"{path}.required", f"{r!r} is required but is not in 'properties' and "
                                                          "additionalProperties is false")
                names.append(r)
                nodes.append(additional)
        spelled = tuple((literal(n, f"{path}.properties")[1:-1], node) for n, node in zip(names, nodes))
        mask = sum(1 << names.index(r) for r in dict.fromkeys(required))
        return self._spec((OBJECT, spelled, mask, additional))

    def _array(self, schema: dict, path: str) -> int:
        items = schema.get("items", True)
        if isinstance(items, list):
            raise SchemaError(f"{path}.items", "'items' as a list (tuple validation) is not supported; give one schema")
        low, high = self._bounds(schema, path, "minItems", "maxItems")
        return self._spec((ARRAY, self._schema(items, f"{path}.items"), low, high))

    @staticmethod
    def _bounds(schema: dict, path: str, low_key: str, high_key: str) -> tuple[int, int]:
        low, high = schema.get(low_key, 0), schema.get(high_key, -1)
        for key, value in ((low_key, low), (high_key, high)):
            if key in schema and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise SchemaError(f"{path}.{key}", f"'{key}' must be an integer >= 0, got {value!r:.60}")
        if 0 <= high < low:
            raise SchemaError(f"{path}.{high_key}", f"'{high_key}' {high} is less than '{low_key}' {low}")
        return low, high

    @staticmethod
    def _enum(schema: dict, path: str) -> list:
        values = schema["enum"] if "enum" in schema else [schema["const"]]
        if "enum" in schema:
            if not isinstance(values, list) or not values:
                raise SchemaError(f"{path}.enum", "'enum' must be a non-empty list of values")
            if "const" in schema:
                const = literal(schema["const"], f"{path}.const")
                values = [v for v in values if literal(v, f"{path}.enum") == const]
        for v in values:
            literal(v, f"{path}.enum" if "enum" in schema else f"{path}.const")
        if not values:
            raise SchemaError(f"{path}.const", "'const' is not among the 'enum' values")
        return values

    # --- the finished graph -------------------------------------------------------------------------
    def _flatten(self) -> list[tuple[int, ...]]:
        """Each node's alternatives: its own specs and those of every node it includes, transitively."""
        out = []
        for start in range(len(self.own)):
            seen, todo, specs = {start}, [start], []
            while todo:
                n = todo.pop()
                specs += self.own[n]
                for m in self.includes[n]:
                    if m not in seen:
                        seen.add(m)
                        todo.append(m)
            out.append(tuple(dict.fromkeys(specs)))
        return out

    def _fits(self, value: Any, node: int, alts: list[tuple[int, ...]]) -> bool:
        """Whether a JSON value meets a node (JSON Schema's meaning: 1.0 is an integer)."""
        for s in alts[node]:
            spec = self.specs[s]
            kind = spec[0]
            if kind == OBJECT and isinstance(value, dict):
                props = {json.loads(b'"' + n + b'"'): node for n, node in spec[1]}
                required = {json.loads(b'"' + n + b'"') for i, (n, _) in enumerate(spec[1]) if spec[2] >> i & 1}
                if required <= value.keys() and all(
                        (props[k] >= 0 and self._fits(v, props[k], alts)) if k in props
                        else (spec[3] >= 0 and self._fits(v, spec[3], alts)) for k, v in value.items()):
                    return True
            elif kind == ARRAY and isinstance(value, list):
                if spec[2] <= len(value) and (spec[3] < 0 or len(value) <= spec[3]) and \
                        all(self._fits(v, spec[1], alts) for v in value):
                    return True
            elif kind == STRING and isinstance(value, str):
                if spec[1] <= len(value) and (spec[2] < 0 or len(value) <= spec[2]):
                    return True
            elif kind == NUMBER and isinstance(value, (int, float)) and not isinstance(value, bool):
                if not spec[1] or isinstance(value, int) or value.is_integer():
                    return True
            elif kind == LITERAL and literal(value, "enum") in spec[1]:
                return True
        return False

    def _prune(self, alts: list[tuple[int, ...]]) -> tuple[list[tuple], list[tuple[int, ...]]]:
        """Drop what no value can meet (least fixpoint of satisfiability), so no accepted prefix dead-ends."""
        sat_spec = [False] * len(self.specs)
        sat_node = [False] * len(alts)
        changed = True
        while changed:
            changed = False
            for s, spec in enumerate(self.specs):
                if sat_spec[s]:
                    continue
                kind = spec[0]
                if kind == OBJECT:
                    ok = all(spec[1][i][1] >= 0 and sat_node[spec[1][i][1]]
                             for i in range(len(spec[1])) if spec[2] >> i & 1)
                elif kind == ARRAY:
                    ok = spec[2] == 0 or sat_node[spec[1]]
                elif kind == LITERAL:
                    ok = bool(spec[1])
                else:
                    ok = True
                if ok:
                    sat_spec[s] = changed = True
            for n, specs in enumerate(alts):
                if not sat_node[n] and any(sat_spec[s] for s in specs):
                    sat_node[n] = changed = True
        specs = []
        for spec in self.specs:
            if spec[0] == OBJECT:
                props = tuple((name, node if node >= 0 and sat_node[node] else -1) for name, node in spec[1])
                spec = (OBJECT, props, spec[2], spec[3] if spec[3] >= 0 and sat_node[spec[3]] else -1)
            elif spec[0] == ARRAY and not sat_node[spec[1]]:
                spec = (ARRAY, spec[1], spec[2], 0)
            specs.append(spec)
        nodes = [tuple(s for s in specs_ if sat_spec[s]) for specs_ in alts]
        return specs, nodes

