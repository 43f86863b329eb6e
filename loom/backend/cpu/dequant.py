"""The 32-value GGUF block types decoded to float32 rows by compiled loops (numba, the `loom[cpu]` extra),
with gguf.py's bits: each value is float32(code) * d (+ m), two roundings in that order, no fused
multiply-add and no fast-math (so NaN and inf scales decode as IEEE says, as in the array code).

Why: a prompt's products (more rows than the decode kernels take) decode W block by block and hand it
to BLAS; gguf.py's array code makes several passes per block (nibbles, conversion, scale, offset),
which took about a quarter of SmolLM2's CPU prefill. One loop writes each value once.

One thread: the caller's BLAS product comes next with every core, and numba's parallel workers
left spinning between the two slowed both (measured 4x).
"""
from __future__ import annotations

import numpy as np

from . import jit

TYPES = ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1")
_KERNELS = {"Q8_0": "_q8_0", "Q4_0": "_q4_0", "Q4_1": "_q4_1", "Q5_0": "_q5_0", "Q5_1": "_q5_1"}
f32, u32 = np.float32, np.uint32


def available() -> bool:
    """Whether these loops run here; compiles them on the first call."""
    return jit.compile_module(globals(), plain=_KERNELS.values())


def dequantize(data: np.ndarray, qtype: str, out: np.ndarray) -> bool:
    """out[r] = the float32 values of row r of `data` (uint8 [rows, row bytes], `qtype` blocks); out
    float32 [rows, cols] C-contiguous. False for other types or without numba (nothing written), and
    where a Q4_1/Q5_1 block has a NaN offset and a NaN or infinite scale: which NaN's payload d q + m
    keeps is the compiler's choice there, so the array code decodes those (rare, broken) weights."""
    if qtype not in TYPES or data.ndim != 2 or out.ndim != 2 or not available():
        return False
    return bool(globals()[_KERNELS[qtype]](np.asarray(data), out, jit.f16_table()))


# --- kernels: data uint8 [R, row bytes], out float32 [R, cols], f16 the scale table. Value j < 16 of a
# block is the low nibble of code byte j, value 16 + j its high nibble; bit j of the little-endian u32
# of Q5_0/Q5_1 adds 16 to value j.

def _q8_0(data, out, f16):
    for r in range(data.shape[0]):
        halves, codes = data[r].view(np.uint16), data[r].view(np.int8)
        for b in range(out.shape[1] // 32):
            d = f16[halves[17 * b]]
            for j in range(32):
                out[r, 32 * b + j] = f32(codes[34 * b + 2 + j]) * d
    return True


def _q4_0(data, out, f16):
    for r in range(data.shape[0]):
        row, halves = data[r], data[r].view(np.uint16)
        for b in range(out.shape[1] // 32):
            d = f16[halves[9 * b]]
            for j in range(16):
                byte = row[18 * b + 2 + j]
                out[r, 32 * b + j] = f32(np.int32(byte & 15) - 8) * d
                out[r, 32 * b + 16 + j] = f32(np.int32(byte >> 4) - 8) * d
    return True


def _q4_1(data, out, f16):
    ok = True
    for r in range(data.shape[0]):
        row, halves = data[r], data[r].view(np.uint16)
        for b in range(out.shape[1] // 32):
            d, m = f16[halves[10 * b]], f16[halves[10 * b + 1]]
            ok = ok and not (np.isnan(m) and not np.isfinite(d))
            for j in range(16):
                byte = row[20 * b + 4 + j]
                out[r, 32 * b + j] = f32(byte & 15) * d + m
                out[r, 32 * b + 16 + j] = f32(byte >> 4) * d + m
    return ok


def _q5_0(data, out, f16):
    for r in range(data.shape[0]):
        row, halves = data[r], data[r].view(np.uint16)
        for b in range(out.shape[1] // 32):
            d = f16[halves[11 * b]]
            fifth = u32(halves[11 * b + 1]) | (u32(halves[11 * b + 2]) << u32(16))
            for j in range(16):
                byte = row[22 * b + 6 + j]
                lo = np.int32(byte & 15) | np.int32(((fifth >> u32(j)) & u32(1)) << u32(4))
                hi = np.int32(byte >> 4) | np.int32(((fifth >> u32(j + 16)) & u32(1)) << u32(4))
                out[r, 32 * b + j] = f32(lo - 16) * d
                out[r, 32 * b + 16 + j] = f32(hi - 16) * d
    return True


def _q5_1(data, out, f16):
    ok = True
    for r in range(data.shape[0]):
        row, halves = data[r], data[r].view(np.uint16)
        for b in range(out.shape[1] // 32):
            d, m = f16[halves[12 * b]], f16[halves[12 * b + 1]]
            ok = ok and not (np.isnan(m) and not np.isfinite(d))
            fifth = u32(halves[12 * b + 2]) | (u32(halves[12 * b + 3]) << u32(16))
            for j in range(16):
                byte = row[24 * b + 8 + j]
                lo = np.int32(byte & 15) | np.int32(((fifth >> u32(j)) & u32(1)) << u32(4))
                hi = np.int32(byte >> 4) | np.int32(((fifth >> u32(j + 16)) & u32(1)) << u32(4))
                out[r, 32 * b + j] = f32(lo) * d + m
                out[r, 32 * b + 16 + j] = f32(hi) * d + m
    return ok
