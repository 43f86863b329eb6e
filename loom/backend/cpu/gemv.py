"""x @ W.T on the CPU for x of a few rows, compiled by Numba (an optional extra: `pip install loom[cpu]`;
loaded by loom/backend/cpu/jit.py).

Why: decoding (batch 1) multiplies one row of activations with every weight, once per token. The
NumPy path (loom.kernels.quant.gemv) needs several whole-array passes per product (nibble masks,
conversions, batched matmuls, scale passes), each a Python-level call that writes and rereads
temporaries; that caps SmolLM2-135M's decode speed. A compiled loop reads
every stored byte once and keeps the decoded values in L1. Numba compiles it from this file with
LLVM at run time, so Loom ships no C sources and needs no compiler on the user's machine; without
numba (or with LOOM_JIT=0) the NumPy path runs as before.

Fast mode only: the sums run in float32 in the loop's order, reassociated by the compiler
(fastmath without nnan/ninf, so NaN and inf weights still propagate as in the dequantized
product). Deterministic mode never comes here (loom.kernels.quant.block decodes W exactly).

Stored forms (loom.kernels.quant.gguf has the full table): F16/BF16 rows are plain uint16 values;
the 32-value block types are a float16 scale d (and offset m) followed by the codes:

    Q8_0  34 bytes  d @0, int8[32] @2                        d * q
    Q4_0  18        d @0, nibbles[16] @2                     d * (q - 8)
    Q4_1  20        d @0, m @2, nibbles @4                   d * q + m
    Q5_0  22        d @0, 5th bits u32 @2, nibbles @6        d * (q - 16)
    Q5_1  24        d @0, m @2, 5th bits @4, nibbles @8      d * q + m

(nibbles: value j < 16 is the low nibble of byte j, value 16 + j its high nibble; 5th bit j of
the little-endian u32 adds 16 to value j.)

Loops: rows of W are split over the threads (prange over chunks of CHUNK rows, one float32 row
buffer per chunk). A block-type or F16 row is decoded into that buffer, block by block (the scales
once per block, the codes in a short vectorised loop), then dotted with each row of x: W is read
once whatever M is, and every dot runs over contiguous float32. BF16 rows are dotted directly (a
bfloat16 is the high half of a float32: one shift in the dot loop).

Until _load() runs, the kernels below are plain Python functions and `prange` is `range`; _load()
imports numba and replaces each function in this module's namespace by its numba dispatcher, which
is where numba resolves the calls between them. Module-level functions are what numba's on-disk
cache (cache=True) can key: kernels defined as closures over other kernels re-hash differently in
every process and never hit the cache.
"""
from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from ...errors import BackendError
from . import jit

TYPES = ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "BF16", "F16")
MAX_ROWS = 16           # x with more rows goes to BLAS on decoded blocks of W (loom.kernels.quant.block)
CHUNK = 16              # rows of W per parallel task: 36 tasks for a 576-row weight on 2 threads
_HELPERS = ("_half", "_dots", "_f16_values", "_block_sums", "_finite")
_KERNELS = {"Q8_0": "_q8_0", "Q4_0": "_q4_0", "Q4_1": "_q4_1", "Q5_0": "_q5_0", "Q5_1": "_q5_1",
            "F16": "_f16", "BF16": "_bf16"}
prange = range
f32, u32 = np.float32, np.uint32
_q8_0_dot = _q4_0_dot = _q4_1_dot = None    # row_dots.py's one-row dots (numba intrinsics): available()


def available() -> bool:
    """Whether these loops run here (jit.available()); compiles them on the first call."""
    if not jit.available():
        return False
    global _q8_0_dot, _q4_0_dot, _q4_1_dot
    if _q4_1_dot is None:               # bound before the kernels compile: numba resolves their globals then
        from . import row_dots
        _q8_0_dot, _q4_0_dot, _q4_1_dot = row_dots.q8_0_dot, row_dots.q4_0_dot, row_dots.q4_1_dot
    return jit.compile_module(globals(), plain=_HELPERS, parallel=_KERNELS.values(), fastmath=jit.FASTMATH)


def supports(qtype: str, m_rows: int) -> bool:
    """Whether matmul_t takes a `qtype` weight and `m_rows` rows of x here."""
    return qtype in TYPES and m_rows <= MAX_ROWS and available()


