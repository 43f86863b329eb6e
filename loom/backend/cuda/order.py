"""loom.engine.order_keys' float keys on the GPU, one pass each: the integer keys of float16/32/64
values, the values back from sorted keys, and whether a result holds a -0 or a NaN (the sort then
restores its ties). The same integers as order_keys' NumPy path, which composes them from 5 to 8
whole-array operations: 22 of loom.sort's 28 ms for 2^28 float32 on an H100 went there.

And `restore`: a sort's zeros and NaNs put back in input order, two passes and no boolean indexing
(which took 14 of loom.sort's 25 ms for 2^28 float32 holding 20 -0s).

All of them read the floats as their unsigned bit patterns (x.view(uint16/32/64)), so only integer
operations touch them: no float comparison can quiet a NaN or equate the zeros.
"""
from __future__ import annotations

from types import ModuleType

import numpy as np

from .. import Array
from .compile import translating

# float dtype -> (its pattern type, the +inf pattern, the canonical quiet NaN)
_FLOATS = {
    np.dtype(np.float16): (np.dtype(np.uint16), 0x7C00, 0x7E00),
    np.dtype(np.float32): (np.dtype(np.uint32), 0x7F800000, 0x7FC00000),
    np.dtype(np.float64): (np.dtype(np.uint64), 0x7FF0000000000000, 0x7FF8000000000000),
}


# Putting a sort's zeros and NaNs back in input order (restore), rows of L elements, tiles of TILE
# per block: one pass counts each tile's zeros and NaNs and each row's values that sort before the
# zeros; prefix sums of the tile counts give every tile its place in the runs; a second pass writes
# each tile's zeros and NaNs there in element order (ranks from warp ballots).
TILE = 4096
_MAX_GRID_Y = 65535
_RESTORE = r"""
typedef %(type)s U;
#define SIGN ((U)%(sign)s)
#define INF ((U)%(inf)s)

extern "C" __global__ void loom_ties_count(const U* __restrict__ x, long long L, int tiles, int descending,
        unsigned long long* zeros, unsigned long long* nans, unsigned long long* before) {
    __shared__ unsigned long long c[3];
    if (threadIdx.x < 3) c[threadIdx.x] = 0;
    __syncthreads();
    const U* row = x + (long long)blockIdx.y * L;
    const long long start = (long long)blockIdx.x * %(tile)d, end = min(L, start + %(tile)d);
    unsigned long long z = 0, n = 0, b = 0;
    for (long long i = start + threadIdx.x; i < end; i += blockDim.x) {
        const U v = row[i], m = v & (U)(SIGN - 1);
        const bool zero = m == 0, nan = m > INF;
        z += zero; n += nan;
        b += !zero && !nan && (descending ? !(v & SIGN) : (bool)(v & SIGN));
    }
    if (z) atomicAdd(&c[0], z);
    if (n) atomicAdd(&c[1], n);
    if (b) atomicAdd(&c[2], b);
    __syncthreads();
    if (threadIdx.x == 0) {
        zeros[(long long)blockIdx.y * tiles + blockIdx.x] = c[0];
        nans[(long long)blockIdx.y * tiles + blockIdx.x] = c[1];
        if (c[2]) atomicAdd(&before[blockIdx.y], c[2]);
    }
}

// zoff, noff: where this tile's first zero and first NaN go in its row of out
extern "C" __global__ void loom_ties_scatter(const U* __restrict__ x, U* out, long long L, int tiles,
        const long long* __restrict__ zoff, const long long* __restrict__ noff) {
    __shared__ unsigned int wz[32], wn[32];
    const long long r = blockIdx.y, t = r * tiles + blockIdx.x;
    const U* row = x + r * L;
    U* dst = out + r * L;
    const unsigned lane = threadIdx.x & 31u, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    const unsigned below = (1u << lane) - 1u;
    long long zrun = zoff[t], nrun = noff[t];
    const long long start = (long long)blockIdx.x * %(tile)d, end = min(L, start + %(tile)d);
    for (long long c = start; c < end; c += blockDim.x) {          // the same trips for every thread
        const long long i = c + threadIdx.x;
        const U v = i < end ? row[i] : (U)1, m = v & (U)(SIGN - 1);
        const bool zero = i < end && m == 0, nan = i < end && m > INF;
        const unsigned bz = __ballot_sync(0xffffffffu, zero), bn = __ballot_sync(0xffffffffu, nan);
        if (lane == 0) { wz[warp] = __popc(bz); wn[warp] = __popc(bn); }
        __syncthreads();
        unsigned pz = 0, pn = 0, tz = 0, tn = 0;
        for (unsigned w = 0; w < warps; ++w) {
            if (w < warp) { pz += wz[w]; pn += wn[w]; }
            tz += wz[w]; tn += wn[w];
        }
        if (zero) dst[zrun + pz + __popc(bz & below)] = v;
        if (nan) dst[nrun + pn + __popc(bn & below)] = v;
        zrun += tz; nrun += tn;
        __syncthreads();
    }
}
"""


