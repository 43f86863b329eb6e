"""Exact prime counting and listing on the CPU: a segmented, odd-only, bit-packed sieve of
Eratosthenes compiled by numba (the optional `loom[cpu]` extra, loaded by loom/backend/cpu/jit.py).
loom/engine/sieve.py is the NumPy reference it is checked against (tests/engine/test_primes_fast.py);
loom/engine/primes.py is the public door. pi(10^9) takes about 0.13 s on one core of the project's
2-core VM, about 1.5x primesieve's time there (benchmarks/primes.py).

Layout. Odd numbers only: bit g of the sieve stands for n = 2g + 1, so g < 2^63 for every n < 2^64
and all index arithmetic is int64 (an offset from the segment's first g wherever an absolute value
could pass 2^63). The odd multiples of an odd prime p are the g = (p - 1)/2 (mod p): stride p, from
g(p^2) = (p - 1)(p + 1)/2 on (< 2^63 for p < 2^32). A segment is SEGMENT_BYTES of bits (a power of
two, 64-bit aligned, so a bucket offset is a mask and counting is a popcount per word); its size
and the thresholds below were measured on that VM (1 MiB of L2 and 32 KiB of L1 per core).

Per segment:
1. pre-sieve: the bytes are the AND of 16 repeating byte patterns (four passes of four), each with
   the multiples of a group of the primes 3..191 struck, read at the segment's phase;
2. small primes (up to SMALL_MAX) strike the segment one L1-sized sub-block at a time, medium ones
   (up to the segment's bits) the whole segment, both with one loop: the multiples j + kp, k = 0..7,
   fall on the 8 different bits of bytes that repeat p bytes further on, so each step strikes 8
   bytes with 8 constant masks;
3. large primes (above the segment's bits: at most one multiple per segment): a bucket sieve as
   primesieve's, each prime filed under the segment its next multiple falls in (a ring of buckets,
   blocks of BUCKET entries from a pool), so a segment touches only the primes that strike it
   (1.5x faster than visiting every prime each segment at 10^14, 2x at 4 * 10^15);
4. a popcount per 64-bit word (LLVM turns the SWAR form below into POPCNT), or the set bits written
   out as numbers (listing).
A base prime joins when the segments reach its square.

Base primes up to BASE_LIMIT are held (8 bytes each, and 8 per bucket entry). Past that (ranges
ending above BASE_LIMIT^2 = 2^52) the rest of the base primes, up to sqrt(hi) < 2^32, are streamed:
the sieve finds them again for each chunk of CHUNK_BITS odd numbers and strikes their multiples into
the chunk's mask, which the segments AND in. Memory stays bounded near 2^64, at about 1.5 s per
chunk (the primes below 2^32, each with a 64-bit division): meant for narrow ranges up there.

Threads: count() splits the range into blocks sieved independently (each finds its own starting
offsets), in a prange loop; the per-block counts are integers, so the total is the same whatever
the thread count. Listing runs on one thread.
"""
from __future__ import annotations

import functools
import math

import numpy as np

from ...errors import BackendError
from . import jit

# Sizes are powers of two of at least 8 bytes; BASE_LIMIT stays below 2^31 (a bucket entry is p << 32 | offset).
SEGMENT_BYTES = 1 << 18           # 256 KiB: a segment (2^21 odd numbers) stays in L2
SUB_BYTES = 1 << 15               # 32 KiB: the sub-blocks the small primes strike stay in L1
SMALL_MAX = 1 << 13               # primes up to this strike sub-block by sub-block
MEDIUM_MAX = None                 # primes up to this (None: the segment's bits) strike each segment; above: buckets
BUCKET = 1024                     # entries per bucket block
BASE_LIMIT = 1 << 26              # base primes held; above, streamed per chunk (see the docstring)
CHUNK_BITS = 1 << 28              # odd numbers per chunk of the streamed mode (a 32 MiB mask)
BLOCK_BITS = 1 << 22              # at least this many odd numbers per thread block (and 32 per base prime)
LIST_BITS = 1 << 25               # at least this many odd numbers listed per call (and 8 per base prime)
# pre-sieve groups: each pattern is the product of its primes in bytes (15 KB .. 1 MB), four per pass
GROUPS = ((3, 5, 7, 11, 13), (17, 19, 23), (29, 31, 37), (41, 43, 47),
          (53, 59, 61), (67, 71, 73), (79, 83, 89), (97, 101, 103),
          (107, 109), (113, 127), (131, 137), (139, 149), (151, 157), (163, 167), (173, 179), (181, 191))
