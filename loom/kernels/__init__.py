"""Loom's math library: the operations layers use whose results depend on the backend or on
summation order. Layers call these instead of the array module directly, so that deterministic
mode can replace each one in a single place."""
from __future__ import annotations

from ..backend import device_functions

# deterministic mode's transcendentals on the GPU: the CUDA backend compiles these (float and double
# overloads, loom_<name>) into its fused kernels
TRANSCENDENTALS = ("exp", "erf", "tanh", "sigmoid")


def _mathlib_cuda() -> str:
    import numpy as np

    from . import mathlib
    from .ir import lower_cuda
    return "\n".join(lower_cuda.device_function(mathlib.function(name, dtype), f"loom_{name}")
                     for name in TRANSCENDENTALS for dtype in (np.float32, np.float64))


device_functions.register("mathlib", _mathlib_cuda)
