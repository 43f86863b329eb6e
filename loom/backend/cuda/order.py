"""loom.engine.order_keys' float keys on the GPU, one pass each: the integer keys of float16/32/64
values, the values back from sorted keys, and whether a result holds a -0 or a NaN (the sort then
restores its ties). The same integers as order_keys' NumPy path, which composes them from 5 to 8
whole-array operations: 22 of loom.sort's 28 ms for 2^28 float32 on an H100 went there.

All three read the floats as their unsigned bit patterns (x.view(uint16/32/64)), so only integer
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


class OrderKeys:
    """The kernels behind order_keys' float keys (protocols.OrderKernels), compiled on first use."""

    DTYPES = tuple(_FLOATS)

    def __init__(self, cp: ModuleType):
        self._cp = cp
        self._compiled = None

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

    def ties(self, x: Array) -> bool:
        """Whether float x holds a -0 or a NaN (read back to the host)."""
        ut, inf, _ = _FLOATS[np.dtype(x.dtype)]
        sign = ut.type(1 << (8 * ut.itemsize - 1))
        with translating("order ties", x):
            flag = self._cp.zeros(1, dtype=np.int32)
            if x.size:
                self._kernels()[2](x.view(ut), sign, ut.type(inf), flag)
            return bool(flag[0])
