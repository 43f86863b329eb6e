"""Products of a few rows of x with stored weights in the integer scheme proposed for spec 4
(loom/kernels/exact/fixed.py; branch work, not yet dispatched): the decode step's products with int
multiply-adds in place of spec 3's float64 sums, certification and settling.

Four kernels:
- `loom_fixed_w_exponents`, once per weight: a warp a row of W decodes it (quant.BLOCK_DECODE's values,
  exactly gguf's dequantization) and finds fixed.row_exponents' e from the largest finite magnitude
  (frexpf, then the spill past 32767), and whether the row holds inf or NaN;
- `loom_fixed_x`, once per product: a block a row of x writes the same exponent and the row's integers
  q = rint(x 2^(15 - e)) as int16 (every |q| <= 32767), computed in float64, where they are exact;
- `loom_fixed_gemv`: a warp a row of W; lane l takes value group l & 7 of units l >> 3, l >> 3 + 4, ...
  (block_values' layout), rounds each decoded value to its integer in float64 and adds its products with
  each row of x's integers into an int64 (each product below 2^30: exact); the warp adds its lanes'
  int64 sums, exact in any order, and lane 0 scales the sum by 2^(ex + ew - 30) in float64 (exact: the sum
  is below 2^53) and rounds once to float32. A row of x or W holding inf or NaN gives IEEE's value of the
  sum of sign products with the infinities and NaNs kept (exact._special_values), which is not finite.
- `loom_fixed_rows`, for up to ROWS_MAX rows of x (decode batches): quant_rows' layout with the int8
  tensor cores in place of the float64 ones. Each integer splits into planes, q = 256 hi + lo (hi = q >> 8
  signed, lo = q & 255 unsigned), and a warp's fragment of 16 rows of x by 8 rows of W takes four
  m16n8k32 products a 32-value unit (hi.hi, hi.lo, lo.hi, lo.lo, each exact in int32 up to K = 2^15),
  combined in int64 as 65536 HH + 256 (HL + LH) + LL. As in quant_rows, lane c of a quad takes
  block_values' eight values for lanes 2c and 2c + 1 as its k (x the same positions): the sums are
  exact, so the order of k is free. The block's warps split K and add their int64 sums in shared memory
  (atomics: integer additions, any order), and the block rounds its entries once.
Capturable: sizes as arguments, no sync, no host read.
"""
from __future__ import annotations

from collections.abc import Callable
from functools import cache

import cupy
import numpy as np

from ...errors import BackendError, ShapeError
from .. import Array
from .compile import OPTIONS
from .fused_exact import helpers
from .launch import OVERLAP_PROLOGUE
from .quant import BLOCK_DECODE, K_LAYOUTS, TYPES, pointer, type_defines
from .quant_exact import _multiprocessors
from .quant_rows import PLAIN

MAX_ROWS = 4                # rows of x the one-row kernel takes (decode steps)
ROWS_MAX = 64               # rows of x loom_fixed_rows takes (decode batches)
RW = 8                      # warps a block of loom_fixed_rows, each over every RW-th unit of K
MAX_K = 1 << 23             # (loom.kernels.exact.fixed.MAX_K: past it the float64 sums could round)
WARPS = 8                   # warps a block of the product and of the exponents' kernel
X_THREADS = 256

