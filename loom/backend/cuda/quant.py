"""CUDA products with GGML block-quantized weights for a few rows of x (decoding), fast mode.

x @ W.T where W's rows are 32-value blocks of Q8_0, Q4_0, Q4_1, Q5_0 or Q5_1, 256-value super-blocks of
the K-quants Q2_K ... Q6_K (loom.kernels.quant.gguf has the layouts), or plain F16 / BF16 / F32 values
read 32 at a time: one warp per row of W walks that row's 32-value units (a block, an eighth of a
super-block) straight from the stored bytes, decoding each value as gguf does in registers: eight
lanes share a unit, four codes each, so a warp reads four units' bytes together
(a lane per block made every load a scattered byte; a lane per value made four loads per value),
and every lane accumulates against each row of x (at most MAX_ROWS, compiled in), then the warp
adds its lanes' sums. W is read once, never materialised in float32: for a decode step the weight
bytes are the whole memory traffic.

`gemv` can also fold the operations around a decoder's products into the same kernel (the recorded
decode step, loom/llm/paged_graph.py, uses them so a layer is five launches):
- a prologue on x: RMSNorm with a weight. Each block of 8 warps copies x, times the norm weight,
  into shared memory once and sums its squares (a row of x longer than fits: each warp reads x
  itself); the norm factor multiplies the finished sums;
- an epilogue: a bias, and a residual added into the output (out = residual + x W^T + bias), or
  SwiGLU: one warp takes row r of the gate and of the up projection ([gate; up] stacked in W) and
  writes silu(gate) * up, so the MLP's activation never makes a round trip through memory.
`embed` decodes rows of such a weight picked by token ids held on the device (an embedding lookup).

The sums run in another order than the dequantize-then-GEMM reference: fast mode only
(loom.kernels.quant.block uses this when the backend has it; deterministic mode decodes W and runs the
exact GEMM). `CUDABackend.quant` (CUDAQuant) and `.decode.products` use this module. Capturable: sizes as arguments, no sync.
"""
from __future__ import annotations

from functools import cache

import cupy
import numpy as np

from ...errors import ShapeError
from .. import Array
from . import half_gemv
from .compile import OPTIONS, translating
from .cublas import CuBLAS
from .gemv_device import STAGE_ROWS, WARP_REDUCTIONS
from .launch import OVERLAP_PROLOGUE, launch

MAX_ROWS = 16
# 32-value block types: block bytes, offset of the codes, of the float16 offset m (-1: none), of the 5th bits (-1: none),
# and the value subtracted from symmetric codes
LAYOUTS = {"Q8_0": (34, 2, -1, -1, 0), "Q4_0": (18, 2, -1, -1, 8), "Q4_1": (20, 4, 2, -1, 0),
           "Q5_0": (22, 6, -1, 2, 16), "Q5_1": (24, 8, 2, 4, 0),
           "F16": (64, 0, -1, -1, 0), "BF16": (64, 0, -1, -1, 0),     # 32 plain 16-bit values per "block"
           "F32": (128, 0, -1, -1, 0)}
_KIND = {"F16": 1, "BF16": 2, "F32": 3}
PLAIN = tuple(_KIND)         # the stored types whose decoding is a conversion, not a block's scales
# K-quants: super-block bytes and the KQ number the kernels switch on
K_LAYOUTS = {"Q2_K": (84, 2), "Q3_K": (110, 3), "Q4_K": (144, 4), "Q5_K": (176, 5), "Q6_K": (210, 6)}
TYPES = tuple(LAYOUTS) + tuple(K_LAYOUTS)


def type_defines(qtype: str) -> str:
    """The #defines that compile BLOCK_DECODE for stored type `qtype` (one of TYPES)."""
    if qtype in K_LAYOUTS:
        block, kq = K_LAYOUTS[qtype]
        at_q = at_m = at_h = sub = kind = 0
        subs = 8
    else:
        block, at_q, at_m, at_h, sub = LAYOUTS[qtype]
        kq, kind, subs = 0, _KIND.get(qtype, 0), 1
    return (f"#define BLOCK {block}\n#define AT_Q {at_q}\n#define AT_M {at_m}\n#define AT_H {at_h}\n#define SUB {sub}\n"
            f"#define KIND {kind}\n#define KQ {kq}\n#define SUBS {subs}\n")

