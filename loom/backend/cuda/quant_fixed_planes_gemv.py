"""Products of one to quant_fixed.MAX_ROWS rows of x (decode steps) in the integer scheme of spec 4 on the
weight's int8 planes (quant_fixed_planes.w_planes, the prompts' and decode batches' copy): the same bits as
quant_fixed.gemv, which decodes the stored weight and rounds each value to its integer in the loop.

Here each integer is already made: q = 256 h + l' + 128 (h = q >> 8, l' = (q & 255) - 128, two signed bytes in
two planes), for x as for W, so

    sum q_x q_w = 65536 HH + 256 (HL + LH) + LL + 128 (sum q_x + sum q_w) - 16384 K,

each of HH = sum h_x h_w, HL, LH and LL four products a dp4a instruction, exact in int32 over a few steps and
added into int64 sums (any order), then scaled by 2^(ex + ew - 30) and rounded once (loom_planes_round, the
planes' GEMM's finish). A lane takes 16 values a step, one 16-byte load from each of W's planes; the one-row
products were bound by instruction issue (the decoding, the fma to the integer and the byte shuffles: about
three instructions a value), this loop by the weight's two bytes a value.

The layout of the work is quant_fixed.gemv's: WPR warps an output row (gemv_warps), a block every grid-th group
of rows for one row of x (gemv_grid), x's planes made by each block in shared memory (x_source "block":
loom_fixed_x_held, with the RMSNorm where asked) or by x's own launch (quant_fixed.x_integers with planes), W's
planes, tables and sums read before the programmatic wait. A row of x or W holding inf or NaN takes IEEE's
value of the sum of sign products from the stored weight (loom_fixed_ieee_warp). Capturable: sizes as
arguments, no sync, no host read.
"""
from __future__ import annotations

from functools import cache

import cupy
import numpy as np

from ...errors import ShapeError
from .. import Array
from .compile import OPTIONS
from .launch import launch
from .quant import BLOCK_DECODE, pointer, type_defines
from .quant_exact import sum_bits
from .quant_fixed import (
    HELD_K,
    MAX_ROWS,
    ONE_WAVE,
    STAGED_ROWS,
    WARPS,
    _check,
    _check_norm,
    _epilogue_args,
    _head,
    _resident_per_sm,
    gemv_grid,
    gemv_warps,
    x_integers,
    x_source,
)
from .quant_fixed_planes_tiled import WeightPlanes
from .quant_fixed_source import SOURCE as FIXED_SOURCE

