"""The integer scheme of a decoder's weight products (loom/kernels/exact/fixed.py, the dispatch table's
"weight" rule) for x of a few rows, straight from the stored weight rows (numba, the
optional `loom[cpu]` extra): W read once a product, never materialised.

Per row r of W: rounded_gemv's decoder writes its values (gguf's dequantization, bit for bit) into a
float32 buffer; each becomes its integer q = rint(w 2^(15 - e_r)) in float64 (exact); each row i of x's
integers (made once a product by exact.fixed) dots with them in float64: every product is an integer
below 2^30 and every partial sum one below 2^53, so the sum is exact in any order and the loop is
compiled with reassociation (vectorised). Each sum is scaled by 2^(e_x + e_r - 30) (a product with a
power of two from a table: exact, the row's exponents within float32's keep it a normal float64) and
rounded once to float32 in the same loop (fixed.finish); the caller patches IEEE's values where a row
holds inf or NaN.

`w_exponents` finds each row's e the same way, from the decoded values' largest finite magnitude.
Rows of W are split over the threads (prange over chunks of CHUNK rows), each chunk with its own
buffers; every entry comes from its own rows, so neither the split nor M changes a bit.
"""
from __future__ import annotations

import math

import numpy as np

from . import jit as cpu_jit
from . import rounded_gemv

MAX_ROWS = 16           # x with more rows: matmul_t_wide (W's integers a band at a time, a float64 GEMM each)
CHUNK = 16              # rows of W per parallel task
BAND_BYTES = 8 << 20    # float64 integers of W made at once by matmul_t_wide
MAX_K = 1 << 23         # K below this (kernels/exact/fixed.MAX_K): past it the float64 sums could round
TYPES = tuple(rounded_gemv._KINDS)
_PLAIN = ("_x_integers", "_exponent", "_w_integers", "_rounded", "_finish")
_PARALLEL = ("_sums", "_exponents")
_REASSOCIATED = ("_dot",)
prange = range
f32, f64 = np.float32, np.float64
# 2^e for every e a float64 holds (_POW2[e + 1074]): the kernels' scalings, exact, without a libm call a row
_POW2 = np.ldexp(1.0, np.arange(-1074, 1024))
_ONE_ROW = 3            # kinds below (Q8_0, Q4_0, Q4_1): one row of x takes row_dots' integer sums
_q8_0_integers = _q4_0_integers = _q4_1_integers = None     # row_dots.py's intrinsics: available()
_q8_0_rows = _q4_0_rows = _q4_1_rows = None


def available() -> bool:
    """Whether the compiled loops run here (rounded_gemv's decoders compiled first: these call them)."""
    if cpu_jit.compiled(globals()):
        return cpu_jit.available()
    if not rounded_gemv.available():
        return False
    global _q8_0_integers, _q4_0_integers, _q4_1_integers, _q8_0_rows, _q4_0_rows, _q4_1_rows
    if _q4_1_integers is None:          # bound before the kernels compile: numba resolves their globals then
        from . import row_dots
        _q8_0_integers, _q4_0_integers, _q4_1_integers = (row_dots.q8_0_integers, row_dots.q4_0_integers,
                                                          row_dots.q4_1_integers)
        _q8_0_rows, _q4_0_rows, _q4_1_rows = row_dots.q8_0_rows, row_dots.q4_0_rows, row_dots.q4_1_rows
    return cpu_jit.compile_module(globals(), plain=_PLAIN, parallel=_PARALLEL, reassociated=_REASSOCIATED)


def supports(qtype: str, m_rows: int) -> bool:
    return qtype in TYPES and 1 <= m_rows <= MAX_ROWS and available()


