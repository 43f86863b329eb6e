"""Where a recorded decode step's time goes (issue 7): the step's CUDA graph replayed 200 times, then
again recorded without one kind of kernel; the difference is that kernel's share, launch gaps included.

    PYTHONPATH=. python benchmarks/decode_graph_parts.py [Q4_1|BF16|Q4_K|Q8_0] [--shape llama-3.1-8b] [--plain]
                                                         [--deterministic]

SmolLM2-135M's shapes (or another of benchmarks/llm.py's SHAPES) with random weights, 16 cached positions,
batch 1, fast mode (--deterministic: deterministic mode's graph). --plain records plain launches instead
of overlapped ones (loom/backend/cuda/launch.py). Each product's row also gives the bytes its weight
holds and the rate they were read at (its time share, launch gaps included).
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

import loom
from loom.llm import decode_graph, sequence
from loom.llm.decoder import Decoder
from loom.llm.decoder_config import DecoderConfig

sys.path.insert(0, os.path.dirname(__file__))
import llm  # noqa: E402  (the benchmark's model shapes and random weights)


class PartialGraph(decode_graph.DecodeGraph):
    """The decode step with the kernels of the kinds in `skip` left out (the logits are then meaningless)."""

    skip: tuple = ()

    def _body(self):
        for kind, launch in self.operations():
            if kind not in self.skip:
                launch()


def replay_us(graph, xp, n: int = 200) -> float:
    for _ in range(3):
        graph.graph.launch()
    start, stop = xp.cuda.Event(), xp.cuda.Event()
    start.record()
    for _ in range(n):
        graph.graph.launch()
    stop.record()
    stop.synchronize()
    return xp.cuda.get_elapsed_time(start, stop) * 1000 / n


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("qtype", nargs="?", default="Q4_1", choices=["Q4_1", "BF16", "Q4_K", "Q8_0"])
    ap.add_argument("--shape", default="smollm2-135m", choices=sorted(llm.SHAPES))
    ap.add_argument("--plain", action="store_true", help="plain launches instead of overlapped ones")
    ap.add_argument("--deterministic", action="store_true", help="deterministic mode's graph (default: fast)")
    args = ap.parse_args()
    config = llm.SHAPES[args.shape]
    dec = Decoder(DecoderConfig.from_hf(config), llm.random_weights(args.qtype, config=config, device="cuda"),
                  device="cuda")
    xp, layers = dec.xp, config["num_hidden_layers"]
    prompt = np.random.default_rng(1).integers(0, config["vocab_size"], (1, 16))
    L = dec.layers[0]
    nbytes = {"qkv": L.qkv.nbytes, "o": L.o.nbytes, "gate_up": L.gate_up.nbytes, "down": L.down.nbytes,
              "lm_head": dec.lm_head.nbytes}
    exact = args.deterministic
    with loom.deterministic(exact):
        cache = dec.new_cache(64)
        sequence.forward(dec, prompt, cache, last_only=True)
        PartialGraph.skip = ()
        whole = replay_us(PartialGraph(dec, cache, overlap=not args.plain, exact=exact), xp)
        mode = "deterministic" if exact else "fast"
        print(f"{args.shape} {args.qtype}, {mode} mode, {'plain' if args.plain else 'overlapped'} launches: "
              f"whole step {whole:.1f} us")
        for kind in decode_graph.KINDS[1:]:           # (not the embedding: the step reads its output)
            PartialGraph.skip = (kind,)
            share = whole - replay_us(PartialGraph(dec, cache, overlap=not args.plain, exact=exact), xp)
            each = share / layers if kind != "lm_head" else share
            per = f"{each:.2f} us per layer" if kind != "lm_head" else f"{each:.2f} us"
            rate = f"  {nbytes[kind] / 1e6:8.2f} MB, {nbytes[kind] / each / 1e3:7.0f} GB/s" if kind in nbytes else ""
            print(f"  {kind:10} {per:>22}{rate}")


if __name__ == "__main__":
    main()
