"""Exact prime counting and listing on the GPU: a segmented, odd-only, bit-packed sieve of Eratosthenes.

The odd numbers of [lo, hi) are bits (index i stands for 2i + 1). Each block of persistent threads
sieves a contiguous run of segments of 2^LOG_SEGMENT bits in shared memory:
- the primes 3..31 are pre-sieved word by word with arithmetic (a word's 32 odd numbers hold the
  multiples of p at bit positions b0, b0 + p, ...), no memory traffic at all;
- the primes from 37 to 4093 are marked by whole warps, the lanes taking every 32nd multiple;
- larger base primes below the segment's bits are one thread's each, striding through the segment;
- primes of at least a segment's bits (at most one multiple a segment) are bucket-sieved: once a
  window of WINDOW segments, each files its multiples in the window under their segments, and each
  segment strikes what its bucket holds.
Each prime's next multiple is kept per block in global memory (`next`), so the 64-bit division that
finds a prime's first multiple happens once per block, not once per segment. Counting is popcount
over the words (the unmarked bits), exact in 64-bit integers and summed with integer atomics, so the
result never depends on the order blocks finish. The caller (loom.engine.primes) adds 2, the
pre-sieved primes themselves and removes 1 (index 0), from the base primes it passes in.
"""
from __future__ import annotations

from types import ModuleType

import numpy as np

from .. import Array
from .compile import translating

LOG_SEGMENT = 20                # bits per segment: 2^20 bits = 128 KiB of shared memory, 2^21 numbers,
                                # or the largest power of two a GPU's blocks may hold (48 KiB and up)
THREADS = 1024
PRESIEVED = (3, 5, 7, 11, 13, 17, 19, 23, 29, 31)
WARP_PRIMES_BELOW = 4096        # primes below this are marked by a whole warp
NEXT_BYTES = 1 << 32            # at most this much memory for the per-block next multiples and buckets
WINDOW = 32                     # segments a large prime's multiples are bucketed for at once (<= 64)

