"""Deterministic mode's x @ W.T for x of a few rows, straight from the stored weight rows, and the
small stacked products of attention in a decode step (numba, the optional `loom[cpu]` extra, loaded
by loom.backend.cpu.jit): exact_rounded's bits, with W read once and never materialised.

Why: decoding (batch 1) multiplies one row of activations with every weight once per token. The
general path (loom.kernels.quant.block) dequantizes W block by block with NumPy, casts it to float64
with its column norms and runs a float64 GEMM before rounded_jit.certify: several passes over
every weight per token, much slower than this (SmolLM2-135M's shapes, Q4_1, one row of x).

The bits are exact_dispatch's ROUNDED scheme (float32, K <= ROUNDED_MAX_K): every entry is the exact
dot product of its row of x and its row of the dequantized W, rounded once to float32 (to nearest,
ties to even; an exact zero is +0). That value is unique, so finding it another way gives the same
bits. Per weight row r and row i of x:

1. the block types' row is decoded into a float32 buffer, each value exactly gguf_quants.dequantize's
   (the same float32 operations in the same order: these loops are compiled without fastmath, so
   no fused multiply-add and nothing reassociated); F16, BF16 and F32 values are converted inside
   the next step's loop instead (exact bit operations);
2. `_dot` sums the products p_k = x_k w_k in float64 (each exact there: two 24-bit significands)
   into s, and |x_k| |w_k| in float32 into t. In any order the K additions of s err by at most
   gamma_K sum |p_k| (exact_rounded's docstring), and t _T_SLACK + _T_FLOOR bounds sum |p_k| (see
   there), so e = error_factor(K) (t _T_SLACK + _T_FLOOR) + 2^-52 |s| bounds |s - exact| in the
   floats s - e, s + e: exact_rounded's e with this bound in place of the norms' product, which
   Cauchy-Schwarz keeps above it (but for t's slack), so fewer entries go on to the later stages.
   Because any order will do, `_dot` is compiled with reassociation (cpu_jit.FASTMATH: vectorised,
   several accumulators; a contracted fma(x, w, s) equals s + p, as p is exact): faster than
   strict left-to-right sums. The block types (Q8_0, Q4_*, Q5_*) skip t: their decoder writes each
   block's largest possible |w| from its scales (_BOUNDS), and `_bound` sums those times the block's
   sum of |x| (once per x row), a looser bound of sum |p_k| than t for K / 32 products instead of
   K (6% more deterministic decode tokens a second, SmolLM2-135M Q4_1, 2 cores; entries it leaves
   uncertain take `_settle`, so the bits cannot change);
3. rounded_jit._certified takes the entry where float32(s - e) and float32(s + e) agree; else
   `_settle` sums again in float64, in order, with the exact |p_k| (+0 where no product is
   nonzero), and then runs rounded_jit's later stages on the decoded row: the compensated `_dot2`,
   then the integer accumulator `_exact_dot`;
4. a row of x or of W holding inf or NaN makes t inf or NaN (float64 products of finite float32
   numbers cannot overflow). Such entries get exact.py's special value (_with_specials): the IEEE
   sum of sign(x_k) sign(w_k), infinities and NaNs kept, which is NaN or an infinity whatever the
   order (NaN payloads are not part of the result, as in exact.py's tests).

One row of x against Q8_0, Q4_0 or Q4_1 rows (a decode step's products) skips the buffer: row_dots'
q*_sum intrinsics decode each block in registers (the same float32 operations), widen the values and
add the exact products into float64 vector accumulators, and sum the block bound in the same pass
(_bound's sum; the caller applies _B_SLACK). Only an entry left uncertain decodes its row.

Rows of W are split over the threads (prange over chunks of CHUNK rows), each chunk with its own
row buffer and limbs; every entry is computed from its own row and x row only, so neither the
split nor M changes a bit. Used for x of at most MAX_ROWS rows (faster than the general path up
to 16 rows, with Q4_1 weights and with BF16); longer x (prefill) and K beyond ROUNDED_MAX_K keep
the general path. Against fast mode's float32 loops (cpu_jit) a row costs more with Q4_1 and Q8_0
(the float64 sums and the strict decode) and more still with BF16 (whose fast loop reads and
multiplies the stored halves with nothing else to do).

`matmul_stack` does the same for a stack [..., M, K] @ [..., K, N] with M <= MAX_ROWS (exact.py sends
it attention's q k^T and p v), single-threaded, with b's columns as the weight rows where they are
contiguous (k^T) and else sums along b's rows for a whole row of the output at once (v).

Stored forms: cpu_jit's docstring (and gguf_quants for the reference arithmetic). Compiled
functions here call rounded_jit's and cpu_jit's numba helpers by module attribute; numba's disk
cache checks only this file's timestamp, so a change to those helpers needs this file's cache
dropped too (touching this file does it).
"""
from __future__ import annotations

