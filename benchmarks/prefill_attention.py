"""Deterministic prompt attention on the GPU (issue 60): one request's prefill through a BatchEngine with
the one-pass attention kernels (loom/backend/cuda/flash_exact.py) and with the composition they replace
(the exact GEMMs and the exact softmax: `backend.flash_exact` set to None), fast mode before and after
them, all in one process; and whether both deterministic paths give the same tokens and log-probabilities.

    PYTHONPATH=. python benchmarks/prefill_attention.py [--cases smollm2-135m:512,smollm2-135m:2048,qwen2-0.5b:512]

Random bf16 weights (benchmarks/llm.py's shapes), the prompt and its first token, three warm-up runs
(kernels compiled, each chunk's shape seen, then recorded), then the best of --repeats.
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


def _prefill(shape: str, tokens: int, deterministic: bool, one_pass: bool, repeats: int) -> tuple[float, list]:
    """(best milliseconds, the last run's results) of one request's prefill and first token."""
    config = llm.SHAPES[shape]
    ids = np.random.default_rng(0).integers(0, config["vocab_size"], tokens).tolist()
    with loom.deterministic(deterministic):
        dec = Decoder(DecoderConfig.from_hf(config), llm.random_weights("BF16", config=config, device="cuda"),
                      device="cuda")
        kept = dec.backend.flash_exact
        if not one_pass:
            dec.backend.flash_exact = None
        try:
            engine = BatchEngine(CausalLM(dec, None, dict(config), eos_ids=()), max_batch=1,
                                 cache_tokens=tokens + 16, prefix_cache=False)
            request = Request(ids, max_tokens=1, stop_ids=(), logprobs=2)
            for _ in range(3):
                engine.generate([request])
            best, results = float("inf"), None
            for _ in range(repeats):
                dec.backend.synchronize()
                start = time.perf_counter()
                results = engine.generate([request])
                dec.backend.synchronize()
                best = min(best, time.perf_counter() - start)
        finally:
            dec.backend.flash_exact = kept
    return best * 1e3, [(r.tokens, r.logprobs) for r in results]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default="smollm2-135m:512,smollm2-135m:2048,qwen2-0.5b:512",
                   help="comma-separated shape:tokens")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    print("| shape | prompt | fast (before / after) | det., composed | det., one pass | det / fast (composed -> one pass) "
          "| same tokens and log-probabilities |")
    print("|---|---|---|---|---|---|---|")
    for case in args.cases.split(","):
        shape, tokens = case.split(":")
        tokens = int(tokens)
        fast_a, _ = _prefill(shape, tokens, False, True, args.repeats)
        composed, want = _prefill(shape, tokens, True, False, args.repeats)
        one_pass, got = _prefill(shape, tokens, True, True, args.repeats)
        fast_b, _ = _prefill(shape, tokens, False, True, args.repeats)
        fast = min(fast_a, fast_b)
        print(f"| {shape} | {tokens} | {fast_a:.1f} / {fast_b:.1f} ms | {composed:.1f} ms | {one_pass:.1f} ms | "
              f"{fast / composed:.3f} -> {fast / one_pass:.3f} | {want == got} |", flush=True)


if __name__ == "__main__":
    main()
