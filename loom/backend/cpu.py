"""The CPU backend: NumPy arrays, NumPy's BLAS for GEMM."""
from __future__ import annotations

import numpy as np


class CPUBackend:
    name = "cpu"
    xp = np

    def asarray(self, x, dtype=None):
        return np.asarray(x, dtype=dtype)

    def to_numpy(self, x) -> np.ndarray:
        return np.asarray(x)

    def matmul(self, a, b):
        return np.matmul(a, b)

    def sum(self, x, axis=None, keepdims: bool = False):
        return np.sum(x, axis=axis, keepdims=keepdims)


CPU = CPUBackend()
