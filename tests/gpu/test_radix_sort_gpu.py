"""loom.sort and loom.argsort through the GPU's radix sorts (loom/backend/cuda/radix.py): every
dtype, rows of one block, partial and many tiles, long rows, both directions, special values,
passes skipped for every row or for some rows only, both ways of ranking. The reference is the same
call on the CPU (NumPy's stable sort of order keys), bit for bit."""
import numpy as np
import pytest

import loom
from loom import backend

pytestmark = pytest.mark.gpu
cupy = pytest.importorskip("cupy")

from loom.backend.cuda import radix  # noqa: E402

_DTYPES = [np.bool_, np.int8, np.uint8, np.int16, np.uint16, np.float16, np.int32, np.uint32, np.float32,
           np.int64, np.uint64, np.float64]


def _values(rng, dtype, shape) -> np.ndarray:
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return rng.random(shape) < 0.5
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
    x = rng.standard_normal(shape).astype(dtype)
    ut = {2: np.uint16, 4: np.uint32, 8: np.uint64}[dtype.itemsize]
    bits = x.view(ut)
    pick = rng.random(shape)
    x[pick < 0.04] = 0.0
    x[(pick >= 0.04) & (pick < 0.08)] = -0.0
    x[(pick >= 0.08) & (pick < 0.1)] = np.inf
    x[(pick >= 0.1) & (pick < 0.12)] = -np.inf
    nan = (pick >= 0.12) & (pick < 0.16)
    bits[nan] = np.full(shape, np.nan, dtype=dtype).view(ut)[nan] | rng.integers(1, 9, shape).astype(ut)[nan]
    bits[(pick >= 0.14) & (pick < 0.15)] |= ut(1) << ut(8 * dtype.itemsize - 1)       # negative NaNs
    tiny = (pick >= 0.16) & (pick < 0.18)
    bits[tiny] = rng.integers(1, 50, shape).astype(ut)[tiny]                           # subnormals
    return x


def _check(x: np.ndarray, what: str, axis: int = -1) -> None:
    g = cupy.asarray(x)
    for descending in (False, True):
        want = loom.sort(x, axis=axis, descending=descending)
        got = loom.sort(g, axis=axis, descending=descending)
        assert got.dtype == want.dtype and got.shape == want.shape, what
        assert got.get().tobytes() == want.tobytes(), f"sort {what} descending={descending}"
        order = loom.argsort(g, axis=axis, descending=descending)
        assert order.dtype == np.int64, what
        assert order.get().tolist() == loom.argsort(x, axis=axis, descending=descending).tolist(), \
            f"argsort {what} descending={descending}"


@pytest.mark.parametrize("dtype", _DTYPES)
@pytest.mark.parametrize("shape", [(1,), (2,), (4097,), (5121,), (100003,), (2, 65537),
                                   (300, 37), (40, 1024), (20, 1025), (9, 4096)])
def test_radix_sort_gives_the_cpus_bits(dtype, shape):
    x = _values(np.random.default_rng(shape[-1]), dtype, shape)
    assert backend.of(cupy.asarray(x)).sorts.takes(cupy.asarray(x)), "the radix sort should take this"
    _check(x, f"{np.dtype(dtype).name} {shape}")


def test_radix_sort_along_axis_0():
    x = _values(np.random.default_rng(5), np.float32, (70000, 3))
    _check(x, "axis 0", axis=0)


@pytest.mark.parametrize("x", [
    np.zeros(9000, np.float32),                                                    # every pass skipped
    np.random.default_rng(1).integers(0, 100, 50000).astype(np.int32),             # the top passes skipped
    np.repeat(np.array([[3], [-4]]), 70000, axis=1).astype(np.int64),              # each row one value
    np.stack([np.full(70000, 7, np.int32),                                         # a pass trivial in
              np.random.default_rng(2).integers(0, 1 << 20, 70000).astype(np.int32)]),  # one row only
    np.random.default_rng(3).integers(0, 3, 300000).astype(np.float32) - 1,        # ties: -1, 0, 1
], ids=["all-zero", "small-ints", "one-value-rows", "one-trivial-row", "three-values"])
def test_radix_sort_skips_passes_and_keeps_ties_in_order(x):
    _check(x, f"{x.dtype} {x.shape}")


def test_digit_passes_count_the_passes_that_move_anything():
    sorts = backend.get("cuda").sorts
    cases = [(np.random.default_rng(1).standard_normal(70000).astype(np.float32), 4),
             (np.random.default_rng(1).integers(0, 1000, 70000).astype(np.int32), 2),     # the top 2 bytes fixed
             (np.full(70000, 5, np.int64), 0),                                            # one value
             (np.random.default_rng(1).standard_normal((3, 100)).astype(np.float32), 0)]  # one block a row
    for x, want in cases:
        assert sorts.digit_passes(cupy.asarray(x)) == want, (x.dtype, x.shape)


@pytest.mark.smoke
def test_both_rankings_give_the_same_order(monkeypatch):
    """Normal floats' top digit is concentrated (match ranking), their low digits spread (ballots):
    forcing either ranking for every pass gives the same bits."""
    x = cupy.asarray(_values(np.random.default_rng(4), np.float32, (200003,)))
    want = loom.argsort(x.get())
    for few in (True, False):
        monkeypatch.setattr(radix, "_few_digits", lambda counts, few=few: few)
        assert loom.argsort(x).get().tolist() == want.tolist()
        assert loom.sort(x).get().tobytes() == loom.sort(x.get()).tobytes()


def test_rows_between_one_block_and_the_passes_go_to_the_library():
    x = cupy.asarray(np.random.default_rng(6).standard_normal((3, 5000)).astype(np.float32))
    assert not backend.of(x).sorts.takes(x)
    assert loom.sort(x).get().tobytes() == loom.sort(x.get()).tobytes()


def test_more_rows_than_a_grid_dimension_holds():
    """70,000 rows of 3 (one block a row: the grid's x takes them all), and a topk over them."""
    x = _values(np.random.default_rng(8), np.float32, (70000, 3))
    _check(x, "70000 rows of 3")
    g = cupy.asarray(x)
    for got, want in zip(loom.topk(g, 2), loom.topk(x, 2)):
        assert got.get().tobytes() == want.tobytes()
