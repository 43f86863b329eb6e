"""A stable LSD radix sort of rows, one pass per 8-bit digit: the onesweep design of Adinets and
Merrill ("Onesweep: A Faster Least Significant Digit Radix Sort for GPUs", 2022).

One kernel first counts every digit of every pass at once (one read of the data). Then each pass is
one kernel: a block takes the next tile (4,096 or 5,120 values) from a counter, counts its digits and
publishes the counts, ranks its values by digit (each warp in turn over its values, grouping a warp's
equal digits with ballots, or with __match_any_sync in passes where few digits occur: that is faster
there and slower elsewhere), lays the tile out in digit order in shared memory, and only then adds
the counts its predecessors published (a decoupled look-back, as scan.py's, one digit per thread,
eight words read at once) until it meets a tile that has published its inclusive prefix. The tile
leaves from shared memory, so that values of one digit go out as consecutive writes.

The sort moves the values themselves, and computes the key of each from its bits as it reads it: for
floats NumPy's order (-0 and +0 one key, every NaN one key after +inf), for signed integers the sign
bit flipped, `descending` every bit of the key flipped. So no pass converts to keys and back, each
value keeps its bits (-0 stays -0, a NaN its payload), and, the sort being stable, equal values (-0
and +0 among them) stay in input order. argsort moves positions beside the values (uint32 while
they fit, the last pass writing int64), the first pass making them. A pass whose digit is the same
for every value of every row is skipped.

A tile's status per digit is one word, the count shifted left by two and a flag in the low two bits
(0 not yet, 1 the tile's own count, 2 its inclusive prefix), written and read whole: 32-bit words
while a row holds fewer than 2^30 values, 64-bit ones past that.
"""
from __future__ import annotations

from functools import cache

import cupy
import numpy as np

from .. import Array
from .compile import OPTIONS, translating
from .order import _FLOATS

THREADS = 256
RADIX = 256
_HISTOGRAM_BLOCKS = 1024        # blocks of the counting kernel over all rows (grid-stride inside)

_DTYPES = tuple(np.dtype(t) for t in (np.bool_, np.uint8, np.int8, np.uint16, np.int16, np.float16, np.uint32,
                                       np.int32, np.float32, np.uint64, np.int64, np.float64))
_CTYPES = {1: "unsigned char", 2: "unsigned short", 4: "unsigned int", 8: "unsigned long long"}
_MATCH_DIGITS = 32              # see _few_digits
_MAX_GRID_X = 2**31 - 1
_NULL = np.uint64(0)            # a null pointer argument
_PATTERNS = {n: np.dtype(f"uint{8 * n}") for n in _CTYPES}

