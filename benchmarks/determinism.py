"""Deterministic mode's cost (issue 6): exact GEMM against the vendor GEMM, and deterministic train
steps against fast mode, in the same run.

    PYTHONPATH=. python benchmarks/determinism.py          # GPU (device machine) and CPU
    .venv/bin/python benchmarks/determinism.py --cpu        # CPU only

GPU: loom.kernels.exact.matmul on float32 at 4096^3 and 8192^3 (the slice scheme: as shipped, on int8
tensor cores, and forced onto the two float64 slices' DGEMM) vs cuBLAS SGEMM (TF32 off), DGEMM and
one int8 GEMM (int32 sums; the exact product runs nine); the train steps of benchmarks/gpu_train.py
as dispatch chains in both modes. CPU: exact GEMM vs NumPy float32 matmul (2 BLAS threads).
"""
import os
import statistics
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "2")

import numpy as np  # noqa: E402

from loom import backend  # noqa: E402
from loom.kernels import exact  # noqa: E402


def timed(fn, sync, repeats=5, inner=3):
    fn()
    sync()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(inner):
            fn()
        sync()
        out.append((time.perf_counter() - t) / inner)
    return statistics.median(out)


def timed_together(fns, sync, rounds=7, sample_s=0.02):
    """Each fn's median time over `rounds` rounds that run every fn in turn, each sample calls
    enough to take about sample_s: a machine whose speed drifts (a shared VM) slows all alike."""
    inner = []
    for fn in fns:
        inner.append(max(3, int(sample_s / max(timed(fn, sync, repeats=1, inner=3), 1e-7))))
    samples = [[] for _ in fns]
    for _ in range(rounds):
        for fn, n, out in zip(fns, inner, samples):
            out.append(timed(fn, sync, repeats=1, inner=n))
    return [statistics.median(out) for out in samples]


def gemm_rows(be, sizes):
    rng = np.random.default_rng(0)
    int8 = None
    if be.name == "cuda":       # the int8 tensor-core slices, against the float64 ones they replace
        from loom.backend.cuda import exact_int8 as int8
    rows = []
    for m, k, n in sizes:
        a32 = be.asarray(rng.standard_normal((m, k), dtype=np.float32))
        b32 = be.asarray(rng.standard_normal((k, n), dtype=np.float32))
        a64, b64 = a32.astype(np.float64), b32.astype(np.float64)
        flops = 2.0 * m * k * n
        t_exact, t_s, t_d = timed_together(
            [lambda: exact.matmul(a32, b32), lambda: be.matmul(a32, b32), lambda: be.matmul(a64, b64)], be.synchronize)
        row = [f"{m}x{k}x{n}", flops / t_exact / 1e12, flops / t_s / 1e12, flops / t_d / 1e12, t_s / t_exact]
        if int8 is not None:
            saved, int8.MIN_WORK = int8.MIN_WORK, 1 << 62       # the float64 slices: same bits, for comparison
            try:
                t_f64 = timed(lambda: exact.matmul(a32, b32), be.synchronize)
            finally:
                int8.MIN_WORK = saved
            i8a = be.xp.ones((1, m, k), dtype=np.int8)
            i8b = be.xp.ones((1, n, k), dtype=np.int8)
            t_i8 = timed(lambda: be.blas.gemm_int8(i8a, i8b), be.synchronize)
            row += [flops / t_f64 / 1e12, flops / t_i8 / 1e12, t_s / t_f64]
        rows.append(row)
    head = f"{'shape':<16}{'exact TFLOP/s':>14}{'SGEMM':>9}{'DGEMM':>9}{'exact/SGEMM':>12}"
    print(head + (f"{'f64 slices':>11}{'int8 TOP/s':>11}{'f64 slices/SGEMM':>17}" if int8 is not None else ""))
    for r in rows:
        line = f"{r[0]:<16}{r[1]:>14.3f}{r[2]:>9.3f}{r[3]:>9.3f}{r[4]:>11.2f}x"
        print(line + (f"{r[5]:>11.3f}{r[6]:>11.1f}{r[7]:>16.2f}x" if int8 is not None else ""))


def train_rows():
    sys.path.insert(0, os.path.dirname(__file__))
    import gpu_train
    print(f"{'train step (dispatch chain)':<28}{'fast ms':>10}{'deterministic ms':>18}{'det/fast':>10}")
    for name, cfg, batch in gpu_train.cases()[:4]:      # issue 5's four (gpu_train.py times the others)
        fast = gpu_train.loom_steps(cfg, batch, deterministic=False, modes=(True,))[0]
        det = gpu_train.loom_steps(cfg, batch, deterministic=True, modes=(True,))[0]
        print(f"{name:<28}{fast:>10.3f}{det:>18.3f}{det / fast:>9.2f}x")


def main():
    cpu_only = "--cpu" in sys.argv
    if not cpu_only:
        cuda = backend.get("cuda")
        import cupy
        cupy.cuda.Device().use()
        print(f"GPU: {cuda.devices()[0]['name']}; CuPy {cupy.__version__}")
        gemm_rows(cuda, [(4096, 4096, 4096), (8192, 8192, 8192)])
        train_rows()
    cpu = backend.get("cpu")
    print(f"CPU: {os.cpu_count()} cores, NumPy {np.__version__}, OPENBLAS_NUM_THREADS={os.environ['OPENBLAS_NUM_THREADS']}")
    gemm_rows(cpu, [(256, 784, 256), (32, 784, 256), (1024, 1024, 1024)])


if __name__ == "__main__":
    main()