# Reading the stored rows: 16-bit fields, a block's values for one of the eight lanes sharing it, and
# L1 prefetches of a row (also compiled into quant_exact's deterministic products, with BLOCK,
# AT_Q, AT_M, AT_H, SUB and KIND defined before it).
BLOCK_DECODE = r"""
#include <cuda_fp16.h>
__device__ __forceinline__ unsigned short u16_at(const unsigned char* p) { return *(const unsigned short*)p; }
__device__ __forceinline__ float half_at(const unsigned char* p) { return __half2float(__ushort_as_half(u16_at(p))); }

__device__ __forceinline__ unsigned u32_at(const unsigned char* p) { return u16_at(p) | ((unsigned)u16_at(p + 2) << 16); }
// (float)q for a code q in [-256, 2^23 - 256), exactly, without the int-to-float conversion (a quarter-rate
// instruction that bounded the K-quant products): q + 256 as the low mantissa bits of 2^23, minus 2^23 + 256
__device__ __forceinline__ float code_float(int q) { return __int_as_float(0x4B000000 | (q + 256)) - 8388864.0f; }
// The K-quants (KQ 2..6): values 4i .. 4i+3 of unit s (values 32s .. 32s+31) of the super-block at blk are
// dl * q[j] - ml, each through gguf.py's float32 operations in its order (e.g. Q4_K's (d * sc) * q - dmin * mn;
// ml is 0 for the types without a minimum, and x - 0 is x). kquant_codes gives the codes q (as floats,
// offsets applied) and the unit's dl and ml; h: the 128-value half holding the unit, sh: its 2-bit field's
// shift in Q2_K/Q3_K/Q6_K's packed bytes.
__device__ __forceinline__ void kquant_codes(const unsigned char* blk, int s, int i, float* q, float& dl, float& ml) {
    const int h = s >> 2, sh = 2 * (s & 3);
    if (KQ == 2) {                               // scales[16] @0, qs[64] @16, d @80, dmin @82
        const unsigned qs = u32_at(blk + 16 + 32 * h + 4 * i), sc = blk[2 * s + (i >> 2)];
        dl = __fmul_rn(half_at(blk + 80), (float)(sc & 15));
        ml = __fmul_rn(half_at(blk + 82), (float)(sc >> 4));
        #pragma unroll
        for (int j = 0; j < 4; ++j) q[j] = code_float((qs >> (8 * j + sh)) & 3);
    } else if (KQ == 3) {                        // hmask[32] @0, qs[64] @32, scales[12] @96, d @108
        const unsigned qs = u32_at(blk + 32 + 32 * h + 4 * i), hm = u32_at(blk + 4 * i);
        const int k = 2 * s + (i >> 2);          // the 6-bit scale: 4 bits from bytes 0..7, 2 from 8..11
        const unsigned low = (blk[96 + (k & 7)] >> (4 * (k >> 3))) & 15, high = (blk[104 + (k & 3)] >> (2 * (k >> 2))) & 3;
        dl = __fmul_rn(half_at(blk + 108), (float)((int)(low | (high << 4)) - 32));
        ml = 0.0f;
        #pragma unroll
        for (int j = 0; j < 4; ++j)
            q[j] = code_float((int)(((qs >> (8 * j + sh)) & 3) | (((hm >> (8 * j + s)) & 1) << 2)) - 4);
    } else if (KQ == 4 || KQ == 5) {             // d @0, dmin @2, scales[12] @4, (Q5_K: qh[32] @16), qs
        // super-blocks of 144 and 176 bytes are 16-byte aligned: the 16-byte header in one load, codes in 4
        const uint4 head = *(const uint4*)blk;
        auto m = [&](int k) {                    // scales byte k (0..11)
            const unsigned word = k < 4 ? head.y : k < 8 ? head.z : head.w;
            return (word >> (8 * (k & 3))) & 0xFFu;
        };
        const unsigned sc = s < 4 ? m(s) & 63 : (m(s + 4) & 15) | ((m(s - 4) >> 6) << 4);
        const unsigned mn = s < 4 ? m(s + 4) & 63 : (m(s + 4) >> 4) | ((m(s) >> 6) << 4);
        dl = __fmul_rn(__half2float(__ushort_as_half((unsigned short)(head.x & 0xFFFFu))), (float)sc);
        ml = __fmul_rn(__half2float(__ushort_as_half((unsigned short)(head.x >> 16))), (float)mn);
        const unsigned qs = *(const unsigned*)(blk + (KQ == 4 ? 16 : 48) + 32 * (s >> 1) + 4 * i);
        const unsigned qh = KQ == 5 ? *(const unsigned*)(blk + 16 + 4 * i) : 0u;
        #pragma unroll
        for (int j = 0; j < 4; ++j) {
            int c = (int)((qs >> (8 * j + 4 * (s & 1))) & 15);
            if (KQ == 5) c |= (int)(((qh >> (8 * j + s)) & 1) << 4);
            q[j] = code_float(c);
        }
    } else {                                     // Q6_K: ql[128] @0, qh[64] @128, scales int8[16] @192, d @208
        const unsigned ql = u32_at(blk + 64 * h + 32 * (s & 1) + 4 * i), qh = u32_at(blk + 128 + 32 * h + 4 * i);
        dl = __fmul_rn(half_at(blk + 208), (float)(signed char)blk[192 + 2 * s + (i >> 2)]);
        ml = 0.0f;
        const int nibble = (s & 2) ? 4 : 0;
        #pragma unroll
        for (int j = 0; j < 4; ++j)
            q[j] = code_float((int)(((ql >> (8 * j + nibble)) & 15) | (((qh >> (8 * j + sh)) & 3) << 4)) - 32);
    }
}

__device__ __forceinline__ void kquant_values(const unsigned char* blk, int s, int i, float* v) {
    float q[4], dl, ml;
    kquant_codes(blk, s, i, q, dl, ml);
    #pragma unroll
    for (int j = 0; j < 4; ++j) v[j] = __fsub_rn(__fmul_rn(dl, q[j]), ml);
}

// Four values of 32-value unit b of a stored row for lane i (0..7) of the eight that share it, and their
// positions in the unit: nibble types give lane i code bytes 2i, 2i+1 (values 2i, 2i+1 in the low
// nibbles, 2i+16, 2i+17 in the high ones); the others values 4i .. 4i+3. A unit is a block, or an
// eighth of a K-quant super-block. Blocks and their 16-bit fields are 2-byte aligned (F16/BF16 and F32 rows
// 16-byte aligned: device allocations are, and a row of whole 32-value units keeps it; quant_fixed's one-row
// kernel reads F16/BF16 rows 16 bytes a lane).
__device__ __forceinline__ void block_values(const unsigned char* row, int b, int i, float* v, int* at) {
    const unsigned char* blk = row + (long long)(b / SUBS) * BLOCK;
    if (KQ != 0) {
        #pragma unroll
        for (int j = 0; j < 4; ++j) at[j] = 4 * i + j;
        kquant_values(blk, b % SUBS, i, v);
        return;
    }
    if (KIND != 0 || BLOCK == 34) {
        #pragma unroll
        for (int j = 0; j < 4; ++j) at[j] = 4 * i + j;
    } else {
        at[0] = 2 * i; at[1] = 2 * i + 1; at[2] = 2 * i + 16; at[3] = 2 * i + 17;
    }
    if (KIND == 1 || KIND == 2) {               // F16, BF16 (a float32's high half): one 8-byte load of 4 values
        const uint2 t = ((const uint2*)blk)[i];
        const unsigned u[4] = {t.x & 0xFFFFu, t.x >> 16, t.y & 0xFFFFu, t.y >> 16};
        #pragma unroll
        for (int j = 0; j < 4; ++j)
            v[j] = KIND == 1 ? __half2float(__ushort_as_half((unsigned short)u[j])) : __uint_as_float(u[j] << 16);
    } else if (KIND == 3) {                                                      // F32
        const float4 t = ((const float4*)blk)[i];
        v[0] = t.x; v[1] = t.y; v[2] = t.z; v[3] = t.w;
    } else {
        int q[4];
        if (BLOCK == 34) {                                                       // Q8_0
            const unsigned lo = u16_at(blk + AT_Q + 4 * i), hi = u16_at(blk + AT_Q + 4 * i + 2);
            q[0] = (int)(signed char)(lo & 0xFF); q[1] = (int)(signed char)(lo >> 8);
            q[2] = (int)(signed char)(hi & 0xFF); q[3] = (int)(signed char)(hi >> 8);
        } else {
            const unsigned c = u16_at(blk + AT_Q + 2 * i);
            q[0] = c & 0x0F; q[1] = (c >> 8) & 0x0F; q[2] = (c >> 4) & 0x0F; q[3] = c >> 12;
        }
        if (AT_H >= 0) {                                                         // Q5: the 5th bits
            const unsigned high = u16_at(blk + AT_H) | ((unsigned)u16_at(blk + AT_H + 2) << 16);
            #pragma unroll
            for (int j = 0; j < 4; ++j) q[j] |= ((high >> at[j]) & 1) << 4;
        }
        const float d = half_at(blk), off = AT_M >= 0 ? half_at(blk + (AT_M >= 0 ? AT_M : 0)) : 0.0f;
        #pragma unroll
        for (int j = 0; j < 4; ++j) v[j] = AT_M >= 0 ? d * code_float(q[j] - SUB) + off : d * code_float(q[j] - SUB);
    }
}


// every `step`-th 128-byte line of [start, start + bytes), from line k on
__device__ __forceinline__ void prefetch_row(const unsigned char* start, long long bytes, int k, int step) {
    const unsigned long long end = (unsigned long long)start + bytes;
    for (unsigned long long p = ((unsigned long long)start & ~127ull) + 128ull * k; p < end; p += 128ull * step)
        prefetch_l1((const void*)p);
}
"""

