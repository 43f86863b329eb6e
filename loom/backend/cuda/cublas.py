"""cuBLAS GEMMs called through ctypes, so that they can be recorded into CUDA graphs.

CuPy refuses every cuBLAS call while a stream is capturing (its setStream raises
NotImplementedError), although cuBLAS itself supports stream capture once the workspace is set by
the caller (cuBLAS docs, "CUDA Graphs Support"). Loom's float GEMMs therefore go through this module
on every call, eager or recorded, so that a replayed dispatch chain runs exactly the cuBLAS kernels
the eager step ran and gives the same bits.

Row-major C = A @ B is computed as the column-major product C^T = B^T A^T: a C-contiguous row-major
matrix is its own transpose in column-major order, so no copies are needed for C-ordered operands or
for transposed views (W.T); anything else is made contiguous first. Batched products map to
cublasGemmStridedBatchedEx when every operand's batch dimensions collapse to one stride (0 for a
broadcast operand). TF32 is never used: float32 runs with CUBLAS_COMPUTE_32F. The reduced-precision
products take bfloat16 operands on the tensor cores with float32 sums: `gemm_bf16_t` (fast-mode prefill)
and `gemm(..., bf16=True)` (mixed-precision training's fast mode).
"""
from __future__ import annotations

import ctypes
import importlib
import math
from types import ModuleType

import numpy as np

from ...errors import BackendError
from .. import Array

_OP_N, _OP_T = 0, 1
_CUDA_R_32F, _CUDA_R_64F, _CUDA_R_8I, _CUDA_R_32I, _CUDA_R_16BF = 0, 1, 3, 10, 14
_COMPUTE_32F, _COMPUTE_64F, _COMPUTE_32I = 68, 70, 72
_GEMM_DEFAULT = -1
_TYPES = {np.dtype(np.float32): (_CUDA_R_32F, _COMPUTE_32F, ctypes.c_float),
          np.dtype(np.float64): (_CUDA_R_64F, _COMPUTE_64F, ctypes.c_double)}
WORKSPACE_BYTES = 32 << 20      # NVIDIA's recommendation for Hopper; fixed so algorithm choice never varies


def supports(a: Array, b: Array) -> bool:
    """Whether gemm() handles these operands (float32/float64, same dtype, at least 1-D)."""
    return a.dtype == b.dtype and a.dtype in _TYPES and a.ndim >= 1 and b.ndim >= 1


def _find_library() -> ctypes.CDLL:
    """The libcublas CuPy already loaded (same copy, same version), else the usual names."""
    importlib.import_module("cupy_backends.cuda.libs.cublas")   # loads libcublas into this process
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "libcublas.so" in line and "libcublasLt" not in line}
    except OSError:
        paths = set()
    for path in sorted(paths) + ["libcublas.so.13", "libcublas.so.12", "libcublas.so"]:
        try:
            return ctypes.CDLL(path)
        except OSError:
            continue
    raise BackendError("device 'cuda': cannot locate libcublas (the library CuPy uses for GEMMs)")


