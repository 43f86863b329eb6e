"""Deterministic products of many rows of x with stored weights (issue 60): the float64 tensor-core tiles
(loom/backend/cuda/quant_tiles.py) against what deterministic batches ran before (quant_exact /
quant_slices' warp-per-row kernels in groups of 16 rows of x) and against fast mode's product of the same
shape (cuBLAS bf16 GEMM on the tensor cores with float32 accumulation: blas.gemm_bf16_t), each timed
as a CUDA graph of 20 launches, best of 5.

    PYTHONPATH=. python benchmarks/exact_tiles.py [--rows 16,64,256,2048] [--types BF16,Q4_1] [--groups]
                                                  [--split-waves 1,2] [--shapes "smol o,1b down"]
                                                  [--split-tiles] [--dgemm] [--grids] [--fixed]

Shapes: SmolLM2-135M's and Llama-3.2-1B's products (K = 8192 takes the slice scheme). --groups adds the
grouped warp-per-row kernels (slow past 16 rows: they are the "before"). --split-waves times the tiles
with each value of quant_tiles.SPLIT_WAVES (the blocks a multiprocessor that split products aim for), one
column each. Up to quant_rows.ROWS_MAX rows of x the "tiles (det.)" column is the default path, quant_rows'
kernel; --split-tiles adds the tiles with K split in parts (the default there before quant_rows).
--dgemm adds quant_tiles.product's float64 GEMM path (cuBLAS's DGEMM of the decoded weight, which
prompt chunks of DGEMM_ROWS rows and more take), for the products without an epilogue. --grids adds
quant_rows' kernel at each grid shape of GRIDS (x fragments, W fragments a warp), forced (products past
quant_rows.takes included), each checked against the tiles' bits. --fixed adds the
integer scheme of spec 4 (x's integers, then the product: quant_fixed.rows_product on the
int8 tensor cores up to its ROWS_MAX rows, with the same epilogue; past them quant_fixed_planes' int8
GEMM of the planes, over every stored row, without SwiGLU's epilogue).
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SHAPES = {  # name: (rows of W, K, swiglu)
    "smol qkv": (960, 576, False), "smol o": (576, 576, False), "smol gate_up": (3072, 576, True),
    "smol down": (576, 1536, False), "smol lm_head": (49152, 576, False),
    "1b qkv": (3072, 2048, False), "1b gate_up": (8192, 2048, True), "1b down": (2048, 8192, False),
}


def graph_time(cupy, fn, launches: int = 20, repeats: int = 5) -> float:
    """Microseconds a launch: fn recorded `launches` times into one graph, the graph's best of `repeats`."""
    fn()
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        for _ in range(launches):
            fn()
        graph = stream.end_capture()
        graph.launch(stream)
        stream.synchronize()
        best = float("inf")
        for _ in range(repeats):
            start, stop = cupy.cuda.Event(), cupy.cuda.Event()
            start.record(stream)
            graph.launch(stream)
            stop.record(stream)
            stop.synchronize()
            best = min(best, cupy.cuda.get_elapsed_time(start, stop) * 1000 / launches)
    return best


# quant_rows' (x fragments)x(W fragments) a warp: shape()'s choices, and the x fragments 4 of its grid
# before 2026-11-26 (a block took up to 64 rows of x)
GRIDS = ("1x1", "1x2", "1x4", "2x1", "2x2", "2x4", "4x1", "4x2")


