"""A lone sequence two ways: CausalLM.generate_ids (loom/llm/sequence.py) against a BatchEngine of one
(loom/llm/batching.py), with and without prefix caching, on SmolLM2-135M shapes with random weights
(benchmarks/llm.py): the first 4 tokens (prompt included), N tokens, and the decode steps between
(N - 4 tokens over the difference), best of 3 after two warm-ups, prompts of 32 and 300 tokens; then
whether every path gave the same tokens (issue 59: the lone path goes once the engine matches it).

    PYTHONPATH=. python benchmarks/lone_vs_engine.py --device cuda --weights BF16 [--deterministic] [--tokens N]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

import loom
from loom.llm.batching import BatchEngine, Request
from loom.llm.decoder import Decoder
from loom.llm.decoder_config import DecoderConfig
from loom.llm.model import CausalLM

sys.path.insert(0, os.path.dirname(__file__))
import llm  # noqa: E402  (the benchmark's model shapes and random weights)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--weights", default="BF16", help="the stored type of the random weights (BF16, Q4_1, ...)")
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--deterministic", action="store_true")
    args = p.parse_args()
    mode = "deterministic" if args.deterministic else "fast"
    with loom.deterministic(args.deterministic):
        dec = Decoder(DecoderConfig.from_hf(llm.CONFIG), llm.random_weights(args.weights, device=args.device),
                      args.device)
        model = CausalLM(dec, None, dict(llm.CONFIG), eos_ids=())
        engines = {"engine, prefix cache": BatchEngine(model, max_batch=1, cache_tokens=4096),
                   "engine, no prefix cache": BatchEngine(model, max_batch=1, cache_tokens=4096, prefix_cache=False)}
        paths = {"generate_ids": lambda prompt, n: list(model.generate_ids(prompt, max_tokens=n, stop_ids=()))}
        for name, engine in engines.items():
            paths[name] = lambda prompt, n, e=engine: e.generate([Request(prompt, max_tokens=n, stop_ids=())])[0].tokens
        print(f"# SmolLM2-135M shapes, {args.weights} random weights, {args.device}, {mode} mode")
        rng = np.random.default_rng(0)
        for length in (32, 300):
            prompt = rng.integers(0, 49152, length).tolist()
            tokens = {name: timed(run, prompt, args.tokens, dec.backend.synchronize, f"prompt {length}: {name}")
                      for name, run in paths.items()}
            print(f"  the same tokens on every path: {len({tuple(t) for t in tokens.values()}) == 1}")


def timed(run, prompt: list[int], n: int, sync, label: str) -> list[int]:
    """Print the best of 3 times of the first 4 tokens and of n tokens; return the n tokens."""
    run(prompt, 4)
    run(prompt, 4)                  # warm-up: kernels, recorded steps (prompt chunks from their second sighting)
    short = long = float("inf")
    for _ in range(3):
        sync()
        t = time.perf_counter()
        run(prompt, 4)
        sync()
        short = min(short, time.perf_counter() - t)
        t = time.perf_counter()
        tokens = run(prompt, n)
        sync()
        long = min(long, time.perf_counter() - t)
    print(f"{label}: first 4 tokens {short * 1e3:.1f} ms, {n} tokens {long * 1e3:.1f} ms, "
          f"decode steps {(n - 4) / (long - short):,.0f} tok/s", flush=True)
    return tokens


if __name__ == "__main__":
    main()