class CuBLAS:
    """One cuBLAS handle with a fixed workspace, used from the thread that created it."""

    def __init__(self, cupy: ModuleType):
        self.cp = cupy
        lib = self.lib = _find_library()
        for name in ("cublasCreate_v2", "cublasSetStream_v2", "cublasSetWorkspace_v2", "cublasSetMathMode",
                     "cublasGemmEx", "cublasGemmStridedBatchedEx"):
            getattr(lib, name).restype = ctypes.c_int
        handle = ctypes.c_void_p()
        self._check(lib.cublasCreate_v2(ctypes.byref(handle)), "cublasCreate")
        self.handle = handle
        self._check(lib.cublasSetMathMode(handle, ctypes.c_int(0)), "cublasSetMathMode")  # default math, no TF32
        self.workspace = cupy.empty(WORKSPACE_BYTES, dtype=cupy.uint8)
        self._stream = None
        self._scalars = {dt: (ctype(1.0), ctype(0.0)) for dt, (_, _, ctype) in _TYPES.items()}

    @staticmethod
    def _check(status: int, what: str) -> None:
        if status != 0:
            raise BackendError(f"cuBLAS {what} failed with status {status}")

    def _bind_stream(self) -> None:
        # cublasSetStream resets the workspace to cuBLAS's own pool, so the fixed one is set again.
        ptr = self.cp.cuda.get_current_stream().ptr
        if ptr != self._stream:
            self._check(self.lib.cublasSetStream_v2(self.handle, ctypes.c_void_p(ptr)), "cublasSetStream")
            self._check(self.lib.cublasSetWorkspace_v2(self.handle, ctypes.c_void_p(self.workspace.data.ptr),
                                                       ctypes.c_size_t(WORKSPACE_BYTES)), "cublasSetWorkspace")
            self._stream = ptr

    def gemm(self, a: Array, b: Array, out: Array | None = None, bf16: bool = False) -> Array:
        """a @ b with NumPy's matmul semantics (1-D promotion, broadcast batch dimensions), written
        into `out` when given. bf16: a and b are bfloat16 bits (uint16, quant.bf16_operand's), the
        product float32: the tensor cores' bfloat16 products summed in float32 (mixed precision's fast
        mode)."""
        vec_a, vec_b = a.ndim == 1, b.ndim == 1
        a = a[None, :] if vec_a else a
        b = b[:, None] if vec_b else b
        if a.shape[-1] != b.shape[-2]:
            raise ValueError(f"matmul: inner dimensions differ: {list(a.shape)} @ {list(b.shape)}")
        batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
        shape = batch + (a.shape[-2], b.shape[-1])
        final = shape[:-2] + shape[-2:-1] * (not vec_a) + shape[-1:] * (not vec_b)
        dtype = np.dtype(np.float32) if bf16 else a.dtype
        if out is not None and not (tuple(out.shape) == final and out.dtype == dtype and out.flags.c_contiguous):
            out[...] = self.gemm(a if not vec_a else a[0], b if not vec_b else b[:, 0], bf16=bf16)
            return out
        c = self.cp.empty(shape, dtype=dtype) if out is None else out.reshape(shape)
        if b.ndim == 2 and a.ndim > 2 and a.flags.c_contiguous:
            # [..., M, K] @ [K, N] is one [(... M), K] x [K, N] GEMM
            self._gemm(a.reshape(-1, a.shape[-1]), b, c.reshape(-1, c.shape[-1]), (), bf16)
        else:
            self._gemm(a, b, c, batch, bf16)
        return c.reshape(final)

    def gemm_int8(self, a: Array, bt: Array) -> Array:
        """int32 [P, M, N] = a @ bt^T for C-contiguous int8 stacks a [P, M, K] and bt [P, N, K] (the
        right operand transposed, K contiguous in both: cuBLAS's fast "TN" int8 layout, much faster
        than b as [P, K, N]), every product summed exactly in int32 (no overflow is the caller's to
        ensure) by the int8 tensor cores; M, N and K multiples of 16."""
        count, rows, k = a.shape
        n = bt.shape[1]
        if k % 16 or n % 16 or rows % 16 or bt.shape != (count, n, k) or not (a.flags.c_contiguous and bt.flags.c_contiguous):
            raise ValueError(f"gemm_int8: operands {list(a.shape)} x {list(bt.shape)} are not C-ordered "
                             "stacks [P, M, K] x [P, N, K] with dimensions divisible by 16")
        c = self.cp.empty((count, rows, n), dtype=np.int32)
        self._bind_stream()
        one, zero = ctypes.c_int32(1), ctypes.c_int32(0)
        # column-major: C^T (n x rows) = (bt stored, k x n)^T . (a stored, k x rows)
        status = self.lib.cublasGemmStridedBatchedEx(
            self.handle, _OP_T, _OP_N, n, rows, k, ctypes.byref(one),
            ctypes.c_void_p(bt.data.ptr), _CUDA_R_8I, k, ctypes.c_longlong(k * n),
            ctypes.c_void_p(a.data.ptr), _CUDA_R_8I, k, ctypes.c_longlong(rows * k),
            ctypes.byref(zero), ctypes.c_void_p(c.data.ptr), _CUDA_R_32I, n, ctypes.c_longlong(rows * n),
            count, _COMPUTE_32I, _GEMM_DEFAULT)
        self._check(status, f"int8 GEMM {list(a.shape)} x {list(bt.shape)}^T")
        return c

    def gemm_bf16_t(self, x16: Array, w16: Array, out: Array, accumulate: bool = False) -> None:
        """out float32 [M, N] = x16 @ w16^T (accumulate: out += x16 @ w16^T, cuBLAS's beta = 1) for
        C-contiguous bfloat16 bits (uint16) x16 [M, K] and w16 [N, K]: the tensor cores' bfloat16
        products, summed in float32 (CUBLAS_COMPUTE_32F). out's rows may be strided (a column slice
        of a wider C-contiguous matrix)."""
        rows, k = x16.shape
        n = w16.shape[0]
        row_stride = out.strides[0] // 4 if out.ndim == 2 else 0
        if (w16.shape != (n, k) or out.shape != (rows, n) or out.dtype != np.float32
                or not (x16.flags.c_contiguous and w16.flags.c_contiguous)
                or (rows > 1 and (out.strides[0] % 4 or row_stride < n)) or (n > 1 and out.strides[1] != 4)):
            raise ValueError(f"gemm_bf16_t: operands {list(x16.shape)} x {list(w16.shape)}^T -> {list(out.shape)} are "
                             "not C-ordered [M, K] x [N, K] -> float32 [M, N] (rows of out may be strided)")
        if out.size == 0:
            return
        if k == 0:
            if not accumulate:
                out.fill(0)
            return
        self._bind_stream()
        one, zero = self._scalars[np.dtype(np.float32)]
        beta = one if accumulate else zero
        # column-major: C^T (n x rows) = (w16 stored, k x n)^T . (x16 stored, k x rows)
        status = self.lib.cublasGemmEx(
            self.handle, _OP_T, _OP_N, n, rows, k, ctypes.byref(one),
            ctypes.c_void_p(w16.data.ptr), _CUDA_R_16BF, k, ctypes.c_void_p(x16.data.ptr), _CUDA_R_16BF, k,
            ctypes.byref(beta), ctypes.c_void_p(out.data.ptr), _CUDA_R_32F, row_stride if rows > 1 else n,
            _COMPUTE_32F, _GEMM_DEFAULT)
        self._check(status, f"bfloat16 GEMM {list(x16.shape)} x {list(w16.shape)}^T")

    def _gemm(self, a, b, c, batch, bf16=False) -> None:
        """c (C-contiguous, batch + (M, N)) = a @ b (bf16: of bfloat16 bits, c float32)."""
        rows, k, n = c.shape[-2], a.shape[-1], c.shape[-1]
        if c.size == 0:
            return
        if k == 0:
            c.fill(0)
            return
        at, lda, sa, a = _operand(self.cp, a, batch)
        bt, ldb, sb, b = _operand(self.cp, b, batch)
        aptr, bptr = a.data.ptr, b.data.ptr
        self._bind_stream()
        dtype_id, compute, _ = _TYPES[c.dtype]
        one, zero = self._scalars[c.dtype]
        ab_id = _CUDA_R_16BF if bf16 else dtype_id
        count = math.prod(batch)
        # column-major: C^T (n x rows) = op(B stored) (n x k) . op(A stored) (k x rows)
        if count == 1:
            status = self.lib.cublasGemmEx(
                self.handle, bt, at, n, rows, k, ctypes.byref(one),
                ctypes.c_void_p(bptr), ab_id, ldb, ctypes.c_void_p(aptr), ab_id, lda,
                ctypes.byref(zero), ctypes.c_void_p(c.data.ptr), dtype_id, n, compute, _GEMM_DEFAULT)
        else:
            status = self.lib.cublasGemmStridedBatchedEx(
                self.handle, bt, at, n, rows, k, ctypes.byref(one),
                ctypes.c_void_p(bptr), ab_id, ldb, ctypes.c_longlong(sb),
                ctypes.c_void_p(aptr), ab_id, lda, ctypes.c_longlong(sa),
                ctypes.byref(zero), ctypes.c_void_p(c.data.ptr), dtype_id, n, ctypes.c_longlong(rows * n),
                count, compute, _GEMM_DEFAULT)
        self._check(status, f"GEMM {list(a.shape)} @ {list(b.shape)}")


