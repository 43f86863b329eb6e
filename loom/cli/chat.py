"""`loom chat --model PATH`: an interactive conversation with a chat model.

Reads one user message per line from stdin until end of input, `/exit` or Ctrl-C at the prompt (all
exit 0). The whole history is rendered with the model's chat template for every reply, and the reply
is streamed to stdout as it is generated, then kept in the history. Replies stop at --max-tokens
(default 128, so a reply takes seconds, not minutes, on a laptop CPU). Lines that start with `/` are
commands, handled here and never sent to the model (COMMANDS lists them); `//TEXT` sends `/TEXT`.

Ctrl-C during a reply stops it and returns to the prompt: the text shown so far stays in the history
as the assistant's reply, as in llama.cpp (when nothing was shown yet, the user's message is dropped
too, as if never sent). Everything but the replies goes to stderr: the one-line banner and the `you> `
prompt (only when stdin is a terminal), command output, notices, and after each reply a speed line
(`loom: prefill 42 tokens 0.51 s 82.4 tok/s | decode 63 tokens 2.10 s 30.0 tok/s`; --no-stats drops
it; see loom/cli/generate.py's Stats). So stdout holds a clean transcript of the replies.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, TextIO

from ..llm import tool_calls
from .generate import Stats, add_sampling_arguments, check_sampling, load_causal, sampling_options, stream

if TYPE_CHECKING:
    from ..llm.model import CausalLM

HELP = "chat with a language model interactively (chat template, history, streamed replies)"
MAX_TOKENS = 128         # `loom chat`'s default --max-tokens: most tokens per reply
COMMANDS = """\
commands (never sent to the model):
  /help          this list
  /system TEXT   set the system message (/reset keeps it); /system alone shows it
  /reset         forget the conversation, keep the system message
  /tools FILE    offer the model the tools of FILE (OpenAI's "tools" list, JSON); /tools alone lists
                 them, /tools off drops them. Its calls are shown here; answer each with
  /result ID TEXT  (the model replies once every call of its message is answered)
  /exit, /quit   end the chat (so do end of input, Ctrl-D, and Ctrl-C at the prompt)
  //TEXT         send TEXT with its leading '/'
Ctrl-C during a reply stops it; the text shown so far stays in the conversation.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="a .gguf file or a HuggingFace model directory")
    p.add_argument("--system", help="a system message that starts the conversation (default none)")
    add_sampling_arguments(p, max_tokens=MAX_TOKENS)


