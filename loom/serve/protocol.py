"""The OpenAI API's request bodies, checked: each bad field raises BadRequest naming it (the HTTP
400 body's `param`), and the good ones become loom.llm.batching Requests.

Sampling fields as OpenAI names them: temperature (default 1, 0 is greedy), top_p, max_tokens
(chat: also max_completion_tokens; default: the rest of the context for chat, 16 for completions as
OpenAI's legacy endpoint), stop (a string or up to 4), seed (without one, each request draws a
random seed: reproducible only with a seed), n, presence_penalty, frequency_penalty, logprobs
(chat: a flag with top_logprobs 0-20; completions: 0-5 alternatives), response_format (text,
json_object, or json_schema with a schema of the subset loom/llm/json_schema.py supports: the
output is then constrained token by token, see loom/llm/token_mask.py). Unknown fields are ignored,
as vLLM and llama.cpp's server do; fields that would change the output and are not supported
(tools, logit_bias, schema keywords outside the subset) are refused rather than ignored.
"""
from __future__ import annotations

import json
import math
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from ..llm import generate as gen
from ..llm import lazy_constraint, token_mask, tool_calls
from ..llm.batch_requests import Request
from ..llm.json_constraint import JsonGrammar

if TYPE_CHECKING:
    from ..llm.model import CausalLM

MAX_N = 16
MAX_STOP = 4
SCHEMA_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


class BadRequest(Exception):
    """A 400 (or the status given) with an OpenAI-style error body."""

    def __init__(self, param: str | None, message: str, status: int = 400, kind: str = "invalid_request_error",
                 code: str | None = None):
        super().__init__(message)
        self.param, self.message, self.status, self.kind, self.code = param, message, status, kind, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass
class Job:
    """A checked request: the engine requests (n per prompt, prompt-major) and what the response needs."""
    requests: list[Request]
    prompts: list[list[int]]
    n: int
    stream: bool
    include_usage: bool
    logprobs: int | None
    tools: ToolPlan | None = None


@dataclass(frozen=True)
class ToolPlan:
    """A chat job's tools: the model's call format, the tools' names, the tool_choice mode ("auto",
    "required" or "named": the reply is then one call's JSON, its format's prefix in the prompt) and
    whether several calls may come back."""
    fmt: tool_calls.Format
    names: list[str]
    mode: str
    parallel: bool
    called: str | None = None       # the forced call's name where the prompt writes it (tool_calls.forced)
    only: str | None = None         # the one function a forced call can name (tool_calls.forced_only)


def _number(body: dict, key: str, default: float, low: float, high: float, low_open: bool = False) -> float:
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not _finite(v) or \
            not (low < v if low_open else low <= v) or v > high:
        side = "(" if low_open else "["
        raise BadRequest(key, f"'{key}' must be a number in {side}{low}, {high}], got {v!r}")
    return float(v)


def _finite(v: int | float) -> bool:
    try:
        return math.isfinite(v)
    except OverflowError:              # an integer beyond float's range
        return False


def _integer(body: dict, key: str, default: int | None, low: int, high: int | None = None) -> int | None:
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int) or v < low or (high is not None and v > high):
        limit = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
        raise BadRequest(key, f"'{key}' must be {limit}, got {v!r}")
    return v


def _flag(body: dict, key: str, default: bool) -> bool:
    v = body.get(key, default)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise BadRequest(key, f"'{key}' must be true or false, got {v!r}")
    return v


def _stop(body: dict) -> tuple[str, ...]:
    v = body.get("stop")
    if v is None:
        return ()
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, list) or not all(isinstance(s, str) and s for s in items) or len(items) > MAX_STOP:
        raise BadRequest("stop", f"'stop' must be a non-empty string or a list of up to {MAX_STOP}, got {v!r}")
    return tuple(items)


