"""Deterministic decode attention with a block per (sequence, key/value head): decode_exact's kernel for
the GROUP query heads that share a key/value head (grouped-query attention), with the one-block-a-head
kernel's bits.

The one-block-a-head kernel reads a group's cached keys and values once for each of its query heads;
past a few hundred keys those reads are what a step waits for (H200, 64 sequences x 1,000 keys,
SmolLM2's 9 heads over 3: 220 us a layer against fast mode's 69). Here one block reads each key and value
once and uses it for every head of its group:
1. q of each of the group's heads, the new k (qwen3: each after its RMSNorm) through RoPE, and v, as
   decode_exact's head_vector and rope_at make them; the block writes k and v into the cache;
2. scores: a thread per key, its row read once, the GROUP dot products side by side (each the exact
   product rounded once: certified, or settled as decode_exact settles it);
3. the softmax of each head's row by a warp (exact_reduce's exact_warp_row_sum: exact.sum's integers on
   one warp, the same sum as the block's exact_row_sum);
4. ctx = p v: head_dim threads per slice of the keys, each value read once for the GROUP heads' float64
   sums, the slices' sums combined and certified per (head, d), the open ones settled by a warp each.
   Past ROUNDED_KEYS keys the slice scheme runs head by head (decode_exact.slice_weighted_values).
Every value computed is the correctly rounded exact value, or a maximum, or an exact sum: whatever the
grouping, the same bits (tests/gpu/test_exact_decode_group.py against the one-block kernel,
test_paged_decode_graph_exact.py against the CPU).

The probabilities of the GROUP rows stay in shared memory (GROUP x the cache's keys, 4 bytes each) where
they fit decode_exact.SHARED_MAX, else in a workspace in device memory that the caller passes (decode_exact.probability_work;
SmolLM2-135M's, Qwen2-0.5B's and Llama-3.2-1B's caches of 8,192 positions take it: a large shared allocation
cost more than the caches' round trips). A source fragment
compiled inside decode_exact's module (its D, THREADS, SLICES, ROUNDED_KEYS, VALUE_LOADS and helpers).
"""
from __future__ import annotations

GROUP_MAX = 8                 # query heads a key/value head may have for this kernel (registers: 2 doubles each)

