"""The tensor C API (loom.h, "tensors": seed 002's LoomTensor): tensors on the CPU (NumPy) and on CUDA
(CuPy, through the project's CUDA backend), fill, copy between devices, gemm, reduce_sum, CSR SpMM,
streams and asynchronous gemm.

gemm, reduce_sum and SpMM run loom.kernels.ops, so deterministic mode (the library's default) gives
the same bits on the CPU and on CUDA, and fast mode runs the vendor libraries (BLAS, cuBLAS, and
cuSPARSE through cupyx.scipy.sparse for SpMM on CUDA). SpMM in deterministic mode computes each row as
a product of its values with the dense rows they name, so each entry has the bits the dense gemm
gives it.

Order: on the CPU, queued gemms (loom_enqueue_gemm) run one at a time in the order they were queued,
and every other call on a tensor first waits for the queued ops that touch it; on CUDA, work goes to
the result's stream (loom_tensor_set_stream), and where an input belongs to another stream the device
finishes its work first.

Copies: loom_tensor_wrap never copies (the tensor is the caller's memory); loom_tensor_data of a CPU
tensor is its memory, of a CUDA tensor a host copy refreshed by loom_tensor_sync; loom_tensor_copy
between devices copies, of course; loom_csr_create copies its three arrays.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import math
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from .. import backend, dtypes, mode
from ..kernels import ops
from . import abi
from .abi import ARGUMENT, DEVICE, MAX_DIMS, CError, export, handle, locked, need, new_handle, put

TENSOR, CSR, OP = "LoomTensor", "LoomCSR", "LoomOpHandle"
DEVICES = {0: "cpu", 1: "cuda", 2: "metal", 3: "hip"}
DEVICE_CODES = {name: code for code, name in DEVICES.items()}
# LoomDType's values are loom.dtypes' c_enum; tensors hold the types of 8 bits or more (one element
# per array item), and ml_dtypes' only on the CPU (CuPy has none of them)
DTYPES = {row.c_enum: row for row in dtypes.TABLE.values()}
CODES = {row.numpy: row.c_enum for row in DTYPES.values() if not row.packed and row.kind in ("float", "int", "uint")}
FLOATS = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
_ROWS_PER_CHUNK_BYTES = 1 << 26     # SpMM's padded products, per chunk of rows


class Tensor:
    def __init__(self, device: str, array: Any):
        self.device, self.array = device, array
        self.host = None            # a CUDA tensor's host copy (loom_tensor_data / loom_tensor_sync)
        self.stream = None          # a CUDA tensor's stream (cupy.cuda.ExternalStream) or None
        self.pending = None         # the latest queued CPU op touching this tensor (a Future)

    @property
    def be(self) -> backend.Backend:
        return backend.get(self.device)

    def running(self) -> contextlib.AbstractContextManager:
        """A context for work on this tensor: its stream on CUDA, nothing on the CPU."""
        return self.stream if self.stream is not None else contextlib.nullcontext()


def _tensor(ptr: Any, what: str) -> abi.Handle:
    return handle(ptr, TENSOR, what)


def _use(*handles: abi.Handle) -> contextlib.AbstractContextManager:
    """The handles' locks, taken once the queued CPU ops (loom_enqueue_gemm) on these tensors are done,
    so that a call sees their results and ops run in the order they were asked for (waiting before
    locking: the worker needs the locks)."""
    for h in handles:
        future = getattr(h.obj, "pending", None)
        if future is not None:
            concurrent.futures.wait([future])
    return locked(*handles)


def _after(out: Tensor, *inputs: Tensor) -> None:
    """On CUDA, work queued on `out`'s stream must see what other streams wrote into `inputs`:
    where a stream differs, the device finishes its work first (the rare case: set_stream)."""
    if out.device == "cuda" and any(t.stream is not out.stream for t in inputs):
        out.be.synchronize()


def _device(code: int) -> str:
    name = DEVICES.get(code)
    if name is None:
        raise CError(ARGUMENT, f"device {code} is not a LoomDevice (0 CPU, 1 CUDA, 2 METAL, 3 HIP)")
    if name in ("metal", "hip"):
        raise CError(DEVICE, f"LOOM_DEVICE_{name.upper()}: this build of Loom runs on the CPU and CUDA only")
    if name == "cuda":
        why = backend.available()["cuda"]
        if why != "ok":
            raise CError(DEVICE, f"LOOM_DEVICE_CUDA is not available here: {why}")
    return name


def _dtype(code: int, device: str) -> np.dtype:
    row = DTYPES.get(code)
    if row is None:
        raise CError(ARGUMENT, f"dtype {code} is not a LoomDType (0..{max(DTYPES)})")
    name = f"LOOM_{row.name.upper()}"
    if row.numpy not in CODES or CODES[row.numpy] != code:
        raise CError(ARGUMENT, f"{name} is a packed storage type; tensors hold types of 8 bits or more")
    if row.name in dtypes.MISSING:
        dtypes.require(row.name, name)
    if device == "cuda" and row.numpy in dtypes.ML_DTYPES:
        raise CError(ARGUMENT, f"{name} tensors live on the CPU only (CuPy has no {row.name})")
    return row.numpy


def _dims(ptr: Any, ndim: int) -> tuple[int, ...]:
    if not 0 <= ndim <= MAX_DIMS:
        raise CError(ARGUMENT, f"ndim {ndim} is outside 0..{MAX_DIMS}")
    if ndim == 0:
        return ()
    dims = abi.ffi.cast("size_t *", need(ptr, "dims"))
    out = tuple(int(dims[i]) for i in range(ndim))
    if math.prod(out) * 8 >= 1 << 62:
        raise CError(ARGUMENT, f"dims {list(out)} describe more elements than any device holds")
    return out


def _new(device: str, array: Any) -> Any:
    return new_handle(TENSOR, Tensor(device, array))


@export("tensor_create", pointer=True)
def tensor_create(device: int, dtype: int, dims: Any, ndim: int) -> Any:
    name = _device(device)
    dt = _dtype(dtype, name)
    shape = _dims(dims, ndim)
    return _new(name, backend.get(name).xp.zeros(shape, dtype=dt))


@export("tensor_wrap", pointer=True)
def tensor_wrap(data: Any, dtype: int, dims: Any, ndim: int) -> Any:
    view = abi.array_in(data, _dims(dims, ndim), _dtype(dtype, "cpu"), "data", copy=False)
    return _new("cpu", view)


@export("tensor_free")
def tensor_free(t: Any) -> None:
    abi.free_handle(t, TENSOR, "t")


@export("tensor_info")
def tensor_info(t: Any, device: Any, dtype: Any, ndim: Any, dims: Any, capacity: int) -> None:
    x = _tensor(t, "t").obj
    if device != abi.ffi.NULL:
        put(device, DEVICE_CODES[x.device], "device")
    if dtype != abi.ffi.NULL:
        put(dtype, CODES[x.array.dtype], "dtype")
    if ndim != abi.ffi.NULL:
        put(ndim, x.array.ndim, "ndim")
    if dims != abi.ffi.NULL:
        if capacity < x.array.ndim:
            raise CError(ARGUMENT, f"dims holds {capacity} entries; the tensor has {x.array.ndim} dimensions")
        for i, d in enumerate(x.array.shape):
            dims[i] = d


def _pointer_to(a: np.ndarray) -> Any:
    return abi.ffi.cast("void *", a.ctypes.data)


@export("tensor_data", pointer=True)
def tensor_data(t: Any) -> Any:
    h = _tensor(t, "t")
    with _use(h):
        x = h.obj
        if x.device == "cpu":
            return _pointer_to(x.array)
        if x.host is None:
            x.host = np.empty(x.array.shape, x.array.dtype)
            _refresh(x)
        return _pointer_to(x.host)


def _refresh(x: Tensor) -> None:
    with x.running():
        x.host[...] = x.array.get(stream=x.stream) if x.stream is not None else x.array.get()
    x.be.synchronize()


@export("tensor_sync")
def tensor_sync(t: Any) -> None:
    h = _tensor(t, "t")
    with _use(h):
        x = h.obj
        if x.device == "cuda":
            if x.stream is not None:
                x.stream.synchronize()
            if x.host is not None:
                _refresh(x)
            x.be.synchronize()


@export("tensor_fill")
def tensor_fill(t: Any, value: float) -> None:
    h = _tensor(t, "t")
    with _use(h):
        x = h.obj
        dt = x.array.dtype
        if dt.kind in "iu":
            info = np.iinfo(dt)
            if not (math.isfinite(value) and value == int(value) and info.min <= value <= info.max):
                raise CError(ARGUMENT, f"value {value!r} is not a {dt.name} value (integers {info.min}..{info.max})")
        elif math.isfinite(value) and abs(value) > float(dtypes.TABLE[dtypes.of_array(x.array)].fmax):
            raise CError(ARGUMENT, f"value {value!r} overflows {dt.name} (largest finite "
                                   f"{dtypes.TABLE[dtypes.of_array(x.array)].fmax:g})")
        with x.running():
            x.array.fill(dt.type(value) if dt.kind in "iu" else value)


def _same(a: Tensor, b: Tensor, what: str) -> None:
    if a.device != b.device:
        raise CError(ARGUMENT, f"{what}: tensors on {a.device} and {b.device}; copy them to one device first")
    if a.array.dtype != b.array.dtype:
        raise CError(ARGUMENT, f"{what}: dtypes {a.array.dtype.name} and {b.array.dtype.name} differ")


@export("tensor_copy")
def tensor_copy(dst: Any, src: Any) -> None:
    hd, hs = _tensor(dst, "dst"), _tensor(src, "src")
    with _use(hd, hs):
        d, s = hd.obj, hs.obj
        if d.array.dtype != s.array.dtype:
            raise CError(ARGUMENT, f"dst is {d.array.dtype.name}, src is {s.array.dtype.name}: copy keeps the dtype")
        if d.array.size != s.array.size:
            raise CError(ARGUMENT, f"dst has {d.array.size} elements {list(d.array.shape)}, src "
                                   f"{s.array.size} {list(s.array.shape)}")
        if s.device == "cuda" and s.stream is not None:
            s.stream.synchronize()
        if d.device == "cuda":
            _after(d, s)
        value = s.array.reshape(d.array.shape)
        with d.running():
            if d.device == "cpu":
                d.array[...] = s.be.to_numpy(value)
            else:
                d.be.copy_into(d.array, value)


def _gemm(a: Tensor, b: Tensor, c: Tensor, trans_a: int, trans_b: int) -> None:
    x, y = _gemm_operands(a, b, c, trans_a, trans_b)
    _after(c, a, b)
    with c.running():
        ops.matmul(x, y, out=c.array)


def _gemm_operands(a: Tensor, b: Tensor, c: Tensor, trans_a: int, trans_b: int) -> tuple[Any, Any]:
    """(op(A), op(B)) once A, B and C fit: one device and dtype (a float), 2-d, matching shapes."""
    _same(a, b, "gemm A, B")
    _same(a, c, "gemm A, C")
    if a.array.dtype not in FLOATS:
        raise CError(ARGUMENT, f"gemm takes float16, float32 or float64 tensors, got {a.array.dtype.name}")
    for name, t in (("A", a), ("B", b), ("C", c)):
        if t.array.ndim != 2:
            raise CError(ARGUMENT, f"gemm: {name} has {t.array.ndim} dimensions {list(t.array.shape)}, needs 2")
    x = a.array.T if trans_a else a.array
    y = b.array.T if trans_b else b.array
    m, k = x.shape
    if y.shape[0] != k or c.array.shape != (m, y.shape[1]):
        raise CError(ARGUMENT, f"gemm: op(A) {list(x.shape)} @ op(B) {list(y.shape)} does not fit C "
                               f"{list(c.array.shape)}")
    return x, y


@export("tensor_gemm")
def tensor_gemm(A: Any, B: Any, C: Any, transA: int, transB: int) -> None:
    ha, hb, hc = _tensor(A, "A"), _tensor(B, "B"), _tensor(C, "C")
    with _use(ha, hb, hc):
        _gemm(ha.obj, hb.obj, hc.obj, transA, transB)


@export("tensor_reduce_sum")
def tensor_reduce_sum(A: Any, out: Any, axis: int) -> None:
    ha, ho = _tensor(A, "A"), _tensor(out, "out")
    with _use(ha, ho):
        a, o = ha.obj, ho.obj
        _same(a, o, "reduce_sum")
        nd = a.array.ndim
        if nd == 0:
            raise CError(ARGUMENT, f"A is a 0-d tensor: it has no axis {axis} to sum over")
        if not -nd <= axis < nd:
            raise CError(ARGUMENT, f"axis {axis} is outside -{nd}..{nd - 1} for A of shape {list(a.array.shape)}")
        axis %= nd
        want = tuple(d for i, d in enumerate(a.array.shape) if i != axis)
        kept = want[:axis] + (1,) + want[axis:]             # keepdims' shape is fine too
        if o.array.shape not in (want, kept):
            raise CError(ARGUMENT, f"out has shape {list(o.array.shape)}; the sum over axis {axis} of "
                                   f"{list(a.array.shape)} has {list(want)}")
        _after(o, a)
        with o.running():
            total = ops.sum(a.array, axis=axis)
            if o.array.dtype.kind in "iu":             # NumPy sums small integers in int64: nothing may wrap
                info = np.iinfo(o.array.dtype)
                if total.size and (int(total.min()) < info.min or int(total.max()) > info.max):
                    raise CError(ARGUMENT, f"the sum over axis {axis} overflows {o.array.dtype.name} "
                                           f"(from {int(total.min())} to {int(total.max())})")
            o.array[...] = total.reshape(o.array.shape).astype(o.array.dtype, copy=False)


# --- CSR -------------------------------------------------------------------------------------------

class CSRMatrix:
    def __init__(self, rows: int, cols: int, row_ptr: np.ndarray, col_idx: np.ndarray, values: np.ndarray):
        self.rows, self.cols = rows, cols
        self.row_ptr, self.col_idx, self.values = row_ptr, col_idx, values
        self._device: dict[str, tuple] = {}

    def on(self, device: str) -> tuple:
        """(row_ptr, col_idx, values) on `device` (uploaded once)."""
        if device not in self._device:
            be = backend.get(device)
            self._device[device] = tuple(be.asarray(a) for a in (self.row_ptr, self.col_idx, self.values))
        return self._device[device]


@export("csr_create", pointer=True)
def csr_create(rows: int, cols: int, nnz: int, row_ptr: Any, col_idx: Any, values: Any) -> Any:
    rp = abi.array_in(row_ptr, (rows + 1,), np.uint32, "row_ptr").astype(np.int64)
    ci = abi.array_in(col_idx, (nnz,), np.uint32, "col_idx").astype(np.int64)    # NULL with nnz > 0: named
    va = abi.array_in(values, (nnz,), np.float32, "values")
    if rp[0] != 0 or rp[-1] != nnz:
        raise CError(ARGUMENT, f"row_ptr runs from {rp[0]} to {rp[-1]}; it must run from 0 to nnz ({nnz})")
    bad = np.flatnonzero(np.diff(rp) < 0)
    if bad.size:
        raise CError(ARGUMENT, f"row_ptr decreases at row {bad[0]} ({rp[bad[0]]} -> {rp[bad[0] + 1]})")
    out = np.flatnonzero(ci >= cols)
    if out.size:
        raise CError(ARGUMENT, f"col_idx[{out[0]}] = {ci[out[0]]} is not below cols ({cols})")
    return new_handle(CSR, CSRMatrix(rows, cols, rp, ci, va))


@export("csr_free")
def csr_free(csr: Any) -> None:
    abi.free_handle(csr, CSR, "csr")


def _spmm(m: CSRMatrix, dense: Tensor, out: Tensor) -> None:
    _same(dense, out, "spmm dense, out")
    if dense.array.dtype != np.float32:
        raise CError(ARGUMENT, f"spmm takes float32 tensors (the CSR values' type), got {dense.array.dtype.name}")
    if dense.array.ndim != 2 or dense.array.shape[0] != m.cols or out.array.shape != (m.rows, dense.array.shape[1]):
        raise CError(ARGUMENT, f"spmm: csr [{m.rows}, {m.cols}] @ dense {list(dense.array.shape)} does not fit "
                               f"out {list(out.array.shape)}")
    rp, ci, va = m.on(dense.device)
    _after(out, dense)
    with out.running():
        if not mode.is_deterministic() and dense.device == "cuda":
            out.array[...] = dense.be.compute.csr_matmul(rp, ci, va, (m.rows, m.cols), dense.array)
            return
        _spmm_rows(dense.be.xp, m, ci, va, dense.array, out.array)


def _spmm_rows(xp: Any, m: CSRMatrix, ci: Any, va: Any, dense: Any, out: Any) -> None:
    """Each row as a product: its values [1, width] (zero-padded to the longest row) times the dense
    rows it names [width, n], through ops.matmul, so deterministic mode gives each entry the bits the
    dense gemm gives it (exactly rounded for rows of up to 2048 entries); chunks of rows at a time."""
    n = dense.shape[1]
    lengths = np.diff(m.row_ptr)
    width = int(lengths.max()) if m.rows else 0
    out[...] = 0
    if width == 0 or n == 0:
        return
    step = max(1, _ROWS_PER_CHUNK_BYTES // (width * n * 4))
    for r0 in range(0, m.rows, step):
        r1 = min(m.rows, r0 + step)
        # slot j of row r holds entry row_ptr[r] + j when j < its length, else a zero
        slots = m.row_ptr[r0:r1, None] + np.arange(width)[None, :]
        live = slots < m.row_ptr[r0 + 1:r1 + 1, None]
        at = xp.asarray(np.where(live, slots, 0))
        vals = xp.where(xp.asarray(live), va[at], 0).astype(np.float32)       # [rows, width]
        rows = dense[ci[at]]                                                     # [rows, width, n]
        out[r0:r1] = ops.matmul(vals[:, None, :], rows)[:, 0, :]


@export("csr_spmm")
def csr_spmm(csr: Any, dense: Any, out: Any) -> None:
    hc, hd, ho = handle(csr, CSR, "csr"), _tensor(dense, "dense"), _tensor(out, "out")
    with _use(hc, hd, ho):
        _spmm(hc.obj, hd.obj, ho.obj)


# --- devices, streams, asynchronous ops ----------------------------------------------------------------

@export("device_query")
def device_query(devices: Any, count: Any) -> None:
    need(count, "count")
    found = [0] + ([1] if backend.available()["cuda"] == "ok" else [])
    capacity = abi.ffi.cast("int *", count)[0]
    if devices != abi.ffi.NULL:
        if capacity < len(found):
            raise CError(ARGUMENT, f"devices holds {capacity} entries (*count); {len(found)} devices are available")
        for i, d in enumerate(found):
            devices[i] = d
    abi.ffi.cast("int *", count)[0] = len(found)


@export("tensor_set_stream")
def tensor_set_stream(t: Any, stream_handle: Any) -> None:
    h = _tensor(t, "t")
    with locked(h):
        x = h.obj
        if stream_handle == abi.ffi.NULL:
            x.stream = None
            return
        if x.device != "cuda":
            raise CError(ARGUMENT, "a CPU tensor has no stream; pass NULL")
        x.stream = x.be.compute.external_stream(int(abi.ffi.cast("uintptr_t", stream_handle)))


class Op:
    """An enqueued gemm: a future on the CPU (a worker thread), an event on CUDA."""

    def __init__(self, future: concurrent.futures.Future | None = None, event: Any = None,
                 wait: Callable[[Any], None] | None = None):
        self.future, self.event, self._wait = future, event, wait

    def wait(self) -> None:
        """Until the op is done; its failure, if it failed, is raised here."""
        if self.future is not None:
            self.future.result()
        else:
            self._wait(self.event)

    def close(self) -> None:
        try:
            self.wait()
        except Exception:       # noqa: BLE001 - shutdown waits; the op's error had nowhere to go
            pass


_pool: concurrent.futures.ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _workers() -> concurrent.futures.ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            # one worker: queued ops run in the order they were queued, as on a CUDA stream
            _pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="loom-capi")
        return _pool


@export("enqueue_gemm", pointer=True)
def enqueue_gemm(A: Any, B: Any, C: Any) -> Any:
    ha, hb, hc = _tensor(A, "A"), _tensor(B, "B"), _tensor(C, "C")
    a, b, c = ha.obj, hb.obj, hc.obj
    if c.device == "cuda":
        with _use(ha, hb, hc):
            _gemm(a, b, c, 0, 0)                # queued on C's stream; CuPy returns before it runs
            compute = c.be.compute
            event = compute.event(c.stream)     # None: the current stream, where the product went
        return new_handle(OP, Op(event=event, wait=compute.wait))
    deterministic = abi.STATE.deterministic
    _gemm_operands(a, b, c, 0, 0)               # misfits fail here (NULL), as on CUDA, not at loom_wait_op

    def work():
        with mode.deterministic(deterministic), locked(ha, hb, hc):
            _gemm(a, b, c, 0, 0)
    future = _workers().submit(work)
    a.pending = b.pending = c.pending = future
    return new_handle(OP, Op(future=future))


@export("wait_op")
def wait_op(h: Any) -> None:
    op = abi.free_handle(h, OP, "h").obj
    op.wait()
