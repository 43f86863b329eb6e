"""The special sum of Lagarias-Miller-Odlyzko prime counting on the GPU (see loom/engine/lmo.py for
the method and its NumPy reference, which this computes the same integer as).

The odd numbers of [1, z] are cut into segments of 2^LOG_SEGMENT bits, one block each, all blocks of
a wave at once. A block walks its segment through the levels b = 1, 2, ... (level b: the first b
primes struck), one prime per step while the leaves still need the levels in between (a shared
counter of the bits each step clears keeps the segment's count), then several primes per step. Past
b0 = pi(sqrt(segment end)) a prime strikes only itself, so the remaining levels are read off one
state with a correction (how many of the primes struck since are in range): no more steps.

At each level with queries (leaves of p_{b+1}, or the x / q of P2 at b*), a block-wide prefix sum
of popcounts answers each value's count within the segment. A block cannot know how many numbers
below its segment survive each level, so it writes its own count per level (C) and the sum of its
queries' weights per level (W); after each wave, C's running sum over segments (carried between
waves) turns W into the missing part: sum W * (the counts of the segments before). All arithmetic
is modulo 2^64 on integers, so the order blocks finish in does not matter.
"""
from __future__ import annotations

import math
from types import ModuleType

import numpy as np

from .compile import translating

LOG_SEGMENT = 20                # bits per segment (128 KiB of shared memory)
THREADS = 1024
TABLE_BYTES = 1 << 30           # the per-wave C and W tables and their temporaries (about 56 B an entry)
MASK = (1 << 64) - 1

