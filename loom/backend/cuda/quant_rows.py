"""Deterministic products of a few rows of x (batched decode steps: up to ROWS_MAX rows) with stored weights,
with the bits of quant_tiles' (and so of the exact GEMM). quant_tiles stages 64 rows of x and 64 rows of
W through shared memory as float64 and splits K over blocks, finishing the parts in a second kernel: at
16-64 rows most of its DMMA work is padding and a product of SmolLM2's shapes took 9-24 us against
cuBLAS's 3-4. Here each warp loads its W fragments straight into registers: the DMMA's B operand is
W[n0 + g][k] for lane (g, c), and as the sums are order-free (the rounded scheme's bound holds for any
order and settles what it cannot certify; the slice scheme's sums are exact integers) lane c may take any
eight of a unit's 32 values as its k, provided the A operand x takes the same: block_values' for lanes
2c and 2c + 1 of the eight. The warps of a block split K (every RW-th unit), their sums met in shared
memory in warp order, and the block finishes its entries with quant_finish's loom_tile_finish.

A warp takes MF fragments of x rows (rounded: 16 rows each, a0 row g, a1 row g + 8; sliced: 8 rows, a0
the hi slice of row g, a1 its lo slice, so a lane holds both sums of an entry) by NF fragments of 8 rows
of W (SwiGLU: fragment pairs, the gate rows and the up rows of the same 8 outputs). The rounded scheme's
||x[m]|| is summed from the same A values (exact squares, rounded sums: the bound allows any order).
Capturable: sizes as arguments, no sync, no host read.
"""
from __future__ import annotations

from functools import cache

import cupy

from .compile import OPTIONS
from .launch import launch as launch_kernel
from .quant import PLAIN  # (shape() gives these 4 W fragments)
from .quant_exact import _multiprocessors, prelude
from .quant_finish import DMMA2, FINISH

ROWS_MAX = 64
# Past FEW_ROWS rows of x, products with more output rows than WIDE_ROWS (plain types) or BLOCK_WIDE_ROWS
# (block types, whose W fragments are at most 2 a warp) go back to the tiles: every block of 16 rows of x
# decodes its W rows again, and the tiles stage both operands through shared memory once. On an H200
# (benchmarks/exact_tiles.py --split-tiles --grids), with shape()'s grid, at 64 rows this kernel took
# 0.5-0.9x the tiles' time for SmolLM2's products and Llama-3.2-1B's qkv and down (bf16 and Q4_1, up
# to 3,072 output rows), 0.97x for Llama's bf16 gate/up (8,192 rows; its block types were not measured
# there), and 1.45x for SmolLM2's output layer (49,152 rows).
FEW_ROWS = 32
WIDE_ROWS = 8192
BLOCK_WIDE_ROWS = 3072
RW = 8                      # warps a block, each over every RW-th 32-value unit of K

