"""Tool (function) calling: OpenAI's `tools` checked, the model's own format of a call found from its chat
template, its replies parsed into calls, and the JSON Schema of one call for constrained decoding.

Formats (the chat template decides; the text is the decoded reply):
- "hermes" (Qwen2.5, Qwen3, Hermes, and any template that writes `<tool_call>`): calls are
  `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>` blocks, other text is content;
- "llama3" (Llama 3.1 / 3.2, whose templates ask for `{"name": function name, "parameters": ...}`): the
  whole reply is one call `{"name": ..., "parameters": {...}}` (or several joined by ";");
- "mistral" (Mistral's v3 templates, which write `[TOOL_CALLS]`): the reply is `[TOOL_CALLS]` and a JSON
  array of `{"name": ..., "arguments": {...}}` (the marker is a special token, which decoding may drop:
  a reply that is such an array alone counts too);
- "mistral_v11" (Mistral's templates from tokenizer v11 on, which write `[ARGS]`: Mistral Small 3.2's): each
  call is `[TOOL_CALLS]name[ARGS]{...}` (`[CALL_ID]id` before `[ARGS]` in a history); the markers are
  special tokens too, so `name{...}` counts as a call. A forced call writes the name in the prompt and
  decodes only the arguments, so `required` needs a single tool (else name one).
Replies in the formats with a marker are read as a stream reads them (loom/llm/tool_stream.py), so that a
stream's content and calls add up to the plain reply's for the same text: once a call has begun (its marker,
one of the tools' names and its arguments' '{'), it is a call, its arguments the JSON text the model wrote
(as far as it got where max_tokens or a stop string cut it); text that does not begin a call (no object, a
name that is no tool's) is content. A Llama 3 reply that does not parse as calls naming the tools with
objects of arguments is content, as vLLM's parsers leave it. Either way the request succeeds.
"""
from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from . import tool_stream

MAX_TOOLS = 128                                 # OpenAI's limit
ARGUMENT_PIECE = 16                             # characters of a call's arguments per chunk, streamed at the end
NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_ID_CHARACTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


@dataclass(frozen=True)
class Format:
    name: str               # "hermes" | "llama3" | "mistral" | "mistral_v11"
    arguments_key: str      # the key of a call's arguments in the model's JSON
    prefix: str             # text that opens a call (appended to the prompt when a call is forced)
    array: bool = False     # calls come as one JSON array


FORMATS = {"hermes": Format("hermes", "arguments", "<tool_call>\n"), "llama3": Format("llama3", "parameters", ""),
           "mistral": Format("mistral", "arguments", "[TOOL_CALLS]", array=True),
           "mistral_v11": Format("mistral_v11", "arguments", "[TOOL_CALLS]")}


def format_for(template: str | None) -> Format:
    """template_format, or ConfigError("tools", ...) where the template renders no tools in a known format."""
    fmt = template_format(template)
    if fmt is None:
        raise ConfigError("tools", "this model's chat template renders no tools in a call format loom reads "
                                   "(Hermes-style <tool_call> blocks, as Qwen2.5 and Qwen3 write them, Llama 3.1's "
                                   "JSON calls or Mistral's [TOOL_CALLS] arrays)")
    return fmt


def template_format(template: str | None) -> Format | None:
    """The call format a chat template teaches its model, or None where it renders no tools."""
    if not template or "tools" not in template:
        return None
    if "<tool_call>" in template:
        return FORMATS["hermes"]
    if "[TOOL_CALLS]" in template:
        return FORMATS["mistral_v11" if "[ARGS]" in template else "mistral"]
    if '"parameters": dictionary of argument name' in template or "Environment: ipython" in template:
        return FORMATS["llama3"]
    return None