_SOURCE = r"""
// x's planes as the products read them (global or shared memory): h of row m at h + m K, l' at h + (padded + m) K,
// each row's sum of q, exponent and inf/NaN flag, and its float values (the normed ones, with a norm)
struct LoomPlanesX {
    const signed char* h; long long padded; const long long* sums; const int* ex; const int* xbad; const float* x; int K;
    __device__ __forceinline__ const signed char* high(int m, int k) const { return h + (long long)m * K + k; }
    __device__ __forceinline__ const signed char* low(int m, int k) const { return h + (padded + m) * K + k; }
    __device__ __forceinline__ float value(int m, int k) const { return x[(long long)m * K + k]; }
};

// PG_VALUES (16 or 8) values of a plane: a lane's load of a step (16 or 8 bytes)
struct LoomPlanesLoad { unsigned u[PG_VALUES / 4]; };
__device__ __forceinline__ LoomPlanesLoad loom_planes_load(const signed char* p, bool stream) {
    LoomPlanesLoad t;
    if constexpr (PG_VALUES == 16) {
        const uint4 v = stream ? __ldcs((const uint4*)p) : *(const uint4*)p;
        t.u[0] = v.x; t.u[1] = v.y; t.u[2] = v.z; t.u[3] = v.w;
    } else {
        const uint2 v = stream ? __ldcs((const uint2*)p) : *(const uint2*)p;
        t.u[0] = v.x; t.u[1] = v.y;
    }
    return t;
}
__device__ __forceinline__ LoomPlanesLoad loom_planes_zero() {
    LoomPlanesLoad t;
    #pragma unroll
    for (int i = 0; i < PG_VALUES / 4; ++i) t.u[i] = 0u;
    return t;
}

// HH, HL + LH and LL of a load's values (W's planes wh, wl; x's xh, xl: four signed bytes a word), four products a dp4a
__device__ __forceinline__ void loom_planes_dot(const LoomPlanesLoad& wh, const LoomPlanesLoad& wl,
                                                const LoomPlanesLoad& xh, const LoomPlanesLoad& xl, int& hh, int& mid,
                                                int& ll) {
    #pragma unroll
    for (int i = 0; i < PG_VALUES / 4; ++i) {
        hh = __dp4a((int)xh.u[i], (int)wh.u[i], hh);
        mid = __dp4a((int)xh.u[i], (int)wl.u[i], mid);
        mid = __dp4a((int)xl.u[i], (int)wh.u[i], mid);
        ll = __dp4a((int)xl.u[i], (int)wl.u[i], ll);
    }
}

// L1 prefetches of this warp's share of its planes' rows (the block's first group), before the kernel's wait (the
// weights are not written by the kernel before it)
__device__ __forceinline__ void loom_planes_prefetch(const signed char* wp, long long wpad, long long rows, int K) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const long long r = (long long)blockIdx.x * (WARPS / WPR) + warp / WPR;
    if (r >= rows) return;
    #pragma unroll
    for (int e = 0; e <= EPI; ++e) {
        prefetch_row((const unsigned char*)(wp + (r + e * rows) * K), K, warp % WPR + WPR * lane, 32 * WPR);
        prefetch_row((const unsigned char*)(wp + (wpad + r + e * rows) * K), K, warp % WPR + WPR * lane, 32 * WPR);
    }
}

// steps (PG_VALUES values a lane) whose loads of W are in flight together
#if PG_STEPS_SET
#define PG_STEPS PG_STEPS_SET
#else
#define PG_STEPS ((EPI ? 2 : 4) * (PG_VALUES == 8 ? 2 : 1) / (MAX_ROWS > 2 ? 2 : 1))
#endif

// out[m, r] for the output rows r of group g (SwiGLU: stored rows r and rows + r) and the M (<= MAX_ROWS) rows of x:
// WPR warps a row, lane l of slice s taking the values PG_VALUES (l + 32 (s + WPR i)) .. + PG_VALUES - 1 of step i
__device__ __forceinline__ void loom_planes_gemv_rows(
        const unsigned char* __restrict__ w, const signed char* __restrict__ wp, long long wpad,
        const long long* __restrict__ wsum, const LoomFixedWRow& wt, const LoomPlanesX& xs, float* __restrict__ out,
        const float* __restrict__ bias, const float* __restrict__ res, long long rows, int nb, int M, long long g) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, slice = warp % WPR;
    const long long r = g * (WARPS / WPR) + warp / WPR;
    const bool live = r < rows;
    if (WPR == 1 && !live) return;
    if (NB) nb = NB;                    // (compiled in: the step loop's trip count is a constant)
    if (XR) M = XR;
    const int K = 32 * nb, chunks = K / PG_VALUES, steps = (chunks + 32 * WPR - 1) / (32 * WPR);
    const signed char* wh[EPI + 1];
    const signed char* wl[EPI + 1];
    long long acc[EPI + 1][MAX_ROWS];
    #pragma unroll
    for (int e = 0; e <= EPI; ++e) {
        const long long wr = live ? r + e * rows : 0;
        wh[e] = wp + wr * K;
        wl[e] = wp + (wpad + wr) * K;
        #pragma unroll
        for (int m = 0; m < MAX_ROWS; ++m) acc[e][m] = 0;
    }
    for (int base = 0; base < steps; base += PG_STEPS) {
        LoomPlanesLoad hv[EPI + 1][PG_STEPS], lv[EPI + 1][PG_STEPS];
        #pragma unroll
        for (int u = 0; u < PG_STEPS; ++u) {
            const int c = lane + 32 * (slice + WPR * (base + u));
            const bool ok = live && base + u < steps && c < chunks;
            #pragma unroll
            for (int e = 0; e <= EPI; ++e) {
                hv[e][u] = ok ? loom_planes_load(wh[e] + PG_VALUES * c, PG_STREAM) : loom_planes_zero();
                lv[e][u] = ok ? loom_planes_load(wl[e] + PG_VALUES * c, PG_STREAM) : loom_planes_zero();
            }
        }
        int hh[EPI + 1][MAX_ROWS], mid[EPI + 1][MAX_ROWS], ll[EPI + 1][MAX_ROWS];  // (at most 16 PG_STEPS dp4a each)
        #pragma unroll
        for (int e = 0; e <= EPI; ++e)
            #pragma unroll
            for (int m = 0; m < MAX_ROWS; ++m) hh[e][m] = mid[e][m] = ll[e][m] = 0;
        #pragma unroll
        for (int u = 0; u < PG_STEPS; ++u) {
            const int c = lane + 32 * (slice + WPR * (base + u));
            if (!(live && base + u < steps && c < chunks)) continue;
            #pragma unroll
            for (int m = 0; m < MAX_ROWS; ++m) {
                if (m >= M) break;
                const LoomPlanesLoad xh = loom_planes_load(xs.high(m, PG_VALUES * c), false);
                const LoomPlanesLoad xl = loom_planes_load(xs.low(m, PG_VALUES * c), false);
                #pragma unroll
                for (int e = 0; e <= EPI; ++e) loom_planes_dot(hv[e][u], lv[e][u], xh, xl, hh[e][m], mid[e][m], ll[e][m]);
            }
        }
        #pragma unroll
        for (int e = 0; e <= EPI; ++e)
            #pragma unroll
            for (int m = 0; m < MAX_ROWS; ++m) acc[e][m] += loom_planes_combine(hh[e][m], mid[e][m], ll[e][m]);
    }
    if (!loom_fixed_row_totals(acc, M, live)) return;
    #pragma unroll
    for (int m = 0; m < MAX_ROWS; ++m) {
        if (m >= M) break;
        float y[EPI + 1];
        #pragma unroll
        for (int e = 0; e <= EPI; ++e) {
            const long long wr = r + e * rows;
            y[e] = xs.xbad[m] || wt.bad[e] ? loom_fixed_ieee_warp(w, wr, nb, xs, m)
                                           : loom_planes_round(acc[e][m], xs.sums[m], wsum[wr], K, xs.ex[m] + wt.e[e]);
        }
        if (lane == 0) loom_fixed_store(y, bias, res, out, (long long)m * rows + r, r, rows);
    }
}

// every group of WARPS / WPR output rows this block takes: its own, then with one warp a row and one row of x every
// gridDim.x-th further one (quant_fixed.gemv_grid)
__device__ __forceinline__ void loom_planes_gemv_groups(
        const unsigned char* __restrict__ w, const signed char* __restrict__ wp, long long wpad,
        const long long* __restrict__ wsum, const int* __restrict__ ew, const int* __restrict__ wbad,
        const LoomFixedWRow& wt, const LoomPlanesX& xs, float* __restrict__ out, const float* __restrict__ bias,
        const float* __restrict__ res, long long rows, int nb, int M) {
    loom_planes_gemv_rows(w, wp, wpad, wsum, wt, xs, out, bias, res, rows, nb, M, blockIdx.x);
    if (WPR != 1 || XR != 1) return;
    const long long groups = (rows + WARPS - 1) / WARPS;
    for (long long g = blockIdx.x + gridDim.x; g < groups; g += gridDim.x)
        loom_planes_gemv_rows(w, wp, wpad, wsum, loom_fixed_w_row(ew, wbad, rows, g), xs, out, bias, res, rows, nb, M, g);
}

// x's planes from their own launch (quant_fixed.x_integers with planes: xp [2 xpad, K], its sums, exponents, flags)
extern "C" __global__ void __launch_bounds__(WARPS * 32) loom_planes_gemv(
        const unsigned char* __restrict__ w, const signed char* __restrict__ wp, long long wpad,
        const long long* __restrict__ wsum, const int* __restrict__ ew, const int* __restrict__ wbad,
        const signed char* __restrict__ xp, long long xpad, const long long* __restrict__ xsum,
        const int* __restrict__ ex, const int* __restrict__ xbad, const float* __restrict__ x, float* __restrict__ out,
        const float* __restrict__ bias, const float* __restrict__ res, long long rows, int nb, int M) {
    if (NB) nb = NB;
    loom_planes_prefetch(wp, wpad, rows, 32 * nb);
    const LoomFixedWRow wt = loom_fixed_w_row(ew, wbad, rows, blockIdx.x);
    wait_for_previous_kernel();
    const LoomPlanesX xs{xp, xpad, xsum, ex, xbad, x, 32 * nb};
    loom_planes_gemv_groups(w, wp, wpad, wsum, ew, wbad, wt, xs, out, bias, res, rows, nb, M);
}

// x's planes (and exponents, flags and sums) of normed rows of x by one warp a row (warp m for row m < M <= WARPS;
// lane l holding entries l + 32 i, R = K / 32 of them; quant_fixed's loom_fixed_stage_warp's arithmetic): the one
// barrier at the end, where the block's way takes four
template <int R> __device__ __forceinline__ void loom_planes_stage_warp(
        const float* __restrict__ x, int M, int K, const float* __restrict__ norm_w, float eps, int bits, float* xf,
        signed char* planes_s, int* ex_s, int* xbad_s, long long* sums_s) {
    const int lane = threadIdx.x & 31, m = threadIdx.x >> 5;
    if (m < M) {                        // (rms_norm(x, norm_w) first: norm_w is never null here)
        float v[R], top;
        int nonfinite;
        loom_fixed_warp_normed<R>(x, m, K, norm_w, eps, bits, xf, v, &top, &nonfinite);
        const int e = loom_fixed_exponent(top), shift = 15 - e;
        const float sc = loom_fixed_scale(shift);
        long long total = 0;
        #pragma unroll
        for (int i = 0; i < R; ++i) {
            const int q = loom_fixed_q(v[i], sc, shift);
            planes_s[m * K + lane + 32 * i] = (signed char)(q >> 8);
            planes_s[(M + m) * K + lane + 32 * i] = (signed char)((q & 255) - 128);
            total += q;
        }
        total = warp_sum_i64(total);
        if (lane == 0) { ex_s[m] = e; xbad_s[m] = nonfinite; sums_s[m] = total; }
    }
    __syncthreads();
}

static_assert(WARPS * 32 == X_THREADS, "the staged kernel's blocks run loom_fixed_x_held, written for X_THREADS threads");

// the same where each block makes x's planes itself (XR <= STAGED_ROWS rows of NB units, K <= HELD_K: loom_fixed_x's
// arithmetic, loom_fixed_x_held, or normed rows over K <= WARP_STAGE_K loom_planes_stage_warp, every block finding the
// same integers) in static shared memory: the planes, then
// with norm_w the normed rows as floats (rms_norm(x, norm_w), quant_exact.rms_norm's bits; an inf or NaN entry's
// IEEE value reads them)
#define PLANES_STAGED_BYTES (XR && XR <= STAGED_ROWS && NB && 32 * NB <= HELD_K ? XR * NB * 32 * 6 : 16)
extern "C" __global__ void __launch_bounds__(WARPS * 32) loom_planes_gemv_staged(
        const unsigned char* __restrict__ w, const signed char* __restrict__ wp, long long wpad,
        const long long* __restrict__ wsum, const int* __restrict__ ew, const int* __restrict__ wbad,
        const float* __restrict__ x, float* __restrict__ out, const float* __restrict__ bias,
        const float* __restrict__ res, long long rows, int nb, int M, const float* __restrict__ norm_w, float eps,
        int bits) {
    __shared__ __align__(16) unsigned char staged_s[PLANES_STAGED_BYTES];
    __shared__ long long sums_s[MAX_ROWS];
    __shared__ int ex_s[MAX_ROWS], xbad_s[MAX_ROWS];
    __shared__ Scratch scratch;
    if (NB) nb = NB;
    if (XR) M = XR;
    const int K = 32 * nb;
    loom_planes_prefetch(wp, wpad, rows, K);
    const LoomFixedWRow wt = loom_fixed_w_row(ew, wbad, rows, blockIdx.x);
    wait_for_previous_kernel();
    signed char* planes_s = (signed char*)staged_s;           // [2 M][K]
    float* xf = (float*)(staged_s + 2 * M * K);               // [M][K] (2 M K: a multiple of 64 bytes)
    if (WARP_STAGE && norm_w != 0) {
        loom_planes_stage_warp<WARP_STAGE ? NB : 1>(x, M, K, norm_w, eps, bits, xf, planes_s, ex_s, xbad_s, sums_s);
    } else {
        for (int m = 0; m < M; ++m)
            loom_fixed_x_held(x + (long long)m * K, norm_w, xf, eps, bits, ex_s, xbad_s, planes_s, sums_s, M, K, scratch,
                              m);
        __syncthreads();                // (each row's sum and flags: written by thread 0 after its last barrier)
    }
    const LoomPlanesX xs{planes_s, M, sums_s, ex_s, xbad_s, norm_w != 0 ? xf : x, K};
    loom_planes_gemv_groups(w, wp, wpad, wsum, ew, wbad, wt, xs, out, bias, res, rows, nb, M);
}
"""


