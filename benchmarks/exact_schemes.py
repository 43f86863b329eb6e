"""Deterministic mode's float32 GEMM schemes side by side, and the vendor float32 GEMM (the anchor)
in the same run: the correctly rounded product (loom/kernels/exact/rounded.py) as one float64 GEMM,
and the integer slices as float64 GEMMs and (GPU) on int8 tensor cores
(loom/backend/cuda/exact_int8.py), each forced for every shape here; "shipped" names the scheme the
dispatch table (loom/kernels/exact/dispatch.py) gives the shape, and whether the int8 path takes it.
Also the share of entries the one float64 GEMM's bound leaves to the later stages.

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
from loom.kernels import exact  # noqa: E402
from loom.kernels.exact import dispatch as exact_dispatch
from loom.kernels.exact import rounded as exact_rounded

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
    int8 = None
    if gpu:
        from loom.backend.cuda import exact_int8 as int8
    rng = np.random.default_rng(0)
    print(f"{'M x K x N':<20}{'rounded ms':>12}{'slices ms':>12}{'int8 ms':>10}{'float32 ms':>12}"
          f"{'shipped':>17}{'uncertified %':>15}")
    for m, k, n in GPU_SHAPES if gpu else CPU_SHAPES:
        a = be.asarray(rng.standard_normal((m, k), dtype=np.float32))
        b = be.asarray(rng.standard_normal((k, n), dtype=np.float32))
        shipped = exact_dispatch.matmul_scheme(np.float32, k)
        if int8 is not None and shipped != exact_dispatch.ROUNDED and int8.takes(a, b, exact.narrow_bits(k)):
            shipped += " int8"
        rounded = forced(lambda: exact.matmul(a, b), be, gpu, exact_dispatch.ROUNDED)
        sliced = forced(lambda: exact.matmul(a, b), be, gpu, exact_dispatch.SLICES_2X1, int8, 1 << 62)
        aligned = int8 is not None and m % 16 == k % 16 == n % 16 == 0      # where the int8 path can run
        on_int8 = forced(lambda: exact.matmul(a, b), be, gpu, exact_dispatch.SLICES_2X1, int8, 0) \
            if aligned else float("nan")
        vendor = timed(lambda: be.matmul(a, b), be.synchronize, gpu)
        print(f"{f'{m}x{k}x{n}':<20}{rounded:>12.3f}{sliced:>12.3f}{on_int8:>10.3f}{vendor:>12.3f}{shipped:>17}"
              f"{uncertified(a, b):>15.3f}", flush=True)


def forced(fn, be, gpu: bool, scheme: str, int8=None, min_work: int | None = None) -> float:
    """fn's time with every float32 product given `scheme` (and, on the GPU, the int8 path's size
    floor set to min_work: 0 takes it wherever it can, a huge one never)."""
    saved = exact_dispatch.matmul_scheme, None if int8 is None else int8.MIN_WORK
    exact_dispatch.matmul_scheme = lambda dtype, k: scheme if np.dtype(dtype).itemsize <= 4 else saved[0](dtype, k)
    if int8 is not None and min_work is not None:
        int8.MIN_WORK = min_work
    try:
        return timed(fn, be.synchronize, gpu)
    finally:
        exact_dispatch.matmul_scheme = saved[0]
        if int8 is not None:
            int8.MIN_WORK = saved[1]


if __name__ == "__main__":
    main()
