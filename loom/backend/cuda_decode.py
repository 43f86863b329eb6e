"""CUDA kernels of a decoder's attention for one new token per sequence (a decode step), fast mode.

Both read the step's position from device memory, so a recorded decode step (loom/llm/decode_graph.py)
replays unchanged at every position:
- `rope_kv`: from the fused Q/K/V product of the step [B, (H + 2 KV) D], per head: qwen3's optional
  RMSNorm, HF's rotate-half RoPE with the position's cos/sin row, then q to its own buffer and k, v into
  the KV cache at the position. One warp per head; lane l holds elements l, l + 32, ... so an element
  and its rotation partner (D/2 away) sit in the same lane (head_dim a multiple of 64).
- `attention`: softmax(q k^T / sqrt(D)) v over the cached keys lo..pos (lo from a sliding window) for
  each query head, grouped-query heads reading their key/value head. One block per (sequence, head);
  groups of D/16 lanes take one key each (WARPS * 32 / (D/16) keys at a time), each group keeping an
  online softmax (running max, sum and weighted sum of values), and the groups' partial results are
  merged at the end. Work grows with the keys present, not with the cache's size; a long context runs
  through its keys in one block per head (no split over blocks yet).

Sums and exponentials run in another order than loom/llm/decoder.py's array code: fast mode only.
`CUDABackend.decode_kernels` is this module. Capturable: sizes as arguments, no sync.
"""
from __future__ import annotations

from functools import lru_cache

import cupy
import numpy as np

from .cuda_kernels import OPTIONS

MAX_HEAD_DIM = 256
WARPS = 8

_SOURCE = r"""
#define PER (D / 32)
__device__ __forceinline__ float warp_sum(float s) {
    #pragma unroll
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    return s;
}

// qkv [B, (H + 2 KV) D]; q_out [B, H, D]; cache_k/v: layer views, element (b, kv, t, d) at
// b * batch_stride + (kv * max_len + t) * D + d; cos, sin [positions, D]; norm [H + KV, D] or null.
extern "C" __global__ void loom_rope_kv(const float* qkv, float* q_out, float* cache_k, float* cache_v,
                                        const float* cos_t, const float* sin_t, const float* norm, const long long* pos_p,
                                        int B, int H, int KV, int max_len, long long batch_stride, float eps) {
    const int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    const int heads = H + 2 * KV;
    if (warp >= B * heads) return;
    const int b = warp / heads, head = warp % heads, pos = (int)*pos_p;
    const float* x = qkv + ((long long)b * heads + head) * D;
    float v[PER];
    #pragma unroll
    for (int i = 0; i < PER; ++i) v[i] = x[i * 32 + lane];
    if (head >= H + KV) {                                          // a value head: into the cache as is
        float* dst = cache_v + b * batch_stride + ((long long)(head - H - KV) * max_len + pos) * D;
        #pragma unroll
        for (int i = 0; i < PER; ++i) dst[i * 32 + lane] = v[i];
        return;
    }
    if (norm != 0) {                                               // qwen3's per-head RMSNorm
        float s = 0.0f;
        #pragma unroll
        for (int i = 0; i < PER; ++i) s += v[i] * v[i];
        const float r = 1.0f / sqrtf(warp_sum(s) / (float)D + eps);
        #pragma unroll
        for (int i = 0; i < PER; ++i) v[i] = v[i] * r * norm[head * D + i * 32 + lane];
    }
    const float* c = cos_t + (long long)pos * D;
    const float* s = sin_t + (long long)pos * D;
    float o[PER];
    #pragma unroll
    for (int i = 0; i < PER; ++i) {                                // x * cos + [-x2, x1] * sin
        const int d = i * 32 + lane;
        const float partner = i < PER / 2 ? -v[i + PER / 2] : v[i - PER / 2];
        o[i] = v[i] * c[d] + partner * s[d];
    }
    float* dst = head < H ? q_out + ((long long)b * H + head) * D
                          : cache_k + b * batch_stride + ((long long)(head - H) * max_len + pos) * D;
    #pragma unroll
    for (int i = 0; i < PER; ++i) dst[i * 32 + lane] = o[i];
}

// out [B, H * D] = softmax(q k^T * scale) v over keys lo .. pos of head h's key/value head h / (H / KV).
// A group of G = D / 16 lanes takes one key (each lane 16 of its elements), so a warp works on 32 / G keys
// at once; every group keeps an online softmax over the keys it takes, and the block merges them at the end.
#define G (D / 16)
#define GROUPS (WARPS * 32 / G)
extern "C" __global__ void loom_decode_attention(const float* q, const float* cache_k, const float* cache_v,
                                                 float* out, const long long* pos_p, int H, int KV, int max_len,
                                                 long long batch_stride, int window, float scale) {
    __shared__ float part_m[GROUPS], part_w[GROUPS], part_acc[GROUPS][D];
    const int b = blockIdx.x / H, h = blockIdx.x % H, kv = h / (H / KV);
    const int group = threadIdx.x / G, sub = threadIdx.x % G;      // sub: elements sub*16 .. sub*16+15
    const int pos = (int)*pos_p, lo = window > 0 && pos - window + 1 > 0 ? pos - window + 1 : 0;
    const float4* qh = (const float4*)(q + ((long long)b * H + h) * D + sub * 16);
    const float* keys = cache_k + b * batch_stride + (long long)kv * max_len * D + sub * 16;
    const float* values = cache_v + b * batch_stride + (long long)kv * max_len * D + sub * 16;
    float qv[16], acc[16];
    #pragma unroll
    for (int i = 0; i < 4; ++i) {
        const float4 t = qh[i];
        qv[4 * i] = t.x * scale; qv[4 * i + 1] = t.y * scale; qv[4 * i + 2] = t.z * scale; qv[4 * i + 3] = t.w * scale;
    }
    #pragma unroll
    for (int i = 0; i < 16; ++i) acc[i] = 0.0f;
    float m = -__int_as_float(0x7f800000), l = 0.0f;
    // the loop condition is the same for the whole warp (its first group's key), because the shuffles
    // need every lane; a group past the last key computes on key pos and discards it
    const int first = lo + (threadIdx.x >> 5) * (32 / G);
    for (int base = 0; first + base <= pos; base += GROUPS) {
        const int t = lo + group + base;
        const bool valid = t <= pos;
        const float4* k = (const float4*)(keys + (long long)(valid ? t : pos) * D);
        const float4* v = (const float4*)(values + (long long)(valid ? t : pos) * D);
        float s = 0.0f;
        #pragma unroll
        for (int i = 0; i < 4; ++i) {
            const float4 kk = k[i];
            s += qv[4 * i] * kk.x + qv[4 * i + 1] * kk.y + qv[4 * i + 2] * kk.z + qv[4 * i + 3] * kk.w;
        }
        #pragma unroll
        for (int o = G / 2; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);   // the group's lanes
        if (!valid) continue;
        const float m_new = fmaxf(m, s), c = expf(m - m_new), p = expf(s - m_new);
        l = l * c + p;
        #pragma unroll
        for (int i = 0; i < 4; ++i) {
            const float4 vv = v[i];
            acc[4 * i] = acc[4 * i] * c + p * vv.x; acc[4 * i + 1] = acc[4 * i + 1] * c + p * vv.y;
            acc[4 * i + 2] = acc[4 * i + 2] * c + p * vv.z; acc[4 * i + 3] = acc[4 * i + 3] * c + p * vv.w;
        }
        m = m_new;
    }
    if (sub == 0) { part_m[group] = m; part_w[group] = l; }
    #pragma unroll
    for (int i = 0; i < 16; ++i) part_acc[group][sub * 16 + i] = acc[i];
    __syncthreads();
    float mx = part_m[0];
    for (int j = 1; j < GROUPS; ++j) mx = fmaxf(mx, part_m[j]);
    __syncthreads();                                               // every thread has read the maxima
    if (threadIdx.x < GROUPS) {                                    // each group's weight; 0 for groups with no key
        const float lj = part_w[threadIdx.x];
        part_m[threadIdx.x] = lj > 0.0f ? expf(part_m[threadIdx.x] - mx) : 0.0f;
    }
    __syncthreads();
    float total = 0.0f;
    for (int j = 0; j < GROUPS; ++j) total += part_w[j] * part_m[j];
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float s = 0.0f;
        for (int j = 0; j < GROUPS; ++j) s += part_acc[j][d] * part_m[j];
        out[((long long)b * H + h) * D + d] = s / total;
    }
}
"""