# values a lane takes a step (a 16- or 8-byte load of each of W's planes): 16 from K = WIDE_K, else 8 (more lanes of a
# short row at work). H100, decode_graph_parts.py Q4_K --shape llama-3.2-1b --whole --deterministic: 8 values at
# K = 2,048 (WIDE_K 4,096) 1,300 -> 1,282 us a step.
WIDE_K = 4096
# Steps whose loads of W are in flight together (0: PG_STEPS' own count: 4 a row of x, 2 for SwiGLU's pairs, twice
# that at 8 values a lane), and whether W's loads stream (read once: evict first). H100, the step above: 1,284 us
# as they are; 8 steps 1,314, 2 steps 1,320, plain loads 1,329 (8 values at K = 2,048, 4 steps: 1,295).
STEPS = 0
STREAM = 1


@cache
def _module(qtype: str, epilogue: int, units: int, wpr: int, x_rows: int, values: int, steps: int, stream: int):
    return cupy.RawModule(code=_head(epilogue, units, wpr, x_rows) + f"#define PG_VALUES {values}\n"
                          f"#define PG_STEPS_SET {steps}\n#define PG_STREAM {stream}\n" + type_defines(qtype)
                          + BLOCK_DECODE + FIXED_SOURCE + _SOURCE, options=OPTIONS + ("-std=c++17",))


