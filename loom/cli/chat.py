"""`loom chat --model PATH`: an interactive conversation with a chat model.

Reads one user message per line from stdin until end of input or `/exit` (`/reset` forgets the
conversation). The whole history is rendered with the model's chat template for every reply, and the
reply is streamed to stdout as it is generated, then kept in the history. The `you> ` prompt goes
to stderr, and only when stdin is a terminal, so piped transcripts stay clean.
"""
from __future__ import annotations

import argparse
import sys
from typing import TextIO

from .generate import add_sampling_arguments, load_causal, sampling_options, write_stream

HELP = "chat with a language model interactively (chat template, history, streamed replies)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="a .gguf file or a HuggingFace model directory")
    p.add_argument("--system", help="a system message that starts the conversation")
    add_sampling_arguments(p)


def run(args: argparse.Namespace, stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    from ..errors import ConfigError
    from ..llm.generate import Sampling, check_stop
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    options = sampling_options(args)
    # settings are checked before the model loads and the conversation starts, not at the first reply
    Sampling(args.temperature, args.top_k, args.top_p, args.min_p, args.repetition_penalty, args.seed)
    check_stop(options["stop"])
    if args.max_tokens < 1:
        raise ConfigError("--max-tokens", f"a reply needs at least 1 token, got {args.max_tokens}")
    model = load_causal(args.model, args.device)
    start = [{"role": "system", "content": args.system}] if args.system is not None else []
    history = list(start)
    interactive = stdin.isatty()
    while True:
        if interactive:
            sys.stderr.write("you> ")
            sys.stderr.flush()
        line = stdin.readline()
        if not line:
            break
        message = line.rstrip("\r\n")
        if message.strip() == "/exit":
            break
        if message.strip() == "/reset":
            history = list(start)
            continue
        if not message.strip():
            continue
        history.append({"role": "user", "content": message})
        try:
            prompt = model.chat_ids(history)
            pieces = model.generate(prompt, **options)
        except ConfigError as exc:
            if exc.path != "prompt":
                raise
            history.pop()      # this message does not fit: keep the conversation usable
            sys.stderr.write(f"loom: {exc} (type /reset to start a new conversation)\n")
            continue
        reply = write_stream(pieces, stdout)
        stdout.write("\n")
        stdout.flush()
        history.append({"role": "assistant", "content": reply})
    return 0
