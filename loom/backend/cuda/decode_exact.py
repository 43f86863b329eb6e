"""The attention of a decode step (one new token per sequence) in deterministic mode: one kernel with
the bits of loom/llm/decoder.py's array code, for the recorded deterministic decode step.

Per (sequence, query head), one block of THREADS threads (FEW_THREADS where such blocks are fewer than the
multiprocessors, MANY_THREADS where they are more than twice as many) does what the array code does with
the step's Q/K/V product, each operation with its bits:
1. the head's q and its key/value head's new k (qwen3: the per-head RMSNorm first, with exact.sum's sum
   of squares) through HF's rotate-half RoPE, x * cos + rotated * sin rounded per operation; the first
   query head of each key/value head writes k and v into the KV cache at the position, and every block
   uses its own copy of them (no block waits for another);
2. scores = q . k_j for the keys j = lo .. pos (lo from a sliding window), a thread per key, each the
   exact dot product rounded once (the rounded scheme: K = head_dim), times the float32 scale;
3. ops.softmax: the largest score (NaN wins), mathlib's exp of each score minus it, their exact sum
   (exact.sum's scheme over the n keys), each divided by it;
4. ctx_d = sum_j p_j v_jd, a block's threads / head_dim threads per d sharing the keys, with the scheme the dispatch
   table gives K = n keys: up to ROUNDED_KEYS, each rounded once (the rounded scheme: quant_exact's
   certification and settling, a thread's float64 sum and sum of magnitudes, then a compensated and an
   exact sum where those leave the rounding open); past it the slice scheme 2x1 (exact._matmul_narrow's
   reference arithmetic: p's row in two integer slices of bits_a bits below its largest value, each d's
   values over the keys as integers of bits_b bits below their largest, the two integer sums exact in
   float64 whatever their order, combined and rounded once as the reference does); past CHUNK_KEYS keys
   with the bits of K = CHUNK_KEYS, each chunk of CHUNK_KEYS keys' value in float64, the chunks' values
   added in order and rounded once (exact._matmul_float32's chunks). Rows or columns holding inf or NaN take
   IEEE's special value in both (exact's guard).
The probabilities stay in shared memory, sized by the graph for its cache, up to HELD_KEYS keys; past them in
a workspace in device memory (probability_work), so that a cache of any length records.
Where a batch's heads are too few blocks to fill the device, the paged kernel's split form cuts a long
window over several blocks with the same bits (see split_softmax_values): a head's parts wait for each
other at two barriers, so its grid (one block a multiprocessor at most: split_work) must be resident at
once, which holds for one launch at a time on the device (not beside another such launch on a
concurrent stream, which could hold the multiprocessors its parts need).
Where a batch has many sequences, paged_attention gives each (sequence, key/value head) one block for its
group of query heads instead (decode_exact_group.py: each cached key and value read once for the group;
the same bits; see _grouped for where).
`CUDABackend.decode.attention_exact` is this module. Capturable: sizes as arguments, no sync.
"""
from __future__ import annotations

from functools import cache
from typing import NamedTuple

import cupy
import numpy as np

from .. import Array
from .compile import OPTIONS
from .decode_exact_group import GROUP_MAX, GROUP_SOURCE, group_shared
from .decode_exact_source import KERNELS, SOURCE
from .decode_exact_split import SPLIT_SOURCE
from .exact_reduce import EXACT_ROW_SUM
from .exact_rounded import ROUNDED_DEVICE, _multiprocessors
from .fused import ROW_HELPERS
from .fused_exact import helpers
from .launch import OVERLAP_PROLOGUE, launch
from .quant import pointer
from .quant_exact import _MARK, SETTLE

