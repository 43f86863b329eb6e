"""Where a prompt's time goes on the GPU (issue 60): the kernels of one request's prefill through a
BatchEngine (the prompt and its first token, no prefix cache), by kernel name, from torch.profiler
(its CUPTI sees every kernel of the process, CuPy's and cuBLAS's included), in one mode.

    PYTHONPATH=. python benchmarks/prefill_kernels.py [--shape smollm2-135m] [--type BF16] [--tokens 2048]
                                                      [--deterministic] [--rows 25] [--set loom.MODULE.NAME=INT]

One of benchmarks/llm.py's model shapes with random weights. The request runs three times first
(kernels compiled; each chunk's shape seen, then recorded), then once under the profiler; the line
before the table gives that run's wall time and the kernels' total, whose gap is the host's share
(launches, Python; a recorded chunk replays as one graph launch). --set: an integer constant of a loom module
changed first (decode_graph_parts.py's). Needs torch with CUDA.
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
from decode_graph_parts import set_constants  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="smollm2-135m", choices=sorted(llm.SHAPES))
    p.add_argument("--type", default="BF16", help="the stored weight type")
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--deterministic", action="store_true")
    p.add_argument("--rows", type=int, default=25, help="kernel names shown")
    p.add_argument("--set", action="append", default=[], metavar="MODULE.NAME=INT",
                   help="an integer constant of a loom module, changed first (repeatable)")
    args = p.parse_args()
    set_constants(args.set)
    from torch.profiler import ProfilerActivity, profile
    config = llm.SHAPES[args.shape]
    ids = np.random.default_rng(0).integers(0, config["vocab_size"], args.tokens).tolist()
    with loom.deterministic(args.deterministic):
        dec = Decoder(DecoderConfig.from_hf(config), llm.random_weights(args.type, config=config, device="cuda"),
                      device="cuda")
        engine = BatchEngine(CausalLM(dec, None, dict(config), eos_ids=()), max_batch=1,
                             cache_tokens=args.tokens + 16, prefix_cache=False)
        request = Request(ids, max_tokens=1, stop_ids=())
        for _ in range(3):
            engine.generate([request])
        dec.backend.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            start = time.perf_counter()
            engine.generate([request])
            dec.backend.synchronize()
            wall = time.perf_counter() - start
    events = prof.key_averages()
    total = sum(e.self_device_time_total for e in events) / 1e3
    mode = "deterministic" if args.deterministic else "fast"
    print(f"{args.shape} {args.type}, {args.tokens} tokens, {mode} mode: {wall * 1e3:.1f} ms wall "
          f"(under the profiler), {total:.1f} ms of kernels, {engine.stats['prefill_graph_steps']} recorded chunk "
          f"replays in all; {mempool_gb():.2f} GB in CuPy's memory pool")
    print(events.table(sort_by="self_cuda_time_total", row_limit=args.rows, max_name_column_width=60))


def mempool_gb() -> float:
    """Device memory CuPy's pool holds (the weights, the cache, and each recorded chunk's buffers), GB."""
    import cupy
    return cupy.get_default_memory_pool().total_bytes() / 1e9


if __name__ == "__main__":
    main()