def check_model(body: dict, served: str) -> None:
    name = body.get("model")
    if not isinstance(name, str) or not name:
        raise BadRequest("model", f"'model' must name the served model ({served!r}), got {name!r}")
    if name != served:
        raise BadRequest("model", f"the model {name!r} does not exist; this server serves {served!r}", 404,
                         code="model_not_found")


ROLES = ("system", "developer", "user", "assistant", "tool", "function")     # OpenAI's message roles


def _refuse_unsupported(body: dict) -> None:
    for key in ("functions", "logit_bias"):
        if body.get(key):
            raise BadRequest(key, f"'{key}' is not supported by this server")


def needs_constraint(body: dict) -> bool:
    """Whether the body asks for structured output (building its first grammar may take a while)."""
    fmt = body.get("response_format")
    tools = body.get("tools") is not None and body.get("tool_choice") != "none"   # forced, or auto's lazy one
    return tools or isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema")


def _response_format(body: dict, model: CausalLM) -> Callable[[], gen.Constraint] | None:
    """What makes each request's constraint for the body's response_format (None: plain text)."""
    fmt = body.get("response_format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict):
        raise BadRequest("response_format", "'response_format' must be an object such as "
                                            f"{{\"type\": \"json_object\"}}, got {fmt!r:.60}")
    kind = fmt.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        key, schema, path = "json_object", {"type": "object"}, "response_format"
    elif kind == "json_schema":
        spec = fmt.get("json_schema")
        where = "response_format.json_schema"
        if not isinstance(spec, dict):
            raise BadRequest(where, "'json_schema' must be an object with 'name' and 'schema'")
        name = spec.get("name")
        if not isinstance(name, str) or not SCHEMA_NAME.fullmatch(name):
            raise BadRequest(f"{where}.name", "'name' must be 1-64 letters, digits, '_' or '-', got "
                                              f"{name!r:.60}")
        if spec.get("strict") is not None and not isinstance(spec.get("strict"), bool):
            raise BadRequest(f"{where}.strict", f"'strict' must be true or false, got {spec.get('strict')!r:.60}")
        schema = spec.get("schema", {})
        if not isinstance(schema, (dict, bool)):
            raise BadRequest(f"{where}.schema", f"'schema' must be a JSON Schema object, got {schema!r:.60}")
        key, path = "json_schema:" + json.dumps(schema), f"{where}.schema"
    else:
        raise BadRequest("response_format.type", "'type' must be 'text', 'json_object' or 'json_schema', got "
                                                 f"{kind!r:.60}")
    return _schema_constraint(model, key, schema, path, "response_format")


def _schema_constraint(model: CausalLM, key: str, schema: dict | bool, path: str, field: str):
    """What makes a request's constraint to JSON values of `schema` (its grammar built once per key);
    BadRequest names `field`, or the schema's bad keyword by its path under `path`."""
    if model.tokenizer is None:
        raise BadRequest(field, "structured output needs the model's tokenizer; this model has none")
    try:
        vocabulary = token_mask.Vocabulary.of(model.tokenizer, model.decoder.config.vocab_size)
    except ConfigError as exc:
        raise BadRequest(field, exc.reason) from None
    try:
        masks = token_mask.grammar_masks(vocabulary, key, lambda: JsonGrammar.from_schema(schema, path))
    except ConfigError as exc:                  # json_schema.SchemaError: the path of the bad keyword
        raise BadRequest(exc.path, exc.reason) from None
    return masks.constraint


def _sampling(body: dict) -> tuple[gen.Sampling, dict]:
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0, low_open=True)
    seed = body.get("seed")
    if seed is None:
        seed = secrets.randbits(63)
    elif isinstance(seed, bool) or not isinstance(seed, int):
        raise BadRequest("seed", f"'seed' must be an integer, got {seed!r}")
    seed = seed % (1 << 64)             # OpenAI's seeds may be negative: one 64-bit stream each
    extra = {"presence_penalty": _number(body, "presence_penalty", 0.0, -2.0, 2.0),
             "frequency_penalty": _number(body, "frequency_penalty", 0.0, -2.0, 2.0)}
    return gen.Sampling(temperature=temperature, top_p=top_p, seed=seed), extra


