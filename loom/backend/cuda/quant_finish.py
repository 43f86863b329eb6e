"""The float64 tensor-core products' shared device code (quant_tiles, quant_rows): the DMMA step and the
finishing of an entry of out from its float64 sums, with the rounded scheme's certification or the slice
scheme's recombination, the warp settling what is left doubtful. Compiled after quant_exact.prelude, with
SLICED and EPI defined."""
from __future__ import annotations

DMMA2 = r"""
// d0 (rows g) += a0 b and d1 (rows g + 8) += a1 b, two 8 x 8 fragments over k 4 sharing b: Hopper's
// m16n8k4 in one instruction (twice m8n8k4's rate there: 65 against 32 TFLOP/s on an H100), else two
// m8n8k4. The fragments' layouts agree (a: row g, column c; b: row c, column g; d: row g, columns 2c,
// 2c + 1), so the tiles below hold the same entries either way.
__device__ __forceinline__ void loom_dmma2(double* d0, double* d1, double a0, double a1, double b) {
#if __CUDA_ARCH__ >= 900
    asm volatile("mma.sync.aligned.m16n8k4.row.col.f64.f64.f64.f64 {%0,%1,%2,%3}, {%4,%5}, {%6}, {%0,%1,%2,%3};"
                 : "+d"(d0[0]), "+d"(d0[1]), "+d"(d1[0]), "+d"(d1[1]) : "d"(a0), "d"(a1), "d"(b));
#else
    asm volatile("mma.sync.aligned.m8n8k4.row.col.f64.f64.f64.f64 {%0,%1}, {%2}, {%3}, {%0,%1};"
                 : "+d"(d0[0]), "+d"(d0[1]) : "d"(a0), "d"(b));
    asm volatile("mma.sync.aligned.m8n8k4.row.col.f64.f64.f64.f64 {%0,%1}, {%2}, {%3}, {%0,%1};"
                 : "+d"(d1[0]), "+d"(d1[1]) : "d"(a1), "d"(b));
#endif
}
"""

FINISH = r"""
#define COLS (NB * 32)
#define ROW_BYTES ((long long)(NB / SUBS) * BLOCK)

// A product's operands. Rounded (SLICED 0): x the float32 rows [m_rows, COLS], wnorm ||W[r]||, factor
// exact_rounded.error_factor(COLS). Sliced: x slice_rows' (hi, lo) pairs, xmax their rows' maxima, xf the
// float rows (for special values), wmax row_maxima of W, abits / bbits the scheme's bits.
struct LoomTiles {
    const unsigned char* w; const float* x; const float* xf; const float* xmax; const double* wnorm;
    const float* wmax; float* out; int m_rows, rows; const float* bias; const float* res; double factor;
    int abits, bbits;
};
#define LOOM_TILES_ARGS const unsigned char* w, const float* x, const float* xf, const float* xmax, \
        const double* wnorm, const float* wmax, float* out, int m_rows, int rows, const float* bias, \
        const float* res, double factor, int abits, int bbits
#define LOOM_TILES {w, x, xf, xmax, wnorm, wmax, out, m_rows, rows, bias, res, factor, abits, bbits}

// Entry (m, n) of out from its sums hi[e] (sliced: and lo[e]) over all of K, e = 0 and SwiGLU's up half,
// and ||x[m]|| (rounded); every lane of the warp calls, each with its own entry (valid false: none), and
// the warp settles its doubtful entries together, one at a time.
__device__ __forceinline__ void loom_tile_finish(const LoomTiles& p, bool valid, int m, int n, const double* hi,
                                                 const double* lo, double xnorm, int lane) {
    float y[EPI + 1];
    #pragma unroll
    for (int e = 0; e <= EPI; ++e) {
        const int wr = valid ? n + e * p.rows : 0;
        float v = 0.0f;
        bool doubt = false, special = false;
        if (valid && SLICED) {
            const float am = p.xmax[m], bm = p.wmax[wr];
            double r = __dadd_rn(__dmul_rn(lo[e], ldexp(1.0, -p.abits)), hi[e]);      // the one rounding
            r = __dmul_rn(r, ldexp(1.0, loom_top_exponent(am) - p.abits));
            v = (float)__dmul_rn(r, ldexp(1.0, loom_top_exponent(bm) - p.bbits));
            special = doubt = !isfinite(am) || !isfinite(bm);
        } else if (valid) {
            const double s = hi[e], norms = __dmul_rn(xnorm, p.wnorm[wr]);
            special = !isfinite(norms);
            doubt = !loom_certified(s, __dadd_rn(__dmul_rn(norms, p.factor), __dmul_rn(fabs(s), 0x1p-52)), &v)
                    || special;
        }
        for (unsigned left = __ballot_sync(LOOM_FULL, doubt); left; left &= left - 1) {
            const int src = __ffs(left) - 1;
            const int sm = __shfl_sync(LOOM_FULL, m, src), sw = __shfl_sync(LOOM_FULL, wr, src);
            const bool sp = __shfl_sync(LOOM_FULL, special, src);
            const float* xr = (SLICED ? p.xf : p.x) + (long long)sm * COLS;
            const unsigned char* row = p.w + (long long)sw * ROW_BYTES;
            auto walk = [=](auto f) {
                for (int b = lane >> 3; b < NB; b += 4) {
                    float wv[4]; int at[4];
                    block_values(row, b, lane & 7, wv, at);
                    #pragma unroll
                    for (int j = 0; j < 4; ++j) f(xr[b * 32 + at[j]], wv[j]);
                }
            };
            // (the slice scheme keeps its value where IEEE's is finite: quant_slices' rule)
            const float settled = sp ? loom_special_walk(walk) : loom_settle_walk(walk, COLS);
            if (lane == src && (!SLICED || !isfinite(settled))) v = settled;
        }
        y[e] = valid && p.bias != 0 ? v + p.bias[wr] : v;
    }
    if (valid) {
        const float r = EPI == 1 ? (y[0] * loom_sigmoid(y[0])) * y[EPI] : y[0];
        const long long at = (long long)m * p.rows + n;
        p.out[at] = p.res != 0 ? p.res[at] + r : r;
    }
}
"""
