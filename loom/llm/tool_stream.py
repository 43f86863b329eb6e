"""Reading a reply's tool calls as the reply grows, each character once: a stream's reply grows a token at
a time, and rescanning it whole at every token cost a long call quadratic time (7.5 s at 28k characters).

- ValueScan: where a JSON value that begins at a given index ends, resumed as text is added;
- CallScan: one call's JSON object, `{"name": ..., <arguments key>: {...}}` in either key order, its name
  and its arguments' span as far as the text goes (forced calls' and auto calls');
- ReplyReader: a reply to tool_choice "auto" in a format whose calls follow a marker, as the deltas a
  stream sends: content, each call's head (its name) and each new piece of its arguments' JSON text.

ReplyReader's deltas are prefix-stable: a longer text never revises what a shorter one gave, so a stream
sends them at once, and the plain reply (tool_calls.parse: the same reader over the whole text) adds up to
the same message. A call, once its marker, one of the tools' names and its arguments' '{' are read, stays a
call, its arguments the JSON text the model wrote as far as it got (max_tokens or a stop string may cut it);
what comes before a call has begun, and text that turns out to be no call, is content. Content is the
text outside calls, stripped at both ends where the reply makes calls (whether a reply that opens with
whitespace makes any is known only once one begins, so such content waits until then or the end).
Per format:
- hermes: `<tool_call>` then a call object; the call's block ends at `</tool_call>` (what the model wrote
  between the object and it is dropped), at the next `<tool_call>` or at the reply's end;
- mistral: `[TOOL_CALLS]` (or nothing, at the reply's start: the marker is a special token decoding may
  drop) then a JSON array of call objects; its first element decides whether it holds calls, later ones
  that are none are skipped; text after the array's `]` (or where it stops being an array) is content;
- mistral_v11: `[TOOL_CALLS]name[CALL_ID]id[ARGS]{...}`, the id and the special tokens optional (a bare
  `name{...}` at the reply's start or right after a call): the name is the longest of the tools' names
  the text begins with, once no longer one can still match.
"""
from __future__ import annotations

import json

HERMES_OPEN, HERMES_CLOSE = "<tool_call>", "</tool_call>"
MISTRAL_MARKER, MISTRAL_ID, MISTRAL_ARGS = "[TOOL_CALLS]", "[CALL_ID]", "[ARGS]"
FORMATS = ("hermes", "mistral", "mistral_v11")
_ID_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_NEXT = {"{": "key", ":": "value", ",": "key"}     # CallScan: the punctuation expected, and what follows it


def skip_space(text: str, at: int) -> int:
    """The index of the first character from `at` on that is not JSON whitespace (len(text) if none)."""
    while at < len(text) and text[at] in " \t\r\n":
        at += 1
    return at


class ValueScan:
    """Where the JSON value that starts at text[at] ends (a string, an object, an array or a scalar): run()
    gives the index just past it, or None while the text ends inside it, reading only what was added to
    the text since its last call."""

    def __init__(self, at: int):
        self.at, self.depth, self.in_string, self.escaped = at, 0, False, False
        self.end: int | None = None

    def run(self, text: str) -> int | None:
        while self.end is None and self.at < len(text):
            ch, k = text[self.at], self.at
            self.at += 1
            if self.in_string:
                self.escaped, self.in_string = (False, True) if self.escaped else (ch == "\\", ch != '"')
                if not self.in_string and self.depth == 0:
                    self.end = k + 1
            elif ch == '"':
                self.in_string = True
            elif ch in "{[":
                self.depth += 1
            elif ch in "}]":
                self.depth -= 1
                if self.depth <= 0:             # its close, or a scalar's that the enclosing value closes
                    self.end = k + 1 if self.depth == 0 else k
            elif self.depth == 0 and ch in ", \t\r\n":
                self.end = k                    # a scalar's end
        return self.end


