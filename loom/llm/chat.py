"""Chat templates: a conversation -> the prompt text the model was fine-tuned on.

Models ship their prompt format as a Jinja template (tokenizer_config.json "chat_template",
chat_template.jinja, or the GGUF key tokenizer.chat_template). Templates come from model hubs, so they
are untrusted code: they run in jinja2's immutable sandbox, set up the way HuggingFace transformers
renders them so the output is the same string:

* trim_blocks and lstrip_blocks (a block tag eats its newline and leading indentation),
* the loop-controls extension ({% break %}, {% continue %}) and a {% generation %} block that just
  renders its body (transformers uses it to find assistant text),
* `raise_exception(msg)`, `strftime_now(fmt)`, a `tojson` that keeps non-ASCII and HTML characters as they
  are (jinja's own escapes them), and `dict` / `namespace` that refuse underscore names,
* variables: messages, add_generation_prompt, tools=None, documents=None, the special tokens, and extras.

Any template failure (syntax, raise_exception, a sandbox violation, a type error inside the template)
becomes ConfigError("chat_template", ...) naming the problem and the template line where known.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from functools import lru_cache
from numbers import Integral, Real
from typing import Any

import numpy as np

from loom.errors import BackendError, ConfigError


def render(template: str, messages: Sequence[dict], *, add_generation_prompt: bool = True, bos_token: str = "",
           eos_token: str = "", **extra: Any) -> str:
    """Render `template` for `messages` (a list of {"role": ..., "content": ...} dicts)."""
    if not isinstance(template, str):
        raise ConfigError("chat_template", f"expected a template string, got {type(template).__name__}")
    if not isinstance(messages, (list, tuple)):
        raise ConfigError("messages", f"expected a list of message dicts, got {type(messages).__name__}")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ConfigError(f"messages[{i}]", f"expected a dict with 'role' and 'content', "
                              f"got {type(message).__name__}")
    compiled = _compile(template)
    variables = {"tools": None, "documents": None, **extra, "bos_token": bos_token, "eos_token": eos_token,
                 "add_generation_prompt": bool(add_generation_prompt)}
    variables = {name: _plain(value, name) for name, value in variables.items()}
    variables["messages"] = _plain(list(messages), "messages")
    import jinja2
    try:
        return compiled.render(**variables)
    except jinja2.TemplateError as exc:      # raise_exception, undefined calls, sandbox violations
        raise ConfigError("chat_template", f"{_where(exc)}{type(exc).__name__}: {exc}") from exc
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, ZeroDivisionError) as exc:
        raise ConfigError("chat_template", f"{_where(exc)}the template failed with "
                          f"{type(exc).__name__}: {exc}") from exc


@lru_cache(maxsize=32)
def _compile(template: str):
    try:
        import jinja2
        import jinja2.ext
        import jinja2.nodes
        import jinja2.utils
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError as exc:
        raise BackendError("chat templates need the `jinja2` package: pip install 'loom[llm]'") from exc

    class Generation(jinja2.ext.Extension):
        """{% generation %}...{% endgeneration %}: transformers marks assistant text with it."""
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    class Namespace(jinja2.utils.Namespace):
        """namespace(...) that refuses underscore attributes, which could reach Python internals."""

        def __init__(*args, **kwargs):      # jinja's signature trick, so namespace(self=...) works
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                Namespace._check(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            Namespace._check(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check(name):
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(f"namespace attribute {name!r} starts with an underscore")

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals.update(raise_exception=raise_exception, namespace=Namespace,
                       strftime_now=lambda fmt: datetime.now().strftime(fmt),
                       dict=lambda *args, **kwargs: dict(*args, **kwargs))
    try:
        return env.from_string(template)
    except jinja2.TemplateSyntaxError as exc:
        raise ConfigError("chat_template", f"line {exc.lineno}: syntax error: {exc.message}") from exc


def _plain(value, where):
    """A copy made of JSON types only, so a template cannot reach methods of the caller's objects."""
    if value is None or type(value) in (str, bool, int, float):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, Integral):
        return int(value)
    if isinstance(value, Real):
        return float(value)
    if isinstance(value, dict):
        return {_plain(k, where): _plain(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise ConfigError(where, f"chat template inputs must be JSON-like (str, number, bool, None, list, "
                      f"dict), got {type(value).__name__}")


def _where(exc) -> str:
    line = getattr(exc, "lineno", None)
    if line is None:      # runtime errors carry the template line in the traceback
        tb = exc.__traceback__
        while tb is not None:
            if tb.tb_frame.f_code.co_filename == "<template>":
                line = tb.tb_lineno
            tb = tb.tb_next
    return f"line {line}: " if line else ""