GROUP_SOURCE = r"""
// The block of (sequence b, key/value head kv): query heads h = kv GROUP + r, r < GROUP. Dynamic shared
// memory: q_s [GROUP][D] floats, the slices' sums ps, pt [SLICES][GROUP][D] doubles, then the probabilities
// [GROUP][cap] floats (cap >= the window's keys), or, where p_work is not null, those in p_work (device
// memory: the block's own GROUP cap floats, read back through the caches; a barrier orders them as it
// orders shared memory).
template <class Addr>
__device__ void exact_group_attention(const float* qkv, Addr keys, Addr values, float* out, const float* cos_t,
                                      const float* sin_t, const float* norm, long long pos, int b, int kv, int H,
                                      int KV, int window, float scale, float eps, int dbits, double dfactor,
                                      long long cap, float* p_work) {
    extern __shared__ __align__(16) float group_s[];
    float* q_s = group_s;
    double* ps = (double*)(group_s + GROUP * D);
    double* pt = ps + SLICES * GROUP * D;
    float* p_s = p_work != 0 ? p_work + (long long)blockIdx.x * GROUP * cap : (float*)(pt + SLICES * GROUP * D);
    __shared__ __align__(16) float k_s[D], v_s[D], tmp[D];
    __shared__ double part_s[SLICES][D], part_t[SLICES][D];
    __shared__ float top_s[SLICES][D];
    __shared__ bool bad_s[SLICES][D];
    __shared__ Scratch scratch;
    __shared__ float red[32];
    __shared__ short open[GROUP * D];
    __shared__ int opened;
    const long long lo = window > 0 && pos - window + 1 > 0 ? pos - window + 1 : 0, n = pos + 1 - lo;
    const long long cached = n - 1;             // (the keys earlier steps cached, requested into L1 before the wait)
    for (long long line = threadIdx.x; line < cached * D / 32; line += blockDim.x) {
        prefetch_l1(keys.at(lo + line / (D / 32)) + 32 * (line % (D / 32)));
        prefetch_l1(values.at(lo + line / (D / 32)) + 32 * (line % (D / 32)));
    }
    wait_for_previous_kernel();
    const float* x = qkv + (long long)b * (H + 2 * KV) * D;
    const float* cs = cos_t + pos * D;
    const float* sn = sin_t + pos * D;
    const int h0 = kv * GROUP;
    if (threadIdx.x == 0) opened = 0;
    if (norm == 0) {
        for (int i = threadIdx.x; i < (GROUP + 2) * D; i += blockDim.x) {
            const int r = i / D, d = i % D;
            if (r < GROUP) {
                q_s[i] = rope_at(x + (h0 + r) * D, d, cs, sn);
            } else if (r == GROUP) {
                const float kd = rope_at(x + (H + kv) * D, d, cs, sn);
                k_s[d] = kd;
                keys.at(pos)[d] = kd;
            } else {
                const float vd = x[(H + KV + kv) * D + d];
                v_s[d] = vd;
                values.at(pos)[d] = vd;
            }
        }
    } else {
        for (int r = 0; r < GROUP; ++r)
            head_vector(x + (h0 + r) * D, q_s + r * D, tmp, norm + (h0 + r) * D, cs, sn, eps, dbits, scratch);
        head_vector(x + (H + kv) * D, k_s, tmp, norm + (H + kv) * D, cs, sn, eps, dbits, scratch);
        for (int d = threadIdx.x; d < D; d += blockDim.x) {
            const float vd = x[(H + KV + kv) * D + d];
            v_s[d] = vd;
            keys.at(pos)[d] = k_s[d];
            values.at(pos)[d] = vd;
        }
    }
    __syncthreads();
    // scores: a thread per key, its row read once (float4s) for the GROUP heads' float64 sums side by side
    for (long long j = threadIdx.x; j < n; j += blockDim.x) {
        const float* key = lo + j < pos ? keys.at(lo + j) : k_s;
        double s[GROUP], t[GROUP];
        #pragma unroll
        for (int r = 0; r < GROUP; ++r) { s[r] = 0.0; t[r] = 0.0; }
        #pragma unroll
        for (int d4 = 0; d4 < D / 4; ++d4) {
            const float4 k4 = ((const float4*)key)[d4];
            #pragma unroll
            for (int r = 0; r < GROUP; ++r) {
                const float4 q4 = ((const float4*)(q_s + r * D))[d4];
                const float qq[4] = {q4.x, q4.y, q4.z, q4.w}, kk[4] = {k4.x, k4.y, k4.z, k4.w};
                #pragma unroll
                for (int u = 0; u < 4; ++u) {
                    const double p = __dmul_rn((double)qq[u], (double)kk[u]);
                    s[r] = __dadd_rn(s[r], p);
                    t[r] = __dadd_rn(t[r], fabs(p));
                }
            }
        }
        #pragma unroll
        for (int r = 0; r < GROUP; ++r) {
            const float* q = q_s + r * D;
            auto pair = [&](long long d, float* a, float* c) { *a = q[d]; *c = key[d]; };
            float v;
            if (!isfinite(t[r])) v = loom_special_pairs(pair, D);
            else if (!loom_finish_certified(s[r], t[r], dfactor, &v)) v = loom_settle_pairs(pair, D);
            p_s[r * cap + j] = v * scale;
        }
    }
    __syncthreads();
    // ops.softmax of each head's row, a warp a row
    const int lane = threadIdx.x & 31, warps = blockDim.x >> 5;
    const int nbits = 53 - (n > 1 ? 64 - __clzll(n - 1) : 0);
    for (int r = threadIdx.x >> 5; r < GROUP; r += warps) {
        float* p = p_s + r * cap;
        T peak = loom_neg_inf(0.0f);
        for (long long j = lane; j < n; j += 32) peak = max_nan(peak, p[j]);
        peak = warp_reduce(peak, MaxNanOp());
        for (long long j = lane; j < n; j += 32) p[j] = loom_exp(p[j] - peak);
        __syncwarp();
        const float total = exact_warp_row_sum([&](long long j) { return p[j]; }, n, nbits);
        for (long long j = lane; j < n; j += 32) p[j] = p[j] / total;
    }
    __syncthreads();
    const int d = threadIdx.x % D, slice = threadIdx.x / D;
    float* rows = out + ((long long)b * H + h0) * D;     // the group's heads' rows, one after another
    if (n > ROUNDED_KEYS) {                              // the slice scheme, head by head
        auto v_at = [&](long long j) { return lo + j < pos ? values.at(lo + j)[d] : v_s[d]; };
        for (int r = 0; r < GROUP; ++r)
            slice_weighted_values(p_s + r * cap, values, lo, v_s, v_at, n, d, slice, top_s, bad_s, part_s, part_t,
                                  red, rows + r * D + d);
        return;
    }
    // ctx = p v: SLICES threads per d, keys j = slice, slice + SLICES, ..., each value read once for every head
    double s[GROUP], t[GROUP];
    #pragma unroll
    for (int r = 0; r < GROUP; ++r) { s[r] = 0.0; t[r] = 0.0; }
    auto add = [&](long long j, float vj) {
        #pragma unroll
        for (int r = 0; r < GROUP; ++r) {
            const double p = __dmul_rn((double)p_s[r * cap + j], (double)vj);
            s[r] = __dadd_rn(s[r], p);
            t[r] = __dadd_rn(t[r], fabs(p));
        }
    };
    long long j = slice;                        // the cached keys, VALUE_LOADS loads in flight, then the new one
    for (; j + (VALUE_LOADS - 1) * SLICES < n - 1; j += VALUE_LOADS * SLICES) {
        float vv[VALUE_LOADS];
        #pragma unroll
        for (int u = 0; u < VALUE_LOADS; ++u) vv[u] = __ldg(values.at(lo + j + u * SLICES) + d);
        #pragma unroll
        for (int u = 0; u < VALUE_LOADS; ++u) add(j + u * SLICES, vv[u]);
    }
    for (; j < n - 1; j += SLICES) add(j, __ldg(values.at(lo + j) + d));
    if (slice == 0) add(n - 1, v_s[d]);
    #pragma unroll
    for (int r = 0; r < GROUP; ++r) {
        ps[(slice * GROUP + r) * D + d] = s[r];
        pt[(slice * GROUP + r) * D + d] = t[r];
    }
    __syncthreads();
    const double factor = rounded_factor(n);
    for (int e = threadIdx.x; e < GROUP * D; e += blockDim.x) {     // entry e: head e / D, column e % D
        double se = ps[e], te = pt[e];
        for (int k = 1; k < SLICES; ++k) { se = __dadd_rn(se, ps[k * GROUP * D + e]); te = __dadd_rn(te, pt[k * GROUP * D + e]); }
        certify_or_open(se, te, factor, e, rows, open, &opened);
    }
    __syncthreads();
    settle_open(open, opened, n, [&](long long j, int e, float* a, float* c) {
        const int dd = e % D;
        *a = p_s[(e / D) * cap + j];
        *c = lo + j < pos ? values.at(lo + j)[dd] : v_s[dd];
    }, rows);
}

// loom_exact_paged_decode_attention's operation (same arguments; cap: the probabilities' row stride; p_work:
// their workspace [B KV, GROUP, cap], or null to hold them in shared memory) with a block per (sequence,
// key/value head): block b KV + kv
extern "C" __global__ void __launch_bounds__(THREADS) loom_exact_paged_decode_attention_group(
        const float* qkv, float* cache_k, float* cache_v, float* out, const float* cos_t, const float* sin_t,
        const float* norm, const long long* pos, const long long* tables, long long row, long long col, int block_size,
        int H, int KV, int window, float scale, float eps, int dbits, double dfactor, long long cap, float* p_work) {
    const int b = blockIdx.x / KV, kv = blockIdx.x % KV;
    const long long* table = tables + (long long)b * row;
    exact_group_attention(qkv, Paged{cache_k, table, col, block_size, KV, kv}, Paged{cache_v, table, col, block_size, KV, kv},
                          out, cos_t, sin_t, norm, pos[b], b, kv, H, KV, window, scale, eps, dbits, dfactor, cap,
                          p_work);
}
"""


def group_shared(group: int, head_dim: int, threads: int, cap: int, held: bool) -> int:
    """Bytes of dynamic shared memory the grouped kernel takes: q, the slices' float64 sums and, where held,
    the probabilities of `group` heads over `cap` keys."""
    slices = threads // head_dim
    return 4 * group * head_dim + 16 * slices * group * head_dim + (4 * group * cap if held else 0)
