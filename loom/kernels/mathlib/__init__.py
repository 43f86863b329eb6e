"""Loom's deterministic math library: transcendental functions written once in the kernel IR.

    mathlib.evaluate("gelu", x)                 # on x's backend, same dtype as x
    src, name = mathlib.kernel_source("gelu", np.float32)   # CUDA C for RawModule(--fmad=false)

Each function is a fixed sequence of correctly rounded IEEE operations, so every backend that
lowers the IR computes the same bits: NumPy here, CUDA C on the GPU, and the host C compile the
tests use. float32 functions compute in float64 and round once (within 1 ulp); float64 functions
reduce their arguments carefully (within 2 ulp, mostly 1). docs/mathlib.md has each method and the
measured error table (benchmarks/mathlib_accuracy.py reproduces it).

Every result NaN is the canonical quiet NaN (0x7fc00000 / 0x7ff8000000000000): hardware differs in
which NaN payload an operation returns, and bit-identical means NaNs too.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable
from functools import cache

import numpy as np
from numpy.typing import DTypeLike

from ... import backend
from ...backend import Array
from .. import ir
from ..ir import lower_cuda, lower_numba, lower_numpy
from . import core as mathlib_core
from . import exp as mathlib_exp
from . import special as mathlib_special
from . import trig as mathlib_trig

_IMPL = {
    "exp": mathlib_core.exp, "log": mathlib_core.log, "log1p": mathlib_core.log1p,
    "expm1": mathlib_core.expm1, "tanh": mathlib_exp.tanh, "sigmoid": mathlib_exp.sigmoid,
    "softplus": mathlib_exp.softplus, "silu": mathlib_exp.silu, "pow": mathlib_exp.pow_,
    "erf": mathlib_special.erf, "gelu": mathlib_special.gelu, "gelu_tanh": mathlib_special.gelu_tanh,
    "sin": mathlib_trig.sin, "cos": mathlib_trig.cos,
}

FUNCTIONS: dict[str, dict] = {
    "exp": {"arity": 1, "domain": "all x; 0 below -745.13 (f32: -103.97), inf above 709.78 (f32: 88.72)"},
    "log": {"arity": 1, "domain": "x >= 0; log(0) = -inf, x < 0 gives NaN"},
    "log1p": {"arity": 1, "domain": "x >= -1; log1p(-1) = -inf, x < -1 gives NaN, log1p(-0) = -0"},
    "expm1": {"arity": 1, "domain": "all x; -1 below -38 (f32: -17), expm1(-0) = -0"},
    "tanh": {"arity": 1, "domain": "all x; odd, tanh(-0) = -0"},
    "sigmoid": {"arity": 1, "domain": "all x; 1 / (1 + e^-x), subnormal results below -708"},
    "softplus": {"arity": 1, "domain": "all x; log(1 + e^x) without overflow"},
    "silu": {"arity": 1, "domain": "all x; x * sigmoid(x)"},
    "pow": {"arity": 2, "domain": "C99 Annex F special cases; x < 0 needs an integer y"},
    "erf": {"arity": 1, "domain": "all x; odd"},
    "gelu": {"arity": 1, "domain": "all x; x * Phi(x) = x/2 (1 + erf(x / sqrt 2))"},
    "gelu_tanh": {"arity": 1, "domain": "all x; x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))"},
    "sin": {"arity": 1, "domain": "|x| < 2^20 (f32: 2^29); NaN beyond, and for inf"},
    "cos": {"arity": 1, "domain": "|x| < 2^20 (f32: 2^29); NaN beyond, and for inf"},
}

_TYPES = {np.dtype(np.float32): ir.F32, np.dtype(np.float64): ir.F64}
_CANONICAL_NAN_BITS = {ir.F32: 0x7FC00000, ir.F64: 0x7FF8000000000000}


def _float_type(dtype) -> ir.Type:
    try:
        return _TYPES[np.dtype(dtype)]
    except (KeyError, TypeError):
        raise TypeError(f"mathlib works on float32 and float64, not {dtype}") from None


def _check_name(name: str) -> None:
    if name not in _IMPL:
        raise KeyError(f"no mathlib function {name!r}; known: {', '.join(sorted(_IMPL))}")


@cache
def function(name: str, dtype: DTypeLike) -> ir.Function:
    """The IR of `name` for float32 or float64 arguments (cached; the same object every time)."""
    _check_name(name)
    type_ = _float_type(dtype)
    grade = mathlib_core.F64 if type_ == ir.F64 else mathlib_core.F32

    def body(b, *args):
        wide = [b.convert(a, ir.F64) for a in args]
        result = b.convert(_IMPL[name](b, grade, *wide), type_)
        nan = b.bitcast(b.const(_CANONICAL_NAN_BITS[type_], ir.int_type(type_.bits, False)), type_)
        return b.select(b.isnan(result), nan, result)

    return ir.function(f"{name}_{type_.name}", [type_] * FUNCTIONS[name]["arity"], body)


def evaluate(name: str, *arrays: Array) -> Array:
    """`name` applied element-wise; all arrays of one dtype (float32 or float64), broadcastable.
    Returns an array of that dtype, from the owning backend's compiled element-wise kernels (the
    GPU's CUDA C; the CPU's numba loops where the loom[cpu] extra is installed), else through
    lower_numpy: the same bits every way."""
    _check_name(name)
    if len(arrays) != FUNCTIONS[name]["arity"]:
        raise TypeError(f"{name} takes {FUNCTIONS[name]['arity']} arrays, got {len(arrays)}")
    if not all(hasattr(a, "dtype") for a in arrays):
        raise TypeError(f"{name} takes arrays (their dtype picks float32 or float64), got "
                        f"{[type(a).__name__ for a in arrays]}")
    dtypes = {np.dtype(a.dtype) for a in arrays}
    if len(dtypes) != 1:
        raise TypeError(f"{name}: arguments have different dtypes {sorted(map(str, dtypes))}")
    dtype = dtypes.pop()
    be = backend.of(arrays[0])
    kernels = be.elementwise
    if kernels is None:
        return lower_numpy.evaluate(function(name, dtype), *arrays, xp=be.xp)
    source, kernel = lowered(name, dtype, kernels.language)
    return kernels.run(source, kernel, arrays, [dtype])[0]


def host_loop(name: str, dtype: DTypeLike) -> Callable | None:
    """`name` as the CPU's compiled loop, called loop(x0[, x1], y0) on flat C-contiguous arrays of
    `dtype` of one length: evaluate's work and bits without its checks and dispatch, for callers that
    make many small calls (a deterministic decode step's exp and sigmoid, each layer); None where the
    CPU has no compiled loops (numba missing or switched off)."""
    _check_name(name)
    _float_type(dtype)
    kernels = backend.get("cpu").elementwise
    if kernels is None:
        return None
    return kernels.loop(*lowered(name, dtype, kernels.language))


@cache
def lowered(name: str, dtype: DTypeLike, language: str) -> tuple[str, str]:
    """(source, function name) of `name`'s IR lowered to `language`: "cuda" (kernel_source) or
    "numba" (lower_numba's module text, whose loop is `kernel`)."""
    if language == "cuda":
        return kernel_source(name, dtype)
    if language == "numba":
        return lower_numba.source(function(name, dtype)), "kernel"
    raise ValueError(f"no IR lowering to {language!r}; expected 'cuda' or 'numba'")


@cache
def kernel_source(name: str, dtype: DTypeLike) -> tuple[str, str]:
    """(CUDA C source, kernel name) of the element-wise kernel
    `extern "C" __global__ void loom_<name>_<f32|f64>(const T* x0[, const T* x1], T* y0, long long n)`.
    The text depends only on the IR: cache compiled modules by source_hash(source)."""
    fn = function(name, dtype)
    kernel = f"loom_{fn.name}"
    return lower_cuda.elementwise_kernel(fn, kernel), kernel


def source_hash(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()


def op_count(name: str, dtype: DTypeLike) -> int:
    """IR operations one element costs (constants and parameters excluded)."""
    return sum(1 for n in function(name, dtype).live_nodes() if n.op not in ("const", "param"))
