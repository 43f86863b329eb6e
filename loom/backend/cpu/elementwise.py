"""Elementwise updates as compiled loops (numba, the optional `loom[cpu]` extra, loaded by
loom.backend.cpu.jit) with the bits of their NumPy references in loom.kernels.fused.

Why: the NumPy form of an optimizer step is several whole-array ufunc calls with temporaries
(`p -= lr * g` writes and rereads a weight-sized array); one loop reads each array once. At
benchmarks/cpu_mlp.py's shapes the SGD step of a [256, 784] weight was slow in NumPy.

Strict IEEE arithmetic (no fastmath: no FMA contraction, nothing reordered), each operation in the
reference's order and in the parameter's dtype, with the reference's Python-float constants
converted to that dtype first (NumPy's rule for Python scalars); so deterministic mode may use
these loops too. Single-threaded, as exact_jit explains.
"""
from __future__ import annotations

import numpy as np

from .. import Array
from . import jit as cpu_jit

_LOOPS = ("_sgd",)
_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def available() -> bool:
    return cpu_jit.compile_module(globals(), plain=_LOOPS)


def takes(*arrays: Array | None) -> bool:
    """Whether the loops take these NumPy arrays (None entries are absent arguments): all C-contiguous,
    of one shape and one dtype, float32 or float64."""
    first = arrays[0]
    return (type(first) is np.ndarray and first.dtype in _DTYPES and all(
        a is None or (type(a) is np.ndarray and a.dtype == first.dtype and a.shape == first.shape
                      and a.flags.c_contiguous) for a in arrays) and first.flags.writeable)


def scalar(value: float | Array, dtype: np.dtype) -> np.floating | None:
    """value as a scalar of dtype where NumPy's `value * array` would compute in dtype (a Python
    number, or a 0-d array or scalar of dtype itself), else None."""
    if isinstance(value, (int, float)):
        return dtype.type(value)
    if isinstance(value, (np.ndarray, np.generic)) and value.shape == () and value.dtype == dtype:
        return dtype.type(value)
    return None


def sgd_update(p: np.ndarray, g: np.ndarray, buf: np.ndarray | None, lr: np.floating, momentum: float,
               dampening: float, nesterov: bool, wd: float, first: bool) -> None:
    """fused.sgd_update's reference, one pass (lr from scalar())."""
    t = p.dtype.type
    has_momentum = momentum != 0
    _sgd(p.reshape(-1), g.reshape(-1), (buf if has_momentum else p).reshape(-1), lr, t(wd), t(momentum),
         t(1 - dampening), wd != 0, has_momentum, bool(first), bool(nesterov))


def _sgd(p, g, buf, lr, wd, momentum, keep, has_wd, has_momentum, first, nesterov):
    for i in range(p.shape[0]):
        step = g[i]
        if has_wd:
            step = step + wd * p[i]
        if has_momentum:
            b = step if first else buf[i] * momentum + keep * step
            buf[i] = b
            step = step + momentum * b if nesterov else b
        p[i] = p[i] - lr * step
