"""CUDA products with GGML block-quantized weights for a few rows of x (decoding), fast mode.

x @ W.T where W's rows are 32-value blocks of Q8_0, Q4_0, Q4_1, Q5_0 or Q5_1 (loom.kernels.gguf_quants
has the layouts), or plain F16 / BF16 values read 32 at a time: one warp per row of W reads that row's blocks straight from the stored bytes (one
block per lane at a time), decodes each value as d * q (+ m) in registers and accumulates it against
every row of x (at most MAX_ROWS), then the warp adds its lanes' sums. W is read once, never
materialised in float32: for a decode step the weight bytes are the whole memory traffic.

The sums run in another order than the dequantize-then-GEMM reference: fast mode only
(loom.kernels.quantized uses this when the backend has it; deterministic mode decodes W and runs the
exact GEMM). `CUDABackend.quant_kernels` is this module. Capturable: sizes as arguments, no sync.
"""
from __future__ import annotations

from functools import lru_cache

import cupy
import numpy as np

from .cuda import translating
from .cuda_kernels import OPTIONS

MAX_ROWS = 16
# block bytes, offset of the codes, of the float16 offset m (-1: none), of the 5th bits (-1: none),
# and the value subtracted from symmetric codes
LAYOUTS = {"Q8_0": (34, 2, -1, -1, 0), "Q4_0": (18, 2, -1, -1, 8), "Q4_1": (20, 4, 2, -1, 0),
           "Q5_0": (22, 6, -1, 2, 16), "Q5_1": (24, 8, 2, 4, 0),
           "F16": (64, 0, -1, -1, 0), "BF16": (64, 0, -1, -1, 0)}     # 32 plain 16-bit values per "block"
_KIND = {"F16": 1, "BF16": 2}
TYPES = tuple(LAYOUTS)

_SOURCE = r"""
#include <cuda_fp16.h>
__device__ __forceinline__ float half_at(const unsigned char* p) {
    return __half2float(__ushort_as_half((unsigned short)(p[0] | (p[1] << 8))));
}

// out[m, r] = sum_k x[m, k] W[r, k]; x float32 [M, cols] (M <= 16), W rows of `nb` QTYPE blocks
extern "C" __global__ void loom_quant_gemv(const unsigned char* w, const float* x, float* out,
                                           int rows, int nb, int M) {
    const int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    if (warp >= rows) return;
    const unsigned char* row = w + (long long)warp * nb * BLOCK;
    const int cols = nb * 32;
    float acc[16];
    #pragma unroll
    for (int m = 0; m < 16; ++m) acc[m] = 0.0f;
    for (int b = lane; b < nb; b += 32) {
        const unsigned char* blk = row + (long long)b * BLOCK;
        float w32[32];
        if (KIND == 1) {                                        // F16
            #pragma unroll
            for (int j = 0; j < 32; ++j) w32[j] = half_at(blk + 2 * j);
        } else if (KIND == 2) {                                 // BF16: the high half of a float32
            #pragma unroll
            for (int j = 0; j < 32; ++j) w32[j] = __uint_as_float((unsigned)(blk[2 * j] | (blk[2 * j + 1] << 8)) << 16);
        } else {
            const float d = half_at(blk);
            const float off = AT_M >= 0 ? half_at(blk + (AT_M >= 0 ? AT_M : 0)) : 0.0f;
            unsigned int high = 0;
            if (AT_H >= 0) high = blk[AT_H] | (blk[AT_H + 1] << 8) | (blk[AT_H + 2] << 16) | ((unsigned)blk[AT_H + 3] << 24);
            #pragma unroll
            for (int j = 0; j < 32; ++j) {
                int q;
                if (BLOCK == 34) q = (int)(signed char)blk[AT_Q + j];                       // Q8_0
                else q = j < 16 ? (blk[AT_Q + j] & 0x0F) : (blk[AT_Q + j - 16] >> 4);      // nibbles
                if (AT_H >= 0) q |= ((high >> j) & 1) << 4;
                w32[j] = d * (float)(q - SUB) + off;
            }
        }
        for (int m = 0; m < M; ++m) {
            const float* xb = x + (long long)m * cols + b * 32;
            float s = 0.0f;
            #pragma unroll
            for (int j = 0; j < 32; ++j) s += w32[j] * xb[j];
            acc[m] += s;
        }
    }
    for (int m = 0; m < M; ++m) {
        float s = acc[m];
        #pragma unroll
        for (int o = 16; o > 0; o >>= 1) s += __shfl_down_sync(0xffffffffu, s, o);
        if (lane == 0) out[(long long)m * rows + warp] = s;
    }
}
"""


@lru_cache(maxsize=None)
def _kernel(qtype: str):
    block, at_q, at_m, at_h, sub = LAYOUTS[qtype]
    head = (f"#define BLOCK {block}\n#define AT_Q {at_q}\n#define AT_M {at_m}\n#define AT_H {at_h}\n#define SUB {sub}\n"
            f"#define KIND {_KIND.get(qtype, 0)}\n")
    return cupy.RawModule(code=head + _SOURCE, options=OPTIONS).get_function("loom_quant_gemv")


def supports(qtype: str, x2) -> bool:
    return qtype in LAYOUTS and x2.shape[0] <= MAX_ROWS and x2.shape[-1] % 32 == 0


def matmul_t(x2, data, qtype: str, out) -> None:
    """out [M, R] = x2 [M, cols] @ W.T for W the `qtype` rows `data` (uint8 [R, row bytes])."""
    with translating(f"{qtype} product", x2, data):
        rows, nb = data.shape[0], x2.shape[1] // 32
        x2 = cupy.ascontiguousarray(x2)
        threads = 256
        blocks = (rows * 32 + threads - 1) // threads
        if rows and x2.shape[0]:
            _kernel(qtype)((blocks,), (threads,), (data, x2, out, np.int32(rows), np.int32(nb), np.int32(x2.shape[0])))