_SOURCE = r"""
#define LOOM_FULL 0xffffffffu
#define LIMIT 32767.0f

// fixed.row_exponents' e for the largest finite magnitude m of a row
__device__ __forceinline__ int loom_fixed_exponent(float m) {
    if (m == 0.0f) return 0;
    int e;
    frexpf(m, &e);
    return rintf(ldexpf(m, 15 - e)) > LIMIT ? e + 1 : e;
}

__device__ __forceinline__ float loom_fixed_mark(float v) {
    return isfinite(v) ? (v > 0.0f ? 1.0f : (v < 0.0f ? -1.0f : 0.0f)) : v;
}

__device__ __forceinline__ const unsigned char* loom_fixed_row(const unsigned char* w, long long r, int nb) {
    return w + r * (long long)(nb / SUBS) * BLOCK;
}

// ew[r], bad[r] for each row r of W (rows, nb 32-value units a row): a warp a row
extern "C" __global__ void __launch_bounds__(WARPS * 32) loom_fixed_w_exponents(
        const unsigned char* __restrict__ w, int* __restrict__ ew, int* __restrict__ bad, long long rows, int nb) {
    const long long r = (long long)blockIdx.x * WARPS + (threadIdx.x >> 5);
    if (r >= rows) return;
    const int lane = threadIdx.x & 31;
    const unsigned char* row = loom_fixed_row(w, r, nb);
    float top = 0.0f;
    int nonfinite = 0;
    for (int b = lane >> 3; b < nb; b += 4) {
        float v[4]; int at[4];
        block_values(row, b, lane & 7, v, at);
        #pragma unroll
        for (int j = 0; j < 4; ++j) {
            if (isfinite(v[j])) top = fmaxf(top, fabsf(v[j]));
            else nonfinite = 1;
        }
    }
    for (int o = 16; o; o >>= 1) {
        top = fmaxf(top, __shfl_xor_sync(LOOM_FULL, top, o));
        nonfinite |= __shfl_xor_sync(LOOM_FULL, nonfinite, o);
    }
    if (lane == 0) { ew[r] = loom_fixed_exponent(top); bad[r] = nonfinite; }
}

// xq[m, :], ex[m], bad[m] for each row m of x [M, K]: a block a row
extern "C" __global__ void __launch_bounds__(X_THREADS) loom_fixed_x(
        const float* __restrict__ x, short* __restrict__ xq, int* __restrict__ ex, int* __restrict__ bad, int K) {
    __shared__ float top_s[X_THREADS / 32];
    __shared__ int bad_s[X_THREADS / 32];
    __shared__ int e_s;
    const float* row = x + (long long)blockIdx.x * K;
    float top = 0.0f;
    int nonfinite = 0;
    for (int k = threadIdx.x; k < K; k += X_THREADS) {
        const float v = row[k];
        if (isfinite(v)) top = fmaxf(top, fabsf(v));
        else nonfinite = 1;
    }
    for (int o = 16; o; o >>= 1) {
        top = fmaxf(top, __shfl_xor_sync(LOOM_FULL, top, o));
        nonfinite |= __shfl_xor_sync(LOOM_FULL, nonfinite, o);
    }
    if ((threadIdx.x & 31) == 0) { top_s[threadIdx.x >> 5] = top; bad_s[threadIdx.x >> 5] = nonfinite; }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int i = 1; i < X_THREADS / 32; ++i) { top = fmaxf(top, top_s[i]); nonfinite |= bad_s[i]; }
        e_s = loom_fixed_exponent(top);
        ex[blockIdx.x] = e_s;
        bad[blockIdx.x] = nonfinite;
    }
    __syncthreads();
    const int shift = 15 - e_s;
    short* q = xq + (long long)blockIdx.x * K;
    for (int k = threadIdx.x; k < K; k += X_THREADS) {
        const float v = row[k];
        q[k] = isfinite(v) ? (short)__double2int_rn(ldexp((double)v, shift)) : (short)0;
    }
}

// The epilogue of an entry from its products y[0] (and SwiGLU's up half y[1]), each rounded once:
// quant_finish's loom_tile_finish's (bias +) value, silu(gate) * up, (residual +)
__device__ __forceinline__ void loom_fixed_store(float* y, const float* bias, const float* res, float* out,
                                                 long long at, long long wr, long long rows) {
    #pragma unroll
    for (int e = 0; e <= EPI; ++e) if (bias != 0) y[e] = y[e] + bias[wr + e * rows];
    const float r = EPI == 1 ? (y[0] * loom_sigmoid(y[0])) * y[EPI] : y[0];
    out[at] = res != 0 ? res[at] + r : r;
}

// out[m, r] for the rows r of the output (SwiGLU: stored rows r and rows + r) and the M (<= MAX_ROWS)
// rows of x: a warp an output row
extern "C" __global__ void __launch_bounds__(WARPS * 32) loom_fixed_gemv(
        const unsigned char* __restrict__ w, const int* __restrict__ ew, const int* __restrict__ wbad,
        const short* __restrict__ xq, const int* __restrict__ ex, const int* __restrict__ xbad,
        const float* __restrict__ x, float* __restrict__ out, const float* __restrict__ bias,
        const float* __restrict__ res, long long rows, int nb, int M) {
    const long long r = (long long)blockIdx.x * WARPS + (threadIdx.x >> 5);
    if (r >= rows) return;
    const int lane = threadIdx.x & 31, K = 32 * nb;
    long long acc[EPI + 1][MAX_ROWS];
    #pragma unroll
    for (int e = 0; e <= EPI; ++e) {
        const long long wr = r + e * rows;
        const unsigned char* row = loom_fixed_row(w, wr, nb);
        const int shift = 15 - ew[wr];
        #pragma unroll
        for (int m = 0; m < MAX_ROWS; ++m) acc[e][m] = 0;
        for (int b = lane >> 3; b < nb; b += 4) {
            float v[4]; int at[4];
            block_values(row, b, lane & 7, v, at);
            #pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int q = isfinite(v[j]) ? __double2int_rn(ldexp((double)v[j], shift)) : 0;
                #pragma unroll
                for (int m = 0; m < MAX_ROWS; ++m)
                    if (m < M) acc[e][m] += (long long)(q * (int)xq[(long long)m * K + 32 * b + at[j]]);
            }
        }
    }
    #pragma unroll
    for (int m = 0; m < MAX_ROWS; ++m) {
        if (m >= M) break;
        float y[EPI + 1];
        #pragma unroll
        for (int e = 0; e <= EPI; ++e) {
            const long long wr = r + e * rows;
            long long s = acc[e][m];
            for (int o = 16; o; o >>= 1) s += __shfl_xor_sync(LOOM_FULL, s, o);
            if (xbad[m] || wbad[wr]) {          // IEEE's value: sign products, infinities and NaNs kept
                const unsigned char* row = loom_fixed_row(w, wr, nb);
                float t = 0.0f;
                for (int b = lane >> 3; b < nb; b += 4) {
                    float v[4]; int at[4];
                    block_values(row, b, lane & 7, v, at);
                    #pragma unroll
                    for (int j = 0; j < 4; ++j) {
                        const float xv = x[(long long)m * K + 32 * b + at[j]];
                        t = __fadd_rn(t, __fmul_rn(loom_fixed_mark(xv), loom_fixed_mark(v[j])));
                    }
                }
                for (int o = 16; o; o >>= 1) t = __fadd_rn(t, __shfl_xor_sync(LOOM_FULL, t, o));
                y[e] = t;
            } else {
                y[e] = __double2float_rn(ldexp((double)s, ex[m] + ew[wr] - 30));
            }
        }
        if (lane == 0) loom_fixed_store(y, bias, res, out, (long long)m * rows + r, r, rows);
    }
}
"""