THREADS = 256
# Where a step's (sequence, head) blocks are fewer than the multiprocessors (a few sequences), each block's
# serial share of the keys is what the step waits for: twice the threads halve it (SmolLM2-135M's shapes
# on an H100: decode after 1,000 tokens 1.5x, after 3,000 1.9x), where at 64 sequences they cost 9%.
FEW_THREADS = 512
# Where they are more than two a multiprocessor (many sequences), blocks of 256 threads (128 registers
# each) run in waves of two a multiprocessor; blocks of 64 threads (96 registers) ten, where the probabilities'
# shared memory allows (head_dim threads for larger heads), the same bits. H200, decode steps at 64 rows against
# blocks of 128 threads: Llama-3.2-1B 2,339 -> 2,277 us, SmolLM2-135M 1,554 -> 1,542, Qwen2-0.5B 2,167 -> 2,192.
MANY_THREADS = 64
ROUNDED_KEYS = 2048         # exact_dispatch.ROUNDED_MAX_K: p @ v over more keys takes the slice scheme
CHUNK_KEYS = 1 << 14        # 2^exact_dispatch.CHUNK_BITS: past it the slice scheme sums chunks of K in order
HELD_KEYS = CHUNK_KEYS      # keys up to which a block a query head holds its probabilities in shared memory
SPLIT_KEYS = 256            # keys a part of a split window takes (windows of more than twice this are split)
PHASES = 12                 # timestamps a block (benchmarks/attention_phases.py: LOOM_PHASE_CLOCK)
# A thread's value loads in flight at once in p v (a block at 300 keys spent ~7 of its ~13 us there, each thread
# waiting out a load round trip per VALUE_LOADS keys; the additions keep their order whatever this is)
VALUE_LOADS = 8
# ... and in the slice scheme's passes over the values (past ROUNDED_KEYS keys). H100, decode_graph_parts.py --whole
# --deterministic --position P, one sequence, us: 16 against 8, SmolLM2-135M at 20,000 / 40,000 positions 4,903 /
# 8,564 -> 4,804 / 8,329, Llama-3.2-1B 9,147 / 16,346 -> 8,939 / 16,045; at 16 / 1,000 positions 1,549 / 2,159 ->
# 1,546 / 2,168 (the same bits: the sums are exact). VALUE_LOADS 16 at 1,000 positions: 2,157 -> 2,169.
SLICE_LOADS = 16
# Windows of up to 32 WARP_SOFTMAX keys take their softmax by the block's first warp alone, each lane holding its
# scores in registers (the block's reductions wait at six barriers); the same bits (0: the block's for every
# window). H100, decode_graph_parts.py --whole --deterministic at position 16, us: SmolLM2-135M Q4_1 804 -> 781,
# Llama-3.2-1B Q4_K 1,279 -> 1,277. Measured and left out: 2, 4 or 8 threads a key for the scores of short windows
# (a chain of D / 8 products a thread where a thread a key waits for D: the phase 1.18 -> 0.80 us alone at 17
# keys), 793 and 1,272 us alone but 793 and 1,305 with the warp's softmax.
WARP_SOFTMAX = 4
MAX_SPLITS = 16
# A block per (sequence, key/value head) for its group of query heads (decode_exact_group), reading each
# cached key and value once for the group, where those blocks are at least 1 / GROUP_FEWEST of the
# multiprocessors (below, a block a query head spreads the work wider). H200, the kernel alone, a block a
# query head -> grouped, us: 64 sequences x 1,000 keys, SmolLM2-135M's heads (9 over 3) 210 -> 117, Qwen2-0.5B's
# (14 over 2) 273 -> 100, Llama-3.2-1B's (32 over 8) 512 -> 258; at 24 keys 9.9 -> 10.2, 10.1 -> 11.0,
# 18.9 -> 10.8; one sequence (3 blocks) at 300 keys 14.5 -> 18.1. Blocks of GROUP_FEW_THREADS threads
# where they are fewer than the multiprocessors, GROUP_THREADS up to three a multiprocessor, then
# GROUP_MANY_THREADS.
GROUPED = True
GROUP_FEWEST = 3
GROUP_FEW_THREADS = 512
GROUP_THREADS = 256
GROUP_MANY_THREADS = 128
# Dynamic shared memory a grouped block may take with its probabilities; past it they go to device memory
# (probability_work). H200, 64-row SmolLM2-135M steps over caches of 8,192 positions (111 KiB held): at position
# 16 1,749 us held against 1,564 in device memory, at position 1,000 5,709 against 4,957.
SHARED_MAX = 48 * 1024


