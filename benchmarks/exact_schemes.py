"""Deterministic mode's float32 GEMM schemes side by side, and the vendor float32 GEMM (the anchor)
in the same run: the correctly rounded product (loom/kernels/exact_rounded.py) as one float64 GEMM,
the same summed in pieces (shipped for 2048 < K <= 2^15 where the pieces' results fit:
exact_rounded.span), and the integer slices (on the GPU, large ones on int8 tensor cores:
loom/backend/cuda_exact_int8.py), each forced for every shape here by setting exact_rounded's limits;
"shipped" names the one exact.matmul takes. Also the share of entries the one float64 GEMM's bound
leaves to the later stages.

    PYTHONPATH=. python benchmarks/exact_schemes.py            # GPU (device machine)
    .venv/bin/python benchmarks/exact_schemes.py --cpu          # CPU (2 BLAS threads)

Milliseconds, median of 5 x 3 on the GPU, best of 15 on the CPU.
"""
import os
import statistics
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "2")

import numpy as np  # noqa: E402

from loom import backend  # noqa: E402
from loom.kernels import exact, exact_rounded  # noqa: E402

GPU_SHAPES = [(4096, 784, 4096), (4096, 2048, 4096), (4096, 4096, 4096), (8192, 512, 2048), (8192, 2048, 512),
              (256 * 784, 288, 32), (256 * 784, 32, 288), (32, 784, 256),
              # weight gradients (K = batch x positions): the convnet's second convolution, the encoder's
              (288, 256 * 196, 64), (512, 32 * 256, 512), (512, 32 * 256, 2048)]
CPU_SHAPES = [(256, 784, 256), (32, 784, 256), (256, 32, 784), (1024, 1024, 1024), (288, 64 * 196, 64),
              (1024, 4096, 1024)]


def timed(fn, sync, gpu: bool) -> float:
    fn()
    sync()
    times = []
    for _ in range(5 if gpu else 15):
        t = time.perf_counter()
        for _ in range(3 if gpu else 1):
            fn()
        sync()
        times.append((time.perf_counter() - t) / (3 if gpu else 1))
    return (statistics.median(times) if gpu else min(times)) * 1e3


def uncertified(a, b) -> float:
    """Percent of entries whose float32 rounding the float64 GEMM's error bound leaves open."""
    xp = backend.of(a).xp
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    r = a64 @ b64
    e = xp.linalg.norm(a64, axis=1)[:, None] * xp.linalg.norm(b64, axis=0)[None, :] \
        * exact_rounded.error_factor(a.shape[1]) + abs(r) * 2.0 ** -52
    return float(((r - e).astype(np.float32) != (r + e).astype(np.float32)).mean()) * 100


def main():
    gpu = "--cpu" not in sys.argv
    be = backend.get("cuda" if gpu else "cpu")
    rng = np.random.default_rng(0)
    print(f"{'M x K x N':<20}{'rounded ms':>12}{'pieces ms':>12}{'slices ms':>12}{'float32 ms':>12}"
          f"{'shipped':>9}{'uncertified %':>15}")
    for m, k, n in GPU_SHAPES if gpu else CPU_SHAPES:
        a = be.asarray(rng.standard_normal((m, k), dtype=np.float32))
        b = be.asarray(rng.standard_normal((k, n), dtype=np.float32))
        split = exact_rounded.span(k, m * n)
        shipped = "slices" if split is None else "rounded" if split[1] == 1 else "pieces"
        rounded = forced(lambda: exact.matmul(a, b), be, gpu, max_k=1 << 30)
        pieces = forced(lambda: exact.matmul(a, b), be, gpu, pieced_k=1 << 30) \
            if k > exact_rounded.MAX_K else float("nan")
        sliced = forced(lambda: exact.matmul(a, b), be, gpu, max_k=0)
        vendor = timed(lambda: be.matmul(a, b), be.synchronize, gpu)
        print(f"{f'{m}x{k}x{n}':<20}{rounded:>12.3f}{pieces:>12.3f}{sliced:>12.3f}{vendor:>12.3f}{shipped:>9}"
              f"{uncertified(a, b):>15.3f}", flush=True)


def forced(fn, be, gpu: bool, max_k: int | None = None, pieced_k: int | None = None) -> float:
    """fn's time with exact_rounded's limits set (None: as shipped): MAX_K 0 forces the slices, a
    huge MAX_K a single float64 GEMM, a huge MAX_PIECED_K the pieces at any K and size."""
    saved = exact_rounded.MAX_K, exact_rounded.MAX_PIECED_K, exact_rounded.MAX_PIECE_ENTRIES
    exact_rounded.MAX_K = saved[0] if max_k is None else max_k
    if pieced_k is not None:
        exact_rounded.MAX_PIECED_K, exact_rounded.MAX_PIECE_ENTRIES = pieced_k, 1 << 62
    try:
        return timed(fn, be.synchronize, gpu)
    finally:
        exact_rounded.MAX_K, exact_rounded.MAX_PIECED_K, exact_rounded.MAX_PIECE_ENTRIES = saved

if __name__ == "__main__":
    main()
