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
# the 4- and 5-bit layouts: (block bytes, offset m's byte or -1, 5th bits' byte or -1, codes' byte, bias)
_NIBBLES = {"Q4_0": (18, -1, -1, 2, 8), "Q4_1": (20, 2, -1, 4, 0),
            "Q5_0": (22, -1, 2, 6, 16), "Q5_1": (24, 2, 4, 8, 0)}
f32, u32 = np.float32, np.uint32


def available() -> bool:
    """Whether these loops run here; compiles them on the first call."""
    return jit.compile_module(globals(), plain=("_q8_0", "_nibbles"))


def dequantize(data: np.ndarray, qtype: str, out: np.ndarray) -> bool:
    """out[r] = the float32 values of row r of `data` (uint8 [rows, row bytes], `qtype` blocks); out
    float32 [rows, cols] C-contiguous. False for other types or without numba (nothing written), and
    where a Q4_1/Q5_1 block has a NaN offset and a NaN or infinite scale: which NaN's payload d q + m
    keeps is the compiler's choice there, so the array code decodes those (rare, broken) weights."""
    if qtype not in TYPES or data.ndim != 2 or out.ndim != 2 or not available():
        return False
    data, f16 = np.asarray(data), jit.f16_table()
    if qtype == "Q8_0":
        return bool(_q8_0(data, out, f16))
    return bool(_nibbles(data, out, f16, *_NIBBLES[qtype]))


# --- kernels: data uint8 [R, row bytes], out float32 [R, cols], f16 the scale table. Value j < 16 of a
# block is the low nibble of code byte j, value 16 + j its high nibble; bit j of the little-endian u32
# of Q5_0/Q5_1 adds 16 to value j. The scale d is at byte 0 of every block.

def _q8_0(data, out, f16):
    for r in range(data.shape[0]):
        halves, codes = data[r].view(np.uint16), data[r].view(np.int8)
        for b in range(out.shape[1] // 32):
            d = f16[halves[17 * b]]
            for j in range(32):
                out[r, 32 * b + j] = f32(codes[34 * b + 2 + j]) * d
    return True


def _nibbles(data, out, f16, size, m_at, fifth_at, codes_at, bias):
    """Q4_0/Q4_1/Q5_0/Q5_1 (their layout in _NIBBLES): f32(code - bias) * d, plus m where there is one."""
    ok = True
    for r in range(data.shape[0]):
        row, halves = data[r], data[r].view(np.uint16)
        for b in range(out.shape[1] // 32):
            d = f16[halves[size // 2 * b]]
            fifth = u32(0)
            if fifth_at >= 0:
                at = (size * b + fifth_at) // 2
                fifth = u32(halves[at]) | (u32(halves[at + 1]) << u32(16))
            if m_at >= 0:
                m = f16[halves[(size * b + m_at) // 2]]
                ok = ok and not (np.isnan(m) and not np.isfinite(d))
            for j in range(16):
                byte = row[size * b + codes_at + j]
                lo = np.int32(byte & 15) | np.int32(((fifth >> u32(j)) & u32(1)) << u32(4))
                hi = np.int32(byte >> 4) | np.int32(((fifth >> u32(j + 16)) & u32(1)) << u32(4))
                if m_at >= 0:
                    out[r, 32 * b + j] = f32(lo - bias) * d + m
                    out[r, 32 * b + 16 + j] = f32(hi - bias) * d + m
                else:
                    out[r, 32 * b + j] = f32(lo - bias) * d
                    out[r, 32 * b + 16 + j] = f32(hi - bias) * d
    return ok
