"""One stream through the public API: CausalLM.generate_ids, greedy, on SmolLM2-135M's shapes with random
weights (benchmarks/llm.py's), prompts of 32, 300 and 2048 tokens: the time to the first token (the
prompt's processing; ms, best and median of --runs) and the decode rate after it (the remaining
--tokens - 1 tokens over the time from the first token to the last; tok/s, best and median).

    PYTHONPATH=. python benchmarks/generate_ids.py --device cuda --weights BF16 [--deterministic] [--tokens N]
                                                   [--runs N] [--lengths 32,300,2048]

Every timed run gets a fresh random prompt (CausalLM.generate_ids runs on the model's own batch engine,
whose prefix cache would otherwise serve a repeated prompt's blocks), after two warm-up runs of each
length (kernels compiled, steps recorded: fast mode on the GPU records a prompt chunk's step at the
second sighting of its length and position). The last row repeats one prompt of the longest length,
after three warm-up runs of it: on the engine all but its last block then come from the prefix cache
("engine: a prefix-cache hit"), and the step of the rest replays its recording.

It uses only what both sides of the single-sequence path's removal have (loom.deterministic, Decoder,
DecoderConfig, CausalLM, generate_ids; random weights from benchmarks/llm.py), so one sitting can time
the tree before it (the lone path: no prefix cache, so its repeated-prompt row computes the whole
prompt) and after it:

    git worktree add /tmp/loom-before 90ee8c3~1          # the last commit with loom/llm/sequence.py
    PYTHONPATH=/tmp/loom-before python benchmarks/generate_ids.py --device cuda      # the lone path
    PYTHONPATH=. python benchmarks/generate_ids.py --device cuda                     # the engine
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

import loom
from loom.llm.decoder import Decoder
from loom.llm.decoder_config import DecoderConfig
from loom.llm.model import CausalLM

sys.path.insert(0, os.path.dirname(__file__))
import llm  # noqa: E402  (the benchmark's model shapes and random weights)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--weights", default="BF16", help="the stored type of the random weights (BF16, Q4_1, ...)")
    p.add_argument("--tokens", type=int, default=64, help="tokens generated a run (the first included)")
    p.add_argument("--runs", type=int, default=5, help="timed runs a row (best and median)")
    p.add_argument("--lengths", default="32,300,2048", help="comma-separated prompt lengths")
    p.add_argument("--deterministic", action="store_true", help="deterministic mode (default: fast)")
    args = p.parse_args()
    if args.tokens < 2 or args.runs < 1:
        p.error("--tokens must be at least 2 and --runs at least 1")
    lengths = [int(n) for n in args.lengths.split(",")]
    mode = "deterministic" if args.deterministic else "fast"
    with loom.deterministic(args.deterministic):
        dec = Decoder(DecoderConfig.from_hf(llm.CONFIG), llm.random_weights(args.weights, device=args.device),
                      args.device)
        model = CausalLM(dec, None, dict(llm.CONFIG), eos_ids=())
        rng = np.random.default_rng(0)
        vocab = dec.config.vocab_size
        print(f"# SmolLM2-135M shapes, {args.weights} random weights, {args.device}, {mode} mode, "
              f"loom from {os.path.dirname(os.path.dirname(os.path.abspath(loom.__file__)))}; "
              f"{args.tokens} tokens a run, best / median of {args.runs}")
        print(f"{'prompt':50s} {'first token ms':>20s} {'decode tok/s':>20s}")
        print(f"{'':50s} {'best':>9s} {'median':>10s} {'best':>9s} {'median':>10s}")
        for length in lengths:
            for _ in range(2):                  # warm-up: kernels, recorded steps
                run(model, rng.integers(0, vocab, length).tolist(), args.tokens)
            row(f"{length} tokens, fresh each run",
                [run(model, rng.integers(0, vocab, length).tolist(), args.tokens) for _ in range(args.runs)])
        length = max(lengths)
        prompt = rng.integers(0, vocab, length).tolist()
        for _ in range(3):                      # its blocks into the engine's prefix cache, then the step of
            run(model, prompt, args.tokens)     # its uncached tail: seen, then recorded
        row(f"{length} tokens, repeated (engine: a prefix-cache hit)",
            [run(model, prompt, args.tokens) for _ in range(args.runs)])


def run(model: CausalLM, prompt: list[int], n: int) -> tuple[float, float]:
    """(seconds to the first token, decode tokens/s after it) of one greedy stream of n tokens."""
    t = time.perf_counter()
    tokens = model.generate_ids(prompt, max_tokens=n, stop_ids=())
    next(tokens)
    first = time.perf_counter()
    rest = sum(1 for _ in tokens)
    end = time.perf_counter()
    if rest != n - 1:
        raise SystemExit(f"expected {n} tokens, got {rest + 1}")
    return first - t, rest / (end - first)


def row(label: str, results: list[tuple[float, float]]) -> None:
    firsts = [f * 1e3 for f, _ in results]
    rates = [r for _, r in results]
    print(f"{label:50s} {min(firsts):9.1f} {statistics.median(firsts):10.1f} {max(rates):9,.0f} "
          f"{statistics.median(rates):10,.0f}", flush=True)


if __name__ == "__main__":
    main()
