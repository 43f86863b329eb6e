"""A byte-level recognizer for JSON meeting a schema: "is this a valid prefix?" and "is this a complete
value?", kept incrementally so that each new token costs only its own bytes.

    grammar = JsonGrammar.from_schema({"type": "object", "properties": {"x": {"type": "integer"}}})
    state = grammar.start()
    state = grammar.advance(state, b'{"x": 1')    # empty when the bytes cannot continue a valid value
    grammar.complete(state), grammar.can_continue(state)

The automaton is a pushdown machine over the graph loom/llm/json_schema.py compiles. A configuration
is a stack of small tuples (frames: an object waiting for a key, a string with its escape and UTF-8
state, a number's phase, ...); a state is a frozenset of configurations, more than one where anyOf
leaves several readings open. States are hashable, so the token masks computed for one
(loom/llm/token_mask.py) can be cached.

What is accepted: RFC 8259 JSON whose value meets the schema, as UTF-8 (overlong forms, surrogate
code points and lone surrogate escapes refused), with these limits so that output stays bounded and
every accepted prefix can be completed:
* whitespace, where JSON allows it: none, one space, or a newline and at most MAX_INDENT spaces or
  tabs (llama.cpp's JSON grammar allows the same), and none after the top value;
* numbers: at most MAX_DIGITS digits before and after the point and two in the exponent, so every
  number read as a float is finite;
* object keys: each property at most once; the properties the schema names are spelled as
  json.dumps spells them (no needless escapes), and other keys (where additionalProperties allows
  them) may hold no escape at all, so that no key can be a second spelling of a named one;
* enum and const values are spelled canonically (compact, as json.dumps(ensure_ascii=False)).
"""
from __future__ import annotations

from typing import Any

from .json_schema import ARRAY, LITERAL, NUMBER, OBJECT, STRING, CompiledSchema, compile_schema

MAX_INDENT = 20
MAX_DIGITS = 16

State = frozenset

K_VAL, K_OBJ, K_ARR, K_KEY, K_STR, K_NUM, K_LIT = range(7)
O_OPEN, O_INKEY, O_KEYDONE, O_VALUE, O_AFTER, O_COMMA = range(6)
A_OPEN, A_VALUE, A_AFTER, A_COMMA = range(4)
N_SIGN, N_ZERO, N_INT, N_DOT, N_FRAC, N_E, N_ESIGN, N_EXP = range(8)
N_COMPLETE = frozenset({N_ZERO, N_INT, N_FRAC, N_EXP})
N_LIMIT = {N_INT: MAX_DIGITS, N_FRAC: MAX_DIGITS, N_EXP: 2}      # digits a phase may hold
WHITESPACE = frozenset(b" \t\n\r")
SPACE, TAB, NEWLINE = ord(" "), ord("\t"), ord("\n")
QUOTE, BACKSLASH = ord('"'), ord("\\")


# UTF-8 states: 0 is a character boundary; the others are (continuation bytes still due, range of the
# next one), as RFC 3629's table of well-formed sequences gives them (no overlong forms, no
# surrogates, nothing past U+10FFFF).
UTF8_DUE = ((0, 0, 0), (1, 0x80, 0xBF), (2, 0xA0, 0xBF), (2, 0x80, 0xBF), (2, 0x80, 0x9F), (3, 0x90, 0xBF),
            (3, 0x80, 0xBF), (3, 0x80, 0x8F))


def _utf8_table() -> list[list[int]]:
    """UTF8[state][byte] -> next state (see UTF8_DUE), -1 where the byte is invalid there."""
    states = UTF8_DUE
    after_lead = {**{b: 1 for b in range(0xC2, 0xE0)}, 0xE0: 2, **{b: 3 for b in range(0xE1, 0xF0)}, 0xED: 4,
                  0xF0: 5, 0xF1: 6, 0xF2: 6, 0xF3: 6, 0xF4: 7}
    table = []
    for due, low, high in states:
        row = [-1] * 256
        for b in range(256):
            if due == 0:
                row[b] = 0 if b < 0x80 else after_lead.get(b, -1)
            elif low <= b <= high:
                row[b] = {1: 0, 2: 1, 3: 3}[due]
        table.append(row)
    return table