import numpy as np

from ...errors import BackendError
from . import gemv
from . import jit as cpu_jit
from . import rounded as rounded_jit

MAX_ROWS = 16           # x with more rows: decoded blocks of W and the float64 GEMM (quantized.py)
CHUNK = 16              # rows of W per parallel task, as cpu_jit
# _dot's float32 t as an upper bound of sum |x_k w_k|: in any order, fused or not, each term meets at
# most K <= 2048 roundings of 2^-24 relative (its product, the additions on its way), and each
# product at most 2^-150 absolute where it is subnormal (sums of float32 multiples of 2^-149 are
# exact there), so the exact sum is below t (1 + 2^-24)^2048 + 2048 2^-150 (1 + 2^-12), which is
# below t _T_SLACK + _T_FLOOR.
_T_SLACK = 1.0 + 2.0 ** -10
_T_FLOOR = 2.0 ** -138
# _BOUNDS: the block decoders also write each block's bound of |w| from its scales, |w| <= top |d|
# (+ |m|, the block's minimum, for Q4_1 and Q5_1), top the largest |q| of its integers: Q8_0 128
# (int8 codes), Q4_0 8 (q - 8 in [-8, 7]), Q4_1 15, Q5_0 16 (q - 16 in [-16, 15]), Q5_1 31.
# _bound's slack: each decoded w is one or two float32 roundings (2^-24 relative each; its values are
# multiples of float16's 2^-24, so never subnormal) from top |d| (+ |m|); xb's sums of at most 32
# terms and _bound's sum of K / 32 <= 64 products (K <= ROUNDED_MAX_K) err by under 2^-46 in float64.
_B_SLACK = 1.0 + 2.0 ** -20
# kind codes the kernel branches on, once per weight row; from _DIRECT on, values are read in the dot
_KINDS = {"Q8_0": 0, "Q4_0": 1, "Q4_1": 2, "Q5_0": 3, "Q5_1": 4, "F16": 5, "BF16": 6, "F32": 7}
_DIRECT, _F16, _BF16 = 5, 5, 6
_ONE_ROW = 3        # kinds below (Q8_0, Q4_0, Q4_1): one row of x takes row_dots' sums
TYPES = tuple(_KINDS)
_PLAIN = ("_decode", "_q8_0", "_q4_0", "_q4_1", "_q5_0", "_q5_1", "_f16", "_bf16", "_f32",
          "_mark", "_special", "_settle", "_first_stage", "_stack_dots", "_stack_rows", "_settle_row", "_x_tables",
          "_tally")
_PARALLEL = ("_gemv",)
_REASSOCIATED = ("_dot", "_dot_direct", "_sum", "_bound")
prange = range
f32, f64, u32 = np.float32, np.float64, np.uint32
_q8_0_sum = _q4_0_sum = _q4_1_sum = None    # row_dots.py's one-row float64 sums and bounds: available()