def _requests(prompt_ids: list[list[int]], n: int, max_tokens: int | None, context: int, body: dict,
              logprobs: int | None, max_key: str, prompt_key: str,
              constraint: Callable[[], gen.Constraint] | None) -> list[Request]:
    """context: the positions a sequence may use (the model's context, or less where the server's
    KV cache holds less); constraint: makes each request's own (None: unconstrained)."""
    sampling, extra = _sampling(body)
    stop = _stop(body)
    out = []
    for ids in prompt_ids:
        room = context - len(ids)
        if room < 1:
            raise BadRequest(prompt_key, f"the prompt has {len(ids)} tokens; a sequence here holds at most {context}")
        tokens = room if max_tokens is None else max_tokens
        if tokens > room:
            raise BadRequest(max_key, f"'{max_key}' is {tokens}, but the prompt's {len(ids)} tokens leave room for "
                                      f"{room} of the {context} positions a sequence holds here")
        for i in range(n):
            # choice i of a prompt samples with seed + i: n different answers, each reproducible
            s = gen.Sampling(sampling.temperature, 0, sampling.top_p, 0.0, 1.0, (sampling.seed + i) % (1 << 64))
            out.append(Request(ids, tokens, s, None, stop, extra["presence_penalty"], extra["frequency_penalty"],
                               logprobs, None if constraint is None else constraint()))
    return out