_SOURCE = r"""
typedef unsigned long long u64;
typedef %(type)s U;
#define MODE %(mode)d
#define BITS (8 * (int)sizeof(U))
#define PASSES (BITS / 8)
#define SIGN ((U)((U)1 << (BITS - 1)))
#define INF ((U)%(inf)sull)
#define THREADS %(threads)d
#define WARPS (THREADS / 32)
#define ITEMS %(items)d
#define TILE (THREADS * ITEMS)
#define KEY_BLOCKS %(key_blocks)d             // resident blocks an SM must hold (bounds the registers)
#define PAIR_BLOCKS %(pair_blocks)d
#define KIND %(kind)d
typedef %(status)s STATUS;
#define LOOK 8                          // look-back words a thread reads at once
#define NONE 256                        // the digit of a slot past the row's end

// the key that orders the value with bits b (see the module's docstring)
__device__ __forceinline__ U ordered(U b, int descending) {
#if MODE == 0
    U k = b;
#elif MODE == 1
    U k = (U)(b ^ SIGN);
#else
    const U m = (U)(b & (U)(SIGN - 1));
    U k = m > INF ? (U)~(U)0 : m == 0 ? SIGN : (b & SIGN) ? (U)~b : (U)(b | SIGN);
#endif
    return descending ? (U)~k : k;
}

__device__ __forceinline__ int digit_of(U b, int shift, int descending) {
    return (int)((ordered(b, descending) >> shift) & 255u);
}

// the lanes of the warp whose digit (BITS_USED bits: 9 with NONE) equals this lane's, one ballot a bit
// (__match_any_sync takes longer when the lanes hold many distinct values)
template <int BITS_USED> __device__ __forceinline__ unsigned peers_of(unsigned digit) {
    unsigned peers = 0xffffffffu;
    #pragma unroll
    for (int b = 0; b < BITS_USED; ++b) {
        const bool set = (digit >> b) & 1u;
        const unsigned ballot = __ballot_sync(0xffffffffu, set);
        peers &= set ? ballot : ~ballot;
    }
    return peers;
}

// A value's rank among the values of its digit that its warp has seen (the warp takes its values in
// order: item i of every lane, lane order, before item i + 1), counts[] the warp's running counts;
// digit NONE (past the row's end) counts nothing. MATCH: __match_any_sync groups the lanes, else
// ballots (NONE_POSSIBLE: 9 bits of them, else 8).
template <bool MATCH, bool NONE_POSSIBLE> __device__ __forceinline__ unsigned warp_rank(
        unsigned digit, unsigned* counts, unsigned lower) {
    const unsigned peers = MATCH ? __match_any_sync(0xffffffffu, digit) : peers_of<NONE_POSSIBLE ? 9 : 8>(digit);
    const unsigned below = __popc(peers & lower);
    const bool counted = !NONE_POSSIBLE || digit < NONE;
    const unsigned earlier = counted ? counts[digit] : 0u;
    __syncwarp();
    if (counted && below == 0) counts[digit] = earlier + __popc(peers);
    __syncwarp();
    return earlier + below;
}

// Thread d (a block of 256, one a digit) with its digit's count in the block: the inclusive scan of
// the counts within its warp, each warp's total left in warp_sums (a barrier inside) ...
__device__ __forceinline__ unsigned scan_digits(unsigned total, unsigned* warp_sums) {
    const int lane = threadIdx.x & 31;
    unsigned scanned = total;
    #pragma unroll
    for (int s = 1; s < 32; s <<= 1) {
        const unsigned other = __shfl_up_sync(0xffffffffu, scanned, s);
        if (lane >= s) scanned += other;
    }
    if (lane == 31) warp_sums[threadIdx.x >> 5] = scanned;
    __syncthreads();
    return scanned;
}

// ... and from it where digit d's values start among the block's (the exclusive scan)
__device__ __forceinline__ unsigned digit_start(unsigned scanned, unsigned total, const unsigned* warp_sums) {
    unsigned exclusive = scanned - total;
    for (int w = 0; w < (int)(threadIdx.x >> 5); ++w) exclusive += warp_sums[w];
    return exclusive;
}

// warp_counts[w][d] (each warp's count of digit d) becomes where warp w's values of the digit start.
__device__ __forceinline__ void warp_starts(unsigned (*warp_counts)[256], int d, unsigned start) {
    #pragma unroll
    for (int w = 0; w < WARPS; ++w) {
        const unsigned c = warp_counts[w][d];
        warp_counts[w][d] = start;
        start += c;
    }
}

// hist[row][pass][digit]: every pass's digit counts of every row; blocks over (blockIdx.x, row)
extern "C" __global__ void loom_radix_histogram(const U* __restrict__ x, long long L, int descending,
                                                u64* __restrict__ hist) {
    __shared__ unsigned counts[PASSES * 256];
    for (int i = threadIdx.x; i < PASSES * 256; i += blockDim.x) counts[i] = 0;
    __syncthreads();
    const U* row = x + (long long)blockIdx.y * L;
    const long long stride = (long long)gridDim.x * blockDim.x;
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    for (; i + 3 * stride < L; i += 4 * stride) {         // four loads in flight
        U k[4];
        #pragma unroll
        for (int u = 0; u < 4; ++u) k[u] = ordered(row[i + u * stride], descending);
        #pragma unroll
        for (int u = 0; u < 4; ++u) {
            #pragma unroll
            for (int p = 0; p < PASSES; ++p) atomicAdd(&counts[p * 256 + ((k[u] >> (8 * p)) & 255u)], 1u);
        }
    }
    for (; i < L; i += stride) {
        const U k = ordered(row[i], descending);
        #pragma unroll
        for (int p = 0; p < PASSES; ++p) atomicAdd(&counts[p * 256 + ((k >> (8 * p)) & 255u)], 1u);
    }
    __syncthreads();
    u64* out = hist + (long long)blockIdx.y * PASSES * 256;
    for (int i = threadIdx.x; i < PASSES * 256; i += blockDim.x) {
        if (counts[i]) atomicAdd(out + i, (u64)counts[i]);
    }
}

// One pass over rows of L values, tiles_per_row tiles each: keys (and, with PAIRS, values) from
// kin/vin to kout/vout by the digit at `shift`. offsets[row][digit]: where the row's values of each
// digit start (row * L included); status[tile][digit] the look-back words, status + tiles * 256 the
// tile counter (all zero before the pass). vin null with PAIRS: the values are the positions in the
// row. MATCH: __match_any_sync groups a warp's equal digits (faster where few digits occur), else
// ballots.
template <int EXCHANGE> struct Shared {
    unsigned warp_counts[WARPS][256];       // a warp's count of each digit, then its first place
    unsigned tile_counts[256], warp_sums[WARPS];
    long long global_base[256];             // where the tile's first value of each digit goes, less
                                            // its place in the tile
    long long tile;
    __align__(16) unsigned char exchange[EXCHANGE];         // the tile's keys, then its values
};

// one tile; FULL: all TILE values are there (no check per value)
template <class S, class VIN, class VOUT, bool PAIRS, bool MATCH, bool FULL, class SH>
__device__ __forceinline__ void radix_tile(
        SH& sh, const U* __restrict__ kin, U* __restrict__ kout, const VIN* __restrict__ vin,
        VOUT* __restrict__ vout, long long row, long long j, long long start, int count, int shift,
        int descending, const u64* __restrict__ offsets, S* status) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const long long tile = sh.tile;
    const int first = warp * 32 * ITEMS + lane;                  // warp-striped: a warp owns 32 * ITEMS
    U key[ITEMS];
    unsigned slot[ITEMS];           // the digit (NONE past the end) in 9 bits, the place in the tile above
    #pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
        const int at = first + i * 32;
        key[i] = FULL || at < count ? kin[start + at] : (U)0;
    }
    // the tile's digit counts first, published at once, so that the tiles after it wait less
    #pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
        slot[i] = FULL || first + i * 32 < count ? digit_of(key[i], shift, descending) : NONE;
        if (FULL || slot[i] < NONE) atomicAdd(&sh.tile_counts[slot[i]], 1u);
    }
    const int d = threadIdx.x;                  // from here on, thread d speaks for digit d
    volatile S* words = status;
    __syncthreads();
    const unsigned total = sh.tile_counts[d];
    words[tile * 256 + d] = ((S)total << 2) | (j == 0 ? 2u : 1u);
    const unsigned lower = (1u << lane) - 1u;
    unsigned* counts = sh.warp_counts[warp];
    #pragma unroll
    for (int i = 0; i < ITEMS; ++i) slot[i] |= warp_rank<MATCH, !FULL>(slot[i], counts, lower) << 9;
    // where each digit's values start in the tile, and each warp's values of the digit
    const unsigned exclusive = digit_start(scan_digits(total, sh.warp_sums), total, sh.warp_sums);
    warp_starts(sh.warp_counts, d, exclusive);
    __syncthreads();
    // the tile in order of digits in shared memory: all of this needs no other tile
    U* keys = (U*)sh.exchange;
    #pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
        if (FULL || (slot[i] & 511u) < NONE) {
            slot[i] += counts[slot[i] & 511u] << 9;
            keys[slot[i] >> 9] = key[i];
        }
    }
    // add the predecessors' counts back to a published prefix (or the row's start), LOOK words
    // read at once, then publish this tile's prefix
    u64 before = 0;
    if (j > 0) {
        const long long row_first = tile - j;
        for (long long k = tile - 1;;) {
            S w[LOOK];
            #pragma unroll
            for (int i = 0; i < LOOK; ++i) w[i] = k - i >= row_first ? words[(k - i) * 256 + d] : (S)2u;
            int used = 0;
            bool done = false;
            #pragma unroll
            for (int i = 0; i < LOOK; ++i) {
                if (done || used < i || (w[i] & 3u) == 0) continue;
                before += (u64)(w[i] >> 2);
                used = i + 1;
                done = (w[i] & 3u) == 2u;
            }
            if (done) break;
            k -= used;
        }
        words[tile * 256 + d] = ((S)(before + total) << 2) | 2u;
    }
    sh.global_base[d] = (long long)(offsets[row * 256 + d] + before) - (long long)exclusive;
    __syncthreads();
    unsigned out_digit[ITEMS];
    #pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
        const int at = threadIdx.x + i * THREADS;
        if (FULL || at < count) {
            const U k = keys[at];
            const int digit = digit_of(k, shift, descending);
            kout[sh.global_base[digit] + at] = k;
            if (PAIRS) out_digit[i] = digit;
        }
    }
    if (PAIRS) {
        // the values the same way, each to where its key went
        __syncthreads();
        VOUT* values = (VOUT*)sh.exchange;
        #pragma unroll
        for (int i = 0; i < ITEMS; ++i) {
            const int at = first + i * 32;
            if (FULL || at < count) values[slot[i] >> 9] = vin == nullptr ? (VOUT)(j * TILE + at) : (VOUT)vin[start + at];
        }
        __syncthreads();
        #pragma unroll
        for (int i = 0; i < ITEMS; ++i) {
            const int at = threadIdx.x + i * THREADS;
            if (FULL || at < count) vout[sh.global_base[out_digit[i]] + at] = values[at];
        }
    }
}

template <class S, class VIN, class VOUT, bool PAIRS, bool MATCH> __device__ void loom_radix_pass(
        const U* __restrict__ kin, U* __restrict__ kout, const VIN* __restrict__ vin,
        VOUT* __restrict__ vout, long long L, long long tiles_per_row, int shift, int descending,
        const u64* __restrict__ offsets, S* status) {
    constexpr int EXCHANGE = TILE * (PAIRS && sizeof(VOUT) > sizeof(U) ? sizeof(VOUT) : sizeof(U));
    __shared__ Shared<EXCHANGE> sh;
    if (threadIdx.x == 0) sh.tile = (long long)atomicAdd((u64*)(status + (long long)gridDim.x * 256), 1ull);
    for (int i = threadIdx.x; i < WARPS * 256; i += THREADS) (&sh.warp_counts[0][0])[i] = 0;
    sh.tile_counts[threadIdx.x] = 0;
    __syncthreads();
    const long long tile = sh.tile, row = tile / tiles_per_row, j = tile %% tiles_per_row;
    const long long start = row * L + j * TILE;                  // the tile's first value
    const int count = (int)min((long long)TILE, L - j * TILE);
    if (count == TILE) {
        radix_tile<S, VIN, VOUT, PAIRS, MATCH, true>(sh, kin, kout, vin, vout, row, j, start, count, shift,
                                                     descending, offsets, status);
    } else {
        radix_tile<S, VIN, VOUT, PAIRS, MATCH, false>(sh, kin, kout, vin, vout, row, j, start, count, shift,
                                                      descending, offsets, status);
    }
}

// A whole row of at most TILE values sorted by one block (rows of `blockIdx.x`): every pass ranks
// the row in shared memory as radix_tile ranks a tile, lays it out in digit order there and reads
// it back, values in registers between passes; a pass whose digit is one for the whole row moves
// nothing. PAIRS: the positions move beside the values (uint32), written out as int64.
template <bool PAIRS> __device__ void loom_radix_rows(const U* __restrict__ kin, U* __restrict__ kout,
                                                      long long* __restrict__ vout, int L, int descending) {
    extern __shared__ __align__(16) unsigned char dynamic[];
    U* keys_s = (U*)dynamic;                                    // [TILE]
    unsigned* pos_s = (unsigned*)(keys_s + TILE);               // [TILE] with PAIRS
    __shared__ unsigned warp_counts[WARPS][256], warp_sums[WARPS];
    __shared__ int trivial[PASSES];                             // whether pass p's digit is one (no reset:
                                                                // a slow thread may still read it)
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, d = threadIdx.x;
    const int first = warp * 32 * ITEMS + lane;
    const long long base = (long long)blockIdx.x * L;
    U key[ITEMS];
    unsigned pos[ITEMS], slot[ITEMS];
    #pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
        const int at = first + i * 32;
        key[i] = at < L ? kin[base + at] : (U)0;
        pos[i] = at;
    }
    const unsigned lower = (1u << lane) - 1u;
    if (threadIdx.x < PASSES) trivial[threadIdx.x] = 0;
    for (int p = 0; p < PASSES; ++p) {
        for (int i = threadIdx.x; i < WARPS * 256; i += THREADS) (&warp_counts[0][0])[i] = 0;
        __syncthreads();
        unsigned* counts = warp_counts[warp];
        #pragma unroll
        for (int i = 0; i < ITEMS; ++i) {
            const unsigned digit = first + i * 32 < L ? digit_of(key[i], 8 * p, descending) : NONE;
            slot[i] = digit | warp_rank<false, true>(digit, counts, lower) << 9;
        }
        __syncthreads();
        unsigned total = 0;
        #pragma unroll
        for (int w = 0; w < WARPS; ++w) total += warp_counts[w][d];
        if (total == (unsigned)L) trivial[p] = 1;               // the row's digits are all d
        const unsigned scanned = scan_digits(total, warp_sums);
        if (trivial[p]) continue;                               // (the same for every thread)
        warp_starts(warp_counts, d, digit_start(scanned, total, warp_sums));
        __syncthreads();
        #pragma unroll
        for (int i = 0; i < ITEMS; ++i) {
            if ((slot[i] & 511u) < NONE) {
                const unsigned at = counts[slot[i] & 511u] + (slot[i] >> 9);
                keys_s[at] = key[i];
                if (PAIRS) pos_s[at] = pos[i];
            }
        }
        __syncthreads();
        #pragma unroll
        for (int i = 0; i < ITEMS; ++i) {
            const int at = first + i * 32;
            if (at < L) {
                key[i] = keys_s[at];
                if (PAIRS) pos[i] = pos_s[at];
            }
        }
    }
    #pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
        const int at = first + i * 32;
        if (at < L) {
            kout[base + at] = key[i];
            if (PAIRS) vout[base + at] = pos[i];
        }
    }
}

// the kernels of this module, each way of ranking: keys alone (KIND 0), with positions that move as
// uint32 (KIND 1), with int64 positions (KIND 2: rows past 2^32 values); rows of one tile, a block
// each (KIND 3)
#define PASS(name, VIN, VOUT, PAIRS, MATCH) \
extern "C" __global__ void __launch_bounds__(THREADS, PAIRS ? PAIR_BLOCKS : KEY_BLOCKS) name( \
        const U* kin, U* kout, const VIN* vin, VOUT* vout, long long L, long long tiles_per_row, \
        int shift, int descending, const u64* offsets, STATUS* status) { \
    loom_radix_pass<STATUS, VIN, VOUT, PAIRS, MATCH>(kin, kout, vin, vout, L, tiles_per_row, shift, \
                                                     descending, offsets, status); \
}
#if KIND == 0
PASS(loom_radix_keys_ballot, unsigned, unsigned, false, false)
PASS(loom_radix_keys_match, unsigned, unsigned, false, true)
#elif KIND == 1
PASS(loom_radix_pairs_u32_u32_ballot, unsigned, unsigned, true, false)
PASS(loom_radix_pairs_u32_u32_match, unsigned, unsigned, true, true)
PASS(loom_radix_pairs_u32_i64_ballot, unsigned, long long, true, false)
PASS(loom_radix_pairs_u32_i64_match, unsigned, long long, true, true)
#elif KIND == 2
PASS(loom_radix_pairs_i64_i64_ballot, long long, long long, true, false)
PASS(loom_radix_pairs_i64_i64_match, long long, long long, true, true)
#else
extern "C" __global__ void __launch_bounds__(THREADS) loom_radix_rows_keys(const U* kin, U* kout, int L, int descending) {
    loom_radix_rows<false>(kin, kout, nullptr, L, descending);
}
extern "C" __global__ void __launch_bounds__(THREADS) loom_radix_rows_pairs(const U* kin, U* kout, long long* vout, int L,
                                                                             int descending) {
    loom_radix_rows<true>(kin, kout, vout, L, descending);
}
#endif
"""


