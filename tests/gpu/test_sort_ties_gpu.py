"""loom.sort on CUDA puts the zeros and NaNs back in input order with the order kernels' restore
(two passes over the input): every bit the CPU's sort gives, -0s and NaN payloads included, over rows
spanning many tiles, in both directions and every float width."""
import numpy as np
import pytest

import loom

pytestmark = pytest.mark.gpu
cupy = pytest.importorskip("cupy")


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1,), (37,), (10001,), (3, 9000), (5, 4096)])
@pytest.mark.parametrize("descending", [False, True])
def test_sort_keeps_every_zero_and_nan_in_input_order(dtype, shape, descending):
    rng = np.random.default_rng(shape[-1])
    x = rng.standard_normal(shape).astype(dtype)
    x[rng.random(shape) < 0.05] = 0.0
    x[rng.random(shape) < 0.05] = -0.0
    ut = {2: np.uint16, 4: np.uint32, 8: np.uint64}[x.itemsize]
    nan = rng.random(shape) < 0.03
    payloads = (np.full(shape, np.nan, dtype=dtype).view(ut) | rng.integers(1, 7, shape).astype(ut))
    bits = x.view(ut)
    bits[nan] = payloads[nan]
    bits[rng.random(shape) < 0.01] |= ut(1) << ut(8 * x.itemsize - 1)      # negative NaNs and more -0
    want = loom.sort(x, descending=descending)
    got = loom.sort(cupy.asarray(x), descending=descending).get()
    assert got.tobytes() == want.tobytes()


def test_sort_without_zeros_or_nans_is_unchanged_by_the_restore():
    x = np.random.default_rng(1).standard_normal(50000).astype(np.float32) + 10
    assert loom.sort(cupy.asarray(x)).get().tobytes() == np.sort(x).tobytes()


@pytest.mark.smoke
def test_sort_of_more_rows_than_a_grid_holds():
    """65,537 rows of -0s and NaNs among numbers: the restore launches rows in chunks of the grid's
    65,535 (one launch of all of them failed with an invalid argument)."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((65537, 6)).astype(np.float32)
    x[rng.random(x.shape) < 0.2] = -0.0
    x[rng.random(x.shape) < 0.1] = np.nan
    for descending in (False, True):
        want = loom.sort(x, descending=descending)
        assert loom.sort(cupy.asarray(x), descending=descending).get().tobytes() == want.tobytes()
