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

// the maximum of each query's rows g, g + groups, g + 2 groups, .. of s [w, m], for the rows below
// groups * (w / groups): thread (g, q) walks its group down the rows, neighbours read neighbours
extern "C" __global__ void loom_db_group_max(const float* __restrict__ s, int w, int m, int groups, float* out) {
    const long long t = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (t >= (long long)groups * m) return;
    const long long step = (long long)groups * m;
    const long long end = (long long)(w / groups) * step;
    float best = s[t];
    for (long long i = t + step; i < end; i += step) best = fmaxf(best, s[i]);
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

// one warp per candidate j: query qi[j] (a row of q [., dim]) against row r[j] of matrix [., dim]
extern "C" __global__ void loom_db_exact(const float* __restrict__ matrix, const float* __restrict__ q,
        const i64* __restrict__ qi, const i64* __restrict__ r, long long count, int dim, int l2,
        float* out, int* unsure) {
    const long long j = (blockIdx.x * (long long)blockDim.x + threadIdx.x) >> 5;
    const unsigned lane = threadIdx.x & 31;
    if (j >= count) return;
    const float* v = matrix + r[j] * (long long)dim;
    const float* u = q + qi[j] * (long long)dim;
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
    if (lane == 0) {
        // the bound of search._exact_scores: dim 2^-52 sum|t| (twice the textbook bound for any
        // order, which also covers the rounding of mag itself), plus room for underflow
        const double err = __dadd_rn(__dmul_rn(__dmul_rn((double)dim, 0x1p-52), mag), 0x1p-1000);
        const float low = __double2float_rn(__dsub_rn(sum, err));
        const float high = __double2float_rn(__dadd_rn(sum, err));
        out[j] = low;
        unsure[j] = __float_as_int(low) != __float_as_int(high);
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

    def group_max(self, s: Array, groups: int) -> Array:
        """[groups, m]: entry (g, q) the maximum of s[g::groups, q] over the first groups * (w //
        groups) rows of s [w, m] (float32, C-contiguous, no NaN, w >= groups)."""
        cp = self._cp
        w, m = s.shape
        out = cp.empty((groups, m), dtype=np.float32)
        with translating("db group maxima", s):
            self._fn("loom_db_group_max")((-(-groups * m // 256),), (256,),
                                          (s, np.int32(w), np.int32(m), np.int32(groups), out))
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