_SOURCE = r"""
#define LOG_SEG %(log_segment)d
#define SEG_BITS (1u << LOG_SEG)
#define SEG_WORDS (SEG_BITS / 32u)
#define MAX_WINDOW 64

__device__ __forceinline__ unsigned int presieve_word(unsigned long long i0) {
    // bit b of the word stands for 2(i0 + b) + 1, a multiple of p when i0 + b = (p - 1)/2 mod p
    unsigned int m = 0;
#define PRESIEVE(p) { unsigned int b = (unsigned int)(((p - 1) / 2 + p - (unsigned int)(i0 %% p)) %% p); \
                      for (; b < 32u; b += p) m |= 1u << b; }
    PRESIEVE(3u) PRESIEVE(5u) PRESIEVE(7u) PRESIEVE(11u) PRESIEVE(13u)
    PRESIEVE(17u) PRESIEVE(19u) PRESIEVE(23u) PRESIEVE(29u) PRESIEVE(31u)
    return m;
}

// The primes from primes[nlarge] on are at least a segment's bits apart: at most one multiple a segment.
// Once a window of `window` segments, each such prime files its multiples in the window into the
// window's buckets (a count pass, then a write pass: one region of `hits` per segment, offsets
// within the segment); each segment then strikes its bucket. So those primes are read twice a
// window rather than once a segment, and only their multiples are touched in between.
extern "C" __global__ void __launch_bounds__(1024)
loom_sieve(unsigned long long i_lo, unsigned long long i_hi, long long segments, long long per_block,
           const unsigned int* __restrict__ primes, int nprimes, int nwarp_primes, int nlarge,
           unsigned long long* __restrict__ next, unsigned long long* count, unsigned int* out,
           unsigned int* __restrict__ hits, long long hits_per_block, int window)
{
    extern __shared__ unsigned int words[];
    __shared__ unsigned int s_count[MAX_WINDOW], s_base[MAX_WINDOW], s_fill[MAX_WINDOW];
    const long long first = (long long)blockIdx.x * per_block;
    const long long last = min(first + per_block, segments);
    if (first >= last) return;
    unsigned long long* nx = next + (unsigned long long)blockIdx.x * (unsigned long long)nprimes;
    const unsigned int lane = threadIdx.x & 31u, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;

    // each prime's first odd multiple at or after max(p^2, the block's first number), as an offset
    const unsigned long long start = i_lo + (unsigned long long)first * SEG_BITS;
    for (int j = threadIdx.x; j < nprimes; j += blockDim.x) {
        const unsigned long long p = primes[j];
        const unsigned long long square = (p * p - 1ull) / 2ull;      // the index of p^2
        unsigned long long off;
        if (square >= start) {
            off = square - start;
        } else {
            const unsigned long long r = (start - (p - 1ull) / 2ull) %% p;
            off = r ? p - r : 0ull;
        }
        nx[j] = off;
    }
    __syncthreads();

    unsigned long long total = 0;
    unsigned int* bucket = hits + (unsigned long long)blockIdx.x * (unsigned long long)hits_per_block;
    for (long long s = first; s < last; ++s) {
        const int in_window = (int)((s - first) %% window);
        if (in_window == 0 && nlarge < nprimes) {                      // a new window: fill its buckets
            const int nseg = (int)min((long long)window, last - s);
            const unsigned long long w_start = i_lo + (unsigned long long)s * SEG_BITS;
            const unsigned long long w_bits = min((unsigned long long)nseg * SEG_BITS, i_hi - w_start);
            if (threadIdx.x < MAX_WINDOW) { s_count[threadIdx.x] = 0; s_fill[threadIdx.x] = 0; }
            __syncthreads();
            for (int j = nlarge + threadIdx.x; j < nprimes; j += blockDim.x) {
                const unsigned long long p = primes[j];
                for (unsigned long long o = nx[j]; o < w_bits; o += p) atomicAdd(&s_count[o >> LOG_SEG], 1u);
            }
            __syncthreads();
            if (threadIdx.x == 0) {
                unsigned int sum = 0;
                for (int k = 0; k < nseg; ++k) { s_base[k] = sum; sum += s_count[k]; }
            }
            __syncthreads();
            for (int j = nlarge + threadIdx.x; j < nprimes; j += blockDim.x) {
                const unsigned long long p = primes[j];
                unsigned long long o = nx[j];
                for (; o < w_bits; o += p) {
                    const unsigned int k = (unsigned int)(o >> LOG_SEG);
                    bucket[s_base[k] + atomicAdd(&s_fill[k], 1u)] = (unsigned int)(o & (SEG_BITS - 1u));
                }
                nx[j] = o - w_bits;
            }
            __syncthreads();
        }
        const unsigned long long seg = i_lo + (unsigned long long)s * SEG_BITS;
        const unsigned long long left = i_hi - seg;
        const unsigned int bits = left < SEG_BITS ? (unsigned int)left : SEG_BITS;
        for (unsigned int w = threadIdx.x; w < SEG_WORDS; w += blockDim.x)
            words[w] = presieve_word(seg + 32ull * w);
        __syncthreads();
        for (int j = warp; j < nwarp_primes; j += warps) {              // small primes: a warp each
            const unsigned int p = primes[j];
            const unsigned long long off = nx[j];
            if (off < bits) {
                for (unsigned int o = (unsigned int)off + lane * p; o < bits; o += 32u * p)
                    atomicOr(&words[o >> 5], 1u << (o & 31u));
            }
            __syncwarp();
            if (lane == 0) {
                unsigned long long o = off;
                if (o < bits) o += ((bits - o + p - 1ull) / p) * p;
                nx[j] = o - bits;
            }
        }
        for (int j = nwarp_primes + threadIdx.x; j < nlarge; j += blockDim.x) {    // a thread each
            const unsigned int p = primes[j];
            unsigned long long o = nx[j];
            for (; o < bits; o += p)
                atomicOr(&words[o >> 5], 1u << ((unsigned int)o & 31u));
            nx[j] = o - bits;
        }
        if (nlarge < nprimes) {                                         // the large primes' bucket
            const unsigned int* mine = bucket + s_base[in_window];
            for (unsigned int k = threadIdx.x; k < s_count[in_window]; k += blockDim.x)
                atomicOr(&words[mine[k] >> 5], 1u << (mine[k] & 31u));
        }
        __syncthreads();
        for (unsigned int w = threadIdx.x; w < SEG_WORDS; w += blockDim.x) {
            const unsigned int base = w * 32u;
            const unsigned int valid = base >= bits ? 0u : (bits - base >= 32u ? 32u : bits - base);
            const unsigned int mask = valid == 32u ? 0xffffffffu : ((1u << valid) - 1u);
            const unsigned int primes_here = ~words[w] & mask;
            if (out) out[(unsigned long long)s * SEG_WORDS + w] = primes_here;
            total += __popc(primes_here);
        }
        __syncthreads();
    }
    // the block's count: a warp sum, then one integer atomic per warp
    for (int d = 16; d > 0; d >>= 1) total += __shfl_down_sync(0xffffffffu, total, d);
    if (lane == 0 && total) atomicAdd(count, total);
}
"""