class OrderKeys:
    """The kernels behind order_keys' float keys (protocols.OrderKernels), compiled on first use."""

    DTYPES = tuple(_FLOATS)

    def __init__(self, cp: ModuleType):
        self._cp = cp
        self._compiled = None
        self._restore: dict = {}

    def _kernels(self):
        if self._compiled is None:
            self._compiled = self._compile(self._cp)
        return self._compiled

    @staticmethod
    def _compile(cp: ModuleType) -> tuple:
        keys = cp.ElementwiseKernel(
            "U b, U sign, U inf, U nan_key, int32 zeros_equal, int32 descending", "U key",
            """
            U m = b & (U)(sign - 1);
            U k = m > inf ? nan_key
                : (zeros_equal && m == 0) ? sign
                : (b & sign) ? (U)~b : (U)(b | sign);
            key = descending ? (U)~k : k;
            """, "loom_order_keys")
        values = cp.ElementwiseKernel(
            "U key, U sign, U inf, U canonical_nan, int32 descending", "U b",
            """
            U k = descending ? (U)~key : key;
            U v = (k & sign) ? (U)(k ^ sign) : (U)~k;
            b = (v & (U)(sign - 1)) > inf ? canonical_nan : v;
            """, "loom_order_values")
        # every thread that sees a tie stores the same 1: no atomics (CuPy's ReductionKernel gives a
        # whole-array reduction one block, 200 ms for 2^28 values)
        ties = cp.ElementwiseKernel(
            "U b, U sign, U inf", "raw int32 flag",
            "if (b == sign || (b & (U)(sign - 1)) > inf) flag[0] = 1;", "loom_order_ties")
        return keys, values, ties

    def keys(self, x: Array, nan_first: bool, zeros_equal: bool, descending: bool) -> Array:
        """order_keys' keys of float x (a dtype of DTYPES)."""
        ut, inf, _ = _FLOATS[np.dtype(x.dtype)]
        sign = ut.type(1 << (8 * ut.itemsize - 1))
        nan_key = ut.type(0) if nan_first else ut.type(np.iinfo(ut).max)
        with translating("order keys", x):
            return self._kernels()[0](x.view(ut), sign, ut.type(inf), nan_key, np.int32(zeros_equal),
                                      np.int32(descending))

    def values(self, keys: Array, dtype: np.dtype, descending: bool) -> Array:
        """The floats of `dtype` whose keys (zeros_equal=False; descending: order_keys' descending
        keys) are `keys`; a NaN key gives the canonical quiet NaN."""
        ut, inf, nan = _FLOATS[np.dtype(dtype)]
        sign = ut.type(1 << (8 * ut.itemsize - 1))
        with translating("order values", keys):
            return self._kernels()[1](keys, sign, ut.type(inf), ut.type(nan), np.int32(descending)).view(dtype)

    def restore(self, out: Array, x: Array, descending: bool) -> None:
        """Put x's zeros and NaNs, in input order, into the runs they sort to in out (sort's result
        from keys with zeros_equal=False), row by row along the last axis; both C-contiguous, float
        of DTYPES, the same shape."""
        cp = self._cp
        ut, inf, _ = _FLOATS[np.dtype(x.dtype)]
        if x.size == 0:
            return
        L = x.shape[-1]
        rows, tiles = x.size // L, -(-L // TILE)
        count, scatter = self._restore_kernels(ut)
        with translating("sort ties", x):
            zeros = cp.empty((rows, tiles), dtype=np.uint64)
            nans = cp.empty((rows, tiles), dtype=np.uint64)
            before = cp.zeros(rows, dtype=np.uint64)
            xu, outu = x.view(ut).reshape(rows, L), out.view(ut).reshape(rows, L)
            for r in range(0, rows, _MAX_GRID_Y):           # (rows go to the grid's y, at most 65,535)
                s = slice(r, r + _MAX_GRID_Y)
                count((tiles, len(xu[s])), (256,), (xu[s], np.int64(L), np.int32(tiles), np.int32(descending),
                                                   zeros[s], nans[s], before[s]))
            zeros, nans, before = zeros.view(np.int64), nans.view(np.int64), before.view(np.int64)
            ztotal, ntotal = zeros.sum(axis=1), nans.sum(axis=1)
            if not int(ztotal.sum() + ntotal.sum()):
                return
            # the zeros follow what sorts before them (and the NaNs, when descending puts those first);
            # the NaNs are last ascending, first descending
            zbase = before + (ntotal if descending else 0)
            nbase = cp.zeros_like(ntotal) if descending else L - ntotal
            zoff = cp.cumsum(zeros, axis=1) - zeros + zbase[:, None]
            noff = cp.cumsum(nans, axis=1) - nans + nbase[:, None]
            for r in range(0, rows, _MAX_GRID_Y):
                s = slice(r, r + _MAX_GRID_Y)
                scatter((tiles, len(xu[s])), (256,), (xu[s], outu[s], np.int64(L), np.int32(tiles), zoff[s], noff[s]))

    def _restore_kernels(self, ut: np.dtype) -> tuple:
        if ut not in self._restore:
            _, inf, _ = _FLOATS[{np.dtype(np.uint16): np.dtype(np.float16), np.dtype(np.uint32): np.dtype(np.float32),
                                 np.dtype(np.uint64): np.dtype(np.float64)}[ut]]
            ctype = {2: "unsigned short", 4: "unsigned int", 8: "unsigned long long"}[ut.itemsize]
            module = self._cp.RawModule(code=_RESTORE % {"type": ctype, "sign": hex(1 << (8 * ut.itemsize - 1)) + "ull",
                                                         "inf": hex(inf) + "ull", "tile": TILE})
            self._restore[ut] = (module.get_function("loom_ties_count"), module.get_function("loom_ties_scatter"))
        return self._restore[ut]

    def ties(self, x: Array) -> bool:
        """Whether float x holds a -0 or a NaN (read back to the host)."""
        ut, inf, _ = _FLOATS[np.dtype(x.dtype)]
        sign = ut.type(1 << (8 * ut.itemsize - 1))
        with translating("order ties", x):
            flag = self._cp.zeros(1, dtype=np.int32)
            if x.size:
                self._kernels()[2](x.view(ut), sign, ut.type(inf), flag)
            return bool(flag[0])
