"""The CUDA source of the integer scheme's int8 tensor-core kernel, loom_fixed_rows (quant_fixed.py's
rows_product launches it; its docstring says what it computes): compiled after quant_fixed_source.SOURCE,
whose device functions it calls, with MF and NF (x and W fragments) defined."""

ROWS_SOURCE = r"""
#define XROWS (16 * MF)
#define OUTS (EPI ? 4 * NF : 8 * NF)             // output rows a block takes (SwiGLU: fragment pairs)

#define LOOM_IMMA(AT, BT) asm volatile( \
    "mma.sync.aligned.m16n8k32.row.col.s32." AT "." BT ".s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};" \
    : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3]) \
    : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]))

// kind: 0 s8.s8, 1 s8.u8, 2 u8.s8, 3 u8.u8 (A's plane, B's plane)
__device__ __forceinline__ void loom_imma(int* c, const unsigned* a, const unsigned* b, int kind) {
    if (kind == 0) LOOM_IMMA("s8", "s8");
    else if (kind == 1) LOOM_IMMA("s8", "u8");
    else if (kind == 2) LOOM_IMMA("u8", "s8");
    else LOOM_IMMA("u8", "u8");
}

// the planes of four int16 integers packed two to a register (a, b): hi (q >> 8, signed bytes: each
// integer's high byte) and lo (q & 255, its low byte), four to a register
__device__ __forceinline__ void loom_planes16(unsigned a, unsigned b, unsigned* hi, unsigned* lo) {
    *hi = __byte_perm(a, b, 0x7531);
    *lo = __byte_perm(a, b, 0x6420);
}

// the same for four integers each in the low 16 bits of a word (loom_fixed_bits' values)
__device__ __forceinline__ void loom_planes(const unsigned* q, unsigned* hi, unsigned* lo) {
    loom_planes16(__byte_perm(q[0], q[1], 0x5410), __byte_perm(q[2], q[3], 0x5410), hi, lo);
}

// out[m, n] for the M (<= ROWS_MAX) rows of x and rows n of W; a block XROWS rows of x by OUTS rows of W
extern "C" __global__ void __launch_bounds__(RW * 32) loom_fixed_rows(
        const unsigned char* __restrict__ w, const int* __restrict__ ew, const int* __restrict__ wbad,
        const short* __restrict__ xq, const int* __restrict__ ex, const int* __restrict__ xbad,
        const float* __restrict__ x, float* __restrict__ out, const float* __restrict__ bias,
        const float* __restrict__ res, long long rows, int nb, int M) {
    __shared__ unsigned long long sums_s[XROWS * 8 * NF];       // a column a stored W row the block takes
    if (NB) nb = NB;                    // (compiled in: the unit loop's trip count is a constant)
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, c = lane & 3, K = 32 * nb;
    // warp w takes W fragment f = w % NF over every (RW / NF)-th unit: one fragment's decoding a warp
    const int f = warp % NF, slice = warp / NF;
    const long long out_blocks = (rows + OUTS - 1) / OUTS;
    const long long o0 = (blockIdx.x % out_blocks) * OUTS;
    const int m0 = (int)(blockIdx.x / out_blocks) * XROWS;
    for (int i = threadIdx.x; i < XROWS * 8 * NF; i += RW * 32) sums_s[i] = 0ull;
    // this lane's stored W row in the warp's fragment (SwiGLU: even fragments the gate rows, odd the up rows)
    const long long n = EPI ? o0 + 8 * (f >> 1) + g : o0 + 8 * f + g;
    const long long wr = EPI ? n + (f & 1) * rows : n;
    const bool wok = n < rows;
    const unsigned char* wrow = loom_fixed_row(w, wok ? wr : 0, nb);
    const int shift = wok ? 15 - ew[wr] : 0;
    const float sc = loom_fixed_scale(shift);
    // the planes' sums: hi.hi, hi.lo + lo.hi (one accumulator: both weigh 256), lo.lo
    int acc[MF][3][4];
    #pragma unroll
    for (int i = 0; i < MF; ++i)
        #pragma unroll
        for (int p = 0; p < 3; ++p)
            #pragma unroll
            for (int v = 0; v < 4; ++v) acc[i][p][v] = 0;
    wait_for_previous_kernel();
    #pragma unroll 4
    for (int it = 0; it < (nb + RW / NF - 1) / (RW / NF); ++it) {
        const int b = (RW / NF) * it + slice;
        if (b >= nb) break;
        int at[8];
        unsigned bh[2], bl[2];
        {
            float v[8];
            block_values(wrow, b, 2 * c, v, at);
            block_values(wrow, b, 2 * c + 1, v + 4, at + 4);
            // (a row past the output's end or holding inf or NaN: its column's sums are not used)
            unsigned q[8];
            loom_fixed_bits_n<8>(v, sc, shift, q);
            loom_planes(q, &bh[0], &bl[0]);
            loom_planes(q + 4, &bh[1], &bl[1]);
        }
        #pragma unroll
        for (int i = 0; i < MF; ++i) {
            // a0/a2: row g's values at this lane's positions 0-3 / 4-7; a1/a3: row g + 8's
            // x's integers in lane order: this lane's eight (block_values' lanes 2c, 2c + 1), one 16-byte load
            unsigned ah[4], al[4];
            #pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int m = m0 + 16 * i + 8 * h + g;
                const uint4 t = m < M ? *(const uint4*)(xq + (long long)m * K + 32 * b + 8 * c) : make_uint4(0, 0, 0, 0);
                loom_planes16(t.x, t.y, &ah[h], &al[h]);
                loom_planes16(t.z, t.w, &ah[h + 2], &al[h + 2]);
            }
            loom_imma(acc[i][0], ah, bh, 0);
            loom_imma(acc[i][1], ah, bl, 1);
            loom_imma(acc[i][1], al, bh, 2);
            loom_imma(acc[i][2], al, bl, 3);
        }
    }
    __syncthreads();                            // (sums_s zeroed)
    #pragma unroll
    for (int i = 0; i < MF; ++i)
        #pragma unroll
        for (int v = 0; v < 4; ++v) {
            const long long s = loom_planes_combine(acc[i][0][v], acc[i][1][v], acc[i][2][v]);
            const int lm = 16 * i + 8 * (v >> 1) + g, ln = 8 * f + 2 * c + (v & 1);
            atomicAdd(&sums_s[lm * 8 * NF + ln], (unsigned long long)s);   // two's complement: exact
        }
    __syncthreads();
    for (int e = threadIdx.x; e < XROWS * OUTS; e += RW * 32) {
        const int lm = e / OUTS, o = e % OUTS, m = m0 + lm;
        const long long n = o0 + o;
        if (m >= M || n >= rows) continue;
        float y[EPI + 1];
        #pragma unroll
        for (int h = 0; h <= EPI; ++h) {
            // the sums' column: SwiGLU's output o is column within its fragment pair's gate (h 0) or up (h 1)
            const int col = EPI ? 8 * (2 * (o >> 3) + h) + (o & 7) : o;
            const long long wr = n + h * rows;
            if (xbad[m] || wbad[wr]) {          // IEEE's value, by one thread (rare)
                y[h] = loom_fixed_ieee(loom_fixed_row(w, wr, nb), x + (long long)m * K, nb);
            } else {
                y[h] = __double2float_rn(__dmul_rn((double)(long long)sums_s[lm * 8 * NF + col],
                                                     loom_fixed_pow2(ex[m] + ew[wr] - 30)));
            }
        }
        loom_fixed_store(y, bias, res, out, (long long)m * rows + n, n, rows);
    }
}
"""
