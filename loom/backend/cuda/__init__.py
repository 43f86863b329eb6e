"""The CUDA backend: CuPy arrays on the current NVIDIA GPU, cuBLAS for GEMM.

Only loom/backend/cuda/ imports cupy. TF32 stays off (CuPy's
default unless CUPY_TF32=1 is set): float32 GEMMs are full float32, so fast mode agrees with the CPU
within float32 rounding. Errors from CUDA (out of memory, launch failures) become BackendError
naming the operation and the shapes; the arrays already on the GPU stay valid.

Where CuPy's flushing of float32 subnormals cannot be turned off (subnormals.py), the failure is
remembered: from then on, obtaining the backend (`get()`, which `loom.backend.of` calls for every
array operation) raises DeterminismError in deterministic mode and logs once in fast mode.
"""
from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from ... import fallback
from ...errors import BackendError
from .. import Array
from . import cublas  # ctypes only; it loads libcublas when the first handle is made
from .compile import OPTIONS, translating

if TYPE_CHECKING:
    import cupy


def _import_cupy():
    try:
        import cupy
    except ImportError:
        raise BackendError("device 'cuda' needs CuPy: pip install 'loom[cuda]' (cupy-cuda12x)") from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:   # CUDARuntimeError without a driver, or a broken install
        raise BackendError(f"device 'cuda': CuPy is installed but finds no usable GPU ({exc})") from None
    if count < 1:
        raise BackendError("device 'cuda': CuPy is installed but finds no GPU")
    global _FLUSHES
    from . import subnormals
    if not subnormals.install(cupy.cuda.compiler):
        _FLUSHES = (f"CuPy {cupy.__version__}'s compiler internals are not the ones loom/backend/"
                    "subnormals.py wraps to drop -ftz=true")
    elif not subnormals.check(cupy):
        _FLUSHES = ("a float32 subnormal (1e-40) times 1 on the GPU gave 0: a kernel CuPy compiled "
                    "before Loom's fix, or a CuPy that flushes another way")
    return cupy


# Why CuPy still flushes float32 subnormals to zero in this process (None: it does not).
_FLUSHES: str | None = None


def check_subnormals() -> None:
    """DeterminismError in deterministic mode where CuPy flushes float32 subnormals (the CPU keeps
    them, so results below 1.2e-38 would differ); in fast mode, where that is allowed, log it once."""
    if _FLUSHES is None:
        return
    fallback.refuse(
        f"device 'cuda' in deterministic mode: CuPy flushes float32 subnormals to zero ({_FLUSHES}), so "
        "results on 'cuda' would differ from the CPU's where values below 1.2e-38 occur; use the CPU, "
        "or fast mode (loom.deterministic(False))",
        f"CuPy flushes float32 subnormals to zero in this process ({_FLUSHES})")