_SOURCE = r"""
#define LOG_SEG %(log_segment)d
#define SEG_BITS (1u << LOG_SEG)
#define SEG_WORDS (SEG_BITS / 32u)
#define THREADS %(threads)d
#define WARPS (THREADS / 32)
#define WPT (SEG_WORDS / THREADS)
typedef unsigned long long u64;

__device__ __forceinline__ int count_le(const unsigned int* __restrict__ v, int n, u64 t) {
    int lo = 0, hi = n;                                   // how many of ascending v[0..n) are <= t
    while (lo < hi) { const int mid = (lo + hi) >> 1; if ((u64)v[mid] <= t) lo = mid + 1; else hi = mid; }
    return lo;
}

__device__ __forceinline__ u64 isqrt64(u64 t) {
    u64 r = (u64)sqrt((double)t);
    if (r > 0xffffffffull) r = 0xffffffffull;
    while (r * r > t) --r;
    while (r < 0xffffffffull && (r + 1) * (r + 1) <= t) ++r;
    return r;
}

__device__ __forceinline__ unsigned int warp_inclusive_sum(unsigned int v, unsigned int lane) {
    for (unsigned int d = 1; d < 32u; d <<= 1) {
        const unsigned int t = __shfl_up_sync(0xffffffffu, v, d);
        if (lane >= d) v += t;
    }
    return v;
}

// s_pre[t]: the set bits of the words before thread t's WPT words
__device__ void prefix_popcounts(const unsigned int* words, unsigned int* s_pre, unsigned int* s_warp) {
    const unsigned int tid = threadIdx.x, lane = tid & 31u, warp = tid >> 5;
    unsigned int own = 0;
    for (unsigned int k = 0; k < WPT; ++k) own += __popc(words[tid * WPT + ((k + lane) & (WPT - 1u))]);
    const unsigned int v = warp_inclusive_sum(own, lane);
    if (lane == 31u) s_warp[warp] = v;
    __syncthreads();
    if (warp == 0) {
        const unsigned int mine = lane < WARPS ? s_warp[lane] : 0u;
        const unsigned int w = warp_inclusive_sum(mine, lane);
        if (lane < WARPS) s_warp[lane] = w - mine;
    }
    __syncthreads();
    s_pre[tid] = s_warp[warp] + v - own;
    __syncthreads();
}

// the set bits at positions <= li
__device__ __forceinline__ unsigned int count_to(const unsigned int* words, const unsigned int* s_pre, unsigned int li) {
    const unsigned int w = li >> 5, t = w / WPT, sh = li & 31u;
    unsigned int c = s_pre[t];
    for (unsigned int k = t * WPT; k < w; ++k) c += __popc(words[k]);
    return c + __popc(words[w] & (sh == 31u ? 0xffffffffu : ((2u << sh) - 1u)));
}

// strike the odd multiples of p (p itself included) in the segment; returns the bits this thread cleared
__device__ __forceinline__ unsigned int strike(unsigned int* words, u64 p, u64 lo, u64 hi, unsigned int bits,
                                               unsigned int from, unsigned int stride) {
    u64 n0 = p;
    if (p < lo) n0 = (((lo + p - 1ull) / p) | 1ull) * p;
    if (n0 > hi) return 0u;
    unsigned int cleared = 0;
    for (u64 o = (n0 - lo) / 2ull + (u64)from * p; o < bits; o += (u64)stride * p) {
        const unsigned int m = 1u << ((unsigned int)o & 31u);
        cleared += (atomicAnd(&words[o >> 5], ~m) & m) != 0u;
    }
    return cleared;
}

struct Segment {
    u64 x, y, first, lo, hi;
    const unsigned int* primes; const int* leaf; const int* pi; const unsigned int* q;
    int a, struck_from;     // struck_from: past b0, primes[j] for j >= struck_from are in range and struck
                            // at level j + 1 without showing in the words (1 << 30 before b0)
};

// phi(v, b) within the segment: the words' count, less the primes struck since b0 that are <= v
__device__ __forceinline__ unsigned int phi_here(const Segment& s, const unsigned int* words, const unsigned int* s_pre,
                                                 u64 v, int b) {
    unsigned int c = count_to(words, s_pre, (unsigned int)((v - 1ull) / 2ull - s.first));
    if (s.struck_from <= b) c -= (unsigned int)max(0, min(v <= s.y ? s.pi[v] : s.a, b) - s.struck_from);
    return c;
}

// the leaves of p_{b+1} with values in the segment, read at level b: sum of -mu(m) phi(x / (p m), b) into
// mine, of -mu(m) into the return value
__device__ int leaves_at(const Segment& s, const unsigned int* words, const unsigned int* s_pre, int b, u64& mine) {
    const u64 p = s.primes[b];
    const u64 m_lo = max(max(s.y / p, s.x / (s.hi + 1ull) / p), p), m_hi = min(s.y, s.x / s.lo / p);   // m_lo < m <= m_hi
    int weights = 0;
    if (m_hi <= m_lo) return 0;
    if (p * p > s.y) {                                           // m <= y with lpf(m) > p > sqrt(y): a prime
        for (int j = s.pi[m_lo] + (int)threadIdx.x; j < s.pi[m_hi]; j += THREADS) {
            mine += phi_here(s, words, s_pre, s.x / (p * s.primes[j]), b);
            weights += 1;
        }
    } else {
        for (u64 m = m_lo + 1ull + threadIdx.x; m <= m_hi; m += THREADS) {
            const int t = s.leaf[m];                             // mu(m) lpf(m)
            if (t > (long long)p || -t > (long long)p) {
                const unsigned int c = phi_here(s, words, s_pre, s.x / (p * m), b);
                if (t > 0) { mine -= c; weights -= 1; } else { mine += c; weights += 1; }
            }
        }
    }
    return weights;
}

// the x / q of P2 in the segment (q = q[qa..qb)), read at level b: sum of -phi into mine, of -1 returned
__device__ int p2_at(const Segment& s, const unsigned int* words, const unsigned int* s_pre, int b, int qa, int qb, u64& mine) {
    int weights = 0;
    for (int j = qa + (int)threadIdx.x; j < qb; j += THREADS) {
        mine -= phi_here(s, words, s_pre, s.x / s.q[j], b);
        weights -= 1;
    }
    return weights;
}

// One block a segment. ctab/wtab rows: columns 1..kmax-1 are levels, column kmax is level b_star.
extern "C" __global__ void __launch_bounds__(THREADS)
loom_lmo(u64 x, u64 y, long long s0, u64 total_bits,
         const unsigned int* __restrict__ primes, int a, const int* __restrict__ leaf, const int* __restrict__ pi,
         const unsigned int* __restrict__ q, int nq, int b_star, int kmax,
         unsigned int* __restrict__ ctab, int* __restrict__ wtab, u64* __restrict__ acc)
{
    extern __shared__ unsigned int words[];
    __shared__ unsigned int s_pre[THREADS];
    __shared__ unsigned int s_warp[32];
    __shared__ unsigned int s_flip[3];
    const unsigned int tid = threadIdx.x, lane = tid & 31u, warp = tid >> 5;
    Segment s;
    s.x = x; s.y = y; s.primes = primes; s.leaf = leaf; s.pi = pi; s.q = q; s.a = a; s.struck_from = 1 << 30;
    s.first = (u64)(s0 + blockIdx.x) * SEG_BITS;                  // the segment's first bit: number 2 first + 1
    s.lo = 2ull * s.first + 1ull; s.hi = 2ull * (s.first + SEG_BITS);    // the values it answers
    const unsigned int bits = (unsigned int)min((u64)SEG_BITS, total_bits - s.first);
    unsigned int* crow = ctab + (u64)blockIdx.x * (u64)(kmax + 1);
    int* wrow = wtab + (u64)blockIdx.x * (u64)(kmax + 1);

    for (unsigned int w = tid; w < SEG_WORDS; w += THREADS) {
        const unsigned int base = w * 32u;
        words[w] = base >= bits ? 0u : (bits - base >= 32u ? 0xffffffffu : ((1u << (bits - base)) - 1u));
    }
    if (tid < 3) s_flip[tid] = 0;
    const int K = count_le(primes, a, isqrt64((x - 1ull) / s.lo));   // leaves here are at levels b < K <= kmax
    const int b0 = count_le(primes, a, isqrt64(s.hi));              // past level b0 a prime strikes only itself
    const int last = max(K - 1, b_star);
    const int seq = min(last, b0);
    const int wide_end = count_le(primes, a, (u64)(SEG_BITS / 64u));  // primes with 64+ multiples a segment
    int qa = 0, qb = 0;                                            // the q with x / q in [lo, hi]
    if (nq) { qa = count_le(q, nq, x / (s.hi + 1ull)); qb = count_le(q, nq, x / s.lo); }
    u64 mine = 0;                                                  // sum of weight * phi within the segment
    __syncthreads();

    unsigned int count = bits;                                     // level 1: every odd number
    int step = 0;
    for (int b = 1; ; ) {
        if (tid == 0) { if (b < kmax) crow[b] = count; if (b == b_star) crow[kmax] = count; }
        const bool leaves = b < K, p2 = b == b_star && qb > qa;
        if (leaves || p2) {
            prefix_popcounts(words, s_pre, s_warp);
            if (leaves) { const int w = leaves_at(s, words, s_pre, b, mine); if (w) atomicAdd(&wrow[b], w); }
            if (p2) { const int w = p2_at(s, words, s_pre, b, qa, qb, mine); if (w) atomicAdd(&wrow[kmax], w); }
            __syncthreads();                                       // before the next strike changes the words
        }
        if (b >= seq) break;
        int target = b + 1;                                        // one prime a step while leaves need it,
        if (b >= K - 1) target = (b < b_star && b_star < seq) ? b_star : seq;   // then on to the next level read
        unsigned int cleared = 0;
        if (target == b + 1) {
            cleared = strike(words, primes[b], s.lo, s.hi, bits, tid, THREADS);
        } else {                                                   // a warp a prime while it has many
            const int few = max(b, min(target, wide_end));         // multiples here, then a thread a prime
            for (int j = b + (int)warp; j < few; j += WARPS)
                cleared += strike(words, primes[j], s.lo, s.hi, bits, lane, 32u);
            for (int j = few + (int)tid; j < target; j += THREADS)
                cleared += strike(words, primes[j], s.lo, s.hi, bits, 0u, 1u);
        }
        if (cleared) atomicAdd(&s_flip[step %% 3], cleared);
        if (tid == 0) s_flip[(step + 1) %% 3] = 0;
        __syncthreads();
        count -= s_flip[step %% 3];
        ++step;
        b = target;
    }

    if (last > seq) {                                              // levels past b0: b0's words, corrected
        prefix_popcounts(words, s_pre, s_warp);
        const int pi_lo = s.lo - 1ull <= y ? pi[s.lo - 1ull] : a;  // the table's primes below lo
        const int pi_hi = s.hi <= y ? pi[s.hi] : a;
        s.struck_from = max(seq, pi_lo);
        // (the last, partial segment may count primes in (z, hi] here: harmless, no later segment reads it)
        for (int b = seq + 1 + (int)tid; b < min(K, kmax); b += THREADS)
            crow[b] = count - (unsigned int)max(0, min(pi_hi, b) - s.struck_from);
        if (tid == 0 && b_star > seq) crow[kmax] = count - (unsigned int)max(0, min(pi_hi, b_star) - s.struck_from);
        for (int b = seq + 1; b < K; ++b) {
            const int w = leaves_at(s, words, s_pre, b, mine);
            if (w) atomicAdd(&wrow[b], w);
        }
        if (b_star > seq && qb > qa) {
            const int w = p2_at(s, words, s_pre, b_star, qa, qb, mine);
            if (w) atomicAdd(&wrow[kmax], w);
        }
    }
    for (int d = 16; d > 0; d >>= 1) mine += __shfl_down_sync(0xffffffffu, mine, d);
    if (lane == 0 && mine) atomicAdd(acc, mine);
}
"""


