"""Products of a few rows of x with stored weights in the integer scheme of spec 4
(loom/kernels/exact/fixed.py, the dispatch table's "weight" rule): the decode step's
products with integer multiply-adds in place of spec 3's float64 sums, certification and settling.

Every integer is made the same way (loom_fixed_bits): q = rint(v 2^(15 - e)) is the low half of the bits
of one float32 fma, v 2^(15 - e) + 1.5 2^23 (v 2^(15 - e) is exact inside it and |q| <= 32767, so it
rounds to the integers of [2^23, 2^24), ties to even), float64 only for rows below 2^-112.

Kernels:
- `loom_fixed_w_exponents`, once per weight: a warp a row of W decodes it (quant.BLOCK_DECODE's values,
  exactly gguf's dequantization) and finds fixed.row_exponents' e from the largest finite magnitude
  (frexpf, then the spill past 32767), and whether the row holds inf or NaN;
- `loom_fixed_x`, once per product where the product does not make them itself: a block a row of x writes
  its exponent and its integers as int16 in the lane order of the weight's block_values (lane i's four
  values at slots 4i .. 4i + 3: one vector load in the products), optionally of rms_norm(x) (the normed
  rows written first, quant_exact.rms_norm's bits); for quant_fixed_planes' GEMM, as its int8 planes and
  the rows' sums of their integers instead;
- `loom_fixed_gemv` (x's integers made by loom_fixed_x) and `loom_fixed_gemv_staged` (each block makes
  them, and the norm, in static shared memory, each thread holding its values of x, or with a norm over
  K <= WARP_STAGE_K one warp a row of x: up to STAGED_ROWS rows over K <= HELD_K, small grids; see
  x_source), both compiled for their rows of x and units of K; for one row of x a block takes every
  grid-th group of output rows (gemv_grid):
  WPR warps a row of W (gemv_warps), lane l taking value group l & 7 of its units (F16/BF16: eight values,
  8 (l & 3) .. 8 (l & 3) + 7, in one 16-byte load); each decoded value's integer times x's, two products a
  dp2a instruction (x's integers split into bytes: int32 sums added into int64s every few steps), exact in
  any order; the warps' sums meet in shared memory, and one lane scales the sum by 2^(ex + ew - 30) in
  float64 (exact: below 2^53) and rounds once to float32. A row of x or W holding inf or NaN gives IEEE's
  value of the sum of sign products with the infinities and NaNs kept (exact._special_values), which is not
  finite.
- `loom_fixed_rows`, for up to ROWS_MAX rows of x (decode batches) on the int8 tensor cores: each integer
  splits into planes, q = 256 hi + lo (hi = q >> 8 signed, lo = q & 255 unsigned: the int16's two bytes),
  and a fragment of 16 rows of x by 8 rows of W takes four m16n8k32 products a 32-value unit, hi.hi into
  one int32 accumulator, hi.lo and lo.hi into a second (both weigh 256), lo.lo into a third, combined in
  int64 as 65536 HH + 256 (HL + LH) + LL. Lane c of a quad takes block_values' eight values for lanes 2c
  and 2c + 1 as its k (x the same slots): the sums are exact, so the order of k is free. Each warp takes
  one W fragment (warp % NF) over every (RW / NF)-th unit; the block's warps add their int64 sums in
  shared memory (atomics: integer additions, any order), and the block rounds its entries once.
The products launch as programmatic dependent launches where asked (overlap: launch.py; weights and their
exponents read before the wait). Capturable: sizes as arguments, no sync, no host read.
"""
from __future__ import annotations

from collections.abc import Callable
from functools import cache

import cupy
import numpy as np

from ...errors import BackendError, ShapeError
from .. import Array
from .compile import OPTIONS
from .exact_reduce import EXACT_ROW_SUM
from .fused import ROW_HELPERS
from .fused_exact import helpers
from .launch import OVERLAP_PROLOGUE, launch, resident_per_sm
from .quant import BLOCK_DECODE, K_LAYOUTS, LAYOUTS, TYPES, pointer, type_defines
from .quant_exact import NORM_ROW, _multiprocessors, sum_bits
from .quant_fixed_rows_source import ROWS_SOURCE
from .quant_fixed_source import SOURCE
from .quant_rows import PLAIN

