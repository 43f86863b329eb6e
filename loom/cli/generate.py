"""`loom generate --model PATH --prompt TEXT`: stream a model's continuation of a prompt to stdout.

PATH is a .gguf file or a HuggingFace model directory. --chat wraps the prompt as one user message
in the model's chat template (with --system as the system message). Sampling flags map one to one
onto CausalLM.generate (temperature 0, the default, is greedy). Each text piece is written and
flushed as soon as it is decoded.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from ..llm import CausalLM

HELP = "generate text with a language model (GGUF file or HuggingFace directory), streamed to stdout"


def add_sampling_arguments(p: argparse.ArgumentParser) -> None:
    """The sampling flags `loom generate` and `loom chat` share."""
    p.add_argument("--max-tokens", type=int, default=256, help="most tokens to generate (default 256)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); higher = more random")
    p.add_argument("--top-k", type=int, default=0, help="sample from the k most likely tokens (0 = off)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass in (0, 1] (1 = off)")
    p.add_argument("--min-p", type=float, default=0.0, help="drop tokens below min_p x the top probability (0 = off)")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="HF repetition penalty (1 = off)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (the same seed gives the same text)")
    p.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="end the text before this string (repeatable; the end-of-sequence token always stops)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda (needs loom[cuda] and an NVIDIA GPU)")


def sampling_options(args: argparse.Namespace) -> dict:
    return dict(max_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                min_p=args.min_p, repetition_penalty=args.repetition_penalty, seed=args.seed, stop=tuple(args.stop))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="a .gguf file or a HuggingFace model directory")
    p.add_argument("--prompt", required=True, help="the text to continue (or, with --chat, the user's message)")
    p.add_argument("--chat", action="store_true", help="apply the model's chat template to the prompt")
    p.add_argument("--system", help="with --chat: a system message before the prompt")
    p.add_argument("--truncate", action="store_true",
                   help="drop the oldest prompt tokens when prompt + max tokens exceed the context")
    add_sampling_arguments(p)


def load_causal(path: str, device: str) -> CausalLM:
    """The CausalLM at `path` (an encoder there is a usage mistake, said plainly)."""
    from ..errors import ConfigError
    from ..llm import CausalLM, load
    model = load(path, device=device)
    if not isinstance(model, CausalLM):
        raise ConfigError("--model", f"{path} is an encoder ({type(model).__name__}), not a text generator; "
                                     "use `loom embed`")
    return model


def write_stream(pieces: Iterable[str], out: TextIO | None = None) -> str:
    """Write each piece as it arrives (flushed); returns the whole text."""
    out = out or sys.stdout
    text = []
    for piece in pieces:
        out.write(piece)
        out.flush()
        text.append(piece)
    return "".join(text)


def run(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    if args.system is not None and not args.chat:
        raise ConfigError("--system", "only applies with --chat")
    model = load_causal(args.model, args.device)
    options = sampling_options(args)
    if args.chat:
        messages = ([{"role": "system", "content": args.system}] if args.system is not None else []) + \
            [{"role": "user", "content": args.prompt}]
        prompt = model.chat_ids(messages)
    else:
        prompt = args.prompt
    write_stream(model.generate(prompt, truncate=args.truncate, **options))
    sys.stdout.write("\n")
    sys.stdout.flush()
    return 0
