"""Reductions over a split batch (loom/kernels/exact/over_batch.py): every rank of a loopback world
gets the bits one process gets for the whole batch, for any split, with special values too."""
import numpy as np
import pytest
from loopback import run_world

from loom.kernels import batch_split, exact
from loom.kernels.exact import over_batch

B = 12
SPLITS = {2: [0, 5, 12], 3: [0, 1, 2, 12], 4: [0, 3, 6, 9, 12]}


def wide(rng, shape, axis):
    """Random values whose scale varies by 2^+-29 along the other axis (rows or columns)."""
    scale_shape = [1] * len(shape)
    scale_shape[axis] = shape[axis]
    return (rng.standard_normal(shape) * np.exp(rng.uniform(-20, 20, scale_shape))).astype(np.float32)


def split_run(ranks, per, fn):
    cuts = SPLITS[ranks]

    def rank(c):
        lo, hi = cuts[c.rank], cuts[c.rank + 1]
        with batch_split.split(c, hi - lo, B, lo):
            return fn(lo * per, hi * per)
    return run_world(ranks, rank)


def same(a, b):
    return np.array_equal(a.view(np.uint32 if a.dtype == np.float32 else np.uint64),
                          b.view(np.uint32 if b.dtype == np.float32 else np.uint64))


@pytest.mark.parametrize("m,per,n", [(5, 1, 3), (16, 9, 9), (3, 300, 4), (2, 1500, 3)])
@pytest.mark.parametrize("ranks", [2, 3, 4])
def test_split_products_equal_one_process(m, per, n, ranks):
    rng = np.random.default_rng(m * per)
    a, b = wide(rng, (m, B * per), 0), wide(rng, (B * per, n), 1)
    a[0, :: max(1, per)] = 0
    one = over_batch.matmul(a, b)
    ref = a.astype(np.float64) @ b.astype(np.float64)
    assert np.abs(one - ref).max() <= 2e-6 * np.abs(ref).max()
    for got in split_run(ranks, per, lambda lo, hi: over_batch.matmul(a[:, lo:hi], b[lo:hi])):
        assert same(got, one)


def test_stacked_products_split_too():
    rng = np.random.default_rng(3)
    a, b = wide(rng, (2, 4, B * 5), 1), wide(rng, (2, B * 5, 3), 2)      # conv groups: [G, M, K] @ [G, K, N]
    one = over_batch.matmul(a, b)
    for got in split_run(3, 5, lambda lo, hi: over_batch.matmul(a[..., lo:hi], b[:, lo:hi])):
        assert same(got, one)


def test_special_values_flag_their_rows_and_columns_on_every_rank():
    rng = np.random.default_rng(4)
    a, b = wide(rng, (4, B * 2), 0), wide(rng, (B * 2, 3), 1)
    a[1, 20] = np.inf            # on the last rank only
    b[0, 2] = np.nan             # on the first rank only
    one = over_batch.matmul(a, b)
    assert np.isnan(one[1]).all() and np.isnan(one[:, 2]).all()
    assert np.isfinite(np.delete(np.delete(one, 1, 0), 2, 1)).all()
    for got in split_run(2, 2, lambda lo, hi: over_batch.matmul(a[:, lo:hi], b[lo:hi])):
        assert same(got, one)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_split_sums_equal_exact_sum(dtype):
    rng = np.random.default_rng(5)
    x = wide(rng, (B * 3, 7), 1).astype(dtype)
    x[4, 2], x[30, 5], x[31, 5] = np.inf, np.inf, -np.inf
    one = exact.sum(x, axis=0)
    for got in split_run(3, 3, lambda lo, hi: over_batch.sum(x[lo:hi], axis=0)):
        assert got.dtype == dtype and np.array_equal(got, one, equal_nan=True) and same(got[~np.isnan(got)],
                                                                                           one[~np.isnan(one)])


def test_split_index_add_equals_one_process():
    rng = np.random.default_rng(6)
    rows = wide(rng, (B * 4, 5), 1)
    ids = rng.integers(0, 7, B * 4)
    one = np.zeros((7, 5), np.float32)
    exact.index_add(one, ids, rows)

    def fn(lo, hi):
        dst = np.zeros((7, 5), np.float32)
        over_batch.index_add(dst, ids[lo:hi], rows[lo:hi])
        return dst
    for got in split_run(4, 4, fn):
        assert same(got, one)


def test_float64_products_are_not_split():
    a = np.ones((2, B), np.float64)
    with pytest.raises(ValueError, match="float64 parameter gradients"):
        split_run(2, 1, lambda lo, hi: over_batch.matmul(a[:, lo:hi], a.T[lo:hi]))


def test_a_count_that_is_not_per_sample_is_refused():
    with pytest.raises(ValueError, match="not a whole number per sample"):
        split_run(2, 1, lambda lo, hi: batch_split.current().global_count(7))