def chat_job(body: dict, model: CausalLM, context: int) -> Job:
    """A /v1/chat/completions body, checked and turned into engine requests."""
    _refuse_unsupported(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages", "'messages' must be a non-empty list of {role, content} objects")
    messages = [_message(m, i, messages[:i]) for i, m in enumerate(messages)]
    _request_labels(body, chat=True)
    plan, tools = _tool_plan(body, model)
    try:
        ids = model.chat_ids(tool_calls.for_template(messages), tools=tools)
    except ConfigError as exc:
        raise BadRequest("messages", f"the messages cannot be rendered with the model's chat template: {exc}") \
            from None
    forced = None
    if plan is not None and plan.mode != "auto":      # the reply is one call's JSON, after the format's prefix
        if body.get("response_format") is not None:
            raise BadRequest("response_format", "'response_format' cannot be combined with a required or named "
                                                "tool_choice")
        name = body["tool_choice"]["function"]["name"] if plan.mode == "named" else None
        try:
            prefix, schema, called = tool_calls.forced(tools, plan.fmt, name)
        except ConfigError as exc:
            raise BadRequest(exc.path, exc.reason) from None
        ids = ids + model.tokenizer.encode(prefix, add_special_tokens=False)
        plan = replace(plan, called=called, only=tool_calls.forced_only(tools, name))
        forced = _schema_constraint(model, "tool_call:" + json.dumps(schema, sort_keys=True), schema, "tools", "tools")
    n = _integer(body, "n", 1, 1, MAX_N)
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _integer(body, key, None, 1)
    logprobs = None
    if _flag(body, "logprobs", False):
        logprobs = _integer(body, "top_logprobs", 0, 0, 20)
    elif body.get("top_logprobs") is not None:
        raise BadRequest("top_logprobs", "'top_logprobs' needs 'logprobs': true")
    if plan is not None and logprobs is not None:
        raise BadRequest("logprobs", "'logprobs' is not supported together with 'tools' on this server")
    stream = _flag(body, "stream", False)
    constraint = forced or _response_format(body, model)
    if constraint is None and plan is not None and plan.mode == "auto" and model.tokenizer is not None:
        constraint = lazy_constraint.for_tools(tools, plan.fmt, plan.parallel, model.tokenizer,
                                               model.decoder.config.vocab_size)   # a call once its marker is written
    return Job(_requests([ids], n, max_tokens, context, body, logprobs, key, "messages", constraint), [ids], n,
               stream, _include_usage(body, stream), logprobs, plan)


def _tool_plan(body: dict, model: CausalLM) -> tuple[ToolPlan | None, list[dict] | None]:
    """(the job's tool plan, the tools its template renders): (None, None) without tools or with
    tool_choice "none" (the template then sees no tools, so the model cannot call one)."""
    parallel = _flag(body, "parallel_tool_calls", True)
    try:
        tools = None if body.get("tools") is None else tool_calls.check_tools(body["tools"])
        mode, _ = tool_calls.check_choice(body.get("tool_choice"), tools)
        if tools is None or mode == "none":
            return None, None
        fmt = tool_calls.format_for(None if model.tokenizer is None else model.tokenizer.chat_template)
    except ConfigError as exc:
        raise BadRequest(exc.path, exc.reason) from None
    return ToolPlan(fmt, [t["function"]["name"] for t in tools], mode, parallel), tools


def _message(m: Any, i: int, previous: list) -> dict:
    """Message i of a chat body checked as OpenAI checks it, its content parts joined, a developer
    message as the system message the chat templates know."""
    where = f"messages[{i}]"
    if not isinstance(m, dict):
        raise BadRequest(where, f"message {i} must be an object with 'role' and 'content'")
    role = m.get("role")
    if not isinstance(role, str):
        raise BadRequest(f"{where}.role", f"message {i}'s 'role' must be a string, got {role!r:.60}")
    if role not in ROLES:
        raise BadRequest(f"{where}.role", f"Invalid value: {role!r:.60}. Supported values are: "
                                          + ", ".join(repr(r) for r in ROLES))
    if role == "function":
        raise BadRequest(f"{where}.role", "the 'function' role (OpenAI's deprecated function calling) is not "
                                          "supported by this server")
    if m.get("name") is not None and not isinstance(m.get("name"), str):
        raise BadRequest(f"{where}.name", f"message {i}'s 'name' must be a string, got {m.get('name')!r:.60}")
    if m.get("tool_calls") is not None:
        if role != "assistant":
            raise BadRequest(f"{where}.tool_calls", "only assistant messages carry 'tool_calls'")
        _check_calls(m["tool_calls"], f"{where}.tool_calls")
        if m.get("content") is None:
            m = {**m, "content": ""}
    if role == "tool":
        # OpenAI's rule: a tool message answers a call of the assistant message before it (tool messages
        # between them aside)
        caller = next((p for p in reversed(previous) if p.get("role") != "tool"), None)
        ids = [c.get("id") for c in (caller or {}).get("tool_calls") or []]
        if not ids:
            raise BadRequest(where, "messages with role 'tool' must be a response to a preceding message with "
                                    "'tool_calls'")
        if m.get("tool_call_id") not in ids:
            raise BadRequest(f"{where}.tool_call_id", f"'tool_call_id' must name one of the preceding calls {ids}, "
                                                      f"got {m.get('tool_call_id')!r:.60}")
    content = m.get("content")
    if isinstance(content, list):           # OpenAI's content parts: text parts only
        if not content or not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                                  for p in content):
            raise BadRequest(f"{where}.content", "only a non-empty list of text content parts is supported")
        content = "".join(p["text"] for p in content)
    elif not isinstance(content, str):
        raise BadRequest(f"{where}.content", f"message {i}'s 'content' must be a string or a list of text parts, "
                                             f"got {type(content).__name__}")
    return {**m, "role": "system" if role == "developer" else role, "content": content}