def check_tools(tools: Any) -> list[dict]:
    """OpenAI's `tools`, checked: a list of 1 to MAX_TOOLS {"type": "function", "function": {"name",
    "description"?, "parameters"?, "strict"?}} with distinct names; returns them with parameters
    defaulted to an empty object schema. ConfigError names the bad field (tools[i].function.name, ...)."""
    if not isinstance(tools, list) or not tools:
        raise ConfigError("tools", "'tools' must be a non-empty list of {\"type\": \"function\", \"function\": ...}")
    if len(tools) > MAX_TOOLS:
        raise ConfigError("tools", f"at most {MAX_TOOLS} tools, got {len(tools)}")
    out, seen = [], set()
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("function"), dict):
            raise ConfigError(where, "a tool must be {\"type\": \"function\", \"function\": {...}}")
        fn = tool["function"]
        name = fn.get("name")
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise ConfigError(f"{where}.function.name", f"a function name is 1-64 letters, digits, '_' or '-', "
                                                        f"got {name!r:.70}")
        if name in seen:
            raise ConfigError(f"{where}.function.name", f"the function {name!r} is named twice")
        seen.add(name)
        if fn.get("description") is not None and not isinstance(fn.get("description"), str):
            raise ConfigError(f"{where}.function.description", "'description' must be a string")
        if fn.get("strict") is not None and not isinstance(fn.get("strict"), bool):
            raise ConfigError(f"{where}.function.strict", "'strict' must be true or false")
        parameters = fn.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(parameters, dict) or parameters.get("type", "object") != "object":
            raise ConfigError(f"{where}.function.parameters", "'parameters' must be a JSON Schema of an object")
        out.append({"type": "function", "function": {**fn, "parameters": parameters}})
    return out


def check_choice(choice: Any, tools: list[dict] | None) -> tuple[str, str | None]:
    """OpenAI's `tool_choice` -> (mode, forced name): "none", "auto", "required", or "named" with the
    function's name. Without tools only "none" (or nothing) is allowed, as OpenAI has it."""
    names = [t["function"]["name"] for t in tools or []]
    if choice is None:
        return ("auto", None) if tools else ("none", None)
    if not tools and choice != "none":
        raise ConfigError("tool_choice", "'tool_choice' is only allowed when 'tools' are given")
    if choice in ("none", "auto", "required"):
        return choice, None
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
        if name not in names:
            raise ConfigError("tool_choice.function.name", f"no tool is named {name!r:.70}; the tools are {names}")
        return "named", name
    raise ConfigError("tool_choice", "'tool_choice' must be 'none', 'auto', 'required' or {\"type\": \"function\", "
                                     f"\"function\": {{\"name\": ...}}}}, got {choice!r:.70}")


def forced(tools: list[dict], fmt: Format, name: str | None = None) -> tuple[str, dict, str | None]:
    """What a required (name None) or named tool_choice decodes: (the text after the prompt, the JSON Schema
    of the reply, the function's name where that text already writes it: mistral_v11's). ConfigError as
    forced_schema's, or at tool_choice where mistral_v11 is required to choose among several tools."""
    if fmt.name != "mistral_v11":
        return fmt.prefix, forced_schema(tools, fmt, name), None
    if name is None:
        if len(tools) > 1:
            raise ConfigError("tool_choice", "this model writes a call's name before its arguments "
                                             "([TOOL_CALLS]name[ARGS]{...}), so 'required' with several tools cannot "
                                             "be decoded under their schemas: name one function")
        name = tools[0]["function"]["name"]
    from .json_constraint import JsonGrammar
    i, tool = next((i, t) for i, t in enumerate(tools) if t["function"]["name"] == name)
    JsonGrammar.from_schema(tool["function"]["parameters"], f"tools[{i}].function.parameters")
    return f"{fmt.prefix}{name}[ARGS]", tool["function"]["parameters"], name


def forced_only(tools: list[dict], name: str | None = None) -> str | None:
    """The one function a forced call can name: the named tool_choice's, or the only tool's (else None)."""
    return name if name is not None else tools[0]["function"]["name"] if len(tools) == 1 else None


def forced_schema(tools: list[dict], fmt: Format, name: str | None = None) -> dict:
    """call_schema, once each tool it may call has parameters within the constraint's JSON Schema subset
    (else the ConfigError of the bad keyword, at tools[i].function.parameters...)."""
    from .json_constraint import JsonGrammar
    for i, tool in enumerate(tools):
        if name in (None, tool["function"]["name"]):
            JsonGrammar.from_schema(tool["function"]["parameters"], f"tools[{i}].function.parameters")
    return call_schema(tools, fmt, name)


