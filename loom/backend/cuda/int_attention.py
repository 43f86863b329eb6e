"""Spec 5's integer attention on the GPU (branch wip/spec5-attention; UNTESTED ON A GPU): the scheme of
loom/kernels/exact/attention.py, its bits, on the int8 tensor cores, for a decoder's causal rows (a prompt's
chunk or decode steps), as kernels.exact.attention.causal takes them.

A block is 4 warps over 64 query rows of one (sequence, key/value head) group, each warp 16 rows, walking the
rows' keys twice in tiles of 64:
1. the scores, exact: each row's and key's integers split into planes (hi = q >> 8 signed, lo = q & 255), four
   m16n8k32 int8 products, 65536 HH + 256 (HL + LH) + LL in int64, times 2^(eq + ek - 30) as a double (exact);
   each row's largest allowed score, its values' largest exponent E, and whether it sees inf or NaN;
2. the scores again; p = exp_fixed((max - s) scale) by integer operations, its row sum in int64, w (v's scale
   folded in, 14 bits) through shared memory as planes into four m16n8k32 products with v's planes (keys
   along k), summed exactly in int64 a tile;
then each entry's float64 quotient num / den scaled by 2^(E - 14 - 15 + 31), rounded to float32.

The rows' integers and exponents are made by the array code (kernels.exact.fixed with CuPy), int16.
"""
from __future__ import annotations

from functools import cache

import cupy
import numpy as np

from ...errors import ShapeError
from ...kernels.exact import attention as scheme
from ...kernels.exact.fixed import BITS, row_exponents, to_integers
from .compile import OPTIONS

BQ = 64                         # query rows a block (4 warps of 16)
BKEYS = 64                      # keys a tile