_SOURCE = WARP_REDUCTIONS + OVERLAP_PROLOGUE + BLOCK_DECODE + STAGE_ROWS + r"""
// PRO 0: x as is; 1: rms_norm(x) * aux per row of x. EPI 0: out[m, r] = (res[m, r] +) x W[r]^T (+ bias[r]),
// r < rows; 1 (SwiGLU): out[m, r] = silu(g) * u with g, u the products with W rows r and r + rows (+ bias).
// MR rows of x [MR, NB * 32]. One warp per output row; eight lanes share a block, so a warp reads four
// blocks' bytes together and each lane turns four codes into values. NB (blocks per row) is compiled
// in, so a short row's block loop unrolls completely and all of a warp's weight loads are in flight at once.
#define ITERS ((NB + 4 * WPR - 1) / (4 * WPR))
#define KITERS ((NB + 8 * WPR - 1) / (8 * WPR))
#define ROW_BYTES ((long long)(NB / SUBS) * BLOCK)
#define STAGE (MR * NB * 32 <= 8192)     // x [MR, cols] fits in 32 KB of shared memory (blocks of 8 warps)
extern "C" __global__ void loom_quant_gemv(const unsigned char* w, const float* x, float* out, int rows,
                                           const float* aux, float eps, const float* bias, const float* res) {
    // WPR warps share an output row, each taking every WPR-th group of four blocks; their sums meet
    // in shared memory, added in slice order
    __shared__ float partial[8][EPI + 1][MR];
    __shared__ __align__(16) float x_s[STAGE ? MR * NB * 32 : 4];
    __shared__ float squares_s[MR][8];
    const int global_warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    const int warp = global_warp / WPR, slice = global_warp % WPR, local = threadIdx.x >> 5;
    const bool valid = warp < rows;                             // no early return: WPR > 1 synchronises
    const int cols = NB * 32, part = lane >> 3, i = lane & 7;
    const unsigned char* row = w + warp * ROW_BYTES;
    const long long second = rows * ROW_BYTES;                  // SwiGLU: the up row, `rows` rows further
    // Before the wait (launch): only the constants. This warp's share of its row's cache lines is
    // requested, and the bias read, while the previous kernel finishes.
    float bias_v[EPI + 1];
    if (valid) {
        #pragma unroll
        for (int e = 0; e <= EPI; ++e) {
            prefetch_row(row + e * second, ROW_BYTES, slice + WPR * lane, 32 * WPR);
            bias_v[e] = bias != 0 && lane == 0 ? bias[warp + e * rows] : 0.0f;
        }
    }
    wait_for_previous_kernel();
    float res_v[MR];                                            // read early: its latency hides behind the sums
    #pragma unroll
    for (int m = 0; m < MR; ++m) res_v[m] = res != 0 && valid && lane == 0 ? res[(long long)m * rows + warp] : 0.0f;
    // The RMSNorm factor of each row of x (as fused.rms_norm), applied to the finished sums. x (and aux)
    // are read as float4: 16-byte aligned, cols % 32 == 0.
    float scale[MR];
    if (STAGE) stage_rows(x, aux, x_s, squares_s, cols, eps, scale);   // the block copies x into shared memory once
    #pragma unroll
    for (int m = 0; !STAGE && m < MR; ++m) {      // x too long to stage: each warp reads it
        scale[m] = 1.0f;
        if (PRO == 1 && valid) {
            const float4* xr = (const float4*)(x + m * cols);
            float s = 0.0f;
            #pragma unroll 8
            for (int k = lane; k < cols / 4; k += 32) {
                const float4 v = xr[k]; s += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
            }
            scale[m] = 1.0f / sqrtf(warp_sum(s) / (float)cols + eps);
        }
    }
    float acc[EPI + 1][MR];
    #pragma unroll
    for (int e = 0; e <= EPI; ++e)
        #pragma unroll
        for (int m = 0; m < MR; ++m) acc[e][m] = 0.0f;
    if (KQ != 0) {
        // K-quants: four lanes share a 32-value unit, lane i taking values 4i..4i+3 and 4i+16..4i+19, so
        // that the unit's scales (dl, ml) decode once for eight values (the decode is bound by instructions,
        // not bytes; eight lanes a unit decoded them once per four); sum_j (dl q_j - ml) x_j as
        // dl (sum_j q_j x_j) - ml (sum_j x_j)
        #pragma unroll 4
        for (int it = 0; it < KITERS; ++it) {
            const int b = (lane >> 2) + 8 * slice + it * 8 * WPR;
            if (!valid || b >= NB) continue;
            #pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int g = (lane & 3) + 4 * h;                    // the group of four values
                float q[EPI + 1][4], dl[EPI + 1], ml[EPI + 1];
                #pragma unroll
                for (int e = 0; e <= EPI; ++e)
                    kquant_codes(row + e * second + (long long)(b / SUBS) * BLOCK, b % SUBS, g, q[e], dl[e], ml[e]);
                #pragma unroll
                for (int m = 0; m < MR; ++m) {
                    const int k = b * 32 + 4 * g;
                    float4 xv = STAGE ? *(const float4*)(x_s + m * cols + k) : *(const float4*)(x + m * cols + k);
                    if (PRO == 1 && !STAGE) {
                        const float4 a = *(const float4*)(aux + k);
                        xv.x *= a.x; xv.y *= a.y; xv.z *= a.z; xv.w *= a.w;
                    }
                    const float sx = (xv.x + xv.y) + (xv.z + xv.w);
                    #pragma unroll
                    for (int e = 0; e <= EPI; ++e) {
                        const float dot = q[e][0] * xv.x + q[e][1] * xv.y + q[e][2] * xv.z + q[e][3] * xv.w;
                        acc[e][m] += dl[e] * dot - ml[e] * sx;
                    }
                }
            }
        }
    }
    #pragma unroll 8
    for (int it = 0; KQ == 0 && it < ITERS; ++it) {
        const int b = part + 4 * slice + it * 4 * WPR;
        if (!valid || b >= NB) continue;
        float v[EPI + 1][4]; int at[4];
        #pragma unroll
        for (int e = 0; e <= EPI; ++e) block_values(row + e * second, b, i, v[e], at);
        #pragma unroll
        for (int m = 0; m < MR; ++m) {
            #pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int k = b * 32 + at[j];
                float xv = STAGE ? x_s[m * cols + k] : x[m * cols + k];
                if (PRO == 1 && !STAGE) xv *= aux[k];
                #pragma unroll
                for (int e = 0; e <= EPI; ++e) acc[e][m] += v[e][j] * xv;
            }
        }
    }
    merge_warps<EPI + 1, MR, WPR>(acc, partial, local, slice, lane);
    if (!valid || lane != 0 || slice != 0) return;
    #pragma unroll
    for (int m = 0; m < MR; ++m) {
        float s = acc[0][m] * scale[m] + bias_v[0];
        if (EPI == 1) {
            const float u = acc[EPI][m] * scale[m] + bias_v[EPI];
            s = s / (1.0f + expf(-s)) * u;
        }
        out[(long long)m * rows + warp] = res_v[m] + s;
    }
}

// out[i, :] = W[ids[i], :] decoded (W[i, :] where ids is null; nb 32-value units a row); eight lanes per unit
extern "C" __global__ void loom_quant_embed(const unsigned char* w, const long long* ids, float* out, long long n, int nb) {
    const long long t = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 3;
    if (t >= n * nb) return;
    const long long r = t / nb, b = t % nb;
    float v[4]; int at[4];
    block_values(w + (ids != 0 ? ids[r] : r) * (nb / SUBS) * BLOCK, (int)b, threadIdx.x & 7, v, at);
    #pragma unroll
    for (int j = 0; j < 4; ++j) out[r * nb * 32 + b * 32 + at[j]] = v[j];
}
"""