class CallScan:
    """One call's JSON object, from its '{' at text[at], read as the text grows (run() resumes where it
    stopped): the function's name once its value is read (`only`: known beforehand, the reply's ignored),
    the arguments' span once their '{' is (its end once they close) and the object's end. The keys may
    come in either order (the call constraint allows both); other keys are skipped. With `names` (auto's
    tools) a name outside them, or arguments that are not an object, make it no call (`wrong`)."""

    def __init__(self, at: int, arguments_key: str, names: list[str] | None = None, only: str | None = None):
        self.at, self.arguments_key, self.names = at, arguments_key, names
        self.name, self._named = only, only is not None
        self.start: int | None = None           # the arguments' '{'
        self.stop: int | None = None            # just past the arguments (None while they are open)
        self.arguments: ValueScan | None = None
        self.end: int | None = None             # just past the object's '}', or where the text stopped being one
        self.closed = False                     # ... ended by its '}'
        self.wrong: int | None = None           # where it turned out to be no call of one of `names`
        self._expect = "{"                      # "{", "key", ":", "value" or ","
        self._key: str | None = None
        self._value: ValueScan | None = None    # the key or value being read, from _value_at
        self._value_at = at

    @property
    def is_call(self) -> bool | None:
        """Whether the object is a call of one of the tools: True once its name and the arguments' '{' are
        read (or it closed with a name and no arguments: `{}`, as parse has always taken it), False once it
        cannot be one, None until then. It never changes once decided."""
        if self.wrong is not None:
            return False
        if self.name is not None and (self.start is not None or self.closed):
            return True
        return False if self.end is not None else None

    def run(self, text: str) -> None:
        while self.end is None:
            if self._value is not None:
                stop = self._value.run(text)
                if stop is None:
                    return
                self._took(text, stop)
                continue
            at = self.at = skip_space(text, self.at)
            if at == len(text):
                return
            ch = text[at]
            if self._expect == "value":
                self._value, self._value_at = ValueScan(at), at
                if self._key == self.arguments_key and self.start is None:
                    if ch == "{":
                        self.start, self.arguments = at, self._value
                    elif self.names is not None:
                        self.wrong = at
            elif self._expect == "key" and ch == '"':
                self._value, self._value_at = ValueScan(at), at
            elif self._expect in _NEXT and ch == self._expect:
                self.at, self._expect = at + 1, _NEXT[ch]
            elif ch == "}" and self._expect in ("key", ","):
                self.at = self.end = at + 1
                self.closed = True
            else:
                self.end = at                   # not a call object from here on

    def _took(self, text: str, stop: int) -> None:
        """A key or a value has been read: text[self._value_at:stop]."""
        piece, self._value, self.at = text[self._value_at:stop], None, stop
        if self._expect == "key":
            try:
                self._key, self._expect = json.loads(piece), ":"
            except ValueError:
                self.end = self._value_at
            return
        self._expect = ","
        if self._value_at == self.start:
            self.stop = stop
        elif self._key == "name" and self.name is None and not self._named:
            try:
                value = json.loads(piece)
            except ValueError:
                value = None
            if self.names is None:              # a forced call: its constraint chose among the tools
                self.name = value if isinstance(value, str) else None
            elif isinstance(value, str) and value in self.names:
                self.name = value
            else:
                self.wrong = stop