_SOURCE = r"""
#define BQ 64
#define BKEYS 64

#define LOOM_IMMA(AT, BT) asm volatile( \
    "mma.sync.aligned.m16n8k32.row.col.s32." AT "." BT ".s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};" \
    : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3]) \
    : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]))
// the products of A's and B's planes for a fragment: hh (s8 s8), mid (s8 u8 + u8 s8), ll (u8 u8); A's hi plane
// unsigned where UA (w's, 0 .. 64)
template <bool UA> __device__ __forceinline__ void loom_four(int* hh, int* mid, int* ll, const unsigned* ah,
                                                             const unsigned* al, const unsigned* bh, const unsigned* bl) {
    { int* c = hh; const unsigned* a = ah; const unsigned* b = bh; if (UA) LOOM_IMMA("u8", "s8"); else LOOM_IMMA("s8", "s8"); }
    { int* c = mid; const unsigned* a = ah; const unsigned* b = bl; if (UA) LOOM_IMMA("u8", "u8"); else LOOM_IMMA("s8", "u8"); }
    { int* c = mid; const unsigned* a = al; const unsigned* b = bh; LOOM_IMMA("u8", "s8"); }
    { int* c = ll; const unsigned* a = al; const unsigned* b = bl; LOOM_IMMA("u8", "u8"); }
}

__device__ __forceinline__ long long loom_exp_fixed(double d, const long long* table, long long log2e, long long ln2) {
    const long long dq = __double2ll_rn(fmin(d, 64.0) * 65536.0);
    const long long u = (dq * log2e) >> 30;
    const long long i = u >> 16;
    if (i >= 62) return 0;
    const long long p = (table[(u >> 8) & 255] * ((1LL << 31) - (u & 255) * ln2)) >> 31;
    return p >> i;
}

// out [G, rows, D] from the integers qi [G, rows, D], ki, vi [G, n, D] (int16), their exponents and bad flags;
// row r of a group at position first + r % T, key j at lo + j; window 0: none
extern "C" __global__ void __launch_bounds__(128) loom_int_attend(
        const short* __restrict__ qi, const int* __restrict__ eq, const unsigned char* __restrict__ qbad,
        const short* __restrict__ ki, const int* __restrict__ ek, const unsigned char* __restrict__ kbad,
        const short* __restrict__ vi, const int* __restrict__ ev, const unsigned char* __restrict__ vbad,
        const long long* __restrict__ table, float* __restrict__ out, int rows, int n, int T, long long first,
        long long lo, int window, double scale, long long log2e, long long ln2) {
    __shared__ __align__(16) signed char kh[BKEYS][D];
    __shared__ __align__(16) unsigned char kl[BKEYS][D];
    __shared__ __align__(16) signed char vht[D][BKEYS];
    __shared__ __align__(16) unsigned char vlt[D][BKEYS];
    __shared__ __align__(16) unsigned char wh[BQ][BKEYS];
    __shared__ __align__(16) unsigned char wl[BQ][BKEYS];
    __shared__ int tek[BKEYS], tev[BKEYS], tbad[BKEYS];
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, gq = lane >> 2, tq = lane & 3;
    const long long g = blockIdx.y;
    const int r0 = blockIdx.x * BQ;
    // this thread's two rows (fragment rows gq and gq + 8 of its warp's 16), their positions and exponents
    int row[2];
    long long qpos[2];
    int erow[2];
    bool badrow[2];
    for (int h = 0; h < 2; ++h) {
        row[h] = r0 + 16 * warp + gq + 8 * h;
        const int rr = min(row[h], rows - 1);
        qpos[h] = first + rr % T;
        erow[h] = eq[g * rows + rr];
        badrow[h] = qbad[g * rows + rr] != 0;
    }
    // the block's keys: those any of its rows may see
    const int last = min(r0 + BQ, rows) - 1;
    const int tmin = (r0 / T == last / T) ? r0 % T : 0, tmax = (r0 / T == last / T) ? last % T : T - 1;
    const long long kfirst = window ? max(0LL, first + tmin - window + 1 - lo) : 0;
    const long long kend = min((long long)n, first + tmax - lo + 1);
    // q's fragments (A, row-major 16 x 32 a k-step): planes of the int16 integers, loaded once
    unsigned qh[D / 32][4], ql[D / 32][4];
    for (int s = 0; s < D / 32; ++s)
        for (int e = 0; e < 4; ++e) {
            const int rr = min(r0 + 16 * warp + gq + 8 * (e & 1), rows - 1);
            const int col = 32 * s + 4 * tq + 16 * (e >> 1);
            const unsigned* src = (const unsigned*)(qi + (g * rows + rr) * D + col);
            unsigned h4, l4;
            h4 = __byte_perm(src[0], src[1], 0x7531);
            l4 = __byte_perm(src[0], src[1], 0x6420);
            qh[s][e] = h4;
            ql[s][e] = l4;
        }
    auto allowed = [&](int h, long long j) -> bool {
        const long long kpos = lo + j;
        return j < n && kpos <= qpos[h] && (window == 0 || kpos > qpos[h] - window);
    };
    // a tile's keys into shared memory (planes), with their exponents and flags; with v (transposed) on pass 2
    auto load = [&](long long j0, bool values) {
        for (int e = tid; e < BKEYS * D / 2; e += 128) {
            const int key = e / (D / 2), c2 = 2 * (e % (D / 2));
            const long long j = j0 + key;
            const unsigned pair = j < n ? *(const unsigned*)(ki + (g * n + j) * D + c2) : 0u;
            kh[key][c2] = (signed char)((short)(pair & 0xffff) >> 8);
            kl[key][c2] = (unsigned char)(pair & 255);
            kh[key][c2 + 1] = (signed char)((short)(pair >> 16) >> 8);
            kl[key][c2 + 1] = (unsigned char)((pair >> 16) & 255);
            if (values) {
                const unsigned vp = j < n ? *(const unsigned*)(vi + (g * n + j) * D + c2) : 0u;
                vht[c2][key] = (signed char)((short)(vp & 0xffff) >> 8);
                vlt[c2][key] = (unsigned char)(vp & 255);
                vht[c2 + 1][key] = (signed char)((short)(vp >> 16) >> 8);
                vlt[c2 + 1][key] = (unsigned char)((vp >> 16) & 255);
            }
        }
        for (int key = tid; key < BKEYS; key += 128) {
            const long long j = j0 + key;
            tek[key] = j < n ? ek[g * n + j] : 0;
            tev[key] = j < n ? ev[g * n + j] : 0;
            tbad[key] = j < n ? (kbad[g * n + j] | vbad[g * n + j]) : 0;
        }
    };
    // the scores of n-tile t (keys 8 t .. 8 t + 7 of the tile) for this thread's entries: S as int64
    auto scores = [&](int t, long long* S) {
        int hh[4] = {0, 0, 0, 0}, mid[4] = {0, 0, 0, 0}, ll[4] = {0, 0, 0, 0};
        for (int s = 0; s < D / 32; ++s) {
            const int key = 8 * t + gq, col = 32 * s + 4 * tq;
            const unsigned bh[2] = {*(const unsigned*)&kh[key][col], *(const unsigned*)&kh[key][col + 16]};
            const unsigned bl[2] = {*(const unsigned*)&kl[key][col], *(const unsigned*)&kl[key][col + 16]};
            loom_four<false>(hh, mid, ll, qh[s], ql[s], bh, bl);
        }
        for (int e = 0; e < 4; ++e) S[e] = 65536LL * hh[e] + 256LL * mid[e] + ll[e];
    };
    // pass 1: each row's largest allowed score, its values' largest exponent, inf or NaN seen
    double top[2] = {__longlong_as_double(0xfff0000000000000LL), __longlong_as_double(0xfff0000000000000LL)};
    int etop[2] = {-2147483647 - 1, -2147483647 - 1};
    bool bad[2] = {badrow[0], badrow[1]};
    for (long long j0 = kfirst; j0 < kend; j0 += BKEYS) {
        __syncthreads();
        load(j0, false);
        __syncthreads();
        for (int t = 0; t < BKEYS / 8; ++t) {
            long long S[4];
            scores(t, S);
            for (int e = 0; e < 4; ++e) {
                const int h = e >> 1, key = 8 * t + 2 * tq + (e & 1);
                if (!allowed(h, j0 + key)) continue;
                top[h] = fmax(top[h], ldexp((double)S[e], erow[h] + tek[key] - 2 * BITS));
                etop[h] = max(etop[h], tev[key]);
                bad[h] = bad[h] || tbad[key];
            }
        }
    }
    for (int h = 0; h < 2; ++h)
        for (int m = 1; m < 4; m <<= 1) {
            top[h] = fmax(top[h], __shfl_xor_sync(0xffffffff, top[h], m));
            etop[h] = max(etop[h], __shfl_xor_sync(0xffffffff, etop[h], m));
            bad[h] = bad[h] || __shfl_xor_sync(0xffffffff, (int)bad[h], m);
        }
    // pass 2: p, its sum, w through shared memory, w v
    long long den[2] = {0, 0};
    long long num[D / 8][4];
    #pragma unroll
    for (int d = 0; d < D / 8; ++d)
        #pragma unroll
        for (int e = 0; e < 4; ++e) num[d][e] = 0;
    for (long long j0 = kfirst; j0 < kend; j0 += BKEYS) {
        __syncthreads();
        load(j0, true);
        __syncthreads();
        for (int t = 0; t < BKEYS / 8; ++t) {
            long long S[4];
            scores(t, S);
            for (int e = 0; e < 4; ++e) {
                const int h = e >> 1, key = 8 * t + 2 * tq + (e & 1);
                long long w = 0;
                if (allowed(h, j0 + key)) {
                    const double s = ldexp((double)S[e], erow[h] + tek[key] - 2 * BITS);
                    const long long p = loom_exp_fixed((top[h] - s) * scale, table, log2e, ln2);
                    den[h] += p;
                    const int sh = 31 - P_BITS + etop[h] - tev[key];
                    w = sh < 62 ? (p + (1LL << (sh - 1))) >> sh : 0;
                }
                wh[16 * warp + gq + 8 * h][key] = (unsigned char)(w >> 8);
                wl[16 * warp + gq + 8 * h][key] = (unsigned char)(w & 255);
            }
        }
        __syncwarp();
        #pragma unroll
        for (int d = 0; d < D / 8; ++d) {
            int hh[4] = {0, 0, 0, 0}, mid[4] = {0, 0, 0, 0}, ll[4] = {0, 0, 0, 0};
            for (int s = 0; s < BKEYS / 32; ++s) {
                const int col = 32 * s + 4 * tq, ra = 16 * warp + gq, dd = 8 * d + gq;
                const unsigned ah[4] = {*(const unsigned*)&wh[ra][col], *(const unsigned*)&wh[ra + 8][col],
                                        *(const unsigned*)&wh[ra][col + 16], *(const unsigned*)&wh[ra + 8][col + 16]};
                const unsigned al[4] = {*(const unsigned*)&wl[ra][col], *(const unsigned*)&wl[ra + 8][col],
                                        *(const unsigned*)&wl[ra][col + 16], *(const unsigned*)&wl[ra + 8][col + 16]};
                const unsigned bh[2] = {*(const unsigned*)&vht[dd][col], *(const unsigned*)&vht[dd][col + 16]};
                const unsigned bl[2] = {*(const unsigned*)&vlt[dd][col], *(const unsigned*)&vlt[dd][col + 16]};
                loom_four<true>(hh, mid, ll, ah, al, bh, bl);
            }
            for (int e = 0; e < 4; ++e) num[d][e] += 65536LL * hh[e] + 256LL * mid[e] + ll[e];
        }
        __syncwarp();
    }
    for (int h = 0; h < 2; ++h)
        for (int m = 1; m < 4; m <<= 1) den[h] += __shfl_xor_sync(0xffffffff, den[h], m);
    #pragma unroll
    for (int d = 0; d < D / 8; ++d)
        #pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int h = e >> 1;
            if (row[h] >= rows) continue;
            const int col = 8 * d + 2 * tq + (e & 1);
            out[(g * rows + row[h]) * D + col] = bad[h] || den[h] == 0 ? __int_as_float(0x7fc00000)
                : (float)ldexp((double)num[d][e] / (double)den[h], etop[h] - P_BITS - BITS + 31);
        }
}
"""