def _check_calls(calls: Any, where: str) -> None:
    """An assistant message's tool_calls as OpenAI takes them: [{"id", "type": "function", "function":
    {"name", "arguments": text (JSON of an object reaches templates as the object)}}]."""
    if not isinstance(calls, list) or not calls:
        raise BadRequest(where, "'tool_calls' must be a non-empty list")
    for k, c in enumerate(calls):
        fn = c.get("function") if isinstance(c, dict) else None
        if not isinstance(fn, dict) or c.get("type") != "function" or not isinstance(c.get("id"), str):
            raise BadRequest(f"{where}[{k}]", "a tool call is {\"id\", \"type\": \"function\", \"function\": {...}}")
        if not isinstance(fn.get("name"), str):
            raise BadRequest(f"{where}[{k}].function.name", "'name' must be a string")
        if not isinstance(fn.get("arguments"), str):
            raise BadRequest(f"{where}[{k}].function.arguments", "'arguments' must be a string")


def _request_labels(body: dict, chat: bool) -> None:
    """OpenAI's labels of a request, checked as it checks them and otherwise unused: `user` (a string)
    and, in chat, `metadata` (up to 16 string pairs, keys up to 64 characters, values up to 512) and
    `store` (a boolean; nothing is stored here)."""
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise BadRequest("user", f"'user' must be a string, got {user!r:.60}")
    if not chat:
        return
    _flag(body, "store", False)
    metadata = body.get("metadata")
    if metadata is None:
        return
    if not isinstance(metadata, dict) or len(metadata) > 16:
        raise BadRequest("metadata", "'metadata' must be an object of at most 16 string keys and values")
    for key, value in metadata.items():
        if len(key) > 64 or not isinstance(value, str) or len(value) > 512:
            raise BadRequest(f"metadata.{key:.64}", "metadata keys hold up to 64 characters and values are strings "
                                                    "of up to 512")


def completion_job(body: dict, model: CausalLM, context: int) -> Job:
    """A /v1/completions body: prompt a string, a list of strings, token ids or lists of them."""
    _refuse_unsupported(body)
    _request_labels(body, chat=False)
    best_of = body.get("best_of")
    unsupported = {"echo": body.get("echo") not in (None, False), "suffix": body.get("suffix") not in (None, ""),
                   "best_of": best_of is not None and (isinstance(best_of, bool) or best_of != 1)}
    for key, bad in unsupported.items():
        if bad:
            raise BadRequest(key, f"'{key}' is not supported by this server (got {body.get(key)!r})")
    prompt = body.get("prompt")
    prompts = _prompts(prompt)
    ids = []
    for i, p in enumerate(prompts):
        try:
            ids.append(model.encode_prompt(p))
        except ConfigError as exc:
            raise BadRequest("prompt", str(exc)) from None
        if not ids[-1]:
            raise BadRequest("prompt", f"prompt {i} has no tokens")
        vocab = model.decoder.config.vocab_size
        if any(not 0 <= t < vocab for t in ids[-1]):
            raise BadRequest("prompt", f"prompt {i} holds a token id outside the vocabulary [0, {vocab})")
    n = _integer(body, "n", 1, 1, MAX_N)
    logprobs = _integer(body, "logprobs", None, 0, 5)
    stream = _flag(body, "stream", False)
    max_tokens = _integer(body, "max_tokens", 16, 1)
    constraint = _response_format(body, model)
    return Job(_requests(ids, n, max_tokens, context, body, logprobs, "max_tokens", "prompt", constraint), ids, n,
               stream, _include_usage(body, stream), logprobs)


def _prompts(prompt: Any) -> list:
    def ids(p):
        return isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p)
    if isinstance(prompt, str) and prompt:
        return [prompt]
    if ids(prompt):
        return [prompt]
    if isinstance(prompt, list) and prompt and all((isinstance(p, str) and p) or ids(p) for p in prompt):
        return list(prompt)
    raise BadRequest("prompt", "'prompt' must be a non-empty string, a list of token ids, or a list of those")


def _include_usage(body: dict, stream: bool) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict):
        raise BadRequest("stream_options", "'stream_options' must be an object")
    if not stream:
        raise BadRequest("stream_options", "'stream_options' is only allowed with 'stream': true")
    return _flag(options, "include_usage", False)
