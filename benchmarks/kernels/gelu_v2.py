"""gelu v2: one ElementwiseKernel with CUDA's single-precision erff for float32 (erf for float64). Fastest
on GPUs with slow float64, but erff's rounding differs from the reference, which widens erf to float64."""
from functools import lru_cache

import cupy

from loom.backend import cuda_kernels as ck

_ERFF = r"""
__device__ __forceinline__ float loom_erf_narrow(float x) { return erff(x); }
__device__ __forceinline__ double loom_erf_narrow(double x) { return erf(x); }
"""


@lru_cache(maxsize=None)
def _kernels():
    preamble = ck._HELPERS + _ERFF
    forward = cupy.ElementwiseKernel(
        "T x", "T y", f"y = (T)0.5 * x * ((T)1 + loom_erf_narrow(x * (T){ck._INV_SQRT2}));",
        "loom_gelu_v2", preamble=preamble, options=ck.OPTIONS)
    grad = cupy.ElementwiseKernel(
        "T x, T dy", "T dx",
        f"const T cdf = (T)0.5 * ((T)1 + loom_erf_narrow(x * (T){ck._INV_SQRT2}));"
        f"dx = dy * (cdf + x * (T){ck._INV_SQRT_2PI} * loom_exp((T)-0.5 * x * x));",
        "loom_gelu_grad_v2", preamble=preamble, options=ck.OPTIONS)
    return forward, grad


def gelu(x):
    return _kernels()[0](x)


def gelu_grad(x, dy):
    return _kernels()[1](x, dy)
