"""A batch of sampled tokens chosen on the GPU (issue 60 item 3, issue 63 item 2): the one-launch sampling
kernel (loom/backend/cuda/sampling.py, what DeviceRows.choose runs on CuPy) beside the array version it
replaced (loom/llm/sample_rows.py's sample_rows on CuPy arrays: ~120 launches, two whole-vocabulary
sorts), for 16 and 64 rows of SmolLM2's and Qwen2's vocabulary sizes, at temperature 0.7 with top-p 0.9,
and with every stage on (top-k 40, top-p 0.9, min-p 0.05, repetition penalty 1.1). Milliseconds a call
(CUDA events around 10 calls, best of 5), and DeviceRows.set_steps' host time (each row's uniform number).
Each case first checks that both give the same tokens in deterministic mode.

    PYTHONPATH=. python benchmarks/device_sampling.py
"""
from __future__ import annotations

import time

import cupy
import numpy as np

import loom
from loom.llm import generate as gen
from loom.llm.sample_rows import DeviceRows, sample_rows

SETTINGS = {"top-p": dict(temperature=0.7, top_p=0.9),
            "all stages": dict(temperature=0.7, top_k=40, top_p=0.9, min_p=0.05, repetition_penalty=1.1)}


def best_ms(fn, calls: int = 10, rounds: int = 5) -> float:
    best = float("inf")
    for _ in range(rounds):
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        fn()
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        best = min(best, cupy.cuda.get_elapsed_time(start, end) / calls)
    return best


def main() -> None:
    print(f"# {cupy.cuda.runtime.getDeviceProperties(0)['name'].decode()}, deterministic mode")
    print("| vocabulary | rows | settings | kernel (ms) | array version (ms) | array / kernel | set_steps host (ms) |")
    print("|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for vocab in (49152, 151936):
        for n in (16, 64):
            logits = cupy.asarray((rng.standard_normal((n, vocab)) * 3).astype(np.float32))
            for name, kw in SETTINGS.items():
                rows = DeviceRows(cupy, [gen.Sampling(seed=i, **kw) for i in range(n)], [None] * n, vocab)
                t = time.perf_counter()
                for _ in range(10):
                    rows.set_steps(list(range(n)))
                host = (time.perf_counter() - t) / 10 * 1e3
                args = (logits, rows.seen, rows.temperature, rows.top_k, rows.top_p, rows.min_p, rows.penalty, rows.u)
                with loom.deterministic(True):
                    kernel = rows.choose(logits)
                    rows.seen[...] = False
                    assert cupy.array_equal(kernel, sample_rows(*args, skip=rows.skip)), (vocab, n, name)
                    t_kernel = best_ms(lambda: rows.choose(logits))
                    t_array = best_ms(lambda: sample_rows(*args, skip=rows.skip))
                print(f"| {vocab} | {n} | {name} | {t_kernel:.3f} | {t_array:.3f} | {t_array / t_kernel:.1f} | "
                      f"{host:.2f} |", flush=True)


if __name__ == "__main__":
    main()
