"""gelu v2 (ships, loom/backend/cuda/fused.py): one ElementwiseKernel with CUDA's single-precision erff for
float32 (erf for float64). Its rounding differs from the reference, which widens erf to float64, by at most
a few float32 ulp; it measured 22-41% faster than v3, which widens as the reference does (README.md)."""
from loom.backend.cuda.fused import gelu, gelu_grad

__all__ = ["gelu", "gelu_grad"]