class ReplyReader:
    """A reply to tool_choice "auto" in the `fmt` format ("hermes", "mistral" or "mistral_v11"; the
    module's docstring says how each is read), read as it grows. feed(text) with the reply so far, then
    finish(text) with the whole reply, each give the new deltas: ("content", None, text), ("call", k,
    name) when call k has begun, ("arguments", k, text) with each new piece of its arguments. With
    `parallel` False only the first call's deltas are given (the others are still no content)."""

    def __init__(self, fmt: str, names: list[str], parallel: bool = True):
        if fmt not in FORMATS:
            raise ValueError(f"no call marker to read {fmt!r} replies by")
        self.fmt, self.names, self.parallel = fmt, list(names), parallel
        self.marker = HERMES_OPEN if fmt == "hermes" else MISTRAL_MARKER
        self.longest = max(map(len, self.names), default=0)
        # the method that reads on (_content, _start, _open, _item, _next, _object, _block_end, _v11_name,
        # _v11_head, _v11_arguments, _done): Mistral's calls may come without their marker at the start
        self.mode = "content" if fmt == "hermes" else "start"
        self.at = 0                     # the text before this is read
        self.mark = 0                   # where what may be (or is) a call began: its marker, or its blanks
        self.region_calls = 0           # calls begun since `mark` (a Mistral array holds several)
        self.calls = 0                  # calls begun in the reply
        self.scan: CallScan | None = None           # the call object being read
        self.current: CallScan | None = None        # ... once it has begun a call
        self.index = 0                              # the call being read
        self.arguments: ValueScan | None = None     # mistral_v11's arguments, from arguments_at
        self.arguments_at = 0
        self.name: str | None = None    # mistral_v11's name, once read
        self.stage = ""                 # mistral_v11: how far past the name ("id", "id characters", "args", "{")
        self.sent = 0                   # characters of the current call's arguments given
        self.held: list[str] = []       # content not given yet (trailing whitespace, or all of a blank start)
        self.held_solid = False         # ... holding more than whitespace (a long blank run is joined once)
        self.content_given = False
        self.blank_start: bool | None = None    # whether the content begins with whitespace

    def feed(self, text: str) -> list[tuple[str, int | None, str]]:
        out: list[tuple[str, int | None, str]] = []
        while self._step(text, out):
            pass
        self._release(out)
        return out

    def finish(self, text: str) -> list[tuple[str, int | None, str]]:
        """The last deltas, `text` being the whole reply: what may still have begun a call is content."""
        out: list[tuple[str, int | None, str]] = []
        while self._step(text, out):
            pass
        if self.mode == "content":
            self._add(text[self.at:])               # a marker's beginning, cut
        elif not self.region_calls:
            self._add(text[self.mark:])             # a call that had not begun
        self.mode, self.at = "done", len(text)
        self._release(out, final=True)
        return out

    # --- the modes: each reads what it can and says whether another step may read more --------------------
    def _step(self, text: str, out: list) -> bool:
        return getattr(self, "_" + self.mode)(text, out)

    def _done(self, text: str, out: list) -> bool:
        return False

    def _content(self, text: str, out: list) -> bool:
        """Content, until the format's marker."""
        found = text.find(self.marker, self.at)
        if found < 0:                               # all content, less a marker's beginning at the end
            safe = max(self.at, len(text) - _cut_at_end(text, self.marker))
            self._add(text[self.at:safe])
            self.at = safe
            return False
        self._add(text[self.at:found])
        self._region(found, found + len(self.marker), "open")
        return True

    def _start(self, text: str, out: list) -> bool:
        """Mistral's formats at the reply's start (v11's also right after a call), where a call may come
        without its marker: blanks, then Mistral's array or v11's name."""
        at = self.at = _skip_blank(text, self.at)
        if at == len(text):
            return False
        if text[at] == "[":                         # Mistral's array; else the marker, or text, as content
            if self.fmt == "mistral_v11":
                self.at, self.mode = self.mark, "content"
                return True
            if at + 1 == len(text):
                return False
            if text[at + 1] == MISTRAL_MARKER[1]:
                self.at, self.mode = self.mark, "content"
            else:
                self.mode = "open"
            return True
        if self.fmt == "mistral":
            self.at, self.mode = self.mark, "content"
        else:
            self.mode = "v11_name"
        return True

    def _open(self, text: str, out: list) -> bool:
        """Past a marker: Hermes' call object, Mistral's array, v11's name."""
        if self.fmt == "mistral_v11":
            self.mode = "v11_name"
            return True
        at = self.at = skip_space(text, self.at)
        if at == len(text):
            return False
        if text[at] != ("[" if self.fmt == "mistral" else "{"):
            return self._no_call(text, at)
        if self.fmt == "mistral":
            self.at, self.mode = at + 1, "item"
        else:
            self.scan, self.mode = CallScan(at, "arguments", self.names), "object"
        return True

    def _item(self, text: str, out: list) -> bool:
        """In Mistral's array, where an element or its ']' comes."""
        at = self.at = skip_space(text, self.at)
        if at == len(text):
            return False
        if text[at] == "{":
            self.scan, self.mode = CallScan(at, "arguments", self.names), "object"
            return True
        if not self.region_calls:
            return self._no_call(text, at)
        self.at, self.mode = (at + 1 if text[at] == "]" else at), "content"
        return True

    def _next(self, text: str, out: list) -> bool:
        """In Mistral's array after an element: ',' and another, or its end."""
        at = self.at = skip_space(text, self.at)
        if at == len(text):
            return False
        if text[at] == ",":
            self.at, self.mode = at + 1, "item"
        else:                                       # its ']', or where it stops being an array
            self.at, self.mode = (at + 1 if text[at] == "]" else at), "content"
        return True

    def _object(self, text: str, out: list) -> bool:
        """A call object (Hermes', or an element of Mistral's array)."""
        scan = self.scan
        scan.run(text)
        verdict = scan.is_call
        if verdict is None:
            return False
        if verdict:
            if scan is not self.current:
                self.current = scan
                self._begin_call(out, scan.name)
            self._arguments(out, "{}" if scan.start is None else text[scan.start:scan.stop or len(text)])
        elif not self.region_calls:                 # the first object after a marker: no call
            return self._no_call(text, scan.end if scan.wrong is None else scan.wrong)
        if scan.end is None:
            return False
        self.scan, self.at = None, scan.end
        if self.fmt == "hermes":
            self.mode = "block_end"
        else:
            self.mode = "next" if scan.closed else "content"
        return True

    def _block_end(self, text: str, out: list) -> bool:
        """After a Hermes call's object: its block ends at `</tool_call>` or the next `<tool_call>`."""
        close, again = text.find(HERMES_CLOSE, self.at), text.find(HERMES_OPEN, self.at)
        if close < 0 and again < 0:
            cut = max(_cut_at_end(text, HERMES_CLOSE), _cut_at_end(text, HERMES_OPEN))
            self.at = max(self.at, len(text) - cut)
            return False
        if close >= 0 and (again < 0 or close < again):
            self.at = close + len(HERMES_CLOSE)
        else:
            self.at = again
        self.mode = "content"
        return True

    def _v11_name(self, text: str, out: list) -> bool:
        """mistral_v11's function name: the longest tool name the text begins with, once no longer one can
        still match (the text may end inside it)."""
        at = self.at
        typed = text[at:at + self.longest + 1]
        if any(len(n) > len(typed) and n.startswith(typed) for n in self.names):
            return False
        name = max((n for n in self.names if typed.startswith(n)), key=len, default=None)
        if name is None:
            return self._no_call(text, at)
        self.name, self.at, self.stage, self.mode = name, at + len(name), "id", "v11_head"
        return True

    def _v11_head(self, text: str, out: list) -> bool:
        """Past v11's name: `[CALL_ID]id` and `[ARGS]`, each optional, then the arguments' '{'."""
        while True:
            at = self.at
            if self.stage in ("id", "args"):
                word = MISTRAL_ID if self.stage == "id" else MISTRAL_ARGS
                found = _literal(text, at, word)
                if found is None:
                    return False
                if found:
                    self.at = at + len(word)
                self.stage = ("id characters" if found else "args") if self.stage == "id" else "{"
            elif self.stage == "id characters":
                while at < len(text) and text[at] in _ID_CHARACTERS:
                    at += 1
                self.at = at
                if at == len(text):
                    return False
                self.stage = "args"
            else:
                if at == len(text):
                    return False
                if text[at] != "{":
                    return self._no_call(text, at)
                self._begin_call(out, self.name)
                self.arguments, self.arguments_at, self.mode = ValueScan(at), at, "v11_arguments"
                return True

    def _v11_arguments(self, text: str, out: list) -> bool:
        stop = self.arguments.run(text)
        self._arguments(out, text[self.arguments_at:stop or len(text)])
        if stop is None:
            return False
        self._region(stop, stop, "start")           # another call may follow, its marker dropped
        return True

    # --- helpers -----------------------------------------------------------------------------------------
    def _region(self, mark: int, at: int, mode: str) -> None:
        """What begins at `mark` may be a call: read on from `at` in `mode`."""
        self.mark, self.at, self.mode, self.region_calls = mark, at, mode, 0

    def _no_call(self, text: str, at: int) -> bool:
        """What was read since `mark` is no call: content, and content is read on from `at`."""
        self._add(text[self.mark:at])
        self.at, self.mode = at, "content"
        return True

    def _begin_call(self, out: list, name: str) -> None:
        self._release(out)                          # the content before it goes first
        self.index, self.sent = self.calls, 0
        self.calls += 1
        self.region_calls += 1
        if self.parallel or self.index == 0:
            out.append(("call", self.index, name))

    def _arguments(self, out: list, arguments: str) -> None:
        if len(arguments) > self.sent:
            if self.parallel or self.index == 0:
                out.append(("arguments", self.index, arguments[self.sent:]))
            self.sent = len(arguments)

    def _add(self, piece: str) -> None:
        if piece:
            if self.blank_start is None:
                self.blank_start = piece[0].isspace()
            self.held.append(piece)
            self.held_solid = self.held_solid or not piece.isspace()

    def _release(self, out: list, final: bool = False) -> None:
        """Give the held content that no longer reply can take back: all but its trailing whitespace (the
        reply's end strips that where it makes calls), and none of a blank start while no call has begun
        (kept without calls, stripped with them); at the end, the rest."""
        if not self.held or not final and (not self.held_solid or not self.calls and self.blank_start):
            return
        text = "".join(self.held)
        if self.calls and not self.content_given:
            text = text.lstrip()
        given = text if final and not self.calls else text.rstrip()
        self.held = [text[len(given):]] if len(given) < len(text) and not final else []
        self.held_solid = False
        if given:
            out.append(("content", None, given))
            self.content_given = True


