"""Keep float32 subnormals in every kernel CuPy compiles (the CUDA backend applies this on start).

CuPy appends `-ftz=true` after the caller's options for every kernel it compiles with NVRTC
(cupy/cuda/compiler.py `_compile_with_cache_cuda`; cupy issue #9576), so Loom's `--ftz=false` lost,
and every float32 operation on the GPU, Loom's kernels and CuPy's own ufuncs and reductions alike,
flushed subnormal inputs and results to zero where NumPy keeps them: a sum holding 1e-39 gave
different bits on the two backends. Deterministic mode promises NumPy's bits, subnormals included.

So the compiler is wrapped: every kernel compiled from then on carries a marker option (so CuPy's disk
cache keeps these builds apart from flushing ones) and goes to NVRTC without `-ftz=true`. This affects
every CuPy kernel compiled in the process afterwards; on current GPUs float32 add, multiply and FMA
run at full speed on subnormals. Kernels CuPy compiled before (it caches them in memory) keep
flushing: `check()` finds that out, and the backend then refuses deterministic mode (DeterminismError;
fast mode logs it once: loom/backend/cuda/__init__.py `check_subnormals`).
"""
from __future__ import annotations

import functools
from types import ModuleType

MARKER = "-DLOOM_KEEP_SUBNORMALS"
_FLUSH = ("-ftz=true", "--ftz=true")


def install(compiler: ModuleType) -> bool:
    """Wrap cupy.cuda.compiler (idempotent); False where its internals are not the expected ones."""
    cached = getattr(compiler, "_compile_with_cache_cuda", None)
    nvrtc = getattr(compiler, "_compile_using_nvrtc_no_warning", None)
    if cached is None or nvrtc is None:
        return False
    if getattr(cached, "loom_keeps_subnormals", False):
        return True

    @functools.wraps(cached)
    def compile_with_cache(source, options=(), *args, **kwargs):
        return cached(source, tuple(options) + (MARKER,), *args, **kwargs)

    @functools.wraps(nvrtc)
    def compile_nvrtc(source, options=(), *args, **kwargs):
        options = tuple(options)
        if MARKER in options:
            options = tuple(o for o in options if o not in _FLUSH)
        return nvrtc(source, options, *args, **kwargs)

    compile_with_cache.loom_keeps_subnormals = True
    compiler._compile_with_cache_cuda = compile_with_cache
    compiler._compile_using_nvrtc_no_warning = compile_nvrtc
    return True


def check(cupy: ModuleType) -> bool:
    """Whether a float32 subnormal survives CuPy's multiply and a widening to float64."""
    x = cupy.asarray([1e-40], dtype=cupy.float32)
    return bool((x * cupy.float32(1)).item() != 0 and x.astype(cupy.float64).item() != 0)