def _items(dtype: np.dtype, pairs: bool) -> int:
    """Values a thread takes in a pass: 20 of keys alone up to 4 bytes, else 16 (what fits 48 KB of
    shared memory; 20 was 5% faster than 16 for float32 on an H100)."""
    return 16 if pairs or dtype.itemsize > 4 else 20


@cache
def _module(dtype: np.dtype, kind: int, wide: bool = False, items: int | None = None) -> cupy.RawModule:
    """The kernels for dtype: the counting kernel and the passes of keys alone (kind 0), with uint32
    positions (1) or int64 ones (2), or the one-block row sorts (3, `items` values a thread); wide:
    64-bit look-back words (rows of 2^30 values or more)."""
    mode = {"f": 2, "i": 1}.get(dtype.kind, 0)             # the key: float, signed, unsigned
    inf = _FLOATS[dtype][1] if mode == 2 else 0
    return cupy.RawModule(code=_SOURCE % {
        "type": _CTYPES[dtype.itemsize], "mode": mode, "inf": hex(inf), "threads": THREADS,
        "items": items or _items(dtype, kind > 0), "kind": kind, "status": "u64" if wide else "unsigned",
        "key_blocks": 4 if dtype.itemsize <= 4 else 3, "pair_blocks": 3}, options=OPTIONS)


