"""Spec 5's integer attention for the recorded decode step (branch wip/spec5-attention): the scheme of
loom/kernels/exact/attention.py, its bits, for one new token per sequence over a paged KV cache, with the
interface of decode_exact (paged_graph takes this module as its attention where decoder.INTEGER_ATTENTION is on).

A block per (sequence, GROUP query heads): a key/value head's group where the batch's (sequence, key/value head)
blocks fill the device or blocks of one query head would take more than two waves (each cached row read once
for the group), else one query head (heads_a_block: more blocks, each a shorter chain). KT threads (256 for
head_dim up to 64, else 64):
1. the heads' q and the new k (qwen3: each after its RMSNorm) through RoPE, and v, as decode_exact's head_vector
   makes them (spec 4's bits, which spec 5 keeps); the key/value head's first block writes k and v into the cache;
2. each q row's exponent and integers (a warp a row: fixed.row_exponents, to_integers), held as byte pairs for
   dp2a;
3. pass 1, tiles of KT keys, TPK lanes a key (about 16 values each, lanes_per_key), rounds of KT / TPK keys, each
   lane's part of the key and value rows read into registers (the first round's before the wait for the previous
   kernel, the later rounds' prefetched into L1 then): the row's exponent from an
   integer maximum of its bits (the CPU's _row_exponent), its integers (one fma each for a finite row), the GROUP
   exact integer scores (dp2a: the key's int16 pairs against q's low and high bytes, exact in int32 for
   head_dim <= 128; the lanes' partial sums joined by shuffles) as S 2^(ek - 30); each head's largest, the
   values' largest exponent E and the inf/NaN flag, reduced over the block;
4. pass 2, the tiles again (a share of one tile is not read again: its scores, values' integers and exponents
   were kept in shared memory in pass 1): per key and head
   d = (max - S 2^(ek - 30)) 2^eq scale (float64: the CPU's two operations, scaling by 2^eq exact),
   p = exp_fixed(d) (the table in shared memory), its int64 sum, w = p with v's scale folded in at P_BITS bits;
   the value's integers into shared memory; then each (head, d) entry adds its tile's w v in int64 (small
   blocks: over WV_SLICES slices of the keys, added after);
5. each entry's quotient num / den scaled by 2^(E - P_BITS - 15 + 31), rounded to float32 (NaN where the row
   or an allowed key or value holds inf or NaN).
Where a batch's blocks are too few to fill the device (split_work), steps past 2 SPLIT_KEYS positions replay a
second recording whose windows are cut over `splits` blocks each, in the same launch: each split writes its
pass-1 maxima, the splits meet at a barrier (decode_exact's group_barrier: the grid is kept resident, a block a
multiprocessor at most) and take the window's, each writes its exact sums, and the last to finish adds them and
divides.
Every sum is an exact integer sum and every maximum order-free, so neither the threads' order of the keys nor
the split changes a bit: the CPU's decode rows (backend/cpu/attend_integer._step_rows, _rows with a window) give
the same. Capturable: sizes as arguments, each sequence's position and block table read on the device, no sync.
"""
from __future__ import annotations

from functools import cache
from typing import NamedTuple

import cupy
import numpy as np

from ...errors import ShapeError
from .. import Array
from . import decode_exact
from .int_attention import device_table
from .int_attention_source import EXP_FIXED
from .int_decode_source import SOURCE as _SOURCE
from .launch import launch, resident_per_sm
from .launch import multiprocessors as _multiprocessors
from .quant_fixed_source import SCALARS