class CUDABackend:
    name = "cuda"
    host = False
    graphs = True       # record() can capture a step into a CUDA graph

    def __init__(self):
        self.xp = _import_cupy()
        self._blas: dict[tuple[int, int], cublas.CuBLAS] = {}
        self._ones = {}                 # (rows, dtype) -> ones vector for column sums
        # the kernel families (loom/backend/protocols.py)
        from . import (
            decode,
            decode_exact,
            flash,
            flash_exact,
            fused,
            fused_exact,
            int_attention,
            prefill,
            quant,
            quant_exact,
            quant_fixed,
            quant_fixed_planes,
            quant_slices,
            quant_tiles,
            windows,
        )
        self.exact = CUDAExact(self)
        self.quant = CUDAQuant(self)
        self.elementwise = CUDAElementwise(self)
        self.fused = fused
        self.fused_exact = fused_exact      # deterministic mode's, with the reference's bits
        self.windows = windows
        self.flash = flash                  # fast mode's causal attention for prompts (tensor cores)
        self.flash_exact = flash_exact      # deterministic mode's, with the composed reference's bits
        self.attend_integer = int_attention  # spec 5's attention rows (int8 tensor cores)
        self.prefill = prefill              # fast mode's fused prompt layers (llm/decoder.py)
        self.decode = CUDADecode(quant, decode, quant_exact, quant_slices, quant_tiles, decode_exact, quant_fixed,
                                 quant_fixed_planes)
        from .compute import Compute
        self.compute = Compute(self.xp)      # the compute engine's primitives (loom.engine)
        from .primes import Primes
        self.primes = Primes(self.xp)        # the exact prime sieve
        from .lmo import Lmo
        self.lmo = Lmo(self.xp)              # the special leaves of LMO prime counting (loom.engine.lmo)
        from .order import OrderKeys
        self.order = OrderKeys(self.xp)      # loom.engine.order_keys' float keys, one pass each
        from .radix import RadixSort
        self.sorts = RadixSort()             # loom.sort and loom.argsort: a onesweep radix sort
        from .search import SearchKernels
        self.search = SearchKernels(self.xp)  # loom.db.search's filter and refinement, one kernel each
        from .nccl import NcclCollectives
        self.collectives = NcclCollectives(self.xp)   # loom.distributed's NCCL communicators

    def asarray(self, x: ArrayLike | Array, dtype: DTypeLike = None) -> Array:
        with translating("copy to the GPU", x):
            return self.xp.asarray(x, dtype=dtype)

    def copy_into(self, dst: Array, src: Array) -> None:
        """dst[...] = src for a device array dst and a host or device array src of its shape and dtype,
        without allocating on the device (host data is staged by the driver, so src may change
        as soon as this returns)."""
        with translating("copy into a device buffer", src):
            if isinstance(src, np.ndarray):
                dst.set(np.ascontiguousarray(src))
            else:
                dst[...] = src

    def to_numpy(self, x: Array) -> np.ndarray:
        return self.xp.asnumpy(x) if isinstance(x, self.xp.ndarray) else np.asarray(x)

    def matmul(self, a: Array, b: Array, out: Array | None = None) -> Array:
        with translating("matmul", a, b):
            if cublas.supports(a, b):
                return self.blas.gemm(a, b, out=out)
            return self.xp.matmul(a, b, out=out)     # integer and mixed dtypes: eager only

    def round_bf16(self, x: Array) -> Array:
        from . import quant  # (imports cupy)
        with translating("bfloat16 rounding", x):
            return quant.round_bf16(x)

    def matmul_bf16(self, a: Array, b: Array, out: Array | None = None) -> Array:
        """The tensor cores' product of a and b's bfloat16 roundings (one conversion pass each, W.T kept
        a transposed view), summed in float32 by cuBLAS (CUBLAS_COMPUTE_32F)."""
        from . import quant
        with translating("matmul", a, b):
            return self.blas.gemm(quant.bf16_operand(a), quant.bf16_operand(b), out=out, bf16=True)

    @property
    def blas(self) -> cublas.CuBLAS:
        """Loom's own cuBLAS handle (see cublas.py: CuPy's cannot be recorded into graphs)."""
        # one handle per thread (and device): a cuBLAS handle is not safe to share between threads,
        # and threads do share this backend (a server's workers, the ranks of a loopback world)
        key = (threading.get_ident(), self.xp.cuda.Device().id)
        handle = self._blas.get(key)
        if handle is None:
            handle = self._blas[key] = cublas.CuBLAS(self.xp)
        return handle

    def synchronize(self) -> None:
        self.xp.cuda.get_current_stream().synchronize()

    def record(self, fn: Callable[[], Any]) -> tuple[Graph, Any]:
        """Run fn() under stream capture and return (Graph, fn's result). Nothing runs on the GPU
        while recording; the graph's memory comes from its own pool, so nothing else can reuse the
        buffers it reads and writes between launches, and what fn passes to keep_while_recorded
        lives as long as the Graph. Host transfers and synchronizations inside fn raise (CuPy
        refuses them while capturing) and the capture is abandoned."""
        cp = self.xp
        pool = cp.cuda.MemoryPool()
        stream = cp.cuda.Stream(non_blocking=False)      # ordered with the default stream
        self.synchronize()
        outer, _RECORDING.kept = getattr(_RECORDING, "kept", None), []
        try:
            with cp.cuda.using_allocator(pool.malloc), stream:
                stream.begin_capture()
                try:
                    result = fn()
                except BaseException:
                    with contextlib.suppress(Exception):
                        stream.end_capture()
                    raise
                graph = stream.end_capture()
            return Graph(graph, pool, stream, cp, _RECORDING.kept), result
        finally:
            _RECORDING.kept = outer

    def may_be_true(self, flag: Array) -> bool:
        """bool(flag) for a device flag, read back to the host; True while recording, when the
        graph cannot branch on data (the caller then takes the path that is right either way)."""
        if self.xp.cuda.get_current_stream().is_capturing():
            return True
        return bool(flag)

    def sum(self, x: Array, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Array:
        with translating("sum", x):
            blocks = self._ones_blocks(x, axis)
            if blocks is None:
                return self.xp.sum(x, axis=axis, keepdims=keepdims)
            (lead, ones_l), mid, (trail, ones_t) = blocks
            y = x.reshape(lead * mid, trail)
            y = self.blas.gemm(y, ones_t) if ones_t is not None else y.reshape(-1)
            y = self.blas.gemm(ones_l, y.reshape(lead, mid)) if ones_l is not None else y
            axes = _axes(axis, x.ndim)
            if keepdims:
                return y.reshape(tuple(1 if a in axes else x.shape[a] for a in range(x.ndim)))
            return y.reshape(tuple(x.shape[a] for a in range(x.ndim) if a not in axes))

    def cumsum(self, x: Array, axis: int) -> Array:
        """Prefix sums along axis: float32 rows along the last axis in one pass (scan.py, about twice
        CuPy's rate); others by CuPy, whose device-wide CUB scan takes a 1-d array (axis=None)."""
        from . import scan
        if scan.takes(x, axis):
            return scan.cumsum(x)
        return self.xp.cumsum(x, axis=None if x.ndim == 1 else axis)

    def _ones_blocks(self, x, axis):
        """When sum(x, axis) reduces a leading and/or a trailing block of axes of a C-contiguous float
        array, keeping the axes between (bias and norm-weight gradients, convolution bias gradients
        over batch and space): ((L, ones_L or None), M, (R, ones_R or None)) for x viewed as [L, M, R],
        summed as (x @ ones_R) then ones_L @ that: one or two cuBLAS calls, faster than CuPy's strided
        reductions (at [8192, 512], and at [256, 64, 14, 14] over (0, 2, 3)). None otherwise. The
        vectors are made outside graph recording only (one made while recording would be filled only
        by the graph)."""
        if axis is None or x.ndim < 2 or x.dtype not in (np.float32, np.float64) or not x.flags.c_contiguous:
            return None
        axes = _axes(axis, x.ndim)
        kept = [a for a in range(x.ndim) if a not in axes and x.shape[a] > 1]   # size-1 axes go anywhere
        if not kept or kept != list(range(kept[0], kept[-1] + 1)) or x.size == 0:
            return None
        lead, trail = math.prod(x.shape[:kept[0]]), math.prod(x.shape[kept[-1] + 1:])
        mid = x.size // (lead * trail)
        if lead * trail < 64:
            return None
        ones = []
        for n in (lead, trail):
            if n == 1:
                ones.append(None)
                continue
            vec = self._ones.get((n, x.dtype))
            if vec is None:
                if self.xp.cuda.get_current_stream().is_capturing():
                    return None
                vec = self._ones[(n, x.dtype)] = self.xp.ones(n, dtype=x.dtype)
            ones.append(vec)
        return (lead, ones[0]), mid, (trail, ones[1])

    def devices(self) -> list[dict]:
        """Every visible GPU: name, memory, compute capability."""
        rt = self.xp.cuda.runtime
        out = []
        for i in range(rt.getDeviceCount()):
            p = rt.getDeviceProperties(i)
            name = p["name"].decode() if isinstance(p["name"], bytes) else str(p["name"])
            out.append({"index": i, "name": name, "memory_bytes": int(p["totalGlobalMem"]),
                        "compute_capability": f"{p['major']}.{p['minor']}"})
        return out

    def versions(self) -> dict:
        rt = self.xp.cuda.runtime
        v = rt.runtimeGetVersion()
        d = rt.driverGetVersion()
        return {"cupy": self.xp.__version__, "cuda_runtime": f"{v // 1000}.{v % 1000 // 10}",
                "cuda_driver": f"{d // 1000}.{d % 1000 // 10}"}


class CUDAExact:
    """Deterministic mode's reductions on the GPU (protocols.ExactKernels): exact.py's kernels."""

    def __init__(self, be: CUDABackend):
        from . import exact
        self._be, self._kernels = be, exact

    def absmax(self, x: Array, axis: int | tuple[int, ...]) -> Array | None:
        return self._kernels.absmax(x, axis) if x.dtype in self._kernels.C_TYPES else None

    def gemm_maxima(self, a: Array, b: Array) -> tuple[Array, Array] | None:
        if a.dtype != b.dtype or a.dtype not in self._kernels.C_TYPES:
            return None
        return self._kernels.gemm_maxima(a, b)

    def matmul_rounded(self, a: Array, b: Array, factor: float) -> tuple[Array, bool]:
        return self._kernels.matmul_rounded(self._be, a, b, factor), True     # special values patched inside

    def matmul_sliced(self, a: Array, b: Array, bits: tuple[int, int]) -> None:
        return None             # the pieces below (maxima, then the narrow product) are the GPU's kernels

    def matmul_narrow(self, a: Array, b: Array, amax: Array, bmax: Array, bits: tuple[int, int],
                      dtype: DTypeLike, guarded: bool) -> Array:
        return self._kernels.matmul_narrow(self._be, a, b, amax, bmax, bits, dtype, guarded)

    def matmul_narrow_chunks(self, a: Array, b: Array, amax: Array, bmax: Array, bits: tuple[int, int],
                             dtype: DTypeLike, step: int) -> Array | None:
        return self._kernels.matmul_narrow_chunks(self._be, a, b, amax, bmax, bits, dtype, step)

    def slice_parts(self, a: Array, b: Array, amax: Array, bmax: Array, bits: tuple[int, int]) -> Array:
        return self._kernels.slice_parts(self._be, a, b, amax, bmax, bits)

    def combine_parts(self, parts: Array, amax: Array, bmax: Array, bits: tuple[int, int], dtype: DTypeLike) -> Array:
        return self._kernels.combine_parts(parts, amax, bmax, bits, dtype)

    def special_guard(self, a: Array, b: Array) -> ModuleType | None:
        return self._kernels if self._kernels.guardable(a, b) else None

    def sum_float32(self, x: Array, axes: tuple[int, ...], bits: int) -> Array:
        return self._kernels.sum_float32(x, axes, bits)

    def sum_float32_across(self, x: Array, axes: tuple[int, ...], bits: int,
                           all_reduce: Callable[[Array, str], None]) -> Array:
        return self._kernels.sum_float32_across(x, axes, bits, all_reduce)

    def cumsum_float32(self, x: Array, axis: int, bits: int) -> Array | None:
        from . import scan
        return scan.cumsum_exact(x, bits) if scan.takes(x, axis) else None


class CUDAQuant:
    """Products with GGUF block weights on the GPU (protocols.QuantKernels): quant.py's kernels."""

    # The blocks decoded where no kernel takes a product only bound the temporary: each block is
    # several launches (the decode, the exact GEMM's casts, GEMM and certification).
    dequantize_bytes = 1 << 28

    tensor_cores = True             # matmul_t_bf16 and to_bf16 run

    def __init__(self, be: CUDABackend):
        from . import quant
        self._be = be
        self._kernels = quant
        self.TYPES = quant.TYPES

    def matmul_t(self, x2: Array, data: Array, qtype: str, out: Array) -> bool:
        if not self._kernels.supports(qtype, x2):
            return False
        self._kernels.matmul_t(x2, data, qtype, out)
        return True

    def exact_wide(self, qtype: str, cols: int, sliced: bool) -> bool:
        from . import quant_tiles  # the tiles on the float64 tensor cores (DMMA) past 4 rows
        return quant_tiles.unsupported(qtype, cols, sliced) is None

    def matmul_t_exact(self, x2: Array, data: Array, qtype: str, out: Array, tables: dict,
                       factor: float | None = None, bits: tuple | None = None) -> bool:
        from . import quant_tiles
        return quant_tiles.product(data, qtype, x2, out, tables, factor, bits, blas=self._be.blas)

    fixed_epilogues = True

    def matmul_t_fixed(self, x2: Array, data: Array, qtype: str, out: Array, tables: dict,
                       bias: Array | None = None, residual: Array | None = None, swiglu: bool = False,
                       norm: Array | None = None, normed: Array | None = None, eps: float = 0.0) -> bool:
        """The integer scheme's kernels: up to quant_fixed.MAX_ROWS rows of x, quant_fixed_planes' gemv on the
        weight's int8 planes where gemv_reads_planes says so and they fit in memory (else quant_fixed.gemv, W read
        in place),
        rows_product (int8 tensor cores) below PLANES_ROWS, quant_fixed_planes' int8 GEMM from there; the weight's
        exponents (and planes) made once into `tables`; the epilogue in each, and the norm where given (made by x's
        integers' launch or the product's blocks: no launch of its own)."""
        from . import quant_fixed, quant_fixed_planes
        m, k = x2.shape
        rows = data.shape[0]
        if quant_fixed.unsupported(qtype, k) is not None:
            return False
        x2 = self._be.xp.ascontiguousarray(x2)
        w_tables = quant_fixed.weight_tables(tables, "fixed_exponents",
                                             lambda: quant_fixed.w_exponents(data, qtype, rows, k))
        epilogue = {"bias": bias, "residual": residual, "swiglu": swiglu}
        if norm is not None:
            epilogue.update(norm=norm, normed=normed, eps=eps)
        if m <= quant_fixed.MAX_ROWS:
            planes = None
            if quant_fixed.gemv_reads_planes(qtype, k) and not tables.get("fixed_planes_short"):
                try:
                    planes = quant_fixed.weight_tables(
                        tables, "fixed_planes", lambda: quant_fixed_planes.w_planes(data, qtype, rows, k, w_tables))
                except MemoryError:     # (CuPy's OutOfMemoryError): the stored weight decoded in the loop, same bits,
                    # from now on (not tried again at every product, nor inside a recording, where it would refuse)
                    tables["fixed_planes_short"] = True
                    fallback.notice_once("deterministic products of a few rows decode the stored weights: no device "
                                         "memory for their int8 planes")
            if planes is not None:
                quant_fixed_planes.gemv(data, qtype, x2, out, planes, **epilogue)
            else:
                quant_fixed.gemv(data, qtype, x2, out, w_tables, **epilogue)
        elif not quant_fixed.takes_planes(m) and int(self._be.xp.cuda.Device().compute_capability) >= 80:
            quant_fixed.rows_product(data, qtype, x2, out, w_tables, **epilogue)
        else:
            planes = quant_fixed.weight_tables(tables, "fixed_planes",
                                               lambda: quant_fixed_planes.w_planes(data, qtype, rows, k, w_tables))
            quant_fixed_planes.product(data, qtype, x2, out, planes, self._be.blas, **epilogue)
        return True

    def fixed_wide(self, qtype: str, cols: int) -> bool:
        from . import quant_fixed
        return quant_fixed.unsupported(qtype, cols) is None

    def _whole_units(self, qtype: str, data: Array, out: Array) -> bool:
        """Whether the decode kernels take these rows: qtype is theirs and a row is whole 32-value units
        (a float weight's rows need not be: F32 [N, 48] decodes through gguf's array code)."""
        return qtype in self.TYPES and (out.size // max(data.shape[0], 1)) % 32 == 0

    def dequantize(self, data: Array, qtype: str, out: Array) -> bool:
        if not self._whole_units(qtype, data, out):
            return False
        self._kernels.dequantize(self._be.xp.ascontiguousarray(data), qtype, out)
        return True

    def dequantize_bf16(self, data: Array, qtype: str, out: Array) -> bool:
        if not self._whole_units(qtype, data, out):
            return False
        self._kernels.dequantize_bf16(self._be.xp.ascontiguousarray(data), qtype, out)
        return True

    def to_bf16(self, x: Array) -> Array:
        return self._kernels.to_bf16(x)

    def matmul_t_bf16(self, x2: Array, w16: Array, out: Array, accumulate: bool = False) -> bool:
        self._kernels.matmul_t_bf16(x2, w16, out, self._be.blas, accumulate)     # (to_bf16 makes x2 contiguous)
        return True


class CUDAElementwise:
    """IR functions as generated CUDA C kernels (protocols.ElementwiseKernels)."""

    language = "cuda"

    def __init__(self, be: CUDABackend):
        self._be = be
        self._compiled = {}             # generated kernel source -> compiled function

    def run(self, source: str, name: str, inputs: Sequence[Array], out_dtypes: Sequence[DTypeLike]) -> list[Array]:
        """Launch the generated elementwise kernel `name` in `source` (loom.kernels.ir.lower_cuda's
        signature: inputs, outputs, element count) over inputs broadcast to one shape; returns the
        outputs. Modules are compiled once per source text, with --fmad=false."""
        cp = self._be.xp
        with translating(f"kernel {name}", *inputs):
            inputs = [cp.ascontiguousarray(a) for a in cp.broadcast_arrays(*inputs)]
            outs = [cp.empty(inputs[0].shape, dtype=d) for d in out_dtypes]
            n = inputs[0].size
            if n:
                kernel = self._compiled.get(source)
                if kernel is None:
                    module = cp.RawModule(code=source, options=OPTIONS)
                    kernel = self._compiled[source] = module.get_function(name)
                blocks = min((n + 255) // 256, 65536)
                kernel((blocks,), (256,), (*inputs, *outs, np.int64(n)))
            return outs


class CUDADecode:
    """One decode step's kernels for a recorded graph (protocols.DecodeKernels)."""

    def __init__(self, products: ModuleType, attention: ModuleType, products_exact: ModuleType,
                 products_sliced: ModuleType, products_tiles: ModuleType, attention_exact: ModuleType,
                 products_fixed: ModuleType, products_planes: ModuleType):
        self.products, self.attention = products, attention
        self.products_exact, self.products_sliced, self.attention_exact = products_exact, products_sliced, attention_exact
        self.products_tiles, self.products_fixed, self.products_planes = products_tiles, products_fixed, products_planes


class Graph:
    """A recorded CUDA graph with the memory pool and stream it was recorded with, and the arrays
    made outside the recording that it reads (kept alive)."""

    def __init__(self, graph: cupy.cuda.Graph, pool: cupy.cuda.MemoryPool, stream: cupy.cuda.Stream,
                 cp: ModuleType, kept: list):
        self.graph, self.pool, self.stream, self._cp, self.kept = graph, pool, stream, cp, kept

    def launch(self) -> None:
        """Replay on the current stream (after whatever was queued there, e.g. input copies)."""
        with translating("graph launch"):
            self.graph.launch(self._cp.cuda.get_current_stream())

    @property
    def nbytes(self) -> int:
        return self.pool.total_bytes()


_CUDA: CUDABackend | None = None
_RECORDING = threading.local()          # .kept: what the graph this thread records must keep alive


def keep_while_recorded(array: Array) -> None:
    """Keep `array`, made outside the recording this thread runs and read by its graph, alive as long
    as the graph (a table a kernel reads that a cache of the caller's would otherwise be free to drop).
    ValueError when nothing is being recorded."""
    kept = getattr(_RECORDING, "kept", None)
    if kept is None:
        raise ValueError("keep_while_recorded outside a recording")
    kept.append(array)


def get() -> CUDABackend:
    global _CUDA
    if _CUDA is None:
        _CUDA = CUDABackend()
    if _FLUSHES is not None:            # (one global read on the hot path when CuPy keeps subnormals)
        check_subnormals()
    return _CUDA


def owns(array: Array) -> bool:
    """Whether `array` is a CuPy array (without importing cupy when it was never loaded)."""
    return type(array).__module__.startswith("cupy")


def _axes(axis, ndim) -> list[int]:
    """`axis` (an int or a tuple) as sorted non-negative axes."""
    return sorted({a % ndim for a in (axis if isinstance(axis, tuple) else (axis,))})
