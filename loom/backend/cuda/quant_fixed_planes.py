"""Products of many rows in the integer scheme of spec 4 (loom/kernels/exact/fixed.py; prompts and decode
batches from quant_fixed.PLANES_ROWS rows) on cuBLAS's int8 GEMM: the same bits as quant_fixed's kernels.

Each integer q (|q| <= 32767) splits into two signed bytes, q = 256 h + l' + 128 with h = q >> 8 and
l' = (q & 255) - 128 (cuBLAS's int8 GEMM takes signed bytes only). With X = q_x - 128 and W = q_w - 128,

    S = sum q_x q_w = 65536 HH + 256 (HL + LH) + LL + 128 sum q_x + 128 sum q_w - 16384 K,

where HH = sum h_x h_w, HL = sum h_x l'_w, LH = sum l'_x h_w, LL = sum l'_x l'_w: one int8 GEMM of the stacked
planes [h_x; l'_x] [2M, K] by [h_w; l'_w] [2N, K]^T gives all four, each exact in int32 (|product| <=
2^14, K < 2^17). The weight's planes and its rows' sums are made once and kept (`w_planes`); x's per
product, by quant_fixed's x kernel (x_integers with `planes`, the norm applied on the way); a finishing
kernel combines the four blocks and the sums in int64 (below 2^53, so exact in float64), scales by
2^(ex + ew - 30) and rounds once; an entry whose row of x or W holds inf or NaN
takes IEEE's value of the sum of sign products (exact._special_values), by one thread.

Decode batches of up to 64 rows of x over short rows (quant_fixed_planes_tiled.takes) take a pipelined kernel of
their own instead, the products and their finish in one launch, on the same planes; decode steps of up to
quant_fixed.MAX_ROWS rows, quant_fixed_planes_gemv's `gemv` (dp4a products, exported here).

cuBLAS wants M, N and K multiples of 16: x's planes have padding rows, left unwritten (their products
are never read back), the weight's rows are padded with zeros once (`w_planes`). Capturable: sizes as arguments, no sync.
"""
from __future__ import annotations

from functools import cache

import cupy
import numpy as np

from ...errors import ShapeError
from .. import Array
from . import quant_fixed_planes_tiled
from .compile import OPTIONS
from .cublas import CuBLAS
from .quant import BLOCK_DECODE, type_defines
from .quant_fixed import WARPS, _check, _epilogue_args, _head, x_integers
from .quant_fixed_planes_gemv import gemv  # noqa: F401  (the decode graphs' products_planes.gemv)
from .quant_fixed_planes_tiled import WeightPlanes
from .quant_fixed_source import SOURCE as FIXED_SOURCE

