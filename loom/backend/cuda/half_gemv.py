"""Products of F16/BF16 weight rows with one or two rows of x (batch-1 decoding), fast mode.

quant.gemv's general kernel reads 16-bit rows 8 bytes a lane, as it reads every block type; a batch-1
decode step of a bf16 model is nothing but these reads (an 8B model: 15 GB a token), and at 8 bytes
a lane too few bytes are in flight to keep HBM busy. Here each lane loads 16 bytes (8 values) a
step with a streaming load, a warp covers 256 values of its row a step, and the loads of UNROLL
steps are issued before any is used. x (times the RMSNorm weight, when the prologue applies one) is
staged in dynamic shared memory once per block, after the first loads are issued, so its copy hides
behind them; rows as long as an 8B model's down product (14,336) fit (57 KiB a row of x).

The operations around the product are quant.gemv's (the prologue's RMSNorm, a bias, a residual,
SwiGLU over [gate; up] rows); so are the arguments, and the decode graph reaches this kernel through
quant.gemv. The sums run in another order than a GEMM's: fast mode only.
"""
from __future__ import annotations

import math
from functools import cache

import cupy

from .compile import OPTIONS
from .gemv_device import STAGE_ROWS, WARP_REDUCTIONS
from .launch import OVERLAP_PROLOGUE, multiprocessors, resident_per_sm

MAX_ROWS = 2          # rows of x: past two, re-reading x from shared memory for every 8 values dominates
MIN_VALUES = 1 << 22  # weights of at least 4M values (8 MB): a 1B model's products and up
THREADS = 256          # 8 warps: gemv_device.STAGE_ROWS sums the squares of x over 8 warps

_SOURCE = r"""
#include <cuda_fp16.h>
// 8 stored 16-bit values as floats (F16: KIND 1; BF16, a float32's high half: KIND 2)
__device__ __forceinline__ void unpack8(uint4 t, float* v) {
    const unsigned u[4] = {t.x, t.y, t.z, t.w};
    #pragma unroll
    for (int j = 0; j < 4; ++j) {
        if (KIND == 2) {
            v[2 * j] = __uint_as_float(u[j] << 16);
            v[2 * j + 1] = __uint_as_float(u[j] & 0xFFFF0000u);
        } else {
            const float2 f = __half22float2(*(const __half2*)&u[j]);
            v[2 * j] = f.x; v[2 * j + 1] = f.y;
        }
    }
}
#define STEPS ((COLS + 255) / 256)             // 256-value steps of a row
#define PER ((STEPS + WPR - 1) / WPR)          // steps of one warp (WPR warps share a row)
#define WARPS (THREADS / 32)
extern "C" __global__ void __launch_bounds__(THREADS) loom_half_gemv(
        const unsigned short* w, const float* x, float* out, int rows, const float* aux, float eps,
        const float* bias, const float* res) {
    // A block takes groups of WARPS / WPR output rows, one group after another (the grid is as many blocks
    // as fit the GPU at once, so no last wave runs half empty), and stages x once for all of them.
    extern __shared__ __align__(16) float x_s[];                 // [MR][COLS]
    __shared__ float partial[WARPS][EPI + 1][MR];
    __shared__ float squares_s[MR][8];
    const int lane = threadIdx.x & 31, local = threadIdx.x >> 5, slice = local % WPR;
    const int groups = (rows + WARPS / WPR - 1) / (WARPS / WPR);
    const long long second = (long long)rows * COLS;           // SwiGLU: the up row, `rows` rows further
    int warp = blockIdx.x * (WARPS / WPR) + local / WPR;
    bool valid = warp < rows;
    const unsigned short* row = w + (long long)warp * COLS;
    if (valid) {
        #pragma unroll
        for (int e = 0; e <= EPI; ++e)   // this warp's lines of its first row (four a step), while the previous kernel ends
            for (int s = slice + WPR * (lane >> 2); s < STEPS; s += 8 * WPR)
                if (s * 256 + (lane & 3) * 64 < COLS)    // never past the row (nor the weight's end)
                    prefetch_l1(row + e * second + s * 256 + (lane & 3) * 64);
    }
    wait_for_previous_kernel();
    uint4 wv[EPI + 1][UNROLL];
    // the first UNROLL steps' loads of a row
    auto first_loads = [&]() {
        #pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            const int k = (slice + u * WPR) * 256 + lane * 8;
            const bool ok = valid && u < PER && k < COLS;
            #pragma unroll
            for (int e = 0; e <= EPI; ++e)
                wv[e][u] = ok ? __ldcs((const uint4*)(row + e * second + k)) : make_uint4(0u, 0u, 0u, 0u);
        }
    };
    first_loads();                                              // before x is staged: the copy hides behind them
    float scale[MR];
    stage_rows(x, aux, x_s, squares_s, COLS, eps, scale);
    for (int group = blockIdx.x; group < groups; group += gridDim.x) {
        if (group != blockIdx.x) {
            warp = group * (WARPS / WPR) + local / WPR;
            valid = warp < rows;
            row = w + (long long)warp * COLS;
            first_loads();
        }
        float acc[EPI + 1][MR];
        #pragma unroll
        for (int e = 0; e <= EPI; ++e)
            #pragma unroll
            for (int m = 0; m < MR; ++m) acc[e][m] = 0.0f;
        #pragma unroll 1
        for (int base = 0; base < PER; base += UNROLL) {
            #pragma unroll
            for (int u = 0; u < UNROLL; ++u) {
                const int k = (slice + (base + u) * WPR) * 256 + lane * 8;
                if (valid && base + u < PER && k < COLS) {
                    #pragma unroll
                    for (int m = 0; m < MR; ++m) {
                        const float4 a = *(const float4*)(x_s + m * COLS + k), b = *(const float4*)(x_s + m * COLS + k + 4);
                        #pragma unroll
                        for (int e = 0; e <= EPI; ++e) {
                            float v[8];
                            unpack8(wv[e][u], v);
                            acc[e][m] += ((v[0] * a.x + v[1] * a.y) + (v[2] * a.z + v[3] * a.w))
                                       + ((v[4] * b.x + v[5] * b.y) + (v[6] * b.z + v[7] * b.w));
                        }
                    }
                }
                // this register's next load: step base + u + UNROLL
                const int next = base + u + UNROLL, kn = (slice + next * WPR) * 256 + lane * 8;
                const bool ok = valid && next < PER && kn < COLS;
                #pragma unroll
                for (int e = 0; e <= EPI; ++e)
                    if (ok) wv[e][u] = __ldcs((const uint4*)(row + e * second + kn));
            }
        }
        merge_warps<EPI + 1, MR, WPR>(acc, partial, local, slice, lane);
        if (WPR > 1) __syncthreads();                           // partial is written again by the next group
        if (valid && lane == 0 && slice == 0) {
            #pragma unroll
            for (int m = 0; m < MR; ++m) {
                const float r = res != 0 ? res[(long long)m * rows + warp] : 0.0f;
                float s = acc[0][m] * scale[m] + (bias != 0 ? bias[warp] : 0.0f);
                if (EPI == 1) {
                    const float up = acc[EPI][m] * scale[m] + (bias != 0 ? bias[warp + rows] : 0.0f);
                    s = s / (1.0f + expf(-s)) * up;
                }
                out[(long long)m * rows + warp] = r + s;
            }
        }
    }
}
"""


