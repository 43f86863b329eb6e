"""Deterministic products of a few rows of x (decode steps: 1-8 sequences) with stored weights (issue 60):
quant_exact.gemv (the rounded scheme, K <= 2048) or quant_slices' slicing kernel and gemv (the slice
scheme, K > 2048) against fast mode's product of the same shape and stored type (quant.gemv, which takes
half_gemv's 16-byte kernel for large 16-bit weights), each timed as a CUDA graph of 20 launches, best of 5,
both in the same process. Prints the read rate of the stored bytes beside the device's copy rate.

    PYTHONPATH=. python benchmarks/exact_gemv.py [--rows 1,2,4,8] [--types BF16,Q4_1,Q8_0,Q4_K]
                                                 [--shapes "1b down,8b gate_up"] [--rows-per-warp 1,2,4]
                                                 [--fixed]

Shapes: SmolLM2-135M's, Llama-3.2-1B's, a Qwen2-0.5B shape's and Llama-3.1-8B's products (their K above
2048 takes the slice scheme). --rows-per-warp times the deterministic kernels with each value of
quant_slices.ROWS_PER_WARP (rows of W a warp of the slice scheme takes at once; None: the module's choice),
one column each. --fixed adds the integer scheme of spec 4
(quant_fixed.gemv: x's integers, then the product with the same epilogue), for rows of x up to
quant_fixed.MAX_ROWS.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from exact_tiles import SHAPES as TILE_SHAPES  # noqa: E402  (benchmarks/, the script's folder)
from exact_tiles import graph_time  # noqa: E402

SHAPES = {**TILE_SHAPES,  # name: (rows of W, K, swiglu); exact_tiles' and these
          "1b o": (2048, 2048, False), "1b lm_head": (128256, 2048, False), "qwen down": (896, 4864, False),
          "8b qkv": (6144, 4096, False), "8b gate_up": (14336, 4096, True), "8b down": (4096, 14336, False)}


def _copy_rate(cupy) -> float:
    """GB/s a device-to-device copy of 256 MiB moves, counting bytes read and written."""
    src = cupy.empty(1 << 28, dtype=np.uint8)
    dst = cupy.empty_like(src)
    return 2 * src.nbytes / graph_time(cupy, lambda: cupy.copyto(dst, src), launches=5) / 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1,2,4,8")
    parser.add_argument("--types", default="BF16,Q4_1")
    parser.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated names of SHAPES")
    parser.add_argument("--rows-per-warp", default=None, help="comma-separated quant_slices.ROWS_PER_WARP values")
    parser.add_argument("--fixed", action="store_true", help="add the integer scheme's product (spec 4)")
    args = parser.parse_args()
    variants = [int(v) for v in args.rows_per_warp.split(",")] if args.rows_per_warp else [None]
    import cupy

    from loom.backend.cuda import quant, quant_exact, quant_fixed, quant_slices
    from loom.kernels import exact
    from loom.kernels.exact import dispatch as exact_dispatch
    from loom.kernels.exact import rounded as exact_rounded
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
    from quant_rows import random_rows
    gpu = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    copy = _copy_rate(cupy)
    print(f"# {gpu}; us a product (CUDA graph of 20, best of 5); GB/s: stored bytes read a second "
          f"(copy: {copy:.0f} GB/s read + written)")
    heads = " | ".join("det." if v is None else f"det., {v} rows a warp" for v in variants)
    heads += " | integer scheme | integer / fast time" if args.fixed else ""
    print(f"| shape | type | rows of x | {heads} | fast | det / fast time | det. GB/s | fast GB/s |")
    print("|---|---|---|" + "---|" * (len(variants) + 2 * args.fixed) + "---|---|---|---|")
    rng = np.random.default_rng(0)
    for name in args.shapes.split(","):
        rows, k, swiglu = SHAPES[name]
        stored = 2 * rows if swiglu else rows
        rounded = exact_dispatch.matmul_scheme(np.float32, k) == exact_dispatch.ROUNDED
        for qtype in args.types.split(","):
            data = cupy.asarray(random_rows(qtype, stored, k, rng, scale=0.01, plain=0.05))
            if not rounded:
                wmax = quant_slices.row_maxima(data, qtype, stored, k)
                bits = exact.narrow_bits(k)
            w_tables = quant_fixed.w_exponents(data, qtype, stored, k) if args.fixed else None
            for m in [int(v) for v in args.rows.split(",")]:
                x = cupy.asarray(rng.standard_normal((m, k)).astype(np.float32))
                out = cupy.empty((m, rows), dtype=np.float32)
                if rounded:
                    def det():
                        quant_exact.gemv(data, qtype, x, out, exact_rounded.error_factor(k), swiglu=swiglu)
                else:
                    slices, xmax = cupy.empty((m, 2 * k), dtype=np.float32), cupy.empty(m, dtype=np.float32)

                    def det():
                        quant_slices.slice_rows(x, slices, xmax, bits)
                        quant_slices.gemv(data, qtype, slices, xmax, x, wmax, out, bits, swiglu=swiglu)
                times, default = [], getattr(quant_slices, "ROWS_PER_WARP", None)
                for v in variants:
                    quant_slices.ROWS_PER_WARP = default if v is None else v
                    times.append(graph_time(cupy, det))
                quant_slices.ROWS_PER_WARP = default
                fast = graph_time(cupy, lambda: quant.gemv(data, qtype, x, out, swiglu=swiglu))
                cells = " | ".join(f"{t:.1f}" for t in times)
                if args.fixed:
                    t_fixed = (graph_time(cupy, lambda: quant_fixed.gemv(data, qtype, x, out, w_tables, swiglu=swiglu))
                               if m <= quant_fixed.MAX_ROWS else float("nan"))
                    cells += f" | {t_fixed:.1f} | {t_fixed / fast:.2f}"
                print(f"| {name} | {qtype} | {m} | {cells} | {fast:.1f} | {times[0] / fast:.2f} | "
                      f"{data.nbytes / times[0] / 1e3:.0f} | {data.nbytes / fast / 1e3:.0f} |", flush=True)


if __name__ == "__main__":
    main()
