"""The CUDA source of spec 5's decode attention kernel, `loom_int_paged_decode` (int_decode.py, whose docstring
says what it computes and how; int_decode._built compiles it after decode_exact's helpers, quant_fixed_source's
SCALARS and int_attention_source's EXP_FIXED, with the defines GROUP, BITS, P_BITS, PHASE_STOP, KT and TPK).
"""

SOURCE = r"""
#define ENTRIES (GROUP * D)                            // a block's (head, d) entries
#define WV_SLICES (ENTRIES >= KT ? 1 : KT / ENTRIES)      // threads an entry (each a share of the keys)
#define OUTS ((ENTRIES + KT - 1) / KT)                 // entries a thread sums
#define VROW (D + 2)                                   // a value's int16s in shared memory (odd words: no conflicts)

// A row's scale (fixed.row_exponents' e of its largest finite magnitude, shift = 15 - e, s = 2^shift) and whether
// it holds inf or NaN; `plain`: finite with shift <= 127, its integers by one fma each (loom_fixed_bits' first form)
struct LoomRow { int e, shift, bad; float s; bool plain; };

// the exponent of a row whose largest finite magnitude has these bits: from the bits, as the CPU's _row_exponent (one
// more where 1.m 2^(BITS - 1) rounds to 2^BITS); zero and subnormal maxima the general way
__device__ __forceinline__ int loom_exponent_of_bits(unsigned top) {
    const int biased = top >> 23, mantissa = top & 0x7FFFFF;
    if (biased > 0) return biased - 126 + (mantissa >= (1 << 23) - (1 << (23 - BITS)));
    return loom_fixed_exponent(__uint_as_float(top));
}

// a row's LoomRow from its exponent and inf/NaN flag
__device__ __forceinline__ LoomRow loom_row_scale(int e, int bad) {
    LoomRow r;
    r.e = e;
    r.bad = bad;
    r.shift = 15 - e;
    r.s = loom_fixed_scale(r.shift);
    r.plain = !bad && r.shift <= 127;
    return r;
}

// a lane's part of a key's TPK lanes (consecutive lanes of one warp): float4s part, part + TPK, ... of each row
#define GPL ((D / 4 + TPK - 1) / TPK)                  // float4s a lane takes at most
#define HPL ((GROUP + TPK - 1) / TPK)                  // heads a lane takes in pass 2 (part, part + TPK, ...)

// the largest of x over a key's lanes (mask: theirs)
__device__ __forceinline__ unsigned loom_lanes_max(unsigned x, unsigned mask) {
    #pragma unroll
    for (int o = TPK / 2; o; o >>= 1) x = max(x, __shfl_xor_sync(mask, x, o));
    return x;
}

// the sum of x over a key's lanes (int32 sums: each a part of an exact dot product that fits in int32)
__device__ __forceinline__ int loom_lanes_sum(int x, unsigned mask) {
    #pragma unroll
    for (int o = TPK / 2; o; o >>= 1) x += __shfl_xor_sync(mask, x, o);
    return x;
}

// whether float4 i of a lane's part lies inside the row (always where TPK lanes divide the row's float4s evenly)
#define LOOM_IN_ROW(i) (D % (4 * TPK) == 0 || part + TPK * (i) < D / 4)

// a lane's part of a row in registers: float4s part, part + TPK, ... (zeros past the row)
struct LoomPart { float4 x[GPL]; };

// this lane's part of `row` (global or shared memory), or zeros where row is null (a key past the window's share)
__device__ __forceinline__ void loom_load_part(const float* row, int part, LoomPart& p) {
    #pragma unroll
    for (int i = 0; i < GPL; ++i)
        p.x[i] = row != nullptr && LOOM_IN_ROW(i) ? ((const float4*)row)[part + TPK * i] : make_float4(0.f, 0.f, 0.f, 0.f);
}

// a row's LoomRow from its lanes' parts, on each of its TPK lanes: the largest magnitude as an integer maximum of
// the bits, the finite one again only where inf or NaN is there (a branch the row's lanes take together)
__device__ __forceinline__ LoomRow loom_row_top(const LoomPart& p, int part, unsigned mask) {
    unsigned worst[4] = {0u, 0u, 0u, 0u};
    #pragma unroll
    for (int i = 0; i < GPL; ++i) {
        worst[0] = max(worst[0], __float_as_uint(p.x[i].x) & 0x7FFFFFFFu);
        worst[1] = max(worst[1], __float_as_uint(p.x[i].y) & 0x7FFFFFFFu);
        worst[2] = max(worst[2], __float_as_uint(p.x[i].z) & 0x7FFFFFFFu);
        worst[3] = max(worst[3], __float_as_uint(p.x[i].w) & 0x7FFFFFFFu);
    }
    // (every lane of the warp runs this together: the full mask, whose shuffles need no test of the warp's
    // convergence; the xor offsets below TPK keep each key's lanes among themselves)
    unsigned top = loom_lanes_max(max(max(worst[0], worst[1]), max(worst[2], worst[3])), LOOM_FULL);
    const int bad = top >= 0x7F800000u;
    if (bad) {                                      // (rare) the finite maximum
        top = 0u;
        #pragma unroll
        for (int i = 0; i < GPL; ++i) {
            const float xs[4] = {p.x[i].x, p.x[i].y, p.x[i].z, p.x[i].w};
            #pragma unroll
            for (int u = 0; u < 4; ++u) {
                const unsigned a = __float_as_uint(xs[u]) & 0x7FFFFFFFu;
                if (a < 0x7F800000u) top = max(top, a);
            }
        }
        top = loom_lanes_max(top, mask);
    }
    return loom_row_scale(loom_exponent_of_bits(top), bad);
}

// the integers of four values of a row that is not plain (inf or NaN in it, or a shift past 127) as two int16 pairs:
// out of line, so that the common form's code stays short and together (a launch runs it once a warp; fetching
// its instructions costs more than running them)
__device__ __noinline__ uint2 loom_rare_pairs(float4 x4, float s, int shift) {
    const float xs[4] = {x4.x, x4.y, x4.z, x4.w};
    unsigned q[4];
    #pragma unroll
    for (int u = 0; u < 4; ++u) q[u] = isfinite(xs[u]) ? loom_fixed_bits(xs[u], s, shift) : 0x4B400000u;
    return make_uint2(__byte_perm(q[0], q[1], 0x5410), __byte_perm(q[2], q[3], 0x5410));
}

// the integers of four values of a row as two int16 pairs (value 2i in the low half); PLAIN: row.plain
template <bool PLAIN>
__device__ __forceinline__ void loom_row_pairs(const float4& x4, const LoomRow& rw, unsigned* pr) {
    if (!PLAIN) {
        const uint2 p = loom_rare_pairs(x4, rw.s, rw.shift);
        pr[0] = p.x;
        pr[1] = p.y;
        return;
    }
    const float xs[4] = {x4.x, x4.y, x4.z, x4.w};
    unsigned q[4];
    #pragma unroll
    for (int u = 0; u < 4; ++u) q[u] = __float_as_uint(__fmaf_rn(xs[u], rw.s, 12582912.0f));
    pr[0] = __byte_perm(q[0], q[1], 0x5410);
    pr[1] = __byte_perm(q[2], q[3], 0x5410);
}

// this lane's part of a row's integers as int16 pairs into out [D / 2]
__device__ __forceinline__ void loom_row_integers(const LoomPart& p, const LoomRow& rw, unsigned* out, int part) {
    if (rw.plain) {
        #pragma unroll
        for (int i = 0; i < GPL; ++i)
            if (LOOM_IN_ROW(i)) loom_row_pairs<true>(p.x[i], rw, out + 2 * (part + TPK * i));
    } else {
        #pragma unroll
        for (int i = 0; i < GPL; ++i)
            if (LOOM_IN_ROW(i)) loom_row_pairs<false>(p.x[i], rw, out + 2 * (part + TPK * i));
    }
}

// this lane's part of the GROUP dot products of a key row's integers (int16 pairs kp [2 GPL], loom_row_pairs') with
// q's (byte pairs qb [GROUP][D / 2]: low bytes, then high, of a pair) by dp2a, into hi and lo (exact in int32 for
// D <= 128). (The pairs made first, by either form, so that the products' code is there once: a launch runs it
// once a warp, and fetching its instructions costs more than running them)
__device__ __forceinline__ void loom_dots(const unsigned* kp, const unsigned* qb, int* hi, int* lo, int part) {
    #pragma unroll
    for (int i = 0; i < GPL; ++i) {
        const int g = part + TPK * i;
        if (!LOOM_IN_ROW(i)) break;
        #pragma unroll
        for (int r = 0; r < GROUP; ++r) {
            #pragma unroll
            for (int c = 0; c < 2; ++c) {
                const unsigned xb = qb[r * (D / 2) + 2 * g + c];
                asm("dp2a.lo.s32.u32 %0, %1, %2, %0;" : "+r"(lo[r]) : "r"(kp[2 * i + c]), "r"(xb));
                asm("dp2a.hi.s32.s32 %0, %1, %2, %0;" : "+r"(hi[r]) : "r"(kp[2 * i + c]), "r"(xb));
            }
        }
    }
}

// the GROUP scores S 2^(ek - 30) of a key row, on each of its TPK lanes, and whether it holds inf or NaN
__device__ __forceinline__ void loom_scores(const LoomPart& key, const unsigned* qb, double* sc, int& kbad, int part,
                                            unsigned mask) {
    const LoomRow rw = loom_row_top(key, part, mask);
    kbad = rw.bad;
    int hi[GROUP], lo[GROUP];
    #pragma unroll
    for (int r = 0; r < GROUP; ++r) { hi[r] = 0; lo[r] = 0; }
    unsigned kp[2 * GPL];
    #pragma unroll
    for (int i = 0; i < GPL; ++i) {
        if (rw.plain) loom_row_pairs<true>(key.x[i], rw, kp + 2 * i);
        else loom_row_pairs<false>(key.x[i], rw, kp + 2 * i);
    }
    loom_dots(kp, qb, hi, lo, part);
    const double k2 = loom_fixed_pow2(rw.e - 2 * BITS);
    #pragma unroll
    for (int r = 0; r < GROUP; ++r)
        sc[r] = (double)(256LL * loom_lanes_sum(hi[r], LOOM_FULL) + loom_lanes_sum(lo[r], LOOM_FULL)) * k2;
}

// this lane's parts of key j's rows (j of the window's share, lo + j its cache position): the cache's, the new
// position's from shared memory (k_s, v_s), or zeros past the share
__device__ __forceinline__ void loom_load_rows(const Paged& keys, const Paged& values, const float* k_s,
                                               const float* v_s, long long lo, long long pos, long long j,
                                               long long last, int part, LoomPart& kp, LoomPart& vp) {
    const bool in = j < last, now = lo + j == pos;
    loom_load_part(!in ? nullptr : now ? k_s : keys.at(lo + j), part, kp);
    loom_load_part(!in ? nullptr : now ? v_s : values.at(lo + j), part, vp);
}

// loom_int_paged_decode: block b KV + kv; decode_exact's arguments (qkv [B, (H + 2 KV) D], the paged caches, out
// [B, H D], cos/sin tables, the qk norm or null, positions and block tables on the device), then the exp table
extern "C" __global__ void __launch_bounds__(KT) loom_int_paged_decode(
        const float* qkv, float* cache_k, float* cache_v, float* out, const float* cos_t, const float* sin_t,
        const float* norm, const long long* pos_g, const long long* tables, long long row, long long col,
        int block_size, int H, int KV, int ratio, int window, float scale, float eps, int dbits, const long long* tab_g,
        int log2e_i, int ln2_i, int mode, int splits, double* wtop, int* wflags, long long* wnum,
        unsigned long long* wden, unsigned* counters) {
    const unsigned log2e = (unsigned)log2e_i, ln2 = (unsigned)ln2_i;
    extern __shared__ __align__(16) unsigned char dyn[];
    int* w_s = (int*)dyn;                                  // [GROUP][KT]: a tile's w
    short* v_s16 = (short*)(w_s + GROUP * KT);             // [KT][VROW]: its values' integers
    double* kept_s = (double*)(v_s16 + KT * VROW + (KT * VROW) % 4);   // [GROUP][KT]: a kept tile's scores
    int* kept_e = (int*)(kept_s + GROUP * KT);             // [KT]: its values' exponents
    int* kept_bad = kept_e + KT;                           // [KT]: and inf/NaN flags
    __shared__ __align__(16) float q_s[GROUP * D];
    __shared__ __align__(16) float k_s[D], v_s[D], tmp[D];
    __shared__ Scratch scratch;
    __shared__ unsigned qb_s[GROUP * (D / 2)];
    __shared__ int eq_s[GROUP], qbad_s[GROUP];
    __shared__ unsigned tab_s[256];
    __shared__ double top_s[GROUP];                    // the block's largest score a head,
    __shared__ double top_w[KT / 32];                  // (one head: a warp's largest)
    __shared__ int etop_s, bad_s;                      // values' largest exponent and inf/NaN flag,
    __shared__ unsigned long long den_w[KT / 32][GROUP];   // and a warp's sums of p a head
    __shared__ long long acc_s[WV_SLICES > 1 ? KT : 1];

    // block (b KV + kv) splits + s; split s of `splits` takes the window's keys first .. last - 1 (mode 0: one split)
    const int blk = blockIdx.x / splits, s = blockIdx.x % splits;
    const int b = blk / (H / GROUP), h0 = blk % (H / GROUP) * GROUP, kv = h0 / ratio;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const long long* table = tables + (long long)b * row;
    const Paged keys{cache_k, table, col, block_size, KV, kv}, values{cache_v, table, col, block_size, KV, kv};
    const long long pos = pos_g[b];
    const long long lo = window > 0 && pos - window + 1 > 0 ? pos - window + 1 : 0, n = pos + 1 - lo;
    const long long share = (n + splits - 1) / splits, first = min(n, s * share), last = min(n, first + share);
    const bool writes = s == 0 && h0 % ratio == 0;    // (the block that writes k and v into the cache)
    for (int i = tid; i < 256; i += KT) tab_s[i] = (unsigned)tab_g[i];
    if (tid == 0) { etop_s = -2147483647 - 1; bad_s = 0; }
    constexpr int LINES = (D + 31) / 32;            // (128-byte lines a row, the last one partial)
    constexpr int ROUND = KT / TPK;                 // (keys a round of the passes)
    // (before the wait: this lane's part of the first round's cached rows into registers, the new position's after
    // the prologue; the later rounds' rows into L1. No kernel a step runs before this one writes the cache: the
    // layer's previous attention launch, a step earlier, finished before the products between could start)
    const int part = tid % TPK;
    const unsigned mask = TPK == 32 ? LOOM_FULL : ((1u << TPK) - 1u) << (lane & ~(TPK - 1));
    LoomPart kp, vp;
    {
        const long long j = first + tid / TPK;
        const bool cached = j < last && lo + j != pos;
        loom_load_part(cached ? keys.at(lo + j) : nullptr, part, kp);
        loom_load_part(cached ? values.at(lo + j) : nullptr, part, vp);
    }
    for (long long line = (first + ROUND) * LINES + tid; line < min(last, n - 1) * LINES; line += KT) {
        prefetch_l1(keys.at(lo + line / LINES) + 32 * (line % LINES));
        prefetch_l1(values.at(lo + line / LINES) + 32 * (line % LINES));
    }
    wait_for_previous_kernel();
    // 1: q, the new k (RoPE; qwen3's norm first) and v; k and v into the cache
    const float* x = qkv + (long long)b * (H + 2 * KV) * D;
    const float* cs = cos_t + pos * D;
    const float* sn = sin_t + pos * D;
    constexpr int ITEMS = ((GROUP + 2) * D + KT - 1) / KT;
    if (norm == 0 && ITEMS <= 4) {
        // a thread's every input first, then its arithmetic and stores: looped over, each entry had waited for its own
        // loads behind the last one's stores (a global store, which the compiler does not move a load above). Up to
        // four entries a thread (head size 64 at 128 or 256 threads): more unrolled grows the code a warp runs once
        // (head size 128 at 64 threads, up to 36 entries)
        float a[ITEMS], p[ITEMS], c[ITEMS], sv[ITEMS];
        #pragma unroll
        for (int j = 0; j < ITEMS; ++j) {
            const int i = tid + j * KT, r = i / D, d = i % D;
            if (i >= (GROUP + 2) * D) break;
            const float* v = x + (r < GROUP ? h0 + r : r == GROUP ? H + kv : H + KV + kv) * D;
            a[j] = v[d];
            if (r <= GROUP) {                           // (q's and k's rows: RoPE)
                p[j] = d < D / 2 ? -v[d + D / 2] : v[d - D / 2];
                c[j] = cs[d];
                sv[j] = sn[d];
            }
        }
        float* const kdst = writes ? keys.at(pos) : nullptr;
        float* const vdst = writes ? values.at(pos) : nullptr;
        #pragma unroll
        for (int j = 0; j < ITEMS; ++j) {
            const int i = tid + j * KT, r = i / D, d = i % D;
            if (i >= (GROUP + 2) * D) break;
            if (r < GROUP) {
                q_s[i] = rope_of(a[j], p[j], c[j], sv[j]);
            } else if (r == GROUP) {
                const float kd = rope_of(a[j], p[j], c[j], sv[j]);
                k_s[d] = kd;
                if (writes) kdst[d] = kd;
            } else {
                v_s[d] = a[j];
                if (writes) vdst[d] = a[j];
            }
        }
    } else if (norm == 0) {
        for (int i = tid; i < (GROUP + 2) * D; i += KT) {
            const int r = i / D, d = i % D;
            if (r < GROUP) {
                q_s[i] = rope_at(x + (h0 + r) * D, d, cs, sn);
            } else if (r == GROUP) {
                const float kd = rope_at(x + (H + kv) * D, d, cs, sn);
                k_s[d] = kd;
                if (writes) keys.at(pos)[d] = kd;
            } else {
                const float vd = x[(H + KV + kv) * D + d];
                v_s[d] = vd;
                if (writes) values.at(pos)[d] = vd;
            }
        }
    } else {
        for (int r = 0; r < GROUP; ++r)
            head_vector(x + (h0 + r) * D, q_s + r * D, tmp, norm + (h0 + r) * D, cs, sn, eps, dbits, scratch);
        head_vector(x + (H + kv) * D, k_s, tmp, norm + (H + kv) * D, cs, sn, eps, dbits, scratch);
        for (int d = tid; d < D; d += KT) {
            const float vd = x[(H + KV + kv) * D + d];
            v_s[d] = vd;
            if (writes) {
                keys.at(pos)[d] = k_s[d];
                values.at(pos)[d] = vd;
            }
        }
    }
    __syncthreads();
#if PHASE_STOP == 1
    if (tid == 0) out[b] = k_s[0] + kp.x[0].x + vp.x[0].x;
    return;
#endif
    // 2: q's integers, a warp a row, as byte pairs: low bytes (unsigned), then high (signed), of values 2i, 2i + 1
    for (int r = warp; r < GROUP; r += KT / 32) {
        float top = 0.0f;
        int nonfinite = 0;
        for (int d = lane; d < D; d += 32) {
            const float v = q_s[r * D + d];
            if (isfinite(v)) top = fmaxf(top, fabsf(v));
            else nonfinite = 1;
        }
        loom_warp_top(top, nonfinite);
        const int e = loom_fixed_exponent(top), shift = 15 - e;
        const float s = loom_fixed_scale(shift);
        for (int i = lane; i < D / 2; i += 32) {
            const float v0 = q_s[r * D + 2 * i], v1 = q_s[r * D + 2 * i + 1];
            const unsigned a = isfinite(v0) ? loom_fixed_bits(v0, s, shift) : 0x4B400000u;
            const unsigned c = isfinite(v1) ? loom_fixed_bits(v1, s, shift) : 0x4B400000u;
            qb_s[r * (D / 2) + i] = __byte_perm(__byte_perm(a, c, 0x5410), 0, 0x3120);
        }
        if (lane == 0) { eq_s[r] = e; qbad_s[r] = nonfinite; }
    }
    __syncthreads();
#if PHASE_STOP == 2
    if (tid == 0) out[b] = (float)qb_s[0] + kp.x[0].x + vp.x[0].x;
    return;
#endif
    // 3: pass 1, tiles of KT keys, TPK lanes a key (rounds of ROUND keys, each lane's part of the rows in registers):
    // the scores' largest a head, the values' largest exponent, inf/NaN (a share of one tile is kept for pass 2:
    // its scores, its values' integers and exponents in shared memory)
    if (first + tid / TPK == pos - lo && pos - lo < last) {     // (the new position's in the first round: made)
        loom_load_part(k_s, part, kp);
        loom_load_part(v_s, part, vp);
    }
    double top[GROUP];
    #pragma unroll
    for (int r = 0; r < GROUP; ++r) top[r] = __longlong_as_double((long long)0xfff0000000000000ull);     // (-inf)
    int etop = -2147483647 - 1, bad = 0;
    const bool keep = last - first <= KT;
    for (long long t0 = first; t0 < last; t0 += KT) {
        #pragma unroll 1
        for (int u = 0; u < TPK; ++u) {     // (not unrolled: the loop's code stays in the instruction cache)
            if (t0 + u * ROUND >= last) break;                 // (the block together)
            const int jj = u * ROUND + tid / TPK;
            if (t0 != first || u != 0)                          // (the first round's rows: loaded before the wait)
                loom_load_rows(keys, values, k_s, v_s, lo, pos, t0 + jj, last, part, kp, vp);
            double sc[GROUP];
            int kbad;
            loom_scores(kp, qb_s, sc, kbad, part, mask);
            const LoomRow vr = loom_row_top(vp, part, mask);
            if (keep) {     // (a kept tile's values' integers now: they depend on the row's own exponent only)
                loom_row_integers(vp, vr, (unsigned*)(v_s16 + jj * VROW), part);
                if (part == 0) {
                    #pragma unroll
                    for (int r = 0; r < GROUP; ++r) kept_s[r * KT + jj] = sc[r];
                    kept_e[jj] = vr.e;
                    kept_bad[jj] = vr.bad;
                }
            }
            if (t0 + jj < last) {
                if (!keep || GROUP == 1) {      // (several heads: a kept tile's largest scores from kept_s, below)
                    #pragma unroll
                    for (int r = 0; r < GROUP; ++r) top[r] = fmax(top[r], sc[r]);
                }
                etop = max(etop, vr.e);
                bad |= kbad | vr.bad;
            }
        }
    }
    // the block's maxima. A launch runs this code once a warp, and where a block takes several heads, fetching
    // its instructions, not their arithmetic, sets its time (Nsight Compute, Qwen2-0.5B's 64 rows: half the warps'
    // stalls waited for instructions, most of them in this reduction unrolled over the heads): a head's largest
    // score a warp, over the kept tile's scores or, where no tile was kept, over the threads' own largest; the
    // values' exponent and flag by warp reductions and shared atomics. One head: in registers, by shuffles (no
    // second barrier in the chain)
    etop = warp_max_redux(etop);                    // (one redux.sync each, not five dependent shuffle steps)
    bad = warp_max_redux(bad);
    if (lane == 0) {
        atomicMax(&etop_s, etop);
        atomicOr(&bad_s, bad);
    }
#if GROUP == 1
    for (int o = 16; o; o >>= 1) top[0] = fmax(top[0], __shfl_xor_sync(LOOM_FULL, top[0], o));
    if (lane == 0) top_w[warp] = top[0];
    __syncthreads();
    for (int w = 0; w < KT / 32; ++w) top[0] = fmax(top[0], top_w[w]);
#else
    if (!keep) {
        #pragma unroll
        for (int r = 0; r < GROUP; ++r) kept_s[r * KT + tid] = top[r];
    }
    __syncthreads();
    {
        const int items = keep ? (int)(last - first) : KT;
        #pragma unroll 1
        for (int r = warp; r < GROUP; r += KT / 32) {
            double m = __longlong_as_double((long long)0xfff0000000000000ull);
            #pragma unroll 1
            for (int i = lane; i < items; i += 32) m = fmax(m, kept_s[r * KT + i]);
            for (int o = 16; o; o >>= 1) m = fmax(m, __shfl_xor_sync(LOOM_FULL, m, o));
            if (lane == 0) top_s[r] = m;
        }
    }
    __syncthreads();
    #pragma unroll
    for (int r = 0; r < GROUP; ++r) top[r] = top_s[r];
#endif
    etop = etop_s;
    bad = bad_s;
    if (mode == 1) {                                // this split's largest scores, exponent and flag; then the window's
        if (tid == 0) {
            #pragma unroll
            for (int r = 0; r < GROUP; ++r) wtop[(long long)blockIdx.x * GROUP + r] = top[r];
            wflags[2 * (long long)blockIdx.x] = etop;
            wflags[2 * (long long)blockIdx.x + 1] = bad;
        }
        group_barrier(counters + blk, splits);
        for (int z = 0; z < splits; ++z) {
            const long long at = (long long)blk * splits + z;
            #pragma unroll
            for (int r = 0; r < GROUP; ++r) top[r] = fmax(top[r], __ldcg(wtop + at * GROUP + r));
            etop = max(etop, __ldcg(wflags + 2 * at));
            bad |= __ldcg(wflags + 2 * at + 1);
        }
    }
#if PHASE_STOP == 3
    if (tid == 0) out[b] = (float)top[0] + etop;
    return;
#endif
    double qscale[HPL], toph[HPL];                  // (this lane's heads' q scales and largest scores)
    unsigned long long den[HPL];
    #pragma unroll
    for (int h = 0; h < HPL; ++h) {
        const int r = part + h * TPK;
        qscale[h] = loom_fixed_pow2(r < GROUP ? eq_s[r] : 0);
        toph[h] = 0.0;
        #pragma unroll
        for (int q = h * TPK; q < min(GROUP, (h + 1) * TPK); ++q)
            if (q == r) toph[h] = top[q];
        den[h] = 0;
    }
    long long acc[OUTS];
    #pragma unroll
    for (int o = 0; o < OUTS; ++o) acc[o] = 0;
    // 4: pass 2, the tiles again (a share of one tile: its scores, values' integers and exponents kept), TPK lanes
    // a key: lane part makes the p and w of heads part, part + TPK, ...
    for (long long t0 = first; t0 < last; t0 += KT) {
        if (t0 != first) __syncthreads();       // (the last tile's w v sums read w_s and v_s16)
        #pragma unroll 1
        for (int u = 0; u < TPK; ++u) {
            if (t0 + u * ROUND >= last) break;                 // (the block together)
            const int jj = u * ROUND + tid / TPK;
            double sc[HPL];
            LoomRow vr;
            if (keep) {
                #pragma unroll
                for (int h = 0; h < HPL; ++h) sc[h] = part + h * TPK < GROUP ? kept_s[(part + h * TPK) * KT + jj] : 0.0;
                vr = loom_row_scale(kept_e[jj], kept_bad[jj]);
            } else {
                loom_load_rows(keys, values, k_s, v_s, lo, pos, t0 + jj, last, part, kp, vp);
                double all[GROUP];
                int kbad;
                loom_scores(kp, qb_s, all, kbad, part, mask);
                #pragma unroll
                for (int h = 0; h < HPL; ++h) {
                    sc[h] = 0.0;
                    #pragma unroll
                    for (int r = h * TPK; r < min(GROUP, (h + 1) * TPK); ++r)
                        if (r - h * TPK == part) sc[h] = all[r];
                }
                vr = loom_row_top(vp, part, mask);
                loom_row_integers(vp, vr, (unsigned*)(v_s16 + jj * VROW), part);
            }
            const int sh = 31 - P_BITS + etop - vr.e;
            #pragma unroll
            for (int h = 0; h < HPL; ++h) {
                const int r = part + h * TPK;
                if (r >= GROUP || t0 + jj >= last) continue;
                const double d = __dmul_rn(__dmul_rn(__dsub_rn(toph[h], sc[h]), qscale[h]), (double)scale);
                const unsigned p = loom_exp_fixed(__dmul_rn(d, 65536.0), tab_s, log2e, ln2);
                den[h] += p;
                w_s[r * KT + jj] = sh < 62 ? (int)(((unsigned long long)p + (1ull << (sh - 1))) >> sh) : 0;
            }
        }
        __syncthreads();
        const int count = (int)min((long long)KT, last - t0);
        #pragma unroll
        for (int o = 0; o < OUTS; ++o) {
            const int e = (tid + o * KT) % ENTRIES, slice = (tid + o * KT) / ENTRIES;
            if (slice < WV_SLICES) {                   // (entry e's keys slice, slice + WV_SLICES, ...)
                const int r = e / D, d = e % D;
                const int* w = w_s + r * KT;
                const short* v = v_s16 + d;
                long long a0 = 0, a1 = 0;
                int jj = slice;
                for (; jj + 3 * WV_SLICES < count; jj += 4 * WV_SLICES) {   // (two products below 2^30 each: an int32)
                    a0 += w[jj] * (int)v[jj * VROW] + w[jj + WV_SLICES] * (int)v[(jj + WV_SLICES) * VROW];
                    a1 += w[jj + 2 * WV_SLICES] * (int)v[(jj + 2 * WV_SLICES) * VROW]
                        + w[jj + 3 * WV_SLICES] * (int)v[(jj + 3 * WV_SLICES) * VROW];
                }
                #pragma unroll 1
                for (; jj < count; jj += WV_SLICES) a0 += w[jj] * (int)v[jj * VROW];
                acc[o] += a0 + a1;
            }
        }
    }
#if PHASE_STOP == 4
    if (tid < GROUP * D) out[b * H * D + tid] = (float)acc[0] + (float)den[0];
    return;
#endif
    // 5: the heads' sums of p (lane part holds heads part, part + TPK, ...: summed over the warp's keys, the
    // warps' sums added for each entry; integers, any order), then one quotient an entry
    #pragma unroll
    for (int h = 0; h < HPL; ++h) {
        unsigned long long sum = den[h];
        for (int o = TPK; o < 32; o <<= 1) sum += __shfl_xor_sync(LOOM_FULL, sum, o);
        if (lane < TPK && part + h * TPK < GROUP) den_w[warp][part + h * TPK] = sum;
    }
    if (WV_SLICES > 1) acc_s[tid] = acc[0];
    __syncthreads();
    if (WV_SLICES > 1) {                               // (the slices' exact sums added: the same bits in any order)
        for (int z = 1; z < WV_SLICES && tid < ENTRIES; ++z) acc[0] += acc_s[tid + z * ENTRIES];
    }
    #pragma unroll
    for (int o = 0; o < OUTS; ++o) {
        const int e = tid + o * KT;
        if (e >= GROUP * D) continue;
        const int r = e / D, d = e % D;
        unsigned long long total = 0;
        for (int w = 0; w < KT / 32; ++w) total += den_w[w][r];
        if (mode == 1) {                            // this split's exact sums, for the group's last block
            wnum[(long long)blockIdx.x * GROUP * D + e] = acc[o];
            if (d == 0) wden[(long long)blockIdx.x * GROUP + r] = total;
            continue;
        }
        out[((long long)b * H + h0 + r) * D + d] = bad || qbad_s[r] || total == 0 ? __int_as_float(0x7fc00000)
            : (float)__dmul_rn((double)acc[o] / (double)total, loom_fixed_pow2(etop - P_BITS - BITS + 31));
    }
    if (mode == 0) return;
    // (split form) the group's last block to arrive adds every split's exact sums (integers: any order) and
    // divides; it leaves the counter at zero for the next launch (every block of the group is past the barrier)
    __shared__ int finisher;
    __threadfence();
    __syncthreads();
    if (tid == 0) finisher = atomicAdd(counters + blk, 1u) == 2u * splits - 1u;
    __syncthreads();
    if (!finisher) return;
    __threadfence();
    for (int e = tid; e < GROUP * D; e += KT) {
        const int r = e / D, d = e % D;
        long long num = 0;
        unsigned long long total = 0;
        for (int z = 0; z < splits; ++z) {
            const long long at = (long long)blk * splits + z;
            num += __ldcg(wnum + at * GROUP * D + e);
            total += __ldcg(wden + at * GROUP + r);
        }
        out[((long long)b * H + h0 + r) * D + d] = bad || qbad_s[r] || total == 0 ? __int_as_float(0x7fc00000)
            : (float)__dmul_rn((double)num / (double)total, loom_fixed_pow2(etop - P_BITS - BITS + 31));
    }
    if (tid == 0) counters[blk] = 0u;
}
"""
