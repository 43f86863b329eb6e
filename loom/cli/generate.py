"""`loom generate --model PATH --prompt TEXT`: stream a model's continuation of a prompt to stdout.

PATH is a .gguf file or a HuggingFace model directory. --chat wraps the prompt as one user message
in the model's chat template (with --system as the system message). Sampling flags map one to one
onto CausalLM.generate (temperature 0, the default, is greedy). Each text piece is written and
flushed as soon as it is decoded.

At the end, speed statistics go to stderr (as llama.cpp's llama_perf_context_print does; --no-stats
turns them off), so stdout holds the generated text only:

    loom: load         0.84 s
    loom: prefill     0.120 s /     7 tokens (17.14 ms per token, 58.33 tokens per second)
    loom: decode      2.100 s /    63 tokens (33.33 ms per token, 30.00 tokens per second)
    loom: total       2.220 s /    71 tokens

Prefill is the time to the first token (the prompt's forward pass and the first token's sampling);
decode counts one step per token sampled after it (an end-of-sequence token that ended the text
counts: it took a step). Total tokens are the prompt's plus the generated ones. Ctrl-C stops the
generation, prints the statistics so far and exits 130.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from ..llm import CausalLM

HELP = "generate text with a language model (GGUF file or HuggingFace directory), streamed to stdout"
MAX_TOKENS = 256        # `loom generate`'s default --max-tokens (CausalLM.generate's default too)


def add_sampling_arguments(p: argparse.ArgumentParser, max_tokens: int = MAX_TOKENS) -> None:
    """The sampling flags `loom generate` and `loom chat` share (`max_tokens`: the --max-tokens default)."""
    p.add_argument("--max-tokens", type=int, default=max_tokens, help=f"most tokens to generate (default {max_tokens})")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default 0); higher = more random")
    p.add_argument("--top-k", type=int, default=0, help="sample from the k most likely tokens (default 0 = off)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass in (0, 1] (default 1 = off)")
    p.add_argument("--min-p", type=float, default=0.0,
                   help="drop tokens below min_p x the top probability (default 0 = off)")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="HF repetition penalty (default 1 = off)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0; the same seed gives the same text)")
    p.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="end the text before this string (repeatable; default none; the end-of-sequence token "
                        "always stops)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda (needs loom[cuda] and an NVIDIA GPU)")
    p.add_argument("--no-stats", action="store_true",
                   help="do not print speed statistics (tokens, seconds, tokens/s) on stderr (default: print them)")


# a sampling setting -> the flag that sets it (errors from loom.llm name the setting)
FLAGS = {"max_tokens": "--max-tokens", "temperature": "--temperature", "top_k": "--top-k", "top_p": "--top-p",
         "min_p": "--min-p", "repetition_penalty": "--repetition-penalty", "seed": "--seed", "stop": "--stop"}


def check_sampling(args: argparse.Namespace, least_tokens: int = 0) -> None:
    """Check the sampling flags before the model loads; a bad one is a ConfigError naming its flag."""
    from ..errors import ConfigError, renamed_paths
    from ..llm.generate import Sampling, check_stop
    with renamed_paths(FLAGS):
        Sampling(args.temperature, args.top_k, args.top_p, args.min_p, args.repetition_penalty, args.seed)
        check_stop(tuple(args.stop))
    if args.max_tokens < least_tokens:
        raise ConfigError("--max-tokens", f"expected an integer >= {least_tokens}, got {args.max_tokens}")


def sampling_options(args: argparse.Namespace) -> dict:
    return dict(max_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                min_p=args.min_p, repetition_penalty=args.repetition_penalty, seed=args.seed, stop=tuple(args.stop))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="a .gguf file or a HuggingFace model directory")
    p.add_argument("--prompt", required=True, help="the text to continue (or, with --chat, the user's message)")
    p.add_argument("--chat", action="store_true", help="apply the model's chat template to the prompt")
    p.add_argument("--system", help="with --chat: a system message before the prompt (default none)")
    p.add_argument("--truncate", action="store_true",
                   help="drop the oldest prompt tokens when prompt + max tokens exceed the context "
                        "(default: refuse with an error)")
    add_sampling_arguments(p)


def load_causal(path: str, device: str) -> CausalLM:
    """The CausalLM at `path` (an encoder there is a usage mistake, said plainly)."""
    from ..errors import ConfigError
    from ..llm import CausalLM, load
    model = load(path, device=device)
    if not isinstance(model, CausalLM):
        raise ConfigError("--model", f"{path} is an encoder ({type(model).__name__}), not a text generator; "
                                     "use `loom embed`")
    _note_slow_cpu(device)
    return model


def _note_slow_cpu(device: str) -> None:
    """Deterministic decoding on the CPU without numba runs the exact products in NumPy: many times
    slower than with the compiled loops. Say so once, with the two ways out."""
    from .. import mode
    from ..backend.cpu import jit
    why = jit.unavailable_reason()
    if device == "cpu" and mode.is_deterministic() and why is not None:
        fix = "unset LOOM_JIT" if why == "LOOM_JIT=0" else "pip install 'loom[cpu]' for numba"
        sys.stderr.write(f"loom: note: deterministic decoding on the CPU runs without compiled loops ({why}) "
                         f"and is slow; {fix}, or pass --fast\n")


def write_stream(pieces: Iterable[str], out: TextIO | None = None) -> str:
    """Write each piece as it arrives (flushed); returns the whole text."""
    out = out or sys.stdout
    text = []
    for piece in pieces:
        out.write(piece)
        out.flush()
        text.append(piece)
    return "".join(text)


# --- speed statistics ----------------------------------------------------------------------------

@dataclass
class Stats:
    """How fast one generation ran, filled by `stream` while its tokens are drawn.

    Only time spent inside the token generator counts (not decoding text or writing it out). The first
    step is the prefill (the prompt's forward pass and the first sampling); every later step is one
    decode step that samples one token, counted in `decode_tokens` (a stop token that ended the text
    included). `generated` is the tokens emitted; `cut` says generation stopped at max_tokens."""
    max_tokens: int = 0
    prompt_tokens: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    sampled: int = 0
    generated: int = 0
    cut: bool = False

    @property
    def decode_tokens(self) -> int:
        return max(self.sampled - 1, 0)

    def timed(self, tokens: Iterator[int]) -> Iterator[int]:
        """The same tokens, each step timed (a step interrupted by Ctrl-C: its time counts, no token)."""
        while True:
            first = self.sampled == 0
            start = time.perf_counter()
            try:
                token = next(tokens)
            except StopIteration:
                self.cut = self.generated == self.max_tokens
                self.sampled += not self.cut        # not cut: that step sampled a stop token
                return
            finally:
                if first:
                    self.prefill_s += time.perf_counter() - start
                else:
                    self.decode_s += time.perf_counter() - start
            self.sampled += 1
            self.generated += 1
            yield token

    def line(self) -> str:
        """One line: `prefill 42 tokens 0.51 s 82.4 tok/s | decode 63 tokens 2.10 s 30.0 tok/s`."""
        return (f"prefill {self.prompt_tokens} tokens {self.prefill_s:.2f} s {_rate(self.prompt_tokens, self.prefill_s)}"
                f" | decode {self.decode_tokens} tokens {self.decode_s:.2f} s "
                f"{_rate(self.decode_tokens, self.decode_s)}")

    def block(self, load_s: float | None = None) -> str:
        """llama.cpp-style lines (each `loom: ...`, newline-terminated), with the load time when given."""
        rows = [] if load_s is None else [f"load    {load_s:9.2f} s"]
        rows.append(f"prefill {self.prefill_s:9.3f} s / {self.prompt_tokens:5d} tokens "
                    f"{_per_token(self.prompt_tokens, self.prefill_s)}")
        rows.append(f"decode  {self.decode_s:9.3f} s / {self.decode_tokens:5d} tokens "
                    f"{_per_token(self.decode_tokens, self.decode_s)}")
        rows.append(f"total   {self.prefill_s + self.decode_s:9.3f} s / "
                    f"{self.prompt_tokens + self.generated:5d} tokens")
        return "".join(f"loom: {row}\n" for row in rows)


def _rate(tokens: int, seconds: float) -> str:
    return f"{tokens / seconds:.1f} tok/s" if tokens and seconds > 0 else "- tok/s"


def _per_token(tokens: int, seconds: float) -> str:
    if not tokens or seconds <= 0:
        return "(-)"
    return f"({1000 * seconds / tokens:.2f} ms per token, {tokens / seconds:.2f} tokens per second)"


def stream(model: CausalLM, prompt: str | list[int], stats: Stats, *, truncate: bool = False,
           **options: Any) -> Iterator[str]:
    """`model.generate(prompt, truncate=truncate, **options)`: the same text pieces, with `stats` filled
    as they are drawn. Settings and the prompt are checked here, before the first piece."""
    from ..errors import ConfigError
    from ..llm import generate as gen
    if model.tokenizer is None:
        raise ConfigError("--model", "this model has no tokenizer (no tokenizer.json beside config.json); "
                                     "text generation needs one")
    stop = gen.check_stop(options.pop("stop", ()))
    stats.max_tokens = options.setdefault("max_tokens", MAX_TOKENS)
    ids = model.encode_prompt(prompt)
    tokens = model.generate_ids(ids, truncate=truncate, **options)      # checks every setting
    c = model.decoder.config
    fitted = gen.fit_prompt(ids, stats.max_tokens, c.max_positions, c.vocab_size, truncate)
    stats.prompt_tokens = len(fitted) if stats.max_tokens else 0        # max_tokens 0 runs no forward pass
    return gen.stream_text(stats.timed(tokens), model.tokenizer, stop)


def run(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    if args.system is not None and not args.chat:
        raise ConfigError("--system", "only applies with --chat")
    check_sampling(args)
    start = time.perf_counter()
    model = load_causal(args.model, args.device)
    load_s = time.perf_counter() - start
    options = sampling_options(args)
    if args.chat:
        messages = ([{"role": "system", "content": args.system}] if args.system is not None else []) + \
            [{"role": "user", "content": args.prompt}]
        prompt = model.chat_ids(messages)
    else:
        prompt = args.prompt
    stats = Stats()
    try:
        write_stream(stream(model, prompt, stats, truncate=args.truncate, **options))
    except KeyboardInterrupt:    # end the line and show the speed so far; main.py says "interrupted", exits 130
        _finish(stats, load_s, args.no_stats)
        raise
    except ConfigError as exc:   # the library's advice names its argument; here the flag is the answer
        if exc.path != "prompt":
            raise
        raise ConfigError("prompt", exc.reason.replace("max_tokens", "--max-tokens")
                          .replace("pass truncate=True", "pass --truncate")) from None
    _finish(stats, load_s, args.no_stats)
    return 0


def _finish(stats: Stats, load_s: float, quiet: bool) -> None:
    sys.stdout.write("\n")
    sys.stdout.flush()
    if not quiet:
        sys.stderr.write(stats.block(load_s))
        sys.stderr.flush()