@lru_cache(maxsize=None)
def _module(head_dim: int):
    return cupy.RawModule(code=f"#define D {head_dim}\n#define WARPS {WARPS}\n" + _SOURCE, options=OPTIONS)


def supports(head_dim: int) -> bool:
    return head_dim % 64 == 0 and head_dim <= MAX_HEAD_DIM


def _null(a):
    return np.uint64(0) if a is None else a


def rope_kv(qkv, q_out, cache_k, cache_v, cos, sin, norm, pos, heads: int, kv_heads: int, eps: float) -> None:
    """q_out [B, H, D] and cache_k/cache_v [B, KV, max_len, D] (layer views) at position pos[0] (int64 on
    the device) from qkv [B, (H + 2 KV) D]; cos, sin [positions, D]; norm [H + KV, D] or None."""
    B, _, max_len, D = cache_k.shape
    warps = B * (heads + 2 * kv_heads)
    _module(D).get_function("loom_rope_kv")(
        ((warps * 32 + 255) // 256,), (256,),
        (qkv, q_out, cache_k, cache_v, cos, sin, _null(norm), pos, np.int32(B), np.int32(heads), np.int32(kv_heads),
         np.int32(max_len), np.int64(cache_k.strides[0] // 4), np.float32(eps)))


def attention(q, cache_k, cache_v, out, pos, window: int | None, scale: float) -> None:
    """out [B, H * D] = attention of q [B, H, D] over cache positions up to pos[0] (and within `window`)."""
    B, H, D = q.shape
    kv_heads, max_len = cache_k.shape[1], cache_k.shape[2]
    _module(D).get_function("loom_decode_attention")(
        (B * H,), (WARPS * 32,),
        (q, cache_k, cache_v, out, pos, np.int32(H), np.int32(kv_heads), np.int32(max_len),
         np.int64(cache_k.strides[0] // 4), np.int32(window or 0), np.float32(scale)))
