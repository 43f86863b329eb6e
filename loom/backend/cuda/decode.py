"""The CUDA attention kernel of a decoder's decode step (one new token per sequence), fast mode.

`attention` does everything between the fused Q/K/V product and the output projection for one new
token, reading the step's position from device memory so that a recorded decode step
(loom/llm/paged_graph.py) replays unchanged at every position. One block per (sequence, query head):

1. its warps 0-2 take the head's q, its key/value head's new k and v from the product [B, (H + 2 KV) D]:
   qwen3's optional per-head RMSNorm, HF's rotate-half RoPE with the position's cos/sin row (lane l
   holds elements l, l + 32, ..., so an element and its rotation partner D/2 away share a lane; head_dim
   a multiple of 64), into shared memory; the first query head of each key/value head also writes k and
   v into the KV cache at the position (the others use their own copy, so no block waits for another);
2. softmax(q k^T / sqrt(D)) v over keys lo..pos (lo from a sliding window): groups of D/16 lanes take
   one key each (WARPS * 32 / (D/16) keys at a time), each group keeping an online softmax (running
   max, sum and weighted sum of values);
3. the groups' partial results are merged (weights by one warp, the weighted sums by all threads).

Work grows with the keys present, not with the cache's size. Where a batch has too few (sequence,
head) blocks to fill the device (split_work), a window of more than 2 SPLIT_KEYS keys is cut into
parts, one block each (flash-decoding): each leaves its running max, sum and weighted sums in a
workspace and the last part of a head to finish merges them. Sums and exponentials run in another order than
loom/llm/decoder.py's array code: fast mode only. `CUDABackend.decode.attention` is this module.
Capturable: sizes as arguments, no sync.
"""
from __future__ import annotations

from functools import cache
from typing import NamedTuple

import cupy
import numpy as np

from .. import Array
from .compile import OPTIONS
from .launch import OVERLAP_PROLOGUE, launch, multiprocessors
from .quant import BF16_BITS, WARP_REDUCTIONS, pointer

MAX_HEAD_DIM = 256
WARPS = 8
TABLE_SMEM = 1024     # block-table entries a paged attention block stages in shared memory (16 K keys at 16 a block)
SPLIT_KEYS = 256      # keys a part of a split window takes (windows of more than twice this are split)
MAX_SPLITS = 16

