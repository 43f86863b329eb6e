"""loom.db.search's candidate filter and exact refinement on the GPU, one kernel each, where its
array-module path takes about 40 CuPy operations (3 ms of a 16-query search of 1M x 384 vectors on an
H100 whose GEMM takes 0.8 ms).

- group_max: each query's maxima over interleaved groups of rows (its threshold is picked from them).
- above: every (row, query) whose float32 filter score is at or above the query's threshold, written
  out as (query, row, score) triples through one atomic counter per warp. The order of the triples
  depends on timing; search sorts them completely (by query, exact score and id) before using them,
  so only the set counts, and the set is fixed by the comparisons.
- exact_scores: each candidate's float64 terms (exact products of float32 values, or the rounded
  squared differences: the same operations as search's NumPy expression, IEEE intrinsics, no fused
  multiply-add), summed by one warp with its error bound n 2^-52 sum|t| + 2^-1000. That bound holds
  for any order of the additions, so where both ends of the interval round to one float32 it is the
  exact sum's rounding whatever order the warp took; the others are flagged for exact.sum.
"""
from __future__ import annotations

from types import ModuleType

import numpy as np

from .. import Array
from .compile import OPTIONS, translating

_SOURCE = r"""
typedef long long i64;

// the maximum of each query's rows g + groups r, r in [slice per, slice per + per), of s [w, m] for
// r < w / groups: thread (slice, g, q) walks its part of group g down the rows, neighbours read
// neighbours; out [slices, groups, m]
extern "C" __global__ void loom_db_group_max(const float* __restrict__ s, int w, int m, int groups, int per,
        int slices, float* out) {
    const long long t = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    const long long step = (long long)groups * m;
    if (t >= step * slices) return;
    const long long slice = t / step, cell = t - slice * step;
    const long long r0 = slice * per, r1 = min(r0 + per, (long long)(w / groups));
    float best = s[r0 * step + cell];
    for (long long r = r0 + 1; r < r1; ++r) best = fmaxf(best, s[r * step + cell]);
    out[t] = best;
}

// every entry of s [w, m] at or above its column's threshold, as (column = query, start + row, score)
extern "C" __global__ void loom_db_above(const float* __restrict__ s, const float* __restrict__ th,
        long long total, int m, long long start, long long capacity, unsigned long long* count,
        i64* qi, i64* row, float* score) {
    const unsigned lane = threadIdx.x & 31;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x, stride = (long long)gridDim.x * blockDim.x;
         i - lane < total; i += stride) {
        const bool in = i < total;
        const float v = in ? s[i] : 0.0f;
        const int q = in ? (int)(i % m) : 0;
        const bool keep = in && v >= th[q];
        const unsigned ballot = __ballot_sync(0xffffffffu, keep);
        if (!ballot) continue;
        unsigned long long base = 0;
        if (lane == 0) base = atomicAdd(count, (unsigned long long)__popc(ballot));
        base = __shfl_sync(0xffffffffu, base, 0);
        if (keep) {
            const unsigned long long at = base + __popc(ballot & ((1u << lane) - 1u));
            if (at < (unsigned long long)capacity) {
                qi[at] = q;
                row[at] = start + i / m;
                score[at] = v;
            }
        }
    }
}

// the exact score of query row qrow of q against row `row` of matrix [., dim], by one warp: lane 0
// writes it to *out and whether it is uncertified to *unsure
__device__ void exact_warp(const float* __restrict__ matrix, const float* __restrict__ q, i64 qrow, i64 row,
        int dim, int l2, unsigned lane, float* out, int* unsure) {
    const float* v = matrix + row * (long long)dim;
    const float* u = q + qrow * (long long)dim;
    double sum = 0.0, mag = 0.0;
    for (int d = lane; d < dim; d += 32) {
        double t;
        if (l2) {
            const double diff = __dsub_rn((double)v[d], (double)u[d]);
            t = __dmul_rn(diff, diff);
        } else {
            t = __dmul_rn((double)v[d], (double)u[d]);
        }
        sum = __dadd_rn(sum, t);
        mag = __dadd_rn(mag, fabs(t));
    }
    for (int off = 16; off; off >>= 1) {
        sum = __dadd_rn(sum, __shfl_down_sync(0xffffffffu, sum, off));
        mag = __dadd_rn(mag, __shfl_down_sync(0xffffffffu, mag, off));
    }
    if (lane == 0 && mag == 0.0) {
        // every term a zero (a query equal to a row under l2): +0, as exact.sum gives for any zeros
        *out = 0.0f;
        *unsure = 0;
    } else if (lane == 0) {
        // the bound of search._exact_scores: dim 2^-52 sum|t| (twice the textbook bound for any
        // order, which also covers the rounding of mag itself), plus room for underflow
        const double err = __dadd_rn(__dmul_rn(__dmul_rn((double)dim, 0x1p-52), mag), 0x1p-1000);
        const float low = __double2float_rn(__dsub_rn(sum, err));
        const float high = __double2float_rn(__dadd_rn(sum, err));
        *out = low;
        *unsure = __float_as_int(low) != __float_as_int(high);
    }
}

// one warp per candidate j: query qi[j] (a row of q [., dim]) against row r[j] of matrix [., dim]
extern "C" __global__ void loom_db_exact(const float* __restrict__ matrix, const float* __restrict__ q,
        const i64* __restrict__ qi, const i64* __restrict__ r, long long count, int dim, int l2,
        float* out, int* unsure) {
    const long long j = (blockIdx.x * (long long)blockDim.x + threadIdx.x) >> 5;
    if (j >= count) return;
    exact_warp(matrix, q, qi[j], r[j], dim, l2, threadIdx.x & 31, out + j, unsure + j);
}

// ---- the one-pass top k (SearchKernels.threshold, collect, top, probe_scores) ----------------------
// A query keeps at most TOP_CAP candidates; its count goes on past that, so the caller sees an
// overflow and searches that query another way.
#define TOP_CAP 2048
#define PROBE_GROUP 16
#define NEG_INF __int_as_float(0xff800000)

// float bits to an unsigned key of the same order (-0 just below +0), and back
__device__ __forceinline__ unsigned order_key(float v) {
    const unsigned u = __float_as_uint(v);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ __forceinline__ float key_value(unsigned key) {
    return __uint_as_float((key & 0x80000000u) ? (key & 0x7fffffffu) : ~key);
}

// the k-th largest (1 <= k <= count) of x[base + j stride], j < count: a radix select over the
// keys, eight bits a pass, by the whole block; every thread returns it
__device__ float kth_largest(const float* __restrict__ x, long long base, long long stride, long long count, int k) {
    __shared__ unsigned hist[256];
    __shared__ unsigned s_prefix;
    __shared__ int s_need;
    unsigned prefix = 0, mask = 0;
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int b = threadIdx.x; b < 256; b += blockDim.x) hist[b] = 0;
        __syncthreads();
        for (long long j = threadIdx.x; j < count; j += blockDim.x) {
            const unsigned key = order_key(x[base + j * stride]);
            if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 255u], 1u);
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            int need = k, b = 255;
            for (; b > 0 && (int)hist[b] < need; --b) need -= (int)hist[b];
            s_need = need;
            s_prefix = prefix | ((unsigned)b << shift);
        }
        __syncthreads();
        k = s_need;
        prefix = s_prefix;
        mask |= 255u << shift;
    }
    return key_value(prefix);
}

// block q: query q's threshold (search._threshold, rounded down: the lowest float32 filter score
// that may still rank with its k-th best value), with search._bound of query q (row q of qv [m, dim])
// and the largest row norm *largest. Its values: column q of x [count, m] (segmented 0) or
// x[seg[q] .. seg[q + 1]). Fewer than k values, or a k-th best of -inf, give -inf.
extern "C" __global__ void loom_db_threshold(const float* __restrict__ x, const i64* __restrict__ seg, int segmented,
        long long count, int m, int k, const float* __restrict__ qv, int dim, const double* __restrict__ largest,
        int l2, float* th) {
    __shared__ double part[32];
    const int q = blockIdx.x;
    long long base = q, stride = m, n = count;
    if (segmented) {
        base = seg[q];
        stride = 1;
        n = seg[q + 1] - seg[q];
    }
    if (n < k) {
        if (threadIdx.x == 0) th[q] = NEG_INF;
        return;
    }
    // the query's norm: any order of the float64 sum serves, the bound has room for it
    double sq = 0.0;
    for (int d = threadIdx.x; d < dim; d += blockDim.x) {
        const double v = (double)qv[(long long)q * dim + d];
        sq = __dadd_rn(sq, __dmul_rn(v, v));
    }
    for (int off = 16; off; off >>= 1) sq = __dadd_rn(sq, __shfl_down_sync(0xffffffffu, sq, off));
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = sq;
    const float sk = kth_largest(x, base, stride, n, k);      // its __syncthreads publish part[]
    if (threadIdx.x == 0) {
        double total = 0.0;
        for (int i = 0; i < (int)(blockDim.x >> 5); ++i) total = __dadd_rn(total, part[i]);
        const double qn = sqrt(total), big = *largest;
        const double slack = (dim + 2) * 0x1p-23;
        const double b = (l2 ? 2.0 * slack * (2.0 * qn * big + big * big) : slack * qn * big)
                         + 4.0 * dim * 0x1p-120 * (1.0 + qn + big);
        const double v = (double)sk;
        const double low = __dsub_rn(__dsub_rn(v, __dmul_rn(2.0, b)), __dmul_rn(__dadd_rn(fabs(v), b), 0x1p-20));
        th[q] = sk == NEG_INF ? NEG_INF : __double2float_rd(low);
    }
}

// every finite entry of s [w, m] at or above its column's threshold: its row into the column's slots
// rows[q, .] (TOP_CAP of them), counted in count[q]
extern "C" __global__ void loom_db_collect(const float* __restrict__ s, const float* __restrict__ th, long long total,
        int m, unsigned* count, i64* rows) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x, stride = (long long)gridDim.x * blockDim.x;
         i < total; i += stride) {
        const int q = (int)(i % m);
        const float v = s[i];
        if (v >= th[q] && v != NEG_INF) {
            const unsigned at = atomicAdd(count + q, 1u);
            if (at < TOP_CAP) rows[(long long)q * TOP_CAP + at] = i / m;
        }
    }
}

// the same for query blockIdx.y's segment s[seg[q] .. seg[q + 1]), whose entries are rows srow[.]
extern "C" __global__ void loom_db_collect_segments(const float* __restrict__ s, const i64* __restrict__ srow,
        const i64* __restrict__ seg, const float* __restrict__ th, unsigned* count, i64* rows) {
    const int q = blockIdx.y;
    const float t = th[q];
    for (long long i = seg[q] + blockIdx.x * (long long)blockDim.x + threadIdx.x, end = seg[q + 1],
         stride = (long long)gridDim.x * blockDim.x; i < end; i += stride) {
        const float v = s[i];
        if (v >= t && v != NEG_INF) {
            const unsigned at = atomicAdd(count + q, 1u);
            if (at < TOP_CAP) rows[(long long)q * TOP_CAP + at] = srow[i];
        }
    }
}

// the exact score of each kept candidate of query blockIdx.y, one warp each
extern "C" __global__ void loom_db_exact_slots(const float* __restrict__ matrix, const float* __restrict__ q,
        const i64* __restrict__ rows, const unsigned* __restrict__ count, int dim, int l2, float* out, int* unsure) {
    const long long qq = blockIdx.y;
    const int n = (int)min(count[qq], (unsigned)TOP_CAP);
    const int warps = (int)(gridDim.x * blockDim.x) >> 5;
    for (int j = (int)((blockIdx.x * blockDim.x + threadIdx.x) >> 5); j < n; j += warps) {
        const long long at = qq * TOP_CAP + j;
        exact_warp(matrix, q, qq, rows[at], dim, l2, threadIdx.x & 31, out + at, unsure + at);
    }
}

// block q: query q's k best candidates by exact score (larger first, l2 smaller first; ties to the
// smaller id), each candidate's place counted against all the others, into row q of out [m, 2k + 1]:
// k ids (-1 padding), the k scores' float32 bits (padding pad), then the status: 0 done, 1 a score
// not certified, 2 more candidates than TOP_CAP (the caller answers those queries another way).
extern "C" __global__ void loom_db_rank(const float* __restrict__ score, const int* __restrict__ unsure,
        const i64* __restrict__ rows, const unsigned* __restrict__ count, const i64* __restrict__ ids,
        int k, int l2, float pad, i64* out) {
    __shared__ float key[TOP_CAP];
    __shared__ i64 id[TOP_CAP];
    __shared__ int bad;
    const long long q = blockIdx.x, base = q * TOP_CAP;
    i64* row = out + q * (2 * k + 1);
    for (int j = threadIdx.x; j < k; j += blockDim.x) {
        row[j] = -1;
        row[k + j] = (i64)__float_as_uint(pad);
    }
    const unsigned c = count[q];
    if (c > TOP_CAP) {
        if (threadIdx.x == 0) row[2 * k] = 2;
        return;
    }
    const int n = (int)c;
    if (threadIdx.x == 0) bad = 0;
    __syncthreads();
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        if (unsure[base + j]) bad = 1;
        key[j] = l2 ? score[base + j] : -score[base + j];
        id[j] = ids[rows[base + j]];
    }
    __syncthreads();
    if (bad) {
        if (threadIdx.x == 0) row[2 * k] = 1;
        return;
    }
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        const float kj = key[j];
        const i64 ij = id[j];
        int rank = 0;
        for (int i = 0; i < n; ++i) rank += key[i] < kj || (key[i] == kj && id[i] < ij);
        if (rank < k) {
            row[rank] = ij;
            row[k + rank] = (i64)__float_as_uint(score[base + j]);
        }
    }
    if (threadIdx.x == 0) row[2 * k] = 0;
}

// IVF filter scores. Block b takes the (query, probe) pairs at sorted positions [b G, b G + G), G = group
// (sorted by list, so they come in runs of one list); a run's queries are held in shared memory and
// each row of its list is read once for all of them, by one warp. Pair p's score of the t-th row of
// its list goes to out[dest[p] + t], that row's store row to rows[dest[p] + t]. l2 (has_sq): 2 q.x -
// |x|^2; an invalid position (has_valid, valid[pos] == 0) scores -inf.
extern "C" __global__ void loom_db_probe_scores(const float* __restrict__ lists, const float* __restrict__ sq,
        int has_sq, const unsigned char* __restrict__ valid, int has_valid, const i64* __restrict__ pos_row,
        const i64* __restrict__ offsets, const float* __restrict__ q, const i64* __restrict__ pairs,
        const i64* __restrict__ plist, const i64* __restrict__ dest, int nprobe, long long npairs, int dim,
        int group, float* out, i64* rows) {
    extern __shared__ float qs[];           // [group, dim], group <= PROBE_GROUP
    const long long first = blockIdx.x * (long long)group;
    const long long last = min(first + group, npairs);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    for (long long a = first; a < last;) {
        const i64 l = plist[a];
        long long e = a + 1;
        while (e < last && plist[e] == l) ++e;
        const int runs = (int)(e - a);
        for (int t = threadIdx.x; t < runs * dim; t += blockDim.x) {
            const int g = t / dim, d = t - g * dim;
            const float v = q[(pairs[a + g] / nprobe) * (long long)dim + d];
            qs[t] = has_sq ? __fmul_rn(2.0f, v) : v;
        }
        __syncthreads();
        const i64 s0 = offsets[l], len = offsets[l + 1] - s0;
        for (long long t = warp; t < len; t += warps) {
            const long long pos = s0 + t;
            const float* x = lists + pos * dim;
            float acc[PROBE_GROUP];
#pragma unroll
            for (int g = 0; g < PROBE_GROUP; ++g) acc[g] = 0.0f;
            for (int d = lane; d < dim; d += 32) {
                const float v = x[d];
#pragma unroll
                for (int g = 0; g < PROBE_GROUP; ++g)
                    if (g < runs) acc[g] = __fadd_rn(acc[g], __fmul_rn(v, qs[g * dim + d]));
            }
            float mine = 0.0f;
#pragma unroll
            for (int g = 0; g < PROBE_GROUP; ++g) {
                if (g < runs) {
                    float v = acc[g];
                    for (int off = 16; off; off >>= 1) v = __fadd_rn(v, __shfl_xor_sync(0xffffffffu, v, off));
                    if (g == lane) mine = v;
                }
            }
            if (lane < runs) {
                if (has_sq) mine = __fsub_rn(mine, sq[pos]);
                if (has_valid && !valid[pos]) mine = NEG_INF;
                const long long at = dest[pairs[a + lane]] + t;
                out[at] = mine;
                rows[at] = pos_row[pos];
            }
        }
        __syncthreads();
        a = e;
    }
}
"""


