"""The CUDA source of deterministic decode attention's one-block-a-head kernels (decode_exact.py, whose
docstring says what they compute and why the bits are the array code's): the device helpers (RoPE, the head
vectors, the paged cache's addresses, the slice scheme's p v in chunks) in SOURCE, the kernel bodies and entry
points in KERNELS. decode_exact.source() compiles them with its defines (D, THREADS, ROUNDED_KEYS, SPLIT_KEYS,
PHASES, VALUE_LOADS, CHUNK_KEYS) around decode_exact_split's SPLIT_SOURCE.
"""

SOURCE = r"""
#define SLICES (THREADS / D)

// Phase timestamps for benchmarks/attention_phases.py, compiled in only where it defines LOOM_PHASE_CLOCK
// (that many slots): thread 0 of block b writes the global timer into slot b PHASES + k.
#ifdef LOOM_PHASE_CLOCK
__device__ unsigned long long loom_phase_clock[LOOM_PHASE_CLOCK];
__device__ __forceinline__ void phase(int k) {
    if (threadIdx.x == 0 && blockIdx.x * PHASES + k < LOOM_PHASE_CLOCK) {
        unsigned long long t;
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
        loom_phase_clock[blockIdx.x * PHASES + k] = t;
    }
}
#else
__device__ __forceinline__ void phase(int) {}
#endif

// RoPE of entry d of a head vector from its value a, its partner p (d < D / 2: -v[d + D / 2], else v[d - D / 2]) and the
// angle's cosine c and sine s
__device__ __forceinline__ float rope_of(float a, float p, float c, float s) { return a * c + p * s; }
// Entry d of a head vector v after RoPE with the position's cos and sin rows
__device__ __forceinline__ float rope_at(const float* v, int d, const float* cs, const float* sn) {
    return rope_of(v[d], d < D / 2 ? -v[d + D / 2] : v[d - D / 2], cs[d], sn[d]);
}

// One head vector of the Q/K/V product into dst: (rms_norm with weight norm, then) RoPE; every thread calls.
__device__ void head_vector(const float* x, float* dst, float* tmp, const float* norm, const float* cs,
                            const float* sn, float eps, int dbits, Scratch& scratch) {
    float inv = 1.0f;
    if (norm != 0) {
        const float ms = exact_row_sum([&](long long d) { return x[d] * x[d]; }, D, dbits, scratch) / (float)D;
        inv = 1.0f / loom_sqrt(ms + eps);
    }
    for (int d = threadIdx.x; d < D; d += blockDim.x) tmp[d] = norm != 0 ? (x[d] * inv) * norm[d] : x[d];
    __syncthreads();
    for (int d = threadIdx.x; d < D; d += blockDim.x) dst[d] = rope_at(tmp, d, cs, sn);
    __syncthreads();
}

// Where key (or value) position t of the block's sequence and key/value head lives: a paged cache through the
// sequence's block table, as decode.py's.
struct Paged {
    float* base; const long long* table; long long col; int block_size, KV, kv;   // entry j at table[j * col]
    __device__ float* at(long long t) const {       // (positions below 2^31: 32-bit division, a fraction of 64-bit's)
        const unsigned u = (unsigned)t, bs = (unsigned)block_size;
        return base + ((table[(long long)(u / bs) * col] * block_size + u % bs) * KV + kv) * D;
    }
};

// The keys of a part where a window of n > CHUNK_KEYS keys is split over up to `splits` blocks: the least power of
// two of at least n / splits (so at most splits parts). Where it is at most CHUNK_KEYS, a power of two too, each
// part lies inside one chunk of the slice scheme (decode_exact.split_part_keys, the host's copy, says where).
__device__ __forceinline__ long long split_part_keys(long long n, int splits) {
    const long long least = (n + splits - 1) / splits;
    return least > 1 ? 1ll << (64 - __clzll(least - 1)) : 1;
}

// exact_rounded.error_factor(n), as the host computes it: (n + 2) 2^-53 (1 + 2^-20)
__device__ __forceinline__ double rounded_factor(long long n) {
    return __dmul_rn(__dmul_rn((double)(n + 2), 0x1p-53), 1.0 + 0x1p-20);
}

// The slice scheme's column maxima: this thread's largest |v| and whether one is not finite over its keys
// (each_value(f) calls f(j, v_jd) for them), left in top_s / bad_s [slice][d] for every slice to combine
template <class E>
__device__ __forceinline__ void value_column_top(E each_value, int d, int slice, float (*top_s)[D], bool (*bad_s)[D],
                                                 float& top, bool& bad) {
    top = 0.0f;
    bad = false;
    each_value([&](long long, float vj) {
        bad |= !isfinite(vj);
        top = fmaxf(top, fabsf(vj));
    });
    top_s[slice][d] = top;
    bad_s[slice][d] = bad;
    __syncthreads();
}

// The slice scheme's products: s = p 2^(bits_a - ea) (exact, or below 2^-126 where rint makes it 0 either
// way), hi = rint(s), lo = rint((s - hi) 2^bits_a) (lo_up = 2^bits_a); v as rint(v up_b); hi v and lo v added to
// g_hi and g_lo, integers whose sums stay below 2^53
__device__ __forceinline__ void slice_add(float pj, float vj, double up_a, double up_b, float lo_up, double& g_hi,
                                          double& g_lo) {
    const float s = (float)((double)pj * up_a);
    const float hi = rintf(s), lo = rintf((s - hi) * lo_up);
    const double vq = rint((double)vj * up_b);
    g_hi = __dadd_rn(g_hi, __dmul_rn((double)hi, vq));
    g_lo = __dadd_rn(g_lo, __dmul_rn((double)lo, vq));
}

// ((g_lo 2^-bits_a + g_hi) row_scale) col_scale in float64, the sum its one rounding: a chunk's value (keys past
// CHUNK_KEYS: exact._matmul_float32 adds the chunks' values in order in float64, then rounds once to float32)
__device__ __forceinline__ double slice_value(double g_hi, double g_lo, int bits_a, int ea, int bits_b, int eb) {
    return __dmul_rn(__dmul_rn(__dadd_rn(__dmul_rn(g_lo, ldexp(1.0, -bits_a)), g_hi), ldexp(1.0, ea - bits_a)),
                     ldexp(1.0, eb - bits_b));
}

// ceil(log2 k) for the slice scheme's bits (narrow_bits) over n keys: every chunk takes those of K = CHUNK_KEYS
__device__ __forceinline__ int slice_log2k(long long n) {
    return 64 - __clzll(min(n, (long long)CHUNK_KEYS) - 1);
}

// ctx_d for n > ROUNDED_KEYS keys: exact._matmul_float32's slice scheme 2x1, a = the block's row p (p_s), b =
// column d of the values (v_at: the cache's keys lo .. lo + n - 2, then v_s, the new key's): up to CHUNK_KEYS
// keys _matmul_narrow over K = n (narrow_bits(n)); past it the bits of K = CHUNK_KEYS and the row's and column's
// maxima, each chunk of CHUNK_KEYS keys' value in float64, the chunks' values added in order and rounded once.
// Every thread calls, slice 0 of each d writes.
template <class Addr, class At>
__device__ void slice_weighted_values(const float* p_s, const Addr values, long long lo, const float* v_s, At v_at,
                                      long long n, int d, int slice,
                                      float (*top_s)[D], bool (*bad_s)[D], double (*part_s)[D], double (*part_t)[D],
                                      float* red, float* out) {
    float top = 0.0f;                           // the row's largest |p| (non-finite ones flagged instead)
    bool bad = false;
    for (long long j = threadIdx.x; j < n; j += blockDim.x) {
        const float pj = p_s[j];
        bad |= !isfinite(pj);
        top = fmaxf(top, fabsf(pj));
    }
    const bool row_bad = __syncthreads_or(bad);
    const float a_top = block_max(top, red);
    // this thread's keys j = slice, slice + SLICES, ... in [c0, c1) with f(j, v_j) (the sums below are exact, or
    // maxima: any order gives their values): the cached ones FLIGHT loads at a time with no branch between them,
    // so that they are in flight together (a load behind a branch waits for the one before it), then the new one
    // (c0: 0 or a multiple of CHUNK_KEYS, which SLICES divides)
    constexpr int FLIGHT = SLICE_LOADS;
    auto each_value_in = [&](auto f, long long c0, long long c1) {
        const long long cached_end = min(c1, n - 1);
        long long j = c0 + slice;
        for (; j + (FLIGHT - 1) * SLICES < cached_end; j += FLIGHT * SLICES) {
            float vv[FLIGHT];
            #pragma unroll
            for (int u = 0; u < FLIGHT; ++u) vv[u] = __ldg(values.at(lo + j + u * SLICES) + d);
            #pragma unroll
            for (int u = 0; u < FLIGHT; ++u) f(j + u * SLICES, vv[u]);
        }
        for (; j < cached_end; j += SLICES) f(j, __ldg(values.at(lo + j) + d));
        if (j == n - 1 && c1 == n) f(j, v_s[d]);
    };
    auto each_value = [&](auto f) { each_value_in(f, 0, n); };
    value_column_top(each_value, d, slice, top_s, bad_s, top, bad);      // column d's largest |v|
    for (int k = 0; k < SLICES; ++k) { top = fmaxf(top, top_s[k][d]); bad |= bad_s[k][d]; }
    const int log2k = slice_log2k(n);
    const int bits_b = min(24, 53 - log2k - 12), bits_a = 53 - log2k - bits_b;
    int ea, eb;                                 // top < 2^e (0 for zero)
    frexpf(a_top, &ea);
    frexpf(top, &eb);
    const double up_a = ldexp(1.0, bits_a - ea), up_b = ldexp(1.0, bits_b - eb);
    const float lo_up = ldexpf(1.0f, bits_a);
    double total = 0.0;                         // (slice 0's: the chunks' values added in order)
    for (long long c0 = 0; c0 < n; c0 += CHUNK_KEYS) {
        const long long c1 = min(n, c0 + CHUNK_KEYS);
        double g_hi = 0.0, g_lo = 0.0;
        if (!row_bad && !bad)
            each_value_in([&](long long j, float vj) { slice_add(p_s[j], vj, up_a, up_b, lo_up, g_hi, g_lo); }, c0, c1);
        part_s[slice][d] = g_hi;
        part_t[slice][d] = g_lo;
        __syncthreads();
        if (slice == 0) {
            for (int k = 1; k < SLICES; ++k) { g_hi = __dadd_rn(g_hi, part_s[k][d]); g_lo = __dadd_rn(g_lo, part_t[k][d]); }
            const double v = slice_value(g_hi, g_lo, bits_a, ea, bits_b, eb);
            total = c0 == 0 ? v : __dadd_rn(total, v);
        }
        __syncthreads();                        // (part_s and part_t again for the next chunk)
    }
    if (slice != 0) return;
    if (row_bad || bad) {
        *out = loom_special_pairs([&](long long j, float* a, float* c) { *a = p_s[j]; *c = v_at(j); }, n);
        return;
    }
    *out = __double2float_rn(total);
}

"""