def run(args: argparse.Namespace, stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    from .. import mode
    from ..errors import ConfigError
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    options = sampling_options(args)
    # settings are checked before the model loads and the conversation starts, not at the first reply
    check_sampling(args, least_tokens=1)     # a reply needs at least 1 token
    model = load_causal(args.model, args.device)
    system = args.system
    history = _start(system)
    tool_session = ToolSession(model)
    interactive = stdin.isatty()
    if interactive:
        _note(f"loom chat: {os.path.basename(os.path.normpath(args.model))} on {model.device}, {mode.name()} "
              f"mode, replies up to {args.max_tokens} tokens; type /help for commands")
    while True:
        try:
            if interactive:
                sys.stderr.write("you> ")
                sys.stderr.flush()
            line = stdin.readline()
        except KeyboardInterrupt:             # Ctrl-C at the prompt ends the chat like end of input
            _note("")
            break
        if not line:
            break
        message = line.rstrip("\r\n")
        text = message.strip()
        if not text:
            continue
        if text.startswith("/") and not text.startswith("//"):
            if text.split()[0] in ("/tools", "/result"):
                if not tool_session.command(text, history):
                    continue
                user = False                    # every call answered: the model replies
            else:
                state = _command(text, system, history)
                if state is None:
                    break
                system, history = state
                continue
        else:
            user = True
        if user:
            if text.startswith("//"):
                message = message.lstrip()[1:]
            history.append({"role": "user", "content": message})
        stats = Stats()
        try:
            ids = model.chat_ids(history) if tool_session.tools is None else tool_session.ids(history)
            pieces = stream(model, ids, stats, **options)
        except ConfigError as exc:
            if exc.path != "prompt":
                raise
            if user:
                history.pop()  # this message does not fit: keep the conversation usable
            reason = exc.reason.split("; shorten")[0]       # the library's advice names its arguments
            _note(f"loom: this message does not fit: {reason}; type /reset to start a new conversation, "
                  "or lower --max-tokens")
            continue
        except KeyboardInterrupt:
            pieces = None      # Ctrl-C while the prompt was being rendered
        reply, stopped = _reply(pieces, stdout)
        if reply or not stopped:
            history.append(tool_session.message(reply))
        elif user:
            history.pop()      # stopped before any text: as if the message was never sent
        if stopped:
            _note("loom: reply stopped (Ctrl-C)")
        if not args.no_stats:
            _note("loom: " + stats.line() + (f" | cut at --max-tokens {args.max_tokens}" if stats.cut else ""))
    return 0


def _command(text: str, system: str | None, history: list[dict]) -> tuple[str | None, list[dict]] | None:
    """Run a /command: the system message and history after it, or None to end the chat."""
    command, _, rest = text.replace("\t", " ").partition(" ")
    rest = rest.strip()
    if command in ("/exit", "/quit"):
        return None
    if command == "/reset":
        history = _start(system)
    elif command == "/system" and rest:
        system = rest
        history = _start(system) + [m for m in history if m["role"] != "system"]
    elif command == "/system":
        _note("loom: no system message" if system is None else f"loom: system message: {system}")
    elif command == "/help":
        sys.stderr.write(COMMANDS)
    else:
        _note(f"loom: unknown command {command}; type /help for commands (//TEXT sends /TEXT to the model)")
    return system, history


class ToolSession:
    """The chat's tools (/tools FILE): rendered into each prompt, the model's calls parsed from its replies
    and shown, their results taken from /result ID TEXT."""

    def __init__(self, model: CausalLM):
        self.model, self.tools, self.fmt = model, None, None

    def ids(self, history: list[dict]) -> list[int]:
        return self.model.chat_ids(tool_calls.for_template(history), tools=self.tools)

    def message(self, reply: str) -> dict:
        """The history's entry for a reply: with tools, the calls it makes, each shown on stderr."""
        if self.tools is None:
            return {"role": "assistant", "content": reply}
        content, calls = tool_calls.parse(reply, self.fmt, [t["function"]["name"] for t in self.tools])
        for c in calls:
            _note(f"loom: tool call {c['id']}: {c['function']['name']} {c['function']['arguments']} "
                  f"(answer with /result {c['id']} TEXT)")
        message = {"role": "assistant", "content": content or ""}
        if calls:
            message["tool_calls"] = calls
        return message

    def command(self, text: str, history: list[dict]) -> bool:
        """/tools or /result; True when the model should reply now (every call of its message answered)."""
        command, _, rest = text.replace("\t", " ").partition(" ")
        rest = rest.strip()
        if command == "/tools":
            if not rest:
                names = [t["function"]["name"] for t in self.tools or []]
                _note("loom: tools: " + (", ".join(names) if names else "none"))
            elif rest == "off":
                self.tools = self.fmt = None
            else:
                self._load(rest)
            return False
        call_id, _, result = rest.partition(" ")
        asked = next((m for m in reversed(history) if m["role"] == "assistant"), None)
        ids = [c["id"] for c in (asked or {}).get("tool_calls", [])]
        answered = {m.get("tool_call_id") for m in history[history.index(asked) + 1:]} if asked else set()
        if call_id not in ids or call_id in answered:
            _note(f"loom: no open tool call {call_id or '(none given)'}; open: "
                  f"{', '.join(i for i in ids if i not in answered) or 'none'}")
            return False
        history.append({"role": "tool", "tool_call_id": call_id, "content": result})
        return set(ids) <= answered | {call_id}

    def _load(self, path: str) -> None:
        from ..errors import ConfigError
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            tools = tool_calls.check_tools(data.get("tools") if isinstance(data, dict) else data)
            fmt = tool_calls.format_for(self.model.tokenizer.chat_template if self.model.tokenizer else None)
        except (OSError, ValueError, ConfigError) as exc:
            _note(f"loom: /tools {path}: {exc}")
            return
        self.tools, self.fmt = tools, fmt
        _note(f"loom: tools: {', '.join(t['function']['name'] for t in tools)}")


def _start(system: str | None) -> list[dict]:
    return [{"role": "system", "content": system}] if system is not None else []


def _reply(pieces: Iterable[str] | None, stdout: TextIO) -> tuple[str, bool]:
    """Stream the reply to stdout: (the text shown, whether Ctrl-C stopped it). None: it stopped already."""
    shown, stopped = [], pieces is None
    try:
        for piece in pieces or ():
            stdout.write(piece)
            stdout.flush()
            shown.append(piece)
    except KeyboardInterrupt:
        stopped = True
    stdout.write("\n")
    stdout.flush()
    return "".join(shown), stopped


def _note(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()