def call_schema(tools: list[dict], fmt: Format, name: str | None = None) -> dict:
    """The JSON Schema of one call in the model's format ({"name": ..., <arguments key>: {...}}) of any of
    the tools, or of `name` alone; each tool's $defs / definitions move to the root (a clash of names
    between tools is a ConfigError naming the tool)."""
    defs: dict = {}
    choices = []
    for i, tool in enumerate(tools):
        fn = tool["function"]
        if name is not None and fn["name"] != name:
            continue
        params = dict(fn["parameters"])
        for key in ("$defs", "definitions"):
            found = params.pop(key, {})
            if not isinstance(found, dict):
                raise ConfigError(f"tools[{i}].function.parameters.{key}", f"'{key}' must be an object of schemas")
            for def_name, schema in found.items():
                if (key, def_name) in defs and defs[(key, def_name)] != schema:
                    raise ConfigError(f"tools[{i}].function.parameters.{key}.{def_name}",
                                      "two tools define this name differently")
                defs[(key, def_name)] = schema
        choices.append({"type": "object", "properties": {"name": {"const": fn["name"]}, fmt.arguments_key: params},
                        "required": ["name", fmt.arguments_key], "additionalProperties": False})
    schema: dict = choices[0] if len(choices) == 1 else {"anyOf": choices}
    if fmt.array:                               # one call, in the array the format writes
        schema = {"type": "array", "items": schema, "minItems": 1, "maxItems": 1}
    for (key, def_name), value in defs.items():
        schema.setdefault(key, {})[def_name] = value
    return schema


def parse(text: str, fmt: Format, names: list[str]) -> tuple[str | None, list[dict]]:
    """(content, calls) of a reply: calls as OpenAI's message.tool_calls (ids fresh, arguments the JSON text
    the model wrote); the whole text as content where the reply makes no call. The formats with a marker
    are read as a stream reads them (tool_stream.ReplyReader: a call once begun stays one, text that is no
    call is content); Llama 3's reply is its calls only where all of it parses as such."""
    if fmt.name != "llama3":
        content, found = tool_stream.read(text, fmt.name, names)
        return content, [call(name, arguments, fmt) for name, arguments in found]
    body = text.strip()
    if not body.startswith("{"):
        return text, []
    found = _calls(_json_values(body), fmt, names)
    return (text, []) if found is None else (None, found)


def settled_content(text: str, fmt: Format, names: list[str]) -> int:
    """How much of the beginning of a reply (to a request with tool_choice auto) is content whatever the
    model writes next, so that a stream can send it as it comes: `text[:n]` begins parse's content of
    any longer reply. 0 while the reply could still be a call from its start, or while it starts with
    whitespace (parse strips that where calls follow); else up to where a call could begin (the format's
    marker, whole or cut at the end), less trailing whitespace. (The server streams Llama 3's replies with
    it, HeldReply; the formats with a marker stream their calls too, tool_stream.ReplyReader.)"""
    if not text or text[0].isspace():
        return 0
    if fmt.name == "llama3":                    # a call is the whole reply
        return 0 if text.startswith("{") else len(text)
    if fmt.name == "mistral" and text.startswith("["):
        return 0
    if fmt.name == "mistral_v11" and any(text.startswith(n) or n.startswith(text) for n in names):
        return 0
    marker = "<tool_call>" if fmt.name == "hermes" else fmt.prefix
    end = text.find(marker)
    if end < 0:
        end = len(text) - next((k for k in range(min(len(marker) - 1, len(text)), 0, -1)
                                if text.endswith(marker[:k])), 0)
    return len(text[:end].rstrip())


def _json_values(body: str) -> list[str]:
    """The JSON texts of a reply of values separated by ';' and whitespace (a ';' inside a string is
    part of it); one piece that does not parse where the reply is not such a sequence."""
    decoder, pieces, at = json.JSONDecoder(), [], 0
    while at < len(body):
        try:
            _, end = decoder.raw_decode(body, at)
        except json.JSONDecodeError:
            return [body[at:]]
        pieces.append(body[at:end])
        at = end
        while at < len(body) and body[at] in " \t\r\n;":
            at += 1
    return pieces