# the kernels, after the split form's device code (decode_exact_split.SPLIT_SOURCE)
KERNELS = r"""
// (parts: split_work's workspace at this block's group, splits its parts a window may take, index this
// block's; splits 1: one block a head)
template <class Addr>
__device__ void exact_decode_attention(const float* qkv, Addr keys, Addr values, float* out, const float* cos_t,
                                       const float* sin_t, const float* norm, long long pos, int b, int h, int H,
                                       int KV, int window, float scale, float eps, int dbits, double dfactor,
                                       Parts parts = Parts{}, int splits = 1, int index = 0, float* p_work = 0,
                                       long long cap = 0) {
    __shared__ __align__(16) float q_s[D], k_s[D], v_s[D], tmp[D];
    // the probabilities of the block's keys: in shared memory (the launch sizes it), or in p_work's row of cap
    // floats (device memory, read back through the caches; the barriers order them as they order shared memory)
    extern __shared__ float p_dyn[];
    float* p_s = p_work != 0 ? p_work + (long long)blockIdx.x * cap : p_dyn;
    __shared__ double part_s[SLICES][D], part_t[SLICES][D];
    __shared__ float top_s[SLICES][D];
    __shared__ bool bad_s[SLICES][D];
    __shared__ Scratch scratch;
    __shared__ float red[32];
    const int R = H / KV, kv = h / R;
    const long long lo = window > 0 && pos - window + 1 > 0 ? pos - window + 1 : 0, n = pos + 1 - lo;
    // a window of more than 2 SPLIT_KEYS keys, where splits allow, in parts of about SPLIT_KEYS or more; past
    // CHUNK_KEYS keys in parts of a power of two keys, each inside one chunk of the slice scheme
    // (split_part_keys; the caller keeps windows of more than splits CHUNK_KEYS keys off this form)
    long long count = 1, j0 = 0, j1 = n, chunk = n;
    if (splits > 1) {
        count = n > 2 * SPLIT_KEYS ? min((long long)splits, (n + SPLIT_KEYS - 1) / SPLIT_KEYS) : 1;
        chunk = (n + count - 1) / count;
        if (n > CHUNK_KEYS) chunk = split_part_keys(n, splits);
        if (n > CHUNK_KEYS && chunk > CHUNK_KEYS) __trap();     // (parts across chunks: never launched so)
        count = (n + chunk - 1) / chunk;        // every part non-empty
        if (index >= count) return;
        j0 = index * chunk;
        j1 = min(n, j0 + chunk);
    }
    // Before the wait (launch): the keys and values earlier steps cached are requested into L1
    // (the position is this step's input, written before the graph starts)
    const long long cached = min(j1, n - 1) - j0;
    for (long long line = threadIdx.x; line < cached * D / 32; line += blockDim.x) {
        prefetch_l1(keys.at(lo + j0 + line / (D / 32)) + 32 * (line % (D / 32)));
        prefetch_l1(values.at(lo + j0 + line / (D / 32)) + 32 * (line % (D / 32)));
    }
    phase(0);
    wait_for_previous_kernel();
    phase(1);
    const float* x = qkv + (long long)b * (H + 2 * KV) * D;
    const float* cs = cos_t + pos * D;
    const float* sn = sin_t + pos * D;
    const bool writes = h % R == 0 && index == 0;      // (one block a key/value head writes the cache)
    if (norm == 0) {
        // without head norms q and k are RoPE'd straight from qkv, in the pass that copies v: one barrier where
        // head_vector's two passes take four (the same operations on the same values)
        for (int d = threadIdx.x; d < D; d += blockDim.x) {
            const float kd = rope_at(x + (H + kv) * D, d, cs, sn), vd = x[(H + KV + kv) * D + d];
            q_s[d] = rope_at(x + h * D, d, cs, sn);
            k_s[d] = kd;
            v_s[d] = vd;
            if (writes) { keys.at(pos)[d] = kd; values.at(pos)[d] = vd; }
        }
    } else {
        head_vector(x + h * D, q_s, tmp, norm + h * D, cs, sn, eps, dbits, scratch);
        head_vector(x + (H + kv) * D, k_s, tmp, norm + (H + kv) * D, cs, sn, eps, dbits, scratch);
        for (int d = threadIdx.x; d < D; d += blockDim.x) {
            v_s[d] = x[(H + KV + kv) * D + d];
            if (writes) { keys.at(pos)[d] = k_s[d]; values.at(pos)[d] = x[(H + KV + kv) * D + d]; }
        }
    }
    __syncthreads();
    phase(2);
    // scores, a thread per key (the new key from this block's copy), its row read as float4 all at once
    for (long long j = j0 + threadIdx.x; j < j1; j += blockDim.x) {
        const float* key = lo + j < pos ? keys.at(lo + j) : k_s;
        double s = 0.0, t = 0.0;
        #pragma unroll
        for (int d4 = 0; d4 < D / 4; ++d4) {
            const float4 k4 = ((const float4*)key)[d4];
            const float kv[4] = {k4.x, k4.y, k4.z, k4.w};
            #pragma unroll
            for (int u = 0; u < 4; ++u) {
                const double p = __dmul_rn((double)q_s[4 * d4 + u], (double)kv[u]);
                s = __dadd_rn(s, p);
                t = __dadd_rn(t, fabs(p));
            }
        }
        auto pair = [&](long long d, float* a, float* c) { *a = q_s[d]; *c = key[d]; };
        float v;
        if (!isfinite(t)) v = loom_special_pairs(pair, D);
        else if (!loom_finish_certified(s, t, dfactor, &v)) v = loom_settle_pairs(pair, D);
        p_s[j - j0] = v * scale;
    }
    __syncthreads();
    const int d = threadIdx.x % D, slice = threadIdx.x / D;
    auto v_at = [&](long long j) { return lo + j < pos ? values.at(lo + j)[d] : v_s[d]; };
    phase(3);
    if (count > 1) {
        split_softmax_values(p_s, values, lo, v_s, n, j0, j1, (int)count, (int)index, chunk, parts,
                             out + ((long long)b * H + h) * D + d, top_s, bad_s, part_s, part_t, red, scratch);
        return;
    }
    // ops.softmax over the n scores: over up to 32 WARP_SOFTMAX keys by the first warp alone, each lane holding
    // its scores in registers (one barrier where the block's reductions take six), else by the block; the same
    // operations on the same values (the maximum and the exact sum take any order)
    const int nbits = 53 - (n > 1 ? 64 - __clzll(n - 1) : 0);
#if WARP_SOFTMAX > 0
    if (n <= 32 * WARP_SOFTMAX) {
        if (threadIdx.x < 32) {
            float e[WARP_SOFTMAX];
            T peak = loom_neg_inf(0.0f);
            #pragma unroll
            for (int i = 0; i < WARP_SOFTMAX; ++i) {
                const long long j = threadIdx.x + 32 * i;
                e[i] = j < n ? p_s[j] : 0.0f;
                if (j < n) peak = max_nan(peak, e[i]);
            }
            peak = warp_reduce(peak, MaxNanOp());
            phase(4);
            #pragma unroll
            for (int i = 0; i < WARP_SOFTMAX; ++i) e[i] = threadIdx.x + 32 * i < n ? loom_exp(e[i] - peak) : 0.0f;
            const float total = exact_sum_warp(e, nbits);
            #pragma unroll
            for (int i = 0; i < WARP_SOFTMAX; ++i)
                if (threadIdx.x + 32 * i < n) p_s[threadIdx.x + 32 * i] = e[i] / total;
        }
        __syncthreads();
    } else
#endif
    {
        T peak = loom_neg_inf(0.0f);
        for (long long j = threadIdx.x; j < n; j += blockDim.x) peak = max_nan(peak, p_s[j]);
        peak = block_max(peak, red);
        for (long long j = threadIdx.x; j < n; j += blockDim.x) p_s[j] = loom_exp(p_s[j] - peak);
        __syncthreads();
        phase(4);
        const float total = exact_row_sum([&](long long j) { return p_s[j]; }, n, nbits, scratch);
        __syncthreads();
        for (long long j = threadIdx.x; j < n; j += blockDim.x) p_s[j] = p_s[j] / total;
        __syncthreads();
    }
    phase(5);
    // ctx_d = sum_j p_j v_jd: SLICES threads per d, keys j = slice, slice + SLICES, ...
    if (n > ROUNDED_KEYS) {
        slice_weighted_values(p_s, values, lo, v_s, v_at, n, d, slice, top_s, bad_s, part_s, part_t, red,
                              out + ((long long)b * H + h) * D + d);
        phase(6);
        return;
    }
    double s = 0.0, t = 0.0;
    auto add = [&](float pj, float vj) {
        const double p = __dmul_rn((double)pj, (double)vj);
        s = __dadd_rn(s, p);
        t = __dadd_rn(t, fabs(p));
    };
    long long j = slice;                        // the cached keys, VALUE_LOADS loads in flight, then the new one
    for (; j + (VALUE_LOADS - 1) * SLICES < n - 1; j += VALUE_LOADS * SLICES) {
        float vv[VALUE_LOADS];
        #pragma unroll
        for (int u = 0; u < VALUE_LOADS; ++u) vv[u] = __ldg(values.at(lo + j + u * SLICES) + d);
        #pragma unroll
        for (int u = 0; u < VALUE_LOADS; ++u) add(p_s[j + u * SLICES], vv[u]);
    }
    for (; j < n - 1; j += SLICES) add(p_s[j], __ldg(values.at(lo + j) + d));
    if (slice == 0) add(p_s[n - 1], v_s[d]);
    part_s[slice][d] = s;
    part_t[slice][d] = t;
    __shared__ short open[D];
    __shared__ int opened;
    if (threadIdx.x == 0) opened = 0;
    __syncthreads();
    float* row = out + ((long long)b * H + h) * D;
    if (slice == 0) {
        for (int k = 1; k < SLICES; ++k) { s = __dadd_rn(s, part_s[k][d]); t = __dadd_rn(t, part_t[k][d]); }
        certify_or_open(s, t, rounded_factor(n), d, row, open, &opened);
    }
    __syncthreads();
    settle_open(open, opened, n, [&](long long j, int dd, float* a, float* c) {
        *a = p_s[j];
        *c = lo + j < pos ? values.at(lo + j)[dd] : v_s[dd];
    }, row);
    phase(6);
}

// qkv [B, (H + 2 KV) D]; out [B, H * D]; a paged cache [slots, KV, D]: sequence b at position pos[b], its block
// table entry j at tables[b * row + j * col]; cos, sin [positions, D]; norm [H + KV, D] or null; p_work: the
// probabilities' workspace [B H, cap] (decode_exact.probability_work), or null to hold them in shared memory
extern "C" __global__ void __launch_bounds__(THREADS) loom_exact_paged_decode_attention(
        const float* qkv, float* cache_k, float* cache_v, float* out, const float* cos_t, const float* sin_t,
        const float* norm, const long long* pos, const long long* tables, long long row, long long col, int block_size,
        int H, int KV, int window, float scale, float eps, int dbits, double dfactor, long long cap, float* p_work) {
    const int b = blockIdx.x / H, h = blockIdx.x % H, kv = h / (H / KV);
    const long long* table = tables + (long long)b * row;
    exact_decode_attention(qkv, Paged{cache_k, table, col, block_size, KV, kv},
                           Paged{cache_v, table, col, block_size, KV, kv},
                           out, cos_t, sin_t, norm, pos[b], b, h, H, KV, window, scale, eps, dbits, dfactor,
                           Parts{}, 1, 0, p_work, cap);
}

// ... with windows of more than 2 SPLIT_KEYS keys in up to `splits` parts, a block each: block
// index * B H + g is part `index` of (sequence, head) g = b H + h; split_work's workspace p [B H, cap],
// stats [B H, splits, 3], vtop [B H, splits, D], sums [B H, splits, 2, D], counters [B H]
extern "C" __global__ void __launch_bounds__(THREADS) loom_exact_paged_decode_attention_split(
        const float* qkv, float* cache_k, float* cache_v, float* out, const float* cos_t, const float* sin_t,
        const float* norm, const long long* pos, const long long* tables, long long row, long long col, int block_size,
        int H, int KV, int window, float scale, float eps, int dbits, double dfactor, float* p, double* stats,
        float* vtop, double* sums, unsigned* counters, int splits, long long cap) {
    const int groups = gridDim.x / splits, g = blockIdx.x % groups, index = blockIdx.x / groups;
    const int b = g / H, h = g % H, kv = h / (H / KV);
    const long long* table = tables + (long long)b * row;
    const Parts parts{p + g * cap, stats + (long long)g * splits * 3, vtop + (long long)g * splits * D,
                      sums + (long long)g * splits * 2 * D, counters + g};
    exact_decode_attention(qkv, Paged{cache_k, table, col, block_size, KV, kv},
                           Paged{cache_v, table, col, block_size, KV, kv},
                           out, cos_t, sin_t, norm, pos[b], b, h, H, KV, window, scale, eps, dbits, dfactor,
                           parts, splits, index);
}
"""