_SOURCE = WARP_REDUCTIONS + BF16_BITS + OVERLAP_PROLOGUE + r"""
#define PER (D / 32)
#define G (D / 16)
#define GROUPS (WARPS * 32 / G)
#define SLICES (WARPS * 32 / D)

// one head vector of the Q/K/V product: (norm and) RoPE with this lane's cos/sin values (rope = false: as is)
__device__ void head_vector(const float* x, float* dst, float* also, const float* norm, const float* cs,
                            const float* sn, float eps, float scale, bool rope) {
    const int lane = threadIdx.x & 31;
    float v[PER];
    #pragma unroll
    for (int i = 0; i < PER; ++i) v[i] = x[i * 32 + lane];
    if (rope && norm != 0) {                                     // qwen3's per-head RMSNorm
        float s = 0.0f;
        #pragma unroll
        for (int i = 0; i < PER; ++i) s += v[i] * v[i];
        const float r = 1.0f / sqrtf(warp_sum(s) / (float)D + eps);
        #pragma unroll
        for (int i = 0; i < PER; ++i) v[i] = v[i] * r * norm[i * 32 + lane];
    }
    #pragma unroll
    for (int i = 0; i < PER; ++i) {
        const int d = i * 32 + lane;
        float o = v[i];
        if (rope) {                                              // x * cos + [-x2, x1] * sin
            const float partner = i < PER / 2 ? -v[i + PER / 2] : v[i - PER / 2];
            o = v[i] * cs[i] + partner * sn[i];
        }
        dst[d] = o * scale;
        if (also != 0) also[d] = o;
    }
}

// Where key (or value) position t of the block's sequence and key/value head lives: a contiguous
// cache [B, KV, max_len, D] (Flat), or a paged one [slots, KV, D] through the sequence's block table.
struct Flat {
    float* base;                  // the sequence's key/value head: position t at base + t * D
    __device__ float* at(int t) const { return base + (long long)t * D; }
};
struct Paged {
    // the sequence's block table: entry j at table[j * col]; entries first .. first + count - 1 (the
    // blocks of the keys in view, up to TABLE_SMEM of them) staged in shared memory by the kernel
    float* base; const long long* table; long long col; const int* staged; int first, count, block_size, KV, kv;
    __device__ float* at(int t) const {
        const int j = t / block_size, i = j - first;
        const long long blk = i < count ? (long long)staged[i] : table[j * col];
        return base + ((blk * block_size + t % block_size) * KV + kv) * D;
    }
};

// Where the parts of a window split over several blocks leave their partial results (work null:
// not split): part `index` of `count` at work[((b * H + h) * splits + index) * (D + 2)], the
// head's finished parts counted at counters[b * H + h].
struct Split {
    float* work; int* counters; int splits, index, count;
};

// A part of a split window: leave (max, total, unnormalised sums t) in the workspace; the last of
// the head's parts to finish (a counter, reset by it for the next launch) merges them all and writes
// element d of the head's output at `at`. Not inlined: the merge's registers stay out of the loop's.
__device__ __noinline__ void merge_parts(const Split part, int bh, int d, float t, float max_s, float total_s,
                                         float* out, unsigned short* out16, long long at) {
    __shared__ int merger;
    float* mine = part.work + ((long long)bh * part.splits + part.index) * (D + 2);
    if (threadIdx.x < D) mine[2 + d] = t;
    if (threadIdx.x == 0) { mine[0] = max_s; mine[1] = total_s; }
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
        merger = atomicAdd(part.counters + bh, 1) == part.count - 1;
        if (merger) part.counters[bh] = 0;
    }
    __syncthreads();
    if (!merger || threadIdx.x >= D) return;
    __threadfence();
    const float* all = part.work + (long long)bh * part.splits * (D + 2);
    float mx = -__int_as_float(0x7f800000);
    for (int j = 0; j < part.count; ++j) mx = fmaxf(mx, __ldcg(all + j * (D + 2)));
    float num = 0.0f, den = 0.0f;
    for (int j = 0; j < part.count; ++j) {
        const float weight = expf(__ldcg(all + j * (D + 2)) - mx);
        den += __ldcg(all + j * (D + 2) + 1) * weight;
        num += __ldcg(all + j * (D + 2) + 2 + d) * weight;
    }
    if (out16 != 0) out16[at] = (unsigned short)loom_bf16_bits(num / den);
    else out[at] = num / den;
}

// One block per (sequence b, query head h): the new token's attention at position pos, written to
// out (float32) or, where out16 is not null, to out16 as bfloat16 bits.
// Keys lo .. end of the window lo .. pos (end == pos: the last part, which takes the new key and
// writes it to the cache); part: where a block taking one part of a split window leaves its partial
// result (part.work null: the block takes the whole window).
// SPLIT false: the whole window (end is pos, part unused), a kernel without the merge's registers.
template <bool SPLIT, class Addr>
__device__ void decode_attention(const float* qkv, Addr keys_w, Addr values_w, float* out, unsigned short* out16,
                                 const float* cos_t, const float* sin_t, const float* norm, int pos, int lo, int end,
                                 int b, int h, int H, int KV, float scale, float eps, const Split part) {
    if (!SPLIT) end = pos;
    __shared__ __align__(16) float q_s[D], k_s[D], v_s[D];     // read as float4
    __shared__ float part_m[GROUPS], part_w[GROUPS], part_acc[GROUPS][D], merged[SLICES][D];
    __shared__ float total_s, max_s;
    const int R = H / KV, kv = h / R;
    const int w = threadIdx.x >> 5, cached = min(end, pos - 1);  // the last key read from the cache
    const float* x = qkv + (long long)b * (H + 2 * KV) * D;
    const bool last = end == pos, writer = last && h % R == 0;  // one query head per key/value head writes
    const int group = threadIdx.x / G, sub = threadIdx.x % G;    // sub: elements sub*16 .. sub*16+15
    // Before the wait (launch): only what no kernel of this step writes, the position's cos/sin
    // row and the keys and values cached by earlier steps (each group's first key).
    float cs[PER], sn[PER];
    if (w < 2) {
        #pragma unroll
        for (int i = 0; i < PER; ++i) {
            cs[i] = cos_t[(long long)pos * D + i * 32 + (threadIdx.x & 31)];
            sn[i] = sin_t[(long long)pos * D + i * 32 + (threadIdx.x & 31)];
        }
    }
    // kc, vc: the key and value of this group's key in the current step of the loop below (loaded one
    // step ahead, so that a step's loads are in flight while the one before computes)
    float4 kc[4], vc[4];
    if (lo + group <= cached) {
        #pragma unroll
        for (int i = 0; i < 4; ++i) {
            kc[i] = ((const float4*)(keys_w.at(lo + group) + sub * 16))[i];
            vc[i] = ((const float4*)(values_w.at(lo + group) + sub * 16))[i];
        }
    }
    wait_for_previous_kernel();
    if (w == 0) head_vector(x + h * D, q_s, 0, norm == 0 ? 0 : norm + h * D, cs, sn, eps, scale, true);
    if (w == 1 && last) head_vector(x + (H + kv) * D, k_s, writer ? keys_w.at(pos) : 0,
                                    norm == 0 ? 0 : norm + (H + kv) * D, cs, sn, eps, 1.0f, true);
    if (w == 2 % WARPS && last) head_vector(x + (H + KV + kv) * D, v_s, writer ? values_w.at(pos) : 0, 0, cs, sn,
                                    eps, 1.0f, false);                      // (two warps: warp 0 after q)
    __syncthreads();

    float qv[16], acc[16];
    #pragma unroll
    for (int i = 0; i < 16; ++i) { qv[i] = q_s[sub * 16 + i]; acc[i] = 0.0f; }
    float m = -__int_as_float(0x7f800000), l = 0.0f;
    // the loop condition is the same for the whole warp (its first group's key), because the shuffles
    // need every lane; a group past the last key computes on what it holds and discards it
    const int first = lo + w * (32 / G);
    for (int base = 0; first + base <= end; base += GROUPS) {
        const int t = lo + group + base, next = t + GROUPS;
        float4 kn[4], vn[4];
        if (next <= cached) {
            #pragma unroll
            for (int i = 0; i < 4; ++i) {
                kn[i] = ((const float4*)(keys_w.at(next) + sub * 16))[i];
                vn[i] = ((const float4*)(values_w.at(next) + sub * 16))[i];
            }
        }
        if (t == pos) {                                          // the new key, from shared memory
            #pragma unroll
            for (int i = 0; i < 4; ++i) { kc[i] = ((const float4*)(k_s + sub * 16))[i];
                                          vc[i] = ((const float4*)(v_s + sub * 16))[i]; }
        }
        float s = 0.0f;
        #pragma unroll
        for (int i = 0; i < 4; ++i)
            s += qv[4 * i] * kc[i].x + qv[4 * i + 1] * kc[i].y + qv[4 * i + 2] * kc[i].z + qv[4 * i + 3] * kc[i].w;
        #pragma unroll
        for (int o = G / 2; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);   // the group's lanes
        if (t <= end) {
            const float m_new = fmaxf(m, s), c = expf(m - m_new), p = expf(s - m_new);
            l = l * c + p;
            #pragma unroll
            for (int i = 0; i < 4; ++i) {
                acc[4 * i] = acc[4 * i] * c + p * vc[i].x; acc[4 * i + 1] = acc[4 * i + 1] * c + p * vc[i].y;
                acc[4 * i + 2] = acc[4 * i + 2] * c + p * vc[i].z; acc[4 * i + 3] = acc[4 * i + 3] * c + p * vc[i].w;
            }
            m = m_new;
        }
        #pragma unroll
        for (int i = 0; i < 4; ++i) { kc[i] = kn[i]; vc[i] = vn[i]; }
    }
    if (sub == 0) { part_m[group] = m; part_w[group] = l; }
    #pragma unroll
    for (int i = 0; i < 16; ++i) part_acc[group][sub * 16 + i] = acc[i];
    __syncthreads();
    if (w == 0) {                                                // each group's weight (0: no key) and the total
        const int lane = threadIdx.x & 31;
        float mx = -__int_as_float(0x7f800000);
        for (int j = lane; j < GROUPS; j += 32) mx = fmaxf(mx, part_m[j]);
        mx = warp_max(mx);
        float total = 0.0f;
        for (int j = lane; j < GROUPS; j += 32) {
            const float weight = part_w[j] > 0.0f ? expf(part_m[j] - mx) : 0.0f;
            part_m[j] = weight;
            total += part_w[j] * weight;
        }
        total = warp_sum(total);
        if (lane == 0) { total_s = total; max_s = mx; }
    }
    __syncthreads();
    const int d = threadIdx.x % D, slice = threadIdx.x / D;
    float s = 0.0f;
    for (int j = slice; j < GROUPS; j += SLICES) s += part_acc[j][d] * part_m[j];
    merged[slice][d] = s;
    __syncthreads();
    const long long at = ((long long)b * H + h) * D + d;
    float t = 0.0f;
    if (threadIdx.x < D) {
        t = merged[0][d];
        #pragma unroll
        for (int j = 1; j < SLICES; ++j) t += merged[j][d];
    }
    if (SPLIT && part.work != 0) {
        merge_parts(part, b * H + h, d, t, max_s, total_s, out, out16, at);
    } else if (threadIdx.x < D) {
        if (out16 != 0) out16[at] = (unsigned short)loom_bf16_bits(t / total_s);
        else out[at] = t / total_s;
    }
}

// qkv [B, (H + 2 KV) D]; out [B, H * D]; cache_k/v: layer views, element (b, kv, t, d) at
// b * batch_stride + (kv * max_len + t) * D + d; cos, sin [positions, D]; norm [H + KV, D] or null;
// every sequence at position *pos_p
extern "C" __global__ void loom_decode_attention(const float* qkv, float* cache_k, float* cache_v, float* out,
                                                 const float* cos_t, const float* sin_t, const float* norm,
                                                 const long long* pos_p, int H, int KV, int max_len,
                                                 long long batch_stride, int window, float scale, float eps) {
    const int b = blockIdx.x / H, h = blockIdx.x % H, kv = h / (H / KV);
    const long long base = b * batch_stride + (long long)kv * max_len * D;
    const int pos = (int)*pos_p, lo = window > 0 && pos - window + 1 > 0 ? pos - window + 1 : 0;
    decode_attention<false>(qkv, Flat{cache_k + base}, Flat{cache_v + base}, out, (unsigned short*)0, cos_t, sin_t,
                            norm, pos, lo, pos, b, h, H, KV, scale, eps, Split{});
}

// The same over a paged cache: cache_k/v [slots, KV, D] (one layer), sequence b at position pos[b]
// with block table entry j at tables[b * row + j * col]; out16: bfloat16 bits instead of out, or null.
// SPLIT (splits > 1): blockIdx.x = part * B * H + b * H + h (every head's first part launched first,
// so that those the device takes first spread over the multiprocessors), and a window of more than
// 2 SPLIT_KEYS keys is cut into parts of about SPLIT_KEYS, up to `splits` of them (work [B * H,
// splits, D + 2] and counters [B * H], zeros, as split_work makes them); parts past the window's end
// return at once.
template <bool SPLIT>
__device__ void paged_attention(const float* qkv, float* cache_k, float* cache_v, float* out, unsigned short* out16,
                                const float* cos_t, const float* sin_t, const float* norm, const long long* pos,
                                const long long* tables, long long row, long long col, int block_size, int H, int KV,
                                int window, float scale, float eps, float* work, int* counters, int splits) {
    __shared__ int staged[TABLE_SMEM];      // the table entries of the keys in view, read once per block
    const int heads = gridDim.x / splits, bh = blockIdx.x % heads, index = blockIdx.x / heads;
    const int b = bh / H, h = bh % H, kv = h / (H / KV), p = (int)pos[b];
    const int lo = window > 0 && p - window + 1 > 0 ? p - window + 1 : 0, n = p - lo + 1;
    int count = 1, start = lo, end = p;
    if (SPLIT) {
        count = n > 2 * SPLIT_KEYS ? min(splits, (n + SPLIT_KEYS - 1) / SPLIT_KEYS) : 1;
        const int chunk = (n + count - 1) / count;
        count = (n + chunk - 1) / chunk;    // every part non-empty
        if (index >= count) return;
        start = lo + index * chunk;
        end = min(start + chunk - 1, p);
    }
    const long long* table = tables + (long long)b * row;
    const int first = start / block_size, entries = min(end / block_size - first + 1, TABLE_SMEM);
    for (int j = threadIdx.x; j < entries; j += blockDim.x) staged[j] = (int)table[(long long)(first + j) * col];
    __syncthreads();
    decode_attention<SPLIT>(qkv, Paged{cache_k, table, col, staged, first, entries, block_size, KV, kv},
                            Paged{cache_v, table, col, staged, first, entries, block_size, KV, kv}, out, out16, cos_t,
                            sin_t, norm, p, start, end, b, h, H, KV, scale, eps,
                            count > 1 ? Split{work, counters, splits, index, count} : Split{});
}

extern "C" __global__ void __launch_bounds__(WARPS * 32) loom_paged_decode_attention(
        const float* qkv, float* cache_k, float* cache_v, float* out, unsigned short* out16, const float* cos_t,
        const float* sin_t, const float* norm, const long long* pos, const long long* tables, long long row,
        long long col, int block_size, int H, int KV, int window, float scale, float eps) {
    paged_attention<false>(qkv, cache_k, cache_v, out, out16, cos_t, sin_t, norm, pos, tables, row, col, block_size,
                           H, KV, window, scale, eps, (float*)0, (int*)0, 1);
}

extern "C" __global__ void __launch_bounds__(WARPS * 32) loom_paged_decode_attention_split(
        const float* qkv, float* cache_k, float* cache_v, float* out, unsigned short* out16, const float* cos_t,
        const float* sin_t, const float* norm, const long long* pos, const long long* tables, long long row,
        long long col, int block_size, int H, int KV, int window, float scale, float eps, float* work, int* counters,
        int splits) {
    paged_attention<true>(qkv, cache_k, cache_v, out, out16, cos_t, sin_t, norm, pos, tables, row, col, block_size,
                          H, KV, window, scale, eps, work, counters, splits);
}
"""