def matmul_t(x2: np.ndarray, data: np.ndarray, qtype: str, out: np.ndarray) -> None:
    """out[m, r] = sum_k x2[m, k] W[r, k] for W the `qtype` rows `data` (uint8 [R, row bytes]);
    x2 float32 [M, cols] with M <= MAX_ROWS, out float32 [M, R] C-contiguous. The caller
    (BlockQuantized.matmul_t) has checked the shapes and dtypes, and `supports`."""
    if not jit.compiled(globals()) and not available():   # compiles once (callers checked supports())
        raise BackendError(f"the compiled block products do not run here: {jit.unavailable_reason()}")
    f16 = jit.f16_table()
    kernel = globals()[_KERNELS[qtype]]
    x2 = np.ascontiguousarray(x2)
    data = np.asarray(data)             # a memory map as a plain array (numba types ndarrays only)
    if data.strides[1] != 1:            # row_dots reads each row's bytes as one run
        data = np.ascontiguousarray(data)
    if qtype == "BF16":
        jit.run(kernel, x2, data.view(np.uint16), out)
    else:
        # 16 (codes bytes per block) passed at run time on purpose: with a literal trip count
        # LLVM unrolls the code loop before its loop vectorizer runs, and the unrolled code stays
        # scalar (measured 3x slower).
        jit.run(kernel, x2, data, out, f16, 16)


def decode_f16(bits: ArrayLike) -> np.ndarray:
    """float32 values of uint16 float16 bit patterns through the F16 kernel's own decoder (tests)."""
    available()
    bits = np.ascontiguousarray(bits, dtype=np.uint16)
    out = np.empty(bits.shape, dtype=np.float32)
    _f16_values(bits.reshape(-1), out.reshape(-1))
    return out


# --- helpers ----------------------------------------------------------------------------------------

def _half(h):
    """float16 bit pattern h (an integer) -> float32, right for every pattern (numba has no float16
    type on the CPU). F16 weights use this: the scale table's loads are slower there.
    Normal values rebias the exponent by integer addition; inf and NaN get float32's all-ones
    exponent; subnormals are their integer mantissa times 2^-24, a product whose operands and result
    are normal float32 numbers, so a flush-to-zero/denormals-are-zero CPU mode cannot change it."""
    em = u32(h) & u32(0x7FFF)
    wide = (em << u32(13)) | u32(0x7F800000) if em >= 0x7C00 else (em << u32(13)) + u32(0x38000000)
    mag = f32(em) * f32(2.0 ** -24) if em < 0x0400 else u32(wide).view(np.float32)
    return u32(f32(mag).view(np.uint32) | ((u32(h) & u32(0x8000)) << u32(16))).view(np.float32)


def _dots(x, w, out, r):
    """out[i, r] = x[i] . w for every row i of x."""
    for i in range(x.shape[0]):
        acc = f32(0)
        for k in range(w.shape[0]):
            acc += x[i, k] * w[k]
        out[i, r] = acc


