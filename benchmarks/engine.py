"""The compute engine on the GPU (issue 28): dispatch cost inside a chain, swarm overlap, and the
one-call patterns against a device-to-device copy, CuPy and torch, all in the same run.

    PYTHONPATH=. python benchmarks/engine.py [--quick] [--json FILE]

1. Per-dispatch cost: a chain of 10,000 dispatches of a one-block kernel, built into one CUDA graph
   and replayed (best of 5 replays / 10,000), next to the same kernel launched eagerly by CuPy.
2. A 16-unit swarm: each unit's chain of 200 dispatches of a ~20 us kernel; the swarm's wall time
   against the sum of the units run one after another (overlap = sum / swarm).
3. sum, scan, sort of 2^28 float32: effective bandwidth (bytes read + written / time) against a
   device-to-device copy's, next to cupy.sum/cumsum/sort and torch.sum/cumsum/sort. Loom's sum and
   scan are timed in deterministic mode (exact, the CPU's bits) and fast mode.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

import loom
from loom import engine

E = engine


@E.kernel
def tick(k, r: E.Buffer(E.U32)):
    i = k.global_id()
    with k.if_(i < 32):
        r[i] = r[i] + 1


@E.kernel
def spin(k, r: E.Buffer(E.U32), rounds: E.I64):
    i = k.global_id()
    x = k.var(E.U32, r[i])
    for _ in k.range(rounds):
        x.value = x.value * 1664525 + 1013904223
    r[i] = x.value


def best(fn, sync, repeats=5) -> float:
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return min(times)


def dispatch_cost(cp, n=10_000) -> dict:
    unit = E.boot("cuda", registers=32, dtype="uint32")
    for _ in range(n):
        unit.dispatch(tick, (), grid=(1, 32))
    t = time.perf_counter()
    prog = unit.build()
    build_s = time.perf_counter() - t
    replay = best(prog.run, lambda: None)
    fn = loom.backend.get("cuda").compute.function(tick.source, "loom_tick")
    buf, fault = cp.zeros(32, np.uint32), cp.zeros(1, np.uint32)
    args = (buf, np.int64(32), fault)

    def eager():
        for _ in range(n):
            fn((1,), (32,), args)
    eager_s = best(eager, cp.cuda.Device().synchronize)
    unit.shutdown()
    return {"dispatches": n, "build_s": build_s, "graph_us_per_dispatch": replay / n * 1e6,
            "eager_cupy_us_per_launch": eager_s / n * 1e6}


def swarm_overlap(units=16, chain=200, rounds=4000) -> dict:
    swarm = [E.boot("cuda", registers=256, dtype="uint32") for _ in range(units)]
    for u in swarm:
        for _ in range(chain):
            u.dispatch(spin, (rounds,), grid=(1, 256))
    programs = E.build_all(swarm)
    for p in programs:
        p.run()
    t = time.perf_counter()
    for p in programs:
        p.run()
    sequential = time.perf_counter() - t
    together = best(lambda: E.swarm(programs), lambda: None, repeats=3)
    for u in swarm:
        u.shutdown()
    return {"units": units, "dispatches_per_unit": chain, "sequential_s": sequential, "swarm_s": together,
            "overlap": sequential / together}


def patterns(cp, torch, log2n=28) -> list[dict]:
    n = 1 << log2n
    x = cp.random.default_rng(0).standard_normal(n, dtype=cp.float32)
    sync = cp.cuda.Device().synchronize
    copy_s = best(lambda: x.copy(), sync)
    copy_bw = 2 * x.nbytes / copy_s
    rows = [{"op": "copy (device to device)", "s": copy_s, "GB/s": copy_bw / 1e9, "of copy": 1.0}]
    tx = torch.as_tensor(x, device="cuda") if torch is not None else None
    tsync = torch.cuda.synchronize if torch is not None else None
    cases = [
        ("sum", 1, [("loom.sum deterministic", lambda: loom.sum(x), True), ("loom.sum fast", lambda: loom.sum(x), False),
                    ("cupy.sum", lambda: cp.sum(x), None), ("torch.sum", lambda: tx.sum(), "torch")]),
        ("scan", 2, [("loom.scan deterministic", lambda: loom.scan(x), True), ("loom.scan fast", lambda: loom.scan(x), False),
                     ("cupy.cumsum", lambda: cp.cumsum(x), None), ("torch.cumsum", lambda: tx.cumsum(0), "torch")]),
        ("sort", 2, [("loom.sort", lambda: loom.sort(x), False), ("cupy.sort", lambda: cp.sort(x), None),
                     ("torch.sort", lambda: tx.sort(), "torch")]),
    ]
    for _, passes, variants in cases:
        for name, fn, mode in variants:
            if mode == "torch":
                if torch is None:
                    continue
                s = best(fn, tsync)
            elif mode is None:
                s = best(fn, sync)
            else:
                with loom.deterministic(mode):
                    s = best(fn, sync)
            bw = passes * x.nbytes / s
            rows.append({"op": name, "s": s, "GB/s": bw / 1e9, "of copy": bw / copy_bw})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2^24 elements for the patterns")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    import cupy as cp
    try:
        import torch
    except ImportError:
        torch = None
    print(f"# {cp.cuda.runtime.getDeviceProperties(0)['name'].decode()}, loom {loom.__version__}")
    d = dispatch_cost(cp)
    print(f"dispatch chain of {d['dispatches']}: built in {d['build_s']:.2f} s; "
          f"{d['graph_us_per_dispatch']:.3f} us per dispatch replayed; eager CuPy "
          f"{d['eager_cupy_us_per_launch']:.3f} us per launch")
    s = swarm_overlap()
    print(f"swarm of {s['units']} units x {s['dispatches_per_unit']} dispatches: one after another "
          f"{s['sequential_s'] * 1e3:.1f} ms, as a swarm {s['swarm_s'] * 1e3:.1f} ms (overlap {s['overlap']:.1f}x)")
    rows = patterns(cp, torch, 24 if args.quick else 28)
    print(f"\n| op ({'2^24' if args.quick else '2^28'} float32) | ms | GB/s | of copy bandwidth |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['op']} | {r['s'] * 1e3:.2f} | {r['GB/s']:.0f} | {r['of copy']:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"dispatch": d, "swarm": s, "patterns": rows}, f, indent=1)


if __name__ == "__main__":
    main()
