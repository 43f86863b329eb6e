"""Weights kept in their stored quantized form, dequantized only inside the products that use them.

A BlockQuantized is a 2-D weight in PyTorch's Linear layout [out_features, in_features] whose
rows are GGML blocks (loom.kernels.quant.gguf: Q4_0 ... Q6_K, or plain F16/BF16 rows). A Q4
matrix stays about a quarter of its bfloat16 size in memory; `matmul_t` decodes a bounded block of
rows at a time into one reused float32 buffer and multiplies it with loom.kernels.ops.matmul, so
the float32 temporary never exceeds the backend's `quant.dequantize_bytes` whatever the matrix size.

Row blocking changes no bits in deterministic mode: the exact GEMM scales each column of the
right operand (a row of the weight) and each row of x on its own, so every output element is
the same exact sum, rounded once, whichever block its row was decoded in. Fast mode uses the
backend's BLAS per block, and for x of a few rows (decoding) it never decodes all of W: on the
CPU with numba installed, loom.backend.cpu.gemv's compiled loops (32-value block types, F16, BF16);
else, for the 32-value block types, loom.kernels.quant.gemv multiplies the integer codes and
applies the scales per block afterwards.

Deterministic mode has the same bits whichever path takes a product (exact_dispatch's scheme for
float32 and K): the backend's QuantKernels.matmul_t_exact where it takes one, straight from the
stored rows (W read once: faster than decoding it first). On the CPU with numba installed, x of at
most rounded_gemv.MAX_ROWS rows against the 32-value block types, F16, BF16 or F32 with K <=
exact_dispatch.ROUNDED_MAX_K (loom.backend.cpu.rounded_gemv); on the GPU any number of rows against
every type the decode kernels take, in both schemes up to K = 2^14 (backend/cuda/quant_tiles.product:
the one-row kernels, and past 4 rows the float64 tensor cores' tiles, compute capability 8.0 and up).
Every other product decodes W exactly and runs the exact GEMM, so deterministic mode has no fallback
to refuse. Fast mode logs once (logging, "loom") where a product of a few rows finds no block kernel
for its type.

Tensor cores (fast mode, a backend whose `quant.tensor_cores` is true: the GPU): a weight made with
tensor_cores=True (`with_tensor_cores`, or `bf16_copy` for a copy already rounded to bfloat16) takes
products of more than MAX_ROWS rows as bfloat16 GEMMs with float32 sums, x rounded to bfloat16 -
PyTorch's bf16 matmul, about 3 significant digits per product. loom.llm's Decoder uses them for
prefill unless made with tensor_cores=False; deterministic mode never does.

Quantized rows are independent (a block never spans two rows), so `take_rows` (an embedding
lookup) decodes only the rows asked for and `permute_rows` reorders the stored bytes exactly.
"""
from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence
from types import ModuleType

import numpy as np

from ... import backend, fallback
from ...backend import Array
from ...errors import ShapeError
from ...mode import is_deterministic
from .. import ops
from ..exact import dispatch as exact_dispatch
from ..exact import fixed, narrow_bits
from ..exact import rounded as exact_rounded
from . import gemv as gguf_gemv
from . import gguf as gguf_quants


