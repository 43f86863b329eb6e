"""Fast mode's prompt layers and batched decode steps on the GPU in a few launches (llm/decoder.py's
`_layer_fast`, llm/paged_graph.py): the element-wise work between the bfloat16 GEMMs, fused.

- rms_bf16: RMSNorm of each row (x / sqrt(mean(x^2) + eps) * weight, in float32) written as
  bfloat16 bits for the next GEMM: the norm and the rounding in one pass.
- rope_cache / rope_rows: one warp per (token, head) of the fused q|k|v product: adds the bias,
  applies qwen3's per-head RMSNorm to q and k, rotates them (HF's rotate-half, the decoder's float32
  operations: x cos + rot(x) sin) and writes q for the attention kernel and k, v into the cache
  (contiguous [B, KV, positions, D], or paged [slots, KV, D] with a slot per row).
- swiglu_bf16: silu(gate) * up from the fused gate|up product (bias added), as bfloat16 bits.
- argmax_rows: greedy tokens, one block a row (CuPy's argmax over rows takes 60 us for 64 x 49,152).

Float32 arithmetic as the composed path's, up to the order of the norms' row sums and CUDA's exp:
fast mode's tolerance, never deterministic mode's.
"""
from __future__ import annotations

from functools import cache

import cupy
import numpy as np

from .. import Array
from .compile import OPTIONS, translating
from .launch import OVERLAP_PROLOGUE, launch
from .quant import BF16_BITS