def read(text: str, fmt: str, names: list[str]) -> tuple[str | None, list[tuple[str, str]]]:
    """(content, [(name, arguments)]) of a whole reply, as ReplyReader reads it: the content None where
    calls leave none, and the whole text where the reply makes no call."""
    deltas = ReplyReader(fmt, names).finish(text)
    calls: list[list[str]] = []
    for kind, k, piece in deltas:
        if kind == "call":
            calls.append([piece, ""])
        elif kind == "arguments":
            calls[k][1] += piece
    if not calls:
        return text, []
    return "".join(piece for kind, _, piece in deltas if kind == "content") or None, [(n, a) for n, a in calls]


def _skip_blank(text: str, at: int) -> int:
    """Past Python's whitespace (what parse has always stripped from a reply's ends)."""
    while at < len(text) and text[at].isspace():
        at += 1
    return at


def _cut_at_end(text: str, word: str) -> int:
    """The length of the longest beginning of `word`, short of all of it, that `text` ends with."""
    return next((k for k in range(min(len(word) - 1, len(text)), 0, -1) if text.endswith(word[:k])), 0)


def _literal(text: str, at: int, word: str) -> bool | None:
    """Whether text has `word` at `at`; None while the text ends inside it."""
    piece = text[at:at + len(word)]
    if piece == word:
        return True
    return None if word.startswith(piece) else False