def w_exponents(data: np.ndarray, qtype: str, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """(int32 [rows], bool [rows]): fixed.row_exponents of each stored row decoded, and whether it holds
    inf or NaN (supports() checked)."""
    out, bad = np.empty(data.shape[0], np.int32), np.empty(data.shape[0], np.bool_)
    cpu_jit.run(_exponents, np.ascontiguousarray(data), rounded_gemv._KINDS[qtype], cols, cpu_jit.f16_table(), 16,
                out, bad)
    return out, bad


def matmul_t(x2: np.ndarray, data: np.ndarray, qtype: str, ew: np.ndarray, out: np.ndarray) -> bool:
    """out [M, rows] = x2 [M, K] @ W^T in the integer scheme (exact.fixed.matmul_t's bits) for finite x2
    and W rows with the exponents ew and no inf or NaN (supports() checked); False (out untouched) where
    x2 holds inf or NaN (the caller's decoded path gives IEEE's values)."""
    x2 = np.ascontiguousarray(x2)
    qx, ex = np.empty(x2.shape, np.float64), np.empty(x2.shape[0], np.int64)
    if not _x_integers(x2, qx, ex):
        return False
    target = out if out.dtype == np.float32 and out.flags.c_contiguous else np.empty(out.shape, np.float32)
    qx16 = qx.astype(np.int16)          # (row_dots' sums: |q| <= 32767, exact)
    cpu_jit.run(_sums, qx, qx16, ex, np.ascontiguousarray(data), rounded_gemv._KINDS[qtype], ew, cpu_jit.f16_table(),
                16, target)
    if target is not out:
        out[...] = target
    return True


def matmul_t_wide(x2: np.ndarray, data: np.ndarray, qtype: str, ew: np.ndarray, out: np.ndarray) -> bool:
    """matmul_t for x of any number of rows (a prompt's): x's integers once, then for each band of W's rows their
    integers (decoded and rounded in one compiled pass, float64) and one float64 GEMM of the integers (every partial
    sum an integer below 2^53: exact, whatever BLAS's order), scaled and rounded once as fixed.finish does. False
    (out untouched) where x2 holds inf or NaN."""
    x2 = np.ascontiguousarray(x2)
    qx, ex = np.empty(x2.shape, np.float64), np.empty(x2.shape[0], np.int64)
    if not _x_integers(x2, qx, ex):
        return False
    rows, cols = data.shape[0], x2.shape[1]
    band = max(CHUNK, min(rows, BAND_BYTES // (8 * max(cols, 1))))
    qw = np.empty((min(band, rows), cols), np.float64)
    data = np.ascontiguousarray(data)
    for start in range(0, rows, band):
        stop = min(rows, start + band)
        block = qw[:stop - start]
        cpu_jit.run(_w_integers, data, rounded_gemv._KINDS[qtype], cols, ew, cpu_jit.f16_table(), 16, start, block)
        _finish(qx @ block.T, ex, ew, start, out)
    return True


# --- the kernels ------------------------------------------------------------------------------------

def _exponent(top):
    """fixed.row_exponents' e for a row's largest finite magnitude."""
    if top == 0.0:
        return 0
    e = math.frexp(top)[1]
    return e + 1 if np.rint(math.ldexp(top, 15 - e)) > 32767.0 else e


def _x_integers(x, qx, ex):
    """x's rows' integers and exponents (fixed.to_integers, row_exponents); False where x holds inf or NaN."""
    for i in range(x.shape[0]):
        top = 0.0
        for k in range(x.shape[1]):
            v = abs(f64(x[i, k]))
            if not math.isfinite(v):
                return False
            top = max(top, v)
        e = _exponent(top)
        ex[i] = e
        scale = math.ldexp(1.0, 15 - e)
        for k in range(x.shape[1]):
            qx[i, k] = np.rint(f64(x[i, k]) * scale) + 0.0
    return True


def _exponents(data, kind, cols, f16, n16, out, bad):
    u16, i8 = data.view(np.uint16), data.view(np.int8)
    for c in prange((data.shape[0] + CHUNK - 1) // CHUNK):
        w = np.empty(cols, np.float32)
        wb = np.empty(cols // 32, np.float32)
        for r in range(c * CHUNK, min(data.shape[0], c * CHUNK + CHUNK)):
            rounded_gemv._decode(kind, data, u16, i8, r, f16, w, n16, wb)
            top = 0.0
            nonfinite = False
            for k in range(cols):
                v = abs(f64(w[k]))
                if not math.isfinite(v):
                    nonfinite = True
                elif v > top:
                    top = v
            out[r] = _exponent(top)
            bad[r] = nonfinite


def _w_integers(data, kind, cols, ew, f16, n16, start, out):
    """out[i]: the integers of W's stored row start + i (fixed.to_integers of its decoded values: rint(w 2^(15 - e)),
    exact in float64, +0 for -0, 0 for inf and NaN). One thread (about 0.3 ns a value, vectorised): OpenMP's threads
    spinning after a parallel region here took the cores from the GEMM that follows (3,072 x 576 by 256 rows: 8.1
    -> 19.7 ms, the 2-core VM)."""
    u16, i8 = data.view(np.uint16), data.view(np.int8)
    w = np.empty(cols, np.float32)
    wb = np.empty(cols // 32, np.float32)
    for i in range(out.shape[0]):
        rounded_gemv._decode(kind, data, u16, i8, start + i, f16, w, n16, wb)
        scale = _POW2[15 - ew[start + i] + 1074]
        for k in range(cols):
            q = np.rint(f64(w[k]) * scale) + 0.0
            out[i, k] = q if q - q == 0.0 else 0.0          # (inf and NaN: 0; a select, vectorised)


def _rounded(s, e):
    """fixed.finish of one exact integer sum s (float64) at exponent e = ex + ew: s 2^(e - 30) (a product by a power
    of two whose result the row exponents keep a normal float64: exact, ldexp's value), rounded once to float32 (past
    its range, inf)."""
    return f32((s + 0.0) * _POW2[e - 30 + 1074])


def _finish(sums, ex, ew, start, out):
    """out[i, start + j] = _rounded(sums[i, j], ex[i] + ew[start + j]). One thread, as _w_integers."""
    for i in range(sums.shape[0]):
        for j in range(sums.shape[1]):
            out[i, start + j] = _rounded(sums[i, j], ex[i] + ew[start + j])


def _sums(qx, qx16, ex, data, kind, ew, f16, n16, out):
    """out[i, r]: the integer sums scaled by 2^(ex[i] + ew[r] - 30) (exact: below 2^53) and rounded once to
    float32 (fixed.finish; past float32's range, inf). qx16: qx as int16, for row_dots' one-row sums."""
    u16, i8 = data.view(np.uint16), data.view(np.int8)
    cols = qx.shape[1]
    for c in prange((data.shape[0] + CHUNK - 1) // CHUNK):
        w = np.empty(cols, np.float32)
        wb = np.empty(cols // 32, np.float32)
        q = np.empty(cols, np.float64)
        totals = np.empty(qx.shape[0], np.float64)
        for r in range(c * CHUNK, min(data.shape[0], c * CHUNK + CHUNK)):
            scale = _POW2[15 - ew[r] + 1074]
            # row_dots' sums from the stored codes, the values scaled and rounded in float32: their float16 scales
            # keep every finite row's largest value within [2^-24, 2^24), so its scale 2^(15 - e) is a float32
            # (the range test only guards that); one row of x, or each of several with W's row decoded once (one row
            # keeps its own intrinsic: the several rows' int64 lanes live in memory, 1.6x slower for one, the 2-core VM)
            if kind < _ONE_ROW and -126 <= 15 - ew[r] <= 127:
                s32 = f32(scale)
                if qx.shape[0] == 1:
                    totals[0] = _q8_0_integers(data, r, qx16, s32, f16) if kind == 0 else \
                        _q4_0_integers(data, r, qx16, s32, f16) if kind == 1 else \
                        _q4_1_integers(data, r, qx16, s32, f16)
                elif kind == 0:
                    _q8_0_rows(data, r, qx16, s32, f16, totals)
                elif kind == 1:
                    _q4_0_rows(data, r, qx16, s32, f16, totals)
                else:
                    _q4_1_rows(data, r, qx16, s32, f16, totals)
                for i in range(qx.shape[0]):
                    out[i, r] = _rounded(totals[i], ex[i] + ew[r])
                continue
            rounded_gemv._decode(kind, data, u16, i8, r, f16, w, n16, wb)
            for k in range(cols):
                v = f64(w[k])
                q[k] = np.rint(v * scale) if math.isfinite(v) else 0.0      # (inf and NaN: patched after)
            for i in range(qx.shape[0]):
                out[i, r] = _rounded(_dot(qx, i, q), ex[i] + ew[r])


def _dot(qx, i, q):
    """sum_k qx[i, k] q[k]: integers, exact in float64 in any order."""
    s = 0.0
    for k in range(q.shape[0]):
        s += qx[i, k] * q[k]
    return s
