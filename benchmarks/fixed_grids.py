"""The integer scheme's batched product (quant_fixed.rows_product) at every grid shape:
us a product with (x fragments, W fragments) forced, beside the shape rows_shape() picks, each checked
against the default grid's bits ("!" where they differ). The table behind rows_shape's rule.

    PYTHONPATH=. python benchmarks/fixed_grids.py [--shapes "smol qkv,1b down"] [--types BF16,Q4_1]
                                                  [--rows 16,64]
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

GRIDS = ((1, 1), (1, 2), (1, 4), (2, 1), (2, 2), (4, 1), (4, 2))
SHAPES = {  # name: (stored rows of W, K, swiglu): SmolLM2-135M's and Llama-3.2-1B's decoder products
    "smol qkv": (960, 576, False), "smol gate_up": (3072, 576, True), "smol down": (576, 1536, False),
    "smol lm_head": (49152, 576, False), "1b qkv": (3072, 2048, False), "1b gate_up": (16384, 2048, True),
    "1b down": (2048, 8192, False),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--types", default="BF16,Q4_1")
    parser.add_argument("--rows", default="16,64")
    args = parser.parse_args()
    import cupy

    from loom.backend.cuda import quant_fixed
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
    from exact_tiles import graph_time
    from quant_rows import random_rows
    gpu = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    print(f"# {gpu}; us a product (CUDA graph of 20, best of 5)")
    print("| shape | type | rows of x | rows_shape | " + " | ".join(f"{a}x{b}" for a, b in GRIDS) + " |")
    print("|---|---|---|---|" + "---|" * len(GRIDS))
    rng = np.random.default_rng(0)
    chosen = quant_fixed.rows_shape
    for name in args.shapes.split(","):
        stored, k, swiglu = SHAPES[name]
        for qtype in args.types.split(","):
            data = cupy.asarray(random_rows(qtype, stored, k, rng, scale=0.01, plain=0.05))
            tables = quant_fixed.w_exponents(data, qtype, stored, k)
            for m in (int(v) for v in args.rows.split(",")):
                x = cupy.asarray(rng.standard_normal((m, k)).astype(np.float32))
                out = cupy.empty((m, stored // 2 if swiglu else stored), dtype=np.float32)

                def run():
                    quant_fixed.rows_product(data, qtype, x, out, tables, swiglu=swiglu)
                cells = [f"{graph_time(cupy, run):.1f} {chosen(m, out.shape[1], qtype, swiglu)}"]
                want = out.copy()
                for mf, nf in GRIDS:
                    if (swiglu and nf == 1) or 16 * mf > m:
                        cells.append("-")
                        continue
                    quant_fixed.rows_shape = lambda *a, mf=mf, nf=nf: (mf, nf)
                    try:
                        out.fill(np.nan)
                        t = graph_time(cupy, run)
                        same = bool((out.view(np.uint32) == want.view(np.uint32)).all())
                    finally:
                        quant_fixed.rows_shape = chosen
                    cells.append(f"{t:.1f}" + ("" if same else " !"))
                print(f"| {name} | {qtype} | {m} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
