"""Batched generation (issue 34): aggregate decode tokens/s of loom.llm.batching.BatchEngine with 1,
16 and 64 concurrent streams, against one stream through CausalLM.generate_ids (the recorded decode
graph on the GPU), on SmolLM2-135M's shapes with random bf16 weights (benchmarks/llm.py's).

    PYTHONPATH=. python benchmarks/serve.py --device cuda [--streams 1,16,64] [--tokens 64] [--deterministic]

Each stream gets a distinct 32-token prompt and decodes --tokens greedy tokens (no stop id), all
submitted at once; "decode tok/s" counts every generated token over the whole run's time, prefill
included, so it is what a server's clients would see in aggregate.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

import loom
from loom.llm.batching import BatchEngine, Request
from loom.llm.decoder import Decoder, DecoderConfig
from loom.llm.model import CausalLM

sys.path.insert(0, os.path.dirname(__file__))
import llm  # noqa: E402  (the benchmark's model shapes and random weights)

PROMPT = 32


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--streams", default="1,16,64")
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--deterministic", action="store_true")
    args = p.parse_args()
    with loom.deterministic(args.deterministic):
        dec = Decoder(DecoderConfig.from_hf(llm.CONFIG), llm.random_weights("BF16"), args.device)
        model = CausalLM(dec, None, dict(llm.CONFIG), eos_ids=())
        rng = np.random.default_rng(0)
        prompt = rng.integers(0, 49152, PROMPT).tolist()
        list(model.generate_ids(prompt, max_tokens=8, stop_ids=()))            # warm-up: kernels, graph
        t = time.perf_counter()
        n = len(list(model.generate_ids(prompt, max_tokens=args.tokens, stop_ids=())))
        single = n / (time.perf_counter() - t)
        mode = "deterministic" if args.deterministic else "fast"
        print(f"# SmolLM2-135M shapes, bf16 random weights, {args.device}, {mode} mode, {args.tokens} tokens a stream")
        print(f"generate_ids, 1 stream: {single:,.0f} tok/s")
        for streams in [int(s) for s in args.streams.split(",")]:
            engine = BatchEngine(model, max_batch=streams, cache_tokens=streams * (PROMPT + args.tokens + 16))
            warm = [Request(rng.integers(0, 49152, PROMPT).tolist(), max_tokens=4, stop_ids=()) for _ in range(streams)]
            engine.generate(warm)
            reqs = [Request(rng.integers(0, 49152, PROMPT).tolist(), max_tokens=args.tokens, stop_ids=())
                    for _ in range(streams)]
            steps, t = engine.stats["steps"], time.perf_counter()
            results = engine.generate(reqs)
            seconds = time.perf_counter() - t
            total = sum(len(r.tokens) for r in results)
            print(f"BatchEngine, {streams} streams: {total / seconds:,.0f} tok/s aggregate "
                  f"({seconds / (engine.stats['steps'] - steps) * 1e3:.1f} ms a step)")


if __name__ == "__main__":
    main()
