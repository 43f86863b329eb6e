"""Deterministic mode's exact GEMM and sum kernels on the GPU, as one namespace:
`CUDABackend.exact` (CUDAExact, protocols.ExactKernels) calls its kernels here.

The kernels live by scheme:
- exact_slices.py: the slice scheme (matmul_narrow, matmul_narrow_chunks) and the special-value guard
  (guardable, patch_specials); large products go to exact_int8.py's int8 tensor-core form;
- exact_rounded.py: the rounded scheme (matmul_rounded), and ROUNDED_DEVICE for the decode kernels;
- exact_reduce.py: the maxima that scale the slices (absmax, gemm_maxima) and the exact sums
  (sum_float32).
C_TYPES (fused.py) names the dtypes these kernels take. Nothing is defined here: a test that patches
a module-level setting patches it in the module that defines it (exact_slices, exact_rounded).
"""
from __future__ import annotations

from .exact_reduce import absmax, gemm_maxima, sum_float32, sum_float32_across
from .exact_rounded import matmul_rounded
from .exact_slices import combine_parts, guardable, matmul_narrow, matmul_narrow_chunks, patch_specials, slice_parts
from .fused import C_TYPES

__all__ = ["C_TYPES", "absmax", "combine_parts", "gemm_maxima", "guardable", "matmul_narrow", "matmul_narrow_chunks",
           "matmul_rounded", "patch_specials", "slice_parts", "sum_float32",
           "sum_float32_across"]