def _block_sums(x):
    """The sums of x[0]'s 32-value blocks (the offsets' factor in a one-row product)."""
    sums = np.empty(x.shape[1] // 32, np.float32)
    for b in range(sums.shape[0]):
        s = f32(0)
        for j in range(32):
            s += x[0, 32 * b + j]
        sums[b] = s
    return sums


def _finite(v):
    """Whether float32 v is finite, from its exponent bits. np.isfinite came out always true in the
    one-row kernels when numba loaded them from its on-disk cache (parallel loops calling row_dots'
    intrinsics: fresh compiles were right), as if compiled assuming no infinities."""
    return (f32(v).view(np.uint32) & u32(0x7F800000)) != u32(0x7F800000)


def _f16_values(bits, out):
    for k in range(bits.shape[0]):
        out[k] = _half(bits[k])


# --- kernels: x float32 [M, cols], data uint8 [R, row bytes], out float32 [M, R], f16 the scale table.
# One kernel per type with its decode loop written out: LLVM vectorises the code loop only where it
# sits in the block loop itself (in a per-block helper it stayed scalar, 5x slower; one kernel
# branching on the type per row measured 10% slower). Nibbles are split in float32 (exact on small
# integers), as numba would widen integer ops to int64 and halve the vector width. w[32b + j] is
# value j of block b; `halves` views a row as uint16, as every scale field sits at an even byte.

def _q8_0(x, data, out, f16, n16):
    for c in prange((data.shape[0] + CHUNK - 1) // CHUNK):
        w = np.empty(x.shape[1], np.float32)
        for r in range(c * CHUNK, min(data.shape[0], c * CHUNK + CHUNK)):
            if x.shape[0] == 1:         # one row of x: loom/backend/cpu/row_dots.py (about 2x faster)
                acc = _q8_0_dot(data, r, x, f16)
                # A non-finite scale makes the sum non-finite; such a row (or one that overflowed) is
                # done again below, for the decoded row's inf/NaN pattern (inf * 0 is NaN there).
                if _finite(acc):
                    out[0, r] = acc
                    continue
            halves, codes = data[r].view(np.uint16), data[r].view(np.int8)
            for b in range(w.shape[0] // 32):
                d = f16[halves[17 * b]]
                for j in range(2 * n16):
                    w[32 * b + j] = d * f32(codes[34 * b + 2 + j])
            _dots(x, w, out, r)


def _q4_0(x, data, out, f16, n16):
    sums = _block_sums(x) if x.shape[0] == 1 else np.empty(0, np.float32)
    for c in prange((data.shape[0] + CHUNK - 1) // CHUNK):
        w = np.empty(x.shape[1], np.float32)
        for r in range(c * CHUNK, min(data.shape[0], c * CHUNK + CHUNK)):
            if x.shape[0] == 1:         # one row of x: loom/backend/cpu/row_dots.py
                acc = _q4_0_dot(data, r, x, sums, f16)
                if _finite(acc):    # else the decoded row's inf/NaN pattern, as _q8_0
                    out[0, r] = acc
                    continue
            row, halves = data[r], data[r].view(np.uint16)
            for b in range(w.shape[0] // 32):
                d = f16[halves[9 * b]]
                for j in range(n16):
                    q = f32(row[18 * b + 2 + j])
                    hi = np.floor(q * f32(0.0625))
                    w[32 * b + j] = d * (q - f32(16) * hi - f32(8))
                    w[32 * b + 16 + j] = d * (hi - f32(8))
            _dots(x, w, out, r)


def _q4_1(x, data, out, f16, n16):
    sums = _block_sums(x) if x.shape[0] == 1 else np.empty(0, np.float32)
    for c in prange((data.shape[0] + CHUNK - 1) // CHUNK):
        w = np.empty(x.shape[1], np.float32)
        for r in range(c * CHUNK, min(data.shape[0], c * CHUNK + CHUNK)):
            if x.shape[0] == 1:         # one row of x: loom/backend/cpu/row_dots.py (about 2x faster)
                acc = _q4_1_dot(data, r, x, sums, f16)
                if _finite(acc):    # else the decoded row's inf/NaN pattern, as _q8_0
                    out[0, r] = acc
                    continue
            row, halves = data[r], data[r].view(np.uint16)
            for b in range(w.shape[0] // 32):
                d, m = f16[halves[10 * b]], f16[halves[10 * b + 1]]
                for j in range(n16):
                    q = f32(row[20 * b + 4 + j])
                    hi = np.floor(q * f32(0.0625))
                    w[32 * b + j] = d * (q - f32(16) * hi) + m
                    w[32 * b + 16 + j] = d * hi + m
            _dots(x, w, out, r)


def _q5_0(x, data, out, f16, n16):
    for c in prange((data.shape[0] + CHUNK - 1) // CHUNK):
        w = np.empty(x.shape[1], np.float32)
        for r in range(c * CHUNK, min(data.shape[0], c * CHUNK + CHUNK)):
            row, halves = data[r], data[r].view(np.uint16)
            for b in range(w.shape[0] // 32):
                d = f16[halves[11 * b]]
                fifth = u32(halves[11 * b + 1]) | (u32(halves[11 * b + 2]) << u32(16))
                for j in range(n16):
                    q = f32(row[22 * b + 6 + j])
                    hi = np.floor(q * f32(0.0625))
                    w[32 * b + j] = d * (q - f32(16) * hi + f32(16) * f32((fifth >> j) & 1) - f32(16))
                    w[32 * b + 16 + j] = d * (hi + f32(16) * f32((fifth >> (j + 16)) & 1) - f32(16))
            _dots(x, w, out, r)


def _q5_1(x, data, out, f16, n16):
    for c in prange((data.shape[0] + CHUNK - 1) // CHUNK):
        w = np.empty(x.shape[1], np.float32)
        for r in range(c * CHUNK, min(data.shape[0], c * CHUNK + CHUNK)):
            row, halves = data[r], data[r].view(np.uint16)
            for b in range(w.shape[0] // 32):
                d, m = f16[halves[12 * b]], f16[halves[12 * b + 1]]
                fifth = u32(halves[12 * b + 2]) | (u32(halves[12 * b + 3]) << u32(16))
                for j in range(n16):
                    q = f32(row[24 * b + 8 + j])
                    hi = np.floor(q * f32(0.0625))
                    w[32 * b + j] = d * (q - f32(16) * hi + f32(16) * f32((fifth >> j) & 1)) + m
                    w[32 * b + 16 + j] = d * (hi + f32(16) * f32((fifth >> (j + 16)) & 1)) + m
            _dots(x, w, out, r)


def _f16(x, data, out, f16, n16):
    for c in prange((data.shape[0] + CHUNK - 1) // CHUNK):
        w = np.empty(x.shape[1], np.float32)
        for r in range(c * CHUNK, min(data.shape[0], c * CHUNK + CHUNK)):
            halves = data[r].view(np.uint16)
            for k in range(w.shape[0]):
                w[k] = _half(halves[k])
            _dots(x, w, out, r)


def _bf16(x, data, out):
    """data: uint16 [R, cols]. Converting in the dot loop is faster at M = 1 than decoding the row
    into the buffer first."""
    for r in prange(data.shape[0]):
        for i in range(x.shape[0]):
            acc = f32(0)
            for k in range(x.shape[1]):
                acc += x[i, k] * u32(u32(data[r, k]) << u32(16)).view(np.float32)
            out[i, r] = acc