_SOURCE = r"""
#define XROWS (SLICED ? 8 * MF : 16 * MF)        // rows of x a block takes
#define OUTS (EPI ? 4 * NF : 8 * NF)             // output columns a block takes
#define SLOTS (MF * NF * 4)                      // a lane's sums
// Positions of unit values that lane c of a quad takes (block_values for lanes 2c, 2c + 1): nibble types
// give 4c .. 4c + 3 and 4c + 16 .. 4c + 19, the others 8c .. 8c + 7 (two runs of four either way).
#define NIBBLES (KQ == 0 && KIND == 0 && BLOCK != 34)

// The four values of x's row xr (float32, or the slices' (hi, lo) pairs: `pairs`) at positions at .. at + 3
// of unit b.
__device__ __forceinline__ void loom_x4(const float* xr, int b, int at, bool ok, float* hi, float* lo) {
    if (!ok) {
        #pragma unroll
        for (int j = 0; j < 4; ++j) { hi[j] = 0.0f; lo[j] = 0.0f; }
    } else if (SLICED) {
        const float4* src = (const float4*)(xr + 2 * (b * 32 + at));
        const float4 u = src[0], v = src[1];
        hi[0] = u.x; lo[0] = u.y; hi[1] = u.z; lo[1] = u.w; hi[2] = v.x; lo[2] = v.y; hi[3] = v.z; lo[3] = v.w;
    } else {
        // (plain loads, not __ldg: under a programmatic dependent launch the kernel is resident while the
        // one before it writes x, and the non-coherent path assumes data unwritten for the kernel's life)
        const float4 u = *(const float4*)(xr + b * 32 + at);
        hi[0] = u.x; hi[1] = u.y; hi[2] = u.z; hi[3] = u.w;
    }
}

extern "C" __global__ void __launch_bounds__(RW * 32) loom_exact_rows(LOOM_TILES_ARGS) {
    const LoomTiles p = LOOM_TILES;
    __shared__ double sums_s[SLOTS * 32];
    __shared__ double sq_s[XROWS];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, c = lane & 3;
    const int out_blocks = (rows + OUTS - 1) / OUTS;
    const int o0 = (blockIdx.x % out_blocks) * OUTS, m0 = (blockIdx.x / out_blocks) * XROWS;
    // this lane's W row in each fragment (SwiGLU: even fragments the gate rows, odd the up rows)
    const unsigned char* wrow[NF];
    int wr[NF], shift[NF];
    #pragma unroll
    for (int f = 0; f < NF; ++f) {
        const int n = EPI ? o0 + 8 * (f >> 1) + g : o0 + 8 * f + g;
        wr[f] = n < rows ? (EPI ? n + (f & 1) * rows : n) : -1;
        wrow[f] = w + (long long)max(wr[f], 0) * ROW_BYTES;
        shift[f] = 0;
    }
    // this lane's rows of x: fragment i's a0 and a1 (sliced: the same row's hi and lo)
    const float* xrow[MF][2];
    bool xok[MF][2];
    #pragma unroll
    for (int i = 0; i < MF; ++i)
        #pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int m = SLICED ? m0 + 8 * i + g : m0 + 16 * i + 8 * h + g;
            xok[i][h] = m < m_rows;
            xrow[i][h] = x + (long long)(xok[i][h] ? m : 0) * COLS * (SLICED ? 2 : 1);
        }
    wait_for_previous_kernel();
    if (SLICED) {
        #pragma unroll
        for (int f = 0; f < NF; ++f)
            if (wr[f] >= 0) shift[f] = bbits - loom_top_exponent(wmax[wr[f]]);
    }
    double acc[MF][NF][4];
    double sq[MF][2];
    #pragma unroll
    for (int i = 0; i < MF; ++i) {
        sq[i][0] = 0.0; sq[i][1] = 0.0;
        #pragma unroll
        for (int f = 0; f < NF; ++f)
            #pragma unroll
            for (int v = 0; v < 4; ++v) acc[i][f][v] = 0.0;
    }
    const int run0 = NIBBLES ? 4 * c : 8 * c, run1 = NIBBLES ? 4 * c + 16 : 8 * c + 4;
    for (int b = warp; b < NB; b += RW) {
        double wv[NF][8];
        #pragma unroll
        for (int f = 0; f < NF; ++f) {
            float v[8]; int at[8];
            if (wr[f] >= 0) {
                block_values(wrow[f], b, 2 * c, v, at);
                block_values(wrow[f], b, 2 * c + 1, v + 4, at + 4);
            } else {
                #pragma unroll
                for (int j = 0; j < 8; ++j) v[j] = 0.0f;
            }
            // value j's place k in (run0 .. run0 + 3, run1 .. run1 + 3): block_values gives lanes 2c and 2c + 1
            // runs of four in order, except the nibble types': 4c, 4c + 1, 4c + 16, 4c + 17, then 4c + 2,
            // 4c + 3, 4c + 18, 4c + 19
            #pragma unroll
            for (int j = 0; j < 8; ++j) {
                const int k = NIBBLES ? (j & 1) | ((j & 2) << 1) | ((j & 4) >> 1) : j;
                wv[f][k] = SLICED ? (double)rintf(ldexpf(v[j], shift[f])) : (double)v[j];
            }
        }
        #pragma unroll
        for (int i = 0; i < MF; ++i) {
            float a[2][8], l[8];
            loom_x4(xrow[i][0], b, run0, xok[i][0], a[0], l);
            loom_x4(xrow[i][0], b, run1, xok[i][0], a[0] + 4, l + 4);
            if (SLICED) {
                #pragma unroll
                for (int j = 0; j < 8; ++j) a[1][j] = l[j];
            } else {
                loom_x4(xrow[i][1], b, run0, xok[i][1], a[1], l);
                loom_x4(xrow[i][1], b, run1, xok[i][1], a[1] + 4, l + 4);
            }
            #pragma unroll
            for (int k = 0; k < 8; ++k) {
                const double a0 = a[0][k], a1 = a[1][k];
                if (!SLICED) {
                    sq[i][0] = __dadd_rn(sq[i][0], __dmul_rn(a0, a0));
                    sq[i][1] = __dadd_rn(sq[i][1], __dmul_rn(a1, a1));
                }
                #pragma unroll
                for (int f = 0; f < NF; ++f) loom_dmma2(acc[i][f], acc[i][f] + 2, a0, a1, wv[f][k]);
            }
        }
    }
    // the warps' sums met in shared memory in warp order; the rows' sums of squares beside them
    #pragma unroll
    for (int i = 0; i < MF; ++i)
        #pragma unroll
        for (int h = 0; h < 2; ++h) {
            sq[i][h] = __dadd_rn(sq[i][h], __shfl_xor_sync(LOOM_FULL, sq[i][h], 1));
            sq[i][h] = __dadd_rn(sq[i][h], __shfl_xor_sync(LOOM_FULL, sq[i][h], 2));
        }
    for (int turn = 0; turn < RW; ++turn) {
        if (warp == turn) {
            #pragma unroll
            for (int i = 0; i < MF; ++i)
                #pragma unroll
                for (int f = 0; f < NF; ++f)
                    #pragma unroll
                    for (int v = 0; v < 4; ++v) {
                        double* s = sums_s + ((i * NF + f) * 4 + v) * 32 + lane;
                        *s = turn == 0 ? acc[i][f][v] : __dadd_rn(*s, acc[i][f][v]);
                    }
            if (!SLICED && c == 0) {
                #pragma unroll
                for (int i = 0; i < MF; ++i)
                    #pragma unroll
                    for (int h = 0; h < 2; ++h) {
                        double* s = sq_s + 16 * i + 8 * h + g;
                        *s = turn == 0 ? sq[i][h] : __dadd_rn(*s, sq[i][h]);
                    }
            }
        }
        __syncthreads();
    }
    // the block's entries, an entry a lane: (x fragment i, output fragment o, entry v of the lane's);
    // rounded: v 0..3 (d0[0], d0[1], d1[0], d1[1]); sliced: v 0..1, hi from d0[v] and lo from d1[v]
    constexpr int OUT_FRAGS = EPI ? NF / 2 : NF, PER = SLICED ? 2 : 4;
    for (int slot = warp; slot < MF * OUT_FRAGS * PER; slot += RW) {
        const int v = slot % PER, o = (slot / PER) % OUT_FRAGS, i = slot / (PER * OUT_FRAGS);
        const int lm = SLICED ? 8 * i + g : 16 * i + 8 * (v >> 1) + g, m = m0 + lm;
        const int n = o0 + 8 * o + 2 * c + (v & 1);
        double hi[EPI + 1], lo[EPI + 1];
        #pragma unroll
        for (int e = 0; e <= EPI; ++e) {
            const int f = EPI ? 2 * o + e : o;
            hi[e] = sums_s[((i * NF + f) * 4 + v) * 32 + lane];
            lo[e] = SLICED ? sums_s[((i * NF + f) * 4 + v + 2) * 32 + lane] : 0.0;
        }
        loom_tile_finish(p, m < m_rows && n < rows, m, n, hi, lo, SLICED ? 0.0 : __dsqrt_rn(sq_s[lm]), lane);
    }
}
"""