_LOOPS = ("_popcount", "_first", "_fill", "_cross", "_bucket_push", "_buckets", "_sieve")
_PARALLEL = ("_count_blocks",)
prange = range
u64 = np.uint64


def available() -> bool:
    """Whether the compiled sieve runs here (jit.available()); compiles it on the first call."""
    return jit.compile_module(globals(), plain=_LOOPS, parallel=_PARALLEL)


def count(lo: int, hi: int, threads: int | None = None) -> int:
    """The number of primes p with lo <= p < hi, for 0 <= lo <= hi <= 2^64 (checked by the caller).
    threads: None for numba's thread count (all cores unless NUMBA_NUM_THREADS or
    numba.set_num_threads say otherwise), else at most that many; 1 runs no thread pool at all."""
    _require()
    total = int(lo <= 2 < hi)
    threads = _threads(threads)
    for c_lo, c_end, base, extra in _chunks(lo // 2, hi // 2, hi):     # odd n in [lo, hi): g in [lo//2, hi//2)
        total += _count_chunk(c_lo, c_end, base, extra, threads)
    return total


def primes(lo: int, hi: int) -> np.ndarray:
    """The primes p with lo <= p < hi, ascending, as uint64 (range checked by the caller). One thread."""
    _require()
    parts = [np.array([2], dtype=u64)] if lo <= 2 < hi else []
    tables = _tables()
    for c_lo, c_end, base, extra in _chunks(lo // 2, hi // 2, hi):
        step = max(LIST_BITS, 8 * len(base))       # each call finds every base prime's first multiple
        out = np.empty(_capacity(min(step, c_end - c_lo)), dtype=u64)
        for a in range(c_lo, c_end, step):
            found = _sieve(a, min(a + step, c_end) - 1, base, *tables, extra, c_lo & ~63, out, 1)
            parts.append(out[:found].copy())
    return np.concatenate(parts) if parts else np.zeros(0, dtype=u64)


# --- Python-side planning ------------------------------------------------------------------------------

def _require() -> None:
    if not jit.compiled(globals()) and not available():
        raise BackendError(f"the compiled prime sieve does not run here: {jit.unavailable_reason()}")


def _threads(threads: int | None) -> int:
    numba = jit._load()["numba"]
    if threads is None:
        return numba.get_num_threads()
    return max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS))


def _capacity(bits: int) -> int:
    """An upper bound on the primes among `bits` consecutive odd numbers: 2y / ln y for an interval
    of y = 2 bits integers (Montgomery and Vaughan's Brun-Titchmarsh bound), plus the presieved
    primes (the bound is for x >= 1 and y > 1; the slack covers the rest)."""
    y = 2 * bits
    return (int(2 * y / math.log(y)) if y > 16 else y) + 2 * len(_presieved()) + 2


def _chunks(g_lo: int, g_end: int, hi: int):
    """(g_lo, g_end, base primes, extra mask or an empty one) per chunk of [g_lo, g_end): one chunk
    where the base primes up to sqrt(hi) are all held, else chunks of CHUNK_BITS with the primes above
    BASE_LIMIT struck into the chunk's mask."""
    if g_end <= g_lo:
        return
    root = math.isqrt(hi - 1)
    base = _base_primes(min(root, BASE_LIMIT))
    if root <= BASE_LIMIT:
        yield g_lo, g_end, base, np.zeros(0, dtype=u64)
        return
    for c_lo in range(g_lo, g_end, CHUNK_BITS):
        c_end = min(c_lo + CHUNK_BITS, g_end)
        yield c_lo, c_end, base, _streamed_mask(c_lo, c_end, root)