# a block's threads, keys a tile (None: 256 for head_dim up to 64, else 64). H200, SmolLM2-135M Q4_1 recorded steps
# (decode_graph_parts.py --whole --deterministic), us, 128 / 256 threads: position 16 765-773 / 775, 100 892-906 / 826,
# 200 926-944 (split form, SPLIT_KEYS 32-64) / 928 (one block a head); spec 4's 776, 851, 950
THREADS = None
GROUP_MAX = 16                  # query heads a key/value head may have
MAX_HEAD = 128                  # head_dim at most this (the int32 dp2a sums' bound), a multiple of 4
HEADS_A_BLOCK = None            # a block's query heads (None: heads_a_block; it must divide the group)
# waves of one-head blocks past which a block takes the group. H200, Qwen2-0.5B's shape (14 heads over 2, head_dim 64:
# 264 one-head blocks resident), recorded deterministic steps at position 48 (decode_graph_parts.py --whole), us, one
# head / the group a block, each pair in one sitting: 64 rows (896 one-head blocks, 3.4 waves) 1,999 / 1,810 and
# 2,019 / 1,829 (2,211 / 1,913 at position 96); 48 rows 1,689 / 1,630; 40 rows (2.1 waves) 1,672 / 1,635; 32 rows
# (1.7 waves) 1,407 / 1,388 and 1,369 / 1,436; 16 rows 1,073 / 1,203
ONE_HEAD_WAVES = 2
LANES = None                    # a key's lanes in the passes (None: lanes_per_key)
LANES_MAX = 8
PHASE_STOP = 0                  # (timing, unsplit launches only: 1-4 return after that phase; 0 runs them all)
# windows past twice this take the split form where split_work gives one (H200, as above, 256 threads: position 300
# split 1,044 us, spec 4 1,061; position 1,000 at 128 threads 1,071 against 1,607)
SPLIT_KEYS = 128
MAX_SPLITS = 16
CHUNK_KEYS = decode_exact.CHUNK_KEYS


def unsupported(head_dim: int, max_len: int) -> str | None:
    """Why the kernel cannot take a model's heads, or None where it can (caches of any length: the scheme's own
    bound on windows is the caller's, paged_graph.unsupported)."""
    if head_dim % 4 or head_dim > MAX_HEAD:
        return f"head_dim {head_dim} is not a multiple of 4 up to {MAX_HEAD} (spec 5's decode attention kernel)"
    return None


class SplitWork(NamedTuple):
    """The split form's workspace (split_work makes it): each split's largest scores [B heads splits] float64, its
    values' largest exponent and inf/NaN flag [B heads splits, 2] int32, its exact sums [B heads splits, D] int64
    and [B heads splits] uint64 (sized by query heads: at least a block's heads times its blocks), and each
    block group's arrival counter [B heads] (zero between launches)."""
    splits: int
    top: object
    flags: object
    num: object
    den: object
    counters: object


