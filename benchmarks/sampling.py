"""One sampled token's cost on the host (loom.llm.generate.choose: penalty, temperature, top-k, top-p,
min-p, the draw), deterministic mode, for SmolLM2's and Qwen2's vocabulary sizes and logits of several
spreads (random normal logits times a scale: 1 is nearly flat, 8 as peaked as a confident model), with
top-p's cut found by generate.top_p_floor beside a full sort of the masses (the rule's definition, as
spec 3 states it). Milliseconds a token, best of 3 rounds of 20 tokens.

    python benchmarks/sampling.py
"""
from __future__ import annotations

import math
import time

import numpy as np

import loom
from loom.llm import generate as gen


def sorted_cut(mass: np.ndarray, cut: int) -> int:
    ascending = np.sort(mass)
    return int(ascending[min(int(np.count_nonzero(np.cumsum(ascending) <= cut)), mass.size - 1)])


def best_ms(f, rounds: int = 3, n: int = 20) -> float:
    best = math.inf
    for _ in range(rounds):
        t = time.perf_counter()
        for i in range(n):
            f(i)
        best = min(best, (time.perf_counter() - t) / n * 1e3)
    return best


def main() -> None:
    print("| vocabulary | logits scale | top_p | tokens kept | choose (ms) | cut: top_p_floor (ms) | cut: full sort (ms) |")
    print("|---|---|---|---|---|---|---|")
    for vocab in (49152, 151936):
        rng = np.random.default_rng(0)
        for scale in (1.0, 3.0, 8.0):
            logits = (rng.standard_normal(vocab) * scale).astype(np.float32)
            seen = np.zeros(vocab, dtype=bool)
            for top_p in (0.9, 0.5):
                s = gen.Sampling(temperature=0.7, top_p=top_p, repetition_penalty=1.1, seed=1)
                with loom.deterministic(True):
                    gen.choose(logits, seen, s, 0)
                    choose = best_ms(lambda i: gen.choose(logits, seen, s, i))
                    scaled = (logits / np.float32(s.temperature)).astype(np.float32)
                    mass, bits = gen.masses(gen._softmax(scaled, np.ones(vocab, dtype=bool)))
                cut = math.floor(math.ldexp(1.0 - top_p, bits))
                assert gen.top_p_floor(mass, cut) == sorted_cut(mass, cut)
                kept = int(np.count_nonzero(mass >= gen.top_p_floor(mass, cut)))
                fast = best_ms(lambda i: gen.top_p_floor(mass, cut))
                full = best_ms(lambda i: sorted_cut(mass, cut))
                print(f"| {vocab} | {scale:g} | {top_p} | {kept} | {choose:.2f} | {fast:.2f} | {full:.2f} |")


if __name__ == "__main__":
    main()