_SOURCE = r"""
// planes [2 * padded, K]: rows r (h) and padded + r (l'); sums[r] = sum q; one warp a row of W
extern "C" __global__ void __launch_bounds__(WARPS * 32) loom_fixed_w_planes(
        const unsigned char* __restrict__ w, const int* __restrict__ ew, signed char* __restrict__ planes,
        long long* __restrict__ sums, long long rows, long long padded, int nb) {
    const long long r = (long long)blockIdx.x * WARPS + (threadIdx.x >> 5);
    if (r >= rows) return;
    const int lane = threadIdx.x & 31, K = 32 * nb, shift = 15 - ew[r];
    const unsigned char* row = loom_fixed_row(w, r, nb);
    long long total = 0;
    for (int b = lane >> 3; b < nb; b += 4) {
        float v[4]; int at[4];
        block_values(row, b, lane & 7, v, at);
        #pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int q = isfinite(v[j]) ? __double2int_rn(ldexp((double)v[j], shift)) : 0;
            planes[r * K + 32 * b + at[j]] = (signed char)(q >> 8);
            planes[(padded + r) * K + 32 * b + at[j]] = (signed char)((q & 255) - 128);
            total += q;
        }
    }
    for (int o = 16; o; o >>= 1) total += __shfl_xor_sync(LOOM_FULL, total, o);
    if (lane == 0) sums[r] = total;
}

// out[m, n] from the int8 GEMM's blocks c [2 * pm, 2 * pn] (pm, pn: the padded row counts), then the epilogue
// (quant_fixed_source's loom_fixed_store): (residual +) the sum (+ bias), or SwiGLU's silu(gate) * up of
// stored rows n and rows + n
__device__ __forceinline__ float loom_planes_entry(
        const int* __restrict__ c, const long long* __restrict__ sx, const long long* __restrict__ sw,
        const int* __restrict__ ex, const int* __restrict__ ew, const int* __restrict__ xbad, const int* __restrict__ wbad,
        const float* __restrict__ x, const unsigned char* __restrict__ w, long long m, long long n, long long pm,
        long long pn, int nb) {
    const long long K = 32LL * nb, width = 2 * pn;
    if (xbad[m] || wbad[n]) return loom_fixed_ieee(loom_fixed_row(w, n, nb), x + m * K, nb);
    const long long hh = c[m * width + n], hl = c[m * width + pn + n];
    const long long lh = c[(pm + m) * width + n], ll = c[(pm + m) * width + pn + n];
    return loom_planes_round(loom_planes_combine(hh, hl + lh, ll), sx[m], sw[n], K, ex[m] + ew[n]);
}

extern "C" __global__ void loom_fixed_planes_finish(
        const int* __restrict__ c, const long long* __restrict__ sx, const long long* __restrict__ sw,
        const int* __restrict__ ex, const int* __restrict__ ew, const int* __restrict__ xbad, const int* __restrict__ wbad,
        const float* __restrict__ x, const unsigned char* __restrict__ w, float* __restrict__ out,
        const float* __restrict__ bias, const float* __restrict__ res, long long M, long long rows, long long pm,
        long long pn, int nb) {
    const long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= M * rows) return;
    const long long m = e / rows, n = e % rows;
    float y[EPI + 1];
    #pragma unroll
    for (int h = 0; h <= EPI; ++h) y[h] = loom_planes_entry(c, sx, sw, ex, ew, xbad, wbad, x, w, m, n + h * rows, pm, pn, nb);
    loom_fixed_store(y, bias, res, out, e, n, rows);
}

// the same, four consecutive entries a thread (rows % 4 == 0): 16-byte loads of the blocks, the tables and the
// residual, one 16-byte store; an entry whose row of x or W holds inf or NaN takes loom_planes_entry's way
__device__ __forceinline__ int4 loom_planes_int4(const int* p) { return *(const int4*)p; }
extern "C" __global__ void loom_fixed_planes_finish4(
        const int* __restrict__ c, const long long* __restrict__ sx, const long long* __restrict__ sw,
        const int* __restrict__ ex, const int* __restrict__ ew, const int* __restrict__ xbad, const int* __restrict__ wbad,
        const float* __restrict__ x, const unsigned char* __restrict__ w, float* __restrict__ out,
        const float* __restrict__ bias, const float* __restrict__ res, long long M, long long rows, long long pm,
        long long pn, int nb) {
    const long long e = 4 * ((long long)blockIdx.x * blockDim.x + threadIdx.x);
    if (e >= M * rows) return;
    const long long m = e / rows, n = e % rows, K = 32LL * nb, width = 2 * pn;
    const long long xsum = sx[m];
    const int xe = ex[m], xb = xbad[m];
    float y[4][EPI + 1];
    #pragma unroll
    for (int h = 0; h <= EPI; ++h) {
        const long long r = n + h * rows;
        const int4 hh = loom_planes_int4(c + m * width + r), hl = loom_planes_int4(c + m * width + pn + r);
        const int4 lh = loom_planes_int4(c + (pm + m) * width + r), ll = loom_planes_int4(c + (pm + m) * width + pn + r);
        const int4 e4 = loom_planes_int4(ew + r), b4 = loom_planes_int4(wbad + r);
        const longlong2 s01 = *(const longlong2*)(sw + r), s23 = *(const longlong2*)(sw + r + 2);
        const int hhv[4] = {hh.x, hh.y, hh.z, hh.w}, hlv[4] = {hl.x, hl.y, hl.z, hl.w};
        const int lhv[4] = {lh.x, lh.y, lh.z, lh.w}, llv[4] = {ll.x, ll.y, ll.z, ll.w};
        const int ev[4] = {e4.x, e4.y, e4.z, e4.w}, bv[4] = {b4.x, b4.y, b4.z, b4.w};
        const long long sv[4] = {s01.x, s01.y, s23.x, s23.y};
        #pragma unroll
        for (int j = 0; j < 4; ++j) {
            if (xb || bv[j]) {
                y[j][h] = loom_fixed_ieee(loom_fixed_row(w, r + j, nb), x + m * K, nb);
            } else {
                y[j][h] = loom_planes_round(loom_planes_combine(hhv[j], (long long)hlv[j] + lhv[j], llv[j]), xsum, sv[j],
                                            K, xe + ev[j]);
            }
        }
    }
    float4 r4 = res != 0 ? *(const float4*)(res + e) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    float v[4];
    #pragma unroll
    for (int j = 0; j < 4; ++j) v[j] = loom_fixed_value(y[j], bias, n + j, rows);
    if (res != 0) { v[0] = r4.x + v[0]; v[1] = r4.y + v[1]; v[2] = r4.z + v[2]; v[3] = r4.w + v[3]; }
    *(float4*)(out + e) = make_float4(v[0], v[1], v[2], v[3]);
}
"""