_ROWS_SOURCE = r"""
#define XROWS (16 * MF)
#define OUTS (EPI ? 4 * NF : 8 * NF)             // output rows a block takes (SwiGLU: fragment pairs)

#define LOOM_IMMA(AT, BT) asm volatile( \
    "mma.sync.aligned.m16n8k32.row.col.s32." AT "." BT ".s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};" \
    : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3]) \
    : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]))

// kind: 0 s8.s8, 1 s8.u8, 2 u8.s8, 3 u8.u8 (A's plane, B's plane)
__device__ __forceinline__ void loom_imma(int* c, const unsigned* a, const unsigned* b, int kind) {
    if (kind == 0) LOOM_IMMA("s8", "s8");
    else if (kind == 1) LOOM_IMMA("s8", "u8");
    else if (kind == 2) LOOM_IMMA("u8", "s8");
    else LOOM_IMMA("u8", "u8");
}

// four integers' planes packed four to a register: hi (q >> 8, signed bytes) and lo (q & 255)
__device__ __forceinline__ void loom_planes(const int* q, unsigned* hi, unsigned* lo) {
    *hi = 0u; *lo = 0u;
    #pragma unroll
    for (int j = 0; j < 4; ++j) {
        *hi |= ((unsigned)(q[j] >> 8) & 0xFFu) << (8 * j);
        *lo |= ((unsigned)q[j] & 0xFFu) << (8 * j);
    }
}

// out[m, n] for the M (<= ROWS_MAX) rows of x and rows n of W; a block XROWS rows of x by OUTS rows of W
extern "C" __global__ void __launch_bounds__(RW * 32) loom_fixed_rows(
        const unsigned char* __restrict__ w, const int* __restrict__ ew, const int* __restrict__ wbad,
        const short* __restrict__ xq, const int* __restrict__ ex, const int* __restrict__ xbad,
        const float* __restrict__ x, float* __restrict__ out, const float* __restrict__ bias,
        const float* __restrict__ res, long long rows, int nb, int M) {
    __shared__ unsigned long long sums_s[XROWS * 8 * NF];       // a column a stored W row the block takes
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, c = lane & 3, K = 32 * nb;
    const long long out_blocks = (rows + OUTS - 1) / OUTS;
    const long long o0 = (blockIdx.x % out_blocks) * OUTS;
    const int m0 = (int)(blockIdx.x / out_blocks) * XROWS;
    for (int i = threadIdx.x; i < XROWS * 8 * NF; i += RW * 32) sums_s[i] = 0ull;
    // this lane's stored W row in each fragment (SwiGLU: even fragments the gate rows, odd the up rows)
    const unsigned char* wrow[NF];
    int shift[NF];
    bool wok[NF];
    #pragma unroll
    for (int f = 0; f < NF; ++f) {
        const long long n = EPI ? o0 + 8 * (f >> 1) + g : o0 + 8 * f + g;
        const long long wr = EPI ? n + (f & 1) * rows : n;
        wok[f] = n < rows;
        wrow[f] = loom_fixed_row(w, wok[f] ? wr : 0, nb);
        shift[f] = wok[f] ? 15 - ew[wr] : 0;
    }
    int acc[MF][NF][4][4];
    #pragma unroll
    for (int i = 0; i < MF; ++i)
        #pragma unroll
        for (int f = 0; f < NF; ++f)
            #pragma unroll
            for (int p = 0; p < 4; ++p)
                #pragma unroll
                for (int v = 0; v < 4; ++v) acc[i][f][p][v] = 0;
    for (int b = warp; b < nb; b += RW) {
        int at[8];
        unsigned bh[NF][2], bl[NF][2];
        #pragma unroll
        for (int f = 0; f < NF; ++f) {
            float v[8];
            block_values(wrow[f], b, 2 * c, v, at);
            block_values(wrow[f], b, 2 * c + 1, v + 4, at + 4);
            int q[8];
            #pragma unroll
            for (int j = 0; j < 8; ++j)
                q[j] = wok[f] && isfinite(v[j]) ? __double2int_rn(ldexp((double)v[j], shift[f])) : 0;
            loom_planes(q, &bh[f][0], &bl[f][0]);
            loom_planes(q + 4, &bh[f][1], &bl[f][1]);
        }
        #pragma unroll
        for (int i = 0; i < MF; ++i) {
            // a0/a2: row g's values at this lane's positions 0-3 / 4-7; a1/a3: row g + 8's
            unsigned ah[4], al[4];
            #pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int m = m0 + 16 * i + 8 * h + g;
                int q[8];
                #pragma unroll
                for (int j = 0; j < 8; ++j) q[j] = m < M ? (int)xq[(long long)m * K + 32 * b + at[j]] : 0;
                loom_planes(q, &ah[h], &al[h]);
                loom_planes(q + 4, &ah[h + 2], &al[h + 2]);
            }
            #pragma unroll
            for (int f = 0; f < NF; ++f) {
                loom_imma(acc[i][f][0], ah, bh[f], 0);
                loom_imma(acc[i][f][1], ah, bl[f], 1);
                loom_imma(acc[i][f][2], al, bh[f], 2);
                loom_imma(acc[i][f][3], al, bl[f], 3);
            }
        }
    }
    __syncthreads();                            // (sums_s zeroed)
    #pragma unroll
    for (int i = 0; i < MF; ++i)
        #pragma unroll
        for (int f = 0; f < NF; ++f)
            #pragma unroll
            for (int v = 0; v < 4; ++v) {
                const long long s = 65536LL * acc[i][f][0][v] + 256LL * ((long long)acc[i][f][1][v] + acc[i][f][2][v])
                                    + acc[i][f][3][v];
                const int lm = 16 * i + 8 * (v >> 1) + g, ln = 8 * f + 2 * c + (v & 1);
                atomicAdd(&sums_s[lm * 8 * NF + ln], (unsigned long long)s);   // two's complement: exact
            }
    __syncthreads();
    for (int e = threadIdx.x; e < XROWS * OUTS; e += RW * 32) {
        const int lm = e / OUTS, o = e % OUTS, m = m0 + lm;
        const long long n = o0 + o;
        if (m >= M || n >= rows) continue;
        float y[EPI + 1];
        #pragma unroll
        for (int h = 0; h <= EPI; ++h) {
            // the sums' column: SwiGLU's output o is column within its fragment pair's gate (h 0) or up (h 1)
            const int col = EPI ? 8 * (2 * (o >> 3) + h) + (o & 7) : o;
            const long long wr = n + h * rows;
            if (xbad[m] || wbad[wr]) {          // IEEE's value, by one thread (rare)
                const unsigned char* row = loom_fixed_row(w, wr, nb);
                float t = 0.0f;
                for (int u = 0; u < nb; ++u)
                    for (int l = 0; l < 8; ++l) {
                        float v[4]; int pos[4];
                        block_values(row, u, l, v, pos);
                        for (int j = 0; j < 4; ++j) {
                            const float xv = x[(long long)m * K + 32 * u + pos[j]];
                            t = __fadd_rn(t, __fmul_rn(loom_fixed_mark(xv), loom_fixed_mark(v[j])));
                        }
                    }
                y[h] = t;
            } else {
                y[h] = __double2float_rn(ldexp((double)(long long)sums_s[lm * 8 * NF + col], ex[m] + ew[wr] - 30));
            }
        }
        loom_fixed_store(y, bias, res, out, (long long)m * rows + n, n, rows);
    }
}
"""