def _streamed_mask(c_lo: int, c_end: int, root: int) -> np.ndarray:
    """The chunk's bits (from c_lo & ~63) with the odd multiples of the primes in (BASE_LIMIT, root]
    struck, each as the sieve finds it (mode 2), so those primes are never held."""
    first = c_lo & ~63
    mask = np.full((c_end - first + 63) // 64, ~u64(0), dtype=u64)
    pats, offsets, periods, presieved, plan = _tables()
    plan[4:6] = first, c_end - 1
    _sieve((BASE_LIMIT + 1) // 2, (root + 1) // 2 - 1, _base_primes(math.isqrt(root)), pats, offsets, periods,
           presieved, plan, np.zeros(0, dtype=u64), 0, mask, 2)
    return mask


_base_cache: list = [np.zeros(0, dtype=np.int64), 0]       # the longest base list so far, and its limit


def _base_primes(limit: int) -> np.ndarray:
    """The primes in (the largest presieved prime, limit], as int64: what the segments strike."""
    have, upto = _base_cache
    if limit > upto:
        if limit <= 1 << 20:
            is_prime = np.ones(limit + 1, dtype=bool)
            is_prime[:2] = False
            for p in range(2, math.isqrt(limit) + 1):
                if is_prime[p]:
                    is_prime[p * p::p] = False
            found = np.flatnonzero(is_prime)
        else:
            found = primes(0, limit + 1)            # its base primes: up to sqrt(limit) <= 2^13
        have = found[found > max(_presieved())].astype(np.int64)
        _base_cache[:] = [have, limit]
    return have[:np.searchsorted(have, limit, side="right")]


def _count_chunk(c_lo: int, c_end: int, base: np.ndarray, extra: np.ndarray, threads: int) -> int:
    tables = _tables()
    width = c_end - c_lo
    blocks = min(threads * 4, width // max(BLOCK_BITS, 32 * len(base))) if threads > 1 else 1
    if blocks <= 1:
        return int(_sieve(c_lo, c_end - 1, base, *tables, extra, c_lo & ~63, np.zeros(0, dtype=u64), 0))
    starts = np.array([c_lo] + [(c_lo + width * k // blocks) & ~63 for k in range(1, blocks)], dtype=np.int64)
    out = np.zeros(blocks, dtype=np.int64)
    numba = jit._load()["numba"]

    def launch():
        before = numba.get_num_threads()
        numba.set_num_threads(threads)
        try:
            _count_blocks(starts, c_end - 1, base, *tables, extra, c_lo & ~63, out)
        finally:
            numba.set_num_threads(before)

    jit.run(launch)
    return int(out.sum())


def _presieved() -> tuple[int, ...]:
    return tuple(p for group in GROUPS for p in group)


def _tables() -> tuple[np.ndarray, ...]:
    """(patterns, their offsets, their periods, the presieved primes, plan) for _sieve, from the
    module's settings (read on every call: tests shrink the segments)."""
    medium = SEGMENT_BYTES * 8 if MEDIUM_MAX is None else max(MEDIUM_MAX, SEGMENT_BYTES * 8)
    plan = np.array([SEGMENT_BYTES * 8, min(SUB_BYTES, SEGMENT_BYTES) * 8, SMALL_MAX, medium, 0, 0, BUCKET],
                    dtype=np.int64)
    return (*_patterns(GROUPS, SEGMENT_BYTES), np.array(_presieved(), dtype=np.int64), plan)


@functools.lru_cache(maxsize=4)
def _patterns(groups: tuple, seg_bytes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pre-sieve patterns, one after another in one uint8 array: group k's period is the product
    P of its primes (in bits, so P bytes hold 8 periods and repeat), stored P + seg_bytes long so a
    segment reads its bytes from one offset. Bit b of byte t stands for g = 8t + b. Padded with
    all-ones patterns (period 1) to a multiple of four."""
    groups = tuple(groups) + ((),) * (-len(groups) % 4)
    parts, offsets, periods = [], [], []
    at = 0
    for group in groups:
        period = math.prod(group)
        keep = np.ones(8 * (period + seg_bytes), dtype=bool)
        for p in group:
            keep[(p - 1) // 2::p] = False
        parts.append(np.packbits(keep, bitorder="little"))
        offsets.append(at)
        periods.append(period)
        at += period + seg_bytes
    return np.concatenate(parts), np.array(offsets, dtype=np.int64), np.array(periods, dtype=np.int64)


# --- the loops (numba dispatchers after available(); plain Python before) -------------------------------

def _popcount(x):
    x = x - ((x >> u64(1)) & u64(0x5555555555555555))
    x = (x & u64(0x3333333333333333)) + ((x >> u64(2)) & u64(0x3333333333333333))
    x = (x + (x >> u64(4))) & u64(0x0F0F0F0F0F0F0F0F)
    return np.int64((x * u64(0x0101010101010101)) >> u64(56))


def _first(p, start, seg_start):
    """The offset from seg_start of the first g >= start with g = (p - 1)/2 (mod p): p's first odd
    multiple at or after start (start >= seg_start; no absolute g past start is formed)."""
    d = (p - 1) // 2 - start % p
    if d < 0:
        d += p
    return start - seg_start + d


def _fill(seg, nbytes, byte0, pats, offsets, periods):
    """seg[:nbytes] = the AND of the patterns at the phase of byte byte0 (of g = 8 byte0), four per
    pass. Unsigned indices here and in the loops below: with signed ones numba adds a negative-index
    wraparound to every access, which also keeps LLVM from vectorizing (50x slower here)."""
    for k in range(0, offsets.shape[0], 4):
        a = u64(offsets[k] + byte0 % periods[k])
        b = u64(offsets[k + 1] + byte0 % periods[k + 1])
        c = u64(offsets[k + 2] + byte0 % periods[k + 2])
        d = u64(offsets[k + 3] + byte0 % periods[k + 3])
        if k == 0:
            for t in range(u64(nbytes)):
                seg[t] = pats[a + t] & pats[b + t] & pats[c + t] & pats[d + t]
        else:
            for t in range(u64(nbytes)):
                seg[t] &= pats[a + t] & pats[b + t] & pats[c + t] & pats[d + t]


def _cross(seg, at, nbits, base, nxt, k0, k1):
    """For each prime p = base[k], k in [k0, k1): strike bits nxt[k], nxt[k] + p, ... below nbits of
    the bits from byte `at` of seg, and leave in nxt[k] the next multiple's offset, less nbits.

    Eight multiples j + kp (k = 0..7) fall on eight different bits (p is odd), and the next eight on
    the same bits p bytes further: e[b] is the byte, from j's, of the multiple on bit b, so each step
    strikes eight bytes with constant masks. (One call per block, not per prime: numba does not
    inline calls between its functions, and a call passes every array as a dozen words.)"""
    for k in range(k0, k1):
        p = base[k]
        j = nxt[k]
        if j + 8 * p <= nbits:
            o0 = j >> 3
            r = j & 7               # multiple k lies on bit (r + kp) & 7: bit b holds k = (b - r) p mod 8
            e0 = u64((r + ((0 - r) * p & 7) * p) >> 3)      # (p^-1 = p mod 8 for odd p)
            e1 = u64((r + ((1 - r) * p & 7) * p) >> 3)
            e2 = u64((r + ((2 - r) * p & 7) * p) >> 3)
            e3 = u64((r + ((3 - r) * p & 7) * p) >> 3)
            e4 = u64((r + ((4 - r) * p & 7) * p) >> 3)
            e5 = u64((r + ((5 - r) * p & 7) * p) >> 3)
            e6 = u64((r + ((6 - r) * p & 7) * p) >> 3)
            e7 = u64((r + ((7 - r) * p & 7) * p) >> 3)
            last = ((j + 7 * p) >> 3) - o0
            stop = u64(at) + u64((nbits >> 3) - last)
            step = u64(p)
            i = u64(at) + u64(o0)
            while i < stop:
                seg[i + e0] &= np.uint8(0xFE)
                seg[i + e1] &= np.uint8(0xFD)
                seg[i + e2] &= np.uint8(0xFB)
                seg[i + e3] &= np.uint8(0xF7)
                seg[i + e4] &= np.uint8(0xEF)
                seg[i + e5] &= np.uint8(0xDF)
                seg[i + e6] &= np.uint8(0xBF)
                seg[i + e7] &= np.uint8(0x7F)
                i += step
            j += 8 * (np.int64(i - u64(at)) - o0)
        while j < nbits:
            seg[u64(at) + u64(j >> 3)] &= np.uint8(~(1 << (j & 7)) & 0xFF)
            j += p
        nxt[k] = j - nbits


def _bucket_push(pool, fill, link, tails, free, heads, slot, entry):
    """Append entry to bucket `slot`: a chain of blocks of `bucket` entries in pool, from heads[slot]
    to tails[slot] (-1: empty); free[0] is the height of the stack of free blocks free[1:]."""
    bucket = pool.shape[0] // fill.shape[0]
    blk = tails[slot]
    if blk < 0 or fill[blk] == bucket:
        new = free[free[0]]
        free[0] -= 1
        fill[new] = 0
        link[new] = -1
        if blk < 0:
            heads[slot] = new
        else:
            link[blk] = new
        tails[slot] = new
        blk = new
    pool[u64(blk * bucket + fill[blk])] = entry
    fill[blk] += 1


def _buckets(seg, span, s, shift, pool, fill, link, tails, free, heads):
    """Strike segment s's bucket entries (p << 32 | offset) and file each under the segment of its
    next multiple (at most span: the range's end), the push inlined (see _cross)."""
    ring = heads.shape[0]
    bucket = pool.shape[0] // fill.shape[0]
    slot = s & (ring - 1)
    blk = heads[slot]
    heads[slot] = -1
    tails[slot] = -1
    while blk >= 0:
        at = u64(blk * bucket)
        for e in range(at, at + u64(fill[blk])):
            entry = pool[e]
            p = entry >> 32
            j = entry & 0xFFFFFFFF
            seg[u64(j >> 3)] &= np.uint8(~(1 << (j & 7)) & 0xFF)
            j += p                              # past this segment: p is larger than it
            if j <= span:
                to = u64((s + (j >> shift)) & (ring - 1))
                tail = tails[to]
                if tail < 0 or fill[tail] == bucket:
                    new = free[free[0]]
                    free[0] -= 1
                    fill[new] = 0
                    link[new] = -1
                    if tail < 0:
                        heads[to] = new
                    else:
                        link[tail] = new
                    tails[to] = new
                    tail = new
                pool[u64(tail * bucket + fill[tail])] = (p << 32) | (j & ((1 << shift) - 1))
                fill[tail] += 1
        nblk = link[blk]
        free[0] += 1
        free[free[0]] = blk
        blk = nblk


def _sieve(g_lo, g_last, base, pats, offsets, periods, presieved, plan, extra, extra_g0, out, mode):
    """Sieve the odd numbers with g in [g_lo, g_last] (g_last < 2^63) and return how many are prime.
    mode 0: only that; 1: also write them to out (uint64, long enough); 2: strike the odd multiples
    of each (each below 2^32) from the mask `out` (bit k of word w stands for g = plan[4] + 64 w + k,
    up to g = plan[5]: a chunk of the streamed mode).

    base: the odd primes above `presieved` (the patterns' primes) up to sqrt of the range's end (or
    BASE_LIMIT), ascending. plan: [segment bits, sub-block bits, largest small prime, largest medium
    prime (>= segment bits: the larger ones go to buckets), mode 2's first g, mode 2's last g,
    entries per bucket block].
    extra: a mask ANDed in (bit k of word w stands for g = extra_g0 + 64 w + k), or empty."""
    seg_bits, sub_bits, small_max, medium_max = plan[0], plan[1], plan[2], plan[3]
    target, target_span, bucket = plan[4], plan[5] - plan[4], plan[6]
    nbytes = seg_bits >> 3
    shift = 0
    while (1 << shift) < seg_bits:
        shift += 1
    seg = np.empty(nbytes, dtype=np.uint8)
    words = seg.view(np.uint64)
    nb = base.shape[0]
    n_small = 0                                 # base[:n_small] strike sub-block by sub-block
    while n_small < nb and base[n_small] <= small_max:
        n_small += 1
    n_med = n_small                             # base[n_small:n_med] strike the whole segment
    while n_med < nb and base[n_med] <= medium_max:
        n_med += 1
    nxt = np.empty(n_med, dtype=np.int64)       # their next multiple, from the (sub-)block's start
    # buckets for base[n_med:]: a ring of slots (segments ahead), each a chain of blocks of entries
    # p << 32 | offset from the pool; free[0] is the height of the stack of free blocks free[1:]
    bucketed = nb > n_med
    ring = 1
    if bucketed:
        while ring < base[nb - 1] // seg_bits + 2:
            ring *= 2
    n_blocks = (nb - n_med) // bucket + ring + 4 if bucketed else 0
    pool = np.empty(n_blocks * bucket, dtype=np.int64)
    fill = np.zeros(n_blocks, dtype=np.int64)
    link = np.full(n_blocks, -1, dtype=np.int64)
    heads = np.full(ring, -1, dtype=np.int64)
    tails = np.full(ring, -1, dtype=np.int64)
    free = np.empty(n_blocks + 1, dtype=np.int64)
    free[0] = n_blocks
    for k in range(n_blocks):
        free[k + 1] = n_blocks - 1 - k

    active = 0                                  # base[:active] have joined (p^2 reached)
    total = 0
    s = 0                                       # the segment's number
    seg_start = g_lo & ~63
    while True:
        span = g_last - seg_start               # the segment holds offsets 0 .. min(span, seg_bits - 1)
        _fill(seg, nbytes, seg_start >> 3, pats, offsets, periods)
        while active < nb:                      # primes whose square lies before this segment's end
            p = base[active]
            q = ((p - 1) // 2) * (p + 1)        # g(p^2)
            if q - seg_start >= seg_bits:
                break
            j = _first(p, max(q, g_lo), seg_start)
            if active < n_med:
                nxt[active] = j
            elif j <= span:
                _bucket_push(pool, fill, link, tails, free, heads, (s + (j >> shift)) & (ring - 1),
                             (p << 32) | (j & (seg_bits - 1)))
            active += 1
        top = min(active, n_small)              # small primes: each sub-block stays in L1 while they strike
        for t in range(seg_bits // sub_bits):
            _cross(seg, t * (sub_bits >> 3), sub_bits, base, nxt, 0, top)
        _cross(seg, 0, seg_bits, base, nxt, n_small, min(active, n_med))
        if bucketed:
            _buckets(seg, span, s, shift, pool, fill, link, tails, free, heads)
        if seg_start <= presieved[-1] // 2:     # the presieved primes themselves; 1 is not prime
            for p in presieved:
                g = (p - 1) // 2 - seg_start
                if 0 <= g < seg_bits:
                    seg[g >> 3] |= np.uint8(1 << (g & 7))
            if seg_start == 0:
                seg[0] &= np.uint8(0xFE)
        # the bits in [first, stop) count: from g_lo in the first segment, to g_last in the last
        first = g_lo - seg_start if g_lo > seg_start else 0
        stop = span + 1 if span < seg_bits else seg_bits
        w0 = u64(first >> 6)
        w1 = u64((stop + 63) >> 6)
        if extra.shape[0] > 0:
            e0 = u64((seg_start - extra_g0) >> 6)
            for w in range(w0, w1):
                words[w] &= extra[e0 + w]
        words[w0] &= ~u64(0) << u64(first & 63)
        if stop & 63:
            words[w1 - u64(1)] &= ~u64(0) >> u64(64 - (stop & 63))
        if mode == 0:
            for w in range(w0, w1):
                total += _popcount(words[w])
        else:
            for w in range(w0, w1):
                x = words[w]
                n0 = u64(seg_start) * u64(2) + u64(128) * w + u64(1)
                while x:
                    low = x & (~x + u64(1))
                    n = n0 + u64(2) * u64(_popcount(low - u64(1)))
                    x ^= low
                    if mode == 1:
                        out[total] = n
                    else:                       # strike n's odd multiples (n < 2^32) from the target
                        p = np.int64(n)
                        j = _first(p, max(((p - 1) // 2) * (p + 1), target), target)
                        while j <= target_span:
                            out[u64(j >> 6)] &= ~(u64(1) << u64(j & 63))
                            j += p
                    total += 1
        if span < seg_bits:
            return total
        seg_start += seg_bits
        s += 1


def _count_blocks(starts, g_last, base, pats, offsets, periods, presieved, plan, extra, extra_g0, out):
    """out[b] = the primes among g in [starts[b], starts[b + 1]) (the last block: to g_last, which may
    be 2^63 - 1), one block per task."""
    empty = np.zeros(0, dtype=np.uint64)
    n = out.shape[0]
    for b in prange(n):
        last = starts[b + 1] - 1 if b + 1 < n else g_last
        out[b] = _sieve(starts[b], last, base, pats, offsets, periods, presieved, plan, extra, extra_g0, empty, 0)
