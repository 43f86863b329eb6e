"""Spec 5's integer attention on the GPU (branch wip/spec5-attention): the scheme of loom/kernels/exact/attention.py,
its bits, on the int8 tensor cores, for a decoder's causal rows (a prompt's chunk or decode steps), as
kernels.exact.attention.causal takes them.

Three kernels:
- `loom_int_rows`: a warp a row of q, k or v (D <= 128 values) makes the row's exponent e, its inf/NaN flag and
  its integers as int16 (fixed.row_exponents and to_integers' arithmetic, quant_fixed_source.SCALARS).
- `loom_int_attend`: a block is 4 warps over 64 query rows of one key/value head's group (each warp 16 rows; one
  warp where there are 16 rows or fewer: a decode step's), walking the rows' keys twice in tiles of 64 (k and v
  int16 in shared memory, padded rows, copied by cp.async one tile ahead):
  1. the exact scores S (int8 planes of q and k, four m16n8k32 products, 65536 HH + 256 (HL + LH) + LL); each
     row's largest allowed S 2^(ek - 30) (a float64, exact), its values' largest exponent E and its inf/NaN flag;
  2. the scores again, then per score d = (max - S 2^(ek - 30)) 2^eq scale (float64, rounded as the CPU's two
     operations: scaling by 2^eq is exact), p = exp_fixed(d) by integer operations (a table in shared memory),
     its row sum in int64, and w (v's scale folded in, P_BITS bits) straight from the scores' accumulator layout
     into the A operand of w v: the keys of a 32-key step are ordered as a thread holds them (the sum over keys
     does not care), and v's tile is read by ldmatrix.trans in that same order. The scores' k dimension (d of q
     and k) is permuted the same way, to read k by ldmatrix.
  Then each entry's float64 quotient num / den scaled by 2^(E - P_BITS - 15 + 31), rounded to float32.
  Where blocks would leave multiprocessors idle (short prompts, decode steps), `splits` blocks share a block's
  keys: one launch writes each split's pass-1 partials (largest score, E, inf/NaN; its module compiled for that
  alone, TOP_ONLY: a third of the registers, twice the blocks a multiprocessor), a second combines them and
  writes each split's exact sums, and `loom_int_finish` adds those (exact integers: any split, the same bits).
  The prompt chunks of several sequences in one step share one launch instead (compiled with ITEMS: each block
  reads its sequence's rows, sizes and offsets from a table; no splits): 64 new 32-token prompts are one launch a
  layer, not 64.

In a whole prompt (H200, 2026-11-29, prefill_kernels.py --deterministic, one chunk): 506 us a layer of Llama-3.2-1B's
2,048-token prompt (fast mode's flash kernel 187; 623 before the exp's constants were compiled in and the masked keys
zeroed without a branch), 161 us a layer of SmolLM2-135M's (two launches, 4 splits by the longest walk, and their
finish; 183 with 2 splits, 224 before the first launch had its own module). Measured
earlier (H200, Llama-3.2-1B's attention, 8 key/value heads of 4, D 64, a layer): 2,048-token prompt 186-195 us
(spec 4's four float64 kernels 465; the first version of this one 527: ldexp a score, the exp table in global
memory, w and the planes staged a byte at a time), 512 tokens 84 us (165; 214). Nsight Compute at 2,048 tokens:
latency-bound (issue slots 37% busy; stalls mostly fixed-latency waits on the mma chains, 15% instruction fetch;
12 warps an SM at 168 registers and 40 KB of shared memory).
"""
from __future__ import annotations

from functools import cache
from typing import NamedTuple

import cupy
import numpy as np

from ...errors import ShapeError
from .. import Array
from . import int_attention_splits
from .compile import OPTIONS
from .int_attention_source import EXP_FIXED, SOURCE
from .int_attention_splits import BKEYS
from .kept_tables import KeptTables
from .launch import multiprocessors as _multiprocessors
from .quant import pointer
from .quant_fixed_source import SCALARS

