"""Where a batched decode step's time goes (issue 34): BatchEngine on SmolLM2-135M's shapes (random
bf16 weights), N streams of 32-token prompts decoding 64 tokens; the mean step time over 40 steps
after the prompts, then the CUDA kernels of 5 steps (CUPTI through torch.profiler, so PyTorch must
be installed; it also records CuPy's and cuBLAS's kernels).

    PYTHONPATH=. python benchmarks/batch_profile.py [--streams 64] [--shape smollm2-135m] [--deterministic]
                                                    [--plain]

With overlapped launches (the default) a kernel's time includes its wait for the one before; --plain
records plain launches, so the table's times are each kernel's own (the step is then slower).
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
    p.add_argument("--streams", type=int, default=64)
    p.add_argument("--shape", default="smollm2-135m", choices=sorted(llm.SHAPES))
    p.add_argument("--deterministic", action="store_true", help="deterministic mode's steps (default: fast)")
    p.add_argument("--rows", type=int, default=15, help="kernel names shown")
    p.add_argument("--plain", action="store_true",
                   help="record plain launches (no programmatic overlap), so each kernel's time is its own")
    args = p.parse_args()
    if args.plain:
        from loom.llm import paged_graph

        class PlainGraph(paged_graph.PagedDecodeGraph):     # the engine makes its graphs through this name
            def __init__(self, *a, **kw):
                super().__init__(*a, **{**kw, "overlap": False})
        paged_graph.PagedDecodeGraph = PlainGraph
    import cupy as cp
    from torch.profiler import ProfilerActivity, profile
    config = llm.SHAPES[args.shape]
    with loom.deterministic(args.deterministic):
        dec = Decoder(DecoderConfig.from_hf(config), llm.random_weights("BF16", config=config), "cuda")
        model = CausalLM(dec, None, dict(config), eos_ids=())
        vocab = config["vocab_size"]
        rng = np.random.default_rng(0)
        n = args.streams
        engine = BatchEngine(model, max_batch=n, cache_tokens=n * (32 + 64 + 16))
        engine.generate([Request(rng.integers(0, vocab, 32).tolist(), max_tokens=4, stop_ids=()) for _ in range(n)])
        for _ in range(n):
            engine.submit(Request(rng.integers(0, vocab, 32).tolist(), max_tokens=64, stop_ids=()), lambda e: None)
        for _ in range(5):                  # the prompts, then the first decode steps
            engine.step()
        cp.cuda.Device().synchronize()
        t = time.perf_counter()
        for _ in range(40):
            engine.step()
        cp.cuda.Device().synchronize()
        step = (time.perf_counter() - t) / 40
        mode = "deterministic" if args.deterministic else "fast"
        print(f"{args.shape}, {mode}: decode step at {n} streams: {step * 1e3:.2f} ms ({n / step:,.0f} tok/s)")
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                engine.step()
            cp.cuda.Device().synchronize()
        print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=args.rows, max_name_column_width=50))


if __name__ == "__main__":
    main()