def reply(text: str, fmt: Format, names: list[str], forced: bool, parallel: bool = True,
          called: str | None = None, only: str | None = None) -> tuple[str | None, list[dict]]:
    """(content, calls) of a reply to a request with tools: a forced call's reply (tool_choice required or
    named; `called`: the name the prompt wrote, `forced`'s third value; `only`: the one function it can
    name, forced_only's) is that call, its arguments the
    JSON text the model wrote (forced_progress: cut short by max_tokens or a stop string, as far as it
    got, as OpenAI returns such a call), or content where it stopped before its name and arguments began;
    any other reply is parsed; parallel False keeps the first call."""
    if forced:
        name, arguments = forced_progress(text, fmt, called, only)
        return (text, []) if name is None or arguments is None else (None, [call(name, arguments, fmt)])
    content, calls = parse(text, fmt, names)
    return content, calls if parallel else calls[:1]


def forced_progress(text: str, fmt: Format, called: str | None = None,
                    only: str | None = None) -> tuple[str | None, str | None]:
    """(name, arguments) of a forced call's reply as far as `text` goes: the function's name once written
    (`called` where the prompt wrote it and the reply is the arguments alone; `only` where a single
    function can be called), and the arguments' JSON text as written, from its '{' to the object's end or
    to where text ends (None before the '{'). The constraint lets the model write the call's keys in
    either order; the call has begun (a stream sends its head) once both are known. Prefix-stable: a longer
    text's arguments begin with a shorter one's, so a stream sends them as they are generated and the
    reply's message holds the same text (ForcedStream: the same for a growing reply, scanned once)."""
    return ForcedStream(fmt, called, only).progress(text)


class ForcedStream:
    """forced_progress for a reply that only grows (a stream's), each character scanned once
    (tool_stream.CallScan resumes where its last call stopped); feed and finish give the deltas a stream
    sends, as ReplyReader's: the call's head once it has begun, then each new piece of its arguments."""

    def __init__(self, fmt: Format, called: str | None = None, only: str | None = None):
        self.fmt, self.called, self.only = fmt, called, only
        self.call: tool_stream.CallScan | None = None
        self.arguments: tool_stream.ValueScan | None = None     # `called`'s: the reply is the arguments alone
        self.start = 0
        self.headed, self.sent = False, 0

    def progress(self, text: str) -> tuple[str | None, str | None]:
        if self.called is not None:
            if self.arguments is None:
                self.start = tool_stream.skip_space(text, 0)
                if text[self.start:self.start + 1] != "{":
                    return self.called, None
                self.arguments = tool_stream.ValueScan(self.start)
            return self.called, text[self.start:self.arguments.run(text) or len(text)]
        if self.call is None:
            at = tool_stream.skip_space(text, 0)
            if self.fmt.array:
                if text[at:at + 1] != "[":
                    return self.only, None
                at = tool_stream.skip_space(text, at + 1)
            if text[at:at + 1] != "{":
                return self.only, None
            self.call = tool_stream.CallScan(at, self.fmt.arguments_key, only=self.only)
        found = self.call
        found.run(text)
        return found.name, None if found.start is None else text[found.start:found.stop or len(text)]

    @property
    def at(self) -> int:
        """How far into the reply the arguments have been read (0 before they begin)."""
        scan = self.arguments if self.called is not None else self.call and self.call.arguments
        return 0 if scan is None else scan.at

    def feed(self, text: str) -> list[tuple[str, int | None, str]]:
        name, arguments = self.progress(text)
        out: list[tuple[str, int | None, str]] = []
        if name is None or arguments is None:
            return out
        if not self.headed:
            out.append(("call", 0, name))
            self.headed = True
        if len(arguments) > self.sent:
            out.append(("arguments", 0, arguments[self.sent:]))
            self.sent = len(arguments)
        return out

    def finish(self, text: str) -> list[tuple[str, int | None, str]]:
        """The last deltas: a reply that stopped before the call began is content (reply's message)."""
        out = self.feed(text)
        return out if self.headed or not text else [("content", None, text)]