UTF8 = _utf8_table()
UTF8_STATES = len(UTF8)


def _escape_table() -> list[list[int]]:
    """ESCAPE[state][byte] -> next escape state inside a string (0: no escape open), -1 where invalid.
    \\uXXXX surrogates must come as a high-low pair; a lone one is refused (it is not text)."""
    hexd = frozenset(b"0123456789abcdefABCDEF")
    bs, u1, u2n, u2d, u3, u4, u3h, u4h, need_bs, need_u, l1, l2, l3, l4 = range(1, 15)
    rows = {s: {} for s in range(15)}
    rows[bs] = {**{b: 0 for b in b'"\\/bfnrt'}, ord("u"): u1}
    rows[u1] = {b: (u2d if b in b"dD" else u2n) for b in hexd}
    rows[u2n] = {b: u3 for b in hexd}
    rows[u2d] = {**{b: u3 for b in b"01234567"}, **{b: u3h for b in b"89abAB"}}
    rows[u3] = {b: u4 for b in hexd}
    rows[u4] = {b: 0 for b in hexd}
    rows[u3h] = {b: u4h for b in hexd}
    rows[u4h] = {b: need_bs for b in hexd}
    rows[need_bs] = {BACKSLASH: need_u}
    rows[need_u] = {ord("u"): l1}
    rows[l1] = {b: l2 for b in b"dD"}
    rows[l2] = {b: l3 for b in b"cdefCDEF"}
    rows[l3] = {b: l4 for b in hexd}
    rows[l4] = {b: 0 for b in hexd}
    return [[rows[s].get(b, -1) for b in range(256)] for s in range(15)]


ESCAPE = _escape_table()


def _number_table(integer: bool) -> list[list[int]]:
    digits, nonzero = b"0123456789", b"123456789"
    rows = {p: {} for p in range(8)}
    rows[N_SIGN] = {ord("0"): N_ZERO, **{b: N_INT for b in nonzero}}
    rows[N_INT] = {b: N_INT for b in digits}
    if not integer:
        for p in (N_ZERO, N_INT):
            rows[p].update({ord("."): N_DOT, ord("e"): N_E, ord("E"): N_E})
        rows[N_DOT] = {b: N_FRAC for b in digits}
        rows[N_FRAC] = {**{b: N_FRAC for b in digits}, ord("e"): N_E, ord("E"): N_E}
        rows[N_E] = {ord("+"): N_ESIGN, ord("-"): N_ESIGN, **{b: N_EXP for b in digits}}
        rows[N_ESIGN] = {b: N_EXP for b in digits}
        rows[N_EXP] = {b: N_EXP for b in digits}
    return [[rows[p].get(b, -1) for b in range(256)] for p in range(8)]


NUMBERS = (_number_table(False), _number_table(True))


class _Object:
    """An object spec, ready for key matching."""

    def __init__(self, spec: tuple):
        _, props, self.required, self.additional = spec
        self.names = tuple(name for name, _ in props)
        self.nodes = tuple(node for _, node in props)
        self.usable = tuple(i for i, node in enumerate(self.nodes) if node >= 0)
        self.free = self.additional >= 0
        self.everyone = tuple(range(len(self.names)))
        # inside[i][p]: position p of name i lies inside an escape sequence (after its backslash)
        self.inside = tuple(_escape_positions(name) for name in self.names)

    def candidates(self, seen: int) -> tuple[int, ...]:
        """The names a new key may still match: every name where other keys are allowed (to tell
        them apart), else the usable names not used yet."""
        return self.everyone if self.free else tuple(i for i in self.usable if not seen >> i & 1)

    def can_add(self, seen: int) -> bool:
        return self.free or any(not seen >> i & 1 for i in self.usable)


def _escape_positions(name: bytes) -> tuple[bool, ...]:
    inside, p = [False] * (len(name) + 1), 0
    while p < len(name):
        if name[p] == BACKSLASH:
            span = 6 if name[p + 1] == ord("u") else 2
            for q in range(p + 1, p + span):
                inside[q] = True
            p += span
        else:
            p += 1
    return tuple(inside)


