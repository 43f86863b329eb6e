"""Could deterministic language-model products run on the int8 tensor cores? (issue 60: prefill at half of
fast mode's speed.) A fixed-point scheme with two int8 slices a side (benchmarks/product_schemes.py's
"fixed 14/14") is four int8 products, exact in int32; stacked, one int8 GEMM of [2M, K] x [2N, K]. This
times, with PyTorch on the GPU (CUDA events, best of 3 windows of 50 launches), one product of M rows of x
with N rows of W over K: cuBLAS's bf16 GEMM (fast mode's), that stacked int8 GEMM (torch._int_mm), and
a float64 GEMM (DGEMM: the float64 tensor cores that deterministic mode's tiles use), at SmolLM2-135M's
and Llama-3.2-1B's product shapes. The slicing of x and the recombination are not timed (fused into the
product's prologue and epilogue they would be a few percent).

    python benchmarks/int8_products.py [--rows 16,64,512,2048]
"""
import argparse

import torch

SHAPES = {"smol qkv": (960, 576), "smol o": (576, 576), "smol gate_up": (3072, 576), "smol down": (576, 1536),
          "smol lm_head": (49152, 576), "1b qkv": (3072, 2048), "1b o": (2048, 2048),
          "1b gate_up": (16384, 2048), "1b down": (2048, 8192)}


def best_us(fn, launches: int = 50) -> float:
    best = float("inf")
    for _ in range(3):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        fn()
        torch.cuda.synchronize()
        start.record()
        for _ in range(launches):
            fn()
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) / launches * 1e3)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="16,64,512,2048")
    args = ap.parse_args()
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}; us a product")
    print("| product (N x K) | rows of x | bf16 GEMM | int8, 4 products stacked | float64 GEMM | int8 / bf16 | "
          "float64 / bf16 |")
    print("|---|---|---|---|---|---|---|")
    for m in (int(r) for r in args.rows.split(",")):
        for name, (n, k) in SHAPES.items():
            x, w = torch.randn(m, k, device="cuda"), torch.randn(n, k, device="cuda") * 0.02
            xb, wb = x.bfloat16(), w.bfloat16()
            xs = torch.randint(-128, 127, (2 * m, k), device="cuda", dtype=torch.int8)
            ws = torch.randint(-128, 127, (2 * n, k), device="cuda", dtype=torch.int8)
            t_bf16 = best_us(lambda: xb @ wb.T)
            t_int8 = best_us(lambda: torch._int_mm(xs, ws.T))
            xd, wd = x.double(), w.double()
            t_f64 = best_us(lambda: xd @ wd.T, launches=10)
            print(f"| {name} ({n} x {k}) | {m} | {t_bf16:.1f} | {t_int8:.1f} | {t_f64:.1f} | {t_int8 / t_bf16:.2f} | "
                  f"{t_f64 / t_bf16:.2f} |", flush=True)


if __name__ == "__main__":
    main()
