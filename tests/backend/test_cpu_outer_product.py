"""The CPU backend forms outer products ([M, 1] x [1, N]) by a broadcast multiply: the same values
as NumPy's matmul, special values included, with and without `out`."""
import numpy as np
import pytest

from loom import backend


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_outer_product_matches_matmul(dtype):
    be = backend.get("cpu")
    rng = np.random.default_rng(7)
    a = rng.standard_normal((37, 1)).astype(dtype)
    b = rng.standard_normal((1, 53)).astype(dtype)
    a[3, 0], a[5, 0], b[0, 2], b[0, 9] = np.inf, np.nan, -np.inf, 0.0
    want = np.matmul(a, b)
    got = be.matmul(a, b)
    out = np.full_like(want, 5.0)
    assert be.matmul(a, b, out=out) is out
    for x in (got, out):
        assert x.dtype == want.dtype and x.shape == want.shape
        assert np.array_equal(x, want, equal_nan=True)
