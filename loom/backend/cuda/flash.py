"""Causal attention for prompts in one kernel on the tensor cores (fast mode): the flash-attention
scheme, so the [queries, keys] scores are never written to memory.

Keys and values are first rounded to bfloat16 (nearest, even) in one pass, the values transposed
(loom_flash_kv16). A block takes 64 queries of one head (four warps of 16), the blocks with the most
keys first; key and value tiles of 64 go through shared memory, each thread holding the next tile's
16-byte chunks in registers while the current one is used. Each warp forms its 16 x 64 scores with
`mma.sync.m16n8k16` (bfloat16 inputs, float32 sums), masks them where a tile crosses the diagonal,
the sliding window's edge or the end, and keeps a running maximum and sum per row in float32 (exp2,
the GPU's approximate one, of the scores times scale log2(e)); the probabilities, rounded to
bfloat16, multiply the value tile on the tensor cores into float32 outputs held in registers. At
the end each row is divided by its sum.

This is fast mode's arithmetic: queries, keys, values and probabilities are rounded to bfloat16, as
transformers' bfloat16 models and PyTorch's flash kernels do; the result is within a few bfloat16
ulps of float32 attention. Deterministic mode never calls it. The output of a query depends only on
its own row and its keys (not on the other queries of the launch), and the launch has no atomics: the
same inputs give the same bits every time.
"""
from __future__ import annotations

import math
from functools import cache

import cupy
import numpy as np

from .. import Array
from .compile import OPTIONS, translating
from .kept_tables import KeptTables
from .quant import BF16_BITS

BLOCK_Q = 64          # queries per block (4 warps of 16)
BLOCK_K = 64          # keys per tile