_SOURCE = BF16_BITS + OVERLAP_PROLOGUE + r"""
typedef unsigned short u16;

__device__ __forceinline__ float warp_sum(float v) {
    for (int off = 16; off; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}

// RMSNorm of each row of x [rows, n]: one warp per row, RMS_ROWS rows a block. A row's values (and the
// weight's) stay in registers, up to KEEP a lane, so that x and w are each read once in one round of
// loads; wider rows read the rest twice.
#define KEEP 32
#define RMS_ROWS 4
extern "C" __global__ void loom_rms_bf16(const float* __restrict__ x, const float* __restrict__ w,
        u16* __restrict__ out, long long rows, int n, float eps) {
    const long long row = (long long)blockIdx.x * RMS_ROWS + (threadIdx.x >> 5);
    if (row >= rows) return;
    const int lane = threadIdx.x & 31;
    const float* xr = x + row * n;
    float v[KEEP], g[KEEP], ss = 0.f;
    #pragma unroll
    for (int i = 0; i < KEEP; ++i) g[i] = lane + 32 * i < n ? w[lane + 32 * i] : 0.f;
    wait_for_previous_kernel();                 // (overlapped launches: the weight is read before)
    #pragma unroll
    for (int i = 0; i < KEEP; ++i) {
        const int d = lane + 32 * i;
        v[i] = d < n ? xr[d] : 0.f;
        ss += v[i] * v[i];
    }
    for (int d = lane + 32 * KEEP; d < n; d += 32) ss += xr[d] * xr[d];
    const float rstd = 1.0f / sqrtf(warp_sum(ss) / (float)n + eps);
    u16* o = out + row * n;
    #pragma unroll
    for (int i = 0; i < KEEP; ++i) {
        const int d = lane + 32 * i;
        if (d < n) o[d] = (u16)loom_bf16_bits(v[i] * rstd * g[i]);
    }
    for (int d = lane + 32 * KEEP; d < n; d += 32) o[d] = (u16)loom_bf16_bits(xr[d] * rstd * w[d]);
}

// each row's argmax of x [rows, n] (NumPy's: the first of equal maxima; a NaN counts as the
// largest, the first NaN wins), one block (1024 threads) per row
extern "C" __global__ void loom_argmax_rows(const float* __restrict__ x, long long n, long long* __restrict__ out) {
    __shared__ float bv[1024];
    __shared__ long long bi[1024];
    const float* xr = x + blockIdx.x * n;
    float best = __int_as_float(0xff800000);
    long long at = n;
    for (long long i = threadIdx.x; i < n; i += blockDim.x) {
        const float v = xr[i];
        if ((v != v && best == best) || v > best || at == n) { best = v; at = i; }
    }
    bv[threadIdx.x] = best;
    bi[threadIdx.x] = at;
    __syncthreads();
    for (int half = 512; half; half >>= 1) {
        if (threadIdx.x < half) {
            const float v = bv[threadIdx.x + half], b = bv[threadIdx.x];
            const long long i = bi[threadIdx.x + half], j = bi[threadIdx.x];
            const bool vn = v != v, bn = b != b;
            const bool better = i < n && (j == n || (vn && !bn) || (!vn && !bn && v > b) || ((vn == bn) && !(v > b)
                                && !(b > v) && i < j));
            if (better) { bv[threadIdx.x] = v; bi[threadIdx.x] = i; }
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) out[blockIdx.x] = bi[0];
}

// warp (r, j): token row r of qkv [rows, (H + 2 KV) D], head j (q heads, k heads, v heads). Row r is
// at position p = pos + t (r = b T + t) and its key/value head 0 lives at cache offset b cb + p ct,
// or (per_row) at position rpos[r] and offset roff[r]; head h at that offset + h ch. q goes to
// q_out [rows, H, D]; cos, sin: the tables [positions, D].
extern "C" __global__ void loom_rope_cache(const float* __restrict__ qkv, const float* __restrict__ bias,
        int has_bias, const float* __restrict__ qkn, int has_qkn, float eps, const float* __restrict__ cosv,
        const float* __restrict__ sinv, long long rows, int T, int H, int KV, int D, float* __restrict__ q_out,
        float* __restrict__ ck, float* __restrict__ cv, long long cb, long long ch, long long ct, long long pos,
        const long long* __restrict__ rpos, const long long* __restrict__ roff, int per_row) {
    extern __shared__ float buf[];
    const int heads = H + 2 * KV, lane = threadIdx.x & 31;
    const long long wid = (blockIdx.x * (long long)blockDim.x + threadIdx.x) >> 5;
    if (wid >= rows * heads) return;
    const long long r = wid / heads;
    const int j = (int)(wid - r * heads);
    long long p, off;
    if (per_row) {
        p = rpos[r];
        off = roff[r];
    } else {
        const long long b = r / T;
        p = pos + (r - b * T);
        off = b * cb + p * ct;
    }
    float* sh = buf + (threadIdx.x >> 5) * D;
    const float* src = qkv + r * heads * D + (long long)j * D;
    for (int d = lane; d < D; d += 32) sh[d] = has_bias ? src[d] + bias[j * D + d] : src[d];
    __syncwarp();
    if (j >= H + KV) {
        float* dst = cv + off + (long long)(j - H - KV) * ch;
        for (int d = lane; d < D; d += 32) dst[d] = sh[d];
        return;
    }
    if (has_qkn) {
        float ss = 0.f;
        for (int d = lane; d < D; d += 32) ss += sh[d] * sh[d];
        const float rstd = 1.0f / sqrtf(warp_sum(ss) / (float)D + eps);
        __syncwarp();
        for (int d = lane; d < D; d += 32) sh[d] = sh[d] * rstd * qkn[j * D + d];
        __syncwarp();
    }
    const int half = D / 2;
    const float* c = cosv + p * D;
    const float* s = sinv + p * D;
    float* dst = j < H ? q_out + (r * H + j) * (long long)D : ck + off + (long long)(j - H) * ch;
    for (int d = lane; d < D; d += 32) {
        const float rot = d < half ? -sh[d + half] : sh[d - half];
        dst[d] = sh[d] * c[d] + rot * s[d];
    }
}

// silu(gate) * up of gu [rows, 2 I] (gate columns first) as bfloat16 bits [rows, I]
extern "C" __global__ void loom_swiglu_bf16(const float* __restrict__ gu, const float* __restrict__ bias,
        int has_bias, u16* __restrict__ out, long long rows, int I) {
    const long long total = rows * I;
    wait_for_previous_kernel();
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const long long r = i / I;
        const int c = (int)(i - r * I);
        float g = gu[r * 2 * I + c], u = gu[r * 2 * I + I + c];
        if (has_bias) {
            g = g + bias[c];
            u = u + bias[I + c];
        }
        const float sig = g >= 0.f ? 1.0f / (1.0f + expf(-g)) : expf(g) / (1.0f + expf(g));
        out[i] = (u16)loom_bf16_bits(g * sig * u);
    }
}
"""