WARPS = 0                       # warps a block (16 query rows each): 0 chooses 4, or 1 for 16 rows or fewer
SPLITS = 0                      # blocks sharing a block's keys (0: _splits chooses)
# The splits (_splits) cut the longest walk of keys to SPLIT_SHARE % of a block slot's share of all the blocks' tiles
# (the grid's tiles over the multiprocessors times the blocks each holds): a causal prompt's last rows walk every key, so
# a grid of enough blocks can still wait on its longest. H200, 2026-11-29, prefill_kernels.py --deterministic, ms of
# all kernels, the rule before (enough blocks for 3 a multiprocessor) / SPLIT_SHARE 100 / 70, 2,048 tokens: SmolLM2-135M
# 12.5 / 12.1 / 11.8 (2 / 3 / 4 splits), Qwen2-0.5B 18.5 / 18.2 / 17.9 (1 / 2 / 3), Llama-3.2-1B 25.4 / 25.5 / 25.3
# (1 / 1 / 2); Llama-3.2-1B 1,024 11.8 / 11.9 / 11.9, 512 6.7 at each, SmolLM2-135M 512 3.7 at each
SPLIT_SHARE = 70
# 64-key tiles a split walks at least: SPLIT_TILES where the splits' blocks fill more than one wave, SPLIT_TILES_FEW
# where they fit in one (H200, 2026-11-29, prefill_kernels.py --deterministic, ms of all kernels, two runs each, 2 / 4:
# SmolLM2-135M 1,024 tokens 6.3 (8 splits) / 6.0-6.1 (4), Llama-3.2-1B 512 6.8 (4) / 6.7 (2), Qwen2-0.5B 1,024 9.0 (5)
# / 8.9 (4), SmolLM2-135M 512 3.7 (4) / 3.9 (2): its 72 blocks a wave short of the multiprocessors' 396 places)
SPLIT_TILES = 4
SPLIT_TILES_FEW = 2
SPLIT_MID = 0                   # 1: HL and LH in separate accumulators (the same bits; H200, 2,048-token prompts: no gain)
# several sequences share one launch (no splits) unless it would have fewer blocks than ITEMS_FROM (0: the
# multiprocessors) while a sequence has more than ITEMS_TILES tiles of keys (causal_paged: then a launch each, split)
ITEMS_FROM = 0
ITEMS_TILES = 32


@cache
def _module(head_dim: int, warps: int, split_mid: int, bits: int, p_bits: int, log2e: int, ln2: int,
            items: int = 0, top: int = 0) -> cupy.RawModule:
    """(bits, p_bits, log2e, ln2: the scheme's, kernels.exact.attention.SCHEME's, compiled in: the exp's products by
    immediates, not by constants loaded again for every score; items: loom_int_attend takes a table of its blocks'
    sequences, _launch_items'; top: loom_int_attend is the splits' first launch alone, mode 1, TOP_ONLY)"""
    head = (f"#define D {head_dim}\n#define WARPS {warps}\n#define SPLIT_MID {split_mid}\n#define BITS {bits}\n"
            f"#define P_BITS {p_bits}\n#define LOG2E_30 {log2e}u\n#define LN2_15 {ln2}u\n#define ITEMS {items}\n"
            f"#define TOP_ONLY {top}\n")
    return cupy.RawModule(code=head + SCALARS + EXP_FIXED + SOURCE, options=OPTIONS + ("-std=c++17",))


def _shared_bytes(head_dim: int, top: bool = False) -> int:
    """loom_int_attend's: k's and v's tiles (top: k's alone, its last part), the keys' scales and flags, the exp table"""
    return (2 if top else 4) * BKEYS * (head_dim + 8) * 2 + 2 * BKEYS * (8 + 8) + 256 * 4