MAX_ROWS = 4                # rows of x the one-row kernel takes (decode steps)
STAGED_ROWS = 2             # rows of x up to which it makes x's integers itself, in shared memory
STAGE_WAVES = 4             # ... where its grid is at most this many blocks a multiprocessor
GEMV_WAVES = 4              # blocks a multiprocessor of a one-row, one-warp-a-row product at most (0: a block a group)
GEMV_BLOCKS_PER_SM = 2      # blocks a multiprocessor the fewest warps a row must still give (gemv_warps)
ONE_WAVE = 1                # ... and no more than the kernel's blocks resident at once (0: GEMV_WAVES alone)
ROWS_MAX = 64               # rows of x loom_fixed_rows takes (decode batches)
# rows of x from which products take the planes' int8 GEMM (quant_fixed_planes), which reads each weight
# once for any rows (past ROWS_MAX they take it whatever this says: takes_planes). Measured on an H200
# (benchmarks/decode_graph_parts.py --planes-rows), Llama-3.2-1B decode steps of 8 / 16 / 64 rows:
# 1,612 / 1,632 / 2,464 us on the planes against rows_product's 2,238 / 2,350 / 5,790 (SmolLM2: even)
PLANES_ROWS = 8
RW = 8                      # warps a block of loom_fixed_rows, each over every RW-th unit of K
MAX_K = 1 << 23             # (loom.kernels.exact.fixed.MAX_K: past it the float64 sums could round)
WARPS = 8                   # warps a block of the product and of the exponents' kernel
HELD_K = 8 * WARPS * 32     # K up to which gemv's blocks make x's integers (each thread holding 8 values)
WARP_STAGE_K = 1024         # K up to which one warp a row of normed x makes them (loom_fixed_stage_warp)
# blocks a multiprocessor loom_fixed_gemv_staged's registers must allow at one row of x over K >= STAGED_MIN_BLOCKS_K
# (0: no bound). H100, decode_graph_parts.py --whole --deterministic, us: three blocks (80 registers) at one row from
# K = 2,048 (Llama-3.2-1B's qkv, o, gate_up, lm_head), 1,567 -> 1,542; everywhere, SmolLM2-135M 776 -> 864 (a few bytes
# spilled) and Qwen2-0.5B 1,165 -> 1,173; at two rows too, Llama-3.2-1B batch 2 2,015 -> 2,044.
STAGED_MIN_BLOCKS = 3
STAGED_MIN_BLOCKS_K = 2048
# rows of x from which loom_fixed_gemv (x's integers in global memory) reads them at each step's use rather than
# loading them beside W's (0: never). H100, as above: batch 2, Llama-3.2-1B 2,015 -> 1,902 us; at one row, slower
# (Llama-3.2-1B 1,567 -> 1,593, Llama-3.1-8B 7,563 -> 8,313, Qwen2-0.5B 1,166 -> 1,187).
GLOBAL_X_AT_USE_ROWS = 2
# x's kernel (loom_fixed_x): a block of X_THREADS a row. A warp a row, with shuffles in place of its four barriers, was
# measured slower (H200, 2026-11-28, recorded steps at 64 rows: SmolLM2-135M 1,519 -> 1,633 us, Llama-3.2-1B bf16
# 2,294 -> 2,598; branch wip/x-warps): each warp's chain over its row is the time, not the barriers
X_THREADS = 256
# ... and for a prompt's rows (m >= X_MANY_ROWS, 0: never) of K <= X_MANY_K (what such a block holds in registers
# writing planes, 4 X_HELD X_MANY_THREADS), blocks of X_MANY_THREADS: a 2,048-token prompt's launch is 2,048 blocks, and
# at K = 576 a block of 256 keeps 144 threads busy. H200, 2026-11-29, prefill_kernels.py, 2,048-token prompts, 128
# threads for every K: SmolLM2-135M (K 576, 1,536) loom_fixed_x 1.28 -> 0.89 ms, Llama-3.2-1B (K 2,048, 8,192) 1.16 ->
# 1.76 (past the held rows)
X_MANY_ROWS = 256
X_MANY_THREADS = 128
X_MANY_K = 1024
# (timing only: the one-row products return after a phase, their output meaningless: 1 the prologue and the wait for
# the previous kernel, 2 x's integers made, 3 the products summed; 0 runs them whole. decode_graph_parts.py --set
# loom.backend.cuda.quant_fixed.PHASE_STOP=N gives each product kind's time to that phase)
PHASE_STOP = 0
# Whether products of up to MAX_ROWS rows of x over K >= GEMV_PLANES_MIN_K read the weight's int8 planes
# (quant_fixed_planes_gemv: two bytes a value, the copy prompts and decode batches make anyway) rather than decode
# the stored weight in the loop (gemv), for every stored type but the 16-bit floats. H100, decode_graph_parts.py
# --whole --deterministic, us a step, planes / stored: Llama-3.2-1B Q4_K 1,300 / 1,852, Q8_0 1,262 / 1,778, BF16
# 1,284 / 1,316; Llama-3.1-8B BF16 6,798 / 6,692; Qwen2-0.5B BF16 1,056 / 1,051; SmolLM2-135M (K = 576) BF16 814 /
# 741, Q4_1 817 / 806. The 16-bit floats read as many bytes either way and decode in a few instructions.
GEMV_PLANES = True
GEMV_PLANES_MIN_K = 2048