def grid_times(cupy, quant_rows, product, out, m: int, swiglu: bool) -> list[str]:
    """us a product with quant_rows' kernel forced at each of GRIDS (its shape() and takes() swapped for
    the call; "-" where SwiGLU needs pairs of W fragments or m exceeds the kernel), "!" where the bits differ
    from the tiles' with K in one part (product(1))."""
    product(1)
    want = out.copy()
    shape, takes = quant_rows.shape, quant_rows.takes
    times = []
    for grid in GRIDS:
        mf, nf = (int(v) for v in grid.split("x"))
        if (swiglu and nf == 1) or m > quant_rows.ROWS_MAX:
            times.append("-")
            continue
        try:
            quant_rows.takes = lambda m, rows, qtype: True
            quant_rows.shape = lambda m, rows, sliced, swiglu, qtype: (
                mf, nf, -(-rows // (4 * nf if swiglu else 8 * nf)))
            out.fill(np.nan)
            t = graph_time(cupy, product)
            same = bool((out.view(np.uint32) == want.view(np.uint32)).all())
        finally:
            quant_rows.shape, quant_rows.takes = shape, takes
        times.append(f"{t:.1f}" + ("" if same else " !"))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="16,64,256,2048")
    parser.add_argument("--types", default="BF16,Q4_1")
    parser.add_argument("--groups", action="store_true")
    parser.add_argument("--split-waves", default=None, help="comma-separated quant_tiles.SPLIT_WAVES values")
    parser.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated names of SHAPES")
    parser.add_argument("--split-tiles", action="store_true",
                        help="add the tiles with K split (what products of up to quant_rows.ROWS_MAX rows took before)")
    parser.add_argument("--grids", action="store_true",
                        help="add quant_rows' kernel at each grid shape of GRIDS, forced")
    parser.add_argument("--fixed", action="store_true", help="add the integer scheme's product (spec 4)")
    parser.add_argument("--dgemm", action="store_true",
                        help="add the float64 GEMM path (quant_tiles.product from DGEMM_ROWS rows) at every row count")
    args = parser.parse_args()
    waves = [int(v) for v in args.split_waves.split(",")] if args.split_waves else [None]
    import cupy

    import loom
    from loom.backend.cuda import quant_exact, quant_fixed, quant_fixed_planes, quant_rows, quant_slices, quant_tiles
    from loom.kernels import exact
    from loom.kernels.exact import dispatch as exact_dispatch
    from loom.kernels.exact import rounded as exact_rounded
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
    from quant_rows import random_rows
    be = loom.backend.get("cuda")
    gpu = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    print(f"# {gpu}; us a product (CUDA graph of 20, best of 5); fast = cuBLAS bf16 GEMM of the same shape")
    tiles_heads = " | ".join("tiles (det.)" if w is None else f"tiles, SPLIT_WAVES {w}" for w in waves)
    dgemm_head = (" tiles, K split (det., before) |" if args.split_tiles else "") + (
        " float64 GEMM (det.) |" if args.dgemm else "") + "".join(f" rows {g} |" for g in GRIDS if args.grids) + (
        " integer scheme |" if args.fixed else "")
    print(f"| shape | type | rows of x | {tiles_heads} |{dgemm_head} groups of 16 (det., before) | fast bf16 | "
          "det / fast time |")
    print("|---|---|---|" + "---|" * (len(waves) + args.dgemm + args.split_tiles + len(GRIDS) * args.grids
                                     + args.fixed) + "---|---|---|")
    rng = np.random.default_rng(0)
    for name in args.shapes.split(","):
        rows, k, swiglu = SHAPES[name]
        stored = 2 * rows if swiglu else rows
        rounded = exact_dispatch.matmul_scheme(np.float32, k) == exact_dispatch.ROUNDED
        for qtype in args.types.split(","):
            data = cupy.asarray(random_rows(qtype, stored, k, rng, scale=0.01, plain=0.05))
            w16 = cupy.asarray(rng.standard_normal((stored, k)).astype(np.float32) * 0.05)
            w16 = (w16.view(np.uint32) >> 16).astype(np.uint16)
            tables = {}                         # product()'s memo of the weight's norms or maxima
            w_tables = quant_fixed.w_exponents(data, qtype, stored, k) if args.fixed else None
            w_planes = quant_fixed_planes.w_planes(data, qtype, stored, k, w_tables) if args.fixed else None
            if rounded:
                wnorm = quant_tiles.row_norms(data, qtype, stored, k)
            else:
                wmax = quant_slices.row_maxima(data, qtype, stored, k)
                bits = exact.narrow_bits(k)
            for m in [int(v) for v in args.rows.split(",")]:
                x = cupy.asarray(rng.standard_normal((m, k)).astype(np.float32))
                out = cupy.empty((m, rows), dtype=np.float32)
                if rounded:
                    def tiles(splits=None):
                        quant_tiles.gemm(data, qtype, x, wnorm, out, exact_rounded.error_factor(k), swiglu=swiglu,
                                         splits=splits)
                else:
                    slices, xmax = cupy.empty((m, 2 * k), dtype=np.float32), cupy.empty(m, dtype=np.float32)

                    def tiles(splits=None):
                        quant_slices.slice_rows(x, slices, xmax, bits)
                        quant_tiles.sliced_gemm(data, qtype, slices, xmax, x, wmax, out, bits, swiglu=swiglu,
                                                splits=splits)
                t_tiles, default = [], quant_tiles.SPLIT_WAVES
                for w in waves:
                    quant_tiles.SPLIT_WAVES = default if w is None else w
                    t_tiles.append(graph_time(cupy, tiles))
                quant_tiles.SPLIT_WAVES = default
                t_split = t_dgemm = ""
                if args.split_tiles:
                    splits = quant_tiles.tile_splits(m, rows, k, not rounded, swiglu)
                    t_split = f" {graph_time(cupy, lambda: tiles(splits)):.1f} |"
                if args.dgemm and not swiglu:       # (product() has no epilogues: prompt products)
                    default_rows, quant_tiles.DGEMM_ROWS = quant_tiles.DGEMM_ROWS, 1
                    default_values, quant_tiles.DGEMM_VALUES = quant_tiles.DGEMM_VALUES, 0
                    t_dgemm = graph_time(cupy, lambda: quant_tiles.product(
                        data, qtype, x, out, tables, exact_rounded.error_factor(k) if rounded else None,
                        None if rounded else bits, blas=be.blas))
                    quant_tiles.DGEMM_ROWS, quant_tiles.DGEMM_VALUES = default_rows, default_values
                    t_dgemm = f" {t_dgemm:.1f} |"
                elif args.dgemm:
                    t_dgemm = " |"
                t_grids = "".join(f" {t} |" for t in grid_times(cupy, quant_rows, tiles, out, m, swiglu)) \
                    if args.grids else ""
                if args.fixed:
                    whole = cupy.empty((m, stored), dtype=np.float32)
                    if m <= quant_fixed.ROWS_MAX:
                        t_fixed = graph_time(cupy, lambda: quant_fixed.rows_product(data, qtype, x, out, w_tables,
                                                                                    swiglu=swiglu))
                    else:
                        t_fixed = graph_time(cupy, lambda: quant_fixed_planes.product(data, qtype, x, whole, w_planes,
                                                                                      be.blas))
                    t_grids += f" {t_fixed:.1f} |"
                t_groups = ""
                if args.groups and m <= 256:
                    def groups():
                        for r in range(0, m, 16):
                            xs, o = x[r:r + 16], out[r:r + 16]
                            if rounded:
                                quant_exact.gemv(data, qtype, xs, o, exact_rounded.error_factor(k), swiglu=swiglu)
                            else:
                                sl, xm = slices[r:r + 16], xmax[r:r + 16]
                                quant_slices.slice_rows(xs, sl, xm, bits)
                                quant_slices.gemv(data, qtype, sl, xm, xs, wmax, o, bits, swiglu=swiglu)
                    t_groups = f"{graph_time(cupy, groups, launches=3, repeats=2):.1f}"
                xb = (x.view(np.uint32) >> 16).astype(np.uint16)
                yb = cupy.empty((m, stored), dtype=np.float32)
                t_fast = graph_time(cupy, lambda: be.blas.gemm_bf16_t(xb, w16, yb))
                times = " | ".join(f"{t:.1f}" for t in t_tiles)
                print(f"| {name} | {qtype} | {m} | {times} |{t_split}{t_dgemm}{t_grids} {t_groups} | {t_fast:.1f} | "
                      f"{t_tiles[0] / t_fast:.2f} |", flush=True)


if __name__ == "__main__":
    main()
