"""The CUDA source of x's integers: the x kernel (quant_fixed.x_integers and quant_fixed_planes launch it, one block a
row of x: its exponent and integers in the one-row kernels' lane order, or its int8 planes and sums of integers
for the planes' products; optionally of rms_norm(x) first), and the device functions with which the one-row
products' blocks make them in shared memory (loom_fixed_stage_held, loom_fixed_stage_warp, loom_fixed_warp_normed).
Compiled inside quant_fixed_source.SOURCE, after the shared device functions they call."""

X_SOURCE = r"""
// loom_fixed_x's planes of row m of x (`row`) of at most 4 X_HELD X_THREADS values held in registers, four consecutive
// a float4 (16-byte aligned rows, norm weights and normed rows; 4-byte aligned planes), by a block of X_THREADS
// threads (loom_fixed_x's, and quant_fixed_planes' one-row products staging x in shared memory): the row read once, the
// norm's exact sum (exact_sum_held), one barrier for the maximum (every thread combines the warps' maxima itself)
// and one for the sum of q, where the general path writes the normed row out and reads it back between
// barriers; the same values
#define X_HELD 2
#define X_ROW_HELD 32                   // values a thread of loom_fixed_x holds of a longer row (K <= 8,192)
static_assert(X_THREADS % 32 == 0, "loom_fixed_x's held rows: entry k's lane is the thread's for every k");
__device__ __forceinline__ void loom_fixed_x_held(
        const float* __restrict__ row, const float* __restrict__ norm_w, float* normed, float eps, int bits,
        int* __restrict__ ex, int* __restrict__ bad, signed char* __restrict__ planes, long long* __restrict__ sums,
        long long padded, int K, Scratch& scratch, long long m) {
    __shared__ float top_s[X_THREADS / 32];
    __shared__ int bad_s[X_THREADS / 32];
    __shared__ long long sum_s[X_THREADS / 32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    float v[4 * X_HELD];
    #pragma unroll
    for (int i = 0; i < X_HELD; ++i) {
        const int k = 4 * (threadIdx.x + i * X_THREADS);
        const float4 t = k < K ? *(const float4*)(row + k) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        v[4 * i] = t.x; v[4 * i + 1] = t.y; v[4 * i + 2] = t.z; v[4 * i + 3] = t.w;
    }
    if (norm_w != 0) {                  // (loom_rms_norm_row's operations; exact_sum_held: any order of the values)
        float sq[4 * X_HELD];
        #pragma unroll
        for (int j = 0; j < 4 * X_HELD; ++j) sq[j] = v[j] * v[j];
        const float inv = 1.0f / loom_sqrt(exact_sum_held(sq, bits, scratch) / (float)K + eps);
        #pragma unroll
        for (int i = 0; i < X_HELD; ++i) {
            const int k = 4 * (threadIdx.x + i * X_THREADS);
            if (k >= K) break;
            const float4 w4 = *(const float4*)(norm_w + k);
            const float w[4] = {w4.x, w4.y, w4.z, w4.w};
            #pragma unroll
            for (int j = 0; j < 4; ++j) v[4 * i + j] = (v[4 * i + j] * inv) * w[j];
            *(float4*)(normed + m * K + k) = make_float4(v[4 * i], v[4 * i + 1], v[4 * i + 2], v[4 * i + 3]);
        }
    }
    float top = 0.0f;
    int nonfinite = 0;
    #pragma unroll
    for (int j = 0; j < 4 * X_HELD; ++j) {
        if (isfinite(v[j])) top = fmaxf(top, fabsf(v[j]));
        else nonfinite = 1;
    }
    top = __uint_as_float(warp_max_redux(__float_as_uint(top)));      // (top >= 0: its patterns order alike)
    nonfinite = warp_max_redux(nonfinite);
    if (lane == 0) { top_s[warp] = top; bad_s[warp] = nonfinite; }
    __syncthreads();
    #pragma unroll
    for (int i = 0; i < X_THREADS / 32; ++i) { top = fmaxf(top, top_s[i]); nonfinite |= bad_s[i]; }
    const int e = loom_fixed_exponent(top), shift = 15 - e;
    if (threadIdx.x == 0) { ex[m] = e; bad[m] = nonfinite; }
    const float s = loom_fixed_scale(shift);
    long long total = 0;
    #pragma unroll
    for (int i = 0; i < X_HELD; ++i) {
        const int k = 4 * (threadIdx.x + i * X_THREADS);
        if (k >= K) break;
        const float q[4] = {v[4 * i], v[4 * i + 1], v[4 * i + 2], v[4 * i + 3]};
        unsigned hi, lo;
        total += loom_fixed_planes4(q, s, shift, &hi, &lo);
        *(unsigned*)(planes + m * K + k) = hi;
        *(unsigned*)(planes + (padded + m) * K + k) = lo;
    }
    total = warp_sum_i64(total);
    if (lane == 0) sum_s[warp] = total;
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int i = 1; i < X_THREADS / 32; ++i) total += sum_s[i];
        sums[m] = total;
    }
}

// x's exponents, flags and integers (lane order) for the M rows of x in shared memory, each thread holding
// its R values of a row (K <= R WARPS 32): one read of x and two barriers (and the norm's two) a product;
// every thread combines the warps' maxima itself. With norm_w, of rms_norm(x, norm_w) (loom_rms_norm_row's
// held arithmetic), whose values go to xf too. (Rounding x's integers inside the product instead, from the
// float values, saved the second barrier but cost more: 0.2-2.5 us a product, H200.)
template <int R> __device__ __forceinline__ void loom_fixed_stage_held(
        const float* __restrict__ x, int M, int K, int nibble, const float* __restrict__ norm_w, float eps, int bits,
        float* xf, short* xq_s, int* ex_s, int* xbad_s, float (*top_s)[MAX_ROWS], int (*bad_s)[MAX_ROWS],
        Scratch& scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    float v[MAX_ROWS][R];
    #pragma unroll
    for (int m = 0; m < MAX_ROWS; ++m) {
        if (m >= M) break;
        #pragma unroll
        for (int i = 0; i < R; ++i) {
            const int k = threadIdx.x + i * WARPS * 32;
            v[m][i] = k < K ? x[(long long)m * K + k] : 0.0f;
        }
        if (norm_w != 0) {
            float sq[R];
            #pragma unroll
            for (int i = 0; i < R; ++i) sq[i] = v[m][i] * v[m][i];
            const float inv = 1.0f / loom_sqrt(exact_sum_held(sq, bits, scratch) / (float)K + eps);
            #pragma unroll
            for (int i = 0; i < R; ++i) {
                const int k = threadIdx.x + i * WARPS * 32;
                if (k < K) { v[m][i] = (v[m][i] * inv) * norm_w[k]; xf[m * K + k] = v[m][i]; }
            }
        }
        float top = 0.0f;
        int nonfinite = 0;
        #pragma unroll
        for (int i = 0; i < R; ++i) {
            if (isfinite(v[m][i])) top = fmaxf(top, fabsf(v[m][i]));
            else nonfinite = 1;
        }
        top = warp_reduce(top, MaxOp());
        nonfinite = warp_reduce(nonfinite, MaxOp());
        if (lane == 0) { top_s[warp][m] = top; bad_s[warp][m] = nonfinite; }
    }
    __syncthreads();
    #pragma unroll
    for (int m = 0; m < MAX_ROWS; ++m) {
        if (m >= M) break;
        float top = 0.0f;
        int nonfinite = 0;
        #pragma unroll
        for (int i = 0; i < WARPS; ++i) { top = fmaxf(top, top_s[i][m]); nonfinite |= bad_s[i][m]; }
        const int e = loom_fixed_exponent(top), shift = 15 - e;
        if (threadIdx.x == 0) { ex_s[m] = e; xbad_s[m] = nonfinite; }
        const float sc = loom_fixed_scale(shift);
        #pragma unroll
        for (int i = 0; i < R; ++i) {
            const int k = threadIdx.x + i * WARPS * 32;
            if (k < K)
                xq_s[m * K + (k & ~31) + loom_fixed_slot(k & 31, nibble)] =
                    isfinite(v[m][i]) ? (short)loom_fixed_bits(v[m][i], sc, shift) : (short)0;
        }
    }
    __syncthreads();
}

// Row m of rms_norm(x, norm_w) by one warp (lane l holding entries l + 32 i, R = K / 32 of them, in v; written to xf
// too), its largest finite magnitude (top) and whether it holds inf or NaN, for every lane
template <int R> __device__ __forceinline__ void loom_fixed_warp_normed(
        const float* __restrict__ x, int m, int K, const float* __restrict__ norm_w, float eps, int bits, float* xf,
        float (&v)[R], float* top, int* nonfinite) {
    const int lane = threadIdx.x & 31;
    float sq[R];
    #pragma unroll
    for (int i = 0; i < R; ++i) {
        v[i] = x[(long long)m * K + lane + 32 * i];
        sq[i] = v[i] * v[i];
    }
    const float inv = 1.0f / loom_sqrt(exact_sum_warp(sq, bits) / (float)K + eps);
    float t[R];                         // (the finite magnitudes' maximum as a tree: any order, the same value)
    int bad = 0;
    #pragma unroll
    for (int i = 0; i < R; ++i) {
        v[i] = (v[i] * inv) * norm_w[lane + 32 * i];
        xf[m * K + lane + 32 * i] = v[i];
        t[i] = isfinite(v[i]) ? fabsf(v[i]) : 0.0f;
        bad |= !isfinite(v[i]);
    }
    *top = warp_reduce(tree_reduce(t, MaxOp()), MaxOp());
    *nonfinite = warp_reduce(bad, MaxOp());
}

// loom_fixed_stage_held's values for normed x by one warp a row of x (warp m for row m < M <= WARPS; lane l holding entries
// l + 32 i, R = K / 32 of them): no barrier but the block's one at the end, while the other warps wait. The staged
// blocks' repeated prologue is what a decode step's small products spend their issue slots on (ncu, SmolLM2's
// qkv at batch 1: 0.58 warps issued a scheduler-cycle); one warp issues about an eighth of a block's instructions.
// Where a norm comes first (SmolLM2's step at batch 1 / 2: 844 -> 803 / 1,226 -> 997 us, H200); rows without one
// were slower so (o and down: 803 -> 823 / 997 -> 1,012), their block path being two barriers.
template <int R> __device__ __forceinline__ void loom_fixed_stage_warp(
        const float* __restrict__ x, int M, int K, int nibble, const float* __restrict__ norm_w, float eps, int bits,
        float* xf, short* xq_s, int* ex_s, int* xbad_s) {
    const int lane = threadIdx.x & 31, m = threadIdx.x >> 5;
    if (m < M) {                        // (rms_norm(x, norm_w) first: norm_w is never null here)
        float v[R], top;
        int nonfinite;
        loom_fixed_warp_normed<R>(x, m, K, norm_w, eps, bits, xf, v, &top, &nonfinite);
        const int e = loom_fixed_exponent(top), shift = 15 - e;
        if (lane == 0) { ex_s[m] = e; xbad_s[m] = nonfinite; }
        const float sc = loom_fixed_scale(shift);
        const int slot = loom_fixed_slot(lane, nibble);
        #pragma unroll
        for (int i = 0; i < R; ++i)
            xq_s[m * K + 32 * i + slot] = isfinite(v[i]) ? (short)loom_fixed_bits(v[i], sc, shift) : (short)0;
    }
    __syncthreads();
}

// xq[m, :], ex[m], bad[m] for each row m of x [M, K]: a block a row. With norm_w, of rms_norm(x, norm_w)
// (quant_exact.rms_norm's bits), which it writes to normed [M, K] first.
extern "C" __global__ void __launch_bounds__(X_THREADS) loom_fixed_x(
        const float* __restrict__ x, short* __restrict__ xq, int* __restrict__ ex, int* __restrict__ bad, int K,
        int nibble, const float* __restrict__ norm_w, float* normed, float eps, int bits,
        signed char* __restrict__ planes, long long* __restrict__ sums, long long padded) {
    __shared__ float top_s[X_THREADS / 32];
    __shared__ int bad_s[X_THREADS / 32];
    __shared__ long long sum_s[X_THREADS / 32];
    __shared__ int e_s;
    __shared__ Scratch scratch;
    wait_for_previous_kernel();
    const float* row = x + (long long)blockIdx.x * K;
    if (planes != 0 && K <= 4 * X_HELD * X_THREADS && ((unsigned long long)row & 15) == 0
            && ((unsigned long long)planes & 3) == 0
            && (norm_w == 0 || (((unsigned long long)norm_w | (unsigned long long)normed) & 15) == 0)) {
        loom_fixed_x_held(row, norm_w, normed, eps, bits, ex, bad, planes, sums, padded, K, scratch, blockIdx.x);
        return;
    }
    if (norm_w != 0) {
        float* out = normed + (long long)blockIdx.x * K;
        loom_rms_norm_row([&](long long k) { return row[k]; }, norm_w, out, K, eps, bits, scratch);
        __syncthreads();                        // (the block's own writes: visible to it after the barrier)
        row = out;
    }
    float top = 0.0f;
    int nonfinite = 0;
    // a row of up to X_ROW_HELD X_THREADS values: read once, every load in flight together (looped, each round of
    // loads waited for the last: one block makes a one-row product's x over K = 4,864 or 8,192, a down product's).
    // Only where the integers are written from them (xq): the planes' path reads the row again in its own order
    const bool holds = planes == 0 && K <= X_ROW_HELD * X_THREADS;
    float held[X_ROW_HELD];
    if (holds) {
        #pragma unroll
        for (int j = 0; j < X_ROW_HELD; ++j) {
            const int k = threadIdx.x + j * X_THREADS;
            held[j] = k < K ? row[k] : 0.0f;
        }
        #pragma unroll
        for (int j = 0; j < X_ROW_HELD; ++j) {
            if (isfinite(held[j])) top = fmaxf(top, fabsf(held[j]));
            else nonfinite = 1;
        }
    } else {
        for (int k = threadIdx.x; k < K; k += X_THREADS) {
            const float v = row[k];
            if (isfinite(v)) top = fmaxf(top, fabsf(v));
            else nonfinite = 1;
        }
    }
    loom_warp_top(top, nonfinite);
    if ((threadIdx.x & 31) == 0) { top_s[threadIdx.x >> 5] = top; bad_s[threadIdx.x >> 5] = nonfinite; }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int i = 1; i < X_THREADS / 32; ++i) { top = fmaxf(top, top_s[i]); nonfinite |= bad_s[i]; }
        e_s = loom_fixed_exponent(top);
        ex[blockIdx.x] = e_s;
        bad[blockIdx.x] = nonfinite;
    }
    __syncthreads();
    const int shift = 15 - e_s;
    const float s = loom_fixed_scale(shift);
    if (planes == 0) {
        short* q = xq + (long long)blockIdx.x * K;
        if (holds) {
            // (k & 31 is the thread's lane for every j: one slot)
            short* at = q + (threadIdx.x & ~31) + loom_fixed_slot(threadIdx.x & 31, nibble);
            #pragma unroll
            for (int j = 0; j < X_ROW_HELD; ++j)
                if (threadIdx.x + j * X_THREADS < K)
                    at[j * X_THREADS] = isfinite(held[j]) ? (short)loom_fixed_bits(held[j], s, shift) : (short)0;
            return;
        }
        for (int k = threadIdx.x; k < K; k += X_THREADS) {
            const float v = row[k];
            q[(k & ~31) + loom_fixed_slot(k & 31, nibble)] = isfinite(v) ? (short)loom_fixed_bits(v, s, shift) : (short)0;
        }
        return;
    }
    // quant_fixed_planes' layout in place of xq (x's order): q = 256 h + l' + 128, h in row m of planes, l' in
    // row padded + m, and the row's sum of q (exact in int64)
    const long long m = blockIdx.x;
    long long total = 0;
    // four values a thread: a 16-byte load, two 4-byte stores (K is a multiple of 32: every row of x and of the planes
    // starts 16- and 4-byte aligned where the first does)
    const bool wide = ((unsigned long long)row & 15) == 0 && ((unsigned long long)planes & 3) == 0;
    for (int k = 4 * threadIdx.x; wide && k < K; k += 4 * X_THREADS) {
        const float4 v4 = *(const float4*)(row + k);
        const float v[4] = {v4.x, v4.y, v4.z, v4.w};
        unsigned hi, lo;
        total += loom_fixed_planes4(v, s, shift, &hi, &lo);
        *(unsigned*)(planes + m * K + k) = hi;
        *(unsigned*)(planes + (padded + m) * K + k) = lo;
    }
    for (int k = threadIdx.x; !wide && k < K; k += X_THREADS) {
        const float v = row[k];
        const int q = loom_fixed_q(v, s, shift);
        planes[m * K + k] = (signed char)(q >> 8);
        planes[(padded + m) * K + k] = (signed char)((q & 255) - 128);
        total += q;
    }
    total = warp_sum_i64(total);
    if ((threadIdx.x & 31) == 0) sum_s[threadIdx.x >> 5] = total;
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int i = 1; i < X_THREADS / 32; ++i) total += sum_s[i];
        sums[m] = total;
    }
}
"""