def _head(epilogue: int, units: int = 0, wpr: int = 1, x_rows: int = 0, x_threads: int = 0) -> str:
    """The kernels' #defines; units (NB): the 32-value units of a row, compiled into the products (0: an
    argument); wpr: the warps sharing a row in the one-row kernel; x_rows (XR): the rows of x it takes,
    compiled in (0: an argument, up to MAX_ROWS); x_threads: loom_fixed_x's block (0: X_THREADS)."""
    return (f"typedef float T;\n#define MAX_ROWS {x_rows or MAX_ROWS}\n#define XR {x_rows}\n#define WARPS {WARPS}\n"
            f"#define X_THREADS {x_threads or X_THREADS}\n"
            f"#define NB {units}\n#define WPR {wpr}\n"
            f"#define RW {RW}\n#define EPI {epilogue}\n#define STAGED_ROWS {STAGED_ROWS}\n#define HELD_K {HELD_K}\n"
            f"#define WARP_STAGE_K {WARP_STAGE_K}\n"
            f"#define STAGED_MIN_BLOCKS {STAGED_MIN_BLOCKS if x_rows == 1 and 32 * units >= STAGED_MIN_BLOCKS_K else 0}\n"
            f"#define GLOBAL_X_AT_USE {int(0 < GLOBAL_X_AT_USE_ROWS <= x_rows)}\n"
            f"#define PHASE_STOP {PHASE_STOP}\n"
            + helpers() + ROW_HELPERS + EXACT_ROW_SUM + OVERLAP_PROLOGUE + NORM_ROW)


@cache
def _module(qtype: str, epilogue: int = 0, units: int = 0, wpr: int = 1, x_rows: int = 0, x_threads: int = 0):
    return cupy.RawModule(code=_head(epilogue, units, wpr, x_rows, x_threads) + type_defines(qtype) + BLOCK_DECODE
                          + SOURCE,
                          options=OPTIONS + ("-std=c++17",))


@cache
def _rows_module(qtype: str, epilogue: int, x_frags: int, w_frags: int, units: int):
    return cupy.RawModule(code=_head(epilogue, units) + f"#define MF {x_frags}\n#define NF {w_frags}\n" + type_defines(qtype)
                          + BLOCK_DECODE + SOURCE + ROWS_SOURCE, options=OPTIONS + ("-std=c++17",))


def unsupported(qtype: str, cols: int) -> str | None:
    """Why the integer kernels cannot take products with a weight stored as qtype over K = cols, or None."""
    try:
        _check(qtype, cols)
    except ShapeError as e:
        return str(e)
    return None


def weight_tables(tables: dict, name: str, make: Callable[[], object]) -> object:
    """tables[name], made by make() the first time and kept (a weight's BlockQuantized.tables, shared by the
    decode graphs and the prompt products), never inside a recording (its kernels would run only at the
    replays): there it raises RuntimeError, which makes a GraphCache run that step eagerly."""
    if name not in tables:
        if cupy.cuda.get_current_stream().is_capturing():
            raise RuntimeError(f"a weight's {name.replace('_', ' ')} are made by its first product, not inside a "
                               "CUDA graph's recording")
        tables[name] = make()
    return tables[name]


