"""Softmax rows and their gradients' rows on the GPU: deterministic mode's kernels (loom/backend/cuda/
fused_exact: a warp a row up to WARP_ROWS_MAX / WARP_GRAD_ROWS_MAX entries, a block holding the row in
registers up to HELD_ROWS_MAX, the block kernel past it; the block kernel at every length with --block)
beside fast mode's (loom/backend/cuda/fused) and PyTorch's (torch.softmax, torch's softmax backward) where
torch is installed. Float32 rows of n entries, as many as make about 2^24 entries; microseconds a launch, the
best of --repeats timed by CUDA events over 20 launches.

    PYTHONPATH=. python benchmarks/softmax_rows.py [--lengths 64,128,256,512,1000,2048,4096] [--block]
"""
from __future__ import annotations

import argparse

import cupy as cp
import numpy as np

from loom.backend.cuda import fused, fused_exact


def _time(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start, stop = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        for _ in range(20):
            fn()
        stop.record()
        stop.synchronize()
        best = min(best, cp.cuda.get_elapsed_time(start, stop) * 1e3 / 20)
    return best


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", default="64,128,256,512,1000,2048,4096")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--block", action="store_true", help="deterministic mode's block kernel at every length")
    p.add_argument("--warp-rows", type=int, metavar="N",
                   help="deterministic rows of up to N entries on a warp a row, longer ones up to HELD_ROWS_MAX "
                        "held by a block (fused_exact.WARP_ROWS_MAX; 0: the block kernel; default: the module's)")
    p.add_argument("--warp-grad-rows", type=int, metavar="N", help="the same for the gradients' rows")
    args = p.parse_args()
    if args.block:
        fused_exact.WARP_ROWS_MAX = fused_exact.WARP_GRAD_ROWS_MAX = 0
    if args.warp_rows is not None:
        fused_exact.WARP_ROWS_MAX = args.warp_rows
    if args.warp_grad_rows is not None:
        fused_exact.WARP_GRAD_ROWS_MAX = args.warp_grad_rows
    torch = _torch()
    rng = np.random.default_rng(0)
    print("| n | rows | det. softmax | fast softmax | torch softmax | det. grad | fast grad | torch grad |")
    print("|---|---|---|---|---|---|---|---|")
    for n in (int(s) for s in args.lengths.split(",")):
        rows = max(1, (1 << 24) // n)
        x = cp.asarray(rng.standard_normal((rows, n)).astype(np.float32) * 3.0)
        y = fused.softmax(x)
        dy = cp.asarray(rng.standard_normal((rows, n)).astype(np.float32))
        times = [_time(lambda: fused_exact.softmax(x), args.repeats), _time(lambda: fused.softmax(x), args.repeats)]
        if torch is not None:
            tx = torch.as_tensor(x, device="cuda")
            times.append(_time(lambda: torch.softmax(tx, -1), args.repeats))
        times += [_time(lambda: fused_exact.softmax_grad(y, dy), args.repeats),
                  _time(lambda: fused.softmax_grad(y, dy), args.repeats)]
        if torch is not None:
            ty, tdy = torch.as_tensor(y, device="cuda"), torch.as_tensor(dy, device="cuda")
            times.append(_time(lambda: torch._softmax_backward_data(tdy, ty, -1, torch.float32), args.repeats))
        if torch is None:
            times.insert(2, float("nan"))
            times.append(float("nan"))
        print(f"| {n} | {rows} | " + " | ".join(f"{t:.1f}" for t in times) + " |")


if __name__ == "__main__":
    main()
