"""The device code of deterministic decode attention's split form (decode_exact's
loom_exact_paged_decode_attention_split, which includes it): a long window cut over several blocks, a
part each, with the one-block kernel's bits.

Where a batch's (sequence, head) blocks are fewer than the multiprocessors, one block walking all of a
head's keys is what the step waits for. The parts of a head meet at two group barriers (a counter
per head, one thread of each block spinning on it): every part of the grid must be resident at once,
which decode_exact.split_work ensures by keeping the grid within one block a multiprocessor. Why the
bits are the one-block kernel's is split_softmax_values' comment: the maxima are maxima, the sums of
exponentials and of the slice scheme's products are exact integers, and the rounded scheme's float64
sums are certified whatever their order, the rest settled over all keys in key order.

A source fragment, compiled inside decode_exact's module (it uses that module's D, THREADS, SLICES,
ROUNDED_KEYS, CHUNK_KEYS and the exact helpers before it).
"""

SPLIT_SOURCE = r"""
// ctx's entries the certification left open, settled by a warp each (open[0 .. count - 1]: column d,
// bit 15 set where the sum is not finite): the warp's lanes walk the n keys' pairs pair(j, d, &p, &v), so
// that 32 loads are in flight where one thread would wait for each (the settled value is the exact sum's
// rounding, or IEEE's non-finite value, whatever the walk: one thread's settling gives the same bits).
// One key a lane at a time (FLIGHT 1): eight in flight made Llama-3.2-1B's batch-1 step 10 us slower on an
// H200. This form of the loop took the 128-thread kernels from 110-114 registers to 96 (ptxas, nvcc 13) and
// SmolLM2-135M's 64-row step from 1,649 to 1,553 us, where they run five blocks a multiprocessor, not four.
// Entry e's float64 sum s and sum of magnitudes t of the rounded scheme (error factor `factor`): its rounding
// written to out_row[e] where the certification holds, else e queued in open for settle_open (bit 15 set where
// the sum is not finite)
__device__ __forceinline__ void certify_or_open(double s, double t, double factor, int e, float* out_row, short* open,
                                                int* opened) {
    float v;
    if (!isfinite(t)) open[atomicAdd(opened, 1)] = (short)(e | 0x8000);
    else if (loom_finish_certified(s, t, factor, &v)) out_row[e] = v;
    else open[atomicAdd(opened, 1)] = (short)e;
}

template <class Pair>
__device__ void settle_open(const short* open, int count, long long n, Pair pair, float* out_row) {
    const int lane = threadIdx.x & 31, warps = blockDim.x >> 5;
    for (int e = threadIdx.x >> 5; e < count; e += warps) {
        const int code = open[e], d = code & 0x7fff;
        auto walk = [&](auto f) {
            loom_lanes_walk<1>(0, n, [&](long long j, float* a, float* c) { pair(j, d, a, c); }, f);
        };
        const float v = code & 0x8000 ? loom_special_walk(walk) : loom_settle_walk(walk, n);
        if (lane == 0) out_row[d] = v;
    }
}

// A split window's workspace (split_work's arrays at its (sequence, head) block g): the group's
// probabilities, each part's statistics (its largest score, its exponentials' integer sum and the sum of
// their non-finite ones), each part's largest |v_d| (-1: a non-finite one) and its sums of p_j v_jd
// (rounded: s and t; slices: g_hi and g_lo), and the counter of the group's arrivals (zero between launches).
struct Parts {
    float* p; double* stats; float* vtop; double* sums; unsigned* counter;
};

// Every part of the group (count of them, all resident: split_work keeps the grid within one block a
// multiprocessor) waits here until the group's arrivals reach `target`; what each wrote before is visible after.
__device__ void group_barrier(unsigned* counter, unsigned target) {
    __syncthreads();
    if (threadIdx.x == 0) {
        __threadfence();
        atomicAdd(counter, 1u);
        while (*(volatile unsigned*)counter < target) __nanosleep(64);
        __threadfence();
    }
    __syncthreads();
}

// The rest of a part's work where a window of n keys is split: keys j0 .. j1 - 1 (scores in p_s[j - j0]), parts of
// part_keys keys (the last one's the rest).
// The bits are the unsplit block's: the maxima are maxima; the exponentials' integers sit at the scale of
// the largest, exp(+0) (the peak's own key; every other is at most that), so each part's integer sum is
// exact and the parts add exactly; each probability's division is its own; p v's sums are either exact
// integers (slices: the largest |p| is exp(+0) / total, division being monotonic) or a float64 sum that
// the certification bounds whatever the order, the rest settled over all n pairs in key order, as the
// unsplit block settles them. The last part to arrive adds the parts' sums in part order and rounds.
// (values: the cache's values of keys lo + j before the last, v_new_s the last's)
template <class Addr>
__device__ void split_softmax_values(float* p_s, const Addr values, long long lo, const float* v_new_s, long long n,
                                     long long j0, long long j1, int count, int index, long long part_keys,
                                     const Parts& w, float* out,
                                     float (*top_s)[D], bool (*bad_s)[D], double (*part_s)[D], double (*part_t)[D],
                                     float* red, Scratch& scratch) {
    const long long m = j1 - j0;
    const int d = threadIdx.x % D, slice = threadIdx.x / D;
    // f(j - j0, v_jd) for this thread's keys j = j0 + slice, + SLICES, ...: the cached ones FLIGHT loads at a
    // time (no branch between them, so that they are in flight together), then the new one
    constexpr int FLIGHT = SLICE_LOADS;
    const long long cached_end = min(j1, n - 1);
    auto each_value = [=](auto f) {
        long long j = j0 + slice;
        for (; j + (FLIGHT - 1) * SLICES < cached_end; j += FLIGHT * SLICES) {
            float vv[FLIGHT];
            #pragma unroll
            for (int u = 0; u < FLIGHT; ++u) vv[u] = __ldg(values.at(lo + j + u * SLICES) + d);
            #pragma unroll
            for (int u = 0; u < FLIGHT; ++u) f(j - j0 + u * SLICES, vv[u]);
        }
        for (; j < cached_end; j += SLICES) f(j - j0, __ldg(values.at(lo + j) + d));
        if (j == n - 1 && j1 == n) f(j - j0, v_new_s[d]);
    };
    // 1. the part's largest score (and, for the slice scheme, its keys' largest |v_d|)
    float peak = loom_neg_inf(0.0f);
    for (long long j = threadIdx.x; j < m; j += blockDim.x) peak = max_nan(peak, p_s[j]);
    peak = block_max(peak, red);
    if (n > ROUNDED_KEYS) {
        float top;
        bool bad;
        value_column_top(each_value, d, slice, top_s, bad_s, top, bad);
        if (slice == 0) {
            for (int k = 1; k < SLICES; ++k) { top = fmaxf(top, top_s[k][d]); bad |= bad_s[k][d]; }
            w.vtop[index * D + d] = bad ? -1.0f : top;
        }
    }
    if (threadIdx.x == 0) w.stats[index * 3] = (double)peak;
    phase(7);
    group_barrier(w.counter, count);
    phase(8);
    // 2. the window's peak; the part's exponentials and their integer sum
    peak = loom_neg_inf(0.0f);
    for (int k = 0; k < count; ++k) peak = max_nan(peak, (float)__ldcg(w.stats + k * 3));
    const float e_top = loom_exp(0.0f);
    const int nbits = 53 - (n > 1 ? 64 - __clzll(n - 1) : 0), shift = nbits - loom_top_exponent(e_top);
    double sum = 0.0, specials = 0.0;
    for (long long j = threadIdx.x; j < m; j += blockDim.x) {
        const float e = loom_exp(p_s[j] - peak);
        p_s[j] = e;
        if (isfinite(e)) sum += rint(ldexp((double)e, shift));
        else specials += (double)e;
    }
    sum = block_reduce(sum, scratch.sums, 0.0, AddOp());
    specials = block_reduce(specials, scratch.sums, 0.0, AddOp());
    if (threadIdx.x == 0) { w.stats[index * 3 + 1] = sum; w.stats[index * 3 + 2] = specials; }
    group_barrier(w.counter, 2 * count);
    phase(9);
    // 3. the total (exact.sum's rounding), the part's probabilities, its sums of p_j v_jd
    sum = specials = 0.0;
    for (int k = 0; k < count; ++k) { sum += __ldcg(w.stats + k * 3 + 1); specials += __ldcg(w.stats + k * 3 + 2); }
    const float total = specials == 0.0 ? __double2float_rn(ldexp(sum, -shift)) : (float)specials;
    for (long long j = threadIdx.x; j < m; j += blockDim.x) {
        const float pj = p_s[j] / total;
        p_s[j] = pj;
        w.p[j0 + j] = pj;
    }
    __syncthreads();
    // (slices) the row's largest |p| and whether one is non-finite; column d's largest |v| over the window
    const bool row_bad = !isfinite(total);
    const float a_top = e_top / total;
    float top = 0.0f;
    bool bad = false;
    int ea = 0, eb = 0, bits_a = 0, bits_b = 0;
    double s = 0.0, t = 0.0;
    if (n <= ROUNDED_KEYS) {
        each_value([&](long long j, float vj) {
            const double q = __dmul_rn((double)p_s[j], (double)vj);
            s = __dadd_rn(s, q);
            t = __dadd_rn(t, fabs(q));
        });
    } else {
        for (int k = 0; k < count; ++k) {
            const float x = __ldcg(w.vtop + k * D + d);
            bad |= x < 0.0f;
            top = fmaxf(top, x);
        }
        const int log2k = slice_log2k(n);
        bits_b = min(24, 53 - log2k - 12);
        bits_a = 53 - log2k - bits_b;
        frexpf(a_top, &ea);
        frexpf(top, &eb);
        const double up_a = ldexp(1.0, bits_a - ea), up_b = ldexp(1.0, bits_b - eb);
        const float lo_up = ldexpf(1.0f, bits_a);
        if (!row_bad && !bad)
            each_value([&](long long j, float vj) { slice_add(p_s[j], vj, up_a, up_b, lo_up, s, t); });
    }
    part_s[slice][d] = s;
    part_t[slice][d] = t;
    __syncthreads();
    if (slice == 0) {
        for (int k = 1; k < SLICES; ++k) { s = __dadd_rn(s, part_s[k][d]); t = __dadd_rn(t, part_t[k][d]); }
        w.sums[(index * 2) * D + d] = s;
        w.sums[(index * 2 + 1) * D + d] = t;
    }
    phase(10);
    // 4. the last part to arrive: the parts' sums, then the rounding (or settling) of each ctx_d
    __shared__ bool last;
    __syncthreads();
    if (threadIdx.x == 0) {
        __threadfence();
        last = atomicAdd(w.counter, 1u) == 3u * count - 1u;
        if (last) *w.counter = 0u;                  // every part has passed both barriers: none reads it again
        __threadfence();
    }
    __syncthreads();
    if (!last) return;
    __shared__ short open[D];
    __shared__ int opened;
    if (threadIdx.x == 0) opened = 0;
    __syncthreads();
    if (slice == 0) {
        // (slices past CHUNK_KEYS keys: each part inside one chunk, whose parts' integer sums add exactly; the
        // chunks' values added in order in float64, then rounded once, as exact._matmul_float32 adds them)
        double total = 0.0;
        s = t = 0.0;
        for (int k = 0; k < count; ++k) {
            s = __dadd_rn(s, __ldcg(w.sums + (k * 2) * D + d));
            t = __dadd_rn(t, __ldcg(w.sums + (k * 2 + 1) * D + d));
            const long long c = (k * part_keys) / CHUNK_KEYS;
            if (n > ROUNDED_KEYS && (k == count - 1 || ((k + 1) * part_keys) / CHUNK_KEYS != c)) {
                const double v = slice_value(s, t, bits_a, ea, bits_b, eb);
                total = c == 0 ? v : __dadd_rn(total, v);
                s = t = 0.0;
            }
        }
        if (n > ROUNDED_KEYS) {
            if (row_bad || bad) open[atomicAdd(&opened, 1)] = (short)(d | 0x8000);
            else *out = __double2float_rn(total);
        } else {
            certify_or_open(s, t, rounded_factor(n), d, out - d, open, &opened);
        }
    }
    __syncthreads();
    settle_open(open, opened, n, [&](long long j, int dd, float* a, float* c) {
        *a = __ldcg(w.p + j);
        *c = j < n - 1 ? __ldg(values.at(lo + j) + dd) : v_new_s[dd];
    }, out - d);
    phase(11);
}

"""
