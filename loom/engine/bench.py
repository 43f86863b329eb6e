"""The engine's benchmark (`loom bench engine`, benchmarks/engine.py): dispatch cost inside a chain,
swarm overlap, and sum/scan/sort/argsort against a copy and the array library's own (and torch's when it is
installed), all in one run, on the GPU or the CPU.

1. Per-dispatch cost: a chain of `dispatches` launches of a one-block kernel built into one program
   (a CUDA graph on the GPU) and replayed, best of 5, per dispatch; on the GPU next to the same kernel
   launched eagerly (CuPy's RawKernel call, one after another on the current stream).
2. A swarm of 16 units, each a chain of one-block kernels: the units one after another against the
   swarm (overlap = sequential time / swarm time).
3. sum, scan, sort, argsort of 2^log2n float32: bytes read plus written once (argsort's int64 indices
   8 bytes each) per second, against a copy's. For loom.sort on the GPU, also the bytes its radix sort
   moves (the digit count reads every key once, each pass that moves anything reads and writes every
   key once: backend.sorts.digit_passes) per second, against a copy's.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .. import backend
from ..kernels.ir import I64, U32
from ..kernels.ir.kernel import Buffer, Kernel, kernel
from ..mode import deterministic
from . import patterns, sorting
from .swarm import build_all, swarm
from .unit import boot


@kernel
def tick(k: Kernel, r: Buffer(U32)) -> None:
    i = k.global_id()
    with k.if_(i < 32):
        r[i] = r[i] + 1


@kernel
def spin(k: Kernel, r: Buffer(U32), rounds: I64) -> None:
    i = k.global_id()
    x = k.var(U32, r[i])
    for _ in k.range(rounds):
        x.value = x.value * 1664525 + 1013904223
    r[i] = x.value


def best(fn: Callable[[], Any], sync: Callable[[], None], repeats: int = 5) -> float:
    """The shortest of `repeats` timed calls (after one untimed), each followed by sync()."""
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return min(times)


def dispatch_cost(device: str, dispatches: int) -> dict:
    unit = boot(device, registers=32, dtype="uint32")
    for _ in range(dispatches):
        unit.dispatch(tick, (), grid=(1, 32))
    t = time.perf_counter()
    prog = unit.build()
    result = {"dispatches": dispatches, "build_s": time.perf_counter() - t,
              "us_per_dispatch": best(prog.run, lambda: None) / dispatches * 1e6}
    compute = backend.get(device).compute
    if compute is not None:                     # the anchor: the same kernel launched eagerly
        be = backend.get(device)
        fn = compute.function(tick.source, "loom_tick")
        buf, fault = be.xp.zeros(32, np.uint32), be.xp.zeros(1, np.uint32)
        args = (buf, np.int64(32), fault)

        def eager():                            # CuPy's own launch call, on the current stream
            for _ in range(dispatches):
                fn((1,), (32,), args)
        result["eager_us_per_launch"] = best(eager, be.synchronize) / dispatches * 1e6
    unit.shutdown()
    return result


def swarm_overlap(device: str, units: int = 16, chain: int = 200, rounds: int = 4000) -> dict:
    members = [boot(device, registers=256, dtype="uint32") for _ in range(units)]
    for u in members:
        for _ in range(chain):
            u.dispatch(spin, (rounds,), grid=(1, 256))
    programs = build_all(members)
    for p in programs:
        p.run()
    t = time.perf_counter()
    for p in programs:
        p.run()
    sequential = time.perf_counter() - t
    together = best(lambda: swarm(programs), lambda: None, repeats=3)
    for u in members:
        u.shutdown()
    return {"units": units, "dispatches_per_unit": chain, "sequential_s": sequential, "swarm_s": together,
            "overlap": sequential / together}


def pattern_rates(device: str, log2n: int) -> list[dict]:
    be = backend.get(device)
    xp = be.xp
    x = be.asarray(np.random.default_rng(0).standard_normal(1 << log2n, dtype=np.float32))
    sync = be.synchronize
    copy_s = best(lambda: x.copy(), sync)
    copy_rate = 2 * x.nbytes / copy_s
    rows = [{"op": "copy", "s": copy_s, "GB/s": copy_rate / 1e9, "of copy": 1.0}]
    try:
        import torch
        tx = torch.as_tensor(x, device="cuda" if device == "cuda" else "cpu")
        tsync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    except ImportError:
        torch = None
    lib = xp.__name__
    cases = [(1, [("loom.sum deterministic", lambda: patterns.sum(x), True),
                  ("loom.sum fast", lambda: patterns.sum(x), False),
                  (f"{lib}.sum", lambda: xp.sum(x), None), ("torch.sum", lambda: tx.sum(), "torch")]),
             (2, [("loom.scan deterministic", lambda: patterns.scan(x), True),
                  ("loom.scan fast", lambda: patterns.scan(x), False),
                  (f"{lib}.cumsum", lambda: xp.cumsum(x), None), ("torch.cumsum", lambda: tx.cumsum(0), "torch")]),
             (2, [("loom.sort", lambda: sorting.sort(x), None),
                  (f"{lib}.sort", lambda: xp.sort(x), None), ("torch.sort", lambda: tx.sort(), "torch")]),
             # argsort reads 4 bytes a value and writes 8 (int64 indices)
             (3, [("loom.argsort", lambda: sorting.argsort(x), None), (f"{lib}.argsort", lambda: xp.argsort(x), None),
                  ("torch.argsort", lambda: tx.argsort(stable=True), "torch")])]
    for passes, variants in cases:
        for name, fn, mode in variants:
            if mode == "torch":
                if torch is None:
                    continue
                s = best(fn, tsync)
            elif mode is None:
                s = best(fn, sync)
            else:
                with deterministic(mode):
                    s = best(fn, sync)
            rate = passes * x.nbytes / s
            rows.append({"op": name, "s": s, "GB/s": rate / 1e9, "of copy": rate / copy_rate})
            if name == "loom.sort" and be.sorts is not None:
                moved = (1 + 2 * be.sorts.digit_passes(x)) * x.nbytes / s
                rows[-1].update({"moved GB/s": moved / 1e9, "moved of copy": moved / copy_rate})
    return rows


def run(device: str = "cuda", quick: bool = False) -> dict:
    """Every measurement, as a dict (`report` prints it). quick: small sizes (a smoke run)."""
    return {"device": device,
            "dispatch": dispatch_cost(device, 200 if quick else 10_000),
            "swarm": swarm_overlap(device, chain=4 if quick else 200, rounds=20 if quick else 4000),
            "patterns": pattern_rates(device, 12 if quick else (28 if device == "cuda" else 24))}


def report(results: dict) -> str:
    d, s = results["dispatch"], results["swarm"]
    lines = [f"dispatch chain of {d['dispatches']} on {results['device']}: built in {d['build_s']:.2f} s; "
             f"{d['us_per_dispatch']:.3f} us per dispatch replayed"
             + (f"; eager launches {d['eager_us_per_launch']:.3f} us each" if "eager_us_per_launch" in d else ""),
             f"swarm of {s['units']} units x {s['dispatches_per_unit']} dispatches: one after another "
             f"{s['sequential_s'] * 1e3:.1f} ms, as a swarm {s['swarm_s'] * 1e3:.1f} ms (overlap {s['overlap']:.1f}x)",
             "", "| op (float32) | ms | GB/s | of copy bandwidth | bytes moved: of copy bandwidth |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['op']} | {r['s'] * 1e3:.2f} | {r['GB/s']:.0f} | {r['of copy']:.2f} | "
              + (f"{r['moved of copy']:.2f} ({r['moved GB/s']:.0f} GB/s) |" if "moved of copy" in r else "- |")
              for r in results["patterns"]]
    return "\n".join(lines)