def available() -> bool:
    """Whether the compiled loops run here (cpu_jit.available(): numba importable, LOOM_JIT not "0",
    not a forked child of an OpenMP parent); compiles rounded_jit's helpers first, which these call."""
    if cpu_jit.compiled(globals()):     # compiled once: only the run-time switches are left to check
        return cpu_jit.available()
    if not (rounded_jit.available() and gemv.available()):
        return False
    global _q8_0_sum, _q4_0_sum, _q4_1_sum
    if _q4_1_sum is None:               # bound before the kernels compile: numba resolves their globals then
        from . import row_dots
        _q8_0_sum, _q4_0_sum, _q4_1_sum = row_dots.q8_0_sum, row_dots.q4_0_sum, row_dots.q4_1_sum
    return cpu_jit.compile_module(globals(), plain=_PLAIN, parallel=_PARALLEL, reassociated=_REASSOCIATED)


def supports(qtype: str, m_rows: int, cols: int) -> bool:
    """Whether matmul_t takes a product of `m_rows` rows of x with a `qtype` weight of `cols` columns:
    at most MAX_ROWS rows, and the JIT available. (The loops compute the rounded scheme: the caller
    checks that exact_dispatch gives it to K = cols.)"""
    return qtype in _KINDS and 1 <= m_rows <= MAX_ROWS and cols >= 1 and available()


def matmul_t(x2: np.ndarray, data: np.ndarray, qtype: str, out: np.ndarray, factor: float) -> np.ndarray:
    """out[m, r] = sum_k x2[m, k] W[r, k], each entry exact and rounded once (exact.matmul's bits,
    special values included), for W the `qtype` rows `data` (uint8 [R, row bytes]); x2 float32
    [M, cols], out float32 [M, R] C-contiguous; the caller checked supports() and the shapes;
    `factor` is exact_rounded.error_factor(cols).
    Returns int64 [2]: how many entries reached the compensated sum, and how many of those the
    exact integer sum (the tests' window into the later stages)."""
    # 16 (code bytes per block) passed at run time, as in cpu_jit: a literal trip count gets the code
    # loop unrolled before LLVM's loop vectorizer sees it
    if not cpu_jit.compiled(globals()) and not available():   # compiles once (callers checked supports())
        raise BackendError(f"the compiled exact products do not run here: {cpu_jit.unavailable_reason()}")
    counts = np.zeros(2, np.int64)
    cpu_jit.run(_gemv, np.ascontiguousarray(x2), np.ascontiguousarray(data), _KINDS[qtype], out,
                cpu_jit.f16_table(), 16, factor, counts)
    return counts