class HeldReply:
    """auto's stream in Llama 3's format, whose calls are bare JSON with no marker: a reply that opens with
    '{' cannot be told from content until it ends, so it cannot be streamed safely as it comes. Content
    streams while settled_content allows; the calls go out at the choice's end, their arguments in pieces
    of ARGUMENT_PIECE characters, as OpenAI streams them. The deltas are ReplyReader's."""

    def __init__(self, fmt: Format, names: list[str], parallel: bool = True):
        self.fmt, self.names, self.parallel, self.sent = fmt, names, parallel, 0

    def feed(self, text: str) -> list[tuple[str, int | None, str]]:
        settled = settled_content(text, self.fmt, self.names)
        if settled <= self.sent:
            return []
        piece, self.sent = text[self.sent:settled], settled
        return [("content", None, piece)]

    def finish(self, text: str) -> list[tuple[str, int | None, str]]:
        content, calls = reply(text, self.fmt, self.names, False, self.parallel)
        out: list[tuple[str, int | None, str]] = []
        if (content or "")[self.sent:]:
            out.append(("content", None, content[self.sent:]))
        for k, c in enumerate(calls):
            arguments = c["function"]["arguments"]
            out.append(("call", k, c["function"]["name"]))
            out += [("arguments", k, arguments[at:at + ARGUMENT_PIECE]) for at in range(0, len(arguments),
                                                                                          ARGUMENT_PIECE)]
        return out


def reply_stream(fmt: Format, names: list[str], forced: bool, parallel: bool = True, called: str | None = None,
                 only: str | None = None) -> ForcedStream | HeldReply | tool_stream.ReplyReader:
    """What a stream reads a reply with (reply's arguments): feed(text) with the reply so far and finish(text)
    with the whole reply give its deltas, ("content", None, text), ("call", k, name) and ("arguments", k,
    text), which add up to reply's message: a forced call, or auto's content and calls as they come (in
    Llama 3's format, calls at the end: HeldReply)."""
    if forced:
        return ForcedStream(fmt, called, only)
    if fmt.name == "llama3":
        return HeldReply(fmt, names, parallel)
    return tool_stream.ReplyReader(fmt.name, names, parallel)


def whole_arguments(entry: dict) -> bool:
    """Whether a tool_calls entry's arguments are a whole JSON object (not a forced call cut short)."""
    try:
        return isinstance(json.loads(entry["function"]["arguments"]), dict)
    except json.JSONDecodeError:
        return False


def _calls(pieces: list[str], fmt: Format, names: list[str]) -> list[dict] | None:
    calls = []
    for piece in pieces:
        try:
            value = json.loads(piece)
        except json.JSONDecodeError:
            return None
        if not isinstance(value, dict) or value.get("name") not in names:
            return None
        arguments = value.get(fmt.arguments_key, value.get("arguments", {}))
        if not isinstance(arguments, dict):
            return None
        calls.append(call(value["name"], arguments, fmt))
    return calls or None


def call(name: str, arguments: dict | str, fmt: Format | None = None) -> dict:
    """One entry of OpenAI's tool_calls, with a fresh id; arguments an object (written as JSON) or the JSON
    text the model wrote."""
    text = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
    return {"id": call_id(fmt), "type": "function", "function": {"name": name, "arguments": text}}


def call_id(fmt: Format | None = None) -> str:
    """A fresh call id: 9 letters and digits for Mistral's formats (their templates take no other), else
    OpenAI's "call_" and 24 hex digits."""
    if fmt is not None and fmt.name.startswith("mistral"):
        return "".join(secrets.choice(_ID_CHARACTERS) for _ in range(9))
    return "call_" + secrets.token_hex(12)


def for_template(messages: list[dict]) -> list[dict]:
    """The messages as chat templates read them: an assistant's tool calls with their arguments as
    objects (OpenAI sends JSON text; Qwen's and Llama's templates write `arguments | tojson`), and an
    assistant's null content (OpenAI's, beside tool calls) as "", as vLLM passes it: Qwen3's template
    tests `'</think>' in message.content` and fails on null; the others render "" as they render null."""
    out = []
    for m in messages:
        if m.get("tool_calls"):
            calls = [{**c, "function": {**c["function"], "arguments": _as_object(c["function"].get("arguments"))}}
                     for c in m["tool_calls"]]
            m = {**m, "tool_calls": calls}
        if m.get("role") == "assistant" and m.get("content") is None:
            m = {**m, "content": ""}
        out.append(m)
    return out


def _as_object(arguments: Any) -> Any:
    """JSON text of an object as the object; anything else (an object already, or text that is not one)
    as it is."""
    if isinstance(arguments, str):
        try:
            value = json.loads(arguments)
        except json.JSONDecodeError:
            return arguments
        return value if isinstance(value, dict) else arguments
    return arguments
