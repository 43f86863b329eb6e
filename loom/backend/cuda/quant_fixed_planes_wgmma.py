"""The products of quant_fixed_planes_tiled's kernel on Hopper's warpgroup tensor-core instructions (wgmma, sm_90a),
in place of mma.sync: the same prologue, split of K over a cluster and finishing, the same exact integer sums (so
the same bits).

A block is one warpgroup (4 warps) and its stages hold 128 values of K a row (CHUNK; mma.sync's take 64). Per
32-value step it issues two m64nNk32 products (N = 2 pm: x's h rows then its l' rows): W's h plane (the tile's 64
stored rows) against both of x's planes into one accumulator [HH | HL'], and W's l' plane into a second
[L'H | L'L'] (HL' and L'H apart: each sums exactly in int32). The tensor cores read both operands from the stage,
which cp.async fills in wgmma's 128-byte-swizzle layout: a row's 128 bytes in one 128-byte line, its 16-byte piece
k at slot k ^ (row % 8), 8-row atoms of 1,024 bytes one after another (the stages start on a 1,024-byte boundary).
Eight consecutive threads copy one row's 128 bytes: whole 32-byte sectors from memory, 4 a request, and the 8
slots of one line in shared memory. The unswizzled layout was 1.5x slower than mma.sync: its copies were either
one sector a request (a thread's neighbours on other rows; ncu: 4x the L2 requests, the L2 71% busy at 20% of
DRAM's bandwidth) or 4-way bank conflicts.

Measured (H200, benchmarks/planes_products.py, x's kernel included; quant_fixed_planes_tiled.WGMMA's comment has the
table): faster than mma.sync and cuBLAS's int8 GEMM for wide SwiGLU products at every row count (Llama-3.2-1B's
gate_up at 64 rows 35.8 us against 47.0 and 52.3) and for an lm_head's up to 16 rows (131 against 204 and 150 at
one row); slower than mma.sync for narrow products at few rows, and than cuBLAS at 64 rows of qkv, o and down.
wgmma_takes there says where it runs.

sm_90a code runs on compute capability 9.0 alone (compile.arch_module); elsewhere the kernel keeps mma.sync.
"""
from __future__ import annotations

# The stages: dynamic shared memory a block takes for them (2 blocks a multiprocessor at 64 rows of x: registers),
# and at most WG_MAX_STAGES. Each chunk's products are waited for before the next chunk's barrier. (Letting them run
# on past it, STAGES - 2 chunks ahead in 128 KiB, was slower: H200, Llama-3.2-1B's gate_up at 64 rows 49.7 us
# against 35.8.)
WG_SHARED = 96 * 1024
WG_MAX_STAGES = 8


def helpers(n: int) -> str:
    """The stage layout, the descriptors, and the product of one warpgroup, m64 n{n} k32 (n = 2 pm: x's planes'
    rows), as C macros and functions."""
    regs = n // 2
    outs = ", ".join(f"%{i}" for i in range(regs))
    binds = ", ".join(f'"+r"(D[{i}])' for i in range(regs))
    return rf"""
#define WG_N {n}
#define WG_REGS {regs}
// the stages from a 1,024-byte boundary (the swizzle's atoms; the launch adds 1 KiB)
#define LOOM_STAGES_DECLARED extern __shared__ __align__(1024) signed char loom_stages_raw[]; \
    signed char* const stage_s = loom_stages_raw + \
        ((1024 - ((unsigned)__cvta_generic_to_shared(loom_stages_raw) & 1023)) & 1023)
// The 128-byte swizzle (CHUNK = 128): row R of a region at byte 128 R, its 16-byte piece KC at slot KC ^ (R % 8)
// of the row; a thread's piece P is row P / 8's piece P % 8 (8 threads read a row's 128 bytes, and write the 8
// slots of one 128-byte line: no bank conflicts)
#define LOOM_ROW(P) ((P) >> 3)
#define LOOM_KC(P) ((P) & 7)
#define LOOM_DEST(P) (16 * (((P) & ~7) | (((P) ^ ((P) >> 3)) & 7)))
#define LOOM_IN_K(k) ((k) < K)
// a K-major operand at p (shared memory, an atom's row 0 + the step's bytes), the 128-byte swizzle: start >> 4; LBO
// (unused by the swizzled K-major layout) 1; SBO 1,024 >> 4 (8-row atoms one after another); layout 1 at bit 62
__device__ __forceinline__ unsigned long long loom_wg_desc(const void* p) {{
    const unsigned a = (unsigned)__cvta_generic_to_shared(p);
    return (unsigned long long)((a & 0x3FFFF) >> 4) | (1ull << 16) | ((unsigned long long)(1024 >> 4) << 32) | (1ull << 62);
}}
#define LOOM_WGMMA(D, DA, DB) asm volatile("{{\n.reg .pred p;\nsetp.ne.b32 p, %{regs + 2}, 0;\n" \
    "wgmma.mma_async.sync.aligned.m64n{n}k32.s32.s8.s8 {{{outs}}}, %{regs}, %{regs + 1}, p;\n}}" \
    : {binds} : "l"(DA), "l"(DB), "r"(1))
__device__ __forceinline__ void loom_wg_fence() {{ asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }}
__device__ __forceinline__ void loom_wg_commit() {{ asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }}
template <int N> __device__ __forceinline__ void loom_wg_wait() {{
    asm volatile("wgmma.wait_group.sync.aligned %0;" :: "n"(N) : "memory");
}}
// cp.async's writes (the generic proxy) made visible to wgmma's reads (the async proxy)
__device__ __forceinline__ void loom_async_fence() {{ asm volatile("fence.proxy.async.shared::cta;" ::: "memory"); }}
// (the compiler may not move an accumulator's use across the asynchronous products)
#define LOOM_KEEP(v) asm volatile("" : "+r"(v) :: "memory")
"""