class JsonGrammar:
    """The recognizer for one compiled schema (see the module docstring)."""

    def __init__(self, compiled: CompiledSchema):
        self.compiled = compiled
        self.nodes, self.specs, self.root = compiled.nodes, compiled.specs, compiled.root
        self._objects = {s: _Object(spec) for s, spec in enumerate(self.specs) if spec[0] == OBJECT}
        self._starts: dict[tuple[int, int], tuple] = {}

    @classmethod
    def from_schema(cls, schema: Any, path: str = "schema") -> JsonGrammar:
        """From a JSON Schema (dict or bool); json_schema.SchemaError names an unsupported keyword's path."""
        return cls(compile_schema(schema, path))

    @classmethod
    def json_object(cls) -> JsonGrammar:
        """Any JSON object (OpenAI's response_format {"type": "json_object"})."""
        return cls.from_schema({"type": "object"})

    # --- the public questions -----------------------------------------------------------------------
    def start(self) -> State:
        return frozenset({((K_VAL, self.root, 0),)})

    def advance(self, state: State, data: bytes) -> State:
        """The state after `data`; empty when no valid value starts with what was read plus `data`."""
        for b in data:
            if not state:
                break
            state = self.step(state, b)
        return state

    def step(self, state: State, b: int) -> State:
        out = set()
        for stack in state:
            if stack:
                out.update(self._step(stack, b))
        return frozenset(out)

    @staticmethod
    def complete(state: State) -> bool:
        """Whether what was read is a whole value (it may still go on: a number can take more digits)."""
        return any(not stack or (len(stack) == 1 and _done(stack[0])) for stack in state)

    @staticmethod
    def can_continue(state: State) -> bool:
        """Whether some byte can follow (every unfinished configuration can be completed)."""
        return any(stack for stack in state)

    def accepts(self, text: str | bytes) -> bool:
        """Whether `text` is a complete value of the schema (as this recognizer spells values)."""
        return self.complete(self.advance(self.start(), _bytes(text)))

    def accepts_prefix(self, text: str | bytes) -> bool:
        """Whether `text` can be continued into a complete value (or is one)."""
        return bool(self.advance(self.start(), _bytes(text)))

    # --- one byte on one configuration --------------------------------------------------------------
    def _step(self, stack: tuple, b: int) -> list[tuple]:
        top = stack[-1]
        kind = top[0]
        if kind == K_STR:
            return self._string(stack, top, b)
        if kind == K_KEY:
            return self._key(stack, top, b)
        if kind == K_OBJ:
            return self._object(stack, top, b)
        if kind == K_ARR:
            return self._array(stack, top, b)
        if kind == K_VAL:
            return self._value(stack, top, b)
        if kind == K_NUM:
            out = self._number(stack, top, b)
        else:
            out = self._literal(stack, top, b)
        if _done(top):                  # a number (or literal) that may end here: the byte is the parent's
            out += self._step(_closed(stack[:-1]), b) if len(stack) > 1 else []
        return out

    def _value(self, stack, top, b):
        if b in WHITESPACE:
            ws = _space(top[2], b)
            return [stack[:-1] + ((K_VAL, top[1], ws),)] if ws > 0 else []
        key = (top[1], b)
        starts = self._starts.get(key)
        if starts is None:
            starts = self._starts[key] = self._first(top[1], b)
        rest = stack[:-1]
        return [rest + (f,) if f is not None else _closed(rest) for f in starts]

    def _first(self, node: int, b: int) -> tuple:
        """The frames a value of `node` is in after its first byte b (None: the value is complete)."""
        out = []
        for s in self.nodes[node]:
            spec = self.specs[s]
            kind = spec[0]
            if kind == OBJECT and b == ord("{"):
                out.append((K_OBJ, s, O_OPEN, 0, 0, -1))
            elif kind == ARRAY and b == ord("["):
                out.append((K_ARR, s, A_OPEN, 0, 0))
            elif kind == STRING and b == QUOTE:
                out.append((K_STR, s, 0, 0, 0))
            elif kind == NUMBER and NUMBERS[spec[1]][N_SIGN][b] >= 0:
                frame = (K_NUM, s, NUMBERS[spec[1]][N_SIGN][b], 1)
                out.append(frame if self._grows(frame) else None)
            elif kind == NUMBER and b == ord("-"):
                out.append((K_NUM, s, N_SIGN, 0))
            elif kind == LITERAL:
                cands = tuple(i for i, lit in enumerate(spec[1]) if lit[0] == b)
                if cands:
                    ends = [len(spec[1][i]) == 1 for i in cands]
                    out.append(None if all(ends) else (K_LIT, s, cands, 1, any(ends)))
        return tuple(dict.fromkeys(out))

    def _object(self, stack, top, b):
        _, s, phase, seen, ws, prop = top
        rest = stack[:-1]
        if b in WHITESPACE:
            ws = _space(ws, b)
            return [rest + ((K_OBJ, s, phase, seen, ws, prop),)] if ws > 0 else []
        info = self._objects[s]
        if phase in (O_OPEN, O_COMMA):
            if b == QUOTE:
                cands = info.candidates(seen)
                if cands or info.free:
                    return [rest + ((K_OBJ, s, O_INKEY, seen, 0, -1), (K_KEY, s, cands, 0, 0))]
            elif b == ord("}") and phase == O_OPEN and info.required == 0:
                return [_closed(rest)]
        elif phase == O_KEYDONE:
            if b == ord(":"):
                node = info.nodes[prop] if prop >= 0 else info.additional
                return [rest + ((K_OBJ, s, O_VALUE, seen, 0, -1), (K_VAL, node, 0))]
        elif phase == O_AFTER:
            if b == ord(",") and info.can_add(seen):
                return [rest + ((K_OBJ, s, O_COMMA, seen, 0, -1),)]
            if b == ord("}") and info.required & ~seen == 0:
                return [_closed(rest)]
        return []

    def _key(self, stack, top, b):
        _, s, cands, pos, u = top
        info = self._objects[s]
        if cands:
            inside = info.inside[cands[0]][pos]
            if b == QUOTE and not inside:
                if u:
                    return []
                whole = [c for c in cands if len(info.names[c]) == pos]
                if whole:
                    c = whole[0]
                    seen = stack[-2][3]
                    return [_key_done(stack, c)] if info.nodes[c] >= 0 and not seen >> c & 1 else []
                return [_key_done(stack, -1)] if info.free else []
            u2 = UTF8[u][b]
            if u2 < 0:
                return []
            kept = tuple(c for c in cands if pos < len(info.names[c]) and info.names[c][pos] == b)
            if kept:
                return [stack[:-1] + ((K_KEY, s, kept, pos + 1, u2),)]
            if info.free and not inside and b >= 0x20 and b != BACKSLASH:
                return [stack[:-1] + ((K_KEY, s, (), 0, u2),)]       # a key no named property has
            return []
        if b == QUOTE:
            return [_key_done(stack, -1)] if u == 0 else []
        if b < 0x20 or b == BACKSLASH:
            return []
        u2 = UTF8[u][b]
        return [stack[:-1] + ((K_KEY, s, (), 0, u2),)] if u2 >= 0 else []

    def _array(self, stack, top, b):
        _, s, phase, count, ws = top
        rest = stack[:-1]
        if b in WHITESPACE:
            ws = _space(ws, b)
            return [rest + ((K_ARR, s, phase, count, ws),)] if ws > 0 else []
        _, items, low, high = self.specs[s]
        if phase == A_AFTER:
            if b == ord(",") and (high < 0 or count < high):
                return [rest + ((K_ARR, s, A_COMMA, count, 0),)]
            if b == ord("]") and count >= low:
                return [_closed(rest)]
            return []
        if b == ord("]") and phase == A_OPEN and low == 0:
            return [_closed(rest)]
        if high == 0:
            return []
        return self._value(rest + ((K_ARR, s, A_VALUE, count + 1, 0), (K_VAL, items, 0)), (K_VAL, items, 0), b)

    def _string(self, stack, top, b):
        _, s, esc, u, count = top
        if esc:
            e = ESCAPE[esc][b]
            return [stack[:-1] + ((K_STR, s, e, 0, count),)] if e >= 0 else []
        if u:
            u2 = UTF8[u][b]
            return [stack[:-1] + ((K_STR, s, 0, u2, count),)] if u2 >= 0 else []
        _, low, high = self.specs[s]
        if b == QUOTE:
            return [_closed(stack[:-1])] if count >= low else []
        if 0 <= high <= count or b < 0x20:
            return []
        counted = count + 1 if low or high >= 0 else 0       # counted only where a bound needs it
        if b == BACKSLASH:
            return [stack[:-1] + ((K_STR, s, 1, 0, counted),)]
        u2 = UTF8[0][b]
        return [stack[:-1] + ((K_STR, s, 0, u2, counted),)] if u2 >= 0 else []

    def _number(self, stack, top, b):
        _, s, phase, digits = top
        nxt = NUMBERS[self.specs[s][1]][phase][b]
        if nxt < 0:
            return []
        digits = digits + 1 if nxt == phase else int(nxt in N_LIMIT)
        if digits > N_LIMIT.get(nxt, 1):
            return []
        frame = (K_NUM, s, nxt, digits)
        return [stack[:-1] + (frame,) if self._grows(frame) else _closed(stack[:-1])]

    def _grows(self, frame: tuple) -> bool:
        """Whether a number can take another byte (one that cannot is complete and leaves the stack)."""
        _, s, phase, digits = frame
        if phase == N_ZERO or phase == N_INT and digits >= MAX_DIGITS:
            return not self.specs[s][1]            # a point or an exponent, except for integers
        return phase != N_EXP or digits < N_LIMIT[N_EXP]

    def _literal(self, stack, top, b):
        _, s, cands, pos, _ = top
        lits = self.specs[s][1]
        kept = tuple(c for c in cands if len(lits[c]) > pos and lits[c][pos] == b)
        if not kept:
            return []
        ends = [len(lits[c]) == pos + 1 for c in kept]
        if all(ends):
            return [_closed(stack[:-1])]
        return [stack[:-1] + ((K_LIT, s, kept, pos + 1, any(ends)),)]

    def __repr__(self):
        return f"JsonGrammar(nodes={len(self.nodes)}, specs={len(self.specs)})"