@cache
def _module():
    return cupy.RawModule(code=_SOURCE, options=OPTIONS)


def rms_bf16(x: Array, weight: Array, eps: float, overlap: bool = False) -> Array:
    """bfloat16 bits (uint16 [rows, n]) of RMSNorm(x) * weight for x float32 [rows, n] (C-contiguous).
    overlap: a programmatic dependent launch (loom.backend.cuda.launch; the weight is read before the
    previous kernel ends)."""
    rows, n = x.shape
    out = cupy.empty((rows, n), dtype=np.uint16)
    if not out.size:
        return out
    with translating("prefill rms_norm", x):
        launch(_module().get_function("loom_rms_bf16"), -(-rows // 4), 128,
               (x, weight, out, np.int64(rows), np.int32(n), np.float32(eps)), overlap)
    return out


def rope_cache(qkv: Array, bias: Array | None, qk_norm: Array | None, eps: float, cos: Array, sin: Array,
               batch: int, heads: int, kv_heads: int, cache_k: Array, cache_v: Array, pos: int) -> Array:
    """q [B, T, H, D] float32, rotated, from the fused product qkv [B T, (H + 2 KV) D] (bias [(H + 2
    KV) D] added; qk_norm [H + KV, D]: per-head RMSNorm before the rotation); the rotated keys and
    the values written into cache_k, cache_v [B, KV, positions, D] at positions pos.. . cos, sin
    [positions, D]: the RoPE tables."""
    rows = qkv.shape[0]
    T, D = rows // batch, cos.shape[1]
    _check_rope(qkv, cos, sin, heads, kv_heads, cache_k, cache_v)
    if cache_v.strides != cache_k.strides or cache_k.shape[0] != batch or rows != batch * T:
        raise ValueError(f"rope_cache: {rows} rows of {batch} sequences for caches {cache_k.shape} / {cache_v.shape}")
    if pos + T > min(cos.shape[0], cache_k.shape[2]):
        raise ValueError(f"rope_cache: positions up to {pos + T} past the tables ({cos.shape[0]}) or the cache "
                         f"({cache_k.shape[2]})")
    cb, ch, ct = (s // 4 for s in cache_k.strides[:3])
    q = cupy.empty((batch, T, heads, D), dtype=np.float32)
    _rope(qkv, bias, qk_norm, eps, cos, sin, T, heads, kv_heads, D, q, cache_k, cache_v, cb, ch, ct, pos, None, None)
    return q


def rope_rows(qkv: Array, bias: Array | None, qk_norm: Array | None, eps: float, cos: Array, sin: Array, heads: int,
              kv_heads: int, cache_k: Array, cache_v: Array, positions: Array, slots: Array) -> Array:
    """rope_cache for rows at any positions over a paged cache: row r of qkv [rows, (H + 2 KV) D] is
    at position positions[r] (int64, device) and its key and value go to slot slots[r] of cache_k,
    cache_v [slots, KV, D] (C-contiguous). Returns q [rows, H, D]."""
    rows, D = qkv.shape[0], cos.shape[1]
    _check_rope(qkv, cos, sin, heads, kv_heads, cache_k, cache_v)
    if cache_k.shape != cache_v.shape or not (cache_k.flags.c_contiguous and cache_v.flags.c_contiguous):
        raise ValueError("rope_rows: the paged caches must be C-contiguous [slots, KV, D] of one shape")
    if positions.shape != (rows,) or slots.shape != (rows,):
        raise ValueError(f"rope_rows: {rows} rows, {positions.shape} positions, {slots.shape} slots")
    q = cupy.empty((rows, heads, D), dtype=np.float32)
    _rope(qkv, bias, qk_norm, eps, cos, sin, 1, heads, kv_heads, D, q, cache_k, cache_v, 0, D, 0, 0, positions,
          slots * (kv_heads * D))
    return q


def _check_rope(qkv: Array, cos: Array, sin: Array, heads: int, kv_heads: int, cache_k: Array, cache_v: Array) -> None:
    """The shapes rope_cache and rope_rows read: float32 throughout, qkv [rows, (H + 2 KV) D] and
    C-contiguous, the tables [positions, D], cache rows of D contiguous floats."""
    D = cos.shape[1]
    arrays = (qkv, cos, sin, cache_k, cache_v)
    if (any(a.dtype != np.float32 for a in arrays) or qkv.ndim != 2 or qkv.shape[1] != (heads + 2 * kv_heads) * D
            or not (qkv.flags.c_contiguous and cos.flags.c_contiguous and sin.flags.c_contiguous)
            or sin.shape != cos.shape or cache_k.shape[-1] != D or cache_k.strides[-1] != 4):
        raise ValueError(f"rope: unsupported shapes qkv {qkv.shape}, tables {cos.shape}, cache {cache_k.shape} for "
                         f"{heads} heads and {kv_heads} key/value heads")


def _rope(qkv, bias, qk_norm, eps, cos, sin, T, heads, kv_heads, D, q, cache_k, cache_v, cb, ch, ct, pos, rpos, roff):
    rows = qkv.shape[0]
    warps = rows * (heads + 2 * kv_heads)
    if not warps:
        return
    with translating("prefill rope and cache", qkv):
        _module().get_function("loom_rope_cache")((-(-warps // 8),), (256,), (
            qkv, qkv if bias is None else bias, np.int32(bias is not None), qkv if qk_norm is None else qk_norm,
            np.int32(qk_norm is not None), np.float32(eps), cos, sin, np.int64(rows), np.int32(T), np.int32(heads),
            np.int32(kv_heads), np.int32(D), q, cache_k, cache_v, np.int64(cb), np.int64(ch), np.int64(ct),
            np.int64(pos), qkv if rpos is None else rpos, qkv if roff is None else roff, np.int32(rpos is not None)),
            shared_mem=8 * D * 4)


def swiglu_bf16(gu: Array, bias: Array | None, out: Array | None = None, overlap: bool = False) -> Array:
    """bfloat16 bits [rows, I] of silu(gate) * up for gu float32 [rows, 2 I] (gate | up, bias [2 I]),
    into `out` (uint16 [rows, I], C-contiguous) when given; overlap as rms_bf16's."""
    rows, width = gu.shape
    if out is None:
        out = cupy.empty((rows, width // 2), dtype=np.uint16)
    elif out.dtype != np.uint16 or out.shape != (rows, width // 2) or not out.flags.c_contiguous:
        raise ValueError(f"swiglu_bf16: out must be C-contiguous uint16 [{rows}, {width // 2}]")
    total = rows * (width // 2)
    with translating("prefill swiglu", gu):
        launch(_module().get_function("loom_swiglu_bf16"), max(1, min(-(-total // 256), 1 << 16)), 256,
               (gu, gu if bias is None else bias, np.int32(bias is not None), out, np.int64(rows),
                np.int32(width // 2)), overlap)
    return out


def argmax_rows(x: Array, out: Array | None = None) -> Array:
    """int64 [rows]: each row's argmax of x float32 [rows, n] (C-contiguous), as numpy.argmax(x, 1);
    into `out` (int64 [rows], contiguous) when given."""
    rows, n = x.shape
    if out is None:
        out = cupy.empty(rows, dtype=np.int64)
    elif out.dtype != np.int64 or out.shape != (rows,) or not out.flags.c_contiguous:
        raise ValueError(f"argmax_rows: out must be contiguous int64 [{rows}]")
    if rows and n:
        with translating("argmax", x):
            _module().get_function("loom_argmax_rows")((rows,), (1024,), (cupy.ascontiguousarray(x), np.int64(n), out))
    return out