# The main loop and the sums, after quant_fixed_planes_tiled's prologue (the first STAGES - 1 chunks in flight).
PRODUCTS = r"""
    int acc_h[WG_REGS], acc_l[WG_REGS];          // [HH | HL'] and [L'H | L'L']: W's 64 rows x x's 2 pm plane rows
    #pragma unroll
    for (int i = 0; i < WG_REGS; ++i) { acc_h[i] = 0; acc_l[i] = 0; LOOM_KEEP(acc_h[i]); LOOM_KEEP(acc_l[i]); }
    for (int it = 0; it < count; ++it) {
        loom_cp_wait<STAGES - 2>();
        loom_async_fence();
        // (chunk it is in; every warp's products of chunk it - 1, whose stage is refilled below, are done)
        __syncthreads();
        const int next = it + STAGES - 1;
        if (next < count) { load_w(next % STAGES, first + next); load_x(next % STAGES, first + next); }
        loom_cp_commit();
        const signed char* st = stage_s + (it % STAGES) * STAGE_BYTES;
        const unsigned long long dh = loom_wg_desc(st), dl = loom_wg_desc(st + CHUNK * TILE_ROWS),
                                 dx = loom_wg_desc(st + CHUNK * 2 * TILE_ROWS);
        loom_wg_fence();
        #pragma unroll
        for (int s = 0; s < CHUNK / 32; ++s) {  // (the chunk's 32-value steps: 32 bytes on, 2 in the descriptor)
            LOOM_WGMMA(acc_h, dh + 2 * s, dx + 2 * s);
            LOOM_WGMMA(acc_l, dl + 2 * s, dx + 2 * s);
        }
        loom_wg_commit();
        loom_wg_wait<0>();                  // (the stage is free for the chunk the next iteration loads)
    }
    #pragma unroll
    for (int i = 0; i < WG_REGS; ++i) { LOOM_KEEP(acc_h[i]); LOOM_KEEP(acc_l[i]); }
    loom_cp_wait<0>();
    __syncthreads();                        // (the stages are free: the sums take their place)
#if TILED_PHASE == 2
    int live = 0;
    #pragma unroll
    for (int i = 0; i < WG_REGS; ++i) live ^= acc_h[i] ^ acc_l[i];
    if (live == 12345) out[blockIdx.x] = 1.0f;
    return;
#endif
    long long* sums_s = (long long*)stage_s;                    // [16 MF][SUMS_ROW]: each entry one lane's
    // a thread's accumulator entries: warp w's W rows 16 w + g (+ 8), x's plane rows 8 j + 2 c (+ 1) of each 8 (j);
    // x's h rows are the first WG_N / 2, its l' rows the same entries WG_N / 2 on (registers WG_REGS / 2 on)
    #pragma unroll
    for (int i = 0; i < WG_REGS / 2; ++i) {
        const int col = 16 * warp + g + 8 * ((i & 3) >> 1), lm = 8 * (i >> 2) + 2 * c + (i & 1);
        sums_s[lm * SUMS_ROW + col] = loom_planes_combine(acc_h[i], (long long)acc_h[i + WG_REGS / 2] + acc_l[i],
                                                          acc_l[i + WG_REGS / 2]);
    }
"""