class BlockQuantized:
    """A 2-D weight [rows, cols] stored as `qtype` blocks: data is uint8 [rows, row_bytes]
    (NumPy, possibly a read-only memory map, or a device array)."""

    def __init__(self, data: Array, qtype: str, shape: Sequence[int], tensor_cores: bool = False):
        if len(tuple(shape)) != 2:
            raise ShapeError(f"a BlockQuantized is 2-D [rows, cols], got shape {tuple(shape)}")
        rows, cols = (int(s) for s in shape)
        row_bytes = gguf_quants.row_nbytes(qtype, cols)
        if data.dtype != np.uint8 or tuple(data.shape) != (rows, row_bytes):
            raise ShapeError(f"{qtype} [{rows}, {cols}] is stored as uint8 [{rows}, {row_bytes}], got "
                             f"{data.dtype}{list(data.shape)}")
        self.data = data
        self.qtype = qtype
        self.shape = (rows, cols)
        # fast-mode products of more than gemv.MAX_ROWS rows on a backend with tensor cores round x to
        # bfloat16 and multiply it with W's values in bfloat16 (exact for BF16 rows), summing in float32
        self.tensor_cores = tensor_cores
        # what the backend's deterministic products derive from the stored rows once (the GPU's row
        # norms and row maxima: backend/cuda/quant_tiles.product)
        self.tables: dict = {}

    def with_tensor_cores(self) -> BlockQuantized:
        """This weight (the same stored bytes) with tensor-core products in fast mode."""
        return BlockQuantized(self.data, self.qtype, self.shape, tensor_cores=True)

    def bf16_copy(self) -> BlockQuantized:
        """A BF16 copy of this weight on its device, with tensor-core products: W's values rounded to
        bfloat16 once (the same bytes where W is BF16). Only on a backend with tensor_cores."""
        if self.qtype == "BF16":
            return self.with_tensor_cores()
        quant = backend.of(self.data).quant
        bits = quant.to_bf16(self.dequantize())
        return BlockQuantized(bits.view(np.uint8).reshape(self.shape[0], -1), "BF16", self.shape, tensor_cores=True)

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)

    @property
    def ndim(self) -> int:
        return 2

    @property
    def xp(self) -> ModuleType:
        return backend.of(self.data).xp

    def __repr__(self) -> str:
        return f"BlockQuantized({self.qtype}, shape={self.shape}, {self.nbytes} bytes)"

    def dequantize(self, rows: slice | None = None, out: Array | None = None) -> Array:
        """float32 [n, cols] of the rows in `rows` (all rows when None), into `out` when given."""
        return _decode(self.data if rows is None else self.data[rows], self.qtype, self.shape[1], out)

    def block_rows(self) -> int:
        """Rows decoded per block in matmul_t: about the backend's `quant.dequantize_bytes` of float32,
        spread evenly over the blocks so the last one is not a sliver."""
        rows, cols = self.shape
        budget = backend.of(self.data).quant.dequantize_bytes
        per_block = max(1, budget // (4 * max(cols, 1)))
        n_blocks = max(1, math.ceil(rows / per_block))
        return math.ceil(rows / n_blocks) if rows else 1

    def matmul_t(self, x: Array, rule: str = "weight") -> Array:
        """x @ W.T for x float32 [..., cols]: float32 [..., rows]. Deterministic mode's products take the
        dispatch table's `rule`: "weight" (a decoder's weight products: exact.fixed's integers) or "matmul"
        (the exact GEMM's: an encoder's, whose embeddings keep float32's precision)."""
        rows, cols = self.shape
        if x.dtype != np.float32 or x.ndim < 1 or x.shape[-1] != cols:
            raise ShapeError(f"matmul_t with {self.qtype} weight [{rows}, {cols}] takes float32 [..., {cols}], "
                             f"got {x.dtype}{list(x.shape)}")
        be = backend.of(self.data)
        xp = be.xp
        lead = x.shape[:-1]
        x2 = x.reshape(-1, cols)
        out = xp.empty((x2.shape[0], rows), dtype=np.float32)
        if not is_deterministic():
            if self.tensor_cores and be.quant.tensor_cores and x2.shape[0] > gguf_gemv.MAX_ROWS:
                self._bf16_product(x2, out)
                return out.reshape(lead + (rows,))
            # the backend's block kernels (the GPU's; the CPU's compiled loops): W read once
            if be.quant.matmul_t(x2, self.data, self.qtype, out):
                return out.reshape(lead + (rows,))
            if self.qtype in gguf_gemv.TYPES and x2.shape[0] <= gguf_gemv.MAX_ROWS:
                gguf_gemv.matmul_t(x2, self.data, self.qtype, out, xp)     # decode-sized x: no W at all
                return out.reshape(lead + (rows,))
            if x2.shape[0] <= gguf_gemv.MAX_ROWS:
                _no_block_kernel(self.qtype, be.name)
        elif rule == "weight":
            self._fixed_product(be, x2, out)        # the dispatch table's "weight" rule (exact.fixed)
            return out.reshape(lead + (rows,))
        elif self._exact_kernel(be, x2, out):
            return out.reshape(lead + (rows,))      # the exact GEMM's bits, W read once
        if be.host and not is_deterministic() and x2.shape[0] >= _DIRECT_ROWS:
            # BLAS writes each block's columns of out itself: at these row counts x @ W.T into a strided
            # out beats (W @ x.T).T plus the copy (backend/cpu's choice for an unwritten result)
            self._by_blocks(x2, out, lambda w, dst: ops.matmul(x2, w.T, out=dst))
        else:
            self._by_blocks(x2, out, lambda w, dst: ops.matmul(x2, w.T))
        return out.reshape(lead + (rows,))

    def _fixed_product(self, be, x2: Array, out: Array) -> None:
        """Deterministic mode: out = x2 @ W^T in exact.fixed's integer scheme: the backend's kernels,
        which read W in place, where they take it; else W decoded block by block (its rows' exponents
        made once and kept in `tables`), x's integers made once."""
        if be.quant.matmul_t_fixed(x2, self.data, self.qtype, out, self.tables):
            return
        xp = be.xp
        ex = fixed.row_exponents(xp, x2)
        qx = fixed.to_integers(xp, x2, ex)
        if "fixed_exponents_blocks" not in self.tables:
            exponents = xp.empty(self.shape[0], dtype=np.int32)
            step = self.block_rows()
            for start in range(0, self.shape[0], step):
                stop = min(self.shape[0], start + step)
                exponents[start:stop] = fixed.row_exponents(xp, self.dequantize(slice(start, stop)))
            self.tables["fixed_exponents_blocks"] = exponents
        exponents = self.tables["fixed_exponents_blocks"]
        step = self.block_rows()
        for start in range(0, self.shape[0], step):
            stop = min(self.shape[0], start + step)
            out[:, start:stop] = fixed.matmul_t_integers(be, x2, qx, ex, self.dequantize(slice(start, stop)),
                                                         exponents[start:stop])

    @functools.cached_property
    def _exact_args(self) -> dict | None:
        """The block kernels' scheme for products over this weight's K (fixed: worked out once, not at
        every product): {"factor": exact_rounded.error_factor(K)} for the rounded scheme, {"bits":
        exact.narrow_bits(K)} for the slice scheme over one chunk, None past one chunk (no kernel)."""
        cols = self.shape[1]
        if exact_dispatch.matmul_scheme(np.float32, cols) == exact_dispatch.ROUNDED:
            return {"factor": exact_rounded.error_factor(cols)}
        return {"bits": narrow_bits(cols)} if cols <= 1 << exact_dispatch.CHUNK_BITS else None

    def exact_in_place(self) -> bool:
        """Whether deterministic products with this weight read it in place for any number of rows of
        x (the backend's integer kernels, QuantKernels.fixed_wide): no decoded copy is worth keeping, and
        a prompt chunk's products decode nothing."""
        return backend.of(self.data).quant.fixed_wide(self.qtype, self.shape[1])

    def _exact_kernel(self, be, x2: Array, out: Array) -> bool:
        """Deterministic mode: out = x2 @ W^T by the backend's block kernels with the exact GEMM's bits
        (the rounded scheme, or the slice scheme over one chunk); False where none takes it."""
        args = self._exact_args
        return args is not None and be.quant.matmul_t_exact(x2, self.data, self.qtype, out, self.tables, **args)

    def _by_blocks(self, x2: Array, out: Array, product) -> None:
        """out[:, block] = product(W's rows of the block decoded to float32, out[:, block]) for blocks of
        block_rows() rows, decoded one after another into one reused buffer; a product that returns its
        second argument has written the block itself."""
        rows, cols = self.shape
        step = self.block_rows()
        buffer = self.xp.empty(min(step, rows) * cols, dtype=np.float32)
        for start in range(0, rows, step):
            stop = min(rows, start + step)
            dst = out[:, start:stop]
            y = product(self.dequantize(slice(start, stop), out=buffer[:(stop - start) * cols]), dst)
            if y is not dst:
                dst[...] = y

    def _bf16_product(self, x2: Array, out: Array) -> None:
        """out = x2 @ W^T on the tensor cores, x rounded to bfloat16 once (matmul_t_bf16)."""
        self.matmul_t_bf16(backend.of(self.data).quant.to_bf16(x2), out)

    def matmul_t_bf16(self, x16: Array, out: Array, accumulate: bool = False) -> None:
        """out (+)= x16 @ W^T on the tensor cores for x16 bfloat16 bits [M, cols] (uint16): BF16 rows as
        stored; other types decoded straight to bfloat16, block by block into one reused buffer, each
        block's GEMM writing (or adding into, with accumulate) its columns of out [M, rows]. Fast mode,
        a backend with tensor_cores."""
        quant = backend.of(self.data).quant
        if self.qtype == "BF16":
            quant.matmul_t_bf16(x16, self.data.view(np.uint16), out, accumulate)
            return
        rows, cols = self.shape
        step = self.block_rows() * (2 if self.qtype in quant.TYPES else 1)  # bfloat16: half the bytes
        buffer = self.xp.empty(min(step, rows) * cols, dtype=np.uint16)
        for start in range(0, rows, step):
            stop = min(rows, start + step)
            w16 = buffer[:(stop - start) * cols].reshape(stop - start, cols)
            if not quant.dequantize_bf16(self.data[start:stop], self.qtype, w16):
                w16 = quant.to_bf16(self.dequantize(slice(start, stop)))
            quant.matmul_t_bf16(x16, w16, out[:, start:stop], accumulate)

    def take_rows(self, ids: Array) -> Array:
        """float32 [*ids.shape, cols]: rows `ids` (an embedding lookup), decoding only those."""
        be = backend.of(self.data)
        ids = be.xp.asarray(ids)
        if ids.dtype.kind not in "iu":
            raise ShapeError(f"row ids must be integers, got {ids.dtype}")
        if ids.size:
            lo, hi = int(ids.min()), int(ids.max())     # (a device array: one read back to the host)
            if lo < 0 or hi >= self.shape[0]:
                bad = lo if lo < 0 else hi
                raise ShapeError(f"row id {bad} is out of range for a weight of {self.shape[0]} rows")
        return self.gather_rows(ids)

    def gather_rows(self, ids: Array) -> Array:
        """take_rows for device ids already known to be in range: no read back to the host (a recorded
        prefill's embedding lookup)."""
        values = _decode(self.data[ids.reshape(-1)], self.qtype, self.shape[1])
        return values.reshape(ids.shape + (self.shape[1],))

    def permute_rows(self, perm: Array) -> BlockQuantized:
        """A new BlockQuantized whose row i is this tensor's row perm[i] (the bytes, exactly)."""
        xp = self.xp
        perm = xp.asarray(perm)
        rows = self.shape[0]
        if perm.ndim != 1 or perm.dtype.kind not in "iu" or perm.shape[0] != rows:
            raise ShapeError(f"perm must be a 1-D integer array of length {rows}, got {perm.dtype}{list(perm.shape)}")
        if rows and not bool(xp.all(xp.sort(perm) == xp.arange(rows))):
            raise ShapeError(f"perm is not a permutation of 0..{rows - 1}")
        return BlockQuantized(self.data[perm], self.qtype, self.shape, self.tensor_cores)

    def to(self, device: str) -> BlockQuantized:
        return BlockQuantized(backend.get(device).asarray(self.data), self.qtype, self.shape, self.tensor_cores)


# Rows of x from which the CPU's fast block products write out directly (measured on the 2-core VM with
# OpenBLAS, SmolLM2-135M's shapes: 0.6x as fast at 17-32 rows, even at 128, 1.1-1.6x at 256-512).
_DIRECT_ROWS = 128


def _no_block_kernel(qtype: str, device: str) -> None:
    """Fast mode, x of a few rows (decoding), and no block kernel took the product: it decodes the
    whole weight, which is what those kernels avoid, so say so (once)."""
    fallback.notice_once(f"fast mode: products of a few rows with {qtype} weights on {device!r} decode the "
                         f"weight to float32 blocks for the GEMM (no block kernel takes {qtype} there)",
                         logging.INFO)


def linear(x: Array, w: Array | BlockQuantized, rule: str = "weight") -> Array:
    """x @ w.T for w a float weight [out, in] or a BlockQuantized (the one helper every language-model
    layer uses); deterministic mode's float32 products in the dispatch table's `rule` ("weight": a
    decoder's; "matmul": an encoder's, the exact GEMM)."""
    if isinstance(w, BlockQuantized):
        return w.matmul_t(x, rule)
    if w.ndim != 2 or x.ndim < 1 or x.shape[-1] != w.shape[1]:
        raise ShapeError(f"linear: x {list(x.shape)} does not fit weight [out, in] = {list(w.shape)}")
    if rule == "weight" and is_deterministic() and x.dtype == np.float32 and w.dtype == np.float32:
        # a language model's weight product: the dispatch table's "weight" rule, as for stored weights
        x2 = x.reshape(-1, x.shape[-1])
        return fixed.matmul_t(backend.of(x), x2, w).reshape(x.shape[:-1] + (w.shape[0],))
    return ops.matmul(x, w.T)


def _decode(data: Array, qtype: str, cols: int, out: Array | None = None) -> Array:
    """float32 [n, cols] of the stored rows `data` [n, row bytes] (into `out` when given): the backend's
    one-kernel decoder where it has one (the GPU's), else gguf's array code; the same bits either way."""
    be = backend.of(data)
    n = data.shape[0]
    if out is None or (out.dtype == np.float32 and out.size == n * cols and out.flags.c_contiguous):
        target = be.xp.empty((n, cols), dtype=np.float32) if out is None else out
        if be.quant.dequantize(data, qtype, target):
            return target.reshape(n, cols)
    return gguf_quants.dequantize(data, qtype, (n, cols), xp=be.xp, out=out)