@cache
def _module(qtype: str, prologue: int = 0, epilogue: int = 0, x_rows: int = 1, warps_per_row: int = 1, blocks: int = 1):
    head = (type_defines(qtype) + f"#define PRO {prologue}\n#define EPI {epilogue}\n#define MR {x_rows}\n"
            f"#define WPR {warps_per_row}\n#define NB {blocks}\n")
    return cupy.RawModule(code=head + _SOURCE, options=OPTIONS)


def supports(qtype: str, x2: Array) -> bool:
    return qtype in TYPES and x2.shape[0] <= MAX_ROWS and x2.shape[-1] % 32 == 0


def matmul_t(x2: Array, data: Array, qtype: str, out: Array) -> None:
    """out [M, R] = x2 [M, cols] @ W.T for W the `qtype` rows `data` (uint8 [R, row bytes])."""
    with translating(f"{qtype} product", x2, data):
        gemv(data, qtype, cupy.ascontiguousarray(x2), out)


def gemv(data: Array, qtype: str, x: Array, out: Array, norm: Array | None = None, eps: float = 0.0,
         bias: Array | None = None, residual: Array | None = None, swiglu: bool = False, overlap: bool = False) -> None:
    """out [M, R] = residual + pro(x) @ W.T + bias for W the `qtype` rows `data` (uint8 [R, row bytes]) and x a
    C-contiguous float32 [M, cols], M <= MAX_ROWS; pro(x) = x, or x / sqrt(mean(x^2) + eps) * norm per row
    when a norm weight [cols] is given. swiglu: W holds [gate; up] (2R rows) and out [M, R] = silu(x Wg^T + bg)
    * (x Wu^T + bu) (no residual). bias ([R], or [2R] with swiglu) and residual [M, R] (may be `out`) are
    optional; all device arrays. overlap: launched to overlap the previous kernel (loom.backend.cuda.launch;
    x and residual must then come from that kernel or earlier ones, finished before it started)."""
    rows = data.shape[0] // 2 if swiglu else data.shape[0]
    if x.data.ptr % 16:                 # the kernel reads x and the norm weight as float4
        x = x.copy()
    if norm is not None and norm.data.ptr % 16:
        norm = norm.copy()
    if rows and x.shape[0]:
        # a few rows: several warps per row, so that ~4096 warps keep the GPU's memory system busy
        # (8B shapes: 4,096-6,144 rows read at 1.3-1.8 TB/s with one warp a row, too few warps in flight)
        wpr = 1 if rows >= 8192 else 2 if rows >= 1024 else 4
        threads, shared = 256, 0
        if half_gemv.supports(qtype, x.shape[0], x.shape[1], data.shape[0]):       # 16-bit rows, batch 1-2: 16-byte loads
            kernel, blocks, shared = half_gemv.launch_shape(qtype, norm is not None, swiglu, x.shape[0],
                                                            x.shape[1], rows)
            threads = half_gemv.THREADS
        else:
            kernel = _module(qtype, int(norm is not None), int(swiglu), x.shape[0], wpr,
                             x.shape[1] // 32).get_function("loom_quant_gemv")
            blocks = (rows * wpr * 32 + threads - 1) // threads
        launch(kernel, blocks, threads, (data, x, out, np.int32(rows), pointer(norm), np.float32(eps), pointer(bias),
                                         pointer(residual)), overlap, shared)


def pointer(a: Array | None) -> Array | np.uint64:
    """A device array, or a null pointer for an absent one."""
    return np.uint64(0) if a is None else a


def embed(data: Array, qtype: str, ids: Array | None, out: Array) -> None:
    """out [n, cols] = rows ids (int64 [n], on the device, already checked) of W decoded; every row of W in
    order where ids is None (a dequantize: bit for bit loom.kernels.quant.gguf's values)."""
    n, nb = (data.shape[0] if ids is None else ids.shape[0]), out.shape[1] // 32
    if n and nb:
        kernel = _module(qtype).get_function("loom_quant_embed")
        kernel(((n * nb * 8 + 255) // 256,), (256,), (data, pointer(ids), out, np.int64(n), np.int32(nb)))


def dequantize(data: Array, qtype: str, out: Array) -> None:
    """out (float32 C-contiguous, [rows, cols] or flat) = the values of the `qtype` rows `data` (uint8 [rows,
    row bytes], C-contiguous) in one launch."""
    with translating(f"{qtype} dequantize", data):
        embed(data, qtype, None, out.reshape(data.shape[0], -1))


def dequantize_bf16(data: Array, qtype: str, out: Array) -> None:
    """out (uint16 C-contiguous, [rows, cols] or flat) = the bfloat16 bits of the values of the `qtype` rows
    `data`, rounded to nearest even: to_bf16(dequantize(...))'s bits in one launch, without the float32
    matrix (a quantized prompt's products on the tensor cores decode W this way, block by block)."""
    n = data.shape[0]
    nb = out.size // max(n, 1) // 32
    if not out.flags.c_contiguous or out.data.ptr % 16:
        raise ValueError("dequantize_bf16: out must be C-contiguous and 16-byte aligned")
    if n and nb:
        with translating(f"{qtype} dequantize to bfloat16", data):
            _bf16_decode_module(qtype).get_function("loom_quant_decode_bf16")(
                ((n * nb + 255) // 256,), (256,), (data, out, np.int64(n), np.int32(nb)))


# float32 to bfloat16 bits, rounded to nearest even (inf stays inf, large finite values round up to
# it; NaN stays a quiet NaN): the one rounding of every bfloat16 kernel (to_bf16, flash, prefill)
BF16_BITS = r"""
__device__ __forceinline__ unsigned loom_bf16_bits(float x) {
    const unsigned u = __float_as_uint(x);
    return (u & 0x7fffffffu) > 0x7f800000u ? (u >> 16) | 0x40u : (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
}
"""

_TO_BF16 = BF16_BITS + r"""
extern "C" __global__ void loom_to_bf16(const float* x, unsigned short* out, long long n) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    out[i] = (unsigned short)loom_bf16_bits(x[i]);
}
// The same, eight values a thread in 16-byte accesses (n a multiple of 8, both arrays 16-byte aligned):
// one value and a 2-byte store a thread left the GPT-style bf16 train step's 576 conversions at 10 ms
extern "C" __global__ void loom_to_bf16_x8(const float4* x, uint4* out, long long n8) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n8) return;
    const float4 a = x[2 * i], b = x[2 * i + 1];
    out[i] = make_uint4(loom_bf16_bits(a.x) | (loom_bf16_bits(a.y) << 16), loom_bf16_bits(a.z) | (loom_bf16_bits(a.w) << 16),
                        loom_bf16_bits(b.x) | (loom_bf16_bits(b.y) << 16), loom_bf16_bits(b.z) | (loom_bf16_bits(b.w) << 16));
}
// mixed_precision.round_bf16's bits in one pass: NaN as it is (payload kept), else to nearest even
extern "C" __global__ void loom_round_bf16(const float* x, float* out, long long n) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const unsigned u = __float_as_uint(x[i]);
    out[i] = (u & 0x7fffffffu) > 0x7f800000u ? x[i] : __uint_as_float((u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u);
}
"""


def to_bf16(x: Array, out: Array | None = None) -> Array:
    """bfloat16 bits (uint16, x's shape) of float32 x, rounded to nearest even."""
    if x.dtype != np.float32:
        raise ShapeError(f"to_bf16 takes float32 values, got {x.dtype}")
    x = cupy.ascontiguousarray(x)
    out = cupy.empty(x.shape, dtype=cupy.uint16) if out is None else out
    if x.size % 8 == 0 and x.data.ptr % 16 == 0 and out.data.ptr % 16 == 0:
        if x.size:
            kernel = _bf16_module().get_function("loom_to_bf16_x8")
            kernel(((x.size // 8 + 255) // 256,), (256,), (x, out, np.int64(x.size // 8)))
    elif x.size:
        kernel = _bf16_module().get_function("loom_to_bf16")
        kernel(((x.size + 255) // 256,), (256,), (x, out, np.int64(x.size)))
    return out


def bf16_operand(x: Array) -> Array:
    """to_bf16 of a GEMM operand, keeping a transposed view (W.T) transposed: its bits are written in
    W's order, so cuBLAS reads them as it would have read W.T's floats (no transposing copy)."""
    if x.ndim >= 2 and not x.flags.c_contiguous and x.swapaxes(-1, -2).flags.c_contiguous:
        return to_bf16(x.swapaxes(-1, -2)).swapaxes(-1, -2)
    return to_bf16(x)


def round_bf16(x: Array) -> Array:
    """mixed_precision.round_bf16(x, cupy)'s bits (float32 x rounded to bfloat16's values, kept as
    float32) in one launch instead of its eight element-wise passes."""
    if x.dtype != np.float32:
        raise ShapeError(f"round_bf16 takes float32 values, got {x.dtype}")
    x = cupy.ascontiguousarray(x)
    out = cupy.empty_like(x)
    if x.size:
        kernel = _bf16_module().get_function("loom_round_bf16")
        kernel(((x.size + 255) // 256,), (256,), (x, out, np.int64(x.size)))
    return out


_DECODE_BF16 = r"""
// out[r, :] = W[r, :] decoded and rounded to bfloat16 bits (nb 32-value units a row), one unit per
// thread: its eight inlined block_values calls read the same scale bytes, which the compiler can decode
// once (eight lanes a unit each decoded them), and its 64 bytes go out in four 16-byte stores
extern "C" __global__ void loom_quant_decode_bf16(const unsigned char* __restrict__ w, unsigned short* __restrict__ out,
                                                  long long n, int nb) {
    const long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= n * nb) return;
    const long long r = t / nb, b = t % nb;
    const unsigned char* row = w + r * (nb / SUBS) * BLOCK;
    unsigned bits[32];
    #pragma unroll
    for (int i = 0; i < 8; ++i) {
        float v[4]; int at[4];
        block_values(row, (int)b, i, v, at);
        #pragma unroll
        for (int j = 0; j < 4; ++j) bits[at[j]] = loom_bf16_bits(v[j]);
    }
    uint4* dst = (uint4*)(out + t * 32);
    #pragma unroll
    for (int k = 0; k < 4; ++k)
        dst[k] = make_uint4(bits[8 * k] | (bits[8 * k + 1] << 16), bits[8 * k + 2] | (bits[8 * k + 3] << 16),
                            bits[8 * k + 4] | (bits[8 * k + 5] << 16), bits[8 * k + 6] | (bits[8 * k + 7] << 16));
}
"""


@cache
def _bf16_decode_module(qtype: str):
    return cupy.RawModule(code=type_defines(qtype) + OVERLAP_PROLOGUE + BLOCK_DECODE + BF16_BITS + _DECODE_BF16,
                          options=OPTIONS)


@cache
def _bf16_module():
    return cupy.RawModule(code=_TO_BF16, options=OPTIONS)


def matmul_t_bf16(x2: Array, w16: Array, out: Array, blas: CuBLAS, accumulate: bool = False) -> None:
    """out float32 [M, R] (+)= x2 [M, cols] @ W^T on the tensor cores: x rounded to bfloat16 (or given as
    bfloat16 bits, uint16), W the bfloat16 bits w16 [R, cols] (uint16), float32 sums (`blas`: the
    backend's CuBLAS handle). out may be a column slice of a C-contiguous matrix."""
    with translating("bfloat16 product", x2, w16):
        blas.gemm_bf16_t(x2 if x2.dtype == np.uint16 else to_bf16(x2), w16, out, accumulate)