def _head(epilogue: int) -> str:
    return (f"typedef float T;\n#define MAX_ROWS {MAX_ROWS}\n#define WARPS {WARPS}\n#define X_THREADS {X_THREADS}\n"
            f"#define RW {RW}\n#define EPI {epilogue}\n" + helpers())


@cache
def _module(qtype: str, epilogue: int = 0):
    return cupy.RawModule(code=_head(epilogue) + type_defines(qtype) + OVERLAP_PROLOGUE + BLOCK_DECODE + _SOURCE,
                          options=OPTIONS)


@cache
def _rows_module(qtype: str, epilogue: int, x_frags: int, w_frags: int):
    return cupy.RawModule(code=_head(epilogue) + f"#define MF {x_frags}\n#define NF {w_frags}\n" + type_defines(qtype)
                          + OVERLAP_PROLOGUE + BLOCK_DECODE + _SOURCE + _ROWS_SOURCE, options=OPTIONS)


def unsupported(qtype: str, cols: int) -> str | None:
    """Why the integer kernels cannot take products with a weight stored as qtype over K = cols, or None."""
    try:
        _check(qtype, cols)
    except ShapeError as e:
        return str(e)
    return None


def weight_tables(tables: dict, name: str, make: Callable[[], object]) -> object:
    """tables[name], made by make() the first time and kept (a weight's BlockQuantized.tables, shared by the
    decode graphs and the prompt products), never inside a recording (its kernels would run only at the
    replays): there it raises RuntimeError, which makes a GraphCache run that step eagerly."""
    if name not in tables:
        if cupy.cuda.get_current_stream().is_capturing():
            raise RuntimeError(f"a weight's {name.replace('_', ' ')} are made by its first product, not inside a "
                               "CUDA graph's recording")
        tables[name] = make()
    return tables[name]