@cache
def _module(kind: int, prologue: int, epilogue: int, x_rows: int, warps_per_row: int, cols: int):
    unroll = 8 if epilogue == 0 else 4          # 8 (4 with both SwiGLU rows) 16-byte loads in flight a lane
    head = (f"#define KIND {kind}\n#define PRO {prologue}\n#define EPI {epilogue}\n#define MR {x_rows}\n"
            f"#define WPR {warps_per_row}\n#define COLS {cols}\n#define UNROLL {unroll}\n#define THREADS {THREADS}\n")
    return cupy.RawModule(code=head + WARP_REDUCTIONS + OVERLAP_PROLOGUE + STAGE_ROWS + _SOURCE, options=OPTIONS)


def supports(qtype: str, x_rows: int, cols: int, rows: int) -> bool:
    """Whether this kernel takes the product: F16/BF16 rows of whole 32-value units (so every row starts
    16-byte aligned), at most MAX_ROWS rows of x fitting shared memory, and a weight of at least
    MIN_VALUES values (smaller ones, whose product is a few microseconds of latency, ran faster in
    quant.gemv's general kernel: SmolLM2-135M decoded at 2,150 tok/s there, 1,700-1,795 here)."""
    return (qtype in ("F16", "BF16") and 1 <= x_rows <= MAX_ROWS and cols >= 32 and cols % 32 == 0
            and x_rows * cols * 4 <= 160 * 1024 and rows * cols >= MIN_VALUES)


def launch_shape(qtype: str, prologue: bool, swiglu: bool, x_rows: int, cols: int,
                 rows: int) -> tuple[cupy.RawKernel, int, int]:
    """(kernel, blocks, dynamic shared memory in bytes) for `rows` output rows: at most as many blocks
    as are resident on the GPU at once, each looping over groups of rows (pick_wpr says how many
    warps share a row)."""
    kind = 1 if qtype == "F16" else 2
    shared = x_rows * cols * 4

    def compiled(wpr):
        return _module(kind, int(prologue), int(swiglu), x_rows, wpr, cols).get_function("loom_half_gemv")
    resident = _resident(compiled(1), shared)       # registers and shared memory: about the same for every WPR
    wpr = pick_wpr(rows, cols, resident)
    return compiled(wpr), min(-(-rows // (THREADS // 32 // wpr)), resident), shared


def pick_wpr(rows: int, cols: int, resident: int) -> int:
    """Warps a row (1, 2, 4 or 8) for `rows` rows of `cols` values and `resident` blocks: the fewest
    that reach the least time, counted as the waves of row groups times a warp's share of a row (more
    warps a row fill the GPU for short outputs and spread the groups evenly; fewer need no cross-warp
    sums), with no warp walking more than 32 steps (16 KiB) of a row."""
    shortest = min(8, 1 << max(0, math.ceil(math.log2(-(-cols // 256) / 32))))
    best, best_cost = 8, None
    for wpr in (w for w in (1, 2, 4, 8) if w >= shortest):
        groups = -(-rows // (THREADS // 32 // wpr))
        cost = math.ceil(groups / resident) / wpr
        if best_cost is None or cost < best_cost * 0.9:     # a cross-warp sum a group: worth 10%
            best, best_cost = wpr, cost
    return best


def _resident(kernel, shared: int) -> int:
    """Blocks of THREADS threads with `shared` bytes of dynamic shared memory resident on the current GPU at once."""
    return resident_per_sm(kernel, THREADS, shared) * multiprocessors()