def _operand(cp, x, batch):
    """(cuBLAS op, leading dimension, batch stride in elements, array to read from) for a row-major
    operand x broadcast to `batch`: op N when x's memory read column-major is x^T (C order), op T
    when it is x itself (a transposed view); x is copied once when its layout is neither."""
    rows, cols = x.shape[-2], x.shape[-1]
    item = x.itemsize
    x = cp.broadcast_to(x, batch + (rows, cols)) if x.shape[:-2] != batch else x
    for _ in range(2):
        sr, sc = (s // item for s in x.strides[-2:])
        if cols == 1:
            sc = 1                              # a single column: its stride is never used
        if rows == 1:
            sr = cols if sc == 1 else 1         # a single row: likewise
        layout = None
        if sc == 1 and sr >= max(cols, 1):
            layout = (_OP_N, sr)                # row-major: column-major reads its transpose
        elif sr == 1 and sc >= max(rows, 1):
            layout = (_OP_T, sc)                # a transposed view: column-major reads x itself
        stride = _batch_stride(x, item, len(batch))
        if layout is not None and stride is not None:
            return layout[0], layout[1], stride, x
        x = cp.ascontiguousarray(x)             # one copy, then the row-major case applies
    raise BackendError(f"cuBLAS GEMM: no strided layout for an operand of shape {list(x.shape)}")


def _batch_stride(x, item, nbatch):
    """One element stride that walks every batch entry of x in C order, or None."""
    if nbatch == 0:
        return 0
    dims = [(d, s // item) for d, s in zip(x.shape[:nbatch], x.strides[:nbatch]) if d != 1]
    if not dims:
        return 0
    if all(s == 0 for _, s in dims):
        return 0
    for (_, s0), (d1, s1) in zip(dims, dims[1:]):
        if s0 != s1 * d1:
            return None
    return dims[-1][1] if dims[-1][1] != 0 else None