@cache
def _module(head_dim: int, warps: int = WARPS):
    head = (f"#define D {head_dim}\n#define WARPS {warps}\n#define TABLE_SMEM {TABLE_SMEM}\n"
            f"#define SPLIT_KEYS {SPLIT_KEYS}\n")
    return cupy.RawModule(code=head + _SOURCE, options=OPTIONS)


def batch_warps(blocks: int, head_dim: int) -> int:
    """Warps per block for `blocks` (sequence, head) blocks at once: two where there are blocks enough
    to fill the device twice over, else WARPS. Small blocks all stay resident at once (576 blocks
    of four warps took two waves on the H100: 10.5 us against 8.0 at 80 keys, 25.5 against 20.1 at
    300) and merge fewer key groups; at least D / 32 warps merge."""
    return max(2, head_dim // 32) if blocks >= 256 else WARPS


class SplitWork(NamedTuple):
    """The workspace of paged_attention's split windows: partial results [blocks, splits, D + 2] and a
    counter of finished parts per (sequence, head) block, zero between launches."""
    splits: int
    work: Array
    counters: Array


def split_work(batch: int, heads: int, head_dim: int, splits: int | None = None) -> SplitWork | None:
    """The workspace for paged_attention over `batch` sequences of `heads` query heads, None where
    the batch has blocks enough to fill the device without splitting windows. splits: parts a long
    window is cut into, by default as many as take the blocks to one a multiprocessor (up to
    MAX_SPLITS): on the H100 (benchmarks/paged_attention.py), one sequence of SmolLM2's 9 heads at
    2,048 keys took 26 us a layer in one block a head and 12 in 14 parts, four sequences 26 and 17 in
    3; at eight sequences (72 blocks) parts gained nothing below 8,192 keys and cost 10% at 1,000.
    A launch uses it alone: one per recorded graph (or stream)."""
    blocks = batch * heads
    if splits is None:
        sms = multiprocessors()
        splits = min(MAX_SPLITS, sms // blocks)
    if splits <= 1:
        return None
    return SplitWork(splits, cupy.empty((blocks, splits, head_dim + 2), dtype=np.float32),
                     cupy.zeros(blocks, dtype=np.int32))


def supports(head_dim: int) -> bool:
    """64, 128 or 256: a key's group of D / 16 lanes must divide a warp (192's 12 lanes would not)."""
    return head_dim in (64, 128, MAX_HEAD_DIM)


def attention(qkv: Array, cache_k: Array, cache_v: Array, out: Array, cos: Array, sin: Array, norm: Array | None,
              pos: Array, heads: int, window: int | None, scale: float, eps: float, overlap: bool = False) -> None:
    """out [B, H * D] = attention of the step's queries over the cache up to position pos[0] (int64 on the
    device), after writing the step's keys and values there. qkv [B, (H + 2 KV) D] is the Q/K/V product;
    cache_k/cache_v [B, KV, max_len, D] layer views; cos, sin [positions, D]; norm [H + KV, D] (qwen3's
    q/k norms) or None; window: a sliding window's length or None. overlap: launched to overlap the previous
    kernel (loom.backend.cuda.launch; pos and the cache before pos must be written before it started)."""
    B, kv_heads, max_len, D = cache_k.shape
    launch(_module(D).get_function("loom_decode_attention"), B * heads, WARPS * 32,
           (qkv, cache_k, cache_v, out, cos, sin, pointer(norm), pos, np.int32(heads), np.int32(kv_heads),
            np.int32(max_len), np.int64(cache_k.strides[0] // 4), np.int32(window or 0), np.float32(scale),
            np.float32(eps)), overlap)


def paged_attention(qkv: Array, cache_k: Array, cache_v: Array, out: Array, cos: Array, sin: Array,
                    norm: Array | None, pos: Array, tables: Array, block_size: int, heads: int, window: int | None,
                    scale: float, eps: float, overlap: bool = False, warps: int | None = None,
                    split: SplitWork | None = None) -> None:
    """attention() over a paged cache: cache_k/cache_v [slots, KV, D] (one layer), sequence b at
    position pos[b] (int64, device) with block table tables[b] (int64 [B, max_blocks], device, any
    strides: the recorded steps keep it column-major so that a step uploads only the columns in use):
    its key at position t lives in slot tables[b, t // block_size] * block_size + t % block_size. out:
    float32 [B, H * D], or uint16 for bfloat16 bits (the next product's input on the tensor cores).
    Many sequences at once run with fewer warps a block (batch_warps; `warps` overrides it: a multiple
    of D / 32 from 2 to 16, as the static shared memory allows). split: split_work's workspace for
    these sizes, to cut windows longer than 2 SPLIT_KEYS over several blocks (None: one block a head)."""
    _, kv_heads, D = cache_k.shape
    B = tables.shape[0]
    row, col = (s // tables.itemsize for s in tables.strides)
    bits = out.dtype == np.uint16
    if warps is None:
        warps = batch_warps(B * heads, D)
    elif not (2 <= warps <= 16 and warps % max(1, D // 32) == 0):
        raise ValueError(f"paged_attention: warps={warps}; expected a multiple of {max(1, D // 32)} from 2 to 16")
    splits = 1 if split is None else split.splits
    if split is not None and split.work.shape != (B * heads, splits, D + 2):
        raise ValueError(f"paged_attention: a split workspace of shape {split.work.shape}; these sizes take "
                         f"{(B * heads, splits, D + 2)}")
    args = (qkv, cache_k, cache_v, pointer(None if bits else out), pointer(out if bits else None), cos, sin,
            pointer(norm), pos, tables, np.int64(row), np.int64(col), np.int32(block_size), np.int32(heads),
            np.int32(kv_heads), np.int32(window or 0), np.float32(scale), np.float32(eps))
    name = "loom_paged_decode_attention"
    if split is not None:
        name, args = name + "_split", args + (split.work, split.counters, np.int32(splits))
    launch(_module(D, warps).get_function(name), B * heads * splits, warps * 32, args, overlap)
