"""x @ W.T for a few rows of x straight from 32-value GGML blocks, without materialising W (fast mode).

For the block types whose every value is d * q (+ m) with one float16 scale d (and offset m)
per 32 values, a row r of the product splits over its blocks b:

    y[r] = sum_b d[r,b] * (sum_j x[b,j] q[r,b,j]) + sum_b m[r,b] * (sum_j x[b,j])

The inner sums are small matrix products on the integer codes (converted to float32 but never
scaled), batched over b; the scales then act on [blocks, rows] values, 32 times fewer than the
weight's. Every pass over the weight is a long, contiguous loop over its stored bytes (the float16
headers are converted along with the codes and skipped by a strided view), where dequantizing
first needs several short per-block passes: faster than decode-then-BLAS for 1 x 576 @ W.T with
W 1536 x 576 Q4_1 and with W 49152 x 576 Q8_0 (one BLAS thread). The products are the dequantized
weight's, summed in another order: fast mode only. Deterministic mode decodes W exactly and uses
the exact GEMM (loom.kernels.quant.block).

Used for x with at most MAX_ROWS rows: beyond that the [blocks, rows of x, rows of W] partial
sums outgrow the decoded weight, and decoding once per block of rows amortises anyway. Where numba
is installed, loom.kernels.quant.block sends these products to loom.backend.cpu.gemv's compiled loops
instead (faster at one row of x); this NumPy path is the fallback (no numba, or LOOM_JIT=0).
"""
from __future__ import annotations

from types import ModuleType

import numpy as np

from ...backend import Array

TYPES = ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1")
MAX_ROWS = 16
# Rows of W per step: about this many bytes of float32 codes. Measured (the two products above):
# 128 KiB steps are 1.5-1.75x slower (per-step overhead), 2 MiB steps 10-15% slower (L2 misses).
STEP_BYTES = 1 << 19
# byte offsets in a block: (d, m or None, 5th-bit field or None, codes)
_LAYOUT = {"Q8_0": (0, None, None, 2), "Q4_0": (0, None, None, 2), "Q4_1": (0, 2, None, 4),
           "Q5_0": (0, None, 2, 6), "Q5_1": (0, 2, 4, 8)}
_OFFSET = {"Q4_0": 8.0, "Q5_0": 16.0}          # q - 8, q - 16: symmetric types store q + offset


def rows_per_step(qtype: str, cols: int) -> int:
    size = {"Q8_0": 34, "Q4_0": 36, "Q4_1": 40, "Q5_0": 44, "Q5_1": 48}[qtype]   # float32 codes per block
    return max(1, STEP_BYTES // (4 * size * max(1, cols // 32)))


def matmul_t(x2: Array, data: Array, qtype: str, out: Array, xp: ModuleType) -> None:
    """out[m, r] = sum_k x2[m, k] W[r, k] for W the `qtype` rows `data` (uint8 [R, row bytes]);
    x2 float32 [M, cols], out float32 [M, R]."""
    rows, m_rows = data.shape[0], x2.shape[0]
    nb = x2.shape[1] // 32
    size = data.shape[1] // nb
    at_d, at_m, at_h, at_q = _LAYOUT[qtype]
    xb = x2.reshape(m_rows, nb, 32)
    x_blocks = xb.transpose(1, 0, 2)                                  # [nb, M, 32]
    x_halves = xb.reshape(m_rows, nb, 2, 16).transpose(2, 1, 0, 3)    # [2 (lo, hi), nb, M, 16]
    x_sums = xb.sum(axis=2)                                           # [M, nb]
    step = rows_per_step(qtype, x2.shape[1])
    wide = qtype == "Q8_0"
    codes = xp.empty((1 if wide else 2, min(step, rows), nb, size), dtype=np.float32)
    nibbles = None if wide else xp.empty(codes.shape, dtype=np.uint8)
    for start in range(0, rows, step):
        stop = min(rows, start + step)
        n = stop - start
        blocks = xp.ascontiguousarray(data[start:stop]).reshape(n, nb, size)   # (a no-op for stored rows)
        halves = blocks.view(xp.uint16)
        d = halves[:, :, at_d // 2].view(xp.float16).astype(xp.float32)          # [n, nb]
        if wide:                            # int8 codes: one conversion of the whole block bytes
            c = codes[0, :n]
            c[...] = blocks.view(xp.int8)
            partial = xp.matmul(x_blocks, c[:, :, at_q:].transpose(1, 2, 0))     # [nb, M, n]
        else:                               # value j < 16: low nibble of byte j; j >= 16: high
            xp.bitwise_and(blocks, 0x0F, out=nibbles[0, :n])
            xp.right_shift(blocks, 4, out=nibbles[1, :n])
            c = codes[:, :n]
            c[...] = nibbles[:, :n]
            partial = xp.matmul(x_halves, c[:, :, :, at_q:].transpose(0, 2, 3, 1)).sum(axis=0)
        if at_h is not None:                # the 5th bits: + 16 * sum_j x_j h_j
            packed = xp.ascontiguousarray(blocks[:, :, at_h:at_h + 4]).reshape(-1)
            bits = xp.unpackbits(packed, bitorder="little").reshape(n, nb, 32).astype(xp.float32)
            partial += 16 * xp.matmul(x_blocks, bits.transpose(1, 2, 0))
        if qtype in _OFFSET:
            partial -= _OFFSET[qtype] * x_sums.T[:, :, None]
        partial *= d.T[:, None, :]
        y = partial.sum(axis=0)                                       # [M, n]
        if at_m is not None:
            y += xp.matmul(x_sums, halves[:, :, at_m // 2].view(xp.float16).astype(xp.float32).T)
        out[:, start:stop] = y