def _done(frame: tuple) -> bool:
    """Whether a frame that stays on the stack after a byte is already a complete value (numbers,
    and enum literals one of which is a prefix of another, e.g. 1 and 12)."""
    if frame[0] == K_NUM:
        return frame[2] in N_COMPLETE
    return frame[0] == K_LIT and frame[4]


def _space(ws: int, b: int) -> int:
    """The whitespace state after byte b (-1: not allowed). 0: none yet; 1: one space, the end;
    2 + k: a newline and k spaces or tabs."""
    if ws == 0:
        return 1 if b == SPACE else 2 if b == NEWLINE else -1
    return ws + 1 if 2 <= ws < 2 + MAX_INDENT and b in (SPACE, TAB) else -1


def _closed(stack: tuple) -> tuple:
    """The stack after its top value ended: the parent object or array waits for a comma or its end."""
    if not stack:
        return stack
    parent = stack[-1]
    if parent[0] == K_OBJ:
        return stack[:-1] + ((K_OBJ, parent[1], O_AFTER, parent[3], 0, -1),)
    return stack[:-1] + ((K_ARR, parent[1], A_AFTER, parent[3], 0),)


def _key_done(stack: tuple, prop: int) -> tuple:
    obj = stack[-2]
    seen = obj[3] | (1 << prop if prop >= 0 else 0)
    return stack[:-2] + ((K_OBJ, obj[1], O_KEYDONE, seen, 0, prop),)


def _bytes(text: str | bytes) -> bytes:
    return text.encode("utf-8") if isinstance(text, str) else bytes(text)


__all__ = ["JsonGrammar", "State", "MAX_INDENT", "MAX_DIGITS", "UTF8", "UTF8_DUE", "UTF8_STATES", "K_KEY", "K_STR"]