def split_work(batch: int, heads: int, head_dim: int, max_keys: int = 0, splits: int | None = None) -> SplitWork | None:
    """The workspace of steps whose windows past 2 SPLIT_KEYS keys are cut over `splits` blocks a block's heads
    (one launch: the splits of a window meet at a barrier, their largest scores exchanged, and the last to finish
    adds their exact sums), or None where the batch's blocks (at most batch x heads) leave no room for two splits
    each. The splits of a window wait for each other, so the whole grid must be resident: at most a block a
    multiprocessor (decode_exact.split_work's rule; a launch uses the workspace alone). The same bits for any
    split."""
    blocks, sms = batch * heads, _multiprocessors()
    if splits is None:
        splits = min(MAX_SPLITS, sms // max(1, blocks))
    if splits < 2:
        return None
    if blocks * splits > sms:
        raise ValueError(f"split_work: {blocks} blocks in {splits} splits exceed the {sms} multiprocessors (a "
                         "window's splits must all be resident)")
    n = blocks * splits
    return SplitWork(splits, cupy.empty(n, np.float64), cupy.empty(2 * n, np.int32), cupy.empty(n * head_dim, np.int64),
                     cupy.empty(n, np.uint64), cupy.zeros(blocks, np.uint32))


def split_max_keys(splits: int) -> int:
    """(decode_exact's interface) the longest window the split form takes: any."""
    return 1 << 62


def probability_work(*args: object, **kwargs: object) -> None:
    """(decode_exact's interface) no workspace: the probabilities are made a tile at a time."""
    return None


def heads_a_block(batch: int, heads: int, kv_heads: int, resident: int = 1 << 62) -> int:
    """A block's query heads: a key/value head's group, its keys and values read once for them all, where the
    batch's (sequence, key/value head) blocks fill the device, or where a block a query head would take more than
    ONE_HEAD_WAVES waves of `resident` blocks (the one-head kernel's blocks the device holds at once); else one (a
    block a query head: more blocks, each with a shorter chain of work; the same bits)."""
    if HEADS_A_BLOCK is not None:
        return HEADS_A_BLOCK
    many = batch * kv_heads >= _multiprocessors() or batch * heads > ONE_HEAD_WAVES * resident
    return heads // kv_heads if many else 1


def _threads(head_dim: int) -> int:
    return THREADS or (256 if head_dim <= 64 else 64)


def lanes_per_key(head_dim: int) -> int:
    """A key's lanes in the passes: about 16 values each (a power of two up to LANES_MAX; 1 below 32 values)."""
    return LANES or min(LANES_MAX, 1 << max(0, (head_dim // 16).bit_length() - 1))


def _module(head_dim: int, group: int, bits: int, p_bits: int) -> cupy.RawModule:
    return _built(head_dim, group, _threads(head_dim), lanes_per_key(head_dim), PHASE_STOP, bits, p_bits)


@cache
def _built(head_dim: int, group: int, threads: int, lanes: int, stop: int, bits: int, p_bits: int) -> cupy.RawModule:
    head = (f"#define GROUP {group}\n#define BITS {bits}\n#define P_BITS {p_bits}\n#define PHASE_STOP {stop}\n"
            f"#define KT {threads}\n#define TPK {lanes}\n")
    # (decode_exact's helpers, head_vector's among them, compiled for blocks of at least head_dim threads; they
    # read blockDim)
    return cupy.RawModule(code=decode_exact.source(head_dim, max(threads, head_dim)) + SCALARS + head + EXP_FIXED
                          + _SOURCE,
                          options=decode_exact.COMPILE)


def _resident(head_dim: int, bits: int, p_bits: int) -> int:
    """Blocks of the one-head kernel (its threads, dynamic and static shared memory, registers) the device holds at
    once."""
    kernel = _module(head_dim, 1, bits, p_bits).get_function("loom_int_paged_decode")
    threads = _threads(head_dim)
    return resident_per_sm(kernel, threads, shared_bytes(1, head_dim, threads)) * _multiprocessors()


def _check_knobs(threads: int, lanes: int, group: int, ratio: int, split: bool) -> None:
    """ShapeError where the knobs (THREADS, LANES, HEADS_A_BLOCK, PHASE_STOP) give a launch the kernel cannot
    run right: warps of whole keys, a block's heads inside one group, phases cut short only without the split
    form (whose counters would stay set)."""
    why = None
    if threads % 32 or lanes & (lanes - 1) or lanes > 32 or threads % lanes:
        why = f"{threads} threads a block with {lanes} lanes a key (warps of whole keys, lanes a power of two)"
    elif ratio % group:
        why = f"{group} query heads a block across key/value heads of {ratio}"
    elif split and PHASE_STOP:
        why = f"PHASE_STOP {PHASE_STOP} with the split form"
    if why:
        raise ShapeError(f"spec 5's decode attention kernel cannot take {why}")


@cache
def _shared_limit() -> int:
    """The shared memory (static and dynamic) a block may opt in to."""
    return cupy.cuda.Device().attributes["MaxSharedMemoryPerBlockOptin"]


def shared_bytes(group: int, head_dim: int, threads: int) -> int:
    """The kernel's dynamic shared memory: a tile's w [GROUP][threads] int32 and values' integers [threads][D + 2]
    int16 (padded to 8 bytes), a kept tile's scores [GROUP][threads] float64 and its values' exponents and flags
    [threads] int32. (The key and value rows themselves are read into registers, each lane its part: a block's
    shared memory stays near spec 4's, so that the multiprocessors keep their split of L1 and shared memory between
    it and the products around it.)"""
    ints = threads * (head_dim + 2)
    return 4 * group * threads + 2 * (ints + ints % 4) + 8 * group * threads + 8 * threads


def paged_attention(qkv: Array, cache_k: Array, cache_v: Array, out: Array, cos: Array, sin: Array, norm: Array | None,
                    pos: Array, tables: Array, block_size: int, heads: int, window: int | None, scale: float, eps: float,
                    factor: float | None = None, overlap: bool = False, *, scheme: tuple, max_keys: int = 0,
                    split: SplitWork | None = None, p_work: Array | None = None) -> None:
    """decode.paged_attention's operation in spec 5's integer scheme (out float32 [B, heads D]): decode_exact's
    arguments (factor, max_keys and p_work are its interface's, unused: any window), and the scheme's constants
    (kernels.exact.attention.SCHEME: its exp table; LOG2E_30, LN2_15, P_BITS, BITS). split: split_work's
    workspace for these sizes, to cut each window over its splits (the same bits), else one block a (sequence,
    key/value head)."""
    from .quant import pointer
    _, kv_heads, D = cache_k.shape
    B = tables.shape[0]
    if heads % kv_heads or heads // kv_heads > GROUP_MAX or unsupported(D, 0):
        raise ShapeError(f"spec 5's decode attention kernel takes head_dim a multiple of 4 up to {MAX_HEAD} and up "
                         f"to {GROUP_MAX} query heads a key/value head, got head_dim {D}, {heads} heads over "
                         f"{kv_heads}")
    if B == 0:
        return
    row, col = (s // tables.itemsize for s in tables.strides)
    table, consts = scheme
    log2e, ln2, p_bits, bits = (int(c) for c in consts)
    # (the one-head kernel's occupancy asked only where the rule reads it: no knob set and the batch's groups
    # leaving the device idle; elsewhere that kernel may never launch, and asking compiles it)
    asked = HEADS_A_BLOCK is None and B * kv_heads < _multiprocessors()
    group = heads_a_block(B, heads, kv_heads, _resident(D, bits, p_bits) if asked else 1 << 62)
    _check_knobs(_threads(D), lanes_per_key(D), group, heads // kv_heads, split is not None)
    module = _module(D, group, bits, p_bits)
    kernel = module.get_function("loom_int_paged_decode")
    args = (qkv, cache_k, cache_v, out, cos, sin, pointer(norm), pos, tables, np.int64(row), np.int64(col),
            np.int32(block_size), np.int32(heads), np.int32(kv_heads), np.int32(heads // kv_heads),
            np.int32(window or 0), np.float32(scale),
            np.float32(eps), np.int32(53 - max(0, (D - 1).bit_length())), device_table(table), np.int32(log2e),
            np.int32(ln2))
    threads = _threads(D)
    shared = shared_bytes(group, D, threads)
    if shared + kernel.shared_size_bytes > _shared_limit():
        raise ShapeError(f"spec 5's decode attention kernel cannot take {shared + kernel.shared_size_bytes} bytes "
                         f"of shared memory a block (head_dim {D}, {group} heads a block, {threads} threads), past "
                         f"the device's {_shared_limit()}")
    blocks = B * heads // group
    if split is None:
        launch(kernel, blocks, threads, args + (np.int32(0), np.int32(1)) + (np.uint64(0),) * 5, overlap,
               shared=shared)
        return
    S = split.splits
    if split.top.size < B * heads * S or split.num.size < B * heads * S * D or blocks * S > _multiprocessors():
        raise ShapeError(f"spec 5's decode attention: a split workspace of {S} splits for fewer than {B} sequences "
                         f"of {heads} heads of {D}, or {blocks} blocks in {S} splits past the multiprocessors")
    launch(kernel, blocks * S, threads, args + (np.int32(1), np.int32(S), split.top, split.flags, split.num, split.den,
                                                split.counters), overlap, shared=shared)