# the finishing kernel takes four entries a thread where the output's rows are a multiple of 4 (16-byte loads)
# and x has 32 rows or more: Llama-3.2-1B's decode step at 64 rows 2,468 -> 2,408 us; at 16 rows 1,622 -> 1,640 (H200)
FINISH_FOUR = True


@cache
def _module(qtype: str, epilogue: int = 0):
    return cupy.RawModule(code=_head(epilogue) + type_defines(qtype) + BLOCK_DECODE + FIXED_SOURCE + _SOURCE,
                          options=OPTIONS + ("-std=c++17",))


def _padded(n: int) -> int:
    return -(-n // 16) * 16


def w_planes(data: Array, qtype: str, rows: int, cols: int, w_tables: tuple[Array, Array]) -> WeightPlanes:
    """The weight's planes (once per weight: 2 bytes a value), from quant_fixed.w_exponents' tables."""
    _check(qtype, cols)
    ew, bad = w_tables
    padded = _padded(rows)
    planes = cupy.zeros((2 * padded, cols), dtype=np.int8)
    sums = cupy.empty(rows, dtype=np.int64)
    _module(qtype).get_function("loom_fixed_w_planes")(
        (-(-rows // WARPS),), (WARPS * 32,), (data, ew, planes, sums, np.int64(rows), np.int64(padded),
                                              np.int32(cols // 32)))
    return WeightPlanes(planes, sums, ew, bad, padded)


def product(data: Array, qtype: str, x: Array, out: Array, weight: WeightPlanes, blas: CuBLAS,
            bias: Array | None = None, residual: Array | None = None, swiglu: bool = False,
            norm: Array | None = None, normed: Array | None = None, eps: float = 0.0, overlap: bool = False) -> None:
    """out [M, rows] = (residual +) x [M, K] @ W^T (+ bias), or SwiGLU of its two halves (W's stored rows the
    gate's, then the up's), in the integer scheme (fixed.matmul_t's bits, then quant_fixed's epilogues) for
    float32 x, C-contiguous, through one int8 GEMM of the stacked planes (`blas`: the backend's CuBLAS
    handle); the epilogue runs in the finishing kernel. With `norm` (a weight [K]), the product of
    rms_norm(x, norm, eps), which x's integers' launch writes to `normed` [M, K] on the way (quant_fixed's
    x_integers); overlap: that launch is a programmatic dependent launch (launch.py) where the tiled kernel takes the
    products (not before cuBLAS's GEMM)."""
    m, k = x.shape
    _check(qtype, k, x)
    if k >= 1 << 17:
        raise ShapeError(f"the int8 planes' products sum exactly in int32 below K = 2^17, got {k}")
    rows, epilogue = _epilogue_args(data, m, out, bias, residual, swiglu)
    if m == 0 or rows == 0:
        return
    if norm is not None and normed is None:
        raise ShapeError("the planes' product with a norm writes the normed rows: pass `normed` [M, K]")
    pm = _padded(m)
    xp = cupy.empty((2 * pm, k), dtype=np.int8)       # (padding rows' products are never read back)
    sx = cupy.empty(m, dtype=np.int64)
    tiled = quant_fixed_planes_tiled.takes(m, k, weight.padded, swiglu)
    # (x's launch overlaps its predecessor only where the tiled kernel follows: before cuBLAS's GEMM it cost the
    # decode step, H200, decode_graph_parts.py --whole --deterministic, Llama-3.2-1B at 32 / 64 rows 1,709 / 2,243
    # -> 1,530 / 1,945 us; Qwen2-0.5B's at 64 rows, one product on cuBLAS, 2,120 -> 2,127)
    _, ex, xbad = x_integers(x, None, norm, normed, eps, overlap and tiled, planes=(xp, sx))
    if norm is not None:
        x = normed                      # (the rows the products take: an inf or NaN entry's IEEE value reads them)
    if tiled:     # (decode batches: pipelined, finished in the launch)
        quant_fixed_planes_tiled.product(xp, sx, ex, xbad, x, weight, data, qtype, out, epilogue, m, rows, swiglu,
                                         overlap)
        return
    c = blas.gemm_int8(xp[None], weight.planes[None])[0]          # int32 [2 pm, 2 padded] (padded: of `stored`)
    four = FINISH_FOUR and m >= 32 and rows % 4 == 0 and all(a is None or a.data.ptr % 16 == 0 for a in (out, residual))
    _module(qtype, int(swiglu)).get_function("loom_fixed_planes_finish4" if four else "loom_fixed_planes_finish")(
        (-(-(m * rows) // (1024 if four else 256)),), (256,),
        (c, sx, weight.sums, ex, weight.exponents, xbad, weight.bad, x, data, out, *epilogue, np.int64(m),
         np.int64(rows), np.int64(pm), np.int64(weight.padded), np.int32(k // 32)))