class SearchKernels:
    """The kernels behind loom.db.search on CUDA (protocols.SearchKernels), compiled on first use."""

    def __init__(self, cp: ModuleType):
        self._cp = cp
        self._module = None
        self._sm = None

    def _fn(self, name: str):
        if self._module is None:
            self._module = self._cp.RawModule(code=_SOURCE, options=OPTIONS)
        return self._module.get_function(name)

    def _sm_count(self) -> int:
        """The device's multiprocessors (above's grid fills them a few times over)."""
        if self._sm is None:
            self._sm = self._cp.cuda.Device().attributes["MultiProcessorCount"]
        return self._sm

    def above(self, s: Array, th: Array, start: int, limit: int) -> tuple[Array, Array, Array] | None:
        """(query numbers int64, row numbers int64 (start + the row of s), scores float32) of every
        entry of s [w, m] float32 (C-contiguous) at or above th[query] (float32 [m]), in any order;
        None if there are more than `limit`."""
        cp = self._cp
        w, m = s.shape
        total = w * m
        with translating("db filter", s, th):
            fn = self._fn("loom_db_above")
            grid = max(1, min(-(-total // 256), self._sm_count() * 16))
            count = cp.zeros(1, dtype=np.uint64)
            capacity = max(1 << 16, min(total, 64 * m))
            while True:
                qi = cp.empty(capacity, dtype=np.int64)
                row = cp.empty(capacity, dtype=np.int64)
                score = cp.empty(capacity, dtype=np.float32)
                fn((grid,), (256,), (s, th, np.int64(total), np.int32(m), np.int64(start), np.int64(capacity),
                                     count, qi, row, score))
                found = int(count.get()[0])
                if found <= capacity:
                    return qi[:found], row[:found], score[:found]
                if found > limit:
                    return None
                capacity = found            # the same comparisons again, with room for all of them
                count.fill(0)

    def group_max(self, s: Array, groups: int, slices: int | None = None) -> Array:
        """[slices * groups, m]: entry (j groups + g, q) the maximum of s[g + groups r, q] over r in
        [j per, j per + per), per = ceil((w // groups) / slices): the maxima of disjoint sets of
        rows, each in one of `groups` interleaved groups, over the first groups * (w // groups) rows
        of s [w, m] (float32, C-contiguous, no NaN, w >= groups). slices: by default enough for the
        device's threads, at most 8192 values per query."""
        cp = self._cp
        w, m = s.shape
        depth = w // groups
        if slices is None:
            slices = -(-self._sm_count() * 4096 // (groups * m))
            slices = max(1, min(slices, 8192 // groups))
        per = -(-depth // max(1, min(slices, depth)))
        slices = -(-depth // per)
        out = cp.empty((slices * groups, m), dtype=np.float32)
        with translating("db group maxima", s):
            self._fn("loom_db_group_max")((-(-slices * groups * m // 256),), (256,),
                                          (s, np.int32(w), np.int32(m), np.int32(groups), np.int32(per),
                                           np.int32(slices), out))
        return out

    def exact_scores(self, matrix: Array, q: Array, qi: Array, r: Array, l2: bool) -> tuple[Array, Array]:
        """(float32 scores, int64 positions to settle with exact.sum) of query q[qi[j]] against row
        matrix[r[j]] (float32 C-contiguous [., dim]; qi, r int64): see the module docstring."""
        cp = self._cp
        count, dim = qi.size, matrix.shape[1]
        out = cp.empty(count, dtype=np.float32)
        unsure = cp.empty(count, dtype=np.int32)
        if count:
            with translating("db refine", matrix, q):
                self._fn("loom_db_exact")((-(-count // 8),), (256,),
                                          (matrix, q, qi, r, np.int64(count), np.int32(dim), np.int32(l2),
                                           out, unsure))
        return out, cp.flatnonzero(unsure)

    # --- the one-pass top k: GPU-resident selection with one copy back ------------------------------

    CAPACITY = 2048                 # candidates one query may keep (TOP_CAP)
    PROBE_GROUP = 16                # pairs per block of probe_scores

    def threshold(self, x: Array, seg: Array | None, q: Array, largest: Array, l2: bool, k: int) -> Array:
        """Each query's threshold (float32 [m]): the lowest filter score that may rank with the k-th
        best of its values, rounded down (loom.db.search._threshold with _bound of the query q[i]
        (float32 [m, dim]) and the largest row norm, a float64 scalar on the device), -inf where it
        has fewer than k values. Values: columns of x [count, m] (seg None) or x[seg[i]:seg[i + 1]]
        (seg int64 [m + 1])."""
        cp = self._cp
        m, dim = q.shape
        th = cp.empty(m, dtype=np.float32)
        largest = cp.asarray(largest, dtype=np.float64)          # the kernel reads a double
        if m:
            with translating("db threshold", x, q):
                self._fn("loom_db_threshold")((m,), (256,), (
                    x, x if seg is None else seg, np.int32(seg is not None), np.int64(x.shape[0]),
                    np.int32(m), np.int32(k), q, np.int32(dim), largest, np.int32(l2), th))
        return th

    def collect(self, s: Array, th: Array) -> tuple[Array, Array]:
        """(rows int64 [m, CAPACITY], counts uint32 [m]): the rows of s [w, m] (C-contiguous float32)
        whose finite score is at or above th[query], at most CAPACITY per query in any order; the
        count goes on past CAPACITY."""
        cp = self._cp
        w, m = s.shape
        count = cp.zeros(m, dtype=np.uint32)
        rows = cp.empty((m, self.CAPACITY), dtype=np.int64)
        total = w * m
        if total:
            with translating("db collect", s, th):
                self._fn("loom_db_collect")((max(1, min(-(-total // 256), self._sm_count() * 16)),), (256,),
                                            (s, th, np.int64(total), np.int32(m), count, rows))
        return rows, count

    def collect_segments(self, s: Array, srow: Array, seg: Array, th: Array) -> tuple[Array, Array]:
        """collect for scores in segments: query q's are s[seg[q]:seg[q + 1]], of the rows srow."""
        cp = self._cp
        m = seg.shape[0] - 1
        count = cp.zeros(m, dtype=np.uint32)
        rows = cp.empty((m, self.CAPACITY), dtype=np.int64)
        if m:
            with translating("db collect", s, th):
                self._fn("loom_db_collect_segments")((4, m), (256,), (s, srow, seg, th, count, rows))
        return rows, count

    def top(self, matrix: Array, q: Array, ids: Array, rows: Array, count: Array, k: int,
            l2: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids int64 [m, k], scores float32 [m, k], status int32 [m]) on the host, by one copy: each
        query's k best of its collected rows by exact score (exact_scores' arithmetic; ties to the
        smaller id of `ids`), padded with -1 and -inf (+inf for l2). status 0: done; 1: a candidate's
        score was not certified; 2: the query had more than CAPACITY candidates (its answer is not
        given)."""
        cp = self._cp
        m, dim = count.shape[0], matrix.shape[1]
        if ids.dtype != np.int64 or rows.dtype != np.int64:
            raise ValueError(f"search top: ids and rows must be int64, got {ids.dtype} and {rows.dtype}")
        out = cp.empty((m, 2 * k + 1), dtype=np.int64)
        if m:
            score = cp.empty((m, self.CAPACITY), dtype=np.float32)
            unsure = cp.empty((m, self.CAPACITY), dtype=np.int32)
            with translating("db top", matrix, q):
                self._fn("loom_db_exact_slots")((4, m), (256,), (matrix, q, rows, count, np.int32(dim), np.int32(l2),
                                                                 score, unsure))
                self._fn("loom_db_rank")((m,), (256,), (score, unsure, rows, count, ids, np.int32(k), np.int32(l2),
                                                        np.float32(np.inf if l2 else -np.inf), out))
        host = out.get()
        scores = np.ascontiguousarray(host[:, k:2 * k]).astype(np.uint32).view(np.float32)
        return np.ascontiguousarray(host[:, :k]), scores, host[:, 2 * k].astype(np.int32)

    def probe_group(self, dim: int) -> int:
        """Pairs per block of probe_scores at this dim (their queries fill at most 48 KiB of shared
        memory); 0: too wide for it."""
        return min(self.PROBE_GROUP, (48 << 10) // (4 * max(dim, 1)))

    def probe_scores(self, part: tuple, q: Array, pairs: Array, plist: Array, dest: Array, nprobe: int,
                     out: Array, rows: Array) -> None:
        """IVF filter scores of one part of an index (vectors [p, dim] grouped by list, squared norms
        or None, valid bool [p] or None, row number of each position, list offsets int64 [nlist + 1]
        on the device): pair pairs[j] (query pairs[j] // nprobe) probes list plist[j] (pairs sorted by
        list); its score of the t-th row of that list goes to out[dest[pair] + t], the row to
        rows[dest[pair] + t]. l2 scores are 2 q.x - |x|^2."""
        lists, sq, valid, pos_row, offsets = part
        npairs, dim = pairs.shape[0], lists.shape[1]
        if not npairs:
            return
        group = self.probe_group(dim)
        with translating("db probe scores", lists, q):
            self._fn("loom_db_probe_scores")(
                (-(-npairs // group),), (256,),
                (lists, lists if sq is None else sq, np.int32(sq is not None),
                 pos_row if valid is None else valid, np.int32(valid is not None), pos_row, offsets, q, pairs,
                 plist, dest, np.int32(nprobe), np.int64(npairs), np.int32(dim), np.int32(group), out, rows),
                shared_mem=4 * group * dim)