_SOURCE = BF16_BITS + r"""
#define BQ 64
#define BK 64
#define KS (HD + 8)       // row stride of the key tile (bfloat16 units): conflict-free fragment loads
#define VS (BK + 8)       // row stride of the transposed value tile
typedef unsigned short u16;
typedef unsigned int u32;

__device__ __forceinline__ u32 pack(float lo, float hi) { return loom_bf16_bits(lo) | (loom_bf16_bits(hi) << 16); }

__device__ __forceinline__ void store2(void* out, int out16, long long at, float a, float b) {
    if (out16) *(u32*)((u16*)out + at) = pack(a, b);
    else *(float2*)((float*)out + at) = make_float2(a, b);
}

__device__ __forceinline__ void mma(float* c, const u32* a, u32 b0, u32 b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ float ex2(float x) {                // 2^x, -inf -> +0 (fast mode)
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

// Work items (sequences) s = 0 .. S - 1, described by meta[5 s ..]: the row of q (and out) holding
// its first query, its query count T, its first query's position pos, its first key's position lo
// and its key count n (positions lo .. lo + n - 1).

// Item s's keys and values as bfloat16 bits, in tiles of BK keys padded with zeros to np positions:
// k16 [S KV, np, HD] and the values transposed, v16 [S KV, HD, np]. Key j of item s (head hh) is
// read at k + s kb + hh kh + j kt, or, with slots (paged caches), at k + slots[s ns + j] kt + hh kh.
// Block (tile, s KV + head), 256 threads.
extern "C" __global__ void loom_flash_kv16(const float* __restrict__ k, const float* __restrict__ v, long long kb,
        long long kh, long long kt, const long long* __restrict__ slots, int paged, long long ns,
        const long long* __restrict__ meta, int KV, int np, u16* __restrict__ k16, u16* __restrict__ v16) {
    __shared__ __align__(16) u16 tile[HD * VS];
    const int bh = blockIdx.y, b = bh / KV, hh = bh - b * KV;
    const long long j0 = (long long)blockIdx.x * BK, n = meta[5 * b + 4];
    for (int e = threadIdx.x; e < BK * HD / 4; e += blockDim.x) {
        const int key = e / (HD / 4), d = (e - key * (HD / 4)) * 4;
        float4 kx = make_float4(0.f, 0.f, 0.f, 0.f), vx = kx;
        if (j0 + key < n) {
            const long long at = paged ? slots[b * ns + j0 + key] * kt + hh * kh : b * kb + hh * kh + (j0 + key) * kt;
            kx = *(const float4*)(k + at + d);
            vx = *(const float4*)(v + at + d);
        }
        *(uint2*)(k16 + ((long long)bh * np + j0 + key) * HD + d) = make_uint2(pack(kx.x, kx.y), pack(kx.z, kx.w));
        tile[(d + 0) * VS + key] = (u16)loom_bf16_bits(vx.x);
        tile[(d + 1) * VS + key] = (u16)loom_bf16_bits(vx.y);
        tile[(d + 2) * VS + key] = (u16)loom_bf16_bits(vx.z);
        tile[(d + 3) * VS + key] = (u16)loom_bf16_bits(vx.w);
    }
    __syncthreads();
    for (int e = threadIdx.x; e < HD * BK / 8; e += blockDim.x) {     // 8 keys a thread
        const int d = e / (BK / 8), c = (e - d * (BK / 8)) * 8;
        *(uint4*)(v16 + ((long long)bh * HD + d) * np + j0 + c) = *(const uint4*)(tile + d * VS + c);
    }
}

// q: query rows [rows, H, HD] (strides qt, qh in floats), keys and values as loom_flash_kv16 writes
// them (np positions), out [rows, H * HD] (float32, or bfloat16 bits when out16). Block (query tile,
// head h, item s). Query i of item s sits at position pos + i, key j at lo + j; it sees key j when
// lo + j <= pos + i and (window == 0 or lo + j > pos + i - window). Head h reads key head h / R. The
// blocks of the last queries (the most keys) go first.
extern "C" __global__ void __launch_bounds__(128) loom_flash_attention(
        const float* __restrict__ q, long long qt, long long qh, const long long* __restrict__ meta,
        const u16* __restrict__ k16, const u16* __restrict__ v16, int KV, int np,
        void* __restrict__ out, int out16, int H, int R, long long window, float scale_log2) {
    __shared__ __align__(16) u16 ks[BK * KS];
    __shared__ __align__(16) u16 vt[HD * VS];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int h = blockIdx.y, b = blockIdx.z;
    const long long first_row = meta[5 * b], pos = meta[5 * b + 2], lo = meta[5 * b + 3];
    const int T = (int)meta[5 * b + 1], n = (int)meta[5 * b + 4];
    const int q0 = (gridDim.x - 1 - blockIdx.x) * BQ, row0 = q0 + warp * 16;
    if (q0 >= T) return;                                         // (the whole block: a shorter item)
    const float* qp = q + first_row * qt + h * qh;
    const long long bh = (long long)b * KV + h / R;
    const uint4* kg = (const uint4*)(k16 + bh * np * HD);          // [np, HD / 8]
    const uint4* vg = (const uint4*)(v16 + bh * HD * np);          // [HD, np / 8]

    // this warp's 16 query rows as A fragments, one per 16 dimensions
    u32 qa[HD / 16][4];
#pragma unroll
    for (int s = 0; s < HD / 16; ++s) {
        const int d = s * 16 + 2 * t;
        float2 x0 = make_float2(0.f, 0.f), x1 = x0, x2 = x0, x3 = x0;
        if (row0 + g < T) {
            x0 = *(const float2*)(qp + (row0 + g) * qt + d);
            x2 = *(const float2*)(qp + (row0 + g) * qt + d + 8);
        }
        if (row0 + g + 8 < T) {
            x1 = *(const float2*)(qp + (row0 + g + 8) * qt + d);
            x3 = *(const float2*)(qp + (row0 + g + 8) * qt + d + 8);
        }
        qa[s][0] = pack(x0.x, x0.y);
        qa[s][1] = pack(x1.x, x1.y);
        qa[s][2] = pack(x2.x, x2.y);
        qa[s][3] = pack(x3.x, x3.y);
    }

    float o[HD / 8][4];
#pragma unroll
    for (int j = 0; j < HD / 8; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.f;
    const float NEG = __int_as_float(0xff800000);
    float m0 = NEG, m1 = NEG, l0 = 0.f, l1 = 0.f;
    const long long p0 = pos + row0 + g, p1 = p0 + 8;          // this thread's two rows' positions

    // the keys the block's queries can see: [first, last)
    const long long qfirst = pos + q0, qlast = pos + min(q0 + BQ, T) - 1;
    long long first = window ? qfirst - window + 1 - lo : 0;
    first = first < 0 ? 0 : first;
    long long last = qlast - lo + 1;
    last = last > n ? n : last;
    // tiles of BK keys from the one holding `first`, each thread carrying the next tile's 16-byte
    // chunks in registers while the warps work on the current one
#define CHUNKS (BK * HD / 8 / 128)
    uint4 kn[CHUNKS], vn[CHUNKS];
    long long j0 = first / BK * BK;
    if (j0 < last) {
#pragma unroll
        for (int i = 0; i < CHUNKS; ++i) {
            const int e = threadIdx.x + i * 128;
            kn[i] = kg[(j0 + e / (HD / 8)) * (HD / 8) + e % (HD / 8)];
            vn[i] = vg[(long long)(e / (BK / 8)) * (np / 8) + j0 / 8 + e % (BK / 8)];
        }
    }
    for (; j0 < last; j0 += BK) {
        __syncthreads();
#pragma unroll
        for (int i = 0; i < CHUNKS; ++i) {
            const int e = threadIdx.x + i * 128;
            *(uint4*)(ks + (e / (HD / 8)) * KS + (e % (HD / 8)) * 8) = kn[i];
            *(uint4*)(vt + (e / (BK / 8)) * VS + (e % (BK / 8)) * 8) = vn[i];
        }
        __syncthreads();
        if (j0 + BK < last) {
#pragma unroll
            for (int i = 0; i < CHUNKS; ++i) {
                const int e = threadIdx.x + i * 128;
                kn[i] = kg[(j0 + BK + e / (HD / 8)) * (HD / 8) + e % (HD / 8)];
                vn[i] = vg[(long long)(e / (BK / 8)) * (np / 8) + (j0 + BK) / 8 + e % (BK / 8)];
            }
        }
        if (row0 >= T) continue;                                 // (after the barrier: all threads load)

        float s[BK / 8][4];
#pragma unroll
        for (int j = 0; j < BK / 8; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
#pragma unroll
        for (int st = 0; st < HD / 16; ++st) {
#pragma unroll
            for (int j = 0; j < BK / 8; ++j) {
                const u16* kr = ks + (j * 8 + g) * KS + st * 16 + 2 * t;
                mma(s[j], qa[st], *(const u32*)kr, *(const u32*)(kr + 8));
            }
        }
        // mask (only tiles crossing the diagonal, the window's edge or the end), scale, and the rows'
        // running maxima (a row's values lie in the 4 threads of a quad)
        const long long rlo = pos + row0, rhi = min(pos + row0 + 15, pos + T - 1);
        const bool whole = j0 + BK <= n && lo + j0 + BK - 1 <= rlo && (window == 0 || lo + j0 > rhi - window);
        float mx0 = NEG, mx1 = NEG;
#pragma unroll
        for (int j = 0; j < BK / 8; ++j) {
#pragma unroll
            for (int c = 0; c < 4; ++c) {
                const long long key = j0 + j * 8 + 2 * t + (c & 1), kpos = lo + key;
                const long long qpos = c < 2 ? p0 : p1;
                const bool ok = whole || (key < n && kpos <= qpos && (window == 0 || kpos > qpos - window));
                s[j][c] = ok ? s[j][c] * scale_log2 : NEG;
            }
            mx0 = fmaxf(mx0, fmaxf(s[j][0], s[j][1]));
            mx1 = fmaxf(mx1, fmaxf(s[j][2], s[j][3]));
        }
#pragma unroll
        for (int off = 1; off < 4; off <<= 1) {
            mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, off));
            mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, off));
        }
        const float n0 = fmaxf(m0, mx0), n1 = fmaxf(m1, mx1);
        const float b0 = n0 == NEG ? 0.f : n0, b1 = n1 == NEG ? 0.f : n1;   // rows with nothing seen yet
        const float a0 = ex2(m0 - b0), a1 = ex2(m1 - b1);
        m0 = n0;
        m1 = n1;
        float sum0 = 0.f, sum1 = 0.f;
        u32 pa[BK / 16][4];
#pragma unroll
        for (int j = 0; j < BK / 8; ++j) {
            const float e0 = ex2(s[j][0] - b0), e1 = ex2(s[j][1] - b0);
            const float e2 = ex2(s[j][2] - b1), e3 = ex2(s[j][3] - b1);
            sum0 += e0 + e1;
            sum1 += e2 + e3;
            // the C fragment of keys 8j.. is half of the A fragment of keys 16 (j / 2)..
            pa[j / 2][(j & 1) * 2 + 0] = pack(e0, e1);
            pa[j / 2][(j & 1) * 2 + 1] = pack(e2, e3);
        }
        l0 = l0 * a0 + sum0;
        l1 = l1 * a1 + sum1;
#pragma unroll
        for (int j = 0; j < HD / 8; ++j) {
            o[j][0] *= a0;
            o[j][1] *= a0;
            o[j][2] *= a1;
            o[j][3] *= a1;
        }
#pragma unroll
        for (int st = 0; st < BK / 16; ++st) {
#pragma unroll
            for (int j = 0; j < HD / 8; ++j) {
                const u16* vr = vt + (j * 8 + g) * VS + st * 16 + 2 * t;
                mma(o[j], pa[st], *(const u32*)vr, *(const u32*)(vr + 8));
            }
        }
    }
    if (row0 >= T) return;
#pragma unroll
    for (int off = 1; off < 4; off <<= 1) {
        l0 += __shfl_xor_sync(0xffffffffu, l0, off);
        l1 += __shfl_xor_sync(0xffffffffu, l1, off);
    }
    const long long stride = (long long)H * HD;
    const long long at = (first_row + row0 + g) * stride + (long long)h * HD + 2 * t;
#pragma unroll
    for (int j = 0; j < HD / 8; ++j) {
        if (row0 + g < T) store2(out, out16, at + j * 8, o[j][0] / l0, o[j][1] / l0);
        if (row0 + g + 8 < T) store2(out, out16, at + 8 * stride + j * 8, o[j][2] / l1, o[j][3] / l1);
    }
}
"""


