"""The CUDA source of spec 5's prompt attention kernels, `loom_int_rows`, `loom_int_attend` and `loom_int_finish`
(int_attention.py, whose docstring says what they compute and how; int_attention._module compiles them after
quant_fixed_source's SCALARS, with the defines D, WARPS, SPLIT_MID, BITS, P_BITS, LOG2E_30, LN2_15, ITEMS and
TOP_ONLY), and EXP_FIXED, the exp_fixed device function int_decode.py's kernel shares.
"""

# exp_fixed in 32-bit operations, shared with int_decode.py's kernel
EXP_FIXED = r"""
// exp_fixed(d) (kernels.exact.attention: 2^-31 units, at most 2^31) of d = x 2^16 for x >= 0, in 32-bit operations:
// dq = rint(min(d, 2^22)) (the conversion saturates: the same), u = dq log2(e) 2^30 >> 30 (below 2^23), a table entry
// times the linear step >> 31 (below 2^32), shifted by u's integer part (0 past 31)
__device__ __forceinline__ unsigned loom_exp_fixed(double x, const unsigned* tab, unsigned log2e, unsigned ln2) {
    const unsigned dq = min(__double2uint_rn(x), 4194304u);
    const unsigned u = __funnelshift_r(dq * log2e, __umulhi(dq, log2e), 30);
    const unsigned step = (1u << 31) - (u & 255) * ln2, t = tab[(u >> 8) & 255];
    return __funnelshift_rc(__funnelshift_r(t * step, __umulhi(t, step), 31), 0u, u >> 16);
}
"""