class Primes:
    """The GPU sieve (protocols: the `primes` family): count and bitmap of the odd numbers of a range
    that no base prime divides."""

    PRESIEVED = PRESIEVED

    def __init__(self, cp: ModuleType, log_segment: int = LOG_SEGMENT, window: int = WINDOW):
        self._cp = cp
        self._kernel = None
        props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
        self._sms = int(props["multiProcessorCount"])
        shared = int(props.get("sharedMemPerBlockOptin", 0) or props.get("sharedMemPerBlock", 48 * 1024))
        self._log_segment = min(log_segment, (8 * (shared - 1024)).bit_length() - 1)
        self._segment_bits = 1 << self._log_segment
        if not 1 <= window <= 64:                  # MAX_WINDOW: the kernel's per-window counters
            raise ValueError(f"window must be 1..64 segments, got {window}")
        self._window = window

    def _function(self):
        if self._kernel is None:
            from .compile import OPTIONS
            with translating("compiling the sieve"):
                module = self._cp.RawModule(code=_SOURCE % {"log_segment": self._log_segment}, options=OPTIONS)
                kernel = module.get_function("loom_sieve")
                kernel.max_dynamic_shared_size_bytes = self._segment_bits // 8
                self._kernel = kernel
        return self._kernel

    def sieve(self, lo: int, hi: int, base_primes: np.ndarray, bitmap: bool = False) -> int | tuple[int, Array]:
        """Sieve the odd numbers of [lo, hi) by the odd base primes > 31 in `base_primes` (every
        prime up to sqrt(hi - 1) above 31, ascending) after pre-sieving 3..31. Returns the count of
        unmarked odd numbers, or with bitmap=True that count and a CuPy uint32 array of bits (bit i:
        the number 2(lo // 2 + i) + 1 is unmarked)."""
        cp = self._cp
        i_lo, i_hi = lo // 2, hi // 2
        bits = i_hi - i_lo
        if bits <= 0:
            return (0, cp.zeros(0, np.uint32)) if bitmap else 0
        segments = -(-bits // self._segment_bits)
        primes = base_primes[base_primes > PRESIEVED[-1]].astype(np.uint32)
        nprimes = int(primes.size)
        nwarp = int(np.searchsorted(primes, WARP_PRIMES_BELOW))
        nlarge = max(nwarp, int(np.searchsorted(primes, self._segment_bits)))   # at most a multiple a segment
        # a window: at most the segments a block would have with a block an SM (fewer blocks only
        # lengthen the runs, not the windows)
        window = min(self._window, -(-segments // min(segments, self._sms)))
        span = window * self._segment_bits
        bucket = int((-(-span // primes[nlarge:].astype(np.int64))).sum())      # a window's multiples, at most
        blocks = min(segments, self._sms, max(1, NEXT_BYTES // max(8 * nprimes + 4 * bucket, 1)))
        per_block = -(-segments // blocks)
        with translating(f"sieving [{lo}, {hi})"):
            d_primes = cp.asarray(primes) if nprimes else cp.zeros(1, np.uint32)
            d_next = cp.empty(max(blocks * nprimes, 1), dtype=np.uint64)
            d_hits = cp.empty(max(blocks * bucket, 1), dtype=np.uint32)
            count = cp.zeros(1, dtype=np.uint64)
            out = cp.zeros(segments * (self._segment_bits // 32), dtype=np.uint32) if bitmap else None
            self._function()((blocks,), (THREADS,),
                             (np.uint64(i_lo), np.uint64(i_hi), np.int64(segments), np.int64(per_block),
                              d_primes, np.int32(nprimes), np.int32(nwarp), np.int32(nlarge), d_next, count,
                              out if out is not None else np.uint64(0), d_hits, np.int64(bucket),
                              np.int32(window)),
                             shared_mem=self._segment_bits // 8)
            total = int(count.get()[0])
        return (total, out) if bitmap else total

    def odd_survivors(self, lo: int, hi: int, base_primes: np.ndarray) -> Array:
        """The unmarked odd numbers of [lo, hi) as a CuPy uint64 array, ascending."""
        cp = self._cp
        _, words = self.sieve(lo, hi, base_primes, bitmap=True)
        with translating(f"listing [{lo}, {hi})"):
            flags = cp.unpackbits(words.view(cp.uint8), bitorder="little")
            index = cp.flatnonzero(flags).astype(cp.uint64)
            return index * cp.uint64(2) + cp.uint64(2 * (lo // 2) + 1)