def _integers(a: Array, module: cupy.RawModule, rows: int | None = None, idx: Array | None = None,
              mapping: tuple = ()) -> tuple:
    """(int16 integers [rows, D], int32 exponents [rows], int32 inf/NaN flags [rows]) of float32 rows of a [..., D]:
    every row in order (rows None), or row (g A + a) B + b from a's row g sg + a sa + (idx[b] or b) sb (mapping
    (A, B, sg, sa, sb); idx int64 on the device or None)."""
    D = a.shape[-1]
    if rows is None:
        rows = a.size // D
        mapping = (1, max(rows, 1), 0, 0, 1)
    xi = cupy.empty((rows, D), dtype=np.int16)
    ex = cupy.empty(rows, dtype=np.int32)
    bad = cupy.empty(rows, dtype=np.int32)
    if rows:
        module.get_function("loom_int_rows")(((rows + 3) // 4,), (128,),
                                             (a, xi, ex, bad, np.int64(rows), pointer(idx),
                                              *(np.int64(m) for m in mapping)))
    return xi, ex, bad


def causal(q: Array, k: Array, v: Array, per_group: int, first: int, lo: int, window: int | None, scale: float,
           table: np.ndarray, consts: np.ndarray) -> Array | None:
    """protocols.IntegerAttention's causal: attend()'s rows, or None for heads past 128 (the array code)."""
    return attend(q, k, v, per_group, first, lo, window, scale, table, consts) if q.shape[-1] <= 128 else None


def causal_paged(q: Array, cache_k: Array, cache_v: Array, key_slots: Array, items: tuple, per_group: int,
                 window: int | None, scale: float, table: np.ndarray, consts: np.ndarray, out: Array) -> bool:
    """protocols.IntegerAttention's causal_paged: causal()'s bits for the rows of several sequences, read and written
    in the decoder's layouts, no copies (q float32 [N, H, D], the caches [slots, KV, D], key_slots int64 [S, n_max],
    out float32 [N, H D], each C-contiguous; items[s] = (first row, T, first position, lo, keys) of sequence s, its
    keys key_slots[s, :keys]). Several sequences share one launch (_launch_items), unless their blocks would leave
    multiprocessors idle while one walks more than ITEMS_TILES tiles of keys (a few decode rows over long contexts):
    then each is a launch of its own, its keys split over blocks. False where D is not a multiple of 32 up to 128
    (causal() pads those)."""
    N, H, D = q.shape
    KV = cache_k.shape[1]
    if (D > 128 or D % 32 or H % KV or H // KV != per_group or cache_k.shape[1:] != (KV, D)
            or cache_v.shape != cache_k.shape or out.shape != (N, H * D) or key_slots.dtype != np.int64
            or key_slots.ndim != 2
            or any(a.dtype != np.float32 or not a.flags.c_contiguous for a in (q, cache_k, cache_v, out))
            or not key_slots.flags.c_contiguous):
        return False
    if key_slots.shape[0] < len(items):
        raise ShapeError(f"integer attention: {len(items)} sequences with key slot lists for {key_slots.shape[0]}")
    for row, T, first, lo, n in items:
        if row < 0 or T < 0 or row + T > N or n > key_slots.shape[1]:
            raise ShapeError(f"integer attention: a sequence's rows {row} .. {row + T} and its {n} keys do not fit "
                             f"q's {N} rows and key slot lists of {key_slots.shape[1]}")
        _check_sizes(KV, T, first, lo, n)
    live = tuple((s, *(int(v) for v in items[s])) for s in range(len(items)) if items[s][1])
    if len(live) > 1 and not _each_alone(live, per_group, KV):
        _launch_items(q, cache_k, cache_v, key_slots, live, per_group, window, scale, table, consts, out)
        return True
    for s, row, T, first, lo, n in live:
        rows = per_group * T
        key = (D, _warps(rows), SPLIT_MID, *_bits(consts))
        module = _module(*key)
        parts = _integers(q[row:row + T], module, KV * rows, None, (per_group, T, per_group, 1, H))  # (g R + r) T + t
        for pool in (cache_k, cache_v):                                                               # row g n + j
            parts += _integers(pool, module, KV * n, key_slots[s, :n], (1, n, 1, 0, KV))
        _launch(key, parts, KV, rows, n, D, per_group, first, lo, window, scale, table, out[row:row + T],
                (per_group, 1, H))
    return True


def _each_alone(live: tuple, per_group: int, KV: int) -> bool:
    """Whether these sequences (causal_paged's live items) run a launch each: their one launch would leave
    multiprocessors idle (fewer blocks than ITEMS_FROM, 0: the multiprocessors) while a block walks more than
    ITEMS_TILES tiles of keys, which a launch of its own splits over several blocks."""
    warps = _warps(max(per_group * it[2] for it in live))
    blocks = KV * sum(-(-per_group * it[2] // (16 * warps)) for it in live)
    return blocks < (ITEMS_FROM or _multiprocessors()) and max(it[5] for it in live) > ITEMS_TILES * BKEYS


def _launch_items(q: Array, cache_k: Array, cache_v: Array, key_slots: Array, items: tuple, per_group: int,
                  window: int | None, scale: float, table: np.ndarray, consts: np.ndarray, out: Array) -> None:
    """causal_paged's rows of several sequences in one loom_int_attend launch (items: (its row of key_slots, first
    row, T, first position, lo, n) each): q's integers for every row at (g R + r) N + (its row), k's and v's for every
    sequence's keys one after another (key_slots' rows compacted), and a table of each block's rows, sizes and
    offsets (_ItemBlocks, made before a recording and kept by it)."""
    N, H, D = q.shape
    KV = cache_k.shape[1]
    warps = _warps(max(per_group * it[2] for it in items))
    plan = _item_blocks(items, per_group, 16 * warps, key_slots.shape[1])
    module = _module(D, warps, SPLIT_MID, *_bits(consts), items=1)
    parts = _integers(q, module, KV * per_group * N, None, (per_group, N, per_group, 1, H))
    slots = cupy.take(key_slots.reshape(-1), plan.keys)
    for pool in (cache_k, cache_v):
        parts += _integers(pool, module, KV * plan.n, slots, (1, plan.n, 1, 0, KV))
    kernel, shared = _attend_kernel(module, D)
    zero = np.int32(0)                                  # (the sizes each block reads from its entry)
    kernel((plan.count, KV, 1), (32 * warps,),
           (*parts, device_table(table), out, *(np.int32(m) for m in (per_group, 1, H)), zero, zero, zero, zero,
            zero, np.int32(window or 0), np.float64(np.float32(scale)),
            np.int32(0), np.int32(1), *(np.uint64(0),) * 4, plan.blocks, np.int32(N), np.int32(plan.n)),
           shared_mem=shared)


class _ItemBlocks(NamedTuple):
    blocks: Array           # int32 [count, 8]: a block's first row, rows, keys, T, first position, lo, q's row, its key
    count: int
    keys: Array             # int64: the flat indices of the sequences' key slots in key_slots [S, n_max], in order
    n: int


def _item_blocks(items: tuple, per_group: int, rows_a_block: int, n_max: int) -> _ItemBlocks:
    """The device tables of _launch_items for these items, kept (KeptTables: a prompt step's layers and its replays
    read the same). The sequences with the most keys first, and in each its last rows first."""
    def make() -> _ItemBlocks:
        offsets = np.concatenate([[0], np.cumsum([it[5] for it in items])])
        entries = []
        for i in sorted(range(len(items)), key=lambda i: -items[i][5]):
            _, row, T, first, lo, n = items[i]
            rows = per_group * T
            for b in reversed(range(-(-rows // rows_a_block))):
                entries.append((b * rows_a_block, rows, n, T, first, lo, row, offsets[i]))
        keys = np.concatenate([s * n_max + np.arange(n) for s, _, _, _, _, n in items]).astype(np.int64)
        return _ItemBlocks(cupy.asarray(np.array(entries, dtype=np.int32)), len(entries), cupy.asarray(keys),
                           int(offsets[-1]))
    return _KEPT_ITEM_BLOCKS.get((items, per_group, rows_a_block, n_max), make)


# (an eager step of several sequences makes one too, at its positions: few are kept, each its sequences' key indices)
_KEPT_ITEM_BLOCKS = KeptTables(32, "the integer attention")


def attend(q: Array, k: Array, v: Array, per_group: int, first: int, lo: int, window: int | None, scale: float,
           table: np.ndarray, consts: np.ndarray) -> Array:
    """float32 [G, per_group T, D]: kernels.exact.attention.causal's bits for CuPy arrays (q [G, per_group T,
    D], k and v [G, n, D] float32; D up to 128, padded with zeros to a multiple of 32); table and consts: the
    scheme's (kernels.exact.attention.SCHEME: its exp table; LOG2E_30, LN2_15, P_BITS, BITS)."""
    G, rows, D = q.shape
    n = k.shape[1]
    if D > 128 or k.shape != (G, n, D) or v.shape != (G, n, D) or rows % per_group:
        raise ShapeError(f"the integer attention kernel takes q [G, R T, D] and k, v [G, n, D] with D up to 128, got "
                         f"{q.shape}, {k.shape}, {v.shape} (R = {per_group})")
    _check_sizes(G, rows // per_group, first, lo, n)
    if G == 0 or rows == 0:
        return cupy.empty((G, rows, D), dtype=np.float32)
    if D % 32:                  # zeros to a multiple of 32: the same exponents and integer sums, so the same bits
        wide = [cupy.pad(a.astype(np.float32, copy=False), ((0, 0), (0, 0), (0, 32 - D % 32))) for a in (q, k, v)]
        return cupy.ascontiguousarray(attend(*wide, per_group, first, lo, window, scale, table, consts)[:, :, :D])
    out = cupy.empty((G, rows, D), dtype=np.float32)
    key = (D, _warps(rows), SPLIT_MID, *_bits(consts))
    parts = []
    for a in (q, k, v):
        parts += _integers(cupy.ascontiguousarray(a, dtype=np.float32), _module(*key))
    _launch(key, parts, G, rows, n, D, per_group, first, lo, window, scale, table, out,
            (rows, rows // per_group, 1))
    return out


def _check_sizes(G: int, T: int, first: int, lo: int, n: int) -> None:
    if G > 65535:
        raise ShapeError(f"the integer attention kernel takes at most 65535 key/value head groups a call, got {G}")
    if max(first + T, lo + n) >= 1 << 30:
        raise ShapeError(f"the integer attention kernel takes positions below 2^30, got rows from {first} and keys "
                         f"from {lo} ({n} keys)")


def _warps(rows: int) -> int:
    return WARPS or (1 if rows <= 16 else 4)


def _bits(consts: np.ndarray) -> tuple[int, int, int, int]:
    """(bits, p_bits, log2e, ln2) of the scheme's constants (LOG2E_30, LN2_15, P_BITS, BITS)."""
    return int(consts[3]), int(consts[2]), int(consts[0]), int(consts[1])


def _launch(key: tuple, parts: list, G: int, rows: int, n: int, D: int, per_group: int, first: int,
            lo: int, window: int | None, scale: float, table: np.ndarray, out: Array,
            out_map: tuple[int, int, int]) -> None:
    """loom_int_attend over the integers `parts` (q's [G rows], k's and v's [G n]: integers, exponents, flags), its
    splits' partials and their finish where the grid would leave multiprocessors idle; row a T + t of group g into
    row g osg + a osa + t osb of out's rows of D (out_map (osg, osa, osb)); key: _module's arguments."""
    module = _module(*key)
    warps = _warps(rows)
    T = rows // per_group
    blocks = -(-rows // (16 * warps))
    splits = SPLITS or _splits(G, rows, n, T, first, lo, window or 0, warps, D)
    kernel, shared = _attend_kernel(module, D)
    omap = tuple(np.int32(m) for m in out_map)
    args = (*parts, device_table(table), out, *omap, np.int32(rows), np.int32(n), np.int32(T), np.int32(first),
            np.int32(lo), np.int32(window or 0), np.float64(np.float32(scale)))
    if splits == 1:
        kernel((blocks, G, 1), (32 * warps,), args + (np.int32(0), np.int32(1)) + (np.uint64(0),) * 4,
               shared_mem=shared)
        return
    entries = G * rows * splits
    wtop, wflags = cupy.empty(entries, np.float64), cupy.empty(2 * entries, np.int32)
    wden, wnum = cupy.empty(entries, np.uint64), cupy.empty(entries * D, np.int64)
    top, top_shared = _attend_kernel(_module(*key, top=1), D, top=True)
    for mode, (launch, size) in ((1, (top, top_shared)), (2, (kernel, shared))):
        launch((blocks, G, splits), (32 * warps,),
               args + (np.int32(mode), np.int32(splits), wtop, wflags, wden, wnum), shared_mem=size)
    module.get_function("loom_int_finish")((-(-(G * rows * D) // 256),), (256,),
                                           (wflags, wden, wnum, out, *(np.int64(m) for m in out_map), np.int64(rows), np.int64(T),
                                            np.int64(G * rows * D), np.int32(splits)))


def _attend_kernel(module: cupy.RawModule, D: int, top: bool = False) -> tuple:
    """(loom_int_attend, its dynamic shared memory bytes), allowed that much (top: a TOP_ONLY module's)."""
    kernel = module.get_function("loom_int_attend")
    shared = _shared_bytes(D, top)
    if kernel.max_dynamic_shared_size_bytes < shared:
        kernel.max_dynamic_shared_size_bytes = shared
    return kernel, shared


def _splits(G: int, rows: int, n: int, T: int, first: int, lo: int, window: int, warps: int, D: int) -> int:
    """int_attention_splits.splits with this module's settings and the device's multiprocessors."""
    return int_attention_splits.splits(G, rows, n, T, first, lo, window, warps, D, _multiprocessors(), SPLIT_SHARE,
                                       SPLIT_TILES, SPLIT_TILES_FEW)


_TABLES: dict = {}


def device_table(table: np.ndarray) -> Array:
    """The exp table on the device (int64), made once (recordings read it, so it is never made inside one)."""
    key = table.tobytes()
    if key not in _TABLES:
        _TABLES[key] = cupy.asarray(table, dtype=np.int64)
    return _TABLES[key]
