"""Read rate of the batch-1 products of an 8B model's bf16 weights: the 16-byte kernel
(loom/backend/cuda/half_gemv.py) against the general block kernel of loom/backend/cuda/quant.py, and a
device-to-device copy. Run on the device machine:

    PYTHONPATH=. python benchmarks/half_gemv.py

Each product is launched 50 times (after 5 warm-up launches) as the decode step launches it (overlapped,
with its RMSNorm prologue or SwiGLU epilogue); GB/s counts the weight bytes. Short products are bound
by Python's launch cost here, not by the GPU: the decode step replays them from a CUDA graph.
"""
import cupy as cp

from loom.backend.cuda import half_gemv, quant

SHAPES = {"qkv": (6144, 4096, False, True), "o": (4096, 4096, False, False), "gate_up": (28672, 4096, True, True),
          "down": (4096, 14336, False, False), "lm_head": (128256, 4096, False, True)}


def timed(f, n=50) -> float:
    for _ in range(5):
        f()
    start, end = cp.cuda.Event(), cp.cuda.Event()
    start.record()
    for _ in range(n):
        f()
    end.record()
    end.synchronize()
    return cp.cuda.get_elapsed_time(start, end) / n * 1e-3


def main() -> None:
    cp.random.seed(0)
    src = cp.empty(1 << 28, cp.uint8)
    dst = cp.empty_like(src)
    print(f"copy: {2 * src.nbytes / timed(lambda: cp.copyto(dst, src), 20) / 1e9:,.0f} GB/s (read + written)")
    real = half_gemv.supports
    print(f"{'product':<9}{'general GB/s':>14}{'16-byte GB/s':>14}")
    for name, (rows, cols, swiglu, normed) in SHAPES.items():
        w = (cp.random.randint(0, 65535, (rows, cols), dtype=cp.uint16) & 0xBFFF).view(cp.uint8)  # finite bf16
        x = cp.random.standard_normal((1, cols), dtype=cp.float32)
        norm = cp.ones(cols, cp.float32) if normed else None
        out = cp.empty((1, rows // 2 if swiglu else rows), cp.float32)
        rates = []
        for supports in (lambda *a: False, real):
            half_gemv.supports = supports
            try:
                t = timed(lambda: quant.gemv(w, "BF16", x, out, norm=norm, eps=1e-5, swiglu=swiglu, overlap=True))
            finally:
                half_gemv.supports = real
            rates.append(w.nbytes / t / 1e9)
        print(f"{name:<9}{rates[0]:>14,.0f}{rates[1]:>14,.0f}", flush=True)


if __name__ == "__main__":
    main()