def source(head_dim: int, threads: int, group: int = 0) -> str:
    """The kernels' CUDA source for heads of head_dim and blocks of `threads`; with group, the grouped
    kernel for key/value heads of `group` query heads as well (decode_exact_group)."""
    head = (f"typedef float T;\n#define D {head_dim}\n#define THREADS {threads}\n#define ROUNDED_KEYS {ROUNDED_KEYS}\n"
            f"#define SPLIT_KEYS {SPLIT_KEYS}\n#define PHASES {PHASES}\n#define VALUE_LOADS {VALUE_LOADS}\n"
            f"#define CHUNK_KEYS {CHUNK_KEYS}\n#define SLICE_LOADS {SLICE_LOADS}\n#define WARP_SOFTMAX {WARP_SOFTMAX}\n")
    grouped = f"#define GROUP {group}\n" + GROUP_SOURCE if group else ""
    return (head + helpers() + ROW_HELPERS + EXACT_ROW_SUM + ROUNDED_DEVICE + _MARK + SETTLE + OVERLAP_PROLOGUE
            + SOURCE + SPLIT_SOURCE + KERNELS + grouped)


COMPILE = OPTIONS + ("-std=c++17",)


def _module(head_dim: int, threads: int, group: int = 0):
    return _built(head_dim, threads, group, WARP_SOFTMAX)


@cache
def _built(head_dim: int, threads: int, group: int, warp_softmax: int):
    """(WARP_SOFTMAX keys the cache: tests set it to 0 for the block's softmax)"""
    return cupy.RawModule(code=source(head_dim, threads, group), options=COMPILE)


STATIC_SHARED = 16 * 1024   # above the kernels' own shared arrays (12.4-13.4 KiB at 512 threads)


def unsupported(head_dim: int, max_len: int) -> str | None:
    """Why the kernels cannot take a model's heads, or caches of max_len positions, or None where they can. A
    block holds at most HELD_KEYS probabilities in shared memory (a split window's part at most CHUNK_KEYS;
    past HELD_KEYS a block a query head keeps them in probability_work's workspace), 4 bytes a key, which the
    device must allow. (Their scores' products are the rounded scheme's: the caller checks that exact_dispatch
    gives it to K = head_dim.) A block's threads split evenly over head_dim (SLICES = threads / head_dim)."""
    if head_dim % 32 or THREADS % head_dim or FEW_THREADS % head_dim or max(MANY_THREADS, head_dim) % head_dim:
        return f"head_dim {head_dim} is not 32, 64, 128 or 256 (the attention kernel's blocks split over it)"
    need = _shared(min(max_len, HELD_KEYS)) + STATIC_SHARED
    limit = cupy.cuda.Device().attributes["MaxSharedMemoryPerBlockOptin"]
    if need > limit:
        return (f"a cache of {max_len} positions needs {need // 1024} KiB of shared memory a block in the "
                f"attention kernel, more than this GPU's {limit // 1024} KiB")
    return None


def _keys(max_keys: int) -> int:
    """The keys a row of probabilities holds for caches of max_keys positions."""
    return max(1, max_keys)


def _held(max_keys: int) -> bool:
    """Whether a block a query head holds its probabilities in shared memory for caches of max_keys positions."""
    return _keys(max_keys) <= HELD_KEYS


def _shared(max_keys: int) -> int:
    """The probabilities' dynamic shared memory of a block a query head holding those of max_keys keys."""
    return 4 * _keys(max_keys)