def _check(qtype: str, cols: int, x: Array | None = None) -> None:
    if x is not None and (x.dtype != np.float32 or x.ndim != 2 or not x.flags.c_contiguous):
        raise ShapeError(f"x must be float32 [M, K], C-contiguous, got {x.dtype} {x.shape}")
    if cols >= MAX_K:
        raise ShapeError(f"the integer scheme sums at most {MAX_K - 1} products exactly, got K = {cols}")
    if qtype not in TYPES:
        raise ShapeError(f"no integer product kernel for weights stored as {qtype} (it takes {', '.join(TYPES)})")
    unit = 256 if qtype in K_LAYOUTS else 32
    if cols % unit or cols <= 0:
        raise ShapeError(f"a width of {cols} is not a positive multiple of {unit} (whole {qtype} blocks)")


def w_exponents(data: Array, qtype: str, rows: int, cols: int) -> tuple[Array, Array]:
    """(ew int32 [rows], bad int32 [rows]): each row of the stored weight's exponent and whether it holds
    inf or NaN. Once per weight."""
    _check(qtype, cols)
    ew, bad = cupy.empty(rows, dtype=np.int32), cupy.empty(rows, dtype=np.int32)
    if rows:
        _module(qtype).get_function("loom_fixed_w_exponents")(
            (-(-rows // WARPS),), (WARPS * 32,), (data, ew, bad, np.int64(rows), np.int32(cols // 32)))
    return ew, bad


def x_integers(x: Array) -> tuple[Array, Array, Array]:
    """(xq int16 [M, K], ex int32 [M], bad int32 [M]) for float32 x [M, K], C-contiguous."""
    m, k = x.shape
    xq = cupy.empty((m, k), dtype=np.int16)
    ex, bad = cupy.empty(m, dtype=np.int32), cupy.empty(m, dtype=np.int32)
    if m:
        # (any qtype's module holds it: the x kernel reads no weight)
        _module("F32").get_function("loom_fixed_x")((m,), (X_THREADS,), (x, xq, ex, bad, np.int32(k)))
    return xq, ex, bad


def rows_shape(m: int, rows: int, qtype: str, swiglu: bool = False) -> tuple[int, int]:
    """(x fragments, W fragments a warp) for loom_fixed_rows' product of m rows of x with `rows` output rows:
    one x fragment (16 rows of x) a block, further blocks the rest; as many W fragments as still give every
    multiprocessor a block, 4 only for plain types (block types at 4 take 160-172 registers, one block a
    multiprocessor), else 2 or 1, SwiGLU pairs of them (quant_rows.shape's rule, to be measured for this
    kernel)."""
    groups = -(-m // 16)
    sms = _multiprocessors()
    w_frags = 2 if swiglu else 1
    for nf in (4, 2):
        if w_frags < nf <= (4 if qtype in PLAIN else 2) and groups * -(-rows // (4 * nf if swiglu else 8 * nf)) >= sms:
            return 1, nf
    return 1, w_frags


def _epilogue_args(data: Array, m: int, out: Array, bias: Array | None, residual: Array | None,
                   swiglu: bool) -> tuple[int, tuple]:
    """(output rows, the kernels' bias and residual pointers), checking the epilogue's arrays."""
    stored = data.shape[0]
    if swiglu and (stored % 2 or residual is not None):
        raise ShapeError("SwiGLU takes an even number of stored rows (gate, then up) and no residual")
    rows = stored // 2 if swiglu else stored
    if out.shape != (m, rows) or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ShapeError(f"out must be float32 [{m}, {rows}], C-contiguous, got {out.dtype} {out.shape}")
    if bias is not None and (bias.shape != (stored,) or bias.dtype != np.float32):
        raise ShapeError(f"bias must be float32 [{stored}], got {bias.dtype} {bias.shape}")
    if residual is not None and (residual.shape != (m, rows) or residual.dtype != np.float32
                                 or not residual.flags.c_contiguous):
        raise ShapeError(f"residual must be float32 [{m}, {rows}], C-contiguous, got {residual.dtype} {residual.shape}")
    return rows, (pointer(bias), pointer(residual))


def rows_product(data: Array, qtype: str, x: Array, out: Array, w_tables: tuple[Array, Array],
                 bias: Array | None = None, residual: Array | None = None, swiglu: bool = False) -> None:
    """out [M, rows] = (residual +) x [M, K] @ W^T (+ bias), or SwiGLU of its two halves (W's stored rows
    the gate's, then the up's), in the integer scheme for up to ROWS_MAX rows of float32 x on the int8
    tensor cores (compute capability 8.0 and up), with gemv's arguments."""
    m, k = x.shape
    _check(qtype, k, x)
    if k > 1 << 18:
        raise ShapeError(f"the int8 planes' sums are exact in int32 up to K = 2^18, got {k}")
    if not 0 < m <= ROWS_MAX:
        raise ShapeError(f"rows_product takes 1 to {ROWS_MAX} rows of x, got {m}")
    if int(cupy.cuda.Device().compute_capability) < 80:
        raise BackendError("the integer scheme's batched products need int8 tensor cores (compute capability 8.0)")
    rows, epilogue = _epilogue_args(data, m, out, bias, residual, swiglu)
    if rows == 0:
        return
    xq, ex, xbad = x_integers(x)
    ew, wbad = w_tables
    x_frags, w_frags = rows_shape(m, rows, qtype, swiglu)
    outs = 4 * w_frags if swiglu else 8 * w_frags
    blocks = -(-rows // outs) * -(-m // (16 * x_frags))
    _rows_module(qtype, int(swiglu), x_frags, w_frags).get_function("loom_fixed_rows")(
        (blocks,), (RW * 32,), (data, ew, wbad, xq, ex, xbad, x, out, *epilogue, np.int64(rows), np.int32(k // 32),
                                np.int32(m)))


def gemv(data: Array, qtype: str, x: Array, out: Array, w_tables: tuple[Array, Array], bias: Array | None = None,
         residual: Array | None = None, swiglu: bool = False) -> None:
    """out [M, rows] = (residual +) x [M, K] @ W^T (+ bias), or SwiGLU of its two halves, in the integer
    scheme (fixed.matmul_t's bits, then the epilogue's float32 operations: quant_tiles' epilogues) for M <=
    MAX_ROWS rows of float32 x, C-contiguous, and the stored weight `data` [stored rows, row bytes] with its
    w_exponents `w_tables`."""
    m, k = x.shape
    _check(qtype, k, x)
    if not 0 < m <= MAX_ROWS:
        raise ShapeError(f"gemv takes 1 to {MAX_ROWS} rows of x, got {m}")
    rows, epilogue = _epilogue_args(data, m, out, bias, residual, swiglu)
    if rows == 0:
        return
    xq, ex, xbad = x_integers(x)
    ew, wbad = w_tables
    _module(qtype, int(swiglu)).get_function("loom_fixed_gemv")(
        (-(-rows // WARPS),), (WARPS * 32,),
        (data, ew, wbad, xq, ex, xbad, x, out, *epilogue, np.int64(rows), np.int32(k // 32), np.int32(m)))
