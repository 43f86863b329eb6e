"""GPU sorts by dtype and distribution: loom.sort and loom.argsort (Loom's radix sort,
loom/backend/cuda/radix.py) beside cupy.sort/argsort and torch.sort/argsort(stable=True), all on the
same arrays in the same run; then batches of float32 rows sorted along the last axis, with topk
(k = 10) beside torch.topk. Milliseconds, best of 5 after one untimed call.

    PYTHONPATH=. python benchmarks/sort.py [--log2n 28]
"""
from __future__ import annotations

import argparse

import cupy as cp
import numpy as np

import loom
from loom.engine.bench import best

ROWS = [(65536, 128), (8192, 1024), (2048, 4096), (512, 32768), (64, 1 << 20)]


def cases(log2n: int) -> list[tuple[str, cp.ndarray]]:
    rng = np.random.default_rng(0)
    n = 1 << log2n
    return [("float32 normal", rng.standard_normal(n, dtype=np.float32)),
            ("float32 uniform [0, 1)", rng.random(n, dtype=np.float32)),
            ("uint32 uniform", rng.integers(0, 2**32, n, dtype=np.uint32)),
            ("int32 in [0, 1000)", rng.integers(0, 1000, n, dtype=np.int32)),
            ("float16 normal", rng.standard_normal(n).astype(np.float16)),
            (f"float64 normal (2^{log2n - 1})", rng.standard_normal(n // 2)),
            (f"int64 uniform (2^{log2n - 1})", rng.integers(-2**63, 2**63 - 1, n // 2, dtype=np.int64))]


def torch_best(fn, t, sync) -> float | None:
    """best(fn) in seconds, or None without torch or where torch does not sort this dtype (its error then reads
    '"sort_cuda" not implemented for ...'; any other error, out of memory or CUDA's, is raised)."""
    if t is None:
        return None
    try:
        return best(fn, sync)
    except (RuntimeError, NotImplementedError) as exc:
        if "not implemented" not in str(exc):
            raise
        return None


def times(x, t, sync, topk: bool = False) -> list[float | None]:
    """Seconds: loom, CuPy and torch sort, then their argsorts (then loom.topk and torch.topk, k = 10)."""
    out = [best(lambda: loom.sort(x), sync), best(lambda: cp.sort(x), sync),
           torch_best(lambda: t.sort(stable=True), t, sync),
           best(lambda: loom.argsort(x), sync), best(lambda: cp.argsort(x), sync),
           torch_best(lambda: t.argsort(stable=True), t, sync)]
    if topk:
        out += [best(lambda: loom.topk(x, 10), sync), torch_best(lambda: t.topk(10), t, sync)]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log2n", type=int, default=28, help="values per array (2^log2n; the 8-byte ones half)")
    args = parser.parse_args()
    try:
        import torch
    except ImportError:
        torch = None
    sync = cp.cuda.Device().synchronize
    print(f"# {cp.cuda.runtime.getDeviceProperties(0)['name'].decode()}, 2^{args.log2n} values")
    print("| data | loom.sort | cupy.sort | torch.sort | loom.argsort | cupy.argsort | torch.argsort |")
    print("|---|---|---|---|---|---|---|")
    for name, host in cases(args.log2n):
        x = cp.asarray(host)
        t = torch.as_tensor(x, device="cuda") if torch is not None else None
        cells = ["-" if s is None else f"{s * 1e3:.2f}" for s in times(x, t, sync)]
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
        x = t = None          # (the next arrays need the memory)
        cp.get_default_memory_pool().free_all_blocks()
    print("\n| float32 rows | loom.sort | cupy.sort | torch.sort | loom.argsort | cupy.argsort | torch.argsort "
          "| loom.topk 10 | torch.topk 10 |")
    print("|---|---|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(1)
    for shape in ROWS:
        x = cp.asarray(rng.standard_normal(shape, dtype=np.float32))
        t = torch.as_tensor(x, device="cuda") if torch is not None else None
        cells = ["-" if s is None else f"{s * 1e3:.3f}" for s in times(x, t, sync, topk=True)]
        print(f"| {shape[0]} x {shape[1]} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