def split_part_keys(n: int, splits: int) -> int:
    """The keys of a part where the split form cuts a window of n > CHUNK_KEYS keys over up to `splits` blocks (the
    kernel's split_part_keys): the least power of two of at least n / splits. The split form takes such a window
    only where this is at most CHUNK_KEYS (each part inside one chunk of the slice scheme): split_max_keys."""
    least = -(-n // splits)
    return 1 << max(0, (least - 1).bit_length())


def split_max_keys(splits: int) -> int:
    """The longest window the split form takes in `splits` parts: splits CHUNK_KEYS keys (longer ones take the
    one-block or grouped form, whose probabilities may be in device memory)."""
    return splits * CHUNK_KEYS


def _kernel(name: str, head_dim: int, blocks: int) -> tuple:
    """(the kernel, its threads) for a launch of `blocks` (sequence, head) blocks."""
    sms = _multiprocessors(cupy.cuda.Device().id)
    threads = FEW_THREADS if blocks < sms else THREADS if blocks <= 2 * sms else max(MANY_THREADS, head_dim)
    return _module(head_dim, threads).get_function(name), threads


class GroupedLaunch(NamedTuple):
    """The grouped kernel's launch: the kernel, its threads, the probabilities' row stride (cap), its dynamic
    shared memory in bytes, and whether the probabilities are held in it (else in probability_work's workspace)."""
    kernel: object
    threads: int
    cap: int
    shared: int
    held: bool


def _grouped(batch: int, heads: int, kv_heads: int, head_dim: int, max_keys: int) -> GroupedLaunch | None:
    """The launch for a paged step where a key/value head's query heads take one block
    (decode_exact_group), or None where they do not: GROUPED off, fewer than two or more than GROUP_MAX heads a
    group, or too few blocks (GROUP_FEWEST)."""
    group, blocks = heads // kv_heads, batch * kv_heads
    sms = _multiprocessors(cupy.cuda.Device().id)
    if not GROUPED or group < 2 or group > GROUP_MAX or blocks * GROUP_FEWEST < sms:
        return None
    threads = GROUP_FEW_THREADS if blocks < sms else GROUP_THREADS if blocks < 3 * sms else GROUP_MANY_THREADS
    threads = max(threads, head_dim)
    cap = _keys(max_keys)
    held = group_shared(group, head_dim, threads, cap, True) <= SHARED_MAX
    kernel = _module(head_dim, threads, group).get_function("loom_exact_paged_decode_attention_group")
    return GroupedLaunch(kernel, threads, cap, group_shared(group, head_dim, threads, cap, held), held)


def probability_work(batch: int, heads: int, kv_heads: int, head_dim: int, max_keys: int,
                     have: Array | None = None) -> Array | None:
    """The probabilities in device memory (float32, batch x heads x max_keys, flat) where paged_attention's
    unsplit launch for these sizes (a block per key/value head: _grouped; else a block per query head past
    HELD_KEYS) does not hold them in shared memory, else None. A launch uses it alone: recordings that
    replay one after another on one stream may share one. have: such a workspace, whose start is returned
    where it is large enough (None: a new one)."""
    grouped = _grouped(batch, heads, kv_heads, head_dim, max_keys)
    if grouped.held if grouped is not None else _held(max_keys):
        return None
    size = batch * heads * _keys(max_keys)
    if have is not None and have.dtype == np.float32 and have.size >= size:
        return have[:size]
    return cupy.empty(size, dtype=np.float32)


class SplitWork(NamedTuple):
    """The workspace of paged_attention's split windows (see loom_exact_paged_decode_attention_split):
    probabilities [blocks, cap], each part's statistics [blocks, splits, 3], largest |v| [blocks, splits, D]
    and sums [blocks, splits, 2, D], and a counter per (sequence, head) block, zero between launches."""
    splits: int
    p: Array
    stats: Array
    vtop: Array
    sums: Array
    counters: Array


def split_work(batch: int, heads: int, head_dim: int, max_keys: int, splits: int | None = None) -> SplitWork | None:
    """The workspace for paged_attention over `batch` sequences of `heads` query heads and windows of at most
    max_keys keys, None where the batch's heads are blocks enough to fill the device. splits: parts a long
    window is cut into, by default as many as take the blocks to one a multiprocessor (up to MAX_SPLITS):
    a group's parts wait for each other, so the whole grid must be resident at once. A launch uses it
    alone: one per recorded graph (or stream)."""
    blocks = batch * heads
    sms = _multiprocessors(cupy.cuda.Device().id)
    if splits is None:
        splits = min(MAX_SPLITS, sms // blocks)
    if splits <= 1:
        return None
    if blocks * splits > sms:
        raise ValueError(f"split_work: {blocks} blocks in {splits} parts exceed the {sms} multiprocessors "
                         "(a group's parts must all be resident)")
    cap = _keys(max_keys)
    return SplitWork(splits, cupy.empty((blocks, cap), dtype=np.float32),
                     cupy.empty((blocks, splits, 3), dtype=np.float64),
                     cupy.empty((blocks, splits, head_dim), dtype=np.float32),
                     cupy.empty((blocks, splits, 2, head_dim), dtype=np.float64), cupy.zeros(blocks, dtype=np.uint32))


def paged_attention(qkv: Array, cache_k: Array, cache_v: Array, out: Array, cos: Array, sin: Array,
                    norm: Array | None, pos: Array, tables: Array, block_size: int, heads: int, window: int | None,
                    scale: float, eps: float, factor: float, overlap: bool = False, *, max_keys: int,
                    split: SplitWork | None = None, p_work: Array | None = None) -> None:
    """decode.paged_attention's operation with deterministic mode's bits (out float32 only) for sequences at
    positions below max_keys (the most keys a window holds), which sizes the probabilities' rows. split:
    split_work's workspace for these sizes, to cut windows of more than 2 SPLIT_KEYS keys (and at most
    split_max_keys) over several blocks, with the same bits (None: one block a head, or a block a key/value head
    where _grouped takes it; the caller keeps longer windows off a split launch). p_work: probability_work's
    workspace for these sizes, where it gives one."""
    _, kv_heads, D = cache_k.shape
    B = tables.shape[0]
    row, col = (s // tables.itemsize for s in tables.strides)
    args = (qkv, cache_k, cache_v, out, cos, sin, pointer(norm), pos, tables, np.int64(row), np.int64(col),
            np.int32(block_size), np.int32(heads), np.int32(kv_heads), np.int32(window or 0), np.float32(scale),
            np.float32(eps), np.int32(53 - max(0, (D - 1).bit_length())), np.float64(factor))
    if split is None:
        grouped = _grouped(B, heads, kv_heads, D, max_keys)
        cap = _keys(max_keys)
        held = grouped.held if grouped is not None else _held(max_keys)
        if not held and (p_work is None or p_work.dtype != np.float32 or p_work.size < B * heads * cap):
            raise ValueError(f"paged_attention: {B} sequences of {heads} heads over {cap} keys take probability_work's "
                             f"workspace of {B * heads * cap} float32; given "
                             f"{'none' if p_work is None else f'{p_work.size} {p_work.dtype}'}")
        work = (np.int64(cap), pointer(None if held else p_work))
        if grouped is not None:
            launch(grouped.kernel, B * kv_heads, grouped.threads, args + work, overlap, shared=grouped.shared)
            return
        kernel, threads = _kernel("loom_exact_paged_decode_attention", D, B * heads)
        launch(kernel, B * heads, threads, args + work, overlap, shared=_shared(max_keys) if held else 0)
        return
    splits, cap = split.splits, split.p.shape[1]
    if split.p.shape[0] != B * heads or split.vtop.shape != (B * heads, splits, D) or cap < _keys(max_keys):
        raise ValueError(f"paged_attention: a split workspace for {split.p.shape[0]} blocks of {split.vtop.shape[2]} "
                         f"and {cap} keys; these sizes take {B * heads}, {D} and {_keys(max_keys)}")
    kernel, threads = _kernel("loom_exact_paged_decode_attention_split", D, B * heads * splits)
    # a block holds the probabilities of a part (or of a window too short to split; past CHUNK_KEYS keys, parts of
    # split_part_keys, up to split_max_keys)
    keys = _keys(max_keys)
    part = max(2 * SPLIT_KEYS, -(-min(keys, CHUNK_KEYS) // splits))
    if keys > CHUNK_KEYS:
        part = max(part, split_part_keys(min(keys, split_max_keys(splits)), splits))
    launch(kernel, B * heads * splits, threads,
           args + (split.p, split.stats, split.vtop, split.sums, split.counters, np.int32(splits), np.int64(cap)),
           overlap, shared=_shared(part))