def takes_stack(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether matmul_stack takes a @ b: float32 stacks [..., M, K] @ [..., K, N] of one batch shape
    (no broadcasting), M at most MAX_ROWS, nothing empty, the JIT available (the caller checks that
    K has the rounded scheme)."""
    return (a.dtype == np.float32 and b.dtype == np.float32 and a.ndim == b.ndim > 2
            and a.shape[:-2] == b.shape[:-2] and 1 <= a.shape[-2] <= MAX_ROWS and a.size > 0 and b.size > 0
            and available())


def matmul_stack(a: np.ndarray, b: np.ndarray, factor: float) -> np.ndarray:
    """a @ b for stacks that takes_stack(), each entry exact and rounded once (exact.matmul's bits,
    special values included): attention's q k^T and p v in a decode step, whose stacks the float64
    GEMM path takes only through NumPy (exact_rounded._matmul_numpy, slower per head group than
    these loops). Single-threaded: a parallel launch costs more than such products."""
    m, k, n = a.shape[-2], a.shape[-1], b.shape[-1]
    x = np.ascontiguousarray(a).reshape(-1, k)
    out = np.empty(a.shape[:-1] + (n,), np.float32)
    counts = np.zeros(2, np.int64)
    if b.strides[-2] == b.itemsize:     # b's columns are contiguous (k^T: the keys' rows): dots
        _stack_dots(x, np.swapaxes(b, -1, -2).reshape(-1, n, k), m, out.reshape(-1, n), factor, counts)
    else:                               # b's rows (v): sums along them, every column at once
        _stack_rows(x, np.ascontiguousarray(b).reshape(-1, k, n), m, out.reshape(-1, n), factor, counts)
    return out


# --- the kernels ------------------------------------------------------------------------------------
# x is 2-D [rows, K] in both: the entries' rows of a; out [rows, N]. Arrays are indexed, never sliced,
# inside the loops: a view there costs a reference count update on the parent, shared by the threads
# (measured 16 ns a weight row).

def _x_tables(x, kind, rows):
    """_gemv's tables of x, and its per-chunk stage counts for `rows` rows of W (zeros). A plain
    function: in the parallel kernel each array expression would be a parallel region of its own,
    launched in turn (about 7 us of a one-row product's 9)."""
    x64, ax = x.astype(np.float64), np.abs(x) if kind >= _DIRECT else x     # (|x|: the 16/32-bit types' dots)
    xb = np.zeros((x.shape[0], x.shape[1] // 32))       # block types: each block's sum of |x|
    for i in range(x.shape[0] if kind < _DIRECT else 0):
        for k in range(xb.shape[1] * 32):
            xb[i, k // 32] += ax[i, k]
    return x64, ax, xb, np.zeros(((rows + CHUNK - 1) // CHUNK, 2), np.int64)


def _tally(counts, stages):
    """counts += the chunks' stage counts (plain, as _x_tables)."""
    for c in range(stages.shape[0]):
        counts[0] += stages[c, 0]
        counts[1] += stages[c, 1]


def _gemv(x, data, kind, out, f16, n16, factor, counts):
    x64, ax, xb, stages = _x_tables(x, kind, data.shape[0])
    u16, i8 = data.view(np.uint16), data.view(np.int8)      # every type's rows have an even byte count
    for c in prange(stages.shape[0]):
        first, end = c * CHUNK, min(data.shape[0], c * CHUNK + CHUNK)
        if x.shape[0] == 1 and kind < _ONE_ROW:     # row_dots' sums and bounds, from the stored codes
            for r in range(first, end):
                s, bound = _q8_0_sum(data, r, x64, xb, f16) if kind == 0 else \
                    _q4_0_sum(data, r, x64, xb, f16) if kind == 1 else _q4_1_sum(data, r, x64, xb, f16)
                v, certain = _first_stage(s, bound * _B_SLACK, factor)
                out[0, r] = v if certain else _settle_row(kind, data, u16, i8, r, f16, n16, x, factor, stages, c)
            continue
        w = np.empty(x.shape[1], np.float32)       # (allocations a chunk: 3 of them were a tenth of a
        wb = np.empty(x.shape[1] // 32, np.float64)   # one-row product's time, so that path has none)
        limbs = np.zeros(rounded_jit.LIMBS, np.int64)
        for r in range(first, end):
            decoded = False
            if kind < _DIRECT:
                _decode(kind, data, u16, i8, r, f16, w, n16, wb)
                decoded = True
            for i in range(x.shape[0]):
                if kind < _DIRECT:
                    s, t = _sum(x64, i, w), _bound(wb, xb, i)
                else:
                    s, t = _dot_direct(kind, x64, ax, i, u16, r)
                v, certain = _first_stage(s, t, factor)
                if not certain:
                    if not decoded:             # these rows were never decoded: now, for the later stages
                        _decode(kind, data, u16, i8, r, f16, w, n16, wb)
                        decoded = True
                    v = _settle(x, w, i, factor, limbs, stages, c)
                out[i, r] = v
    _tally(counts, stages)


def _settle_row(kind, data, u16, i8, r, f16, n16, x, factor, stages, c):
    """The later stages for the one row of x against stored row r, which the first left uncertain (its
    own buffers: rare, so the chunks of certain rows allocate none)."""
    w = np.empty(x.shape[1], np.float32)
    wb = np.empty(x.shape[1] // 32, np.float64)
    _decode(kind, data, u16, i8, r, f16, w, n16, wb)
    return _settle(x, w, 0, factor, np.zeros(rounded_jit.LIMBS, np.int64), stages, c)


def _stack_dots(x, columns, m, out, factor, counts):
    """columns [G, N, K] (any layout, a view of b): column j of b[g] is columns[g, j]; rows
    g m .. g m + m - 1 of x go with b[g]."""
    x64, ax = x.astype(np.float64), np.abs(x)
    stages = np.zeros((1, 2), np.int64)
    w = np.empty(x.shape[1], np.float32)
    limbs = np.zeros(rounded_jit.LIMBS, np.int64)
    for g in range(columns.shape[0]):
        for j in range(columns.shape[1]):
            for k in range(columns.shape[2]):
                w[k] = columns[g, j, k]
            for i in range(g * m, g * m + m):
                s, t = _dot(x64, ax, i, w)
                v, certain = _first_stage(s, t, factor)
                out[i, j] = v if certain else _settle(x, w, i, factor, limbs, stages, 0)
    counts += stages[0]


def _stack_rows(x, rows, m, out, factor, counts):
    """rows [G, K, N] C-contiguous: b itself. _dot's sums for a whole row of out at once, along
    b's rows (each entry's s and t still sums of its own K products: the same bounds)."""
    x64, ax = x.astype(np.float64), np.abs(x)
    n = rows.shape[2]
    stages = np.zeros((1, 2), np.int64)
    s = np.empty(n, np.float64)
    t = np.empty(n, np.float32)
    w = np.empty(x.shape[1], np.float32)
    limbs = np.zeros(rounded_jit.LIMBS, np.int64)
    for g in range(rows.shape[0]):
        for i in range(g * m, g * m + m):
            s[:] = 0.0
            t[:] = 0.0
            for k in range(rows.shape[1]):
                xk, ak = x64[i, k], ax[i, k]
                for j in range(n):
                    s[j] += xk * f64(rows[g, k, j])
                    t[j] += ak * abs(rows[g, k, j])
            for j in range(n):
                v, certain = _first_stage(s[j], f64(t[j]), factor)
                if not certain:
                    for k in range(rows.shape[1]):
                        w[k] = rows[g, k, j]
                    v = _settle(x, w, i, factor, limbs, stages, 0)
                out[i, j] = v
    counts += stages[0]


def _first_stage(s, t, factor):
    """(value, certain) from _dot's sums. An inf or NaN t (a row holds inf or NaN, or t overflowed
    float32) is never certain: rounded_jit._certified would call an infinite bound certain."""
    v, certain = rounded_jit._certified(s, factor * (t * _T_SLACK + _T_FLOOR) + abs(s) * 2.0 ** -52)
    return v, certain and t < np.inf


def _dot(x64, ax, i, w):
    """(s, t): s = sum_k x_k w_k in float64, t = sum_k |x_k| |w_k| in float32 (returned as float64),
    both in whatever order the compiler likes."""
    s = 0.0
    t = f32(0.0)
    for k in range(w.shape[0]):
        s += x64[i, k] * f64(w[k])
        t += ax[i, k] * abs(w[k])
    return s, f64(t)


def _sum(x64, i, w):
    """sum_k x_k w_k in float64, in whatever order the compiler likes (_dot without t)."""
    s = 0.0
    for k in range(w.shape[0]):
        s += x64[i, k] * f64(w[k])
    return s


def _bound(wb, xb, i):
    """An upper bound of sum_k |x_k| |w_k| for a row of a block type, in place of _dot's t: per block
    of 32, the largest |w| its scales allow (wb, from _decode: _BOUNDS) times the block's sum of |x|
    (xb). inf or NaN where a scale or x is: such entries are never certain (_first_stage)."""
    bound = 0.0
    for b in range(wb.shape[0]):
        bound += wb[b] * xb[i, b]
    return bound * _B_SLACK


def _dot_direct(kind, x64, ax, i, u16, r):
    """_dot with stored row r of F16, BF16 or F32 values converted in the loop (exactly: bit
    operations, and gemv._half's product of a 10-bit integer and 2^-24 for subnormals): one pass
    where decoding into the buffer first took a large share of a BF16 row's time."""
    s = 0.0
    t = f32(0.0)
    if kind == _BF16:
        for k in range(ax.shape[1]):
            v = u32(u32(u16[r, k]) << u32(16)).view(np.float32)
            s += x64[i, k] * f64(v)
            t += ax[i, k] * abs(v)
    elif kind == _F16:
        for k in range(ax.shape[1]):
            v = gemv._half(u16[r, k])
            s += x64[i, k] * f64(v)
            t += ax[i, k] * abs(v)
    else:
        for k in range(ax.shape[1]):
            v = u32(u32(u16[r, 2 * k]) | (u32(u16[r, 2 * k + 1]) << u32(16))).view(np.float32)
            s += x64[i, k] * f64(v)
            t += ax[i, k] * abs(v)
    return s, f64(t)


def _settle(x, w, i, factor, limbs, stages, c):
    """An entry _dot's sums could not certify: the sums again in float64 in order (t exact up to
    its own rounding), then IEEE's special value where t is inf or NaN, +0 where it is 0, else the
    certification with this t, then rounded_jit's later stages on the decoded row (those counted
    in stages[c])."""
    s = 0.0
    t = 0.0
    for k in range(w.shape[0]):
        p = f64(x[i, k]) * f64(w[k])
        s += p
        t += abs(p)
    if not t < np.inf:                  # inf or NaN in x's row or W's row
        return _special(x, w, i)
    v, certain = rounded_jit._certified(s, factor * t + abs(s) * 2.0 ** -52)     # t == 0: +0
    if certain:
        return v
    column = w.reshape((w.shape[0], 1))     # rounded_jit's stages take a row of a, a column of b
    stages[c, 0] += 1
    v, certain = rounded_jit._dot2(x, column, i, 0)
    if certain:
        return v
    stages[c, 1] += 1
    return rounded_jit._exact_dot(x, column, i, 0, limbs)


def _mark(v):
    """exact._special_values' mark: the sign of a finite float32 (0 for zeros), inf and NaN kept."""
    if not np.isfinite(v):
        return v
    return f32(1.0) if v > 0 else f32(-1.0) if v < 0 else f32(0.0)


def _special(x, w, i):
    """The IEEE sum of _mark(x_k) _mark(w_k) in float32: NaN or an infinity (inf and NaN propagate,
    0 inf and inf - inf make NaN; the finite terms, at most 2048 of +-1, cannot overflow)."""
    acc = f32(0.0)
    for k in range(w.shape[0]):
        acc += _mark(x[i, k]) * _mark(w[k])
    return acc


# --- decoders: stored row r -> w float32 [cols], each value gguf_quants.dequantize's ----------------
# Strict float32 as NumPy computes it (Q4_1: float32(d q) + m, two roundings, never an FMA). u8, u16
# and i8 are the stored bytes viewed as uint8, uint16 (every scale field sits at an even byte) and
# int8; nibbles are split in float32 (exact on small integers), as in cpu_jit; f16 is cpu_jit's
# table of every float16 as float32.

def _decode(kind, u8, u16, i8, r, f16, w, n16, wb):
    """Row r into w; for the block types also each block's bound of |w| into wb (_BOUNDS)."""
    if kind == 0:
        _q8_0(u16, i8, r, f16, w, n16, wb)
    elif kind == 1:
        _q4_0(u8, u16, r, f16, w, n16, wb)
    elif kind == 2:
        _q4_1(u8, u16, r, f16, w, n16, wb)
    elif kind == 3:
        _q5_0(u8, u16, r, f16, w, n16, wb)
    elif kind == 4:
        _q5_1(u8, u16, r, f16, w, n16, wb)
    elif kind == 5:
        _f16(u16, r, w)
    elif kind == 6:
        _bf16(u16, r, w)
    else:
        _f32(u16, r, w)


def _q8_0(u16, i8, r, f16, w, n16, wb):
    for b in range(w.shape[0] // 32):
        d = f16[u16[r, 17 * b]]
        wb[b] = 128.0 * abs(f64(d))
        for j in range(2 * n16):
            w[32 * b + j] = d * f32(i8[r, 34 * b + 2 + j])


def _q4_0(u8, u16, r, f16, w, n16, wb):
    for b in range(w.shape[0] // 32):
        d = f16[u16[r, 9 * b]]
        wb[b] = 8.0 * abs(f64(d))
        for j in range(n16):
            q = f32(u8[r, 18 * b + 2 + j])
            hi = np.floor(q * f32(0.0625))
            w[32 * b + j] = d * (q - f32(16) * hi - f32(8))
            w[32 * b + 16 + j] = d * (hi - f32(8))


def _q4_1(u8, u16, r, f16, w, n16, wb):
    for b in range(w.shape[0] // 32):
        d, m = f16[u16[r, 10 * b]], f16[u16[r, 10 * b + 1]]
        wb[b] = 15.0 * abs(f64(d)) + abs(f64(m))
        for j in range(n16):
            q = f32(u8[r, 20 * b + 4 + j])
            hi = np.floor(q * f32(0.0625))
            w[32 * b + j] = d * (q - f32(16) * hi) + m
            w[32 * b + 16 + j] = d * hi + m


def _q5_0(u8, u16, r, f16, w, n16, wb):
    for b in range(w.shape[0] // 32):
        d = f16[u16[r, 11 * b]]
        wb[b] = 16.0 * abs(f64(d))
        fifth = u32(u16[r, 11 * b + 1]) | (u32(u16[r, 11 * b + 2]) << u32(16))
        for j in range(n16):
            q = f32(u8[r, 22 * b + 6 + j])
            hi = np.floor(q * f32(0.0625))
            w[32 * b + j] = d * (q - f32(16) * hi + f32(16) * f32((fifth >> j) & 1) - f32(16))
            w[32 * b + 16 + j] = d * (hi + f32(16) * f32((fifth >> (j + 16)) & 1) - f32(16))


def _q5_1(u8, u16, r, f16, w, n16, wb):
    for b in range(w.shape[0] // 32):
        d, m = f16[u16[r, 12 * b]], f16[u16[r, 12 * b + 1]]
        wb[b] = 31.0 * abs(f64(d)) + abs(f64(m))
        fifth = u32(u16[r, 12 * b + 2]) | (u32(u16[r, 12 * b + 3]) << u32(16))
        for j in range(n16):
            q = f32(u8[r, 24 * b + 8 + j])
            hi = np.floor(q * f32(0.0625))
            w[32 * b + j] = d * (q - f32(16) * hi + f32(16) * f32((fifth >> j) & 1)) + m
            w[32 * b + 16 + j] = d * (hi + f32(16) * f32((fifth >> (j + 16)) & 1)) + m


def _f16(u16, r, w):
    for k in range(w.shape[0]):
        w[k] = gemv._half(u16[r, k])


def _bf16(u16, r, w):
    for k in range(w.shape[0]):
        w[k] = u32(u32(u16[r, k]) << u32(16)).view(np.float32)


def _f32(u16, r, w):
    for k in range(w.shape[0]):        # little-endian, as the uint16 views of the scales assume
        w[k] = u32(u32(u16[r, 2 * k]) | (u32(u16[r, 2 * k + 1]) << u32(16))).view(np.float32)