def _check(qtype: str, cols: int, x: Array | None = None) -> None:
    if x is not None:
        _check_x(x)
    if cols >= MAX_K:
        raise ShapeError(f"the integer scheme sums at most {MAX_K - 1} products exactly, got K = {cols}")
    if qtype not in TYPES:
        raise ShapeError(f"no integer product kernel for weights stored as {qtype} (it takes {', '.join(TYPES)})")
    unit = 256 if qtype in K_LAYOUTS else 32
    if cols % unit or cols <= 0:
        raise ShapeError(f"a width of {cols} is not a positive multiple of {unit} (whole {qtype} blocks)")


def w_exponents(data: Array, qtype: str, rows: int, cols: int) -> tuple[Array, Array]:
    """(ew int32 [rows], bad int32 [rows]): each row of the stored weight's exponent and whether it holds
    inf or NaN. Once per weight."""
    _check(qtype, cols)
    ew, bad = cupy.empty(rows, dtype=np.int32), cupy.empty(rows, dtype=np.int32)
    if rows:
        _module(qtype).get_function("loom_fixed_w_exponents")(
            (-(-rows // WARPS),), (WARPS * 32,), (data, ew, bad, np.int64(rows), np.int32(cols // 32)))
    return ew, bad


def _nibble(qtype: str | None) -> bool:
    """Whether block_values gives lanes of qtype's units positions 2i, 2i + 1, 2i + 16, 2i + 17 (the 4- and
    5-bit types without super-blocks), not 4i .. 4i + 3."""
    return qtype is not None and qtype in LAYOUTS and qtype not in PLAIN and LAYOUTS[qtype][0] != 34


def x_integers(x: Array, qtype: str | None = None, norm: Array | None = None, normed: Array | None = None,
               eps: float = 0.0, overlap: bool = False, planes: tuple[Array, Array] | None = None
               ) -> tuple[Array | None, Array, Array]:
    """(xq int16 [M, K], ex int32 [M], bad int32 [M]) for float32 x [M, K], C-contiguous; each 32 values'
    integers in the lane order of qtype's block_values (the kernels' loads: slot 4i + j holds lane i's j-th
    value), in x's order where qtype is None or its lanes take four consecutive values. With `norm` (a
    weight [K]), those of rms_norm(x, norm, eps) (quant_exact.rms_norm's bits), which the same launch writes
    to `normed` [M, K] first. overlap: a programmatic dependent launch (launch.py). planes: (int8 [2 P, K],
    int64 [M]) with P >= M: the integers go there instead, in quant_fixed_planes' layout (x's order; each
    q = 256 h + l' + 128, h in row m, l' in row P + m), with each row's sum of q; xq is then None."""
    _check_x(x)
    m, k = x.shape
    if norm is not None:
        _check_norm(norm, normed, x.shape)
    padded = 0
    if planes is not None:
        padded = planes[0].shape[0] // 2
        if (planes[0].dtype != np.int8 or planes[0].shape != (2 * padded, k) or padded < m or qtype is not None
                or not planes[0].flags.c_contiguous or planes[1].dtype != np.int64 or planes[1].shape != (m,)
                or not planes[1].flags.c_contiguous):
            raise ShapeError(f"planes must be int8 [2 P, {k}] (P >= {m}) and int64 [{m}], C-contiguous, in x's "
                             f"order (no qtype), got {planes[0].dtype} {planes[0].shape} and {planes[1].dtype} "
                             f"{planes[1].shape}, qtype {qtype}")
    xq = cupy.empty((m, k), dtype=np.int16) if planes is None else None
    ex, bad = cupy.empty(m, dtype=np.int32), cupy.empty(m, dtype=np.int32)
    if m:
        # (any qtype's module holds it: the x kernel reads no weight)
        threads = X_MANY_THREADS if 0 < X_MANY_ROWS <= m and k <= X_MANY_K else X_THREADS
        module = _module("F32", x_threads=0 if threads == X_THREADS else threads)    # (0: the products' module)
        launch(module.get_function("loom_fixed_x"), m, threads,
               (x, pointer(xq), ex, bad, np.int32(k), np.int32(_nibble(qtype)), pointer(norm), pointer(normed),
                np.float32(eps), sum_bits(k), *(pointer(p) for p in planes or (None, None)), np.int64(padded)),
               overlap)
    return xq, ex, bad


def _check_x(x: Array) -> None:
    if x.dtype != np.float32 or x.ndim != 2 or not x.flags.c_contiguous:
        raise ShapeError(f"x must be float32 [M, K], C-contiguous, got {x.dtype} {x.shape}")


def _check_norm(norm: Array, normed: Array | None, shape: tuple) -> None:
    if norm.dtype != np.float32 or norm.shape != shape[1:]:
        raise ShapeError(f"norm must be float32 [{shape[1]}], got {norm.dtype} {norm.shape}")
    if normed is not None and (normed.dtype != np.float32 or normed.shape != shape or not normed.flags.c_contiguous):
        raise ShapeError(f"normed must be float32 {list(shape)}, C-contiguous, got {normed.dtype} {normed.shape}")


def x_source(m: int, k: int, rows: int) -> str:
    """Where gemv's product of x [m, k] gets x's integers (and its norm): "block", each block makes them in
    its shared memory (up to STAGED_ROWS rows, K <= HELD_K and a grid of at most STAGE_WAVES blocks a
    multiprocessor: past those, the blocks' repeated work costs more than a launch: at
    4 rows every SmolLM2 and Llama-3.2-1B product, Llama-3.2-1B's down product at K = 8192 (24 us against
    20, H200) and its output layer twice as long), else "launch", x's
    integers' own launch (x_integers). (Each warp making them for itself, with no barrier, was measured
    too: slower than a block everywhere, twice as slow on Llama-3.2-1B's qkv.)"""
    if m <= STAGED_ROWS and k <= HELD_K and gemv_grid(rows, gemv_warps(rows), m) <= STAGE_WAVES * _multiprocessors():
        return "block"
    return "launch"


def gemv_grid(rows: int, wpr: int, m: int, per_sm: int = 0) -> int:
    """loom_fixed_gemv's blocks for m rows of x: one a group of WARPS / wpr output rows, at most GEMV_WAVES a
    multiprocessor for one row of x where a warp takes a row (each block then takes every grid-th group,
    loom_fixed_gemv_groups; the smaller grid also lets the blocks stage x). Measured on an H200
    (decode_graph_parts.py --whole): one row of x, SmolLM2 801 -> 796 us a step (its output layer 35 -> 28 us),
    Llama-3.2-1B 1,549 -> 1,474; two rows of Llama-3.2-1B 2,151 -> 2,427 (its products over K = 2,048 then
    staged x in blocks of 125 registers, two a multiprocessor), so not past one row. With ONE_WAVE (per_sm, the
    kernel's resident blocks) one row of Qwen2-0.5B 1,264 -> 1,158 us (its SwiGLU products stage x in blocks of
    up to 112 registers, two a multiprocessor), Llama-3.2-1B 1,457 -> 1,442, SmolLM2 770 -> 768."""
    groups = -(-rows // (WARPS // wpr))
    waves = min(GEMV_WAVES, per_sm) if per_sm else GEMV_WAVES   # (per_sm: the kernel's resident blocks, ONE_WAVE)
    return min(groups, waves * _multiprocessors()) if wpr == 1 and m == 1 and GEMV_WAVES else groups


def _resident_per_sm(kernel) -> int:
    """Blocks of the kernel resident on one multiprocessor of the current GPU at once (its registers and static
    shared memory)."""
    return resident_per_sm(kernel, WARPS * 32)


def gemv_warps(rows: int) -> int:
    """Warps sharing an output row in loom_fixed_gemv: the fewest (of 1, 2, 4, 8) that still give each
    multiprocessor GEMV_BLOCKS_PER_SM blocks (a warp a row left most of them idle on SmolLM2's 576- and 960-row
    products)."""
    for wpr in (1, 2, 4):
        if -(-rows // (WARPS // wpr)) >= GEMV_BLOCKS_PER_SM * _multiprocessors():
            return wpr
    return 8


def rows_shape(m: int, rows: int, qtype: str, swiglu: bool = False) -> tuple[int, int]:
    """(x fragments, W fragments a warp) for loom_fixed_rows' product of m rows of x with `rows` output rows:
    one W fragment a warp (a SwiGLU pair), and two x fragments (32 rows of x) a block past 16 rows, except
    for SwiGLU. Measured (benchmarks/fixed_grids.py, H100, SmolLM2's and Llama-3.2-1B's products, bf16 and
    Q4_1, 16 and 64 rows): unlike quant_rows' float64 sums, more W fragments a warp were slower in every
    case (the int8 products are cheap; the warps' decoding and loads are what a block waits on), and 2 x
    fragments beat 1 at 64 rows except in most SwiGLU products."""
    if swiglu:
        return 1, 2
    return (1 if m <= 16 else 2), 1


def takes_planes(m: int) -> bool:
    """Whether a product of m rows of x takes the planes' int8 GEMM rather than gemv (up to MAX_ROWS) or one
    rows_product launch: from PLANES_ROWS rows, and past ROWS_MAX always."""
    return m > MAX_ROWS and (m >= PLANES_ROWS or m > ROWS_MAX)


def gemv_reads_planes(qtype: str, k: int) -> bool:
    """Whether products of up to MAX_ROWS rows of x with a weight stored as qtype over K = k read its int8 planes
    (quant_fixed_planes' gemv) rather than the stored weight (gemv): GEMV_PLANES, from GEMV_PLANES_MIN_K, and not
    for F16 and BF16."""
    return bool(GEMV_PLANES) and k >= GEMV_PLANES_MIN_K and qtype not in ("F16", "BF16")


def _epilogue_args(data: Array, m: int, out: Array, bias: Array | None, residual: Array | None,
                   swiglu: bool) -> tuple[int, tuple]:
    """(output rows, the kernels' bias and residual pointers), checking the epilogue's arrays."""
    stored = data.shape[0]
    if swiglu and (stored % 2 or residual is not None):
        raise ShapeError("SwiGLU takes an even number of stored rows (gate, then up) and no residual")
    rows = stored // 2 if swiglu else stored
    if out.shape != (m, rows) or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ShapeError(f"out must be float32 [{m}, {rows}], C-contiguous, got {out.dtype} {out.shape}")
    if bias is not None and (bias.shape != (stored,) or bias.dtype != np.float32):
        raise ShapeError(f"bias must be float32 [{stored}], got {bias.dtype} {bias.shape}")
    if residual is not None and (residual.shape != (m, rows) or residual.dtype != np.float32
                                 or not residual.flags.c_contiguous):
        raise ShapeError(f"residual must be float32 [{m}, {rows}], C-contiguous, got {residual.dtype} {residual.shape}")
    return rows, (pointer(bias), pointer(residual))


def rows_product(data: Array, qtype: str, x: Array, out: Array, w_tables: tuple[Array, Array],
                 bias: Array | None = None, residual: Array | None = None, swiglu: bool = False,
                 norm: Array | None = None, normed: Array | None = None, eps: float = 0.0,
                 overlap: bool = False) -> None:
    """out [M, rows] = (residual +) x [M, K] @ W^T (+ bias), or SwiGLU of its two halves (W's stored rows
    the gate's, then the up's), in the integer scheme for up to ROWS_MAX rows of float32 x on the int8
    tensor cores (compute capability 8.0 and up), with gemv's arguments; with `norm`, the product of
    rms_norm(x, norm, eps), written to `normed` [M, K] on the way (x's integers' launch makes both)."""
    m, k = x.shape
    _check(qtype, k, x)
    if not 0 < m <= ROWS_MAX:
        raise ShapeError(f"rows_product takes 1 to {ROWS_MAX} rows of x, got {m}")
    if int(cupy.cuda.Device().compute_capability) < 80:
        raise BackendError("the integer scheme's batched products need int8 tensor cores (compute capability 8.0)")
    rows, epilogue = _epilogue_args(data, m, out, bias, residual, swiglu)
    if rows == 0:
        return
    x_frags, w_frags = rows_shape(m, rows, qtype, swiglu)
    # a warp's int32 plane sums take K w_frags / RW products, each below 2^16: exact up to 2^18 / w_frags
    if k * w_frags > 1 << 18:
        raise ShapeError(f"the int8 planes' sums are exact in int32 up to K = {(1 << 18) // w_frags} at "
                         f"{w_frags} W fragments a block, got {k}")
    if norm is not None and normed is None:
        raise ShapeError("rows_product with a norm writes the normed rows: pass `normed` [M, K]")
    xq, ex, xbad = x_integers(x, qtype, norm, normed, eps, overlap)
    ew, wbad = w_tables
    outs = 4 * w_frags if swiglu else 8 * w_frags
    blocks = -(-rows // outs) * -(-m // (16 * x_frags))
    launch(_rows_module(qtype, int(swiglu), x_frags, w_frags, k // 32).get_function("loom_fixed_rows"), blocks, RW * 32,
           (data, ew, wbad, xq, ex, xbad, x if norm is None else normed, out, *epilogue, np.int64(rows),
            np.int32(k // 32), np.int32(m)), overlap)


def gemv(data: Array, qtype: str, x: Array, out: Array, w_tables: tuple[Array, Array], bias: Array | None = None,
         residual: Array | None = None, swiglu: bool = False, norm: Array | None = None, normed: Array | None = None,
         eps: float = 0.0, overlap: bool = False) -> None:
    """out [M, rows] = (residual +) x [M, K] @ W^T (+ bias), or SwiGLU of its two halves, in the integer
    scheme (fixed.matmul_t's bits, then the epilogue's float32 operations: quant_tiles' epilogues) for M <=
    MAX_ROWS rows of float32 x, C-contiguous, and the stored weight `data` [stored rows, row bytes] with its
    w_exponents `w_tables`. With `norm` (a weight [K]), the product of rms_norm(x, norm, eps)
    (quant_exact.rms_norm's bits): made by each block where `x_source` says so, else by x's integers' launch, which
    writes it to `normed` [M, K]. overlap: programmatic dependent launches (launch.py)."""
    m, k = x.shape
    _check(qtype, k, x)
    if not 0 < m <= MAX_ROWS:
        raise ShapeError(f"gemv takes 1 to {MAX_ROWS} rows of x, got {m}")
    rows, epilogue = _epilogue_args(data, m, out, bias, residual, swiglu)
    if rows == 0:
        return
    if norm is not None:
        _check_norm(norm, normed, x.shape)
    ew, wbad = w_tables
    wpr = gemv_warps(rows)
    module = _module(qtype, int(swiglu), k // 32, wpr, m)
    staged = x_source(m, k, rows) == "block"
    kernel = module.get_function("loom_fixed_gemv_staged" if staged else "loom_fixed_gemv")
    # (at most the blocks resident at once with ONE_WAVE: a second, partial wave of a small grid costs a block's
    # whole time; the grid only shrinks, so x_source's choice stands)
    grid = gemv_grid(rows, wpr, m, _resident_per_sm(kernel) if ONE_WAVE else 0)
    if staged:
        if m > STAGED_ROWS or k > HELD_K:
            raise ShapeError(f"gemv's blocks make the integers of at most {STAGED_ROWS} rows of x over K <= {HELD_K}, "
                             f"got [{m}, {k}]")
        launch(kernel, grid, WARPS * 32,
               (data, ew, wbad, x, out, *epilogue, np.int64(rows), np.int32(k // 32), np.int32(m),
                np.int32(_nibble(qtype)), pointer(norm), np.float32(eps), sum_bits(k)), overlap)
        return
    if norm is not None and normed is None:
        raise ShapeError(f"gemv with a norm over x [{m}, {k}] (x's integers by their own launch) writes the normed "
                         "rows: pass `normed`")
    xq, ex, xbad = x_integers(x, qtype, norm, normed, eps, overlap)
    launch(kernel, grid, WARPS * 32,
           (data, ew, wbad, xq, ex, xbad, x if norm is None else normed, out, *epilogue, np.int64(rows),
            np.int32(k // 32), np.int32(m)), overlap)
