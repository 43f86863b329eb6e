"""Where a batched decode step's time goes (issue 34): BatchEngine on SmolLM2-135M's shapes (random
bf16 weights), N streams of 32-token prompts decoding 64 tokens; the mean step time over 40 steps
after the prompts, then the CUDA kernels of 5 steps (CUPTI through torch.profiler, so PyTorch must
be installed; it also records CuPy's and cuBLAS's kernels).

    PYTHONPATH=. python benchmarks/batch_profile.py [--streams 64]
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
    args = p.parse_args()
    import cupy as cp
    from torch.profiler import ProfilerActivity, profile
    with loom.deterministic(False):
        dec = Decoder(DecoderConfig.from_hf(llm.CONFIG), llm.random_weights("BF16"), "cuda")
        model = CausalLM(dec, None, dict(llm.CONFIG), eos_ids=())
        rng = np.random.default_rng(0)
        n = args.streams
        engine = BatchEngine(model, max_batch=n, cache_tokens=n * (32 + 64 + 16))
        engine.generate([Request(rng.integers(0, 49152, 32).tolist(), max_tokens=4, stop_ids=()) for _ in range(n)])
        for _ in range(n):
            engine.submit(Request(rng.integers(0, 49152, 32).tolist(), max_tokens=64, stop_ids=()), lambda e: None)
        for _ in range(5):                  # the prompts, then the first decode steps
            engine.step()
        cp.cuda.Device().synchronize()
        t = time.perf_counter()
        for _ in range(40):
            engine.step()
        cp.cuda.Device().synchronize()
        step = (time.perf_counter() - t) / 40
        print(f"decode step at {n} streams: {step * 1e3:.2f} ms ({n / step:,.0f} tok/s)")
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                engine.step()
            cp.cuda.Device().synchronize()
        print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=15, max_name_column_width=50))


if __name__ == "__main__":
    main()