@cache
def _module(qtype: str, epilogue: int, sliced: bool, blocks: int, x_frags: int, w_frags: int):
    source = (f"#define SLICED {int(sliced)}\n#define MF {x_frags}\n#define NF {w_frags}\n#define RW {RW}\n"
              + prelude(qtype, epilogue, 1, 1, blocks) + DMMA2 + FINISH + _SOURCE)
    return cupy.RawModule(code=source, options=OPTIONS + ("-std=c++17",))


def shape(m: int, rows: int, sliced: bool, swiglu: bool, qtype: str) -> tuple[int, int, int]:
    """(x fragments a warp takes, W fragments a warp takes, blocks for each group of x rows) for the product
    of m rows of x (at most ROWS_MAX) with `rows` output rows. A block takes 16 rows of x (one fragment
    rounded, two sliced; further blocks take the rest), and as many W fragments as still give every
    multiprocessor a block: 4 (plain types, rounded scheme), 2 or 1 (SwiGLU at least 2, a gate and an up).
    Measured on an H200 at 16-64 rows of SmolLM2's and Llama-3.2-1B's products (CHANGELOG.md): fewer x
    rows a block and more blocks beat more x rows a block (each block's warps are latency-bound); 4 W
    fragments only pay where decoding W is cheap and the scheme keeps one sum an entry."""
    per_frag = 8 if sliced else 16
    x_frags = min(16 // per_frag, -(-m // per_frag))
    groups = -(-m // (per_frag * x_frags))
    widest = 4 if qtype in PLAIN and not sliced else 2
    sms = _multiprocessors()
    w_frags = 2 if swiglu else 1
    for nf in (4, 2):
        if w_frags < nf <= widest and groups * -(-rows // (4 * nf if swiglu else 8 * nf)) >= sms:
            w_frags = nf
            break
    outs = 4 * w_frags if swiglu else 8 * w_frags
    return x_frags, w_frags, -(-rows // outs)


def takes(m: int, rows: int, qtype: str) -> bool:
    """Whether a product of m rows of x with `rows` output rows of a `qtype` weight takes this kernel
    (rather than the tiles)."""
    return 0 < m and (m <= FEW_ROWS or (m <= ROWS_MAX and rows <= (WIDE_ROWS if qtype in PLAIN else BLOCK_WIDE_ROWS)))


def launch(qtype: str, sliced: bool, swiglu: bool, m: int, rows: int, cols: int, args: tuple,
           overlap: bool) -> None:
    """quant_tiles' product (its argument tuple `args`, W first) for m <= ROWS_MAX rows of x, finished in
    the one kernel."""
    x_frags, w_frags, blocks = shape(m, rows, sliced, swiglu, qtype)
    x_rows = (8 if sliced else 16) * x_frags
    kernel = _module(qtype, int(swiglu), sliced, cols // 32, x_frags, w_frags).get_function("loom_exact_rows")
    launch_kernel(kernel, blocks * -(-m // x_rows), RW * 32, args, overlap)