def values_per_lane(k: int) -> int:
    return 16 if k >= WIDE_K else 8


def warps_per_row(rows: int, k: int) -> int:
    """quant_fixed.gemv_warps, but no more warps than the row has 32 lanes' loads for (a short row's warps would
    idle most lanes and meet at a barrier for nothing)."""
    wpr = gemv_warps(rows)
    while wpr > 1 and k // values_per_lane(k) < 32 * wpr:
        wpr //= 2
    return wpr


def gemv(data: Array, qtype: str, x: Array, out: Array, weight: WeightPlanes, bias: Array | None = None,
         residual: Array | None = None, swiglu: bool = False, norm: Array | None = None, normed: Array | None = None,
         eps: float = 0.0, overlap: bool = False) -> None:
    """quant_fixed.gemv's product (its arguments and bits) read from the weight's planes `weight`
    (quant_fixed_planes.w_planes of `data`, which an entry whose row holds inf or NaN reads for IEEE's value):
    out [M, rows] = (residual +) x [M, K] @ W^T (+ bias), or SwiGLU of its two halves, for M <= MAX_ROWS rows of
    float32 x, C-contiguous; with `norm`, of rms_norm(x, norm, eps), made by each block where quant_fixed.x_source
    says so, else by x's planes' launch, which writes it to `normed` [M, K]. overlap: programmatic dependent
    launches (launch.py)."""
    m, k = x.shape
    _check(qtype, k, x)
    if not 0 < m <= MAX_ROWS:
        raise ShapeError(f"the planes' gemv takes 1 to {MAX_ROWS} rows of x, got {m}")
    rows, epilogue = _epilogue_args(data, m, out, bias, residual, swiglu)
    stored = data.shape[0]
    if (weight.planes.dtype != np.int8 or weight.planes.shape != (2 * weight.padded, k) or weight.padded < stored
            or not weight.planes.flags.c_contiguous
            or any(t.shape != (stored,) for t in (weight.sums, weight.exponents, weight.bad))):
        raise ShapeError(f"the weight's planes must be int8 [2 P, {k}], C-contiguous, with P >= {stored} stored rows and "
                         f"their sums, exponents and flags [{stored}] (w_planes of this weight), got "
                         f"{weight.planes.dtype} {weight.planes.shape} (P {weight.padded}) and tables of "
                         f"{[tuple(t.shape) for t in (weight.sums, weight.exponents, weight.bad)]}")
    if rows == 0:
        return
    if norm is not None:
        _check_norm(norm, normed, x.shape)
    wpr = warps_per_row(rows, k)
    module = _module(qtype, int(swiglu), k // 32, wpr, m, values_per_lane(k), STEPS, STREAM)
    # (the blocks' staging reads x and the norm's weight as float4s)
    staged = x_source(m, k, rows) == "block" and x.data.ptr % 16 == 0 and (norm is None or norm.data.ptr % 16 == 0)
    kernel = module.get_function("loom_planes_gemv_staged" if staged else "loom_planes_gemv")
    grid = gemv_grid(rows, wpr, m, _resident_per_sm(kernel) if ONE_WAVE else 0)
    w_args = (data, weight.planes, np.int64(weight.padded), weight.sums, weight.exponents, weight.bad)
    sizes = (np.int64(rows), np.int32(k // 32), np.int32(m))
    if staged:
        if m > STAGED_ROWS or k > HELD_K:
            raise ShapeError(f"the planes' gemv blocks make the planes of at most {STAGED_ROWS} rows of x over "
                             f"K <= {HELD_K}, got [{m}, {k}]")
        launch(kernel, grid, WARPS * 32, w_args + (x, out, *epilogue, *sizes, pointer(norm), np.float32(eps),
                                                   sum_bits(k)), overlap)
        return
    if norm is not None and normed is None:
        raise ShapeError(f"the planes' gemv with a norm over x [{m}, {k}] (x's planes by their own launch) writes "
                         "the normed rows: pass `normed`")
    xp = cupy.empty((2 * m, k), dtype=np.int8)
    sx = cupy.empty(m, dtype=np.int64)
    _, ex, xbad = x_integers(x, None, norm, normed, eps, overlap, planes=(xp, sx))
    launch(kernel, grid, WARPS * 32, w_args + (xp, np.int64(m), sx, ex, xbad, x if norm is None else normed, out,
                                               *epilogue, *sizes), overlap)