class Lmo:
    """The GPU's part of LMO prime counting: `special` of a loom.engine.lmo.Plan's arrays."""

    def __init__(self, cp: ModuleType, log_segment: int = LOG_SEGMENT, threads: int = THREADS):
        # the prefix sums give each thread a power of two of whole words (WPT >= 1)
        if threads & (threads - 1) or not 32 <= threads <= 1024:
            raise ValueError(f"threads must be a power of two in 32..1024, got {threads}")
        if log_segment < 5 + threads.bit_length() - 1:
            raise ValueError(f"a segment of 2^{log_segment} bits gives {threads} threads less than a word each")
        self._cp = cp
        props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
        shared = int(props.get("sharedMemPerBlockOptin", 0) or props.get("sharedMemPerBlock", 48 * 1024))
        spare = shared - 4 * threads - 256                       # the static shared arrays
        self._log_segment = min(log_segment, (8 * spare).bit_length() - 1)
        self._threads = threads
        self._kernel = None

    def _function(self):
        if self._kernel is None:
            from .compile import OPTIONS
            with translating("compiling the LMO sieve"):
                code = _SOURCE % {"log_segment": self._log_segment, "threads": self._threads}
                kernel = self._cp.RawModule(code=code, options=OPTIONS).get_function("loom_lmo")
                kernel.max_dynamic_shared_size_bytes = (1 << self._log_segment) // 8
                self._kernel = kernel
        return self._kernel

    def special(self, x: int, y: int, primes: np.ndarray, leaf: np.ndarray, pi: np.ndarray, q: np.ndarray,
                b_star: int) -> int:
        """The special sum of loom.engine.lmo (whose Plan holds these arguments), modulo 2^64."""
        cp = self._cp
        seg_bits = 1 << self._log_segment
        total_bits = (x // (y + 1) + 1) // 2          # the odd numbers of [1, z]
        segments = -(-total_bits // seg_bits)
        kernel = self._function()
        a, nq = int(primes.size), int(q.size)
        with translating(f"LMO special leaves of x={x}"):
            d_primes = cp.asarray(primes.astype(np.uint32))
            d_leaf, d_pi = cp.asarray(leaf), cp.asarray(pi)
            d_q = cp.asarray(q.astype(np.uint32)) if nq else cp.zeros(1, np.uint32)
            acc = cp.zeros(1, dtype=np.uint64)
            carry = cp.zeros(a + 1, dtype=np.uint64)               # per level: the counts of the segments so far
            carry_star = cp.zeros(1, dtype=np.uint64)               # and at level b*
            total = cp.zeros((), dtype=np.uint64)
            s0 = 0
            while s0 < segments:
                # levels >= K(first segment) are read by no segment from here on (K falls as lo grows);
                # K(lo): the primes p <= y with p^2 <= (x - 1) // lo
                lo = 2 * s0 * seg_bits + 1
                kmax = max(1, int(np.searchsorted(primes, math.isqrt((x - 1) // lo), side="right")))
                n = max(1, min(segments - s0, TABLE_BYTES // (56 * (kmax + 1))))
                ctab = cp.zeros((n, kmax + 1), dtype=np.uint32)
                wtab = cp.zeros((n, kmax + 1), dtype=np.int32)
                kernel((n,), (self._threads,),
                       (np.uint64(x), np.uint64(y), np.int64(s0), np.uint64(total_bits),
                        d_primes, np.int32(a), d_leaf, d_pi, d_q, np.int32(nq), np.int32(b_star),
                        np.int32(kmax), ctab, wtab, acc),
                       shared_mem=seg_bits // 8)
                counts = ctab.astype(np.uint64)
                before = cp.cumsum(counts, axis=0, dtype=np.uint64) - counts
                before[:, :kmax] += carry[:kmax]
                before[:, kmax] += carry_star
                total += (wtab.astype(np.int64).astype(np.uint64) * before).sum(dtype=np.uint64)
                sums = counts.sum(axis=0, dtype=np.uint64)
                carry[:kmax] += sums[:kmax]
                carry_star += sums[kmax]
                s0 += n
            return (int(total) + int(acc.get()[0])) & MASK
