"""The CPU backend: NumPy arrays, NumPy's BLAS for GEMM, and compiled loops (numba, the optional
`loom[cpu]` extra) for the kernel families it accelerates (loom/backend/protocols.py):

- exact: deterministic mode's GEMM and sums (exact.py, exact_jit.py, rounded.py, rounded_gemv.py);
- quant: products with GGUF block weights read in place (gemv.py, rounded_gemv.py);
- elementwise: IR functions as one compiled loop each (jit.py loads what ir/lower_numba writes);
- windows: the sliding-window data movement of convolutions and pooling (windows.py).

Fused row kernels and decode graphs have no CPU kernels: NumPy running the references in
loom/kernels is the CPU's implementation (fused, fused_exact, decode None); without numba, so are
the references of the families above.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from ... import mixed_precision
from . import attend_integer as attend_integer_module
from . import dequant, exact, gemv, jit, rounded, rounded_gemv
from .windows import CPUWindows


class CPUExact:
    """Deterministic mode's reductions on the CPU (protocols.ExactKernels): the reference's bits."""

    def __init__(self, be: CPUBackend):
        self._be = be

    def absmax(self, x: np.ndarray, axis: int | tuple[int, ...]) -> np.ndarray | None:
        return exact.absmax(x, axis) if x.dtype in (np.float32, np.float64) else None

    def gemm_maxima(self, a: np.ndarray, b: np.ndarray) -> None:
        return None             # two absmax passes: nothing to share on the CPU

    def matmul_rounded(self, a: np.ndarray, b: np.ndarray, factor: float) -> tuple[np.ndarray, bool] | None:
        if rounded_gemv.takes_stack(a, b):      # decode-sized stacks (attention): special values included
            return rounded_gemv.matmul_stack(a, b, factor), True
        return rounded.matmul(self._be, a, b, factor)

    def matmul_sliced(self, a: np.ndarray, b: np.ndarray, bits: tuple[int, int]) -> np.ndarray | None:
        if a.dtype != np.float32 or b.dtype != np.float32:
            return None
        return exact.matmul_2d(self._be, a, b, *bits)

    def matmul_narrow(self, a: np.ndarray, b: np.ndarray, amax: np.ndarray, bmax: np.ndarray,
                      bits: tuple[int, int], dtype: DTypeLike, guarded: bool) -> np.ndarray:
        return exact.matmul_narrow(self._be, a, b, exact.narrow_scales(amax, bmax, bits), dtype)

    def matmul_narrow_chunks(self, a: np.ndarray, b: np.ndarray, amax: np.ndarray, bmax: np.ndarray,
                             bits: tuple[int, int], dtype: DTypeLike, step: int) -> None:
        return None             # chunk by chunk: a CPU gains nothing from running them together

    def slice_parts(self, a: np.ndarray, b: np.ndarray, amax: np.ndarray, bmax: np.ndarray,
                    bits: tuple[int, int]) -> None:
        return None             # exact.over_batch's NumPy passes are the CPU's

    def combine_parts(self, parts: np.ndarray, amax: np.ndarray, bmax: np.ndarray, bits: tuple[int, int],
                      dtype: DTypeLike) -> None:
        return None

    def special_guard(self, a: np.ndarray, b: np.ndarray) -> None:
        return None             # the caller checks for inf and NaN on the host and patches

    def sum_float32(self, x: np.ndarray, axes: tuple[int, ...], bits: int) -> np.ndarray | None:
        return exact.sum_float32(x, axes, bits)

    def sum_float32_across(self, x: np.ndarray, axes: tuple[int, ...], bits: int,
                           all_reduce: Callable[[np.ndarray, str], None]) -> None:
        return None             # exact.over_batch's float64 passes are the CPU's

    def cumsum_float32(self, x: np.ndarray, axis: int, bits: int) -> None:
        return None             # the reference's float64 passes are the CPU's


class CPUQuant:
    """Products with GGUF block weights on the CPU (protocols.QuantKernels): compiled loops over the
    stored bytes where numba is installed."""

    # float32 bytes of W decoded at once where no kernel takes a product: with the exact GEMM's
    # temporaries, about 1 MiB stays in a 2 MiB L2 (faster than 256 KiB or 4 MiB blocks, and than
    # decoding the whole weight first)
    dequantize_bytes = 1 << 20
    tensor_cores = False        # matmul_t_bf16 declines

    @property
    def TYPES(self) -> tuple[str, ...]:     # noqa: N802 - the protocol's constant, known only once numba loads
        return gemv.TYPES if jit.available() else ()

    def matmul_t(self, x2: np.ndarray, data: np.ndarray, qtype: str, out: np.ndarray) -> bool:
        if not gemv.supports(qtype, x2.shape[0]):
            return False
        gemv.matmul_t(x2, data, qtype, out)
        return True

    def matmul_t_exact(self, x2: np.ndarray, data: np.ndarray, qtype: str, out: np.ndarray, tables: dict,
                       factor: float | None = None, bits: tuple | None = None) -> bool:
        if bits is not None or not rounded_gemv.supports(qtype, x2.shape[0], x2.shape[1]):
            return False
        rounded_gemv.matmul_t(x2, data, qtype, out, factor)
        return True

    def exact_wide(self, qtype: str, cols: int, sliced: bool) -> bool:
        return False            # matmul_t_exact: decode-sized x only (rounded_gemv.MAX_ROWS)

    fixed_epilogues = False

    def matmul_t_fixed(self, x2: np.ndarray, data: np.ndarray, qtype: str, out: np.ndarray, tables: dict,
                       bias: np.ndarray | None = None, residual: np.ndarray | None = None, swiglu: bool = False,
                       norm: np.ndarray | None = None, normed: np.ndarray | None = None, eps: float = 0.0) -> bool:
        from . import fixed_gemv  # the compiled loops (numba): W read in place, x of any rows
        if (bias is not None or residual is not None or swiglu or norm is not None or x2.shape[0] == 0
                or not self.fixed_wide(qtype, x2.shape[1])):
            return False
        if "fixed_exponents_jit" not in tables:
            ew, bad = fixed_gemv.w_exponents(data, qtype, x2.shape[1])
            tables["fixed_exponents_jit"] = ew, bool(bad.any())
        ew, bad = tables["fixed_exponents_jit"]
        if bad:                 # (rows holding inf or NaN: the array code patches IEEE's values in)
            return False
        if x2.shape[0] <= fixed_gemv.MAX_ROWS:
            return fixed_gemv.matmul_t(x2, data, qtype, ew, out)
        return fixed_gemv.matmul_t_wide(x2, data, qtype, ew, out)

    def fixed_wide(self, qtype: str, cols: int) -> bool:
        from . import fixed_gemv
        return qtype in fixed_gemv.TYPES and cols < fixed_gemv.MAX_K and fixed_gemv.available()

    def dequantize(self, data: np.ndarray, qtype: str, out: np.ndarray) -> bool:
        # the compiled loops for the 32-value block types (gguf's bits); else gguf's array code
        if data.ndim != 2 or not data.shape[0] or qtype not in dequant.TYPES:
            return False
        return dequant.dequantize(data, qtype, out.reshape(data.shape[0], -1))

    def dequantize_bf16(self, data: np.ndarray, qtype: str, out: np.ndarray) -> bool:
        return False            # no bfloat16 products: tensor_cores is False

    def to_bf16(self, x: np.ndarray) -> None:
        return None

    def matmul_t_bf16(self, x2: np.ndarray, w16: np.ndarray, out: np.ndarray, accumulate: bool = False) -> bool:
        return False


class CPUElementwise:
    """IR functions compiled by numba into one loop each (protocols.ElementwiseKernels)."""

    language = "numba"

    def run(self, source: str, name: str, inputs: Sequence[np.ndarray],
            out_dtypes: Sequence[DTypeLike]) -> list[np.ndarray]:
        shape = inputs[0].shape
        if all(a.shape == shape and a.flags.c_contiguous for a in inputs):
            flat = [a.reshape(-1) for a in inputs]         # (the usual case: no broadcast views to build)
        else:
            shape = np.broadcast_shapes(*(a.shape for a in inputs))
            flat = [np.ascontiguousarray(np.broadcast_to(a, shape)).reshape(-1) for a in inputs]
        outs = [np.empty(shape, dtype=d) for d in out_dtypes]
        self.loop(source, name)(*flat, *(o.reshape(-1) for o in outs))
        return outs

    @staticmethod
    def loop(source: str, name: str) -> Callable:
        """The compiled loop `name` of the generated module `source`: loop(*inputs, *outputs) over flat
        C-contiguous arrays of one length."""
        return getattr(jit.load_source(source), name)


class CPUBackend:
    name = "cpu"
    xp = np
    host = True
    graphs = False      # steps run eagerly; there is no launch overhead to record away
    fused = None        # NumPy's passes over loom.kernels.fused's references are the CPU's
    fused_exact = None
    decode = None       # decode graphs record GPU launches
    compute = None      # the engine runs kernels with NumPy (loom.kernels.ir.kernel_numpy) here
    order = None        # order_keys composes its keys from NumPy operations
    sorts = None        # loom.sort sorts those keys with NumPy's stable sort
    search = None       # loom.db.search's NumPy path is its CPU kernel
    flash = None        # prompts' attention composes its products and softmax (llm/decoder.py)
    flash_exact = None  # (in both modes)
    attend_integer = attend_integer_module   # spec 5's attention rows, compiled (numba; else the array code)
    prefill = None      # and their layers compose their element-wise steps
    collectives = None  # loom.distributed on the CPU: its store collective (tests, debugging)

    def __init__(self):
        self.exact = CPUExact(self)
        self.quant = CPUQuant()
        self._elementwise = CPUElementwise()
        self._windows = CPUWindows()

    @property
    def elementwise(self) -> CPUElementwise | None:
        """The compiled loops where numba is installed (and LOOM_JIT is not "0"), else None."""
        return self._elementwise if jit.available() else None

    @property
    def windows(self) -> CPUWindows | None:
        """The compiled window loops where numba is installed (and LOOM_JIT is not "0"), else None
        (loom.kernels.windows' strided views)."""
        return self._windows if jit.available() else None

    def synchronize(self) -> None:
        pass

    def asarray(self, x: ArrayLike, dtype: DTypeLike = None) -> np.ndarray:
        return np.asarray(x, dtype=dtype)

    def copy_into(self, dst: np.ndarray, src: ArrayLike) -> None:
        dst[...] = src

    def to_numpy(self, x: ArrayLike) -> np.ndarray:
        return np.asarray(x)

    def round_bf16(self, x: np.ndarray) -> np.ndarray:
        return mixed_precision.round_bf16(x, np)

    def matmul_bf16(self, a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        return self.matmul(self.round_bf16(a), self.round_bf16(b), out=out)

    def matmul(self, a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        if a.ndim == 2 and b.ndim == 2 and a.shape[1] == 1 and a.dtype == b.dtype:
            # an outer product (a per-sample weight gradient): each entry is one product, which a
            # broadcast multiply forms 4-6x faster than OpenBLAS's GEMM (measured 55-77 vs 285-384 us
            # at [256, 1] x [1, 784], one thread)
            return np.multiply(a, b, out=out)
        if out is not None:
            return np.matmul(a, b, out=out)
        # OpenBLAS runs x @ W.T (a transposed view on the right, as in every dense forward) markedly
        # slower than the same product computed as (W @ x.T).T: measured 138 vs 83 us at [32, 784] x
        # [784, 256] with 2 threads. The results are the same sums in another order (fast mode).
        if a.ndim == 2 and b.ndim == 2 and b.flags.f_contiguous and not b.flags.c_contiguous:
            return np.matmul(b.T, a.T).T
        return np.matmul(a, b)

    def sum(self, x: ArrayLike, axis: int | tuple[int, ...] | None = None,
            keepdims: bool = False) -> np.ndarray | np.generic:
        return np.sum(x, axis=axis, keepdims=keepdims)

    def cumsum(self, x: ArrayLike, axis: int) -> np.ndarray:
        return np.cumsum(x, axis=axis)

    def may_be_true(self, flag: ArrayLike) -> bool:
        return bool(flag)


CPU = CPUBackend()
