"""The deterministic planes' products of decode batches, product by product (issue 60): quant_fixed_planes'
pipelined kernel (quant_fixed_planes_tiled: the int8 tensor cores, K split over a cluster, finished in the
launch), its products on wgmma (quant_fixed_planes_wgmma, compute capability 9.0) and on mma.sync, beside the
path before it (cuBLAS's int8 GEMM of the planes, then the finishing kernel), the dispatched path, and fast
mode's bfloat16 GEMM (cuBLAS, float32 out) on the same shapes, each with x's integer kernel where it has
one. Each product recorded 20 times into a CUDA graph, replayed; microseconds a product (median of 7 replays).
The tiled kernel is timed on every shape in both forms, also where the dispatch (quant_fixed_planes_tiled.takes,
wgmma_takes) leaves a product to the other or to cuBLAS.

    PYTHONPATH=. python benchmarks/planes_products.py [--rows 16,32,64] [--shapes smollm2,lm_head]
                                                      [--set MODULE.NAME=INT ...]

Shapes: Llama-3.2-1B's qkv, o, gate_up (SwiGLU), down and lm_head products, Llama-3.1-8B's gate_up and down, and
SmolLM2-135M's and Qwen2-0.5B's qkv, o, gate_up, down and lm_head (random bf16 weights); --shapes keeps those
whose name holds one of the comma-separated words.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from decode_graph_parts import set_constants  # noqa: E402  (--set, as there)

SHAPES = [("llama-1b qkv", 3072, 2048, False), ("llama-1b o", 2048, 2048, False),
          ("llama-1b gate_up", 16384, 2048, True), ("llama-1b down", 2048, 8192, False),
          ("llama-1b lm_head", 128256, 2048, False),
          ("llama-8b gate_up", 28672, 4096, True), ("llama-8b down", 4096, 14336, False),
          ("smollm2 qkv", 960, 576, False), ("smollm2 o", 576, 576, False),
          ("smollm2 gate_up", 3072, 576, True), ("smollm2 down", 576, 1536, False),
          ("smollm2 lm_head", 49152, 576, False),
          ("qwen2 qkv", 1152, 896, False), ("qwen2 o", 896, 896, False), ("qwen2 gate_up", 9728, 896, True),
          ("qwen2 down", 896, 4864, False), ("qwen2 lm_head", 151936, 896, False)]
REPLAYS, RECORDED = 7, 20


def _time(be, cp, fn) -> float:
    """Microseconds a call of fn, from a graph of RECORDED calls (median of REPLAYS replays)."""
    fn()
    graph, _ = be.record(lambda: [fn() for _ in range(RECORDED)])
    times = []
    for _ in range(REPLAYS):
        start, end = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        graph.launch()
        end.record()
        end.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, end) * 1e3 / RECORDED)
    return float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", default="16,32,64", help="rows of x (decode batch sizes), comma-separated")
    ap.add_argument("--set", action="append", default=[], metavar="MODULE.NAME=INT",
                    help="set an integer constant of a loom module first (repeatable)")
    ap.add_argument("--shapes", default="", help="keep the products whose name holds one of these words (comma-separated)")
    args = ap.parse_args()
    words = [w for w in args.shapes.split(",") if w]
    shapes = [shape for shape in SHAPES if not words or any(w in shape[0] for w in words)]
    if not shapes:
        raise SystemExit(f"--shapes {args.shapes!r} matches none of {', '.join(s[0] for s in SHAPES)}")
    set_constants(args.set)
    import cupy as cp

    from loom import backend
    from loom.backend.cuda import quant_fixed, quant_fixed_planes
    from loom.backend.cuda import quant_fixed_planes_tiled as tiled
    be = backend.get("cuda")
    rng = np.random.default_rng(0)
    print(f"# {cp.cuda.runtime.getDeviceProperties(0)['name'].decode()}: us a product (x's kernel included)")
    print("| product | rows of x | tiled, wgmma | tiled, mma.sync | cuBLAS int8 + finish | fast bf16 GEMM | "
          "fast / dispatched |")
    print("|---|---|---|---|---|---|---|")
    dispatch = (tiled.TILED, tiled.ROWS, tiled.SHORT_K, tiled.WGMMA, tiled.WG_ALL)
    for name, stored, k, swiglu in shapes:
        w = (rng.standard_normal((stored, k)) * 0.02).astype(np.float32)
        data = cp.asarray((w.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8))
        tables = quant_fixed.w_exponents(data, "BF16", stored, k)
        weight = quant_fixed_planes.w_planes(data, "BF16", stored, k, tables)
        w16 = data.view(cp.uint16).reshape(stored, k)          # (fast mode's operand: the stored bf16 rows)
        for m in (int(r) for r in args.rows.split(",")):
            x = cp.asarray(rng.standard_normal((m, k)).astype(np.float32))
            out = cp.empty((m, stored // 2 if swiglu else stored), dtype=np.float32)

            def planes(path: str):
                # (the tiled kernel on every shape it compiles for, where the dispatch may send it to cuBLAS)
                if path != "dispatched":
                    tiled.TILED, tiled.ROWS, tiled.SHORT_K = path != "cublas", tiled.MAX_ROWS, tiled.MAX_K - 1
                    tiled.WGMMA = tiled.WG_ALL = path == "wgmma"
                try:
                    quant_fixed_planes.product(data, "BF16", x, out, weight, be.blas, swiglu=swiglu)
                finally:
                    tiled.TILED, tiled.ROWS, tiled.SHORT_K, tiled.WGMMA, tiled.WG_ALL = dispatch
            # (wgmma: compute capability 9.0 alone)
            paths = ("wgmma", "mma", "cublas", "dispatched") if tiled._hopper() else ("mma", "cublas", "dispatched")
            t = {path: _time(be, cp, lambda: planes(path)) for path in paths}
            t.setdefault("wgmma", float("nan"))
            x16 = (x.view(cp.uint32) >> 16).astype(cp.uint16)
            fast_out = cp.empty((m, stored), dtype=np.float32)
            t_fast = _time(be, cp, lambda: be.blas.gemm_bf16_t(x16, w16, fast_out))
            print(f"| {name} ({stored} x {k}) | {m} | {t['wgmma']:.1f} | {t['mma']:.1f} | {t['cublas']:.1f} | "
                  f"{t_fast:.1f} | {t_fast / t['dispatched']:.2f} |")


if __name__ == "__main__":
    main()