class RadixSort:
    """Stable sorts of rows on the GPU (protocols.SortKernels)."""

    DTYPES = _DTYPES
    ROW_TILE = THREADS * 16     # rows up to this long: one block sorts each
    MIN_ROW = 1 << 16           # longer rows, past the first, take the passes from this length (the
                                # digit counts of every row go to the host); between the two, the
                                # array library's sort

    def takes(self, x: Array) -> bool:
        """Whether sort/argsort take x: a dtype of DTYPES, and one row, rows of at most ROW_TILE
        values, or rows of at least MIN_ROW values (fewer than 65,536 of them)."""
        if np.dtype(x.dtype) not in _DTYPES or x.ndim < 1 or x.size == 0:
            return False
        L = x.shape[-1]
        rows = x.size // L
        return rows == 1 or L <= self.ROW_TILE or (L >= self.MIN_ROW and rows < 65536)     # (a grid's y limit)

    def sort(self, x: Array, descending: bool) -> Array:
        """x sorted along its last axis, stably, in loom.sort's order (takes(x))."""
        with translating("radix sort", x):
            return self._run(x, descending, pairs=False)[0]

    def argsort(self, x: Array, descending: bool) -> Array:
        """int64 positions that sort x along its last axis, stably, in loom.argsort's order (takes(x))."""
        with translating("radix argsort", x):
            return self._run(x, descending, pairs=True)[1]

    def _run(self, x: Array, descending: bool, pairs: bool) -> tuple[Array | None, Array | None]:
        """(x sorted, None) or, with pairs, (x sorted or None, the positions that sort it)."""
        dtype, keys, rows, L = _keys(x)
        if L <= self.ROW_TILE:
            return self._rows(keys, dtype, rows, L, descending, pairs)
        wide = L >= 1 << 30
        counts = self._histogram(keys, dtype, rows, L, descending)
        todo = _needed(counts, L)
        if not todo:
            return (None, self._positions(x.shape)) if pairs else (keys.copy().view(dtype).reshape(x.shape), None)
        starts = np.cumsum(counts, axis=2, dtype=np.int64) - counts.astype(np.int64)
        starts += (np.arange(rows, dtype=np.int64) * L)[:, None, None]
        offsets = cupy.asarray(np.ascontiguousarray(starts.transpose(1, 0, 2)).view(np.uint64))
        tiles_per_row = -(-L // (THREADS * _items(dtype, pairs)))
        tiles = rows * tiles_per_row
        status = cupy.empty(tiles * RADIX + (1 if wide else 2), dtype=np.uint64 if wide else np.uint32)
        # positions below 2^32 move as uint32 until the last pass writes them as int64
        narrow = L <= 1 << 32
        module = _module(dtype, (1 if narrow else 2) if pairs else 0, wide)
        # ping-pong buffers, made when first used (a pass or two need fewer)
        buffers: list = [None, None]
        vbuffers: list = [None, None]
        src, vsrc = keys, _NULL
        for n, p in enumerate(todo):
            last = n == len(todo) - 1
            if buffers[n % 2] is None:
                buffers[n % 2] = cupy.empty_like(keys)
            dst = buffers[n % 2]
            vdst = _NULL
            if pairs and last and narrow:
                vdst = cupy.empty(x.shape, dtype=np.int64)
            elif pairs:
                if vbuffers[n % 2] is None:
                    vbuffers[n % 2] = cupy.empty(x.shape, dtype=np.uint32 if narrow else np.int64)
                vdst = vbuffers[n % 2]
            rank = "match" if _few_digits(counts[:, p, :]) else "ballot"
            kind = f"pairs_{'u32' if narrow else 'i64'}_{'i64' if vdst.dtype == np.int64 else 'u32'}" if pairs else "keys"
            status.fill(0)
            module.get_function(f"loom_radix_{kind}_{rank}")((tiles,), (THREADS,), (
                src, dst, vsrc, vdst, np.int64(L), np.int64(tiles_per_row), np.int32(8 * p),
                np.int32(descending), offsets[p], status))
            src, vsrc = dst, vdst
        return src.view(dtype).reshape(x.shape), (vsrc if pairs else None)

    def digit_passes(self, x: Array) -> int:
        """How many passes over the whole of x sort(x) makes after counting its digits (each reads and
        writes every key once; the count reads them once more): 0 where one block sorts each row in
        shared memory. Benchmarks count the bytes a sort moves from it."""
        if not self.takes(x) or x.shape[-1] <= self.ROW_TILE:
            return 0
        dtype, keys, rows, L = _keys(x)
        return len(_needed(self._histogram(keys, dtype, rows, L, False), L))

    @staticmethod
    def _rows(keys: Array, dtype: np.dtype, rows: int, L: int, descending: bool, pairs: bool) -> tuple[Array, Array | None]:
        """_run for rows of at most ROW_TILE values: one block a row, the row in shared memory."""
        items = 4 if L <= THREADS * 4 else 16
        fn = _module(dtype, 3, items=items).get_function("loom_radix_rows_pairs" if pairs else "loom_radix_rows_keys")
        shared = THREADS * items * (dtype.itemsize + (4 if pairs else 0))
        fn.max_dynamic_shared_size_bytes = shared
        out = cupy.empty_like(keys)
        positions = cupy.empty(keys.shape, dtype=np.int64) if pairs else None
        flat = [a.reshape(rows, L) for a in (keys, out) + ((positions,) if pairs else ())]
        for r in range(0, rows, _MAX_GRID_X):           # (a row a block: at most 2^31 - 1 of them a launch)
            fn((min(_MAX_GRID_X, rows - r),), (THREADS,), tuple(a[r:r + _MAX_GRID_X] for a in flat)
               + (np.int32(L), np.int32(descending)), shared_mem=shared)
        return out.view(dtype), positions

    @staticmethod
    def _histogram(keys: Array, dtype: np.dtype, rows: int, L: int, descending: bool) -> np.ndarray:
        """[rows, passes, 256] counts of every pass's digits, on the host."""
        hist = cupy.zeros((rows, dtype.itemsize, RADIX), dtype=np.uint64)
        blocks = max(1, min(_HISTOGRAM_BLOCKS // rows, -(-L // 4096)))
        _module(dtype, 0, False).get_function("loom_radix_histogram")(
            (blocks, rows), (THREADS,), (keys, np.int64(L), np.int32(descending), hist))
        return cupy.asnumpy(hist)

    @staticmethod
    def _positions(shape: tuple) -> Array:
        return cupy.broadcast_to(cupy.arange(shape[-1], dtype=np.int64), shape).copy()


def _keys(x: Array) -> tuple[np.dtype, Array, int, int]:
    """(x's dtype, its bits as unsigned integers, C-ordered, rows, row length)."""
    dtype = np.dtype(x.dtype)
    L = x.shape[-1]
    return dtype, cupy.ascontiguousarray(x).view(_PATTERNS[dtype.itemsize]), x.size // L, L


def _needed(counts: np.ndarray, L: int) -> list[int]:
    """The passes (digit positions, in order) that move anything, from counts [rows, passes, 256]: a pass
    whose digit is one for all of a row's values, in every row, is skipped."""
    return [p for p in range(counts.shape[1]) if not (counts[:, p, :].max(axis=1) == L).all()]


def _few_digits(counts: np.ndarray) -> bool:
    """Whether a pass's digits (counts [rows, 256]) are concentrated enough for __match_any_sync's
    ranking, which is faster than ballots where a warp's 32 values hold few distinct digits: the
    inverse Simpson index (how many equally common digits would give the same chance that two
    values share one) below 32."""
    c = counts.sum(axis=0, dtype=np.float64)
    return c.sum() ** 2 < _MATCH_DIGITS * float((c * c).sum())