@cache
def _module(head_dim: int):
    return cupy.RawModule(code=f"#define HD {head_dim}\n" + _SOURCE, options=OPTIONS)


def supports(head_dim: int) -> bool:
    """Whether the kernel takes this head size on this device: a multiple of 16 up to 128 (its two
    tiles in 48 KiB of static shared memory, its registers without much spilling), and bfloat16
    `mma.sync` (compute capability 8.0 or later)."""
    return head_dim % 16 == 0 and 16 <= head_dim <= 128 and _capability() >= 80


@cache
def _capability() -> int:
    return int(cupy.cuda.Device().compute_capability)


def attend(q: Array, keys: Array, values: Array, pos: int, lo: int, window: int | None,
           scale: float, out16: bool = False) -> Array:
    """Causal attention: the context [B, T, H * D] (float32; out16: bfloat16 bits, uint16) of queries
    q [B, T, H, D] at positions pos.. over keys and values [B, KV, n, D] at positions lo.. (H a
    multiple of KV; a query sees keys at or before its position, within `window` positions when
    given). q may be a strided view whose last axis is contiguous (its rows evenly spaced across the
    batch); keys and values views of one layout with contiguous rows."""
    B, T, H, D = q.shape
    KV, n = keys.shape[1], keys.shape[2]
    if keys.shape != values.shape or keys.strides != values.strides or keys.shape[0] != B:
        raise ValueError(f"flash attention: unsupported shapes q {q.shape}, keys {keys.shape}, values {values.shape}")
    _check(q, keys, values, H, D)
    if B > 1 and q.strides[0] != T * q.strides[1]:        # (one sequence: its batch stride is never read)
        raise ValueError("flash attention: q's batch stride must be T times its row stride")
    meta = _meta(tuple((b * T, T, pos, lo, n) for b in range(B)))
    ks = [s // 4 for s in keys.strides]
    return _run(_rows(q), keys, values, ks[0], ks[1], ks[2], None, 0, meta, B, T, n, KV, window, scale, out16,
                (B, T, H * D))


def attend_paged(q: Array, cache_k: Array, cache_v: Array, key_slots: Array, items: list[tuple[int, int, int, int, int]],
                 window: int | None, scale: float, out16: bool = False) -> Array:
    """attend for many sequences over a paged cache: q [rows, H, D] (float32) holds every item's
    queries; item s is (its first row, its query count T, its first query's position, its first key's
    position lo, its key count n), its key j stored in slot key_slots[s, j] of cache_k, cache_v
    [slots, KV, D]. Returns the context [rows, H * D] (rows of no item are left unwritten)."""
    rows, H, D = q.shape
    KV = cache_k.shape[1]
    if cache_k.shape != cache_v.shape or cache_k.ndim != 3 or not cache_k.flags.c_contiguous \
            or not cache_v.flags.c_contiguous or key_slots.dtype != np.int64 or not key_slots.flags.c_contiguous:
        raise ValueError("flash attention: paged caches must be C-contiguous [slots, KV, D] with int64 key slots")
    _check(q, cache_k, cache_v, H, D)
    t_max = max((it[1] for it in items), default=0)
    n_max = max((it[4] for it in items), default=0)
    if n_max > key_slots.shape[1]:
        raise ValueError(f"flash attention: {n_max} keys for key slot lists of {key_slots.shape[1]}")
    meta = _meta(tuple(tuple(int(v) for v in it) for it in items))
    return _run(q, cache_k, cache_v, 0, D, KV * D, key_slots, key_slots.shape[1], meta, len(items), t_max, n_max, KV,
                window, scale, out16, (rows, H * D))


def _check(q: Array, keys: Array, values: Array, H: int, D: int) -> None:
    KV = keys.shape[1]                  # [B, KV, n, D] or, paged, [slots, KV, D]
    if not supports(D) or H % KV or keys.shape[-1] != D:
        raise ValueError(f"flash attention: unsupported shapes q {q.shape}, keys {keys.shape}, values {values.shape}")
    for name, a in (("q", q), ("keys", keys), ("values", values)):
        if a.dtype != np.float32 or a.strides[-1] != 4 or any(s % 16 for s in a.strides[:-1]) or a.data.ptr % 16:
            raise ValueError(f"flash attention: {name} must be float32 with contiguous, 16-byte aligned rows")


def _rows(q: Array) -> Array:
    """q [B, T, H, D] as rows [B T, H, D] (a view: B's stride is T rows)."""
    B, T, H, D = q.shape
    return cupy.ndarray((B * T, H, D), dtype=q.dtype, memptr=q.data, strides=q.strides[1:])


def _meta(items: tuple) -> Array:
    """The items' descriptions as an array [S, 5] int64 on the device, kept (KeptTables: a prompt's chunks and
    layers repeat them; KEPT_META most recent)."""
    return _KEPT_META.get(items, lambda: cupy.asarray(np.array(items, dtype=np.int64).reshape(-1, 5)))


KEPT_META = 256
_KEPT_META = KeptTables(KEPT_META, "flash attention")


def _run(q, keys, values, kb, kh, kt, slots, ns, meta, S, t_max, n_max, KV, window, scale, out16, shape):
    rows, H, D = q.shape
    out = cupy.empty(shape, dtype=np.uint16 if out16 else np.float32)
    if t_max == 0 or S == 0:
        return out
    padded = max(BLOCK_K, -(-n_max // BLOCK_K) * BLOCK_K)
    k16 = cupy.empty((S, KV, padded, D), dtype=np.uint16)
    v16 = cupy.empty((S, KV, D, padded), dtype=np.uint16)
    module = _module(D)
    with translating("flash attention", q, keys, values):
        module.get_function("loom_flash_kv16")((padded // BLOCK_K, S * KV), (256,), (
            keys, values, np.int64(kb), np.int64(kh), np.int64(kt), keys if slots is None else slots,
            np.int32(slots is not None), np.int64(ns), meta, np.int32(KV), np.int32(padded), k16, v16))
        module.get_function("loom_flash_attention")((-(-t_max // BLOCK_Q), H, S), (128,), (
            q, np.int64(q.strides[0] // 4), np.int64(q.strides[1] // 4), meta, k16, v16, np.int32(KV),
            np.int32(padded), out, np.int32(out16), np.int32(H), np.int32(H // KV), np.int64(window or 0),
            np.float32(scale * math.log2(math.e))))
    return out
