"""How many blocks of the prompt attention kernel (`loom_int_attend`, int_attention.py) share a block's keys: the host
side of its launch, without CuPy. A causal prompt's last rows walk every key and its first rows one tile, so a grid of
enough blocks can still wait on its longest walks; the splits cut the longest to a share of what a block slot gets of
all of them (the bits are the same for any split: each split's sums are exact integers, added after)."""
from __future__ import annotations

from functools import lru_cache

import numpy as np

BKEYS = 64                      # keys a tile (the kernel's BKEYS)


def splits(G: int, rows: int, n: int, T: int, first: int, lo: int, window: int, warps: int, D: int,
           multiprocessors: int, share: int, tiles: int, tiles_few: int) -> int:
    """The splits of a launch over G groups of `rows` query rows (a T + t at position first + t) and n keys from
    position lo (window 0: none), blocks of 16 warps rows: enough that the longest walk is at most `share` % of a
    block slot's share of every block's tiles (the multiprocessors times the blocks each holds at the kernel's
    register count), each split at least `tiles` tiles (`tiles_few` while the split blocks fit in one wave), at most
    16."""
    longest, total = walks(int(rows), int(n), int(T), int(first), int(lo), int(window), 16 * int(warps))
    if total == 0:
        return 1
    blocks = G * -(-rows // (16 * warps))
    slots = multiprocessors * ((12 if D <= 64 else 8) // warps)
    want = -(-longest * slots * 100 // (G * total * max(1, share)))
    cap = longest // max(1, tiles)
    if blocks * cap < slots:
        cap = min(longest // max(1, tiles_few), -(-slots // blocks))
    return max(1, min(want, cap, 16))


@lru_cache(maxsize=256)
def walks(rows: int, n: int, T: int, first: int, lo: int, window: int, bq: int) -> tuple[int, int]:
    """The most tiles of keys a block of bq rows walks, and all the blocks' together: each block's rows' keys, causal
    and windowed, bounded as the kernel bounds them (the rows' first and last positions where they lie in one query
    head, else the head's whole span)."""
    r0 = np.arange(-(-rows // bq), dtype=np.int64) * bq
    last = np.minimum(r0 + bq, rows) - 1
    one = r0 // T == last // T
    pmin, pmax = first + np.where(one, r0 % T, 0), first + np.where(one, last % T, T - 1)
    kfirst = np.maximum(0, pmin - window + 1 - lo) if window else 0
    kend = np.minimum(n, pmax - lo + 1)
    tiles = np.where(kend > kfirst, (kend - kfirst + BKEYS - 1) // BKEYS, 0)
    return (int(tiles.max()), int(tiles.sum())) if tiles.size else (0, 0)
