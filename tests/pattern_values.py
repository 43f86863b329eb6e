"""Random inputs for the one-call patterns' tests on the CPU (tests/engine) and the GPU (tests/gpu)."""
import numpy as np

FLOATS = [np.float16, np.float32, np.float64]
INTS = [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64]
ALL = [np.bool_, *INTS, *FLOATS]


def values(rng, n, dtype, specials=True):
    """n random values of dtype with repeats; floats with both zeros, NaNs of both signs and infinities."""
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return rng.integers(0, 2, n).astype(bool)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        x = rng.integers(info.min, info.max, n, dtype=dtype, endpoint=True)
        if n > 4:
            x[rng.integers(0, n, n // 4)] = x[0]
            x[rng.integers(0, n, 2)] = [info.min, info.max]
        return x
    x = (rng.standard_normal(n) * 10).astype(dtype)
    if n > 4:
        x[rng.integers(0, n, n // 4)] = x[0]
        if specials:
            x[rng.integers(0, n, 12)] = np.array([0.0, -0.0, 0.0, -0.0, np.nan, np.nan, np.nan, np.inf, -np.inf,
                                                  np.inf, 0.0, -0.0], dtype=dtype)
            x[rng.integers(0, n, 2)] = -np.abs(np.array([np.nan, np.nan], dtype=dtype))   # sign bit set
    return x