@cache
def _kernel(head_dim: int):
    head = f"#define D {head_dim}\n#define BITS {BITS}\n#define P_BITS {scheme.P_BITS}\n"
    return cupy.RawModule(code=head + _SOURCE, options=OPTIONS + ("-std=c++17",)).get_function("loom_int_attend")


def attend(q, k, v, per_group: int, first: int, lo: int, window: int | None, scale: float):
    """float32 [G, per_group T, D]: kernels.exact.attention.causal's bits for CuPy arrays (q [G, per_group T,
    D], k and v [G, n, D] float32)."""
    G, rows, D = q.shape
    n = k.shape[1]
    if D % 32 or D > 128 or k.shape != (G, n, D) or v.shape != (G, n, D) or rows % per_group:
        raise ShapeError(f"the integer attention kernel takes q [G, R T, D] and k, v [G, n, D] with D a multiple of "
                         f"32 up to 128, got {q.shape}, {k.shape}, {v.shape} (R = {per_group})")
    if G == 0 or rows == 0:
        return cupy.empty((G, rows, D), dtype=np.float32)
    parts = []
    for a in (q, k, v):
        a = cupy.ascontiguousarray(a, dtype=np.float32)
        e = row_exponents(cupy, a)
        parts += [to_integers(cupy, a, e).astype(np.int16), e.astype(np.int32),
                  (~cupy.all(cupy.isfinite(a), axis=-1)).astype(np.uint8)]
    out = cupy.empty((G, rows, D), dtype=np.float32)
    _kernel(D)(((rows + BQ - 1) // BQ, G), (128,),
               (*parts, cupy.asarray(scheme.EXP2_TABLE), out, np.int32(rows), np.int32(n), np.int32(rows // per_group),
                np.int64(first), np.int64(lo), np.int32(window or 0), np.float64(np.float32(scale)),
                np.int64(scheme.LOG2E_30), np.int64(scheme.LN2_15)))
    return out