SOURCE = r"""
#define BQ (16 * WARPS)
#define THREADS (32 * WARPS)
#define MIN_BLOCKS ((D <= 64 ? 12 : 8) / WARPS)   // (12 warps an SM: 168 registers; D 128's sums need 8: 255)
// TOP_ONLY: the module's loom_int_attend is the splits' first launch alone (mode 1: the rows' largest scores, no
// exp, no w v), which needs a third of the registers and half the shared memory (no v tiles): twice the warps an SM
#if TOP_ONLY
#undef MIN_BLOCKS
#define MIN_BLOCKS ((D <= 64 ? 24 : 16) / WARPS)
#endif
#define BKEYS 64
#define STRIDE (D + 8)          // a tile row's int16s in shared memory: 16 bytes of padding, ldmatrix without conflicts
#define TILE (BKEYS * STRIDE)

// a row's exponent, inf/NaN flag and int16 integers (fixed.row_exponents, to_integers): a warp a row of D values.
// Row r = (g A + a) B + b of the output reads row g sg + a sa + (idx ? idx[b] : b) sb of x (the decoder's layouts
// read in place: a layer's q [T, H, D], a paged cache's rows [slots, KV, D] at a sequence's key slots)
extern "C" __global__ void __launch_bounds__(128) loom_int_rows(const float* __restrict__ x, short* __restrict__ xi,
                                                                int* __restrict__ ex, int* __restrict__ bad, long long rows,
                                                                const long long* __restrict__ idx, long long A, long long B,
                                                                long long sg, long long sa, long long sb) {
    const long long r = (long long)blockIdx.x * 4 + (threadIdx.x >> 5);
    if (r >= rows) return;
    const int lane = threadIdx.x & 31;
    const long long b = r % B, src = r / B / A * sg + r / B % A * sa + (idx ? idx[b] : b) * sb;
    float v[D / 32];
    float top = 0.0f;
    int nonfinite = 0;
    #pragma unroll
    for (int j = 0; j < D / 32; ++j) {
        v[j] = x[src * D + lane + 32 * j];
        if (isfinite(v[j])) top = fmaxf(top, fabsf(v[j]));
        else nonfinite = 1;
    }
    loom_warp_top(top, nonfinite);
    const int e = loom_fixed_exponent(top), shift = 15 - e;
    const float s = loom_fixed_scale(shift);
    #pragma unroll
    for (int j = 0; j < D / 32; ++j)
        xi[r * D + lane + 32 * j] = isfinite(v[j]) ? (short)(loom_fixed_bits(v[j], s, shift) & 0xFFFFu) : (short)0;
    if (lane == 0) { ex[r] = e; bad[r] = nonfinite; }
}

#define LOOM_IMMA(AT, BT, C, A, B) asm( \
    "mma.sync.aligned.m16n8k32.row.col.s32." AT "." BT ".s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};" \
    : "+r"(C[0]), "+r"(C[1]), "+r"(C[2]), "+r"(C[3]) : "r"(A[0]), "r"(A[1]), "r"(A[2]), "r"(A[3]), "r"(B[0]), "r"(B[1]))
// the four plane products of a fragment: hh, hl into mid, lh into lh (SPLIT_MID: its own accumulator, so that
// the two chains run side by side) or into mid, ll; A's hi plane unsigned where UA (w's, 0 .. 64)
#if SPLIT_MID
#define LOOM_LH_DECL , lh[4] = {0, 0, 0, 0}
#define LOOM_LH lh
#define LOOM_MID(e) (mid[e] + lh[e])
#else
#define LOOM_LH_DECL
#define LOOM_LH mid
#define LOOM_MID(e) mid[e]
#endif
template <bool UA> __device__ __forceinline__ void loom_four(int* hh, int* mid, int* lh, int* ll, const unsigned* ah,
                                                             const unsigned* al, const unsigned* bh, const unsigned* bl) {
    if (UA) { LOOM_IMMA("u8", "s8", hh, ah, bh); LOOM_IMMA("u8", "u8", mid, ah, bl); }
    else { LOOM_IMMA("s8", "s8", hh, ah, bh); LOOM_IMMA("s8", "u8", mid, ah, bl); }
    LOOM_IMMA("u8", "s8", lh, al, bh);
    LOOM_IMMA("u8", "u8", ll, al, bl);
}
// int16 pairs a, b (values 0 1, 2 3) as their planes: hi bytes (signed), lo bytes (unsigned), value order 0 1 2 3
__device__ __forceinline__ void loom_split(unsigned a, unsigned b, unsigned* hi, unsigned* lo) {
    *hi = __byte_perm(a, b, 0x7531);
    *lo = __byte_perm(a, b, 0x6420);
}
__device__ __forceinline__ void loom_ldsm4(unsigned* r, const short* p) {
    const unsigned a = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
}
__device__ __forceinline__ void loom_ldsm4t(unsigned* r, const short* p) {
    const unsigned a = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
}
__device__ __forceinline__ void loom_cp16(void* dst, const void* src, bool ok) {
    const unsigned d = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" :: "r"(d), "l"(src), "r"(ok ? 16 : 0) : "memory");
}
__device__ __forceinline__ long long loom_combine(const int hh, const int mid, const int ll) {
    return 65536LL * hh + 256LL * mid + ll;
}

// out [G, rows, D] from the integers qi [G, rows, D], ki, vi [G, n, D] (int16), their exponents and bad flags;
// row r of a group at position first + r % T, key j at lo + j; window 0: none (ITEMS: those of the block's entry)
extern "C" __global__ void __launch_bounds__(THREADS, MIN_BLOCKS) loom_int_attend(
        const short* __restrict__ qi, const int* __restrict__ eq, const int* __restrict__ qbad,
        const short* __restrict__ ki, const int* __restrict__ ek, const int* __restrict__ kbad,
        const short* __restrict__ vi, const int* __restrict__ ev, const int* __restrict__ vbad,
        const long long* __restrict__ table, float* __restrict__ out, int osg, int osa, int osb,
        int rows, int n, int T, int first, int lo, int window, double scale, int mode, int splits,
        double* __restrict__ wtop, int2* __restrict__ wflags, unsigned long long* __restrict__ wden,
        long long* __restrict__ wnum
#if ITEMS
        , const int* __restrict__ items, int qn, int kn
#endif
        ) {
    extern __shared__ __align__(16) unsigned char smem[];
    // (v's tiles last: TOP_ONLY's launches leave them out)
    short* ks = (short*)smem;                           // [2][BKEYS][STRIDE]
    double* kmul = (double*)(ks + 2 * TILE);            // [2][BKEYS]: 2^(ek - 30)
    int2* kev = (int2*)(kmul + 2 * BKEYS);              // [2][BKEYS]: ev, bad (k's or v's)
    unsigned* tab = (unsigned*)(kev + 2 * BKEYS);       // [256]: the exp table (2^-31 units, <= 2^31)
    short* vs = (short*)(tab + 256);                    // [2][BKEYS][STRIDE]
#if TOP_ONLY
    mode = 1;
#endif
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, gq = lane >> 2, tq = lane & 3;
    const long long g = blockIdx.y;
#if ITEMS   // several sequences in one launch (mode 0): this block's rows, their sizes and offsets from its entry
    const int* it = items + 8 * blockIdx.x;
    const int r0 = it[0];
    rows = it[1]; n = it[2]; T = it[3]; first = it[4]; lo = it[5];
    const long long qoff = it[6], koff = it[7];         // (its first row of q and out, its first key)
    qi += qoff * D; eq += qoff; qbad += qoff; out += qoff * osb * D;
    ki += koff * D; vi += koff * D; ek += koff; ev += koff; kbad += koff; vbad += koff;
    // q's integers: row a T + t of group g at (g R + a) qn + t; the keys': key j of group g at g kn + j
    auto qrow = [&](int rr) -> long long { return (g * (rows / T) + rr / T) * qn + rr % T; };
#define LOOM_KN kn
#else
    const int r0 = (gridDim.x - 1 - blockIdx.x) * BQ;   // (the longest rows first)
    auto qrow = [&](int rr) -> long long { return g * rows + rr; };
#define LOOM_KN n
#endif
    if (mode != 1)                                      // (pass 2's)
        for (int i = tid; i < 256; i += THREADS) tab[i] = (unsigned)table[i];
    int row[2], qpos[2];
    double qscale[2];
    bool bad[2];
    for (int h = 0; h < 2; ++h) {
        row[h] = r0 + 16 * warp + gq + 8 * h;
        const int rr = min(row[h], rows - 1);
        qpos[h] = first + rr % T;
        const int e = eq[qrow(rr)];
        qscale[h] = scale * __longlong_as_double((long long)(1023 + e + 16) << 52);   // scale 2^(eq + 16), exact
        bad[h] = qbad[qrow(rr)] != 0;
    }
    // the block's keys: those any of its rows may see; tiles every row sees whole need no mask
    const int last = min(r0 + BQ, rows) - 1;
    const bool one = r0 / T == last / T;
    const int pmin = first + (one ? r0 % T : 0), pmax = first + (one ? last % T : T - 1);
    const int kfirst = window ? max(0, pmin - window + 1 - lo) : 0;
    const int kend = min(n, pmax - lo + 1);
    // mode 0: every tile, then out; with splits (blockIdx.z of them), each block takes its share of the tiles:
    // mode 1 writes its rows' pass-1 partials, mode 2 combines every split's and writes its share of the sums
    const int all = kend > kfirst ? (kend - kfirst + BKEYS - 1) / BKEYS : 0, per = (all + splits - 1) / splits;
    const int t0 = blockIdx.z * per, tiles = max(0, min(all, t0 + per) - t0);
    // q's fragments: planes of the int16 integers, d permuted as ldmatrix hands k's out (k-slot 4 tq + j of a
    // 32-step holds d = 8 (j >> 1) + 2 tq + (j & 1), slot 16 + 4 tq + j holds 16 + that)
    unsigned qh[D / 32][4], ql[D / 32][4];
    #pragma unroll
    for (int s = 0; s < D / 32; ++s)
        #pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int rr = min(r0 + 16 * warp + gq + 8 * (e & 1), rows - 1);
            const short* src = qi + qrow(rr) * D + 32 * s + 16 * (e >> 1) + 2 * tq;
            loom_split(*(const unsigned*)src, *(const unsigned*)(src + 8), &qh[s][e], &ql[s][e]);
        }
    auto allowed = [&](int h, int j) -> bool {
        const int kpos = lo + j;
        return j < n && kpos <= qpos[h] && (window == 0 || kpos > qpos[h] - window);
    };
    auto full = [&](int j0) -> bool {
        return j0 + BKEYS <= n && lo + j0 + BKEYS - 1 <= pmin && (window == 0 || lo + j0 > pmax - window);
    };
    // tile i's k (and v) into buffer i & 1, with each key's 2^(ek - 30), ev and bad
    auto load = [&](int i, bool values) {
        const int j0 = kfirst + (t0 + i) * BKEYS, b = i & 1;
        for (int c = tid; c < BKEYS * D / 8; c += THREADS) {
            const int key = c / (D / 8), col = 8 * (c % (D / 8)), j = j0 + key;
            const bool ok = j < n;
            const long long at = (g * LOOM_KN + (ok ? j : 0)) * D + col;
            loom_cp16(ks + b * TILE + key * STRIDE + col, ki + at, ok);
            if (values) loom_cp16(vs + b * TILE + key * STRIDE + col, vi + at, ok);
        }
        asm volatile("cp.async.commit_group;" ::: "memory");
        for (int key = tid; key < BKEYS; key += THREADS) {
            const int j = j0 + key;
            const bool ok = j < n;
            const long long at = g * LOOM_KN + j;
            kmul[b * BKEYS + key] = __longlong_as_double((long long)(1023 + (ok ? ek[at] : 0) - 30) << 52);
            kev[b * BKEYS + key] = make_int2(ok ? ev[at] : 0, ok ? (kbad[at] | vbad[at]) : 0);
        }
    };
    // the exact scores of n-tile t of buffer b for this thread's entries, (row gq, key 8t + 2tq), (gq, +1),
    // (gq + 8, 8t + 2tq), (gq + 8, +1), as S 2^(ek - 30) (float64, exact); kv: the two keys' ev and bad
    auto scores = [&](int b, int t, double* x, int4& kv) {
        int hh[4] = {0, 0, 0, 0}, mid[4] = {0, 0, 0, 0} LOOM_LH_DECL, ll[4] = {0, 0, 0, 0};
        #pragma unroll
        for (int s = 0; s < D / 32; ++s) {
            unsigned r[4], bh[2], bl[2];
            loom_ldsm4(r, ks + b * TILE + (8 * t + (lane & 7)) * STRIDE + 32 * s + 8 * (lane >> 3));
            loom_split(r[0], r[1], &bh[0], &bl[0]);
            loom_split(r[2], r[3], &bh[1], &bl[1]);
            loom_four<false>(hh, mid, LOOM_LH, ll, qh[s], ql[s], bh, bl);
        }
        const int key = 8 * t + 2 * tq;
        const double2 km = *(const double2*)&kmul[b * BKEYS + key];
        kv = *(const int4*)&kev[b * BKEYS + key];
        #pragma unroll
        for (int e = 0; e < 4; ++e) x[e] = (double)loom_combine(hh[e], LOOM_MID(e), ll[e]) * (e & 1 ? km.y : km.x);
    };
    // pass 1: each row's largest allowed S 2^(ek - 30), its values' largest exponent, inf or NaN seen
    double top[2] = {__longlong_as_double(0xfff0000000000000LL), __longlong_as_double(0xfff0000000000000LL)};
    int etop[2] = {-2147483647 - 1, -2147483647 - 1};
    // tile i of a walk of `count` in its buffer, visible to the block, the next one's copies issued
    auto arrive = [&](int i, int count, bool values) {
        if (i + 1 < count) { load(i + 1, values); asm volatile("cp.async.wait_group 1;" ::: "memory"); }
        else asm volatile("cp.async.wait_group 0;" ::: "memory");
        __syncthreads();
    };
    const int pass1 = mode == 2 ? 0 : tiles;
    if (pass1) load(0, false);
    for (int i = 0; i < pass1; ++i) {
        arrive(i, pass1, false);
        const int b = i & 1, j0 = kfirst + (t0 + i) * BKEYS;
        const bool masked = !full(j0);
        #pragma unroll 2
        for (int t = 0; t < BKEYS / 8; ++t) {
            double x[4];
            int4 kv;
            scores(b, t, x, kv);
            const int key = 8 * t + 2 * tq;
            #pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int h = e >> 1;
                if (masked && !allowed(h, j0 + key + (e & 1))) continue;
                top[h] = x[e] > top[h] ? x[e] : top[h];     // (no NaN, no -0: fmax's handling of those not needed)
                etop[h] = max(etop[h], e & 1 ? kv.z : kv.x);
                bad[h] = bad[h] || (e & 1 ? kv.w : kv.y);
            }
        }
        __syncthreads();
    }
    for (int h = 0; h < 2; ++h)
        for (int m = 1; m < 4; m <<= 1) {
            top[h] = fmax(top[h], __shfl_xor_sync(0xffffffff, top[h], m));
            etop[h] = max(etop[h], __shfl_xor_sync(0xffffffff, etop[h], m));
            const int other = __shfl_xor_sync(0xffffffff, (int)bad[h], m);    // (every lane: not behind ||)
            bad[h] = bad[h] || other;
        }
    if (mode == 1) {                                    // this split's partials, for mode 2's blocks
        for (int h = 0; h < 2; ++h)
            if (tq == 0 && row[h] < rows) {
                const long long at = (g * rows + row[h]) * splits + blockIdx.z;
                wtop[at] = top[h];
                wflags[at] = make_int2(etop[h], bad[h]);
            }
        return;
    }
    if (mode == 2)                                      // every split's partials: the rows' own values
        for (int h = 0; h < 2; ++h)
            for (int z = 0; z < splits; ++z) {
                const long long at = (g * rows + min(row[h], rows - 1)) * splits + z;
                top[h] = fmax(top[h], wtop[at]);
                const int2 f = wflags[at];
                etop[h] = max(etop[h], f.x);
                bad[h] = bad[h] || f.y;
            }
    // pass 2: p, its sum, w in registers, w v
    const int wshift[2] = {30 - P_BITS + etop[0], 30 - P_BITS + etop[1]};
    unsigned long long den[2] = {0, 0};
    long long num[D / 8][4];
    #pragma unroll
    for (int d = 0; d < D / 8; ++d)
        #pragma unroll
        for (int e = 0; e < 4; ++e) num[d][e] = 0;
    if (tiles) load(0, true);
    for (int i = 0; i < tiles; ++i) {
        arrive(i, tiles, true);
        const int b = i & 1, j0 = kfirst + (t0 + i) * BKEYS;
        const bool masked = !full(j0);
        unsigned pr[BKEYS / 8][2];                      // w of each n-tile: rows gq, gq + 8, as int16 pairs
        #pragma unroll
        for (int t = 0; t < BKEYS / 8; ++t) {
            double x[4];
            int4 kv;
            scores(b, t, x, kv);
            const int key = 8 * t + 2 * tq;
            // every entry's p, then a masked key's set to 0 (so its w is 0 too): one branch a tile's n-tile that only
            // the tiles with masked keys take, not one around each score (every score's operands are finite, so the
            // exp of a masked one is safe to compute and drop)
            unsigned p[4], w[4];
            #pragma unroll
            for (int e = 0; e < 4; ++e) p[e] = loom_exp_fixed((top[e >> 1] - x[e]) * qscale[e >> 1], tab, LOG2E_30, LN2_15);
            if (masked) {
                #pragma unroll
                for (int e = 0; e < 4; ++e) p[e] = allowed(e >> 1, j0 + key + (e & 1)) ? p[e] : 0u;
            }
            #pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int h = e >> 1;
                den[h] += p[e];
                // w = round(p 2^-sh), half up, sh = 31 - P_BITS + E - ev >= 17: ((p >> (sh - 1)) + 1) >> 1, 0 past 32
                w[e] = (__funnelshift_rc(p[e], 0u, wshift[h] - (e & 1 ? kv.z : kv.x)) + 1) >> 1;
            }
            pr[t][0] = w[0] | (w[1] << 16);
            pr[t][1] = w[2] | (w[3] << 16);
        }
        // A fragments of w for each 32-key step sg (k-slot 4 tq + j: key 8 (j >> 1) + 2 tq + (j & 1) of the step;
        // 16 + those for a2, a3), as the scores' accumulators hold them
        unsigned ah[BKEYS / 32][4], al[BKEYS / 32][4];
        #pragma unroll
        for (int sg = 0; sg < BKEYS / 32; ++sg) {
            loom_split(pr[4 * sg][0], pr[4 * sg + 1][0], &ah[sg][0], &al[sg][0]);
            loom_split(pr[4 * sg][1], pr[4 * sg + 1][1], &ah[sg][1], &al[sg][1]);
            loom_split(pr[4 * sg + 2][0], pr[4 * sg + 3][0], &ah[sg][2], &al[sg][2]);
            loom_split(pr[4 * sg + 2][1], pr[4 * sg + 3][1], &ah[sg][3], &al[sg][3]);
        }
        #pragma unroll
        for (int dt = 0; dt < D / 8; ++dt) {
            int hh[4] = {0, 0, 0, 0}, mid[4] = {0, 0, 0, 0} LOOM_LH_DECL, ll[4] = {0, 0, 0, 0};
            #pragma unroll
            for (int sg = 0; sg < BKEYS / 32; ++sg) {
                unsigned r[4], bh[2], bl[2];
                loom_ldsm4t(r, vs + b * TILE + (32 * sg + lane) * STRIDE + 8 * dt);
                loom_split(r[0], r[1], &bh[0], &bl[0]);
                loom_split(r[2], r[3], &bh[1], &bl[1]);
                loom_four<true>(hh, mid, LOOM_LH, ll, ah[sg], al[sg], bh, bl);
            }
            #pragma unroll
            for (int e = 0; e < 4; ++e) num[dt][e] += loom_combine(hh[e], LOOM_MID(e), ll[e]);
        }
        __syncthreads();
    }
    for (int h = 0; h < 2; ++h)
        for (int m = 1; m < 4; m <<= 1) den[h] += __shfl_xor_sync(0xffffffff, den[h], m);
    if (mode == 2) {                                    // this split's exact sums, for loom_int_finish
        #pragma unroll
        for (int dt = 0; dt < D / 8; ++dt)
            #pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int h = e >> 1;
                if (row[h] < rows)
                    wnum[((g * rows + row[h]) * splits + blockIdx.z) * D + 8 * dt + 2 * tq + (e & 1)] = num[dt][e];
            }
        for (int h = 0; h < 2; ++h)
            if (tq == 0 && row[h] < rows) wden[(g * rows + row[h]) * splits + blockIdx.z] = den[h];
        return;
    }
    float* dst[2];                                      // (the rows' places in out: out_map's)
    for (int h = 0; h < 2; ++h) dst[h] = out + (long long)((int)g * osg + row[h] / T * osa + row[h] % T * osb) * D;
    #pragma unroll
    for (int dt = 0; dt < D / 8; ++dt)
        #pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int h = e >> 1;
            if (row[h] >= rows) continue;
            const int col = 8 * dt + 2 * tq + (e & 1);
            dst[h][col] = bad[h] || den[h] == 0 ? __int_as_float(0x7fc00000)
                : (float)__dmul_rn((double)num[dt][e] / (double)den[h], loom_fixed_pow2(etop[h] - P_BITS - BITS + 31));
        }
}

// out's entries (G rows of D; row g rows + a T + t at g osg + a osa + t osb) from mode 2's partials of `splits`
// splits: the exact sums added, one quotient
extern "C" __global__ void __launch_bounds__(256) loom_int_finish(
        const int2* __restrict__ wflags, const unsigned long long* __restrict__ wden,
        const long long* __restrict__ wnum, float* __restrict__ out, long long osg, long long osa, long long osb,
        long long rows, long long T, long long entries, int splits) {
    const long long i = (long long)blockIdx.x * 256 + threadIdx.x;
    if (i >= entries) return;
    const long long r = i / D, at = (r / rows * osg + r % rows / T * osa + r % rows % T * osb) * D + i % D;
    unsigned long long den = 0;
    long long num = 0;
    int etop = -2147483647 - 1, bad = 0;
    for (int z = 0; z < splits; ++z) {
        den += wden[r * splits + z];
        num += wnum[(r * splits + z) * D + i % D];
        etop = max(etop, wflags[r * splits + z].x);
        bad |= wflags[r * splits + z].y;
    }
    out[at] = bad || den == 0 ? __int_as_float(0x7fc00000)
                              : (float)__dmul_rn((double)num / (double)den, loom_fixed_pow2(etop - P_BITS - BITS + 31));
}
"""
